//! virtio-vsock: guest sockets relayed to host Unix sockets, wire-compatible
//! with Firecracker.
//!
//! - [`device`]: the virtio device (queues, config space, event-loop subscriber).
//! - `packet`: headers parsed and validated from guest chains, written into RX chains.
//! - `connection`: one vsock stream's state machine and credit-based flow control.
//! - `txbuf`: the bounded buffer for guest data a host socket cannot take yet.
//! - `muxer`: (local port, peer port) → connection and Unix socket; the listener,
//!   the packets waiting for the guest, and the deadlines that kill stuck connections.
//!
//! Host-initiated connections: a client connects to the `--vsock-uds` socket and
//! writes `CONNECT <port>\n`; once the guest accepts, it reads `OK <host port>\n`
//! and then the stream. Guest-initiated connections to host port P go to the
//! Unix socket `<uds path>_<P>`.

mod connection;
pub mod device;
mod muxer;
mod packet;
mod txbuf;

#[cfg(test)]
mod tests;

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use device::Vsock;

/// The host's CID: every packet the guest sends must be addressed to it.
pub const VSOCK_HOST_CID: u64 = 2;
/// The longest Unix socket path the kernel accepts (`sun_path` less its NUL).
pub const MAX_UDS_PATH_LEN: usize = 107;
/// The most connections (including clients still sending `CONNECT`) at once.
pub const MAX_CONNECTIONS: usize = 1024;

/// How long the device waits on a peer before giving up on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VsockTimeouts {
    /// A host client must finish its `CONNECT <port>\n` line within this.
    pub connect_line: Duration,
    /// The guest must answer a host-initiated REQUEST within this.
    pub request: Duration,
    /// A connection half-closed by SHUTDOWN is reset if the peer has not
    /// finished it (RST, or drained data) within this.
    pub shutdown: Duration,
}

impl Default for VsockTimeouts {
    fn default() -> Self {
        Self {
            connect_line: Duration::from_secs(2),
            request: Duration::from_secs(2),
            shutdown: Duration::from_secs(2),
        }
    }
}

/// Why the vsock device or its listener could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// CIDs 0-2 are reserved (hypervisor, local, host) and the spec keeps the upper 32 bits zero.
    #[error("guest CID {0} is reserved or too large; use 3 to 4294967295")]
    ReservedCid(u64),
    /// The Unix socket path does not fit in `sockaddr_un`.
    #[error("vsock socket path {path:?} is {len} bytes; Unix socket paths are limited to {max}", max = MAX_UDS_PATH_LEN)]
    PathTooLong {
        /// The offending path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
    },
    /// Something already listens on the path, or it is not a socket.
    #[error("vsock socket path {0:?} is already in use")]
    InUse(PathBuf),
    /// Binding the listener failed.
    #[error("cannot listen on vsock socket {path:?}: {source}")]
    Bind {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A host resource (eventfd, timerfd, socket option) could not be set up.
    #[error("vsock: cannot set up {what}: {source}")]
    Host {
        /// What was being set up.
        what: &'static str,
        /// The OS error.
        source: io::Error,
    },
}

/// Binds the listener host clients connect to, refusing a path in use.
///
/// A socket file nobody listens on (left by a crashed VMM) is removed and
/// replaced; a live socket or any other kind of file is an error.
pub fn bind_listener(path: &Path) -> Result<UnixListener, VsockError> {
    let len = path.as_os_str().len();
    if len > MAX_UDS_PATH_LEN {
        return Err(VsockError::PathTooLong {
            path: path.to_owned(),
            len,
        });
    }
    let bind_err = |source| VsockError::Bind {
        path: path.to_owned(),
        source,
    };
    let listener = match UnixListener::bind(path) {
        Ok(l) => l,
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            let is_socket = std::fs::symlink_metadata(path)
                .map(|m| m.file_type().is_socket())
                .unwrap_or(false);
            if !is_socket || UnixStream::connect(path).is_ok() {
                return Err(VsockError::InUse(path.to_owned()));
            }
            std::fs::remove_file(path).map_err(bind_err)?;
            UnixListener::bind(path).map_err(bind_err)?
        }
        Err(e) => return Err(bind_err(e)),
    };
    listener.set_nonblocking(true).map_err(bind_err)?;
    Ok(listener)
}
