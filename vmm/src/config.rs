//! What a VM is made of, from the command line or a Firecracker-style JSON
//! file, and the static checks on it.
//!
//! Checks that need the host (files exist, sockets bind, KVM limits) happen
//! when the VMM opens its resources; see [`crate::resources`].

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The smallest guest memory Ember boots: a kernel and an initramfs must fit.
pub const MIN_MEM_MIB: u64 = 16;
/// The largest guest memory accepted before looking at the host.
pub const MAX_MEM_MIB: u64 = 1 << 20;
/// The most vCPUs a guest can have (MP table APIC ids, IOAPIC id included).
pub use crate::arch::layout::MAX_VCPUS;
/// The most drives (virtio-mmio IRQs 5..=23 are shared with the vsock device).
pub const MAX_DRIVES: usize = 16;
/// The most host ports a guest may be allowed to connect to.
pub const MAX_ALLOWED_PORTS: usize = 256;
/// Longest path a Unix socket address holds (sun_path minus its NUL).
use crate::devices::virtio::vsock::MAX_UDS_PATH_LEN as MAX_UDS_PATH;
/// The default guest command line.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";

/// A complete, statically valid VM description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmmConfig {
    /// Guest kernel: an ELF vmlinux or a bzImage.
    pub kernel: PathBuf,
    /// Optional initramfs.
    pub initrd: Option<PathBuf>,
    /// Kernel command line (Ember appends its virtio-mmio devices).
    pub cmdline: String,
    /// Number of vCPUs.
    pub vcpus: u8,
    /// Guest memory in MiB.
    pub mem_mib: u64,
    /// The vsock device, if any.
    pub vsock: Option<VsockConfig>,
    /// Block devices, in the order the guest sees them (vda, vdb, ...).
    pub drives: Vec<DriveConfig>,
    /// Where the guest console goes.
    pub serial: SerialOutput,
}

/// The vsock device's settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The guest's context id (3 or more).
    pub guest_cid: u64,
    /// The host Unix socket for host-initiated connections; guest-initiated
    /// connections to port P go to `<uds_path>_<P>`.
    pub uds_path: PathBuf,
    /// Host ports guest-initiated connections may reach; any other port
    /// gets an RST. Empty by default (the guest agent needs none).
    #[serde(default)]
    pub allowed_host_ports: Vec<u32>,
}

/// A block device backed by a raw file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveConfig {
    /// The backing file.
    pub path: PathBuf,
    /// Whether the guest may only read.
    pub read_only: bool,
}

/// Destination of the guest console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialOutput {
    /// The VMM's standard output.
    Stdout,
    /// Discarded.
    None,
    /// A file, created or truncated.
    File(PathBuf),
}

/// A setting that is wrong, named by its command-line flag and JSON key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {reason}")]
pub struct ConfigError {
    /// The flag and JSON key, e.g. `--mem-mib (machine-config.mem_size_mib)`.
    pub field: &'static str,
    /// Why the value is refused.
    pub reason: String,
}

impl ConfigError {
    /// An error about `field`.
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

/// Field names used in errors.
pub mod field {
    /// The kernel.
    pub const KERNEL: &str = "--kernel (boot-source.kernel_image_path)";
    /// The initrd.
    pub const INITRD: &str = "--initrd (boot-source.initrd_path)";
    /// The command line.
    pub const CMDLINE: &str = "--cmdline (boot-source.boot_args)";
    /// vCPU count.
    pub const VCPUS: &str = "--vcpus (machine-config.vcpu_count)";
    /// Memory size.
    pub const MEM: &str = "--mem-mib (machine-config.mem_size_mib)";
    /// Guest CID.
    pub const CID: &str = "--vsock-cid (vsock.guest_cid)";
    /// Vsock socket path.
    pub const UDS: &str = "--vsock-uds (vsock.uds_path)";
    /// Host ports the guest may connect to.
    pub const ALLOW_PORT: &str = "--vsock-allow-port (vsock.allowed_host_ports)";
    /// A drive.
    pub const DRIVE: &str = "--drive (drives[].path_on_host)";
    /// The console.
    pub const SERIAL: &str = "--serial (serial)";
    /// The config file itself.
    pub const CONFIG: &str = "--config";
}

impl VmmConfig {
    /// Checks every value that can be judged without touching the host.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(ConfigError::new(
                field::VCPUS,
                format!("{} vCPUs: must be 1 to {MAX_VCPUS}", self.vcpus),
            ));
        }
        if self.mem_mib < MIN_MEM_MIB || self.mem_mib > MAX_MEM_MIB {
            return Err(ConfigError::new(
                field::MEM,
                format!(
                    "{} MiB: must be {MIN_MEM_MIB} to {MAX_MEM_MIB} MiB",
                    self.mem_mib
                ),
            ));
        }
        if self.cmdline.contains('\0') || self.cmdline.contains('\n') {
            return Err(ConfigError::new(
                field::CMDLINE,
                "must not contain NUL or newline characters",
            ));
        }
        if let Some(vsock) = &self.vsock {
            vsock.validate()?;
        }
        if self.drives.len() > MAX_DRIVES {
            return Err(ConfigError::new(
                field::DRIVE,
                format!("{} drives: at most {MAX_DRIVES}", self.drives.len()),
            ));
        }
        non_empty(&self.kernel, field::KERNEL)?;
        if let Some(initrd) = &self.initrd {
            non_empty(initrd, field::INITRD)?;
        }
        for drive in &self.drives {
            non_empty(&drive.path, field::DRIVE)?;
        }
        if let SerialOutput::File(path) = &self.serial {
            non_empty(path, field::SERIAL)?;
        }
        Ok(())
    }

    /// Parses and validates a Firecracker-style JSON config file's text.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        let mut de = serde_json::Deserializer::from_str(text);
        let file: JsonConfig = serde_path_to_error::deserialize(&mut de)
            .map_err(|e| ConfigError::new(field::CONFIG, format!("invalid config: {e}")))?;
        let machine = file.machine_config.unwrap_or_default();
        let config = VmmConfig {
            kernel: file.boot_source.kernel_image_path,
            initrd: file.boot_source.initrd_path,
            cmdline: file
                .boot_source
                .boot_args
                .unwrap_or_else(|| DEFAULT_CMDLINE.into()),
            vcpus: machine.vcpu_count.unwrap_or(1),
            mem_mib: machine.mem_size_mib.unwrap_or(128),
            vsock: file.vsock,
            drives: file
                .drives
                .into_iter()
                .map(|d| DriveConfig {
                    path: d.path_on_host,
                    read_only: d.is_read_only,
                })
                .collect(),
            serial: match file.serial {
                Some(s) => parse_serial(&s)?,
                None => SerialOutput::Stdout,
            },
        };
        config.validate()?;
        Ok(config)
    }
}

impl VsockConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        // CIDs 0-2 are the hypervisor, local and host; u32::MAX is "any".
        if self.guest_cid < 3 || self.guest_cid >= u64::from(u32::MAX) {
            return Err(ConfigError::new(
                field::CID,
                format!("{}: must be 3 to {}", self.guest_cid, u32::MAX - 1),
            ));
        }
        let len = self.uds_path.as_os_str().len();
        if len == 0 {
            return Err(ConfigError::new(field::UDS, "empty path"));
        }
        // Guest-initiated connections use `<uds>_<port>`: keep room for it.
        if len + 11 > MAX_UDS_PATH {
            return Err(ConfigError::new(
                field::UDS,
                format!(
                    "{}: {len} bytes is too long for a Unix socket path with a _<port> suffix (at most {})",
                    self.uds_path.display(),
                    MAX_UDS_PATH - 11
                ),
            ));
        }
        if self.allowed_host_ports.len() > MAX_ALLOWED_PORTS {
            return Err(ConfigError::new(
                field::ALLOW_PORT,
                format!(
                    "{} ports: at most {MAX_ALLOWED_PORTS}",
                    self.allowed_host_ports.len()
                ),
            ));
        }
        // u32::MAX is VMADDR_PORT_ANY: no socket is ever bound to it.
        if let Some(port) = self.allowed_host_ports.iter().find(|&&p| p == u32::MAX) {
            return Err(ConfigError::new(
                field::ALLOW_PORT,
                format!("{port}: must be 0 to {}", u32::MAX - 1),
            ));
        }
        Ok(())
    }
}

fn non_empty(path: &Path, field: &'static str) -> Result<(), ConfigError> {
    if path.as_os_str().is_empty() {
        return Err(ConfigError::new(field, "empty path"));
    }
    Ok(())
}

/// Parses `stdout`, `none` or `file:PATH`.
pub fn parse_serial(spec: &str) -> Result<SerialOutput, ConfigError> {
    match spec {
        "stdout" => Ok(SerialOutput::Stdout),
        "none" => Ok(SerialOutput::None),
        _ => match spec.strip_prefix("file:") {
            Some(path) if !path.is_empty() => Ok(SerialOutput::File(path.into())),
            _ => Err(ConfigError::new(
                field::SERIAL,
                format!("{spec:?}: expected stdout, none or file:PATH"),
            )),
        },
    }
}

/// Parses a drive as `PATH[,ro]`.
pub fn parse_drive(spec: &str) -> Result<DriveConfig, ConfigError> {
    let (path, read_only) = crate::devices::virtio::block::parse_drive_spec(spec)
        .map_err(|e| ConfigError::new(field::DRIVE, e.to_string()))?;
    Ok(DriveConfig { path, read_only })
}

/// The JSON config file, shaped like Firecracker's.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonConfig {
    #[serde(rename = "boot-source")]
    boot_source: JsonBootSource,
    #[serde(rename = "machine-config")]
    machine_config: Option<JsonMachine>,
    vsock: Option<VsockConfig>,
    #[serde(default)]
    drives: Vec<JsonDrive>,
    serial: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonBootSource {
    kernel_image_path: PathBuf,
    initrd_path: Option<PathBuf>,
    boot_args: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct JsonMachine {
    vcpu_count: Option<u8>,
    mem_size_mib: Option<u64>,
    /// Accepted for Firecracker compatibility; Ember never uses SMT.
    #[serde(default)]
    #[allow(dead_code)]
    smt: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonDrive {
    /// Accepted for Firecracker compatibility; drives are ordered as listed.
    #[allow(dead_code)]
    drive_id: Option<String>,
    path_on_host: PathBuf,
    #[serde(default)]
    is_read_only: bool,
    /// Accepted for Firecracker compatibility; Ember sets no root= itself.
    #[serde(default)]
    #[allow(dead_code)]
    is_root_device: bool,
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
