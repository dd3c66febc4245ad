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
    let stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            ClientError::NotRunning { path: path.clone() }
        }
        std::io::ErrorKind::PermissionDenied => {
            ClientError::PermissionDenied { path: path.clone() }
        }
        _ => io(e),
    })?;
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
