//! The data plane: runs invocations on microVM slots.
//!
//! - [`assignment`]: per-pool warm slots, cold starts within the host
//!   capacity, waiting, eviction (pure state machine).
//! - [`counting`]: per-tenant and per-function concurrency (pure).
//! - [`placement`]: a cold start, i.e. an `ember-vmm` child with its own
//!   directory, socket and drive, up to the runtime's `Ready`.
//! - [`agent_conn`]: the protocol over the VMM's vsock Unix socket.
//! - [`lifecycle`]: keep-alive reaping, health pings, retiring, shutdown.
//! - [`slot`], [`clock`]: the words and the time they use.
//!
//! [`Dispatcher`] is the thin async shell around them: it asks the state
//! machines what to do, does it, and reports back. Each invocation runs in
//! its own task, so a caller that goes away (an HTTP client hanging up)
//! never leaves a slot half-used.

pub mod agent_conn;
pub mod assignment;
pub mod clock;
pub mod counting;
mod invocation;
pub mod lifecycle;
pub mod placement;
pub mod slot;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{watch, Notify};

use crate::metrics::{CapacityGauges, InvocationOutcome, Metrics, SlotGauges};
use assignment::{Assignment, Capacity};
use clock::{Clock, SystemClock};
use counting::Counting;
use placement::{PlacementConfig, Vm};
use slot::SlotId;

/// Everything the dispatcher needs to know about a function to run it.
#[derive(Debug, Clone)]
pub struct FunctionSpec {
    /// The tenant owning it.
    pub tenant: String,
    /// Its name (unique within the tenant).
    pub name: String,
    /// Its ARN.
    pub arn: String,
    /// Changes on every code or configuration update; a VM never serves two revisions.
    pub revision: String,
    /// Read-only ext4 image holding the function's code (mounted at /var/task).
    pub code_image: PathBuf,
    /// Which runtime runs the handler.
    pub runtime: ember_protocol::RuntimeKind,
    /// A managed runtime's root file system (the VM's second, read-only
    /// drive); `None` for the others, or when this router has none.
    pub runtime_image: Option<PathBuf>,
    /// The handler.
    pub handler: String,
    /// The function's environment variables.
    pub env: Vec<(String, String)>,
    /// Memory size in MiB.
    pub memory_mib: u32,
    /// Per-invocation time limit.
    pub timeout: Duration,
    /// Reserved concurrency (PutFunctionConcurrency); Some(0) means throttled.
    pub reserved_concurrency: Option<u32>,
}

/// One invocation's input.
#[derive(Debug, Clone)]
pub struct InvokeInput {
    /// Unique id: 1 to 128 characters of `[A-Za-z0-9._:-]`.
    pub request_id: String,
    /// The event (at most 6 MiB; the API refuses larger ones).
    pub payload: Vec<u8>,
    /// `X-Amz-Client-Context`, if sent.
    pub client_context: Option<String>,
    /// The trace id, if any.
    pub trace_id: Option<String>,
}

/// How an invocation ran.
#[derive(Debug, Clone)]
pub struct InvokeOutput {
    /// The agent's result: outcome, response, durations, log tail.
    pub result: ember_protocol::InvokeResult,
    /// Whether a new VM was booted for it.
    pub cold_start: bool,
    /// Identifies the VM that ran it (tests check that VMs are never shared).
    pub slot_id: String,
}

/// Why an invocation did not run to a result.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// Over a concurrency limit, or no capacity within the queue wait
    /// (→ 429 TooManyRequestsException).
    #[error("{0}")]
    TooManyRequests(String),
    /// The VM or runtime broke: init error, crash before a result (→ 502).
    #[error("{0}")]
    RuntimeFailed(String),
    /// The router cannot run it: shutting down, cannot launch VMs (→ 500).
    #[error("{0}")]
    Unavailable(String),
}

/// How the dispatcher runs VMs.
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    /// The `ember-vmm` binary.
    pub vmm: PathBuf,
    /// The guest kernel (`vmlinux`).
    pub kernel: PathBuf,
    /// The guest initramfs.
    pub initramfs: PathBuf,
    /// Per-VM dirs live under it.
    pub run_dir: PathBuf,
    /// Host memory (MiB) VMs may use, VMM overhead included.
    pub capacity_mem_mib: u64,
    /// Host vCPUs VMs may use (one per VM).
    pub capacity_vcpus: u32,
    /// Per-tenant concurrency limit.
    pub tenant_concurrency: u32,
    /// Idle VMs are stopped after this long unused.
    pub keep_alive: Duration,
    /// How long an invocation may wait for a slot or capacity before 429.
    pub queue_wait: Duration,
    /// How often idle VMs are pinged.
    pub health_interval: Duration,
}

/// Mutable dispatcher state, behind one lock (never held across an await).
struct State {
    assignment: Assignment,
    counting: Counting,
    /// The VMs of idle slots; a busy slot's VM belongs to its invocation.
    idle: HashMap<SlotId, Vm>,
    /// Invocations admitted and not yet finished.
    in_flight: usize,
}

/// What the dispatcher's tasks share.
struct Shared {
    config: DispatchConfig,
    placement: PlacementConfig,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
    /// Signalled whenever a slot or capacity may have become free.
    changed: Notify,
    /// Signalled when the last in-flight invocation ends.
    drained: Notify,
    shutting_down: AtomicBool,
    /// Turns true when shutdown's grace is over: in-flight work is aborted.
    abort: watch::Sender<bool>,
    ping_nonce: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes the slot and capacity gauges.
    fn publish(&self, st: &State) {
        let c = st.assignment.counts();
        self.metrics.set_slots(SlotGauges {
            starting: c.starting,
            idle: c.idle,
            busy: c.busy,
            checking: c.checking,
            stopping: c.stopping,
        });
        let (used, total) = (st.assignment.used(), st.assignment.capacity());
        self.metrics.set_capacity(CapacityGauges {
            used_mem_mib: used.mem_mib,
            total_mem_mib: total.mem_mib,
            used_vcpus: used.vcpus,
            total_vcpus: total.vcpus,
        });
    }
}

/// The data plane: assigns invocations to warm or cold slots and runs them.
pub struct Dispatcher {
    shared: Arc<Shared>,
}

impl Dispatcher {
    /// A dispatcher on the real clock; spawns its background tasks on the
    /// current tokio runtime.
    pub fn new(config: DispatchConfig, metrics: Arc<Metrics>) -> Arc<Self> {
        Self::with_clock(config, metrics, Arc::new(SystemClock))
    }

    /// A dispatcher whose reaping and health checks follow `clock`.
    pub fn with_clock(
        config: DispatchConfig,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
    ) -> Arc<Self> {
        remove_stale_slot_dirs(&config.run_dir);
        let capacity = Capacity {
            mem_mib: config.capacity_mem_mib,
            vcpus: config.capacity_vcpus,
        };
        let placement = PlacementConfig {
            vmm: config.vmm.clone(),
            kernel: config.kernel.clone(),
            initramfs: config.initramfs.clone(),
            run_dir: config.run_dir.clone(),
            cold_start_timeout: placement::COLD_START_TIMEOUT,
        };
        let state = State {
            assignment: Assignment::new(capacity, &slot_prefix()),
            counting: Counting::new(config.tenant_concurrency),
            idle: HashMap::new(),
            in_flight: 0,
        };
        let shared = Arc::new(Shared {
            config,
            placement,
            metrics,
            clock,
            state: Mutex::new(state),
            changed: Notify::new(),
            drained: Notify::new(),
            shutting_down: AtomicBool::new(false),
            abort: watch::channel(false).0,
            ping_nonce: AtomicU64::new(1),
        });
        shared.publish(&shared.lock());
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(lifecycle::run(Arc::downgrade(&shared)));
            }
            Err(_) => tracing::error!(
                "Dispatcher::new outside a tokio runtime: no reaping or health checks"
            ),
        }
        Arc::new(Dispatcher { shared })
    }

    /// Runs one invocation: a warm slot of its pool, else a cold start,
    /// else a bounded wait; over a concurrency limit it is refused at once.
    pub async fn invoke(
        &self,
        spec: Arc<FunctionSpec>,
        input: InvokeInput,
    ) -> Result<InvokeOutput, DispatchError> {
        let sh = &self.shared;
        if sh.shutting_down.load(Ordering::SeqCst) {
            sh.metrics.record_invocation(InvocationOutcome::Unavailable);
            return Err(DispatchError::Unavailable(
                "the router is shutting down".into(),
            ));
        }
        let admission = {
            let mut st = sh.lock();
            match st
                .counting
                .admit(&spec.tenant, &spec.name, spec.reserved_concurrency)
            {
                Ok(a) => {
                    st.in_flight += 1;
                    a
                }
                Err(t) => {
                    drop(st);
                    sh.metrics.record_invocation(InvocationOutcome::Throttled);
                    return Err(DispatchError::TooManyRequests(t.message()));
                }
            }
        };
        let guard = invocation::AdmissionGuard::new(sh.clone(), admission);
        let shared = sh.clone();
        let task = tokio::spawn(async move {
            let _guard = guard;
            invocation::run(&shared, spec, input).await
        });
        let result = task.await.unwrap_or_else(|e| {
            tracing::error!("an invocation task failed: {e}");
            Err(DispatchError::Unavailable(
                "the invocation failed inside the router".into(),
            ))
        });
        sh.metrics
            .record_invocation(invocation::outcome_of(&result));
        result
    }

    /// Stops (after their in-flight invocation) every VM of this function; called on delete and on code/config updates.
    pub async fn retire(&self, tenant: &str, name: &str) {
        lifecycle::retire(&self.shared, tenant, name).await;
    }

    /// Finishes in-flight invocations within `grace`, then stops every VM.
    pub async fn shutdown(&self, grace: Duration) {
        lifecycle::shutdown(&self.shared, grace).await;
    }

    /// Whether [`Dispatcher::shutdown`] has begun (new invocations are refused).
    pub fn is_shutting_down(&self) -> bool {
        self.shared.shutting_down.load(Ordering::SeqCst)
    }

    /// Runs one round of reaping and health checks now (the background
    /// task does this periodically; tests on a manual clock call it).
    pub async fn tick(&self) {
        lifecycle::tick(&self.shared).await;
    }

    /// Slots per state and the capacity they hold (for tests and status).
    pub fn slots(&self) -> (assignment::SlotCounts, Capacity) {
        let st = self.shared.lock();
        (st.assignment.counts(), st.assignment.used())
    }
}

/// Slot ids start with this process's own prefix, so directories of
/// another router run are told apart.
fn slot_prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("vm-{:08x}-", nanos ^ std::process::id().rotate_left(16))
}

/// Removes slot directories left by a router that died (its VMMs died
/// with it: they get SIGKILL when their parent exits).
fn remove_stale_slot_dirs(run_dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(run_dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with("vm-") {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}
