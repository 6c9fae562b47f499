//! Event invocations (`X-Amz-Invocation-Type: Event`): a durable queue in
//! the data directory, processed at least once, with Lambda's two retries.
//!
//! Storage (under `<data dir>/events/`): `journal.jsonl`, an append-only
//! journal of state changes (see `journal.rs`), and per event a directory
//! `<request id>/` holding `payload` and, once an attempt produced one,
//! `result` (the agent's result as an `ember-protocol` frame). The payload
//! is fsynced before the `enqueue` record, and each record before what it
//! records is acted on, so after a crash or restart every accepted event is
//! there; queued events and events whose attempt was cut short run again
//! (at least once).
//!
//! Retries: a function error, a timeout, a runtime crash or a broken VM
//! counts as a failed attempt; after the first the event waits a minute,
//! after the second two minutes (Lambda's schedule; see
//! [`EventQueue::set_retry_delays`]); three failed attempts fail the event.
//! A throttled attempt does not count: it is retried with backoff until the
//! event is [`MAX_EVENT_AGE`] old. A function that no longer exists fails
//! the event at once.
//!
//! Fairness and quotas: queued events wait in one queue per tenant
//! (`fair.rs`), served round-robin, and one tenant holds at most
//! `workers_per_tenant` of the `workers` (`[events]` settings), so one
//! tenant's backlog never delays another tenant's first event by more than
//! one attempt. Each tenant may have at most its `max_pending_events`
//! quota queued or running (`TooManyRequestsException` past it); the whole
//! queue at most [`MAX_PENDING_EVENTS`]. Finished events beyond
//! `keep_finished` are pruned (oldest first) as new ones finish; a
//! finished event whose directory is gone was pruned and is not replayed.

mod fair;
mod journal;
mod replay;

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ember_protocol::{InvokeResult, Message, Outcome};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{EventSettings, Quotas, ServeConfig};
use crate::dispatch::{DispatchError, Dispatcher, FunctionSpec, InvokeInput};
use fair::FairQueue;
use journal::{Journal, Record};
use replay::{apply, records_for};

/// Attempts per event: the first and Lambda's two retries.
pub const MAX_ATTEMPTS: u32 = 3;
/// Events older than this are failed instead of retried after throttling
/// (Lambda's default maximum event age).
pub const MAX_EVENT_AGE: Duration = Duration::from_secs(6 * 3600);
/// The most events waiting or running at once, all tenants; more are refused.
pub const MAX_PENDING_EVENTS: usize = 100_000;
/// Backoff after a throttled attempt: starts here, doubles, capped below.
const THROTTLE_BACKOFF: Duration = Duration::from_secs(1);
const MAX_THROTTLE_BACKOFF: Duration = Duration::from_secs(300);

/// A function resolver: the current spec of (tenant, function), if it exists.
pub type Resolver = Arc<dyn Fn(&str, &str) -> Option<Arc<FunctionSpec>> + Send + Sync>;

/// Where an event is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventStatus {
    /// Waiting for its first or next attempt.
    Queued,
    /// An attempt is running.
    Running {
        /// Which (1-based).
        attempt: u32,
    },
    /// The function succeeded.
    Succeeded,
    /// It failed every attempt, or its function is gone.
    Failed {
        /// Attempts made.
        attempts: u32,
        /// The last error.
        error: String,
    },
}

/// An event and its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    /// The request id (`X-Amzn-RequestId` of the Invoke that queued it).
    pub request_id: String,
    /// Its tenant.
    pub tenant: String,
    /// Its function.
    pub function: String,
    /// Where it is.
    pub status: EventStatus,
    /// The last attempt's result, if an attempt produced one.
    pub result: Option<InvokeResult>,
}

/// Why an event was not queued.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// The request id is not 1–128 characters of `[A-Za-z0-9._:-]`.
    #[error("invalid request id {0:?}")]
    InvalidRequestId(String),
    /// An event with this request id exists.
    #[error("an event with request id {0} already exists")]
    Duplicate(String),
    /// The payload is over the protocol's limit.
    #[error("payload of {0} bytes is over the limit of {max} bytes", max = ember_protocol::MAX_PAYLOAD_LEN)]
    PayloadTooLarge(usize),
    /// Too many events are waiting, all tenants together.
    #[error(
        "Rate Exceeded. The event queue is full ({MAX_PENDING_EVENTS} events); try again later."
    )]
    QueueFull,
    /// The tenant has its quota of events queued or running.
    #[error("Rate Exceeded. {limit} Event invocations of this account are pending (its max_pending_events quota); try again later.")]
    TenantQueueFull {
        /// The tenant's `max_pending_events`.
        limit: u32,
    },
    /// The data directory failed us.
    #[error("event queue storage: {0}")]
    Io(#[from] io::Error),
}

#[derive(Debug, Clone)]
struct Entry {
    tenant: String,
    function: String,
    at_ms: u64,
    status: EventStatus,
    /// Failed or finished attempts so far.
    attempts: u32,
    due_ms: u64,
    throttled: u32,
}

#[derive(Debug)]
struct Inner {
    journal: Journal,
    entries: HashMap<String, Entry>,
    /// Queued events, per tenant.
    fair: FairQueue,
    /// Finished events by enqueue time (pruned oldest first).
    finished: BTreeSet<(u64, String)>,
    /// Records appended since the journal was last compacted.
    appended: usize,
    /// Extra records allowed before compacting ([`COMPACT_SLACK`]).
    compact_slack: usize,
    retry_delays: [Duration; 2],
}

/// The durable queue of Event invocations.
#[derive(Debug)]
pub struct EventQueue {
    dir: PathBuf,
    settings: EventSettings,
    /// Quotas per tenant id (a tenant not listed gets the defaults).
    quotas: HashMap<String, Quotas>,
    inner: Mutex<Inner>,
    wake: Notify,
}

/// The journal is compacted while running once it holds this many times
/// more records than there are events (plus [`COMPACT_SLACK`]).
const COMPACT_FACTOR: usize = 4;
/// See [`COMPACT_FACTOR`].
const COMPACT_SLACK: usize = 10_000;

/// The records that rebuild every event, oldest first.
fn compacted(entries: &HashMap<String, Entry>) -> Vec<Record> {
    let mut ids: Vec<&String> = entries.keys().collect();
    ids.sort_by_key(|id| (entries[*id].at_ms, (*id).clone()));
    ids.iter()
        .flat_map(|id| records_for(id, &entries[*id]))
        .collect()
}

fn is_finished(s: &EventStatus) -> bool {
    matches!(s, EventStatus::Succeeded | EventStatus::Failed { .. })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl EventQueue {
    /// Opens (or creates) the queue under `<data dir>/events` with the
    /// config's `[events]` settings and tenant quotas, replaying its
    /// journal: events that were queued or running are queued again.
    pub fn open(config: &ServeConfig) -> Result<Arc<Self>, EventError> {
        let dir = config.data_dir.join("events");
        let settings = config.events;
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("journal.jsonl");
        let mut entries = HashMap::new();
        for r in Journal::read(&path)? {
            apply(&mut entries, r);
        }
        // An attempt cut short by a crash runs again (same attempt number).
        for e in entries.values_mut() {
            if let EventStatus::Running { attempt } = e.status {
                e.status = EventStatus::Queued;
                e.attempts = attempt.saturating_sub(1);
            }
        }
        // A finished event without its directory was pruned.
        entries.retain(|id, e| !is_finished(&e.status) || dir.join(id).is_dir());
        let mut finished: BTreeSet<(u64, String)> = entries
            .iter()
            .filter(|(_, e)| is_finished(&e.status))
            .map(|(id, e)| (e.at_ms, id.clone()))
            .collect();
        while finished.len() > settings.keep_finished {
            if let Some((_, id)) = finished.pop_first() {
                entries.remove(&id);
                let _ = std::fs::remove_dir_all(dir.join(&id));
            }
        }
        let journal = Journal::rewrite(&path, &compacted(&entries))?;
        let mut fair = FairQueue::default();
        for (id, e) in &entries {
            if e.status == EventStatus::Queued {
                fair.push(&e.tenant, e.due_ms, id.clone());
            }
        }
        let quotas = config
            .tenants
            .iter()
            .map(|t| (t.id.clone(), t.quotas))
            .collect();
        Ok(Arc::new(EventQueue {
            dir,
            settings,
            quotas,
            inner: Mutex::new(Inner {
                journal,
                entries,
                fair,
                finished,
                appended: 0,
                compact_slack: COMPACT_SLACK,
                retry_delays: [Duration::from_secs(60), Duration::from_secs(120)],
            }),
            wake: Notify::new(),
        }))
    }

    /// `tenant`'s quota of pending events.
    fn pending_quota(&self, tenant: &str) -> u32 {
        self.quotas
            .get(tenant)
            .copied()
            .unwrap_or_default()
            .max_pending_events
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the waits before the second and the third attempt (Lambda's
    /// are one and two minutes, the default).
    pub fn set_retry_delays(&self, delays: [Duration; 2]) {
        self.lock().retry_delays = delays;
    }

    /// Durably records the event, then returns. Blocks on disk writes
    /// (an fsync or three), as a durable enqueue must: call it off the
    /// async executor (`spawn_blocking`).
    pub fn enqueue(
        &self,
        tenant: &str,
        function: &str,
        request_id: &str,
        payload: &[u8],
    ) -> Result<(), EventError> {
        if !ember_protocol::is_valid_request_id(request_id) || request_id.starts_with('.') {
            return Err(EventError::InvalidRequestId(request_id.into()));
        }
        if payload.len() > ember_protocol::MAX_PAYLOAD_LEN {
            return Err(EventError::PayloadTooLarge(payload.len()));
        }
        self.check_room(tenant, request_id)?;
        let event_dir = self.dir.join(request_id);
        std::fs::create_dir(&event_dir).map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                EventError::Duplicate(request_id.into())
            } else {
                e.into()
            }
        })?;
        let stored = write_durably(&event_dir.join("payload"), payload)
            .and_then(|()| journal::sync_dir(&event_dir))
            .and_then(|()| journal::sync_dir(&self.dir));
        if let Err(e) = stored {
            let _ = std::fs::remove_dir_all(&event_dir);
            return Err(e.into());
        }
        let at_ms = now_ms();
        let mut st = self.lock();
        // Checked again under the lock that takes the place.
        if let Err(e) = Self::room(&st, tenant, request_id, self.pending_quota(tenant)) {
            drop(st);
            let _ = std::fs::remove_dir_all(&event_dir);
            return Err(e);
        }
        let r = Record::Enqueue {
            id: request_id.into(),
            tenant: tenant.into(),
            function: function.into(),
            at_ms,
        };
        if let Err(e) = st.journal.append(&r) {
            drop(st);
            let _ = std::fs::remove_dir_all(&event_dir);
            return Err(e.into());
        }
        apply(&mut st.entries, r);
        st.fair.push(tenant, at_ms, request_id.into());
        drop(st);
        self.wake.notify_one();
        Ok(())
    }

    /// Whether `tenant` may queue `request_id` now.
    fn check_room(&self, tenant: &str, request_id: &str) -> Result<(), EventError> {
        Self::room(&self.lock(), tenant, request_id, self.pending_quota(tenant))
    }

    fn room(st: &Inner, tenant: &str, request_id: &str, quota: u32) -> Result<(), EventError> {
        if st.entries.contains_key(request_id) {
            return Err(EventError::Duplicate(request_id.into()));
        }
        if st.fair.pending_of(tenant) >= quota as usize {
            return Err(EventError::TenantQueueFull { limit: quota });
        }
        if st.fair.pending() >= MAX_PENDING_EVENTS {
            return Err(EventError::QueueFull);
        }
        Ok(())
    }

    /// Events of `tenant` queued or running.
    pub fn pending_of(&self, tenant: &str) -> usize {
        self.lock().fair.pending_of(tenant)
    }

    /// Finished events kept (with their payload and result).
    pub fn finished_count(&self) -> usize {
        self.lock().finished.len()
    }

    /// The event and its outcome, if it exists.
    pub fn get(&self, request_id: &str) -> Option<EventRecord> {
        let e = self.lock().entries.get(request_id)?.clone();
        let result = std::fs::read(self.dir.join(request_id).join("result"))
            .ok()
            .and_then(|bytes| match Message::decode(&bytes) {
                Ok((Message::Result(r), _)) => Some(r),
                _ => None,
            });
        Some(EventRecord {
            request_id: request_id.into(),
            tenant: e.tenant,
            function: e.function,
            status: e.status,
            result,
        })
    }

    /// Starts processing queued events with `dispatcher` on the current
    /// tokio runtime; `resolve` gives each attempt the function's current
    /// spec (None: the function is gone and the event fails). Processing
    /// stops when `stop` is cancelled; the handle ends once every attempt
    /// it started has ended (join it after the dispatcher's shutdown).
    pub fn start(
        self: &Arc<Self>,
        dispatcher: Arc<Dispatcher>,
        resolve: Resolver,
        stop: CancellationToken,
    ) -> JoinHandle<()> {
        let queue = self.clone();
        tokio::spawn(async move { queue.schedule(dispatcher, resolve, stop).await })
    }

    async fn schedule(
        self: Arc<Self>,
        dispatcher: Arc<Dispatcher>,
        resolve: Resolver,
        stop: CancellationToken,
    ) {
        let workers = TaskTracker::new();
        let (n, per_tenant) = (self.settings.workers, self.settings.workers_per_tenant);
        loop {
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if stop.is_cancelled() {
                break;
            }
            let now = now_ms();
            let (ready, next_due) = {
                let mut st = self.lock();
                let mut ready = Vec::new();
                while let Some(next) = st.fair.pop_ready(now, n, per_tenant) {
                    ready.push(next);
                }
                (ready, st.fair.next_due(n, per_tenant))
            };
            for (tenant, id) in ready {
                let running = Running {
                    queue: self.clone(),
                    tenant,
                    released: AtomicBool::new(false),
                };
                let (dispatcher, resolve) = (dispatcher.clone(), resolve.clone());
                workers.spawn(async move {
                    running
                        .queue
                        .attempt(&id, &running, &dispatcher, &resolve)
                        .await;
                    drop(running);
                });
            }
            let pause = match next_due {
                Some(d) => Duration::from_millis(d.saturating_sub(now)).min(Duration::from_secs(1)),
                None => Duration::from_secs(1),
            };
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::timeout(pause, woken) => {}
            }
        }
        workers.close();
        workers.wait().await;
    }

    /// Records `r` in the journal and in memory; a journal that cannot be
    /// written is logged (the state still changes: the event runs again
    /// after a restart, which at-least-once allows).
    fn record(&self, r: Record) {
        self.record_ending(r, None);
    }

    /// [`EventQueue::record`] for the record that ends an attempt of
    /// `ending`'s tenant: the attempt stops counting as running in the
    /// same critical section that queues a retry, so the event is never
    /// counted twice against its tenant's pending quota.
    fn record_ending(&self, r: Record, ending: Option<&str>) {
        let mut st = self.lock();
        if let Some(tenant) = ending {
            st.fair.finished(tenant);
        }
        if let Err(e) = st.journal.append(&r) {
            tracing::error!(journal = %st.journal.path().display(), "event journal: {e}");
        }
        let id = r.id().to_string();
        apply(&mut st.entries, r);
        let mut pruned = Vec::new();
        if let Some(e) = st.entries.get(&id) {
            let (tenant, due, at, status) = (e.tenant.clone(), e.due_ms, e.at_ms, e.status.clone());
            if status == EventStatus::Queued {
                st.fair.push(&tenant, due, id);
            } else if is_finished(&status) {
                st.finished.insert((at, id));
                while st.finished.len() > self.settings.keep_finished {
                    if let Some((_, old)) = st.finished.pop_first() {
                        st.entries.remove(&old);
                        pruned.push(old);
                    }
                }
            }
        }
        st.appended += 1;
        if st.appended > COMPACT_FACTOR * st.entries.len() + st.compact_slack {
            // Pruned events leave the journal here (their directories go below).
            let records = compacted(&st.entries);
            let path = st.journal.path().to_path_buf();
            match Journal::rewrite(&path, &records) {
                Ok(j) => {
                    st.journal = j;
                    st.appended = 0;
                }
                Err(e) => tracing::error!("cannot compact the event journal: {e}"),
            }
        }
        drop(st);
        // The directory going is what makes the pruning durable.
        for old in pruned {
            if let Err(e) = std::fs::remove_dir_all(self.dir.join(&old)) {
                tracing::warn!(event = %old, "cannot prune a finished event: {e}");
            }
        }
    }

    async fn attempt(
        self: &Arc<Self>,
        id: &str,
        running: &Running,
        dispatcher: &Dispatcher,
        resolve: &Resolver,
    ) {
        let Some(entry) = self.lock().entries.get(id).cloned() else {
            return;
        };
        let attempt = entry.attempts + 1;
        let Some(spec) = resolve(&entry.tenant, &entry.function) else {
            self.end_attempt(
                running,
                Record::Failed {
                    id: id.into(),
                    attempts: entry.attempts,
                    error: format!(
                        "ResourceNotFoundException: function {} no longer exists",
                        entry.function
                    ),
                },
            )
            .await;
            return;
        };
        let path = self.dir.join(id).join("payload");
        let payload = match blocking(move || std::fs::read(path)).await {
            Ok(p) => p,
            Err(e) => {
                self.end_attempt(
                    running,
                    Record::Failed {
                        id: id.into(),
                        attempts: entry.attempts,
                        error: format!("ServiceException: the stored payload is unreadable: {e}"),
                    },
                )
                .await;
                return;
            }
        };
        self.record_off(Record::Attempt {
            id: id.into(),
            attempt,
        })
        .await;
        let input = InvokeInput {
            request_id: id.into(),
            payload,
            client_context: None,
            trace_id: None,
        };
        let error = match dispatcher.invoke(spec, input).await {
            Ok(out) => {
                let error = function_error(&out.result.outcome);
                let (q, rid, result) = (self.clone(), id.to_string(), out.result);
                if let Err(e) = blocking(move || q.store_result(&rid, &result)).await {
                    tracing::warn!(event = id, "cannot store the event's result: {e}");
                }
                match error {
                    None => {
                        self.end_attempt(
                            running,
                            Record::Succeeded {
                                id: id.into(),
                                attempts: attempt,
                            },
                        )
                        .await;
                        return;
                    }
                    Some(e) => e,
                }
            }
            Err(e @ (DispatchError::Throttled(_) | DispatchError::NoSlot(_))) => {
                self.throttled(id, running, &entry, e.to_string()).await;
                return;
            }
            // Cut short by shutdown: the journal says "running", so the
            // attempt runs again after the restart.
            Err(e) if e.is_shutdown() => return,
            Err(e) => e.to_string(),
        };
        if attempt >= MAX_ATTEMPTS {
            self.end_attempt(
                running,
                Record::Failed {
                    id: id.into(),
                    attempts: attempt,
                    error,
                },
            )
            .await;
        } else {
            let delay = self.lock().retry_delays[(attempt - 1) as usize];
            self.end_attempt(
                running,
                Record::Retry {
                    id: id.into(),
                    attempts: attempt,
                    error,
                    due_ms: now_ms().saturating_add(ms(delay)),
                },
            )
            .await;
        }
    }

    async fn throttled(
        self: &Arc<Self>,
        id: &str,
        running: &Running,
        entry: &Entry,
        message: String,
    ) {
        let now = now_ms();
        if now.saturating_sub(entry.at_ms) >= ms(MAX_EVENT_AGE) {
            self.end_attempt(
                running,
                Record::Failed {
                    id: id.into(),
                    attempts: entry.attempts,
                    error: format!("TooManyRequestsException: {message} (event too old to retry)"),
                },
            )
            .await;
            return;
        }
        let backoff = THROTTLE_BACKOFF
            .saturating_mul(1u32 << entry.throttled.min(16))
            .min(MAX_THROTTLE_BACKOFF);
        self.end_attempt(
            running,
            Record::Throttled {
                id: id.into(),
                attempts: entry.attempts,
                due_ms: now.saturating_add(ms(backoff)),
            },
        )
        .await;
    }

    /// [`EventQueue::record`] on a blocking thread (it fsyncs).
    async fn record_off(self: &Arc<Self>, r: Record) {
        let q = self.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || q.record(r)).await {
            tracing::error!("event journal: the write task failed: {e}");
        }
    }

    /// Records `r`, the outcome of `running`'s attempt, and frees its
    /// worker in the same step.
    async fn end_attempt(self: &Arc<Self>, running: &Running, r: Record) {
        let (q, tenant) = (self.clone(), running.tenant.clone());
        match tokio::task::spawn_blocking(move || q.record_ending(r, Some(&tenant))).await {
            Ok(()) => running.released.store(true, Ordering::Release),
            Err(e) => tracing::error!("event journal: the write task failed: {e}"),
        }
    }

    fn store_result(&self, id: &str, r: &InvokeResult) -> io::Result<()> {
        let frame = Message::Result(r.clone())
            .encode()
            .map_err(io::Error::other)?;
        write_durably(&self.dir.join(id).join("result"), &frame)
    }
}

/// An attempt in progress: its tenant's worker is freed when it ends,
/// however it ends.
struct Running {
    queue: Arc<EventQueue>,
    tenant: String,
    /// Set once the attempt's last record freed the worker.
    released: AtomicBool,
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.released.load(Ordering::Acquire) {
            self.queue.lock().fair.finished(&self.tenant);
        }
        self.queue.wake.notify_one();
    }
}

/// The error an outcome stands for, if it is a failure.
fn function_error(o: &Outcome) -> Option<String> {
    match o {
        Outcome::Ok => None,
        Outcome::HandledError(e) | Outcome::UnhandledError(e) => {
            Some(format!("{}: {}", e.error_type, e.error_message))
        }
        Outcome::Timeout => Some("Sandbox.Timedout: the function timed out".into()),
        Outcome::RuntimeExit(x) => Some(format!(
            "Runtime.ExitError: the runtime exited (status {:?}, signal {:?})",
            x.status, x.signal
        )),
    }
}

/// Runs blocking file work on tokio's blocking threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)))
}

/// Writes `bytes` to `path` through a temporary file and a rename, fsynced.
fn write_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
#[path = "events/tests.rs"]
mod tests;
