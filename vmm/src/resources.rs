//! Every host resource a VM needs, opened before the guest runs.
//!
//! Opening everything up front means a bad setting fails before any guest
//! code executes, and a later jailed VMM needs no host paths after start.

use std::fs::{File, OpenOptions};
use std::io::LineWriter;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use crate::arch::loader::LoadError;
use crate::config::{field, ConfigError, SerialOutput, VmmConfig};
use crate::devices::serial::ConsoleSink;
use crate::devices::virtio::vsock;

/// A drive's open backing file.
pub struct OpenDrive {
    /// The backing file, opened read-only or read-write.
    pub file: File,
    /// Whether the guest may only read.
    pub read_only: bool,
    /// The id the guest reads with VIRTIO_BLK_T_GET_ID (the file name, cut to 20 bytes).
    pub id: String,
}

/// The vsock listener; its socket file is removed when this is dropped,
/// unless it was handed on with [`BoundSocket::into_parts`].
pub struct BoundSocket {
    listener: Option<UnixListener>,
    path: PathBuf,
}

impl BoundSocket {
    /// The listener and its path, for a device that takes over the cleanup.
    pub fn into_parts(mut self) -> (UnixListener, PathBuf) {
        let listener = self
            .listener
            .take()
            .expect("listener is present until handed on");
        (listener, std::mem::take(&mut self.path))
    }
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        if self.listener.is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The open resources of one VM.
pub struct Resources {
    /// The kernel image.
    pub kernel: File,
    /// The initramfs.
    pub initrd: Option<File>,
    /// The drives, in guest order.
    pub drives: Vec<OpenDrive>,
    /// The vsock listener and guest CID.
    pub vsock: Option<(BoundSocket, u64)>,
    /// The console sink.
    pub serial: ConsoleSink,
}

fn open_read(path: &Path, field: &'static str) -> Result<File, ConfigError> {
    let file = File::open(path)
        .map_err(|e| ConfigError::new(field, format!("{}: {e}", path.display())))?;
    let meta = file
        .metadata()
        .map_err(|e| ConfigError::new(field, format!("{}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(ConfigError::new(
            field,
            format!("{}: not a regular file", path.display()),
        ));
    }
    Ok(file)
}

/// The host's physical memory in MiB.
fn host_mem_mib() -> Option<u64> {
    // SAFETY: sysinfo fills the zeroed struct it is given and nothing else.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid, writable sysinfo struct.
    if unsafe { libc::sysinfo(&mut info) } != 0 {
        return None;
    }
    Some((info.totalram as u64 * u64::from(info.mem_unit)) >> 20)
}

impl Resources {
    /// Opens what `config` names; the config must have passed `validate`.
    pub fn open(config: &VmmConfig) -> Result<Self, ConfigError> {
        if let Some(host) = host_mem_mib() {
            if config.mem_mib > host {
                return Err(ConfigError::new(
                    field::MEM,
                    format!("{} MiB is more than this host's {host} MiB", config.mem_mib),
                ));
            }
        }
        let mut kernel = open_read(&config.kernel, field::KERNEL)?;
        // Known before KVM is touched; the loader sees the same answer later.
        crate::arch::loader::detect(&mut kernel).map_err(|e| match e {
            LoadError::NotAKernel { .. } => ConfigError::new(
                field::KERNEL,
                format!(
                    "{}: neither an ELF vmlinux nor a bzImage",
                    config.kernel.display()
                ),
            ),
            other => ConfigError::new(
                field::KERNEL,
                format!("{}: {other}", config.kernel.display()),
            ),
        })?;
        let initrd = match &config.initrd {
            Some(path) => {
                let file = open_read(path, field::INITRD)?;
                let len = file.metadata().map(|m| m.len()).unwrap_or(0);
                if len >= config.mem_mib << 20 {
                    return Err(ConfigError::new(
                        field::INITRD,
                        format!(
                            "{}: {len} bytes does not fit in {} MiB of guest memory",
                            path.display(),
                            config.mem_mib
                        ),
                    ));
                }
                Some(file)
            }
            None => None,
        };
        let drives = config
            .drives
            .iter()
            .map(|d| {
                let file = OpenOptions::new()
                    .read(true)
                    .write(!d.read_only)
                    .open(&d.path)
                    .map_err(|e| {
                        ConfigError::new(field::DRIVE, format!("{}: {e}", d.path.display()))
                    })?;
                let id: String = d
                    .path
                    .file_name()
                    .map(|n| n.to_string_lossy().chars().take(20).collect())
                    .unwrap_or_default();
                Ok(OpenDrive {
                    file,
                    read_only: d.read_only,
                    id,
                })
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        // Bind last but one: if the console file fails, the socket goes away again.
        let vsock = match &config.vsock {
            Some(v) => {
                let listener = vsock::bind_listener(&v.uds_path)
                    .map_err(|e| ConfigError::new(field::UDS, e.to_string()))?;
                Some((
                    BoundSocket {
                        listener: Some(listener),
                        path: v.uds_path.clone(),
                    },
                    v.guest_cid,
                ))
            }
            None => None,
        };
        let serial: ConsoleSink = match &config.serial {
            SerialOutput::Stdout => Box::new(std::io::stdout()),
            SerialOutput::None => Box::new(std::io::sink()),
            SerialOutput::File(path) => {
                Box::new(LineWriter::new(File::create(path).map_err(|e| {
                    ConfigError::new(field::SERIAL, format!("{}: {e}", path.display()))
                })?))
            }
        };
        Ok(Self {
            kernel,
            initrd,
            drives,
            vsock,
            serial,
        })
    }
}
