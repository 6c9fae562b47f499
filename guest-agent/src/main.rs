//! Ember guest agent: PID 1 inside every Ember microVM.
//!
//! Until the agent issue lands this is the boot placeholder: it mounts the
//! pseudo filesystems, prints [`READY_MARKER`] on the console so the host can
//! tell that the guest kernel reached user space, and resets the VM. Ember
//! VMMs, like Firecracker, treat a guest reset as the VM's exit.

use std::ffi::CStr;
use std::io::Write;
use std::process::ExitCode;

/// Printed on the console once user space is up.
const READY_MARKER: &str = "EMBER-GUEST-READY";

/// A pseudo filesystem PID 1 mounts before anything else runs.
struct Mount {
    source: &'static CStr,
    target: &'static CStr,
    fstype: &'static CStr,
}

const MOUNTS: &[Mount] = &[
    Mount {
        source: c"devtmpfs",
        target: c"/dev",
        fstype: c"devtmpfs",
    },
    Mount {
        source: c"proc",
        target: c"/proc",
        fstype: c"proc",
    },
    Mount {
        source: c"sysfs",
        target: c"/sys",
        fstype: c"sysfs",
    },
    Mount {
        source: c"tmpfs",
        target: c"/tmp",
        fstype: c"tmpfs",
    },
];

fn mount_all() -> Result<(), String> {
    for m in MOUNTS {
        // SAFETY: every pointer is a NUL-terminated static string.
        let rc = unsafe {
            libc::mkdir(m.target.as_ptr(), 0o755);
            libc::mount(
                m.source.as_ptr(),
                m.target.as_ptr(),
                m.fstype.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        let err = std::io::Error::last_os_error();
        if rc != 0 && err.raw_os_error() != Some(libc::EBUSY) {
            return Err(format!("mount {:?} on {:?}: {err}", m.fstype, m.target));
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    // SAFETY: getpid has no preconditions.
    if unsafe { libc::getpid() } != 1 {
        eprintln!("ember-guest-agent: must run as PID 1 inside an Ember guest");
        return ExitCode::from(2);
    }
    let mut out = std::io::stdout();
    match mount_all() {
        Ok(()) => {
            let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
            let _ = writeln!(out, "{READY_MARKER} kernel={}", kernel.trim());
        }
        Err(e) => {
            let _ = writeln!(out, "ember-guest-agent: {e}");
        }
    }
    let _ = out.flush();
    // SAFETY: sync and reboot take no pointers; PID 1 may reboot.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
    // reboot only returns on failure; PID 1 must never exit.
    loop {
        // SAFETY: pause has no preconditions.
        unsafe { libc::pause() };
    }
}
