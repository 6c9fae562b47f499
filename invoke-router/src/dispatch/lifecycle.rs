//! Lifecycle (more of [`Dispatcher`]'s methods): idle VMs reaped after the
//! keep-alive, idle VMs pinged every health interval (no pong in time:
//! recycled), a function's VMs retired on delete or update, and every VM
//! stopped on shutdown, its tasks joined.

use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::assignment::Disposition;
use super::placement::Vm;
use super::{Core, Dispatcher};

/// How long a stopping VM may take to power off after `Shutdown` before it
/// is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long a health ping may take, sending included.
pub const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest pause between lifecycle rounds.
const MAX_TICK: Duration = Duration::from_secs(1);
/// The shortest pause between lifecycle rounds.
const MIN_TICK: Duration = Duration::from_millis(10);
/// How long shutdown waits for the dispatcher's last tasks.
const JOIN_WAIT: Duration = Duration::from_secs(10);

/// How to stop a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopHow {
    /// Ask the agent to power off, kill after [`STOP_GRACE`].
    Graceful,
    /// Kill at once (the VM is broken).
    Kill,
}

/// The background task: a lifecycle round every tick until the dispatcher
/// is gone or shutting down.
pub(super) async fn run(core: Weak<Core>) {
    let (period, stop) = match core.upgrade() {
        Some(c) => (
            c.timing
                .health_interval
                .min(c.timing.keep_alive)
                .clamp(MIN_TICK, MAX_TICK),
            c.shutting_down.clone(),
        ),
        None => return,
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        let Some(core) = core.upgrade() else { return };
        Dispatcher { core }.tick().await;
    }
}

impl Dispatcher {
    /// Stops `vm` in the background; its slot's capacity is freed once the
    /// VMM is gone.
    pub(super) fn spawn_stop(&self, vm: Vm, how: StopHow) -> JoinHandle<()> {
        let this = self.clone();
        self.core.tasks.spawn(async move {
            let id = vm.id.clone();
            match how {
                StopHow::Graceful => vm.stop(STOP_GRACE).await,
                StopHow::Kill => vm.kill().await,
            }
            tracing::debug!(slot = %id, "VM stopped");
            {
                let mut st = this.lock();
                st.assignment.stopped(&id);
                this.publish(&st);
            }
            this.core.changed.notify_waiters();
        })
    }

    /// Runs one round of reaping and health checks now: stops VMs idle past
    /// the keep-alive, pings those due a check, each ping in its own task
    /// and bounded (the background loop does this periodically; tests on a
    /// manual clock call it).
    pub async fn tick(&self) {
        let core = &self.core;
        let now = core.clock.now();
        let (reaped, checks) = {
            let mut st = self.lock();
            let reaped: Vec<Vm> = st
                .assignment
                .reap(now, core.timing.keep_alive)
                .iter()
                .filter_map(|id| st.idle.remove(id))
                .collect();
            let checks: Vec<Vm> = st
                .assignment
                .due_checks(now, core.timing.health_interval)
                .iter()
                .filter_map(|id| st.idle.remove(id))
                .collect();
            self.publish(&st);
            (reaped, checks)
        };
        for vm in reaped {
            tracing::debug!(slot = %vm.id, "reaping an idle VM");
            self.spawn_stop(vm, StopHow::Graceful);
        }
        // Concurrently: one unresponsive VM must not hold up the others.
        let pings: Vec<_> = checks
            .into_iter()
            .map(|vm| {
                let this = self.clone();
                core.tasks.spawn(async move { this.check(vm).await })
            })
            .collect();
        for p in pings {
            let _ = p.await;
        }
    }

    /// Pings one idle VM and puts it back, or recycles it.
    async fn check(&self, mut vm: Vm) {
        let core = &self.core;
        let nonce = core.ping_nonce.fetch_add(1, Ordering::Relaxed);
        let healthy = vm
            .conn
            .ping(nonce, Instant::now() + PING_TIMEOUT)
            .await
            .is_ok()
            && !vm.has_exited();
        let stop = {
            let mut st = self.lock();
            let d = st.assignment.checked(&vm.id, healthy, core.clock.now());
            let stop = match d {
                Disposition::Idle => {
                    st.idle.insert(vm.id.clone(), vm);
                    None
                }
                Disposition::Stop => Some(vm),
            };
            self.publish(&st);
            stop
        };
        match stop {
            Some(vm) => {
                if !healthy {
                    tracing::warn!(slot = %vm.id, "an idle VM failed its health check; recycling it");
                }
                let how = if healthy {
                    StopHow::Graceful
                } else {
                    StopHow::Kill
                };
                self.spawn_stop(vm, how);
            }
            None => core.changed.notify_waiters(),
        }
    }

    /// Stops (after their in-flight invocation) every VM of this function;
    /// called on delete and on code/config updates. Idle VMs stop now and
    /// are waited for.
    pub async fn retire(&self, tenant: &str, name: &str) {
        let vms: Vec<Vm> = {
            let mut st = self.lock();
            st.counting.forget(tenant, name);
            let ids = st.assignment.retire(tenant, name);
            let vms = ids.iter().filter_map(|id| st.idle.remove(id)).collect();
            self.publish(&st);
            vms
        };
        let stops: Vec<_> = vms
            .into_iter()
            .map(|vm| self.spawn_stop(vm, StopHow::Graceful))
            .collect();
        for s in stops {
            let _ = s.await;
        }
    }

    /// Refuses new work, lets in-flight invocations finish within `grace`,
    /// aborts the rest, stops every VM, and joins every task it started.
    pub async fn shutdown(&self, grace: Duration) {
        let core = &self.core;
        core.shutting_down.cancel();
        // Waiters for a slot give up now.
        core.changed.notify_waiters();
        let deadline = Instant::now() + grace;
        loop {
            let drained = core.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.lock().in_flight == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, drained).await.is_err() {
                tracing::warn!("shutdown: aborting invocations still running after {grace:?}");
                break;
            }
        }
        core.abort.cancel();
        let vms: Vec<Vm> = {
            let mut st = self.lock();
            let ids = st.assignment.retire_all();
            let vms = ids.iter().filter_map(|id| st.idle.remove(id)).collect();
            self.publish(&st);
            vms
        };
        for vm in vms {
            self.spawn_stop(vm, StopHow::Graceful);
        }
        // Aborted invocations stop their own VMs; wait for every slot to go.
        let until = Instant::now() + STOP_GRACE + Duration::from_secs(10);
        loop {
            let changed = core.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.lock().assignment.is_empty() {
                break;
            }
            if tokio::time::timeout_at(until, changed).await.is_err() {
                tracing::error!("shutdown: some VMs did not stop in time");
                break;
            }
        }
        core.tasks.close();
        if tokio::time::timeout(JOIN_WAIT, core.tasks.wait())
            .await
            .is_err()
        {
            tracing::error!(
                left = core.tasks.len(),
                "shutdown: some dispatcher tasks did not end in time"
            );
        }
    }
}
