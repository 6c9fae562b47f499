//! PID 1 duties: the pseudo filesystems, the loopback interface, the
//! function's code volume, a managed runtime's image, boot timing, and a
//! clean power-off.

use std::ffi::{CStr, CString};
use std::io;
use std::path::Path;
use std::time::Duration;

/// Whether this process is PID 1 (the guest's init).
pub fn is_pid1() -> bool {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() == 1 }
}

/// A filesystem PID 1 mounts before anything else runs.
struct Mount {
    source: &'static CStr,
    target: &'static CStr,
    fstype: &'static CStr,
    flags: libc::c_ulong,
    data: Option<&'static CStr>,
    /// The guest works without it (it says so on the console).
    optional: bool,
}

const NOSUID_NODEV_NOEXEC: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

/// In mount order: `/dev/pts` needs `/dev`, the cgroup mount needs `/sys`.
const MOUNTS: &[Mount] = &[
    Mount {
        source: c"devtmpfs",
        target: c"/dev",
        fstype: c"devtmpfs",
        flags: libc::MS_NOSUID,
        data: None,
        optional: false,
    },
    Mount {
        source: c"proc",
        target: c"/proc",
        fstype: c"proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
        optional: false,
    },
    Mount {
        source: c"sysfs",
        target: c"/sys",
        fstype: c"sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
        optional: false,
    },
    Mount {
        source: c"devpts",
        target: c"/dev/pts",
        fstype: c"devpts",
        flags: libc::MS_NOSUID | libc::MS_NOEXEC,
        data: Some(c"mode=0620,ptmxmode=0666"),
        optional: true,
    },
    // Handlers write here; a quarter of the VM's memory at most, so a full
    // /tmp cannot starve the agent.
    Mount {
        source: c"tmpfs",
        target: c"/tmp",
        fstype: c"tmpfs",
        flags: libc::MS_NOSUID | libc::MS_NODEV,
        data: Some(c"size=25%,mode=1777"),
        optional: false,
    },
    Mount {
        source: c"cgroup2",
        target: c"/sys/fs/cgroup",
        fstype: c"cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
        optional: true,
    },
];

/// Mounts the pseudo filesystems. Returns warnings for optional mounts
/// that failed; fails on an essential one.
pub fn mount_all() -> Result<Vec<String>, String> {
    let mut warnings = Vec::new();
    for m in MOUNTS {
        // SAFETY: every pointer is a NUL-terminated static string or null.
        let rc = unsafe {
            libc::mkdir(m.target.as_ptr(), 0o755);
            libc::mount(
                m.source.as_ptr(),
                m.target.as_ptr(),
                m.fstype.as_ptr(),
                m.flags,
                m.data.map_or(std::ptr::null(), |d| d.as_ptr().cast()),
            )
        };
        let err = io::Error::last_os_error();
        if rc != 0 && err.raw_os_error() != Some(libc::EBUSY) {
            let msg = format!("mount {:?} on {:?}: {err}", m.fstype, m.target);
            if m.optional {
                warnings.push(msg);
            } else {
                return Err(msg);
            }
        }
    }
    Ok(warnings)
}

fn c_path(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

/// Mounts a managed runtime's root file system, an ext4 image on `device`,
/// read-only at `root`, and binds the guest's `task_root`, `/tmp`, `/proc`
/// and `/dev` into it at the same paths (the image has the mount points),
/// so a runtime chrooted there sees its interpreter and the function.
pub fn mount_runtime(device: &Path, root: &Path, task_root: &Path) -> io::Result<()> {
    mount_task(device, root)?;
    let inside = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
    for (from, rec) in [
        (task_root, false),
        (Path::new("/tmp"), false),
        (Path::new("/proc"), false),
        (Path::new("/dev"), true),
    ] {
        let to = inside(from);
        let (src, dst) = (c_path(from)?, c_path(&to)?);
        let flags = libc::MS_BIND | if rec { libc::MS_REC } else { 0 };
        // SAFETY: NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                dst.as_ptr(),
                std::ptr::null(),
                flags,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("bind {} on {}: {e}", from.display(), to.display()),
            ));
        }
    }
    Ok(())
}

/// Mounts the function's code, an ext4 image on `device`, read-only at
/// `target`.
pub fn mount_task(device: &Path, target: &Path) -> io::Result<()> {
    std::fs::create_dir_all(target)?;
    let (dev, dir) = (c_path(device)?, c_path(target)?);
    // SAFETY: NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            dev.as_ptr(),
            dir.as_ptr(),
            c"ext4".as_ptr(),
            libc::MS_RDONLY | libc::MS_NODEV | libc::MS_NOSUID,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!(
                "mount {} on {} (ext4, read-only): {e}",
                device.display(),
                target.display()
            ),
        ));
    }
    Ok(())
}

/// Brings up `lo`, which the Runtime API listens on.
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: a plain socket call; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: ifreq is plain data; the ioctls read and write only it.
    let result = unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) != 0 {
            Err(io::Error::last_os_error())
        } else {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            if libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) != 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        }
    };
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    result
}

/// Microseconds since the kernel started (CLOCK_BOOTTIME).
pub fn uptime_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out-parameter.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1000
}

/// The running kernel's release, e.g. `6.12.43`.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The kernel command line (empty when `/proc` is not mounted).
pub fn kernel_cmdline() -> String {
    std::fs::read_to_string("/proc/cmdline").unwrap_or_default()
}

/// Ends the VM cleanly: every other process is stopped, the code volume
/// unmounted, buffers synced, then the VM resets (Ember VMMs, like
/// Firecracker, exit on a guest reset). Never returns.
pub fn power_off() -> ! {
    // SAFETY: signalling every other process is what PID 1 does at shutdown.
    unsafe { libc::kill(-1, libc::SIGTERM) };
    std::thread::sleep(Duration::from_millis(100));
    // SAFETY: as above; the sync and reboot calls take no pointers but the
    // static path.
    unsafe {
        libc::kill(-1, libc::SIGKILL);
        libc::umount2(c"/var/task".as_ptr(), libc::MNT_DETACH);
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
    // reboot only returns on failure; PID 1 must never exit.
    loop {
        // SAFETY: pause has no preconditions.
        unsafe { libc::pause() };
    }
}

/// Waits for a signal that asks init to stop the machine (SIGTERM, SIGINT,
/// SIGUSR1, SIGUSR2) and names it. Never returns if none can be watched.
pub async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let watch = |kind: SignalKind| signal(kind).ok();
    let (mut term, mut int, mut usr1, mut usr2) = (
        watch(SignalKind::terminate()),
        watch(SignalKind::interrupt()),
        watch(SignalKind::user_defined1()),
        watch(SignalKind::user_defined2()),
    );
    async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
        match s {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
    }
    tokio::select! {
        _ = recv(&mut term) => "SIGTERM",
        _ = recv(&mut int) => "SIGINT",
        _ = recv(&mut usr1) => "SIGUSR1",
        _ = recv(&mut usr2) => "SIGUSR2",
    }
}
