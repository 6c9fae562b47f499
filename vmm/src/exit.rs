//! How the VM ends: the first reason wins and wakes the event loop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Why the VMM stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest rebooted or powered off (i8042 reset, triple fault, system event).
    GuestStopped(String),
    /// SIGTERM or SIGINT.
    Signal(i32),
    /// The guest or the VMM failed: a vCPU could not continue.
    Failed(String),
}

impl ExitReason {
    /// The VMM's process exit status for this reason.
    pub fn exit_code(&self) -> u8 {
        match self {
            ExitReason::GuestStopped(_) | ExitReason::Signal(_) => 0,
            ExitReason::Failed(_) => 1,
        }
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::GuestStopped(how) => write!(f, "guest stopped: {how}"),
            ExitReason::Signal(sig) => write!(f, "stopped by signal {sig}"),
            ExitReason::Failed(why) => write!(f, "VM failed: {why}"),
        }
    }
}

/// The VM-wide stop switch shared by vCPU threads, devices and the event loop.
#[derive(Debug)]
pub struct ExitSignal {
    evt: EventFd,
    stopping: AtomicBool,
    reason: Mutex<Option<ExitReason>>,
}

impl ExitSignal {
    /// A stop switch that has not been thrown.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            evt: EventFd::new(EFD_NONBLOCK)?,
            stopping: AtomicBool::new(false),
            reason: Mutex::new(None),
        })
    }

    /// Asks the VM to stop for `reason`; later reasons are ignored.
    pub fn stop(&self, reason: ExitReason) {
        let mut slot = crate::devices::bus::lock(&self.reason);
        if slot.is_none() {
            *slot = Some(reason);
        }
        self.stopping.store(true, Ordering::SeqCst);
        // A full eventfd counter still wakes the loop.
        let _ = self.evt.write(1);
    }

    /// Whether a stop was asked for.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// The reason of the first stop request.
    pub fn reason(&self) -> Option<ExitReason> {
        crate::devices::bus::lock(&self.reason).clone()
    }

    /// The eventfd that becomes readable on a stop request (also the i8042's
    /// reset line, which is read as "guest stopped").
    pub fn event(&self) -> &EventFd {
        &self.evt
    }
}
