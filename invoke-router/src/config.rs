//! The router's settings: a config file (TOML, or JSON by its `.json`
//! extension) and command-line flags on top of it.
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
//! [guest.runtimes]                  # default: `images/build --print-paths`
//! "python3.13" = "/path/runtime-python3.13.ext4"
//! "nodejs20.x" = "/path/runtime-nodejs20.x.ext4"
//! [timing]
//! keep_alive_secs = 300
//! queue_wait_ms = 1000
//! health_interval_secs = 30
//! shutdown_grace_secs = 30
//! [[tenants]]
//! id = "acme"
//! account_id = "123456789012"     # optional: derived from the id
//! concurrency = 100
//! keys = [{ access_key_id = "AKIA...", secret_access_key = "..." }]
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};

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

/// One access key pair of a tenant.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeyPair {
    /// The access key id clients send in their credential scope.
    pub access_key_id: String,
    /// The secret they sign with.
    pub secret_access_key: String,
}

/// A tenant: its functions are its own; its keys authenticate it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// The tenant's id (letters, digits, `-`, `_`; at most 64).
    pub id: String,
    /// The 12-digit account id in its ARNs; derived from `id` if absent.
    #[serde(default)]
    pub account_id: Option<String>,
    /// Concurrent invocations the tenant may run.
    #[serde(default = "default_tenant_concurrency")]
    pub concurrency: u32,
    /// Its access keys.
    pub keys: Vec<KeyPair>,
}

impl TenantConfig {
    /// The account id in the tenant's ARNs.
    pub fn account(&self) -> String {
        match &self.account_id {
            Some(a) => a.clone(),
            None => derived_account_id(&self.id),
        }
    }
}

/// A stable 12-digit account id for a tenant id.
pub fn derived_account_id(tenant: &str) -> String {
    let digest = Sha256::digest(tenant.as_bytes());
    let mut n = 0u64;
    for b in &digest[..8] {
        n = (n << 8) | u64::from(*b);
    }
    format!("{:012}", n % 1_000_000_000_000)
}

fn default_tenant_concurrency() -> u32 {
    1000
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
    /// Managed runtimes' images by name (see [`crate::runtimes`]).
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
    /// Tenants.
    #[serde(default)]
    pub tenants: Vec<TenantConfig>,
}

impl ConfigFile {
    /// Reads a TOML file, or JSON when the name ends in `.json`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
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
}

/// Everything `serve` needs, resolved and validated.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Where the API listens (port 0: any free port).
    pub listen: SocketAddr,
    /// Registry, code, images, event queue and VM run dirs live here.
    pub data_dir: PathBuf,
    /// Region named in ARNs.
    pub region: String,
    /// Total guest memory the router may use.
    pub capacity_mem_mib: u64,
    /// Total guest vCPUs the router may use.
    pub capacity_vcpus: u32,
    /// Guest kernel.
    pub kernel: PathBuf,
    /// Guest initramfs.
    pub initramfs: PathBuf,
    /// Managed runtimes' images.
    pub runtime_images: crate::runtimes::RuntimeImages,
    /// The `ember-vmm` binary.
    pub vmm: PathBuf,
    /// Idle VM keep-alive.
    pub keep_alive: Duration,
    /// Bounded wait for a slot.
    pub queue_wait: Duration,
    /// Health ping interval.
    pub health_interval: Duration,
    /// Graceful shutdown bound.
    pub shutdown_grace: Duration,
    /// Tenants and their keys.
    pub tenants: Vec<TenantConfig>,
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
    /// Checks what can be checked without touching the disk.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.capacity_mem_mib < 128 {
            return bad(format!(
                "capacity memory {} MiB is below one 128 MiB guest",
                self.capacity_mem_mib
            ));
        }
        if self.capacity_vcpus == 0 {
            return bad("capacity vCPUs must be at least 1".into());
        }
        if self.tenants.is_empty() {
            return bad(
                "no tenants: give [[tenants]] in the config file or --tenant ID:KEY:SECRET".into(),
            );
        }
        let mut ids = std::collections::HashSet::new();
        let mut keys = std::collections::HashSet::new();
        for t in &self.tenants {
            let ok = !t.id.is_empty()
                && t.id.len() <= 64
                && t.id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok {
                return bad(format!(
                    "tenant id '{}' must be 1-64 of [A-Za-z0-9_-]",
                    t.id
                ));
            }
            if !ids.insert(t.id.clone()) {
                return bad(format!("tenant '{}' is listed twice", t.id));
            }
            let account = t.account();
            if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
                return bad(format!("tenant '{}': account_id must be 12 digits", t.id));
            }
            if t.keys.is_empty() {
                return bad(format!("tenant '{}' has no keys", t.id));
            }
            for k in &t.keys {
                let key_ok = (16..=128).contains(&k.access_key_id.len())
                    && k.access_key_id.bytes().all(|b| b.is_ascii_alphanumeric());
                if !key_ok {
                    return bad(format!(
                        "tenant '{}': access key id '{}' must be 16-128 letters or digits",
                        t.id, k.access_key_id
                    ));
                }
                if k.secret_access_key.len() < 16
                    || k.secret_access_key.chars().any(char::is_whitespace)
                {
                    return bad(format!(
                        "tenant '{}': secret of '{}' must be at least 16 characters without spaces",
                        t.id, k.access_key_id
                    ));
                }
                if !keys.insert(k.access_key_id.clone()) {
                    return bad(format!(
                        "access key id '{}' is listed twice",
                        k.access_key_id
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Parses `--tenant ID:ACCESS_KEY_ID:SECRET`.
pub fn parse_tenant_flag(s: &str) -> Result<TenantConfig, String> {
    let mut parts = s.splitn(3, ':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(id), Some(key), Some(secret))
            if !id.is_empty() && !key.is_empty() && !secret.is_empty() =>
        {
            Ok(TenantConfig {
                id: id.to_string(),
                account_id: None,
                concurrency: default_tenant_concurrency(),
                keys: vec![KeyPair {
                    access_key_id: key.to_string(),
                    secret_access_key: secret.to_string(),
                }],
            })
        }
        _ => Err(format!("'{s}' is not ID:ACCESS_KEY_ID:SECRET")),
    }
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
mod tests {
    use super::*;

    #[test]
    fn toml_and_json_files_parse() {
        let dir = tempfile::tempdir().unwrap();
        let toml_path = dir.path().join("c.toml");
        std::fs::write(
            &toml_path,
            "listen = \"127.0.0.1:9100\"\n[capacity]\nmemory_mib = 2048\n\
             [[tenants]]\nid = \"acme\"\nkeys = [{ access_key_id = \"AKIAACMEACMEACME0001\", secret_access_key = \"secretsecretsecret\" }]\n",
        )
        .unwrap();
        let f = ConfigFile::load(&toml_path).unwrap();
        assert_eq!(f.listen.unwrap().port(), 9100);
        assert_eq!(f.capacity.memory_mib, Some(2048));
        assert_eq!(f.tenants[0].keys[0].access_key_id, "AKIAACMEACMEACME0001");
        assert_eq!(f.tenants[0].account().len(), 12);
        let json_path = dir.path().join("c.json");
        std::fs::write(
            &json_path,
            r#"{"tenants":[{"id":"a","concurrency":5,"keys":[]}]}"#,
        )
        .unwrap();
        assert_eq!(
            ConfigFile::load(&json_path).unwrap().tenants[0].concurrency,
            5
        );
        std::fs::write(&json_path, r#"{"tenant":[]}"#).unwrap();
        let err = ConfigFile::load(&json_path).unwrap_err().to_string();
        assert!(err.contains("tenant"), "{err}");
    }

    #[test]
    fn tenant_flag() {
        let t = parse_tenant_flag("acme:AKIAACMEACMEACME0001:se:cret").unwrap();
        assert_eq!(t.keys[0].secret_access_key, "se:cret");
        assert!(parse_tenant_flag("acme:AKIA").is_err());
    }
}
