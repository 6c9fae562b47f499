//! One invocation, start to end (more of [`Dispatcher`]'s methods): wait
//! for a slot (warm, cold or after others free up), run it on the VM, give
//! the slot back or recycle it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ember_protocol::{Invoke, Outcome};
use tokio::time::Instant as TokioInstant;

use super::agent_conn::ConnError;
use super::assignment::{Decision, Disposition};
use super::counting::Admission;
use super::lifecycle::StopHow;
use super::placement::{charge_mib, PlacementError, Vm};
use super::slot::{PoolKey, SlotId};
use super::{DispatchError, Dispatcher, FunctionSpec, InvokeInput, InvokeOutput};
use crate::metrics::InvocationOutcome;

/// How long past the function's timeout the router waits for the agent's
/// result (the agent enforces the timeout itself and reports it). The
/// invocation's deadline bounds sending it too: a guest that stops
/// reading fails its own invocation then.
pub const RESULT_GRACE: Duration = Duration::from_secs(5);

/// Releases an admitted invocation's counts when it ends, however it ends.
pub(super) struct AdmissionGuard {
    dispatcher: Dispatcher,
    admission: Option<Admission>,
}

impl AdmissionGuard {
    pub(super) fn new(dispatcher: Dispatcher, admission: Admission) -> Self {
        AdmissionGuard {
            dispatcher,
            admission: Some(admission),
        }
    }
}

impl Drop for AdmissionGuard {
    fn drop(&mut self) {
        let mut st = self.dispatcher.lock();
        if let Some(a) = self.admission.take() {
            st.counting.release(a);
        }
        st.in_flight = st.in_flight.saturating_sub(1);
        if st.in_flight == 0 {
            self.dispatcher.core.drained.notify_waiters();
        }
    }
}

/// The metric outcome of an invocation's result.
pub(super) fn outcome_of(r: &Result<InvokeOutput, DispatchError>) -> InvocationOutcome {
    use super::ErrorClass;
    match r {
        Ok(o) => match o.result.outcome {
            Outcome::Ok => InvocationOutcome::Success,
            Outcome::HandledError(_) => InvocationOutcome::HandledError,
            Outcome::UnhandledError(_) => InvocationOutcome::UnhandledError,
            Outcome::Timeout => InvocationOutcome::Timeout,
            Outcome::RuntimeExit(_) => InvocationOutcome::RuntimeExit,
        },
        Err(e) => match e.class() {
            ErrorClass::TooManyRequests => InvocationOutcome::Throttled,
            ErrorClass::RuntimeFailed => InvocationOutcome::RuntimeFailed,
            ErrorClass::Unavailable => InvocationOutcome::Unavailable,
        },
    }
}

/// A slot to run on.
enum Acquired {
    Warm(Box<Vm>),
    Cold(SlotId),
}

impl Dispatcher {
    /// The admitted invocation, in its own task.
    pub(super) async fn run(
        &self,
        spec: Arc<FunctionSpec>,
        input: InvokeInput,
    ) -> Result<InvokeOutput, DispatchError> {
        let arrived = Instant::now();
        let acquired = self.acquire(&spec).await?;
        self.core.metrics.queue_wait.observe(arrived.elapsed());
        let (vm, cold_start) = match acquired {
            Acquired::Warm(vm) => {
                self.core.metrics.record_start(false);
                (*vm, false)
            }
            Acquired::Cold(id) => (self.cold_start(&spec, &id).await?, true),
        };
        self.run_on(&spec, input, vm, cold_start).await
    }

    /// Waits for a warm slot or room for a cold start, up to the queue wait.
    async fn acquire(&self, spec: &FunctionSpec) -> Result<Acquired, DispatchError> {
        let core = &self.core;
        let pool = PoolKey {
            tenant: spec.tenant.clone(),
            function: spec.name.clone(),
            revision: spec.revision.clone(),
        };
        let charge = charge_mib(spec.memory_mib);
        let deadline = TokioInstant::now() + core.timing.queue_wait;
        loop {
            // Registered before looking, so a change in between is not missed.
            let changed = core.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if core.shutting_down.is_cancelled() {
                return Err(DispatchError::ShuttingDown);
            }
            let mut evicted = Vec::new();
            let next = {
                let mut st = self.lock();
                let decision = st.assignment.assign(&pool, charge, core.clock.now());
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
                        return Err(DispatchError::TooLarge {
                            needs_mib: charge,
                            capacity_mib: cap.mem_mib,
                            capacity_vcpus: cap.vcpus,
                        });
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
                self.publish(&st);
                next
            };
            for vm in evicted {
                // Idle, with a read-only disk: nothing to lose, and a waiting
                // invocation wants the room as soon as possible.
                tracing::debug!(slot = %vm.id, "evicting an idle VM to make room");
                self.spawn_stop(vm, StopHow::Kill);
            }
            if let Some(a) = next {
                return Ok(a);
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Err(DispatchError::NoSlot(core.timing.queue_wait));
            }
        }
    }

    /// Boots a VM in the reserved slot `id`.
    async fn cold_start(&self, spec: &FunctionSpec, id: &SlotId) -> Result<Vm, DispatchError> {
        let core = &self.core;
        let started = Instant::now();
        let launch = || async {
            tokio::select! {
                r = Vm::launch(&core.placement, id, spec) => r.map_err(DispatchError::Placement),
                _ = core.abort.cancelled() => Err(DispatchError::Aborted),
            }
        };
        let mut launched = launch().await;
        if let Err(DispatchError::Placement(e @ PlacementError::Lost(_))) = &launched {
            // No event reached that VM: one more boot is safe, and spares
            // the caller a host-side hiccup. Counted and logged all the same.
            core.metrics.record_cold_start_failure();
            tracing::warn!(slot = %id, function = %spec.name, tenant = %spec.tenant,
                "cold start lost its VM ({e}); booting a replacement once");
            launched = launch().await;
        }
        match launched {
            Ok(vm) => {
                core.metrics.cold_start.observe(started.elapsed());
                core.metrics.record_start(true);
                tracing::info!(slot = %id, function = %spec.name, tenant = %spec.tenant,
                    ms = started.elapsed().as_millis() as u64, "cold start");
                let mut st = self.lock();
                st.assignment.started(id);
                self.publish(&st);
                Ok(vm)
            }
            Err(e) => {
                core.metrics.record_cold_start_failure();
                tracing::warn!(slot = %id, function = %spec.name, tenant = %spec.tenant, "cold start failed: {e}");
                {
                    let mut st = self.lock();
                    st.assignment.start_failed(id);
                    self.publish(&st);
                }
                core.changed.notify_waiters();
                Err(e)
            }
        }
    }

    /// Runs the invocation on `vm`, then returns the slot to its pool or stops it.
    async fn run_on(
        &self,
        spec: &FunctionSpec,
        input: InvokeInput,
        mut vm: Vm,
        cold_start: bool,
    ) -> Result<InvokeOutput, DispatchError> {
        let core = &self.core;
        let timeout_ms = u64::try_from(spec.timeout.as_millis()).unwrap_or(u64::MAX);
        let deadline = TokioInstant::now() + spec.timeout + RESULT_GRACE;
        let inv = Invoke {
            request_id: input.request_id,
            timeout_ms,
            payload: input.payload,
            client_context: input.client_context,
            trace_id: input.trace_id,
        };
        let result = tokio::select! {
            r = vm.conn.invoke(inv, deadline) => r,
            _ = core.abort.cancelled() => Err(ConnError::Closed),
        };
        let aborted = core.abort.is_cancelled();
        let (out, how) = match result {
            Ok(r) => {
                core.metrics
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
                (Ok(out), (!reusable).then_some(StopHow::Graceful))
            }
            // Nothing was sent: the VM is as it was.
            Err(ConnError::Encode(e)) => (Err(DispatchError::Encode(e)), None),
            Err(_) if aborted => (Err(DispatchError::Aborted), Some(StopHow::Kill)),
            Err(e) => {
                let exiting = matches!(e, ConnError::Closed | ConnError::Io(_));
                let report = vm.failure_report(exiting).await;
                tracing::warn!(slot = %vm.id, function = %spec.name, tenant = %spec.tenant,
                    "the VM failed during an invocation: {e}{report}");
                (Err(DispatchError::Vm(e)), Some(StopHow::Kill))
            }
        };
        let back = {
            let mut st = self.lock();
            let disposition = st
                .assignment
                .finished(&vm.id, how.is_none(), core.clock.now());
            let back = match disposition {
                Disposition::Idle => {
                    st.idle.insert(vm.id.clone(), vm);
                    None
                }
                Disposition::Stop => Some((vm, how.unwrap_or(StopHow::Graceful))),
            };
            self.publish(&st);
            back
        };
        match back {
            Some((vm, how)) => {
                self.spawn_stop(vm, how);
            }
            None => core.changed.notify_waiters(),
        }
        out
    }
}
