//! What confines a handler: an unprivileged uid with no capabilities, and a
//! cgroup with a memory limit below the VM's memory so the agent outlives a
//! handler that eats memory, and a process limit ([`HANDLER_PIDS_MAX`]) so
//! a fork bomb cannot exhaust the guest's pids and starve the agent. Both
//! need root (and the cgroup a cgroup2 mount); without them the agent runs
//! handlers unconfined and says so.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Memory kept out of the handler's reach for the kernel and the agent.
pub const AGENT_RESERVE_BYTES: u64 = 48 << 20;

/// The most processes and threads a handler's cgroup may hold at once
/// (Lambda's limit is 1024 as well); a fork past it fails with EAGAIN.
pub const HANDLER_PIDS_MAX: u32 = 1024;

/// How handlers are confined; every part is optional.
#[derive(Debug, Clone, Default)]
pub struct SandboxOptions {
    /// Run handlers as this uid and gid (dropping every capability).
    pub uid_gid: Option<(u32, u32)>,
    /// A cgroup2 directory under which the agent makes the handlers' cgroup.
    pub cgroup_root: Option<PathBuf>,
}

/// A cgroup holding the runtime and its descendants.
#[derive(Debug)]
pub struct Cgroup {
    dir: PathBuf,
    procs: OwnedFd,
}

impl Cgroup {
    /// Creates (or reuses) `root/name` with `memory.max = limit_bytes` and
    /// `pids.max =` [`HANDLER_PIDS_MAX`], and kills the whole group when one
    /// of its processes runs out of memory.
    pub fn create(root: &Path, name: &str, limit_bytes: u64) -> io::Result<Cgroup> {
        let ctx = |what: &str, e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
        // Fails harmlessly when already enabled; the memory.max and pids.max
        // writes below report a missing controller.
        for controller in ["+memory", "+pids"] {
            let _ = fs::write(root.join("cgroup.subtree_control"), controller);
        }
        let dir = root.join(name);
        match fs::create_dir(&dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                return Err(ctx(&format!("mkdir {}", dir.display()), e))
            }
            _ => {}
        }
        fs::write(dir.join("memory.max"), limit_bytes.to_string())
            .map_err(|e| ctx("memory.max", e))?;
        fs::write(dir.join("pids.max"), HANDLER_PIDS_MAX.to_string())
            .map_err(|e| ctx("pids.max", e))?;
        let _ = fs::write(dir.join("memory.swap.max"), "0");
        let _ = fs::write(dir.join("memory.oom.group"), "1");
        let procs = OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))
            .map_err(|e| ctx("cgroup.procs", e))?;
        Ok(Cgroup {
            dir,
            procs: procs.into(),
        })
    }

    /// The group's peak memory use since it was made, if the kernel says.
    pub fn peak_bytes(&self) -> Option<u64> {
        fs::read_to_string(self.dir.join("memory.peak"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The number of processes and threads in the group now.
    pub fn pids_current(&self) -> Option<u64> {
        fs::read_to_string(self.dir.join("pids.current"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// SIGKILLs every process in the group, even those that left the
    /// runtime's process group.
    pub fn kill_all(&self) {
        let _ = fs::write(self.dir.join("cgroup.kill"), "1");
    }
}

/// The handler's memory limit: the function's memory size, but never more
/// than the VM's memory less [`AGENT_RESERVE_BYTES`].
pub fn memory_limit(memory_mib: u32) -> u64 {
    let wanted = u64::from(memory_mib) << 20;
    match vm_memory_bytes() {
        Some(total) => wanted.min(total.saturating_sub(AGENT_RESERVE_BYTES).max(16 << 20)),
        None => wanted,
    }
}

fn vm_memory_bytes() -> Option<u64> {
    let meminfo = fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Makes `cmd`'s child the leader of its own process group, moves it into
/// `cgroup` and drops to `uid_gid` with no capabilities, all before it runs
/// a single instruction of the handler.
pub fn confine(cmd: &mut Command, cgroup: Option<&Cgroup>, uid_gid: Option<(u32, u32)>) {
    let procs_fd = cgroup.map(|c| c.procs.as_raw_fd());
    // SAFETY: the closure runs between fork and exec and only makes raw
    // system calls (async-signal-safe), touching no allocator or lock.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setpgid(0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some(fd) = procs_fd {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            if let Some((uid, gid)) = uid_gid {
                // Empty the bounding set so no exec can regain a capability.
                for cap in 0..64 {
                    if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 {
                        break;
                    }
                }
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setresgid(gid, gid, gid) != 0
                    || libc::setresuid(uid, uid, uid) != 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Whether this process may switch uids (is root).
pub fn can_switch_uid() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
