//! What goes into a jail root: the pure part of the jail, testable on any host.
//!
//! Every host file the VM needs is bind-mounted onto an empty file or
//! directory of the same name inside the root; the VM's settings are
//! rewritten to the paths the VMM sees after `pivot_root`:
//!
//! | host                       | in the jail                 | mode |
//! |----------------------------|-----------------------------|------|
//! | `--kernel`                 | `/kernel`                   | ro   |
//! | `--initrd`                 | `/initrd`                   | ro   |
//! | `--drive PATH[,ro]` (n-th) | `/drives/<n>/<file name>`   | ro or rw |
//! | the `--vsock-uds` directory| `/vsock` (the socket inside)| rw   |
//! | `--serial file:PATH`       | `/console`                  | rw   |
//! | `/dev/kvm`                 | `/dev/kvm`                  | rw   |

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::config::{SerialOutput, VmmConfig};

use super::JailError;

/// `/dev/kvm`: bound into every jail.
pub const KVM_DEVICE: &str = "/dev/kvm";
/// The socket directory inside the jail.
pub const VSOCK_DIR: &str = "/vsock";

/// A bind mount of a host path into the jail root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// The host path (file or directory).
    pub source: PathBuf,
    /// The absolute path inside the jail.
    pub target: PathBuf,
    /// A directory (else a file).
    pub dir: bool,
    /// Read-only inside the jail.
    pub read_only: bool,
}

/// The binds of one VM and its settings as seen from inside the jail.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The bind mounts, in mount order.
    pub binds: Vec<Bind>,
    /// The VM's settings with jail paths.
    pub config: VmmConfig,
    /// The host directory of the vsock socket (chowned to the VM's uid).
    pub vsock_dir: Option<PathBuf>,
}

/// A host path must be absolute and plain (no `..`), so the bind source
/// is exactly the file the caller named.
pub fn check_host_path(what: &'static str, path: &Path) -> Result<(), JailError> {
    // On the bytes: `Path::components` would hide a `.` in the middle.
    let plain = path.is_absolute()
        && path
            .as_os_str()
            .as_bytes()
            .split(|b| *b == b'/')
            .all(|seg| seg != b"." && seg != b"..");
    if plain {
        Ok(())
    } else {
        Err(JailError::Setting {
            what,
            why: format!(
                "{} must be an absolute path without `.` or `..`",
                path.display()
            ),
        })
    }
}

fn file_name(what: &'static str, path: &Path) -> Result<PathBuf, JailError> {
    path.file_name()
        .map(PathBuf::from)
        .ok_or_else(|| JailError::Setting {
            what,
            why: format!("{} has no file name", path.display()),
        })
}

/// The jail's binds and the rewritten settings for `config`, whose host
/// paths must already be absolute (see [`absolute`]).
pub fn plan(config: &VmmConfig) -> Result<Layout, JailError> {
    let mut binds = Vec::new();
    let mut jailed = config.clone();
    let mut bind = |source: &Path, target: PathBuf, dir: bool, read_only: bool| {
        binds.push(Bind {
            source: source.to_path_buf(),
            target,
            dir,
            read_only,
        });
    };
    check_host_path("--kernel", &config.kernel)?;
    bind(&config.kernel, "/kernel".into(), false, true);
    jailed.kernel = "/kernel".into();
    if let Some(initrd) = &config.initrd {
        check_host_path("--initrd", initrd)?;
        bind(initrd, "/initrd".into(), false, true);
        jailed.initrd = Some("/initrd".into());
    }
    for (n, (drive, out)) in config.drives.iter().zip(&mut jailed.drives).enumerate() {
        check_host_path("--drive", &drive.path)?;
        let target = Path::new("/drives")
            .join(n.to_string())
            .join(file_name("--drive", &drive.path)?);
        bind(&drive.path, target.clone(), false, drive.read_only);
        out.path = target;
    }
    let mut vsock_dir = None;
    if let (Some(v), Some(out)) = (&config.vsock, &mut jailed.vsock) {
        check_host_path("--vsock-uds", &v.uds_path)?;
        let dir = v
            .uds_path
            .parent()
            .filter(|d| *d != Path::new("/"))
            .ok_or_else(|| JailError::Setting {
                what: "--vsock-uds",
                why: format!(
                    "{} must be in a directory of its own, not /",
                    v.uds_path.display()
                ),
            })?;
        bind(dir, VSOCK_DIR.into(), true, false);
        out.uds_path = Path::new(VSOCK_DIR).join(file_name("--vsock-uds", &v.uds_path)?);
        vsock_dir = Some(dir.to_path_buf());
    }
    if let SerialOutput::File(path) = &config.serial {
        check_host_path("--serial", path)?;
        bind(path, "/console".into(), false, false);
        jailed.serial = SerialOutput::File("/console".into());
    }
    bind(Path::new(KVM_DEVICE), KVM_DEVICE.into(), false, false);
    Ok(Layout {
        binds,
        config: jailed,
        vsock_dir,
    })
}

/// `config` with every host path made absolute against the current
/// directory (the jail binds by absolute path).
pub fn absolute(config: &VmmConfig) -> Result<VmmConfig, JailError> {
    let cwd = std::env::current_dir().map_err(|e| JailError::Host {
        what: "reading the current directory".into(),
        source: e,
    })?;
    let abs = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            cwd.join(p)
        }
    };
    let mut out = config.clone();
    out.kernel = abs(&config.kernel);
    out.initrd = config.initrd.as_deref().map(abs);
    for d in &mut out.drives {
        d.path = abs(&d.path);
    }
    if let Some(v) = &mut out.vsock {
        v.uds_path = abs(&v.uds_path);
    }
    if let SerialOutput::File(p) = &config.serial {
        out.serial = SerialOutput::File(abs(p));
    }
    // `./x` and `a/./b` become plain; `..` stays and is refused by `plan`.
    let plain = |p: &Path| -> PathBuf { p.components().collect() };
    out.kernel = plain(&out.kernel);
    out.initrd = out.initrd.as_deref().map(plain);
    for d in &mut out.drives {
        d.path = plain(&d.path);
    }
    if let Some(v) = &mut out.vsock {
        v.uds_path = plain(&v.uds_path);
    }
    if let SerialOutput::File(p) = &out.serial {
        out.serial = SerialOutput::File(plain(p));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DriveConfig, VsockConfig};

    fn config() -> VmmConfig {
        VmmConfig {
            kernel: "/images/vmlinux".into(),
            initrd: Some("/images/initramfs".into()),
            cmdline: "console=ttyS0".into(),
            vcpus: 1,
            mem_mib: 128,
            vsock: Some(VsockConfig {
                guest_cid: 3,
                uds_path: "/run/ember/vm-1/vsock/v.sock".into(),
                allowed_host_ports: Vec::new(),
            }),
            drives: vec![DriveConfig {
                path: "/data/code/abc.ext4".into(),
                read_only: true,
            }],
            serial: SerialOutput::Stdout,
        }
    }

    #[test]
    fn every_host_file_gets_a_jail_path() {
        let layout = plan(&config()).unwrap();
        let c = &layout.config;
        assert_eq!(c.kernel, Path::new("/kernel"));
        assert_eq!(c.initrd.as_deref(), Some(Path::new("/initrd")));
        assert_eq!(c.drives[0].path, Path::new("/drives/0/abc.ext4"));
        assert_eq!(
            c.vsock.as_ref().unwrap().uds_path,
            Path::new("/vsock/v.sock")
        );
        assert_eq!(
            layout.vsock_dir.as_deref(),
            Some(Path::new("/run/ember/vm-1/vsock"))
        );
        let targets: Vec<_> = layout.binds.iter().map(|b| b.target.clone()).collect();
        assert_eq!(
            targets,
            [
                "/kernel",
                "/initrd",
                "/drives/0/abc.ext4",
                "/vsock",
                "/dev/kvm"
            ]
            .map(PathBuf::from)
        );
        // Only the socket directory and the KVM device are writable.
        let writable: Vec<_> = layout
            .binds
            .iter()
            .filter(|b| !b.read_only)
            .map(|b| b.target.to_str().unwrap())
            .collect();
        assert_eq!(writable, ["/vsock", "/dev/kvm"]);
    }

    #[test]
    fn a_read_write_drive_stays_writable() {
        let mut c = config();
        c.drives[0].read_only = false;
        let layout = plan(&c).unwrap();
        assert!(!layout.binds[2].read_only);
    }

    #[test]
    fn paths_that_climb_out_are_refused() {
        for bad in ["/images/../etc/shadow", "relative/vmlinux", "/a/./b"] {
            let mut c = config();
            c.kernel = bad.into();
            let e = plan(&c).unwrap_err().to_string();
            assert!(e.contains("--kernel"), "{bad}: {e}");
        }
        let mut c = config();
        c.vsock.as_mut().unwrap().uds_path = "/v.sock".into();
        assert!(plan(&c).unwrap_err().to_string().contains("--vsock-uds"));
    }

    #[test]
    fn relative_paths_become_absolute_and_plain() {
        let mut c = config();
        c.kernel = "./vmlinux".into();
        let abs = absolute(&c).unwrap();
        assert!(abs.kernel.is_absolute());
        assert!(plan(&abs).is_ok());
    }
}
