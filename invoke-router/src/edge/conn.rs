//! One client connection: HTTP/1.1 (hyper) over a byte stream, with the
//! edge's timeouts. hyper bounds nothing between requests by itself, so the
//! connection tracks its own phase:
//!
//! - *idle*: no request in flight; closed after `idle_timeout` without
//!   traffic (a keep-alive connection nobody uses, or one that never sent
//!   a byte);
//! - *head*: a request head has started to arrive; it must be complete
//!   within `header_read_timeout` (slowloris);
//! - *busy*: a request is being handled; its body has its own deadline
//!   (`body_timeout`, in the API's body reader), the handler its own.
//!
//! hyper's `header_read_timeout` is also set, to idle + header, as a
//! second bound that never cuts in before ours.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tower_service::Service;

/// The timeouts a connection applies.
#[derive(Debug, Clone, Copy)]
pub struct ConnTimeouts {
    /// From a request head's first byte to its end.
    pub header_read: Duration,
    /// Without a request in flight and without traffic.
    pub idle: Duration,
}

const IDLE: u8 = 0;
const HEAD: u8 = 1;
const BUSY: u8 = 2;

/// Where a connection is, shared by its stream, its service and its
/// watchdog (all polled by the connection's one task).
struct Activity {
    epoch: Instant,
    phase: AtomicU8,
    /// Milliseconds after `epoch` the phase's clock started.
    since_ms: AtomicU64,
    in_flight: AtomicUsize,
    changed: Notify,
}

impl Activity {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            phase: AtomicU8::new(IDLE),
            since_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            changed: Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Bytes came in.
    fn on_read(&self) {
        if self.phase.load(Ordering::Relaxed) == IDLE && self.in_flight.load(Ordering::Relaxed) == 0
        {
            self.since_ms.store(self.now_ms(), Ordering::Relaxed);
            self.phase.store(HEAD, Ordering::Relaxed);
            self.changed.notify_one();
        }
    }

    /// Bytes went out: a response still streaming keeps the connection
    /// from counting as idle.
    fn on_write(&self) {
        if self.phase.load(Ordering::Relaxed) == IDLE {
            self.since_ms.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.phase.store(BUSY, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// When the current phase runs out (None: busy, no bound here).
    fn deadline(&self, t: &ConnTimeouts) -> Option<Instant> {
        let bound = match self.phase.load(Ordering::Relaxed) {
            IDLE => t.idle,
            HEAD => t.header_read,
            _ => return None,
        };
        let since = Duration::from_millis(self.since_ms.load(Ordering::Relaxed));
        Some(self.epoch + since + bound)
    }
}

/// A request in flight; its end makes the connection idle again.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        if a.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            a.since_ms.store(a.now_ms(), Ordering::Relaxed);
            a.phase.store(IDLE, Ordering::Relaxed);
            a.changed.notify_one();
        }
    }
}

/// A stream that reports its traffic to the connection's [`Activity`].
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.on_read();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.on_write();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.on_write();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serves HTTP/1.1 requests on `stream` with `app` until the client
/// closes, a timeout closes it, or `shutdown` turns true (then the request
/// in flight finishes first).
pub async fn serve<S>(
    stream: S,
    app: Router,
    timeouts: ConnTimeouts,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Tracked {
        inner: stream,
        activity: activity.clone(),
    });
    let service_activity = activity.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let in_flight = service_activity.begin();
        let mut app = app.clone();
        let response = app.call(req.map(Body::new));
        async move {
            let r = response.await;
            drop(in_flight);
            r
        }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(timeouts.idle + timeouts.header_read)
        .keep_alive(true);
    let conn = http.serve_connection(io, service);
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        let deadline = activity.deadline(&timeouts);
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            () = activity.changed.notified() => {}
            () = sleep_until(deadline) => {
                if activity.deadline(&timeouts).is_some_and(|d| d <= Instant::now()) {
                    tracing::debug!("closing a connection that was idle or slow to send its head");
                    return;
                }
            }
            _ = shutdown.changed(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
