//! Starting and killing a function's processes: the `bootstrap` of a
//! provided runtime or the shell command of an `exec` handler, each the
//! leader of its own process group, confined by the sandbox, with its output
//! piped to the agent.

use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ember_protocol::{Configure, ErrorInfo, LogStream};
use std::time::Duration;
use tokio::net::unix::pipe;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::logs::LogSink;
use crate::reaper::{self, Exit};
use crate::sandbox::{self, Cgroup};

/// The shell that runs `exec` handlers.
pub const SHELL: &str = "/bin/sh";

/// Where and how a function's processes run.
pub struct Launcher {
    /// The function's code (`LAMBDA_TASK_ROOT`, `/var/task` in the guest).
    pub task_root: PathBuf,
    /// `host:port` of the Runtime API (`AWS_LAMBDA_RUNTIME_API`).
    pub runtime_api: String,
    /// The function.
    pub config: Configure,
    /// The handlers' cgroup, if the sandbox has one.
    pub cgroup: Option<Cgroup>,
    /// The handlers' uid and gid, if the sandbox switches.
    pub uid_gid: Option<(u32, u32)>,
}

/// A process group led by a process the agent started; `Copy`, so it can
/// be killed while the [`Process`] is borrowed elsewhere.
#[derive(Debug, Clone, Copy)]
pub struct Group(libc::pid_t);

impl Group {
    /// SIGKILLs every process in the group.
    pub fn kill(self) {
        // SAFETY: kill has no memory preconditions; a negative pid names
        // the group this process leads.
        unsafe { libc::kill(-self.0, libc::SIGKILL) };
    }
}

/// A running process group.
pub struct Process {
    pid: libc::pid_t,
    exit: oneshot::Receiver<Exit>,
    /// The exit once seen: a oneshot must not be polled again.
    exited: Option<Exit>,
    pumps: Vec<JoinHandle<()>>,
    /// The child's stdin, when the launcher asked for one.
    pub stdin: Option<pipe::Sender>,
    /// The child's stdout, when it is not forwarded to the logs.
    pub stdout: Option<pipe::Receiver>,
}

impl Process {
    /// Waits for the leader to exit (returns at once if it has).
    pub async fn wait(&mut self) -> Exit {
        if let Some(e) = self.exited {
            return e;
        }
        let e = (&mut self.exit).await.unwrap_or(Exit {
            // The reaper never drops a registered sender; be safe anyway.
            info: ember_protocol::ExitInfo {
                status: None,
                signal: Some(libc::SIGKILL),
            },
            max_rss_bytes: 0,
        });
        self.exited = Some(e);
        e
    }

    /// The leader's peak resident memory so far, from `/proc`.
    pub fn peak_rss_bytes(&self) -> Option<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
    }

    /// The process group this process leads.
    pub fn group(&self) -> Group {
        Group(self.pid)
    }

    /// Waits (at most `within`) until the output forwarded to the logs has
    /// been read to its end, so a result's log tail holds the last words.
    pub async fn drain_output(&mut self, within: Duration) {
        let pumps = std::mem::take(&mut self.pumps);
        let _ = tokio::time::timeout(within, async {
            for p in pumps {
                let _ = p.await;
            }
        })
        .await;
    }
}

impl Launcher {
    /// The Lambda environment of the function's processes: the function's
    /// own variables, then the standard ones (which win on a clash).
    fn environment(&self) -> Vec<(String, String)> {
        let c = &self.config;
        let mut env = c.env.clone();
        let task_root = self.task_root.display().to_string();
        let log_group = format!("/aws/lambda/{}", c.function_name);
        let std_vars = [
            ("AWS_LAMBDA_RUNTIME_API", self.runtime_api.clone()),
            ("_HANDLER", c.handler.clone()),
            ("LAMBDA_TASK_ROOT", task_root.clone()),
            ("LAMBDA_RUNTIME_DIR", "/var/runtime".into()),
            ("AWS_LAMBDA_FUNCTION_NAME", c.function_name.clone()),
            ("AWS_LAMBDA_FUNCTION_VERSION", c.function_version.clone()),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", c.memory_mib.to_string()),
            ("AWS_LAMBDA_LOG_GROUP_NAME", log_group),
            ("AWS_LAMBDA_LOG_STREAM_NAME", "ember".into()),
            ("AWS_EXECUTION_ENV", "Ember_provided".into()),
            ("AWS_REGION", "local".into()),
            ("AWS_DEFAULT_REGION", "local".into()),
            ("PATH", "/usr/local/bin:/usr/bin:/bin".into()),
            ("LD_LIBRARY_PATH", format!("{task_root}/lib")),
            ("TZ", ":UTC".into()),
            ("HOME", "/tmp".into()),
        ];
        for (k, v) in std_vars {
            env.retain(|(name, _)| name != k);
            env.push((k.to_string(), v));
        }
        env
    }

    fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .envs(self.environment())
            .current_dir(&self.task_root)
            .stderr(Stdio::piped());
        sandbox::confine(&mut cmd, self.cgroup.as_ref(), self.uid_gid);
        cmd
    }

    /// Starts `task_root/bootstrap`, its stdout and stderr going to `logs`.
    /// A missing or non-executable bootstrap is an init error.
    pub fn start_bootstrap(&self, logs: &LogSink) -> Result<Process, ErrorInfo> {
        let bootstrap = self.task_root.join("bootstrap");
        check_executable(&bootstrap)?;
        let mut cmd = self.command(&bootstrap);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped());
        let mut p = self.spawn(cmd, &bootstrap, logs)?;
        if let Some(out) = p.stdout.take() {
            p.pumps
                .push(tokio::spawn(logs.clone().pump(LogStream::Stdout, out)));
        }
        Ok(p)
    }

    /// Starts the `exec` handler (`sh -c HANDLER`) with stdin and stdout
    /// piped to the caller; stderr goes to `logs`.
    pub fn start_exec(&self, logs: &LogSink) -> Result<Process, ErrorInfo> {
        let mut cmd = self.command(Path::new(SHELL));
        cmd.arg("-c")
            .arg(&self.config.handler)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        self.spawn(cmd, Path::new(SHELL), logs)
    }

    fn spawn(&self, mut cmd: Command, what: &Path, logs: &LogSink) -> Result<Process, ErrorInfo> {
        let (mut child, exit) = reaper::spawn(&mut cmd).map_err(|e| ErrorInfo {
            error_type: "Runtime.InvalidEntrypoint".into(),
            error_message: format!("cannot start {}: {e}", what.display()),
        })?;
        let pipe_err = |e: io::Error| ErrorInfo {
            error_type: "Runtime.Unknown".into(),
            error_message: format!("cannot set up the runtime's pipes: {e}"),
        };
        let stdin = match child.stdin.take() {
            Some(s) => Some(pipe::Sender::from_owned_fd(OwnedFd::from(s)).map_err(pipe_err)?),
            None => None,
        };
        let stdout = match child.stdout.take() {
            Some(s) => Some(pipe::Receiver::from_owned_fd(OwnedFd::from(s)).map_err(pipe_err)?),
            None => None,
        };
        let mut pumps = Vec::new();
        if let Some(err) = child.stderr.take() {
            let err = pipe::Receiver::from_owned_fd(OwnedFd::from(err)).map_err(pipe_err)?;
            pumps.push(tokio::spawn(logs.clone().pump(LogStream::Stderr, err)));
        }
        Ok(Process {
            pid: child.id() as libc::pid_t,
            exit,
            exited: None,
            pumps,
            stdin,
            stdout,
        })
    }
}

/// An init error unless `path` is an executable regular file.
fn check_executable(path: &Path) -> Result<(), ErrorInfo> {
    let bad = |why: String| ErrorInfo {
        error_type: "Runtime.InvalidEntrypoint".into(),
        error_message: format!("bootstrap {}: {why}", path.display()),
    };
    let meta = fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    if !meta.is_file() {
        return Err(bad("is not a regular file".into()));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(bad("is not executable".into()));
    }
    Ok(())
}
