//! Starting and killing a function's processes: the `bootstrap` of a
//! provided runtime, the runtime image's bootstrap of a managed runtime
//! (`python3.13`, `nodejs20.x`: run inside the runtime image, see
//! [`RUNTIME_ROOT`]) or the shell command of an `exec` handler, each the
//! leader of its own process group, confined by the sandbox, with its output
//! piped to the agent.

use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ember_protocol::{Configure, ErrorInfo, LogStream};
use std::os::unix::process::CommandExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::unix::pipe;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::logs::LogSink;
use crate::reaper::{self, Exit};
use crate::sandbox::{self, Cgroup};

/// The shell that runs `exec` handlers.
pub const SHELL: &str = "/bin/sh";

/// Where PID 1 mounts a managed runtime's image (read-only), with the
/// function's code, `/tmp`, `/proc` and `/dev` bound inside it; the
/// runtime's processes see it as their `/`.
pub const RUNTIME_ROOT: &str = "/runtime";
/// [`RUNTIME_ROOT`] for `chroot`.
const RUNTIME_ROOT_C: &std::ffi::CStr = c"/runtime";
/// A managed runtime's bootstrap, inside its image.
pub const MANAGED_BOOTSTRAP: &str = "/var/runtime/bootstrap";

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
        let mut set = |k: &str, v: String| {
            env.retain(|(name, _)| name != k);
            env.push((k.to_string(), v));
        };
        for (k, v) in std_vars {
            set(k, v);
        }
        if let Some(name) = c.runtime.managed_name() {
            for (k, v) in managed_environment(c, name, &task_root) {
                set(k, v);
            }
        }
        env
    }

    /// A command for `program`, confined; a managed runtime's runs with
    /// [`RUNTIME_ROOT`] as its root.
    fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .envs(self.environment())
            .current_dir(&self.task_root)
            .stderr(Stdio::piped());
        if self.config.runtime.is_managed() {
            // Before `confine`'s hook (hooks run in order): chroot needs the
            // capability `confine` drops. std has already changed into the
            // task root, which is /var/task inside the new root too.
            // SAFETY: the closure makes only async-signal-safe system calls
            // on static strings.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::chroot(RUNTIME_ROOT_C.as_ptr()) != 0
                        || libc::chdir(c"/var/task".as_ptr()) != 0
                    {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        sandbox::confine(&mut cmd, self.cgroup.as_ref(), self.uid_gid);
        cmd
    }

    /// Starts `task_root/bootstrap`, its stdout and stderr going to `logs`.
    /// A missing or non-executable bootstrap is an init error.
    /// A managed runtime's bootstrap comes from its image instead.
    pub fn start_bootstrap(&self, logs: &LogSink) -> Result<Process, ErrorInfo> {
        let bootstrap = if self.config.runtime.is_managed() {
            check_runtime_image(self.config.runtime.managed_name().unwrap_or_default())?;
            check_executable(&Path::new(RUNTIME_ROOT).join(&MANAGED_BOOTSTRAP[1..]))?;
            PathBuf::from(MANAGED_BOOTSTRAP)
        } else {
            let bootstrap = self.task_root.join("bootstrap");
            check_executable(&bootstrap)?;
            bootstrap
        };
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

/// The variables Lambda sets for its managed runtimes, on top of the
/// common ones: `AWS_EXECUTION_ENV`, Lambda's `PATH`, `LANG` and library
/// paths, the interpreter's module paths, the region of the function's
/// ARN and a log stream named as Lambda names them.
fn managed_environment(c: &Configure, name: &str, task_root: &str) -> Vec<(&'static str, String)> {
    let region = c
        .function_arn
        .split(':')
        .nth(3)
        .filter(|r| !r.is_empty())
        .unwrap_or("us-east-1")
        .to_string();
    let mut vars = vec![
        ("AWS_EXECUTION_ENV", format!("AWS_Lambda_{name}")),
        ("AWS_REGION", region.clone()),
        ("AWS_DEFAULT_REGION", region),
        ("AWS_LAMBDA_LOG_STREAM_NAME", log_stream_name(&c.function_version)),
        ("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand".into()),
        ("LANG", "en_US.UTF-8".into()),
        ("PATH", "/var/lang/bin:/usr/local/bin:/usr/bin/:/bin:/opt/bin".into()),
        (
            "LD_LIBRARY_PATH",
            format!(
                "/var/lang/lib:/lib64:/usr/lib64:/var/runtime:/var/runtime/lib:{task_root}:{task_root}/lib:/opt/lib"
            ),
        ),
    ];
    if name.starts_with("python") {
        vars.push(("PYTHONPATH", "/var/runtime".into()));
    } else {
        vars.push((
            "NODE_PATH",
            format!("/opt/nodejs/node20/node_modules:/opt/nodejs/node_modules:/var/runtime/node_modules:/var/runtime:{task_root}"),
        ));
    }
    vars
}

/// `YYYY/MM/DD/[VERSION]` and 32 random hex digits, as Lambda names a
/// runtime instance's log stream.
fn log_stream_name(version: &str) -> String {
    let days = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0);
    let (y, m, d) = civil_from_days(days as i64);
    let mut id = [0u8; 16];
    if let Ok(mut f) = fs::File::open("/dev/urandom") {
        let _ = io::Read::read_exact(&mut f, &mut id);
    }
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    format!("{y:04}/{m:02}/{d:02}/[{version}]{hex}")
}

/// The proleptic Gregorian date of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// An init error unless the runtime image of `name` is mounted.
fn check_runtime_image(name: &str) -> Result<(), ErrorInfo> {
    let marker = Path::new(RUNTIME_ROOT).join("etc/ember-runtime");
    match fs::read_to_string(&marker) {
        Ok(found) if found.trim() == name => Ok(()),
        Ok(found) => Err(ErrorInfo {
            error_type: "Runtime.InvalidEntrypoint".into(),
            error_message: format!("the VM has the {} runtime image, not {name}", found.trim()),
        }),
        Err(e) => Err(ErrorInfo {
            error_type: "Runtime.InvalidEntrypoint".into(),
            error_message: format!("no {name} runtime image at {RUNTIME_ROOT}: {e}"),
        }),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_become_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(20_513), (2026, 3, 1));
    }

    #[test]
    fn log_streams_are_named_as_on_lambda() {
        let s = log_stream_name("$LATEST");
        let (date, rest) = s.split_at(11);
        assert_eq!(date.matches('/').count(), 3, "{s}");
        let hex = rest.strip_prefix("[$LATEST]").expect("version");
        assert_eq!(hex.len(), 32);
        assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
