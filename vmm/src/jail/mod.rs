//! The jail around one VMM (`ember-vmm --jail-root DIR --jail-uid N ...`).
//!
//! Entered as root before anything else is opened:
//! 1. every inherited fd above stderr is closed; the per-VM root directory
//!    and its (empty) mount points are created; the VM's cgroup v2 gets
//!    `memory.max`, `cpu.max` and `pids.max`;
//! 2. the VMM forks into a new PID namespace. The parent stays outside as
//!    a small root *keeper*: it forwards SIGTERM/SIGINT, waits, removes the
//!    root directory and the cgroup, and exits as the VMM did (re-raising
//!    its signal, e.g. SIGSYS);
//! 3. the child (PID 1 of its namespace) joins the cgroup, unshares mount,
//!    network, IPC and UTS namespaces, binds in only what the VM needs
//!    ([`layout`]), `pivot_root`s there, detaches the old root, clears its
//!    environment and sets `RLIMIT_NOFILE`/`RLIMIT_FSIZE`;
//! 4. the VMM opens its resources and builds the VM, still root (so the
//!    host files need not be readable by the VM's uid), then calls
//!    [`Jailed::drop_privileges`]: the VM's uid/gid, no capabilities in any
//!    set, `no_new_privs`, before any vCPU starts. Seccomp follows per
//!    thread ([`crate::seccomp`]).

pub mod cgroup;
pub mod layout;
pub mod mount;
pub mod privs;

use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};

use nix::sched::CloneFlags;
use nix::sys::signal::{self, SigHandler, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::ForkResult;

use crate::config::VmmConfig;

/// The hostname inside every jail.
pub const HOSTNAME: &str = "ember-vm";

/// Why the jail could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// A jail setting is wrong.
    #[error("{what}: {why}")]
    Setting {
        /// The flag.
        what: &'static str,
        /// Why.
        why: String,
    },
    /// The host lacks something the jail needs.
    #[error("this host cannot jail the VMM: {0}")]
    Unsupported(String),
    /// A host call failed.
    #[error("jail: {what}: {source}")]
    Host {
        /// What the jail was doing.
        what: String,
        /// The host error.
        source: std::io::Error,
    },
}

/// The jail's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailConfig {
    /// The per-VM root directory on the host (created; must not exist or be empty).
    pub root: PathBuf,
    /// The VM's uid (not 0).
    pub uid: u32,
    /// The VM's gid (not 0).
    pub gid: u32,
    /// The VM's cgroup v2 directory, created with the limits below.
    pub cgroup: Option<PathBuf>,
    /// Memory allowed on top of guest memory, in MiB.
    pub overhead_mib: u64,
    /// `pids.max` (default: vCPUs + 8).
    pub pids_max: Option<u64>,
    /// `RLIMIT_NOFILE`.
    pub nofile: u64,
    /// `RLIMIT_FSIZE` in MiB: the largest file the VMM may write (a
    /// read-write drive larger than this raises it to the drive's size).
    pub fsize_mib: u64,
}

impl JailConfig {
    /// Checks the settings on their own.
    pub fn validate(&self) -> Result<(), JailError> {
        layout::check_host_path("--jail-root", &self.root)?;
        if self.root == std::path::Path::new("/") {
            return Err(JailError::Setting {
                what: "--jail-root",
                why: "must not be /".into(),
            });
        }
        if self.uid == 0 || self.gid == 0 {
            return Err(JailError::Setting {
                what: "--jail-uid",
                why: "the VM's uid and gid must not be 0".into(),
            });
        }
        if let Some(cg) = &self.cgroup {
            layout::check_host_path("--jail-cgroup", cg)?;
        }
        if self.nofile < 64 {
            return Err(JailError::Setting {
                what: "--jail-nofile",
                why: format!("{} is too few for a VMM (at least 64)", self.nofile),
            });
        }
        Ok(())
    }
}

/// What [`enter`] returns in each process.
pub enum Entered {
    /// The keeper outside the jail: the VMM has ended; exit with this status.
    Keeper(u8),
    /// The VMM inside the jail, still root until [`Jailed::drop_privileges`].
    Jailed(Jailed),
}

/// The jailed VMM: its settings with jail paths, privileges not yet dropped.
pub struct Jailed {
    /// The VM's settings as seen inside the jail.
    pub config: VmmConfig,
    uid: u32,
    gid: u32,
}

impl Jailed {
    /// Becomes the VM's uid/gid without capabilities; call once the VM is
    /// built and before it runs, while the process is single-threaded.
    pub fn drop_privileges(&self) -> Result<(), JailError> {
        privs::drop_privileges(self.uid, self.gid)
    }
}

/// The VMM's PID (in the keeper's namespace), for signal forwarding.
static VMM_PID: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = VMM_PID.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

fn os(what: &'static str) -> impl FnOnce(nix::Error) -> JailError {
    move |e| JailError::Host {
        what: what.into(),
        source: std::io::Error::from(e),
    }
}

/// Checks that this host can jail VMMs under the cgroup `cgroup_parent`:
/// root, cgroup v2 with the memory, cpu and pids controllers, `/dev/kvm`,
/// and the namespaces (tried in a short-lived child).
pub fn check_host(cgroup_parent: &std::path::Path) -> Result<(), JailError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(JailError::Unsupported(
            "the jail needs root (it creates namespaces, mounts and cgroups)".into(),
        ));
    }
    layout::check_host_path("the cgroup parent", cgroup_parent)?;
    cgroup::prepare_parent(cgroup_parent)?;
    if !std::path::Path::new(layout::KVM_DEVICE).exists() {
        return Err(JailError::Unsupported(format!("no {}", layout::KVM_DEVICE)));
    }
    // SAFETY: the child only unshares and exits.
    match unsafe { nix::unistd::fork() }.map_err(os("forking a namespace check"))? {
        ForkResult::Child => {
            let all = CloneFlags::CLONE_NEWNS
                | CloneFlags::CLONE_NEWPID
                | CloneFlags::CLONE_NEWNET
                | CloneFlags::CLONE_NEWIPC
                | CloneFlags::CLONE_NEWUTS;
            let code = i32::from(nix::sched::unshare(all).is_err());
            // SAFETY: leaving the child at once.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, 0)) => Ok(()),
            other => Err(JailError::Unsupported(format!(
                "cannot create mount, PID, network, IPC and UTS namespaces ({other:?})"
            ))),
        },
    }
}

/// Jails this process for `config`; see the module docs. Must be called
/// as root while the process is single-threaded.
pub fn enter(jail: &JailConfig, config: &VmmConfig) -> Result<Entered, JailError> {
    jail.validate()?;
    if !nix::unistd::geteuid().is_root() {
        return Err(JailError::Unsupported(
            "the jail needs root (it creates namespaces, mounts and cgroups)".into(),
        ));
    }
    let host_config = layout::absolute(config)?;
    let plan = layout::plan(&host_config)?;
    privs::close_inherited_fds()?;

    match std::fs::read_dir(&jail.root).map(|mut entries| entries.next().is_some()) {
        Ok(true) => {
            return Err(JailError::Setting {
                what: "--jail-root",
                why: format!("{} is not empty", jail.root.display()),
            })
        }
        Ok(false) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(&jail.root).map_err(|source| JailError::Host {
                what: format!("creating {}", jail.root.display()),
                source,
            })?;
        }
        Err(source) => {
            return Err(JailError::Host {
                what: format!("reading {}", jail.root.display()),
                source,
            })
        }
    }
    let cleanup = Cleanup {
        root: jail.root.clone(),
        cgroup: jail.cgroup.clone(),
    };
    let prepared = prepare(jail, config, &plan);
    if let Err(e) = prepared {
        cleanup.run();
        return Err(e);
    }

    nix::sched::unshare(CloneFlags::CLONE_NEWPID).map_err(|e| {
        cleanup.run();
        os("creating a PID namespace")(e)
    })?;
    // SAFETY: single-threaded here (the caller's contract), so the child
    // may run arbitrary code after fork.
    match unsafe { nix::unistd::fork() } {
        Err(e) => {
            cleanup.run();
            Err(os("forking the jailed VMM")(e))
        }
        Ok(ForkResult::Parent { child }) => Ok(Entered::Keeper(keep(child, cleanup))),
        Ok(ForkResult::Child) => {
            let fail = |e: JailError| -> ! {
                eprintln!("ember-vmm: {e}");
                // SAFETY: leaving the child at once; the keeper cleans up.
                unsafe { libc::_exit(1) }
            };
            match inside(jail, &plan) {
                Ok(()) => Ok(Entered::Jailed(Jailed {
                    config: plan.config,
                    uid: jail.uid,
                    gid: jail.gid,
                })),
                Err(e) => fail(e),
            }
        }
    }
}

/// Host-side preparation: mount points, socket directory, cgroup.
fn prepare(jail: &JailConfig, config: &VmmConfig, plan: &layout::Layout) -> Result<(), JailError> {
    mount::create_mount_points(&jail.root, &plan.binds)?;
    if let Some(dir) = &plan.vsock_dir {
        // The VM's uid removes its socket at exit and connects to PATH_P.
        let owner = (
            Some(nix::unistd::Uid::from_raw(jail.uid)),
            Some(nix::unistd::Gid::from_raw(jail.gid)),
        );
        nix::unistd::chown(dir, owner.0, owner.1).map_err(|e| JailError::Host {
            what: format!("chown {}", dir.display()),
            source: e.into(),
        })?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(
            |source| JailError::Host {
                what: format!("chmod {}", dir.display()),
                source,
            },
        )?;
    }
    if let Some(path) = &jail.cgroup {
        let limits = cgroup::Limits::for_vm(
            config.mem_mib,
            jail.overhead_mib,
            config.vcpus,
            jail.pids_max,
        );
        cgroup::create(path, &limits)?;
    }
    Ok(())
}

/// Inside the new PID namespace: cgroup, namespaces, root, hygiene.
fn inside(jail: &JailConfig, plan: &layout::Layout) -> Result<(), JailError> {
    // SAFETY: plain prctl; the VMM dies with its keeper.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    if let Some(path) = &jail.cgroup {
        cgroup::join(path)?;
    }
    nix::sched::unshare(
        CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWNET
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS,
    )
    .map_err(os("creating mount, network, IPC and UTS namespaces"))?;
    nix::unistd::sethostname(HOSTNAME).map_err(os("setting the hostname"))?;
    mount::pivot_into(&jail.root, &plan.binds)?;
    privs::clear_env();
    let rw_drive_bytes = plan
        .config
        .drives
        .iter()
        .filter(|d| !d.read_only)
        .filter_map(|d| std::fs::metadata(&d.path).ok().map(|m| m.len()))
        .max()
        .unwrap_or(0);
    let fsize = jail.fsize_mib.saturating_mul(1 << 20).max(rw_drive_bytes);
    privs::set_rlimits(jail.nofile, fsize)?;
    Ok(())
}

/// What the keeper removes once the VMM is gone.
struct Cleanup {
    root: PathBuf,
    cgroup: Option<PathBuf>,
}

impl Cleanup {
    fn run(&self) {
        // The mounts lived in the VMM's namespace: only empty mount points remain.
        if let Err(e) = std::fs::remove_dir_all(&self.root) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("ember-vmm: cannot remove {}: {e}", self.root.display());
            }
        }
        if let Some(cg) = &self.cgroup {
            if let Err(e) = cgroup::remove(cg) {
                eprintln!("ember-vmm: {e}");
            }
        }
    }
}

/// The keeper: forwards stop signals, waits for the VMM, cleans up and
/// returns its exit status (re-raising a fatal signal).
fn keep(child: nix::unistd::Pid, cleanup: Cleanup) -> u8 {
    VMM_PID.store(child.as_raw(), Ordering::SeqCst);
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        // SAFETY: `forward` only makes an async-signal-safe call.
        let _ = unsafe { signal::signal(sig, SigHandler::Handler(forward)) };
    }
    let status = loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => break Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => break Err(sig),
            Ok(_) | Err(nix::Error::EINTR) => continue,
            Err(e) => {
                eprintln!("ember-vmm: waiting for the jailed VMM: {e}");
                break Ok(1);
            }
        }
    };
    cleanup.run();
    match status {
        Ok(code) => u8::try_from(code).unwrap_or(1),
        Err(sig) => {
            eprintln!("ember-vmm: the jailed VMM was killed by {sig:?}");
            // Die the same way, without a core file.
            let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0);
            // SAFETY: restoring the default action before re-raising.
            let _ = unsafe { signal::signal(sig, SigHandler::SigDfl) };
            let _ = signal::raise(sig);
            128u8.saturating_add(sig as u8)
        }
    }
}
