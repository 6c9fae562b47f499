//! The router's settings, one path from what the operator wrote to the
//! live objects: the config file ([`ConfigFile`], TOML, or JSON by its
//! `.json` extension), command-line flags on top ([`ServeFlags`]), the
//! environment for what must stay off argv (`EMBER_TENANTS_FILE`), and
//! defaults for the rest. [`ServeConfig::resolve`] builds the resolved
//! tree once; `server.rs` hands its parts down as they are (the
//! dispatcher takes capacity, guest and timing, placement the guest part,
//! the event queue its part, the API the tenants).
//!
//! Adding a setting: give its concern a struct of its own (in its own file
//! under `config/` when it grows), add ONE field for it to [`ConfigFile`]
//! and to [`ServeConfig`], and resolve it in [`ServeConfig::resolve`].
//!
//! ```toml
//! listen = "127.0.0.1:9000"
//! data_dir = "/var/lib/ember"
//! region = "us-east-1"
//! [capacity]
//! memory_mib = 4096
//! vcpus = 4
//! [guest]
//! kernel = "/path/vmlinux"        # default: `images/build --print-paths`
//! initramfs = "/path/initramfs"
//! vmm = "/path/ember-vmm"          # default: next to this binary, else on PATH
//! [guest.runtimes]                  # managed runtimes' images; default: `images/build --print-paths`
//! "python3.13" = "/path/runtime-python3.13.ext4"
//! "nodejs20.x" = "/path/runtime-nodejs20.x.ext4"
//! [timing]
//! keep_alive_secs = 300
//! queue_wait_ms = 1000
//! health_interval_secs = 30
//! shutdown_grace_secs = 30
//! [events]
//! workers = 32                     # Event attempts running at once, all tenants
//! workers_per_tenant = 8           # ... of which one tenant may hold at most this many
//! keep_finished = 10000            # finished events kept (oldest pruned first)
//! [edge]                          # see `edge::settings`
//! max_connections = 4096
//! [[tenants]]
//! id = "acme"
//! account_id = "123456789012"     # optional: derived from the id
//! concurrency = 100
//! quotas = { max_functions = 1000, max_code_bytes = 75000000000, max_pending_events = 10000 }
//! keys = [{ access_key_id = "AKIA...", secret_access_key = "..." }]
//! ```
//!
//! Tenants (they hold secrets) may also come from `--tenants-file FILE`
//! (repeatable) or the file named by `EMBER_TENANTS_FILE`: `[[tenants]]`
//! entries as above, added to the config file's.

mod tenants;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;

pub use tenants::{derived_account_id, load_tenants_file, KeyPair, Quotas, TenantConfig};

/// The environment variable naming a tenants file (used when no
/// `--tenants-file` is given).
pub const TENANTS_FILE_ENV: &str = "EMBER_TENANTS_FILE";

/// Why the settings are unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file does not parse.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, naming the field.
        message: String,
    },
    /// A setting is out of range or inconsistent.
    #[error("{0}")]
    Invalid(String),
}

/// Capacity section of the file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapacityFile {
    /// Total guest memory in MiB.
    pub memory_mib: Option<u64>,
    /// Total guest vCPUs.
    pub vcpus: Option<u32>,
}

/// Guest section of the file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestFile {
    /// Guest kernel (vmlinux).
    pub kernel: Option<PathBuf>,
    /// Guest initramfs.
    pub initramfs: Option<PathBuf>,
    /// The `ember-vmm` binary.
    pub vmm: Option<PathBuf>,
    /// Managed runtimes' images by name (see [`crate::runtime_images`]).
    #[serde(default)]
    pub runtimes: std::collections::BTreeMap<String, PathBuf>,
}

/// Timing section of the file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimingFile {
    /// Idle VMs are stopped after this many seconds.
    pub keep_alive_secs: Option<u64>,
    /// An invocation waits at most this long for a slot, then gets 429.
    pub queue_wait_ms: Option<u64>,
    /// Idle VMs are pinged this often.
    pub health_interval_secs: Option<u64>,
    /// On shutdown, in-flight invocations get this long to finish.
    pub shutdown_grace_secs: Option<u64>,
}

/// The config file as written; every field optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Listen address.
    pub listen: Option<SocketAddr>,
    /// Data directory.
    pub data_dir: Option<PathBuf>,
    /// Region named in ARNs.
    pub region: Option<String>,
    /// Host capacity.
    #[serde(default)]
    pub capacity: CapacityFile,
    /// Guest images and VMM.
    #[serde(default)]
    pub guest: GuestFile,
    /// Timeouts and intervals.
    #[serde(default)]
    pub timing: TimingFile,
    /// Event processing (every field defaults on its own).
    #[serde(default)]
    pub events: EventSettings,
    /// Tenants.
    #[serde(default)]
    pub tenants: Vec<TenantConfig>,
    /// The edge: connection cap, timeouts, TLS.
    #[serde(default)]
    pub edge: crate::edge::EdgeConfig,
    /// How VMs are jailed (`[jail]`, see `dispatch::jail`).
    #[serde(default)]
    pub jail: crate::dispatch::jail::JailSettings,
}

/// Reads a TOML file, or JSON when the name ends in `.json`.
fn parse_file<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let parsed = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).map_err(|e| e.to_string())
    } else {
        toml::from_str(&text).map_err(|e| e.to_string())
    };
    parsed.map_err(|message| ConfigError::Parse {
        path: path.to_path_buf(),
        message,
    })
}

impl ConfigFile {
    /// Reads a TOML file, or JSON when the name ends in `.json`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file: ConfigFile = parse_file(path)?;
        if !file.tenants.is_empty() {
            tenants::warn_if_readable_by_others(path);
        }
        Ok(file)
    }
}

/// `serve`'s flags: each overrides its config file field.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct ServeFlags {
    /// Config file (TOML, or JSON when it ends in .json).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Listen address [default: 127.0.0.1:9000].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Data directory (registry, code, images, queue, VM dirs)
    /// [default: $XDG_DATA_HOME/ember or ~/.local/share/ember].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Total guest memory the router may use, MiB [default: 4096].
    #[arg(long)]
    pub capacity_mem_mib: Option<u64>,
    /// Total guest vCPUs the router may use [default: 8].
    #[arg(long)]
    pub capacity_vcpus: Option<u32>,
    /// Guest kernel [default: `images/build --print-paths`].
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Guest initramfs [default: `images/build --print-paths`].
    #[arg(long)]
    pub initramfs: Option<PathBuf>,
    /// The ember-vmm binary [default: next to this one, else on PATH].
    #[arg(long)]
    pub vmm: Option<PathBuf>,
    /// A managed runtime's image, NAME=PATH (repeatable) [default: the
    /// config file's [guest.runtimes], else `images/build --print-paths`].
    #[arg(long = "runtime-image", value_parser = crate::runtime_images::parse_flag)]
    pub runtime_images: Vec<(String, PathBuf)>,
    /// A file of `[[tenants]]` with their keys (repeatable; adds to the
    /// config file's tenants) [default: $EMBER_TENANTS_FILE, if set].
    #[arg(long = "tenants-file")]
    pub tenants_files: Vec<PathBuf>,
    /// Region named in ARNs [default: us-east-1].
    #[arg(long)]
    pub region: Option<String>,
    /// Idle VMs are stopped after this many seconds [default: 300].
    #[arg(long)]
    pub keep_alive_secs: Option<u64>,
    /// Longest wait for a slot before 429, milliseconds [default: 1000].
    #[arg(long)]
    pub queue_wait_ms: Option<u64>,
    /// Log filter (tracing's EnvFilter syntax) [default: info, or RUST_LOG].
    #[arg(long)]
    pub log_level: Option<String>,
    /// Serve HTTPS with this PEM certificate chain (with --tls-key).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// Host resources the router's VMs may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapacitySettings {
    /// Guest memory in MiB (VMM overhead included).
    pub mem_mib: u64,
    /// vCPUs (one per VM).
    pub vcpus: u32,
}

/// What every VM is launched from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestSettings {
    /// Guest kernel (`vmlinux`).
    pub kernel: PathBuf,
    /// Guest initramfs (the agent).
    pub initramfs: PathBuf,
    /// The `ember-vmm` binary.
    pub vmm: PathBuf,
    /// Managed runtimes' images (a VM's second, read-only drive).
    pub runtime_images: crate::runtime_images::RuntimeImages,
}

/// Timeouts and intervals of the data plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimingSettings {
    /// Idle VMs are stopped after this long unused.
    pub keep_alive: Duration,
    /// How long an invocation may wait for a slot or capacity before 429.
    pub queue_wait: Duration,
    /// How often idle VMs are pinged.
    pub health_interval: Duration,
    /// On shutdown, in-flight invocations get this long to finish.
    pub shutdown_grace: Duration,
}

impl Default for TimingSettings {
    fn default() -> Self {
        TimingSettings {
            keep_alive: Duration::from_secs(defaults::KEEP_ALIVE_SECS),
            queue_wait: Duration::from_millis(defaults::QUEUE_WAIT_MS),
            health_interval: Duration::from_secs(defaults::HEALTH_INTERVAL_SECS),
            shutdown_grace: Duration::from_secs(defaults::SHUTDOWN_GRACE_SECS),
        }
    }
}

/// How Event invocations are processed (`[events]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventSettings {
    /// Attempts running at once, all tenants together.
    pub workers: usize,
    /// Attempts one tenant may run at once (its backlog never takes every
    /// worker).
    pub workers_per_tenant: usize,
    /// Finished events kept with their payload and result; the oldest are
    /// pruned as new ones finish.
    pub keep_finished: usize,
}

impl Default for EventSettings {
    fn default() -> Self {
        EventSettings {
            workers: 32,
            workers_per_tenant: 8,
            keep_finished: 10_000,
        }
    }
}

/// Everything `serve` needs, resolved and validated: built once by
/// [`ServeConfig::resolve`] and handed down part by part.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Where the API listens (port 0: any free port).
    pub listen: SocketAddr,
    /// Registry, code, images, event queue and VM run dirs live here.
    pub data_dir: PathBuf,
    /// Region named in ARNs.
    pub region: String,
    /// Host capacity for VMs.
    pub capacity: CapacitySettings,
    /// Guest images and the VMM.
    pub guest: GuestSettings,
    /// Timeouts and intervals.
    pub timing: TimingSettings,
    /// Event processing.
    pub events: EventSettings,
    /// Tenants, their keys, limits and quotas.
    pub tenants: Vec<TenantConfig>,
    /// The edge: connection cap, timeouts, TLS.
    pub edge: crate::edge::EdgeConfig,
    /// How VMs are jailed.
    pub jail: crate::dispatch::jail::JailSettings,
}

/// Defaults for what neither file nor flags set.
pub mod defaults {
    /// The API's default address.
    pub const LISTEN: &str = "127.0.0.1:9000";
    /// Region in ARNs.
    pub const REGION: &str = "us-east-1";
    /// Guest memory the router may use.
    pub const CAPACITY_MEM_MIB: u64 = 4096;
    /// Guest vCPUs the router may use.
    pub const CAPACITY_VCPUS: u32 = 8;
    /// Idle VM keep-alive, seconds.
    pub const KEEP_ALIVE_SECS: u64 = 300;
    /// Wait for a slot, milliseconds.
    pub const QUEUE_WAIT_MS: u64 = 1000;
    /// Health pings, seconds.
    pub const HEALTH_INTERVAL_SECS: u64 = 30;
    /// Graceful shutdown bound, seconds.
    pub const SHUTDOWN_GRACE_SECS: u64 = 30;
}

impl ServeConfig {
    /// Settings with every default, for `data_dir`, `guest` and `tenants`
    /// (tests and embedders change what they need).
    pub fn new(data_dir: PathBuf, guest: GuestSettings, tenants: Vec<TenantConfig>) -> Self {
        ServeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9000)),
            data_dir,
            region: defaults::REGION.into(),
            capacity: CapacitySettings {
                mem_mib: defaults::CAPACITY_MEM_MIB,
                vcpus: defaults::CAPACITY_VCPUS,
            },
            guest,
            timing: TimingSettings::default(),
            events: EventSettings::default(),
            tenants,
            edge: crate::edge::EdgeConfig::default(),
            jail: crate::dispatch::jail::JailSettings::default(),
        }
    }

    /// Builds the settings from the config file (if `--config` names
    /// one), the flags on top, and `EMBER_TENANTS_FILE`; checks them.
    pub fn resolve(flags: &ServeFlags) -> Result<ServeConfig, ConfigError> {
        let file = match &flags.config {
            Some(p) => ConfigFile::load(p)?,
            None => ConfigFile::default(),
        };
        let mut tenants = file.tenants;
        let mut tenant_files = flags.tenants_files.clone();
        if tenant_files.is_empty() {
            if let Some(p) = std::env::var_os(TENANTS_FILE_ENV).filter(|p| !p.is_empty()) {
                tenant_files.push(PathBuf::from(p));
            }
        }
        for p in &tenant_files {
            tenants.extend(load_tenants_file(p)?);
        }
        let guest = resolve_guest(flags, file.guest)?;
        let t = file.timing;
        let secs = Duration::from_secs;
        let cfg = ServeConfig {
            listen: flags.listen.or(file.listen).unwrap_or_else(|| {
                defaults::LISTEN
                    .parse()
                    .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9000)))
            }),
            data_dir: flags
                .data_dir
                .clone()
                .or(file.data_dir)
                .unwrap_or_else(default_data_dir),
            region: flags
                .region
                .clone()
                .or(file.region)
                .unwrap_or_else(|| defaults::REGION.into()),
            capacity: CapacitySettings {
                mem_mib: flags
                    .capacity_mem_mib
                    .or(file.capacity.memory_mib)
                    .unwrap_or(defaults::CAPACITY_MEM_MIB),
                vcpus: flags
                    .capacity_vcpus
                    .or(file.capacity.vcpus)
                    .unwrap_or(defaults::CAPACITY_VCPUS),
            },
            guest,
            timing: TimingSettings {
                keep_alive: secs(
                    flags
                        .keep_alive_secs
                        .or(t.keep_alive_secs)
                        .unwrap_or(defaults::KEEP_ALIVE_SECS),
                ),
                queue_wait: Duration::from_millis(
                    flags
                        .queue_wait_ms
                        .or(t.queue_wait_ms)
                        .unwrap_or(defaults::QUEUE_WAIT_MS),
                ),
                health_interval: secs(
                    t.health_interval_secs
                        .unwrap_or(defaults::HEALTH_INTERVAL_SECS),
                ),
                shutdown_grace: secs(
                    t.shutdown_grace_secs
                        .unwrap_or(defaults::SHUTDOWN_GRACE_SECS),
                ),
            },
            events: file.events,
            tenants,
            edge: crate::edge::EdgeConfig {
                tls_cert: flags.tls_cert.clone().or(file.edge.tls_cert),
                tls_key: flags.tls_key.clone().or(file.edge.tls_key),
                ..file.edge
            },
            jail: file.jail,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Where the VMs' directories live.
    pub fn run_dir(&self) -> PathBuf {
        self.data_dir.join("run")
    }

    /// Checks what can be checked without touching the disk.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.capacity.mem_mib < 128 {
            return bad(format!(
                "capacity memory {} MiB is below one 128 MiB guest",
                self.capacity.mem_mib
            ));
        }
        if self.capacity.vcpus == 0 {
            return bad("capacity vCPUs must be at least 1".into());
        }
        self.edge.validate().map_err(ConfigError::Invalid)?;
        let e = &self.events;
        if e.workers == 0 || e.workers_per_tenant == 0 {
            return bad("events.workers and events.workers_per_tenant must be at least 1".into());
        }
        tenants::validate(&self.tenants)
    }
}

/// Guest images: flags, then the file, then `images/build --print-paths`.
fn resolve_guest(flags: &ServeFlags, file: GuestFile) -> Result<GuestSettings, ConfigError> {
    let kernel = flags.kernel.clone().or(file.kernel);
    let initramfs = flags.initramfs.clone().or(file.initramfs);
    let guest_defaulted = kernel.is_none() || initramfs.is_none();
    let (kernel, initramfs) = match (kernel, initramfs) {
        (Some(k), Some(i)) => (k, i),
        (k, i) => {
            let (dk, di) = default_guest_images()?;
            (k.unwrap_or(dk), i.unwrap_or(di))
        }
    };
    for (what, p) in [("kernel", &kernel), ("initramfs", &initramfs)] {
        if !p.is_file() {
            return Err(ConfigError::Invalid(format!(
                "guest {what} {} is not a file",
                p.display()
            )));
        }
    }
    Ok(GuestSettings {
        kernel,
        initramfs,
        vmm: flags.vmm.clone().or(file.vmm).unwrap_or_else(default_vmm),
        runtime_images: crate::runtime_images::RuntimeImages::resolve(
            &file.runtimes,
            &flags.runtime_images,
            guest_defaulted,
        )?,
    })
}

/// The default data home: `$XDG_DATA_HOME/ember`, else `~/.local/share/ember`.
pub fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("ember");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share/ember")
}

/// Finds the guest images by running `images/build --print-paths` in the
/// checkout this binary was built from (or the current directory's).
pub fn default_guest_images() -> Result<(PathBuf, PathBuf), ConfigError> {
    let checkout = find_checkout().ok_or_else(|| {
        ConfigError::Invalid(
            "no --kernel/--initramfs given and no Ember checkout (images/build) found".into(),
        )
    })?;
    let out = std::process::Command::new(checkout.join("images/build"))
        .arg("--print-paths")
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| ConfigError::Invalid(format!("cannot run images/build: {e}")))?;
    if !out.status.success() {
        return Err(ConfigError::Invalid(format!(
            "images/build failed ({})",
            out.status
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(PathBuf::from)
            .ok_or_else(|| ConfigError::Invalid(format!("images/build printed no {key} line")))
    };
    Ok((get("vmlinux=")?, get("initramfs=")?))
}

/// The Ember checkout: the one this crate was compiled in, else the current
/// directory or one of its parents holding `images/build`.
pub fn find_checkout() -> Option<PathBuf> {
    let built_in = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    if built_in.join("images/build").is_file() {
        return Some(built_in);
    }
    let cwd = std::env::current_dir().ok()?;
    cwd.ancestors()
        .find(|d| d.join("images/build").is_file())
        .map(Path::to_path_buf)
}

/// The `ember-vmm` binary: next to this executable, else the first on PATH.
pub fn default_vmm() -> PathBuf {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("ember-vmm")));
    if let Some(p) = beside.filter(|p| p.is_file()) {
        return p;
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("ember-vmm"))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| PathBuf::from("ember-vmm"))
}

#[cfg(test)]
mod tests;
