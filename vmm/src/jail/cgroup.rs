//! A cgroup v2 per VM: memory, CPU and task limits.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::JailError;

/// `statfs` magic of a cgroup v2 file system (linux/magic.h).
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
/// The controllers every VM cgroup needs.
const CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];
/// The CFS period `cpu.max` is written with, in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;
/// How long removal waits for the cgroup's last task to be gone.
const REMOVE_WAIT: Duration = Duration::from_secs(3);

/// The limits of one VM's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `memory.max` in bytes.
    pub memory_bytes: u64,
    /// `cpu.max` quota per period, in microseconds.
    pub cpu_quota_us: u64,
    /// `pids.max`.
    pub pids: u64,
}

impl Limits {
    /// Guest memory plus the VMM's overhead; one CPU per vCPU; the VMM's
    /// threads (main, vCPUs) plus a few spare.
    pub fn for_vm(mem_mib: u64, overhead_mib: u64, vcpus: u8, pids: Option<u64>) -> Self {
        Self {
            memory_bytes: mem_mib.saturating_add(overhead_mib).saturating_mul(1 << 20),
            cpu_quota_us: u64::from(vcpus.max(1)) * CPU_PERIOD_US,
            pids: pids.unwrap_or(u64::from(vcpus) + 8),
        }
    }

    /// The files and values written, in order.
    pub fn files(&self) -> [(&'static str, String); 3] {
        [
            ("memory.max", self.memory_bytes.to_string()),
            ("cpu.max", format!("{} {CPU_PERIOD_US}", self.cpu_quota_us)),
            ("pids.max", self.pids.to_string()),
        ]
    }
}

fn host(what: String) -> impl FnOnce(std::io::Error) -> JailError {
    move |source| JailError::Host { what, source }
}

/// Whether `path` is on a cgroup v2 file system.
pub fn is_cgroup2(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type().0 == CGROUP2_SUPER_MAGIC)
        .unwrap_or(false)
}

/// Makes sure `parent` exists on cgroup v2 and hands the VM controllers
/// down to its children (enabling them in every ancestor up to the mount).
pub fn prepare_parent(parent: &Path) -> Result<(), JailError> {
    let mut chain: Vec<PathBuf> = Vec::new();
    let mut dir = parent.to_path_buf();
    loop {
        if dir.exists() {
            if !is_cgroup2(&dir) {
                return Err(JailError::Unsupported(format!(
                    "{} is not on a cgroup v2 file system (mount one: mount -t cgroup2 none /sys/fs/cgroup)",
                    dir.display()
                )));
            }
            // Ancestors until the mount root, whose parent is another fs.
            chain.push(dir.clone());
            match dir.parent() {
                Some(up) if is_cgroup2(up) => dir = up.to_path_buf(),
                _ => break,
            }
        } else {
            chain.push(dir.clone());
            match dir.parent() {
                Some(up) => dir = up.to_path_buf(),
                None => break,
            }
        }
    }
    // Top-down: create, then enable the controllers for the children.
    for dir in chain.iter().rev() {
        // Two VMMs may prepare the same parent at once: one creates it.
        match std::fs::create_dir(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(host(format!("creating {}", dir.display()))(e));
            }
            _ => {}
        }
        let control = dir.join("cgroup.subtree_control");
        let enabled = std::fs::read_to_string(&control).unwrap_or_default();
        for c in CONTROLLERS {
            if !enabled.split_whitespace().any(|e| e == c) {
                std::fs::write(&control, format!("+{c}")).map_err(host(format!(
                    "enabling the {c} controller in {}",
                    control.display()
                )))?;
            }
        }
    }
    Ok(())
}

/// Creates the VM's cgroup `path` with `limits`.
pub fn create(path: &Path, limits: &Limits) -> Result<(), JailError> {
    let parent = path.parent().ok_or_else(|| JailError::Setting {
        what: "--jail-cgroup",
        why: format!("{} has no parent", path.display()),
    })?;
    prepare_parent(parent)?;
    match std::fs::create_dir(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            // A leftover of a crashed VM of the same id: only if empty.
            let procs = std::fs::read_to_string(path.join("cgroup.procs")).unwrap_or_default();
            if !procs.trim().is_empty() {
                return Err(JailError::Setting {
                    what: "--jail-cgroup",
                    why: format!("{} is in use by other processes", path.display()),
                });
            }
        }
        Err(e) => return Err(host(format!("creating {}", path.display()))(e)),
    }
    for (file, value) in limits.files() {
        let target = path.join(file);
        std::fs::write(&target, &value)
            .map_err(host(format!("writing {value} to {}", target.display())))?;
    }
    // No swap for guest memory where the host has swap accounting.
    let _ = std::fs::write(path.join("memory.swap.max"), "0");
    Ok(())
}

/// Moves the calling process into the cgroup `path`.
pub fn join(path: &Path) -> Result<(), JailError> {
    let procs = path.join("cgroup.procs");
    // "0" is the writer itself, in any PID namespace.
    std::fs::write(&procs, "0").map_err(host(format!("joining {}", procs.display())))
}

/// Removes the cgroup `path` once its tasks are gone, waiting a bounded time.
pub fn remove(path: &Path) -> Result<(), JailError> {
    let deadline = Instant::now() + REMOVE_WAIT;
    loop {
        match std::fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(host(format!("removing {}", path.display()))(e))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_follow_the_vm_size() {
        let l = Limits::for_vm(192, 32, 2, None);
        assert_eq!(l.memory_bytes, 224 << 20);
        let files = l.files();
        assert_eq!(files[0], ("memory.max", (224u64 << 20).to_string()));
        assert_eq!(files[1], ("cpu.max", "200000 100000".to_string()));
        assert_eq!(files[2], ("pids.max", "10".to_string()));
        assert_eq!(Limits::for_vm(128, 16, 1, Some(4)).pids, 4);
    }

    #[test]
    fn a_plain_directory_is_not_a_cgroup() {
        assert!(!is_cgroup2(Path::new("/tmp")));
        let e = prepare_parent(Path::new("/tmp/ember-not-a-cgroup/x")).unwrap_err();
        assert!(e.to_string().contains("not on a cgroup v2"), "{e}");
    }
}
