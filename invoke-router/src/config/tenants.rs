//! Tenants: who may call the API, their concurrency limit and their quotas.
//! Secrets come from files (the config file, `--tenants-file`, or the file
//! named by `EMBER_TENANTS_FILE`), never from the command line.

use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::ConfigError;

/// One access key pair of a tenant.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeyPair {
    /// The access key id clients send in their credential scope.
    pub access_key_id: String,
    /// The secret they sign with.
    pub secret_access_key: String,
}

/// A tenant's quotas (`[tenants.quotas]`); each field defaults on its own.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Quotas {
    /// The most functions the tenant may have.
    pub max_functions: u32,
    /// The most bytes of code (zips as uploaded) its functions may hold.
    pub max_code_bytes: u64,
    /// The most Event invocations it may have queued or running.
    pub max_pending_events: u32,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            max_functions: 1000,
            // Lambda's default code storage per account: 75 GB.
            max_code_bytes: 75_000_000_000,
            max_pending_events: 10_000,
        }
    }
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
    /// Its quotas.
    #[serde(default)]
    pub quotas: Quotas,
    /// Its access keys.
    pub keys: Vec<KeyPair>,
}

impl TenantConfig {
    /// A tenant with one key pair, the default limit and quotas.
    pub fn new(id: &str, access_key_id: &str, secret_access_key: &str) -> Self {
        TenantConfig {
            id: id.into(),
            account_id: None,
            concurrency: default_tenant_concurrency(),
            quotas: Quotas::default(),
            keys: vec![KeyPair {
                access_key_id: access_key_id.into(),
                secret_access_key: secret_access_key.into(),
            }],
        }
    }

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

/// A tenants file: `[[tenants]]` entries only.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantsFile {
    #[serde(default)]
    tenants: Vec<TenantConfig>,
}

/// Reads the tenants of a tenants file (TOML, or JSON by its extension).
pub fn load_tenants_file(path: &Path) -> Result<Vec<TenantConfig>, ConfigError> {
    warn_if_readable_by_others(path);
    let f: TenantsFile = super::parse_file(path)?;
    Ok(f.tenants)
}

/// Secrets in a file others can read are not secret: say so.
pub(super) fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path) {
        if m.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                "a file with tenant secrets is readable by group or others; chmod 600 it"
            );
        }
    }
}

/// Checks every tenant and that ids and access keys are unique.
pub fn validate(tenants: &[TenantConfig]) -> Result<(), ConfigError> {
    let bad = |m: String| Err(ConfigError::Invalid(m));
    if tenants.is_empty() {
        return bad(
            "no tenants: give [[tenants]] in the config file or a --tenants-file (or EMBER_TENANTS_FILE)"
                .into(),
        );
    }
    let mut ids = std::collections::HashSet::new();
    let mut keys = std::collections::HashSet::new();
    for t in tenants {
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
        if t.quotas.max_pending_events == 0 {
            return bad(format!(
                "tenant '{}': quotas.max_pending_events must be at least 1",
                t.id
            ));
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
