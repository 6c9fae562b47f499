//! Child processes and zombies. As PID 1 the agent inherits every orphan, so
//! it reaps all children itself (`wait4(-1)`) and hands the exit of the ones
//! it started to whoever waits for them. One registry serves the whole
//! process, so several agents in one test binary do not steal each other's
//! exits.

use std::collections::HashMap;
use std::io;
use std::process::{Child, Command};
use std::sync::Mutex;
use std::time::Duration;

use ember_protocol::ExitInfo;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

/// How a child of ours ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Exit status or signal.
    pub info: ExitInfo,
    /// Its peak resident memory in bytes.
    pub max_rss_bytes: u64,
}

type Waiters = HashMap<libc::pid_t, oneshot::Sender<Exit>>;

static WAITERS: Mutex<Option<Waiters>> = Mutex::new(None);

fn waiters() -> std::sync::MutexGuard<'static, Option<Waiters>> {
    WAITERS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Spawns `cmd` and returns the child with a receiver for its exit. The
/// registry stays locked across the spawn so the reaper cannot collect the
/// child before it is registered.
pub fn spawn(cmd: &mut Command) -> io::Result<(Child, oneshot::Receiver<Exit>)> {
    let mut guard = waiters();
    let child = cmd.spawn()?;
    let (tx, rx) = oneshot::channel();
    guard
        .get_or_insert_with(HashMap::new)
        .insert(child.id() as libc::pid_t, tx);
    Ok((child, rx))
}

/// Collects every exited child now, without blocking.
pub fn reap_all() {
    let mut guard = waiters();
    loop {
        let mut status = 0;
        // SAFETY: rusage is plain data; wait4 writes both out-parameters.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointers to locals; WNOHANG never blocks.
        let pid = unsafe { libc::wait4(-1, &mut status, libc::WNOHANG, &mut usage) };
        if pid <= 0 {
            return;
        }
        let info = if libc::WIFSIGNALED(status) {
            ExitInfo {
                status: None,
                signal: Some(libc::WTERMSIG(status)),
            }
        } else {
            ExitInfo {
                status: Some(libc::WEXITSTATUS(status)),
                signal: None,
            }
        };
        if let Some(tx) = guard.as_mut().and_then(|w| w.remove(&pid)) {
            let _ = tx.send(Exit {
                info,
                max_rss_bytes: (usage.ru_maxrss.max(0) as u64) * 1024,
            });
        }
    }
}

/// Reaps children whenever SIGCHLD arrives (and once a second, in case a
/// signal was coalesced away), forever.
pub async fn run() {
    let mut sigchld = signal(SignalKind::child()).ok();
    loop {
        reap_all();
        match sigchld.as_mut() {
            Some(s) => {
                let _ = tokio::time::timeout(Duration::from_secs(1), s.recv()).await;
            }
            None => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
