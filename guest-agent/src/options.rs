//! The agent's settings, read from the kernel command line (`ember.NAME=`)
//! or, failing that, the environment (`EMBER_AGENT_NAME`). Inside a guest
//! the defaults are right; the settings exist for boot tests and for
//! running the agent on a host.
//!
//! | setting | default | meaning |
//! | --- | --- | --- |
//! | `ember.agent` / `EMBER_AGENT_MODE` | `serve` | `oneshot`: print the ready line and reset the VM (boot-time tests) |
//! | `ember.listen` / `EMBER_AGENT_LISTEN` | `vsock:5000` | or `unix:PATH` |
//! | `ember.task` / `EMBER_AGENT_TASK` | `/dev/vda` | block device with the function's ext4 image (`none`: do not mount) |
//! | `ember.runtime` / `EMBER_AGENT_RUNTIME` | `/dev/vdb` as PID 1, else `none` | block device with a managed runtime's image, mounted at `/runtime` when present |
//! | `ember.task_root` / `EMBER_AGENT_TASK_ROOT` | `/var/task` | where the function's code is |
//! | `ember.runtime_api` / `EMBER_AGENT_RUNTIME_API` | `127.0.0.1:9001` | the Runtime API's address |
//! | `ember.uid` / `EMBER_AGENT_UID` | `1000` as PID 1, else `none` | the handlers' uid (and gid) |
//! | `ember.cgroup` / `EMBER_AGENT_CGROUP` | `/sys/fs/cgroup` as PID 1, else `none` | cgroup2 root for the handlers' cgroup |

use std::net::SocketAddr;
use std::path::PathBuf;

use ember_protocol::AGENT_VSOCK_PORT;

use crate::listener::ListenAddr;
use crate::runtime_api::RUNTIME_API_ADDR;

/// Whether the agent serves or only proves the guest boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Serve the router until told to shut down.
    Serve,
    /// Print the ready line, then reset the VM.
    Oneshot,
}

/// Everything the binary reads from its command line and environment.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Serve or oneshot.
    pub mode: Mode,
    /// Where the router connects.
    pub listen: ListenAddr,
    /// The function's code volume, if one is to be mounted.
    pub task_device: Option<PathBuf>,
    /// A managed runtime's image, if one is to be mounted.
    pub runtime_device: Option<PathBuf>,
    /// Where the function's code is.
    pub task_root: PathBuf,
    /// The Runtime API's address.
    pub runtime_api: SocketAddr,
    /// The handlers' uid and gid.
    pub uid: Option<u32>,
    /// The cgroup2 root for the handlers' cgroup.
    pub cgroup_root: Option<PathBuf>,
}

fn lookup(cmdline: &str, name: &str) -> Option<String> {
    let key = format!("ember.{name}=");
    cmdline
        .split_whitespace()
        .rev()
        .find_map(|w| w.strip_prefix(&key).map(str::to_string))
        .or_else(|| std::env::var(format!("EMBER_AGENT_{}", name.to_uppercase())).ok())
}

fn optional_path(v: Option<String>, default: Option<&str>) -> Option<PathBuf> {
    match v.as_deref().or(default) {
        None | Some("none") | Some("") => None,
        Some(p) => Some(PathBuf::from(p)),
    }
}

impl Settings {
    /// Reads the settings from `cmdline` and the environment; `pid1` picks
    /// the defaults of a guest.
    pub fn read(cmdline: &str, pid1: bool) -> Result<Settings, String> {
        let get = |name: &str| lookup(cmdline, name);
        let mode = match get("agent").as_deref().or(get("mode").as_deref()) {
            None | Some("serve") => Mode::Serve,
            Some("oneshot") => Mode::Oneshot,
            Some(other) => return Err(format!("ember.agent={other}: expected serve or oneshot")),
        };
        let listen = match get("listen") {
            None => ListenAddr::Vsock(AGENT_VSOCK_PORT),
            Some(v) => parse_listen(&v)?,
        };
        let runtime_api = get("runtime_api")
            .unwrap_or_else(|| RUNTIME_API_ADDR.into())
            .parse()
            .map_err(|e| format!("ember.runtime_api: {e}"))?;
        let uid = match get("uid").as_deref() {
            None if pid1 => Some(1000),
            None | Some("none") => None,
            Some(v) => Some(v.parse().map_err(|e| format!("ember.uid={v}: {e}"))?),
        };
        Ok(Settings {
            mode,
            listen,
            task_device: optional_path(get("task"), pid1.then_some("/dev/vda")),
            runtime_device: optional_path(get("runtime"), pid1.then_some("/dev/vdb")),
            task_root: PathBuf::from(get("task_root").unwrap_or_else(|| "/var/task".into())),
            runtime_api,
            uid,
            cgroup_root: optional_path(get("cgroup"), pid1.then_some("/sys/fs/cgroup")),
        })
    }
}

/// `vsock:PORT` or `unix:PATH`.
pub fn parse_listen(v: &str) -> Result<ListenAddr, String> {
    if let Some(port) = v.strip_prefix("vsock:") {
        let port = port.parse().map_err(|e| format!("ember.listen={v}: {e}"))?;
        Ok(ListenAddr::Vsock(port))
    } else if let Some(path) = v.strip_prefix("unix:").filter(|p| !p.is_empty()) {
        Ok(ListenAddr::Unix(PathBuf::from(path)))
    } else {
        Err(format!(
            "ember.listen={v}: expected vsock:PORT or unix:PATH"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_sets_the_mode_and_listener() {
        let s = Settings::read(
            "console=ttyS0 ember.agent=oneshot ember.listen=vsock:7",
            true,
        )
        .unwrap();
        assert_eq!(s.mode, Mode::Oneshot);
        assert_eq!(s.listen, ListenAddr::Vsock(7));
        assert_eq!(s.uid, Some(1000));
        assert_eq!(s.task_device, Some(PathBuf::from("/dev/vda")));
        assert_eq!(s.runtime_device, Some(PathBuf::from("/dev/vdb")));
        let s = Settings::read(
            "ember.listen=unix:/tmp/a ember.uid=none ember.cgroup=none",
            true,
        )
        .unwrap();
        assert_eq!(s.listen, ListenAddr::Unix("/tmp/a".into()));
        assert_eq!((s.uid, s.cgroup_root), (None, None));
    }

    #[test]
    fn bad_settings_are_refused_with_the_reason() {
        assert!(Settings::read("ember.agent=sometimes", false)
            .unwrap_err()
            .contains("serve or oneshot"));
        assert!(Settings::read("ember.listen=tcp:1", false).is_err());
        assert!(Settings::read("ember.listen=vsock:x", false).is_err());
        assert!(Settings::read("ember.uid=-1", false).is_err());
    }
}
