//! The accept loop: a semaphore caps open connections; one over the cap
//! gets a minimal 503 `ServiceException` and is closed, never left
//! hanging. On shutdown it stops accepting, asks every connection to
//! finish its request in flight, and waits for them all.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use super::conn::{self, ConnTimeouts};

/// Connections over the cap answered at once at most; beyond, they are
/// closed without an answer (each answer holds a socket for a moment).
const MAX_REJECTING: usize = 64;
/// How long an over-cap connection may take for its TLS handshake and to
/// take its answer.
const REJECT_TIME: Duration = Duration::from_secs(2);

/// What the accept loop needs.
pub struct Edge {
    /// The bound listener.
    pub listener: TcpListener,
    /// HTTPS, when set.
    pub tls: Option<TlsAcceptor>,
    /// Open connections at most.
    pub max_connections: usize,
    /// The connections' timeouts.
    pub timeouts: ConnTimeouts,
}

impl Edge {
    /// Serves `app` until `stop` completes, then drains the connections.
    pub async fn serve(self, app: Router, stop: impl std::future::Future<Output = ()>) {
        let max = self.max_connections;
        let open = Arc::new(Semaphore::new(max));
        let rejecting = Arc::new(Semaphore::new(MAX_REJECTING));
        let (shutdown, shutdown_rx) = watch::channel(false);
        tokio::pin!(stop);
        loop {
            let accepted = tokio::select! {
                () = &mut stop => break,
                r = self.listener.accept() => r,
            };
            let stream = match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    // Out of descriptors or memory: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let Ok(permit) = open.clone().try_acquire_owned() else {
                match rejecting.clone().try_acquire_owned() {
                    Ok(slot) => {
                        let tls = self.tls.clone();
                        tokio::spawn(async move {
                            let _ =
                                tokio::time::timeout(REJECT_TIME, reject(stream, tls, max)).await;
                            drop(slot);
                        });
                    }
                    Err(_) => drop(stream),
                }
                continue;
            };
            let app = app.clone();
            let tls = self.tls.clone();
            let timeouts = self.timeouts;
            let shutdown = shutdown_rx.clone();
            tokio::spawn(async move {
                match tls {
                    None => conn::serve(stream, app, timeouts, shutdown).await,
                    Some(tls) => {
                        let handshake =
                            tokio::time::timeout(timeouts.header_read, tls.accept(stream));
                        match handshake.await {
                            Ok(Ok(stream)) => conn::serve(stream, app, timeouts, shutdown).await,
                            Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                            Err(_) => tracing::debug!("TLS handshake timed out"),
                        }
                    }
                }
                drop(permit);
            });
        }
        drop(self.listener);
        let _ = shutdown.send(true);
        // Every connection holds a permit until it ends.
        let all = u32::try_from(max).unwrap_or(u32::MAX);
        let _ = open.acquire_many(all).await;
    }
}

/// Answers a connection over the cap with Lambda's 503 and closes it.
async fn reject(stream: TcpStream, tls: Option<TlsAcceptor>, max: usize) {
    let message = format!("The router is serving its maximum of {max} connections; retry later");
    let body = serde_json::json!({ "Type": "Service", "message": message }).to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\n\
         content-type: application/json\r\n\
         x-amzn-ErrorType: ServiceException\r\n\
         x-amzn-RequestId: {}\r\n\
         retry-after: 1\r\n\
         connection: close\r\n\
         content-length: {}\r\n\r\n{body}",
        uuid::Uuid::new_v4(),
        body.len()
    );
    match tls {
        None => answer_and_close(stream, response.as_bytes()).await,
        Some(tls) => {
            if let Ok(stream) = tls.accept(stream).await {
                answer_and_close(stream, response.as_bytes()).await;
            }
        }
    }
}

/// Writes `response`, ends the write side, and reads (and drops) what the
/// client sends until it closes, so the answer is not lost to a reset.
async fn answer_and_close<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, response: &[u8]) {
    if stream.write_all(response).await.is_err() {
        return;
    }
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    let mut total = 0usize;
    while total < 1 << 20 {
        match stream.read(&mut sink).await {
            Ok(0) | Err(_) => return,
            Ok(n) => total += n,
        }
    }
}
