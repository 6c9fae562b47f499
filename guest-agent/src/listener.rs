//! Where the router reaches the agent: a vsock port inside a guest, or a
//! Unix socket in host tests (the only substitution tests make).

use std::io;
use std::path::PathBuf;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UnixListener;
use tokio_vsock::{VsockAddr, VsockListener, VMADDR_CID_ANY};

/// The address the agent listens on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// A vsock port on any CID (the guest's own).
    Vsock(u32),
    /// A Unix socket path.
    Unix(PathBuf),
}

/// A connected byte stream from the router.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A bound listener.
pub enum Listener {
    /// Listening on vsock.
    Vsock(VsockListener),
    /// Listening on a Unix socket.
    Unix(UnixListener),
}

impl Listener {
    /// Binds `addr`. A stale Unix socket file at the path is replaced.
    pub fn bind(addr: &ListenAddr) -> io::Result<Listener> {
        match addr {
            ListenAddr::Vsock(port) => VsockListener::bind(VsockAddr::new(VMADDR_CID_ANY, *port))
                .map(Listener::Vsock)
                .map_err(|e| io::Error::new(e.kind(), format!("bind vsock port {port}: {e}"))),
            ListenAddr::Unix(path) => {
                let _ = std::fs::remove_file(path);
                UnixListener::bind(path)
                    .map(Listener::Unix)
                    .map_err(|e| io::Error::new(e.kind(), format!("bind {}: {e}", path.display())))
            }
        }
    }

    /// Waits for the router to connect.
    pub async fn accept(&self) -> io::Result<Box<dyn Stream>> {
        Ok(match self {
            Listener::Vsock(l) => Box::new(l.accept().await?.0),
            Listener::Unix(l) => Box::new(l.accept().await?.0),
        })
    }
}
