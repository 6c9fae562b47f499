//! The edge: everything between a client's socket and the API's handlers
//! that protects the router from its clients.
//!
//! The accept loop caps connections (a semaphore; one over the cap gets a
//! 503 and is closed) and optionally speaks TLS; each connection has a
//! header-read and an idle timeout; the API's authentication checks a
//! request's signature on its headers before reading any of its body, then
//! reads the body bounded by the operation's Lambda limit, within a
//! deadline, hashing it as it streams in.

pub mod body; // bounded, timed, hashed body reading
pub mod conn; // one HTTP/1.1 connection and its timeouts
pub mod limits; // Lambda's per-operation request limits
pub mod listener; // accept loop, connection cap, drain
pub mod rlimit; // RLIMIT_NOFILE
pub mod settings; // the [edge] settings
pub mod tls; // rustls acceptor from PEM files

use std::net::SocketAddr;

use anyhow::Context;
use tokio::net::TcpListener;

pub use settings::EdgeConfig;

/// Raises the open-files limit, loads TLS, and binds `addr`: the edge,
/// ready to serve.
pub async fn bind(addr: SocketAddr, config: &EdgeConfig) -> anyhow::Result<listener::Edge> {
    let wanted = config.max_connections;
    let max_connections = match rlimit::raise_nofile() {
        Ok(soft) => {
            let cap = rlimit::fitting_cap(wanted, soft);
            if cap < wanted {
                tracing::warn!(
                    wanted,
                    cap,
                    open_files = soft,
                    "the open-files limit lowers the connection cap"
                );
            }
            cap
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not raise the open-files limit");
            wanted
        }
    };
    let tls = match config.tls() {
        Some(files) => Some(tls::acceptor(files).context("loading TLS")?),
        None => None,
    };
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    Ok(listener::Edge {
        listener,
        tls,
        max_connections,
        timeouts: conn::ConnTimeouts {
            header_read: config.header_read_timeout(),
            idle: config.idle_timeout(),
        },
    })
}
