//! One invocation, start to end: wait for a slot (warm, cold or after
//! others free up), run it on the VM, give the slot back or recycle it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ember_protocol::{Invoke, Outcome};
use tokio::time::Instant as TokioInstant;

use super::agent_conn::ConnError;
use super::assignment::{Decision, Disposition};
use super::counting::Admission;
use super::lifecycle::{spawn_stop, StopHow};
use super::placement::{charge_mib, PlacementError, Vm};
use super::slot::{PoolKey, SlotId};
use super::{DispatchError, FunctionSpec, InvokeInput, InvokeOutput, Shared};
use crate::metrics::InvocationOutcome;

/// How long past the function's timeout the router waits for the agent's
/// result (the agent enforces the timeout itself and reports it).
pub const RESULT_GRACE: Duration = Duration::from_secs(5);

/// Releases an admitted invocation's counts when it ends, however it ends.
pub(super) struct AdmissionGuard {
    shared: Arc<Shared>,
    admission: Option<Admission>,
}

impl AdmissionGuard {
    pub(super) fn new(shared: Arc<Shared>, admission: Admission) -> Self {
        AdmissionGuard {
            shared,
            admission: Some(admission),
        }
    }
}

impl Drop for AdmissionGuard {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        if let Some(a) = self.admission.take() {
            st.counting.release(a);
        }
        st.in_flight = st.in_flight.saturating_sub(1);
        if st.in_flight == 0 {
            self.shared.drained.notify_waiters();
        }
    }
}

/// The metric outcome of an invocation's result.
pub(super) fn outcome_of(r: &Result<InvokeOutput, DispatchError>) -> InvocationOutcome {
    match r {
        Ok(o) => match o.result.outcome {
            Outcome::Ok => InvocationOutcome::Success,
            Outcome::HandledError(_) => InvocationOutcome::HandledError,
            Outcome::UnhandledError(_) => InvocationOutcome::UnhandledError,
            Outcome::Timeout => InvocationOutcome::Timeout,
            Outcome::RuntimeExit(_) => InvocationOutcome::RuntimeExit,
        },
        Err(DispatchError::TooManyRequests(_)) => InvocationOutcome::Throttled,
        Err(DispatchError::RuntimeFailed(_)) => InvocationOutcome::RuntimeFailed,
        Err(DispatchError::Unavailable(_)) => InvocationOutcome::Unavailable,
    }
}

/// A slot to run on.
enum Acquired {
    Warm(Box<Vm>),
    Cold(SlotId),
}

pub(super) async fn run(
    sh: &Arc<Shared>,
    spec: Arc<FunctionSpec>,
    input: InvokeInput,
) -> Result<InvokeOutput, DispatchError> {
    let arrived = Instant::now();
    let acquired = acquire(sh, &spec).await?;
    sh.metrics.queue_wait.observe(arrived.elapsed());
    let (vm, cold_start) = match acquired {
        Acquired::Warm(vm) => {
            sh.metrics.record_start(false);
            (*vm, false)
        }
        Acquired::Cold(id) => (cold_start(sh, &spec, &id).await?, true),
    };
    run_on(sh, &spec, input, vm, cold_start).await
}

/// Waits for a warm slot or room for a cold start, up to the queue wait.
async fn acquire(sh: &Arc<Shared>, spec: &FunctionSpec) -> Result<Acquired, DispatchError> {
    let pool = PoolKey {
        tenant: spec.tenant.clone(),
        function: spec.name.clone(),
        revision: spec.revision.clone(),
    };
    let charge = charge_mib(spec.memory_mib);
    let deadline = TokioInstant::now() + sh.config.queue_wait;
    loop {
        // Registered before looking, so a change in between is not missed.
        let changed = sh.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if sh.shutting_down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(DispatchError::Unavailable(
                "the router is shutting down".into(),
            ));
        }
        let mut evicted = Vec::new();
        let next = {
            let mut st = sh.lock();
            let decision = st.assignment.assign(&pool, charge, sh.clock.now());
            let next = match decision {
                Decision::Warm(id) => match st.idle.remove(&id) {
                    Some(vm) => Some(Acquired::Warm(Box::new(vm))),
                    None => {
                        // Cannot happen (idle slots always have their VM);
                        // drop the slot rather than trust it.
                        tracing::error!(slot = %id, "an idle slot without a VM");
                        st.assignment.stopped(&id);
                        None
                    }
                },
                Decision::Cold(id) => Some(Acquired::Cold(id)),
                Decision::TooLarge => {
                    let cap = st.assignment.capacity();
                    return Err(DispatchError::Unavailable(format!(
                        "the function's VM needs {charge} MiB and 1 vCPU; the host capacity is {} MiB and {} vCPUs",
                        cap.mem_mib, cap.vcpus
                    )));
                }
                Decision::Wait { evict } => {
                    for id in evict {
                        if let Some(vm) = st.idle.remove(&id) {
                            evicted.push(vm);
                        }
                    }
                    None
                }
            };
            sh.publish(&st);
            next
        };
        for vm in evicted {
            // Idle, with a read-only disk: nothing to lose, and a waiting
            // invocation wants the room as soon as possible.
            tracing::debug!(slot = %vm.id, "evicting an idle VM to make room");
            spawn_stop(sh, vm, StopHow::Kill);
        }
        if let Some(a) = next {
            return Ok(a);
        }
        if tokio::time::timeout_at(deadline, changed).await.is_err() {
            return Err(DispatchError::TooManyRequests(format!(
                "Rate Exceeded. No VM slot or host capacity became free within {} ms.",
                sh.config.queue_wait.as_millis()
            )));
        }
    }
}

/// Boots a VM in the reserved slot `id`.
async fn cold_start(
    sh: &Arc<Shared>,
    spec: &FunctionSpec,
    id: &SlotId,
) -> Result<Vm, DispatchError> {
    let started = Instant::now();
    let mut abort = sh.abort.subscribe();
    let launched = tokio::select! {
        r = Vm::launch(&sh.placement, id, spec) => r,
        _ = abort.wait_for(|a| *a) => Err(PlacementError::Host("the router is shutting down".into())),
    };
    match launched {
        Ok(vm) => {
            sh.metrics.cold_start.observe(started.elapsed());
            sh.metrics.record_start(true);
            tracing::info!(slot = %id, function = %spec.name, tenant = %spec.tenant,
                ms = started.elapsed().as_millis() as u64, "cold start");
            let mut st = sh.lock();
            st.assignment.started(id);
            sh.publish(&st);
            Ok(vm)
        }
        Err(e) => {
            sh.metrics.record_cold_start_failure();
            tracing::warn!(slot = %id, function = %spec.name, tenant = %spec.tenant, "cold start failed: {e}");
            {
                let mut st = sh.lock();
                st.assignment.start_failed(id);
                sh.publish(&st);
            }
            sh.changed.notify_waiters();
            Err(match e {
                PlacementError::Host(why) => {
                    DispatchError::Unavailable(format!("cannot start a VM: {why}"))
                }
                PlacementError::Boot(why) => {
                    DispatchError::RuntimeFailed(format!("the VM failed to start: {why}"))
                }
                PlacementError::Init {
                    error_type,
                    error_message,
                } => DispatchError::RuntimeFailed(format!("{error_type}: {error_message}")),
            })
        }
    }
}

/// Runs the invocation on `vm`, then returns the slot to its pool or stops it.
async fn run_on(
    sh: &Arc<Shared>,
    spec: &FunctionSpec,
    input: InvokeInput,
    mut vm: Vm,
    cold_start: bool,
) -> Result<InvokeOutput, DispatchError> {
    let timeout_ms = u64::try_from(spec.timeout.as_millis()).unwrap_or(u64::MAX);
    let deadline = TokioInstant::now() + spec.timeout + RESULT_GRACE;
    let inv = Invoke {
        request_id: input.request_id,
        timeout_ms,
        payload: input.payload,
        client_context: input.client_context,
        trace_id: input.trace_id,
    };
    let mut abort = sh.abort.subscribe();
    let result = tokio::select! {
        r = vm.conn.invoke(inv, deadline) => r,
        _ = abort.wait_for(|a| *a) => Err(ConnError::Closed),
    };
    let aborted = *abort.borrow();
    let (out, how) = match result {
        Ok(r) => {
            sh.metrics
                .duration
                .observe(Duration::from_micros(r.duration_us));
            let reusable = matches!(
                r.outcome,
                Outcome::Ok | Outcome::HandledError(_) | Outcome::UnhandledError(_)
            ) && !vm.has_exited();
            let out = InvokeOutput {
                result: r,
                cold_start,
                slot_id: vm.id.0.clone(),
            };
            (
                Ok(out),
                if reusable {
                    None
                } else {
                    Some(StopHow::Graceful)
                },
            )
        }
        // Nothing was sent: the VM is as it was.
        Err(ConnError::Encode(e)) => (
            Err(DispatchError::Unavailable(format!(
                "cannot send the invocation: {e}"
            ))),
            None,
        ),
        Err(_) if aborted => (
            Err(DispatchError::Unavailable(
                "the router shut down before the invocation finished".into(),
            )),
            Some(StopHow::Kill),
        ),
        Err(e) => (
            Err(DispatchError::RuntimeFailed(format!(
                "the VM failed during the invocation: {e}"
            ))),
            Some(StopHow::Kill),
        ),
    };
    let back = {
        let mut st = sh.lock();
        let disposition = st
            .assignment
            .finished(&vm.id, how.is_none(), sh.clock.now());
        let back = match disposition {
            Disposition::Idle => {
                st.idle.insert(vm.id.clone(), vm);
                None
            }
            Disposition::Stop => Some((vm, how.unwrap_or(StopHow::Graceful))),
        };
        sh.publish(&st);
        back
    };
    match back {
        Some((vm, how)) => {
            spawn_stop(sh, vm, how);
        }
        None => sh.changed.notify_waiters(),
    }
    out
}
