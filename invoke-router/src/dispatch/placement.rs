//! Placement: a cold start. Each VM is an `ember-vmm` child process with
//! its own directory `run_dir/<slot id>/` holding its vsock socket `v.sock`
//! and its console log `console.log`. The VM boots our kernel and
//! initramfs with the function's code image as its first (read-only)
//! drive; the router then connects to the agent, configures the function
//! and waits for the runtime's `Ready`. Any failure kills the VMM's
//! process group and removes the directory before it is reported.
//!
//! Sizing: the guest gets the function's memory plus
//! [`AGENT_HEADROOM_MIB`] for its kernel and agent (the agent caps the
//! handler at the function's memory), and each VM is charged that plus
//! [`VMM_OVERHEAD_MIB`] for the VMM process itself against the host
//! capacity. One vCPU per VM. Every VMM has its own vsock device whose host
//! side is its own Unix socket, so every guest can use the same CID.
//!
//! Jailed (the default, see [`super::jail`]): the socket lives in
//! `run_dir/<slot id>/vsock/`, the directory the jail binds in, and the
//! jail root is `run_dir/<slot id>/root/`; the [`JailLease`] goes with the
//! process and cleans up after it.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use ember_protocol::{Configure, Hello, Ready, AGENT_VSOCK_PORT};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::agent_conn::{AgentConn, ConnError};
use super::jail::{JailLease, Jailer};
use super::slot::SlotId;
use super::FunctionSpec;
use crate::config::{GuestSettings, ServeConfig};

/// Guest memory added to the function's memory for the guest kernel and
/// the agent (the agent reserves 48 MiB of the VM for itself).
pub const AGENT_HEADROOM_MIB: u32 = 64;
/// Host memory charged per VM for the VMM process (its own heap, device
/// buffers, page tables) on top of the guest memory.
pub const VMM_OVERHEAD_MIB: u64 = 16;
/// The guest CID of every VM (each VMM has its own vsock namespace).
pub const GUEST_CID: u32 = 3;
/// The guest kernel's command line.
pub const KERNEL_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 quiet";
/// How long a cold start (boot, connect, configure, runtime init) may take.
pub const COLD_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the runtime may take to initialise (Lambda's init limit).
pub const INIT_TIMEOUT: Duration = Duration::from_secs(10);
/// The most console output kept per VM.
pub const CONSOLE_LOG_CAP: u64 = 1 << 20;
/// How much of the console log goes into a failure report.
const CONSOLE_TAIL_IN_REPORT: usize = 2048;
/// How long to wait for a killed VMM to be reaped.
const REAP_WAIT: Duration = Duration::from_secs(5);
/// How long a VMM whose boot failed may take to exit on its own (its status
/// goes into the report) before it is killed.
const EXIT_WAIT_ON_FAILURE: Duration = Duration::from_secs(2);
/// The longest Unix socket path (`sun_path` less its NUL).
const MAX_UDS_PATH_LEN: usize = 107;

/// The VM's socket and console file names inside its directory.
pub const VSOCK_FILE: &str = "v.sock";
/// The socket's directory inside a jailed VM's directory.
pub const JAILED_VSOCK_DIR: &str = "vsock";
/// See [`VSOCK_FILE`].
pub const CONSOLE_FILE: &str = "console.log";

/// Host memory a VM of `memory_mib` takes from the capacity.
pub fn charge_mib(memory_mib: u32) -> u64 {
    u64::from(memory_mib) + u64::from(AGENT_HEADROOM_MIB) + VMM_OVERHEAD_MIB
}

/// Where and from what VMs are launched: placement's part of the settings
/// (taken from the whole tree, so a new launch setting is added here only)
/// and the directory slot directories live in.
#[derive(Debug, Clone)]
pub struct Placement {
    /// Kernel, initramfs and the `ember-vmm` binary.
    pub guest: GuestSettings,
    /// Where slot directories live.
    pub run_dir: PathBuf,
    /// Cold-start deadline.
    pub cold_start_timeout: Duration,
    /// The jail every VM runs in (`None`: unjailed, development only).
    pub jail: Option<Arc<Jailer>>,
}

impl Placement {
    /// Placement's part of `config`.
    pub fn new(config: &ServeConfig) -> Self {
        Placement {
            guest: config.guest.clone(),
            run_dir: config.run_dir(),
            cold_start_timeout: COLD_START_TIMEOUT,
            jail: Jailer::new(&config.jail),
        }
    }
}

/// Why a cold start failed.
#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    /// The host could not launch a VM (missing binary, no directory): not
    /// the function's fault.
    #[error("cannot launch a VM: {0}")]
    Host(String),
    /// The VM did not boot to a configured agent in time, or its agent
    /// broke the protocol.
    #[error("the VM failed to start: {0}")]
    Boot(String),
    /// The VM went away before it was ready (its VMM exited or the agent
    /// connection dropped): no event ever reached it, so another boot is
    /// safe.
    #[error("the VM stopped before it was ready: {0}")]
    Lost(String),
    /// The function's runtime failed to initialise.
    #[error("{error_type}: {error_message}")]
    Init {
        /// Lambda's error type, e.g. `Runtime.ExitError`.
        error_type: String,
        /// What happened.
        error_message: String,
    },
}

/// A running VM with a configured agent.
#[derive(Debug)]
pub struct Vm {
    /// Its slot.
    pub id: SlotId,
    /// The agent's greeting (boot timing).
    pub hello: Hello,
    /// The runtime's init report.
    pub ready: Ready,
    /// The agent connection.
    pub conn: AgentConn,
    process: Process,
}

/// The VMM process and its directory; cleaned up on drop if not before.
#[derive(Debug)]
struct Process {
    child: Child,
    pid: Option<i32>,
    dir: PathBuf,
    exited: bool,
    /// The tasks copying the VMM's output to the console log.
    capture: Vec<tokio::task::JoinHandle<()>>,
    /// The VM's jail; dropped after the directory, it removes the rest.
    _jail: Option<JailLease>,
}

impl Process {
    /// Kills the whole process group (the VMM leads it) and waits.
    async fn kill(&mut self) {
        if !self.exited {
            if let Ok(Some(_)) = self.child.try_wait() {
                self.exited = true;
            } else if let Some(pid) = self.pid {
                // SAFETY: plain syscall; the group is the VMM's own (it was
                // started as a group leader and has not been reaped).
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                }
            }
        }
        if tokio::time::timeout(REAP_WAIT, self.child.wait())
            .await
            .is_ok()
        {
            self.exited = true;
        }
    }

    /// Waits up to `grace` for the VMM to exit; whether it did.
    async fn wait(&mut self, grace: Duration) -> Option<ExitStatus> {
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(Ok(status)) => {
                self.exited = true;
                Some(status)
            }
            _ => None,
        }
    }

    fn remove_dir(&self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.dir.display(), "cannot remove a slot directory: {e}");
            }
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if !self.exited {
            if let (Ok(None), Some(pid)) = (self.child.try_wait(), self.pid) {
                // SAFETY: as in `kill`; the child is not reaped yet.
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                }
            }
        }
        self.remove_dir();
    }
}

impl Vm {
    /// Boots a VM for `spec` in slot `id` and waits until its runtime is
    /// ready. Nothing is left behind on failure.
    pub async fn launch(
        cfg: &Placement,
        id: &SlotId,
        spec: &FunctionSpec,
    ) -> Result<Vm, PlacementError> {
        if spec.runtime.is_managed() && cfg.guest.runtime_images.image(spec.runtime).is_none() {
            return Err(PlacementError::Host(format!(
                "this router has no image of the {} runtime (see [guest.runtimes] / --runtime-image)",
                spec.runtime.managed_name().unwrap_or_default()
            )));
        }
        let deadline = Instant::now() + cfg.cold_start_timeout;
        let dir = cfg.run_dir.join(&id.0);
        let jail = match &cfg.jail {
            Some(jailer) => Some(
                jailer
                    .lease(&dir, &id.0)
                    .map_err(|e| PlacementError::Host(e.to_string()))?,
            ),
            None => None,
        };
        let uds = match &jail {
            Some(_) => dir.join(JAILED_VSOCK_DIR).join(VSOCK_FILE),
            None => dir.join(VSOCK_FILE),
        };
        if uds.as_os_str().len() > MAX_UDS_PATH_LEN {
            return Err(PlacementError::Host(format!(
                "the socket path {} is longer than {MAX_UDS_PATH_LEN} bytes; use a shorter run directory",
                uds.display()
            )));
        }
        let _ = std::fs::remove_dir_all(&dir);
        let uds_dir = uds.parent().unwrap_or(&dir);
        std::fs::create_dir_all(uds_dir)
            .map_err(|e| PlacementError::Host(format!("create {}: {e}", uds_dir.display())))?;
        let mut cmd = vmm_command(cfg, &uds, spec);
        if let Some(lease) = &jail {
            cmd.args(lease.vmm_args());
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(PlacementError::Host(format!(
                    "start {}: {e}",
                    cfg.guest.vmm.display()
                )));
            }
        };
        let console = dir.join(CONSOLE_FILE);
        let capture = spawn_console_capture(&mut child, &console).await;
        let mut process = Process {
            pid: child.id().and_then(|p| i32::try_from(p).ok()),
            child,
            dir,
            exited: false,
            capture,
            _jail: jail,
        };
        match boot(&mut process, &uds, spec, deadline).await {
            Ok((hello, ready, conn)) => Ok(Vm {
                id: id.clone(),
                hello,
                ready,
                conn,
                process,
            }),
            Err(e) => {
                // A VMM on its way out says why through its exit status
                // (only boot failures are reported with it).
                let status = match &e {
                    PlacementError::Boot(_) | PlacementError::Lost(_) => {
                        process.wait(EXIT_WAIT_ON_FAILURE).await
                    }
                    _ => None,
                };
                process.kill().await;
                // The pipes close with the VMM: let the last output land.
                for task in process.capture.drain(..) {
                    let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
                }
                let report = |why: String| format!("{why}{}", failure_note(status, &console));
                let e = match e {
                    PlacementError::Boot(why) => PlacementError::Boot(report(why)),
                    PlacementError::Lost(why) => PlacementError::Lost(report(why)),
                    other => other,
                };
                drop(process);
                Err(e)
            }
        }
    }

    /// Why the VM is failing, for the log: how its VMM ended (waiting a
    /// moment for it when `exiting`) and the end of its console.
    pub async fn failure_report(&mut self, exiting: bool) -> String {
        let grace = if exiting {
            EXIT_WAIT_ON_FAILURE
        } else {
            Duration::ZERO
        };
        let status = self.process.wait(grace).await;
        failure_note(status, &self.process.dir.join(CONSOLE_FILE))
    }

    /// Stops the VM: asks the agent to power off, waits up to `grace` for
    /// the VMM to exit, then kills it; the directory goes too.
    pub async fn stop(mut self, grace: Duration) {
        self.conn.shutdown().await;
        if self.process.wait(grace).await.is_none() {
            tracing::warn!(slot = %self.id, "the VMM did not exit after Shutdown; killing it");
        }
        self.process.kill().await;
    }

    /// Kills the VM at once (it is broken; no point asking).
    pub async fn kill(mut self) {
        self.process.kill().await;
    }

    /// Whether the VMM process has exited.
    pub fn has_exited(&mut self) -> bool {
        self.process.exited || matches!(self.process.child.try_wait(), Ok(Some(_)))
    }

    /// The VM's directory.
    pub fn dir(&self) -> &Path {
        &self.process.dir
    }
}

fn vmm_command(cfg: &Placement, uds: &Path, spec: &FunctionSpec) -> Command {
    let mut drive = spec.code_image.as_os_str().to_owned();
    drive.push(",ro");
    // A managed runtime's image is the second drive (/dev/vdb), shared
    // read-only by every VM of that runtime.
    let runtime_drive = cfg.guest.runtime_images.image(spec.runtime).map(|p| {
        let mut d = p.as_os_str().to_owned();
        d.push(",ro");
        d
    });
    let mut cmd = Command::new(&cfg.guest.vmm);
    cmd.arg("--kernel")
        .arg(&cfg.guest.kernel)
        .arg("--initrd")
        .arg(&cfg.guest.initramfs)
        .arg("--cmdline")
        .arg(KERNEL_CMDLINE)
        .arg("--vcpus")
        .arg("1")
        .arg("--mem-mib")
        .arg((spec.memory_mib.saturating_add(AGENT_HEADROOM_MIB)).to_string())
        .arg("--vsock-cid")
        .arg(GUEST_CID.to_string())
        .arg("--vsock-uds")
        .arg(uds)
        .arg("--drive")
        .arg(drive)
        .args(
            runtime_drive
                .iter()
                .flat_map(|d| [std::ffi::OsStr::new("--drive"), d]),
        )
        .arg("--serial")
        .arg("stdout")
        .arg("--log-level")
        .arg("info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    // SAFETY: the closure only makes an async-signal-safe syscall. If the
    // router dies, the kernel kills its VMMs (they lead their own process
    // groups, so a terminal's signals would not reach them).
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// Waits for the agent, then configures the function.
async fn boot(
    process: &mut Process,
    uds: &Path,
    spec: &FunctionSpec,
    deadline: Instant,
) -> Result<(Hello, Ready, AgentConn), PlacementError> {
    let connected = tokio::select! {
        c = AgentConn::connect(uds, AGENT_VSOCK_PORT, deadline) => c,
        status = process.child.wait() => {
            process.exited = true;
            return Err(PlacementError::Lost(match status {
                Ok(s) => format!("the VMM exited ({}) before the agent listened", describe(s)),
                Err(e) => format!("waiting for the VMM: {e}"),
            }));
        }
    };
    let boot_err = |e: ConnError| match e {
        ConnError::Closed | ConnError::Io(_) => PlacementError::Lost(e.to_string()),
        _ => PlacementError::Boot(e.to_string()),
    };
    let mut conn = connected.map_err(boot_err)?;
    let hello = conn.hello(deadline).await.map_err(boot_err)?;
    let configure = Configure {
        function_name: spec.name.clone(),
        function_version: "$LATEST".into(),
        function_arn: spec.arn.clone(),
        handler: spec.handler.clone(),
        runtime: spec.runtime,
        env: spec.env.clone(),
        memory_mib: spec.memory_mib,
        timeout_ms: u64::try_from(spec.timeout.as_millis()).unwrap_or(u64::MAX),
        init_timeout_ms: u64::try_from(INIT_TIMEOUT.as_millis()).unwrap_or(u64::MAX),
    };
    match conn.configure(configure, deadline).await {
        Ok(ready) => Ok((hello, ready, conn)),
        Err(ConnError::Init(e)) => {
            let log = String::from_utf8_lossy(conn.init_log()).into_owned();
            let error_message = if log.trim().is_empty() {
                e.error_message
            } else {
                format!("{}\n{}", e.error_message, log.trim_end())
            };
            Err(PlacementError::Init {
                error_type: e.error_type,
                error_message,
            })
        }
        Err(e) => Err(boot_err(e)),
    }
}

fn describe(s: ExitStatus) -> String {
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("status {c}"),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => "unknown status".into(),
    }
}

/// Copies the VMM's stdout (the guest console) and stderr (its own log)
/// into `path`, keeping at most [`CONSOLE_LOG_CAP`] bytes; past the cap the
/// output is drained and dropped, so the VMM never blocks on a full pipe.
async fn spawn_console_capture(child: &mut Child, path: &Path) -> Vec<tokio::task::JoinHandle<()>> {
    let file = match tokio::fs::File::create(path).await {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!(path = %path.display(), "no console log: {e}");
            None
        }
    };
    let sink = Arc::new(Mutex::new((file, 0u64)));
    let mut tasks = Vec::new();
    if let Some(out) = child.stdout.take() {
        tasks.push(tokio::spawn(capture(out, sink.clone())));
    }
    if let Some(err) = child.stderr.take() {
        tasks.push(tokio::spawn(capture(err, sink)));
    }
    tasks
}

async fn capture(
    mut pipe: impl AsyncRead + Unpin,
    sink: Arc<Mutex<(Option<tokio::fs::File>, u64)>>,
) {
    let mut buf = vec![0u8; 8192];
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut guard = sink.lock().await;
        let (file, written) = &mut *guard;
        let room = CONSOLE_LOG_CAP.saturating_sub(*written);
        let take = (n as u64).min(room) as usize;
        if take == 0 {
            continue;
        }
        if let Some(f) = file {
            if f.write_all(&buf[..take]).await.is_err() {
                *file = None;
            } else {
                let _ = f.flush().await;
            }
        }
        *written += take as u64;
    }
}

/// How the VMM ended (`None`: it was still running) and the end of its
/// console log, for failure reports.
fn failure_note(status: Option<ExitStatus>, console: &Path) -> String {
    let ended = match status {
        None => "; the VMM was still running (killed)".to_string(),
        Some(s) => format!("; the VMM ended with {}", describe(s)),
    };
    format!("{ended}{}", console_tail(console))
}

/// The end of the console log, for failure reports.
fn console_tail(path: &Path) -> String {
    let Ok(bytes) = std::fs::read(path) else {
        return String::new();
    };
    let start = bytes.len().saturating_sub(CONSOLE_TAIL_IN_REPORT);
    let text = String::from_utf8_lossy(&bytes[start..]);
    let text = text.trim();
    if text.is_empty() {
        String::new()
    } else {
        format!("; console: {text}")
    }
}
