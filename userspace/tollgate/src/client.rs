//! The CLI side of the control socket.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use crate::proto::{Request, Response};

/// How long a request waits for the agent by default (connect, then the
/// answer). `status` is what Kubernetes probes run: it must not hang on a
/// stopped agent.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long long operations (`block import`, `export`, `rm --origin`,
/// `policy reload`) wait by default.
pub const LONG_TIMEOUT: Duration = Duration::from_secs(600);

/// `--timeout` / `TOLLGATE_TIMEOUT`, when given.
static TIMEOUT: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();

/// Sets the timeout every request uses (from `--timeout`).
pub fn set_timeout(t: Duration) {
    let _ = TIMEOUT.set(t);
}

/// The timeout of ordinary requests.
#[must_use]
pub fn timeout() -> Duration {
    TIMEOUT.get().copied().unwrap_or(DEFAULT_TIMEOUT)
}

/// The timeout of long operations (`--timeout` when given, else 10 min).
#[must_use]
pub fn long_timeout() -> Duration {
    TIMEOUT.get().copied().unwrap_or(LONG_TIMEOUT)
}

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
    /// The agent did not answer in time (stopped, overloaded, wedged).
    #[error(
        "the tollgate agent at {path} did not answer within {secs}s (is it stopped or overloaded?); \
         --timeout or TOLLGATE_TIMEOUT waits longer"
    )]
    Timeout {
        /// Socket path.
        path: String,
        /// The timeout, in seconds.
        secs: u64,
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
            Self::NotRunning { .. } | Self::Timeout { .. } => 3,
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
    call_within(socket, req, timeout())
}

/// [`call`] with its own timeout (long operations).
///
/// # Errors
/// See [`ClientError`].
pub fn call_within(socket: &Path, req: &Request, limit: Duration) -> Result<Response, ClientError> {
    let answer = exchange(socket, req, &[], limit)?;
    serde_json::from_str(&answer).map_err(ClientError::Protocol)
}

/// An I/O error on the socket: a timeout says so.
fn io_error(path: &str, limit: Duration, source: std::io::Error) -> ClientError {
    match source.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => ClientError::Timeout {
            path: path.to_owned(),
            secs: limit.as_secs().max(1),
        },
        _ => ClientError::Io {
            path: path.to_owned(),
            source,
        },
    }
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
    let io = |source: std::io::Error| io_error(&path, timeout, source);
    timing!("cli_connect");
    let stream = connect_within(socket, timeout)?;
    timing!("cli_connected");
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
    match BufReader::with_capacity(1 << 16, &stream)
        .take(crate::proto::MAX_ANSWER_BYTES)
        .read_line(&mut answer)
    {
        Ok(n) if n > 0 => {
            timing!("cli_answered");
            Ok(answer)
        }
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
    let limit = timeout();
    let io = |source: std::io::Error| io_error(&path, limit, source);
    let stream = connect_within(socket, limit)?;
    stream.set_read_timeout(Some(limit)).map_err(io)?;
    stream.set_write_timeout(Some(limit)).map_err(io)?;
    let mut line = serde_json::to_vec(req).map_err(ClientError::Protocol)?;
    line.push(b'\n');
    (&stream).write_all(&line).map_err(io)?;
    let mut lines = BufReader::new(&stream).lines();
    let first = match lines.next() {
        Some(l) => l.map_err(io)?,
        None => return Ok(Err("the agent closed the connection".into())),
    };
    // The stream started: a quiet stream is fine from here on.
    stream.set_read_timeout(None).map_err(io)?;
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

/// Connects to the agent within `limit`, telling "not running", "not root"
/// and "not answering" apart from other failures. A stopped agent's listen
/// backlog fills up and a blocking connect would then wait forever: the
/// connect is non-blocking and retried until `limit`.
fn connect_within(socket: &Path, limit: Duration) -> Result<UnixStream, ClientError> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket as mk};
    let path = socket.display().to_string();
    let classify = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            ClientError::NotRunning { path: path.clone() }
        }
        std::io::ErrorKind::PermissionDenied => {
            ClientError::PermissionDenied { path: path.clone() }
        }
        _ => ClientError::Io {
            path: path.clone(),
            source: e,
        },
    };
    let addr = UnixAddr::new(socket).map_err(|e| classify(e.into()))?;
    let deadline = std::time::Instant::now() + limit;
    loop {
        let fd = mk(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| classify(e.into()))?;
        match connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr) {
            Ok(()) => {
                let s = UnixStream::from(fd);
                s.set_nonblocking(false).map_err(classify)?;
                return Ok(s);
            }
            // The backlog is full (the agent is not accepting): wait a bit.
            Err(nix::errno::Errno::EAGAIN) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(nix::errno::Errno::EAGAIN) => {
                return Err(ClientError::Timeout {
                    path: path.clone(),
                    secs: limit.as_secs().max(1),
                });
            }
            Err(e) => return Err(classify(e.into())),
        }
    }
}
