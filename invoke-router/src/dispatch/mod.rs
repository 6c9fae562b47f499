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
//! - [`error`]: why an invocation did not run, with its cause.
//!
//! [`Dispatcher`] is the thin async shell around them: an owned object
//! (cheap to clone, one shared core) whose methods ask the state machines
//! what to do, do it, and report back; `invocation.rs` and `lifecycle.rs`
//! hold more of its methods. Each invocation runs in its own task, so a
//! caller that goes away (an HTTP client hanging up) never leaves a slot
//! half-used. Every task it starts (invocations, VM stops, health checks,
//! the lifecycle loop) is tracked and joined by [`Dispatcher::shutdown`];
//! the shutdown token stops the loops, the abort token cuts in-flight work
//! short once the grace is over.

pub mod agent_conn;
pub mod assignment;
pub mod clock;
pub mod counting;
pub mod error;
mod invocation;
pub mod jail;
pub mod lifecycle;
pub mod pacer;
pub mod placement;
pub mod slot;

pub use error::{DispatchError, ErrorClass};

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{ServeConfig, TimingSettings};
use crate::metrics::{CapacityGauges, InvocationOutcome, Metrics, SlotGauges};
use assignment::{Assignment, Capacity};
use clock::{Clock, SystemClock};
use counting::Counting;
use placement::{Placement, Vm};
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

/// Mutable dispatcher state, behind one lock (never held across an await).
struct State {
    assignment: Assignment,
    counting: Counting,
    /// The VMs of idle slots; a busy slot's VM belongs to its invocation.
    idle: HashMap<SlotId, Vm>,
    /// Invocations admitted and not yet finished.
    in_flight: usize,
}

/// What the dispatcher's handles and tasks share.
struct Core {
    timing: TimingSettings,
    placement: Placement,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
    /// Signalled whenever a slot or capacity may have become free.
    changed: Notify,
    /// Signalled when the last in-flight invocation ends.
    drained: Notify,
    /// Cancelled when shutdown begins: no new work, loops end.
    shutting_down: CancellationToken,
    /// Cancelled when shutdown's grace is over: in-flight work is aborted.
    abort: CancellationToken,
    /// Every task the dispatcher started.
    tasks: TaskTracker,
    ping_nonce: AtomicU64,
}

/// The data plane: assigns invocations to warm or cold slots and runs them.
/// Clones share one dispatcher.
#[derive(Clone)]
pub struct Dispatcher {
    core: Arc<Core>,
}

impl Dispatcher {
    /// A dispatcher on the real clock, taking its parts of `config`
    /// (capacity, guest images, timing, tenant limits, the run dir); its
    /// lifecycle loop runs on the current tokio runtime until `shutdown`
    /// (a cancelled token) or [`Dispatcher::shutdown`].
    pub fn new(
        config: &ServeConfig,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Self::with_clock(config, metrics, Arc::new(SystemClock), shutdown)
    }

    /// A dispatcher whose reaping and health checks follow `clock`.
    pub fn with_clock(
        config: &ServeConfig,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let run_dir = config.run_dir();
        remove_stale_slot_dirs(&run_dir);
        let capacity = Capacity {
            mem_mib: config.capacity.mem_mib,
            vcpus: config.capacity.vcpus,
        };
        let limits = config
            .tenants
            .iter()
            .map(|t| (t.id.clone(), t.concurrency))
            .collect();
        let state = State {
            assignment: Assignment::new(capacity, &slot_prefix()),
            counting: Counting::new(limits),
            idle: HashMap::new(),
            in_flight: 0,
        };
        let abort = CancellationToken::new();
        let core = Arc::new(Core {
            timing: config.timing,
            placement: Placement::new(config),
            metrics,
            clock,
            state: Mutex::new(state),
            changed: Notify::new(),
            drained: Notify::new(),
            shutting_down: shutdown,
            abort,
            tasks: TaskTracker::new(),
            ping_nonce: AtomicU64::new(1),
        });
        let d = Dispatcher { core };
        d.publish(&d.lock());
        match tokio::runtime::Handle::try_current() {
            Ok(_) => {
                let weak = Arc::downgrade(&d.core);
                d.core.tasks.spawn(lifecycle::run(weak));
            }
            Err(_) => tracing::error!(
                "Dispatcher::new outside a tokio runtime: no reaping or health checks"
            ),
        }
        Arc::new(d)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.core.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes the slot and capacity gauges.
    fn publish(&self, st: &State) {
        let c = st.assignment.counts();
        self.core.metrics.set_slots(SlotGauges {
            starting: c.starting,
            idle: c.idle,
            busy: c.busy,
            checking: c.checking,
            stopping: c.stopping,
        });
        let (used, total) = (st.assignment.used(), st.assignment.capacity());
        self.core.metrics.set_capacity(CapacityGauges {
            used_mem_mib: used.mem_mib,
            total_mem_mib: total.mem_mib,
            used_vcpus: used.vcpus,
            total_vcpus: total.vcpus,
        });
    }

    /// Runs one invocation: a warm slot of its pool, else a cold start,
    /// else a bounded wait; over a concurrency limit it is refused at once.
    pub async fn invoke(
        &self,
        spec: Arc<FunctionSpec>,
        input: InvokeInput,
    ) -> Result<InvokeOutput, DispatchError> {
        let core = &self.core;
        if core.shutting_down.is_cancelled() {
            core.metrics
                .record_invocation(InvocationOutcome::Unavailable);
            return Err(DispatchError::ShuttingDown);
        }
        let admission = {
            let mut st = self.lock();
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
                    core.metrics.record_invocation(InvocationOutcome::Throttled);
                    return Err(DispatchError::Throttled(t));
                }
            }
        };
        let guard = invocation::AdmissionGuard::new(self.clone(), admission);
        let this = self.clone();
        let task = core.tasks.spawn(async move {
            let _guard = guard;
            this.run(spec, input).await
        });
        let result = task.await.unwrap_or_else(|e| {
            tracing::error!("an invocation task failed: {e}");
            Err(DispatchError::Internal(e))
        });
        core.metrics
            .record_invocation(invocation::outcome_of(&result));
        result
    }

    /// Whether [`Dispatcher::shutdown`] has begun (new invocations are refused).
    pub fn is_shutting_down(&self) -> bool {
        self.core.shutting_down.is_cancelled()
    }

    /// Slots per state and the capacity they hold (for tests and status).
    pub fn slots(&self) -> (assignment::SlotCounts, Capacity) {
        let st = self.lock();
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
