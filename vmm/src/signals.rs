//! Signal handling: SIGTERM/SIGINT stop the VM; a real-time signal kicks
//! vCPU threads out of KVM_RUN.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicI32, Ordering};

use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

/// The eventfd the termination handler writes to (-1: none yet).
static STOP_FD: AtomicI32 = AtomicI32::new(-1);
/// The last termination signal received (0: none).
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

/// The signal that interrupts a vCPU thread's KVM_RUN.
pub fn vcpu_kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn on_terminate(signum: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    STOP_SIGNAL.store(signum, Ordering::SeqCst);
    let fd = STOP_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; `one` outlives the call.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Interrupting the ioctl is the whole point.
}

/// Installs the SIGTERM/SIGINT handlers (which record the signal) and the
/// vCPU kick handler. Call it before any host resource exists, so that a
/// signal during start-up still ends in a clean stop.
pub fn install() -> std::io::Result<()> {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        register_signal_handler(sig, on_terminate).map_err(std::io::Error::from)?;
    }
    register_signal_handler(vcpu_kick_signal(), on_kick).map_err(std::io::Error::from)
}

/// From now on a termination signal also writes to `stop_evt`.
pub fn wake_on_stop(stop_evt: &impl AsRawFd) {
    STOP_FD.store(stop_evt.as_raw_fd(), Ordering::SeqCst);
}

/// The termination signal received, if any.
pub fn received() -> Option<i32> {
    match STOP_SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        sig => Some(sig),
    }
}
