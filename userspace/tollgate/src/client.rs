//! The CLI side of the control socket.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use crate::proto::{Request, Response};

/// Why a request did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket.
    #[error(
        "the tollgate agent is not running (no control socket at {path}); start it with `tollgate agent --iface IFACE`"
    )]
    NotRunning {
        /// Socket path.
        path: String,
    },
    /// The socket is root-only.
    #[error("permission denied on {path}: the control socket is root-only; run this as root")]
    PermissionDenied {
        /// Socket path.
        path: String,
    },
    /// Other I/O failure.
    #[error("failed to talk to the agent at {path}")]
    Io {
        /// Socket path.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The agent answered something unreadable.
    #[error("the agent sent an unreadable answer")]
    Protocol(#[source] serde_json::Error),
}

impl ClientError {
    /// Process exit code for this failure (documented in the README).
    #[must_use]
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::NotRunning { .. } => 3,
            Self::PermissionDenied { .. } => 4,
            Self::Io { .. } | Self::Protocol(_) => 1,
        }
    }
}

/// Sends one request and waits (bounded) for the answer.
///
/// # Errors
/// See [`ClientError`].
pub fn call(socket: &Path, req: &Request) -> Result<Response, ClientError> {
    let path = socket.display().to_string();
    let io = |source: std::io::Error| ClientError::Io {
        path: path.clone(),
        source,
    };
    let stream = connect(socket)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(io)?;
    let mut line = serde_json::to_vec(req).map_err(ClientError::Protocol)?;
    line.push(b'\n');
    (&stream).write_all(&line).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer).map_err(io)?;
    serde_json::from_str(&answer).map_err(ClientError::Protocol)
}

/// Sends a request followed by `body` lines (a streamed `block_import`) and
/// waits up to `timeout` for the answer.
///
/// # Errors
/// See [`ClientError`].
pub fn call_stream(
    socket: &Path,
    req: &Request,
    body: &[String],
    timeout: Duration,
) -> Result<Response, ClientError> {
    let answer = exchange(socket, req, body, timeout)?;
    serde_json::from_str(&answer).map_err(ClientError::Protocol)
}

/// The agent's answer with its data decoded straight into `T` (large answers
/// like `block export` skip the generic JSON tree).
#[derive(Debug, serde::Deserialize)]
pub struct Typed<T> {
    /// Whether the request was carried out.
    pub ok: bool,
    /// Why not.
    #[serde(default)]
    pub error: Option<String>,
    /// The result.
    pub data: Option<T>,
    /// Something the operator should know.
    #[serde(default)]
    pub warning: Option<String>,
}

/// Sends one request and decodes the answer's data as `T`.
///
/// # Errors
/// See [`ClientError`].
pub fn call_as<T: serde::de::DeserializeOwned>(
    socket: &Path,
    req: &Request,
    timeout: Duration,
) -> Result<Typed<T>, ClientError> {
    let answer = exchange(socket, req, &[], timeout)?;
    serde_json::from_str(&answer).map_err(ClientError::Protocol)
}

fn exchange(
    socket: &Path,
    req: &Request,
    body: &[String],
    timeout: Duration,
) -> Result<String, ClientError> {
    let path = socket.display().to_string();
    let io = |source: std::io::Error| ClientError::Io {
        path: path.clone(),
        source,
    };
    let stream = connect(socket)?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let mut w = std::io::BufWriter::with_capacity(1 << 16, &stream);
    let mut line = serde_json::to_vec(req).map_err(ClientError::Protocol)?;
    line.push(b'\n');
    // A refusal (e.g. not root) closes the socket early: the answer is still
    // read below, so a failed write only matters if there is no answer.
    let sent = w.write_all(&line).and_then(|()| {
        for l in body {
            w.write_all(l.as_bytes())?;
            w.write_all(b"\n")?;
        }
        w.flush()
    });
    drop(w);
    let mut answer = String::new();
    match BufReader::with_capacity(1 << 16, &stream).read_line(&mut answer) {
        Ok(n) if n > 0 => Ok(answer),
        Ok(_) => Err(io(sent.err().unwrap_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the agent closed the connection without answering",
            )
        }))),
        Err(e) => Err(io(sent.err().unwrap_or(e))),
    }
}

/// Sends a streaming request (`tap`): the first answer line says whether the
/// stream started; every later line goes to `each` until the agent closes
/// the stream or `each` returns false. No read timeout: a quiet API is fine.
///
/// # Errors
/// See [`ClientError`]; a refused request comes back as `Ok(Err(reason))`.
pub fn stream(
    socket: &Path,
    req: &Request,
    mut each: impl FnMut(&str) -> bool,
) -> Result<Result<(), String>, ClientError> {
    let path = socket.display().to_string();
    let io = |source: std::io::Error| ClientError::Io {
        path: path.clone(),
        source,
    };
    let stream = connect(socket)?;
    let mut line = serde_json::to_vec(req).map_err(ClientError::Protocol)?;
    line.push(b'\n');
    (&stream).write_all(&line).map_err(io)?;
    let mut lines = BufReader::new(&stream).lines();
    let first = match lines.next() {
        Some(l) => l.map_err(io)?,
        None => return Ok(Err("the agent closed the connection".into())),
    };
    let resp: Response = serde_json::from_str(&first).map_err(ClientError::Protocol)?;
    if !resp.ok {
        return Ok(Err(resp.error.unwrap_or_else(|| "refused".into())));
    }
    for l in lines {
        let l = l.map_err(io)?;
        if !each(&l) {
            break;
        }
    }
    Ok(Ok(()))
}

/// The exit code (and message) of a finished [`stream`].
#[must_use]
pub fn stream_exit(res: Result<Result<(), String>, ClientError>) -> std::process::ExitCode {
    match res {
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(e.exit_code())
        }
        Ok(Err(reason)) => {
            eprintln!("error: {reason}");
            std::process::ExitCode::from(1)
        }
        Ok(Ok(())) => std::process::ExitCode::SUCCESS,
    }
}

/// Connects to the agent, telling "not running" and "not root" apart from
/// other failures.
fn connect(socket: &Path) -> Result<UnixStream, ClientError> {
    let path = socket.display().to_string();
    UnixStream::connect(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            ClientError::NotRunning { path }
        }
        std::io::ErrorKind::PermissionDenied => ClientError::PermissionDenied { path },
        _ => ClientError::Io { path, source: e },
    })
}
