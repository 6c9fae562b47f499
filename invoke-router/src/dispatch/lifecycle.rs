//! Lifecycle: idle VMs reaped after the keep-alive, idle VMs pinged every
//! health interval (no pong in time: recycled), a function's VMs retired
//! on delete or update, and every VM stopped on shutdown.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::assignment::Disposition;
use super::placement::Vm;
use super::Shared;

/// How long a stopping VM may take to power off after `Shutdown` before it
/// is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long a health ping may take.
pub const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest pause between lifecycle rounds.
const MAX_TICK: Duration = Duration::from_secs(1);
/// The shortest pause between lifecycle rounds.
const MIN_TICK: Duration = Duration::from_millis(10);

/// How to stop a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopHow {
    /// Ask the agent to power off, kill after [`STOP_GRACE`].
    Graceful,
    /// Kill at once (the VM is broken).
    Kill,
}

/// Stops `vm` in the background; its slot's capacity is freed once the VMM
/// is gone.
pub(super) fn spawn_stop(sh: &Arc<Shared>, vm: Vm, how: StopHow) -> JoinHandle<()> {
    let sh = sh.clone();
    tokio::spawn(async move {
        let id = vm.id.clone();
        match how {
            StopHow::Graceful => vm.stop(STOP_GRACE).await,
            StopHow::Kill => vm.kill().await,
        }
        tracing::debug!(slot = %id, "VM stopped");
        {
            let mut st = sh.lock();
            st.assignment.stopped(&id);
            sh.publish(&st);
        }
        sh.changed.notify_waiters();
    })
}

/// The background task: a lifecycle round every tick until the dispatcher
/// is gone or shutting down.
pub(super) async fn run(shared: Weak<Shared>) {
    let period = match shared.upgrade() {
        Some(sh) => sh
            .config
            .health_interval
            .min(sh.config.keep_alive)
            .clamp(MIN_TICK, MAX_TICK),
        None => return,
    };
    loop {
        tokio::time::sleep(period).await;
        let Some(sh) = shared.upgrade() else { return };
        if sh.shutting_down.load(Ordering::SeqCst) {
            return;
        }
        tick(&sh).await;
    }
}

/// One round: stop VMs idle past the keep-alive; ping those due a check.
pub(super) async fn tick(sh: &Arc<Shared>) {
    let now = sh.clock.now();
    let (reaped, checks) = {
        let mut st = sh.lock();
        let reaped: Vec<Vm> = st
            .assignment
            .reap(now, sh.config.keep_alive)
            .iter()
            .filter_map(|id| st.idle.remove(id))
            .collect();
        let checks: Vec<Vm> = st
            .assignment
            .due_checks(now, sh.config.health_interval)
            .iter()
            .filter_map(|id| st.idle.remove(id))
            .collect();
        sh.publish(&st);
        (reaped, checks)
    };
    for vm in reaped {
        tracing::debug!(slot = %vm.id, "reaping an idle VM");
        spawn_stop(sh, vm, StopHow::Graceful);
    }
    // Concurrently: one unresponsive VM must not hold up the others.
    let pings: Vec<_> = checks
        .into_iter()
        .map(|vm| tokio::spawn(check(sh.clone(), vm)))
        .collect();
    for p in pings {
        let _ = p.await;
    }
}

/// Pings one idle VM and puts it back, or recycles it.
async fn check(sh: Arc<Shared>, mut vm: Vm) {
    let nonce = sh.ping_nonce.fetch_add(1, Ordering::Relaxed);
    let healthy = vm
        .conn
        .ping(nonce, Instant::now() + PING_TIMEOUT)
        .await
        .is_ok()
        && !vm.has_exited();
    let stop = {
        let mut st = sh.lock();
        let d = st.assignment.checked(&vm.id, healthy, sh.clock.now());
        let stop = match d {
            Disposition::Idle => {
                st.idle.insert(vm.id.clone(), vm);
                None
            }
            Disposition::Stop => Some(vm),
        };
        sh.publish(&st);
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
            spawn_stop(&sh, vm, how);
        }
        None => sh.changed.notify_waiters(),
    }
}

/// Retires a function: its idle VMs stop now (and are waited for), its
/// busy ones after their invocation.
pub(super) async fn retire(sh: &Arc<Shared>, tenant: &str, name: &str) {
    let vms: Vec<Vm> = {
        let mut st = sh.lock();
        st.counting.forget(tenant, name);
        let ids = st.assignment.retire(tenant, name);
        let vms = ids.iter().filter_map(|id| st.idle.remove(id)).collect();
        sh.publish(&st);
        vms
    };
    let stops: Vec<_> = vms
        .into_iter()
        .map(|vm| spawn_stop(sh, vm, StopHow::Graceful))
        .collect();
    for s in stops {
        let _ = s.await;
    }
}

/// Refuses new work, lets in-flight invocations finish within `grace`,
/// aborts the rest, then stops every VM and waits for them to be gone.
pub(super) async fn shutdown(sh: &Arc<Shared>, grace: Duration) {
    sh.shutting_down.store(true, Ordering::SeqCst);
    // Waiters for a slot give up now.
    sh.changed.notify_waiters();
    let deadline = Instant::now() + grace;
    loop {
        let drained = sh.drained.notified();
        tokio::pin!(drained);
        drained.as_mut().enable();
        if sh.lock().in_flight == 0 {
            break;
        }
        if tokio::time::timeout_at(deadline, drained).await.is_err() {
            tracing::warn!("shutdown: aborting invocations still running after {grace:?}");
            break;
        }
    }
    sh.abort.send_replace(true);
    let vms: Vec<Vm> = {
        let mut st = sh.lock();
        let ids = st.assignment.retire_all();
        let vms = ids.iter().filter_map(|id| st.idle.remove(id)).collect();
        sh.publish(&st);
        vms
    };
    for vm in vms {
        spawn_stop(sh, vm, StopHow::Graceful);
    }
    // Aborted invocations stop their own VMs; wait for every slot to go.
    let until = Instant::now() + STOP_GRACE + Duration::from_secs(10);
    loop {
        let changed = sh.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if sh.lock().assignment.is_empty() {
            break;
        }
        if tokio::time::timeout_at(until, changed).await.is_err() {
            tracing::error!("shutdown: some VMs did not stop in time");
            break;
        }
    }
}
