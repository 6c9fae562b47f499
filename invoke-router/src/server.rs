//! The server: opens the data directory's parts, serves the API, and shuts
//! down gracefully (stop accepting, let in-flight invocations finish within
//! the grace period, then stop every VM).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::codestore::CodeStore;
use crate::config::ServeConfig;
use crate::dispatch::Dispatcher;
use crate::events::EventQueue;
use crate::metrics::Metrics;
use crate::registry::Registry;

/// A server that is accepting requests.
pub struct RunningServer {
    /// The address it listens on (useful with port 0).
    pub local_addr: SocketAddr,
    state: Arc<AppState>,
    stop: oneshot::Sender<()>,
    http: JoinHandle<std::io::Result<()>>,
    grace: std::time::Duration,
    background: CancellationToken,
    event_worker: JoinHandle<()>,
}

/// Opens everything under the data directory and starts serving.
pub async fn start(config: ServeConfig) -> anyhow::Result<RunningServer> {
    config.validate()?;
    let data = &config.data_dir;
    crate::datadir::prepare(data)
        .with_context(|| format!("preparing data dir {}", data.display()))?;
    let registry = Arc::new(Registry::open(data).context("opening the registry")?);
    let code = CodeStore::open(data).context("opening the code store")?;
    crate::datadir::sweep(data, &registry, &code).context("sweeping the data dir")?;
    let metrics = Metrics::new();
    let run_dir = config.run_dir();
    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    // One token for every background task: cancelled, they stop taking work.
    let background = CancellationToken::new();
    let dispatcher = Dispatcher::new(&config, metrics.clone(), background.clone());
    let events = EventQueue::open(&config).context("opening the event queue")?;
    let state = Arc::new(AppState::new(
        &config,
        registry,
        code,
        dispatcher.clone(),
        events.clone(),
        metrics,
    ));
    let resolver_state = Arc::downgrade(&state);
    let event_worker = events.start(
        dispatcher,
        Arc::new(move |tenant: &str, name: &str| resolver_state.upgrade()?.resolve(tenant, name)),
        background.clone(),
    );
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let local_addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let app = api::router(state.clone());
    let http = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
    });
    tracing::info!(%local_addr, data_dir = %data.display(), "serving the Lambda API");
    Ok(RunningServer {
        local_addr,
        state,
        stop,
        http,
        grace: config.timing.shutdown_grace,
        background,
        event_worker,
    })
}

impl RunningServer {
    /// Stops accepting, lets in-flight requests finish within the grace
    /// period, then stops every VM and joins the background tasks.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        self.background.cancel();
        let drain = tokio::time::timeout(self.grace + std::time::Duration::from_secs(1), self.http);
        let (drained, ()) = tokio::join!(drain, self.state.dispatcher.shutdown(self.grace));
        if drained.is_err() {
            tracing::warn!("in-flight requests outlived the grace period");
        }
        // Its attempts ended with the dispatcher; the journal keeps them.
        let events = tokio::time::timeout(std::time::Duration::from_secs(10), self.event_worker);
        if events.await.is_err() {
            tracing::warn!("the event workers did not stop in time");
        }
        tracing::info!("stopped");
    }
}

/// Serves until `signal` completes, then shuts down.
pub async fn serve_until(
    config: ServeConfig,
    signal: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let server = start(config).await?;
    signal.await;
    server.shutdown().await;
    Ok(())
}
