//! Jailing every VM the router starts (`[jail]` in the config file).
//!
//! Each VMM is started as `ember-vmm ... --jail-root <slot dir>/root
//! --jail-uid U --jail-gid U --jail-cgroup <cgroup parent>/<slot id>`: the
//! VMM jails itself (namespaces, `pivot_root`, cgroup v2, uid drop,
//! capabilities, seccomp; see the VMM's `jail` module). The router's part:
//! - a uid/gid per live VM from `uid_first .. uid_first + uid_count`,
//!   returned to the pool only once that VM's cgroup is gone (so no task
//!   of it can still run under the uid);
//! - the socket directory `<slot dir>/vsock/` that the jail binds in, so
//!   the router reaches the socket at its host path;
//! - cleanup after every VM, crashed or not (the VMM's keeper normally
//!   removes its root and cgroup itself; the router kills and removes
//!   what is left), and a sweep of leftover cgroups at start;
//! - a host check at start (`ember-vmm jail-check`): without root, cgroup
//!   v2 or namespaces the router refuses to start, unless the development
//!   setting `unjailed_development = true` is given, which is logged loudly.
//!
//! ```toml
//! [jail]
//! uid_first = 900000                  # uids (= gids) for VMs
//! uid_count = 10000                   # at most this many live VMs
//! cgroup_parent = "/sys/fs/cgroup/ember"
//! unjailed_development = false        # true: VMs run unjailed (never in production)
//! ```

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;

/// How long cleanup waits for a VM's cgroup to empty.
const CGROUP_EMPTY_WAIT: Duration = Duration::from_secs(5);
/// Memory a jailed VMM may use beyond guest memory (`memory.max`), MiB.
/// Roomy on purpose: the cgroup is also charged the page cache of the
/// drives the VMM reads (a runtime image is over 100 MiB), and with only
/// 32 MiB the reclaim under KVM's nested page faults panicked the soft
/// host's kernel ("stack guard page was hit" in a vCPU thread).
pub const JAIL_OVERHEAD_MIB: u64 = 512;

/// The jail settings (the `[jail]` section).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JailSettings {
    /// The first uid (and gid) given to a VM.
    pub uid_first: u32,
    /// How many uids there are: the most VMs that can live at once.
    pub uid_count: u32,
    /// The cgroup v2 directory VM cgroups go under.
    pub cgroup_parent: PathBuf,
    /// Development only: run VMs without the jail.
    pub unjailed_development: bool,
}

impl Default for JailSettings {
    fn default() -> Self {
        Self {
            uid_first: 900_000,
            uid_count: 10_000,
            cgroup_parent: PathBuf::from("/sys/fs/cgroup/ember"),
            unjailed_development: false,
        }
    }
}

/// Why the router cannot jail VMs.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// A setting is out of range.
    #[error("[jail]: {0}")]
    Invalid(String),
    /// The host lacks what the jail needs.
    #[error(
        "this host cannot jail VMs: {0} (set [jail] unjailed_development = true to run VMs \
         unjailed, for development only)"
    )]
    Unsupported(String),
    /// Every uid of the range belongs to a live VM.
    #[error("no free VM uid: all {0} are in use")]
    Exhausted(u32),
}

impl JailSettings {
    /// Checks the ranges.
    pub fn validate(&self) -> Result<(), JailError> {
        let bad = |m: String| Err(JailError::Invalid(m));
        if self.uid_first == 0 {
            return bad("uid_first must not be 0 (root)".into());
        }
        if self.uid_count == 0 {
            return bad("uid_count must be at least 1".into());
        }
        if self.uid_first.checked_add(self.uid_count).is_none() {
            return bad(format!(
                "uid_first {} + uid_count {} overflows the uid space",
                self.uid_first, self.uid_count
            ));
        }
        if !self.cgroup_parent.is_absolute() {
            return bad(format!(
                "cgroup_parent {} must be absolute",
                self.cgroup_parent.display()
            ));
        }
        Ok(())
    }

    /// Refuses a host that cannot jail VMs (run by the router at start):
    /// asks `vmm jail-check`, which prepares the cgroup parent. With the
    /// development setting, logs loudly instead.
    pub fn preflight(&self, vmm: &Path) -> Result<(), JailError> {
        self.validate()?;
        if self.unjailed_development {
            tracing::error!(
                "[jail] unjailed_development = true: VMs run WITHOUT the jail \
                 (no namespaces, root, cgroup or uid drop); never use this in production"
            );
            return Ok(());
        }
        let out = std::process::Command::new(vmm)
            .arg("jail-check")
            .arg("--cgroup-parent")
            .arg(&self.cgroup_parent)
            .output()
            .map_err(|e| JailError::Unsupported(format!("cannot run {}: {e}", vmm.display())))?;
        if !out.status.success() {
            let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
            return Err(JailError::Unsupported(why));
        }
        Ok(())
    }
}

/// The uids of live VMs.
#[derive(Debug)]
struct UidPool {
    first: u32,
    count: u32,
    used: BTreeSet<u32>,
}

impl UidPool {
    fn take(&mut self) -> Option<u32> {
        // The lowest free one: a small, reproducible set of uids in use.
        let uid = (self.first..self.first + self.count).find(|u| !self.used.contains(u))?;
        self.used.insert(uid);
        Some(uid)
    }

    fn give_back(&mut self, uid: u32) {
        self.used.remove(&uid);
    }
}

/// Jails the VMs of one router.
#[derive(Debug)]
pub struct Jailer {
    cgroup_parent: PathBuf,
    uids: Mutex<UidPool>,
}

impl Jailer {
    /// The jailer for `settings`, or `None` (loudly) when VMs run unjailed.
    /// Sweeps the cgroups a previous router left behind.
    pub fn new(settings: &JailSettings) -> Option<Arc<Jailer>> {
        if settings.unjailed_development {
            tracing::error!("VMs run UNJAILED ([jail] unjailed_development = true)");
            return None;
        }
        sweep_cgroups(&settings.cgroup_parent);
        Some(Arc::new(Jailer {
            cgroup_parent: settings.cgroup_parent.clone(),
            uids: Mutex::new(UidPool {
                first: settings.uid_first,
                count: settings.uid_count,
                used: BTreeSet::new(),
            }),
        }))
    }

    /// A jail for the VM of slot `id` whose directory is `slot_dir`.
    pub fn lease(self: &Arc<Self>, slot_dir: &Path, id: &str) -> Result<JailLease, JailError> {
        let mut pool = self.uids.lock().unwrap_or_else(|p| p.into_inner());
        let uid = pool.take().ok_or(JailError::Exhausted(pool.count))?;
        Ok(JailLease {
            uid,
            root: slot_dir.join("root"),
            cgroup: self.cgroup_parent.join(id),
            jailer: self.clone(),
        })
    }

    /// How many uids live VMs hold.
    pub fn uids_in_use(&self) -> usize {
        self.uids.lock().map(|p| p.used.len()).unwrap_or(0)
    }
}

/// One VM's jail: its uid, root and cgroup; dropped once the VMM is gone,
/// which removes what is left and frees the uid.
#[derive(Debug)]
pub struct JailLease {
    uid: u32,
    root: PathBuf,
    cgroup: PathBuf,
    jailer: Arc<Jailer>,
}

impl JailLease {
    /// The VM's uid (and gid).
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// The VM's cgroup.
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// The jail flags for `ember-vmm`.
    pub fn vmm_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["--jail-root".into(), self.root.clone().into()];
        for (flag, value) in [
            ("--jail-uid", self.uid.to_string()),
            ("--jail-gid", self.uid.to_string()),
            ("--jail-overhead-mib", JAIL_OVERHEAD_MIB.to_string()),
        ] {
            args.push(flag.into());
            args.push(value.into());
        }
        args.push("--jail-cgroup".into());
        args.push(self.cgroup.clone().into());
        args
    }
}

impl Drop for JailLease {
    fn drop(&mut self) {
        // Off the async runtime: removal may wait for the last task to exit.
        let (uid, root, cgroup, jailer) = (
            self.uid,
            std::mem::take(&mut self.root),
            std::mem::take(&mut self.cgroup),
            self.jailer.clone(),
        );
        let cleanup = move || {
            let _ = std::fs::remove_dir_all(&root);
            if remove_cgroup(&cgroup) {
                let mut pool = jailer.uids.lock().unwrap_or_else(|p| p.into_inner());
                pool.give_back(uid);
            } else {
                // Never reuse a uid that a surviving task may still hold.
                tracing::error!(uid, cgroup = %cgroup.display(), "a VM's cgroup did not empty; its uid stays retired");
            }
        };
        if std::thread::Builder::new()
            .name("jail-cleanup".into())
            .spawn(cleanup)
            .is_err()
        {
            tracing::error!("cannot start a jail cleanup thread");
        }
    }
}

/// Kills every task left in `cgroup` and removes it; whether it is gone.
pub fn remove_cgroup(cgroup: &Path) -> bool {
    if !cgroup.exists() {
        return true;
    }
    // cgroup.kill (Linux 5.14+) SIGKILLs every task inside at once.
    let _ = std::fs::write(cgroup.join("cgroup.kill"), "1");
    let deadline = Instant::now() + CGROUP_EMPTY_WAIT;
    loop {
        match std::fs::remove_dir(cgroup) {
            Ok(()) => return true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return true,
            Err(_) if Instant::now() >= deadline => return false,
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Removes the VM cgroups (`vm-*`) under `parent` left by a router that died.
pub fn sweep_cgroups(parent: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return 0;
    };
    let mut swept = 0;
    for e in entries.flatten() {
        let is_vm = e.file_name().to_string_lossy().starts_with("vm-")
            && e.file_type().is_ok_and(|t| t.is_dir());
        if is_vm {
            if remove_cgroup(&e.path()) {
                swept += 1;
            } else {
                tracing::warn!(cgroup = %e.path().display(), "cannot remove a leftover VM cgroup");
            }
        }
    }
    if swept > 0 {
        tracing::info!(swept, parent = %parent.display(), "removed leftover VM cgroups");
    }
    swept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jailer(first: u32, count: u32) -> Arc<Jailer> {
        Arc::new(Jailer {
            cgroup_parent: "/sys/fs/cgroup/ember-test".into(),
            uids: Mutex::new(UidPool {
                first,
                count,
                used: BTreeSet::new(),
            }),
        })
    }

    #[test]
    fn live_vms_never_share_a_uid() {
        let j = jailer(900_000, 3);
        let a = j.lease(Path::new("/run/a"), "vm-a").unwrap();
        let b = j.lease(Path::new("/run/b"), "vm-b").unwrap();
        let c = j.lease(Path::new("/run/c"), "vm-c").unwrap();
        let mut uids = vec![a.uid(), b.uid(), c.uid()];
        uids.dedup();
        assert_eq!(uids, [900_000, 900_001, 900_002]);
        let e = j.lease(Path::new("/run/d"), "vm-d").unwrap_err();
        assert!(matches!(e, JailError::Exhausted(3)), "{e}");
        drop(b);
        // The uid comes back once the (absent) cgroup is confirmed gone.
        let deadline = Instant::now() + Duration::from_secs(5);
        while j.uids_in_use() != 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let d = j.lease(Path::new("/run/d"), "vm-d").unwrap();
        assert_eq!(d.uid(), 900_001);
        assert_eq!(d.cgroup(), Path::new("/sys/fs/cgroup/ember-test/vm-d"));
    }

    #[test]
    fn the_vmm_gets_every_jail_flag() {
        let j = jailer(5000, 1);
        let lease = j.lease(Path::new("/data/run/vm-1"), "vm-1").unwrap();
        let args: Vec<String> = lease
            .vmm_args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            args,
            [
                "--jail-root",
                "/data/run/vm-1/root",
                "--jail-uid",
                "5000",
                "--jail-gid",
                "5000",
                "--jail-overhead-mib",
                "512",
                "--jail-cgroup",
                "/sys/fs/cgroup/ember-test/vm-1"
            ]
        );
    }

    #[test]
    fn bad_ranges_are_refused() {
        let s = |first, count| JailSettings {
            uid_first: first,
            uid_count: count,
            ..JailSettings::default()
        };
        assert!(s(0, 10).validate().is_err());
        assert!(s(10, 0).validate().is_err());
        assert!(s(u32::MAX - 1, 5).validate().is_err());
        assert!(JailSettings::default().validate().is_ok());
        let relative = JailSettings {
            cgroup_parent: "ember".into(),
            ..JailSettings::default()
        };
        assert!(relative.validate().is_err());
    }

    #[test]
    fn the_development_setting_is_explicit() {
        assert!(!JailSettings::default().unjailed_development);
        let parsed: JailSettings = toml::from_str("unjailed_development = true").unwrap();
        assert!(parsed.unjailed_development);
        assert!(Jailer::new(&parsed).is_none());
        assert!(toml::from_str::<JailSettings>("unjailed = true").is_err());
    }
}
