//! The edge's settings: connection cap, timeouts and TLS. One struct, read
//! from the config file's `[edge]` table (every field optional) and handed
//! down as is.
//!
//! ```toml
//! [edge]
//! max_connections = 4096
//! header_read_timeout_ms = 10000   # first byte of a request head to its end
//! idle_timeout_ms = 60000          # keep-alive: no request and no traffic
//! body_timeout_ms = 120000         # a request's whole body
//! tls_cert = "/etc/ember/cert.pem" # both or neither: HTTPS instead of HTTP
//! tls_key = "/etc/ember/key.pem"
//! ```

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Defaults of the edge settings.
pub mod defaults {
    /// Open client connections at most.
    pub const MAX_CONNECTIONS: usize = 4096;
    /// From a request head's first byte to its end, milliseconds.
    pub const HEADER_READ_TIMEOUT_MS: u64 = 10_000;
    /// A keep-alive connection without a request and without traffic is
    /// closed after this long, milliseconds.
    pub const IDLE_TIMEOUT_MS: u64 = 60_000;
    /// A request's whole body must arrive within this, milliseconds.
    pub const BODY_TIMEOUT_MS: u64 = 120_000;
}

/// The edge's settings (the config file's `[edge]` table).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EdgeConfig {
    /// Open client connections at most; one more is answered 503 and closed.
    pub max_connections: usize,
    /// From a request head's first byte to its end.
    pub header_read_timeout_ms: u64,
    /// A connection without a request in flight and without traffic for
    /// this long is closed.
    pub idle_timeout_ms: u64,
    /// A request's whole body must arrive within this.
    pub body_timeout_ms: u64,
    /// PEM certificate chain: serve HTTPS (with `tls_key`).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            max_connections: defaults::MAX_CONNECTIONS,
            header_read_timeout_ms: defaults::HEADER_READ_TIMEOUT_MS,
            idle_timeout_ms: defaults::IDLE_TIMEOUT_MS,
            body_timeout_ms: defaults::BODY_TIMEOUT_MS,
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// The certificate and key files of HTTPS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsFiles<'a> {
    /// PEM certificate chain, leaf first.
    pub cert: &'a std::path::Path,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: &'a std::path::Path,
}

impl EdgeConfig {
    /// From a request head's first byte to its end.
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }

    /// Keep-alive idle bound.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    /// A request's whole body within this.
    pub fn body_timeout(&self) -> Duration {
        Duration::from_millis(self.body_timeout_ms)
    }

    /// The TLS files, when HTTPS is on.
    pub fn tls(&self) -> Option<TlsFiles<'_>> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            _ => None,
        }
    }

    /// Checks ranges and that TLS files come in pairs.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=1_000_000).contains(&self.max_connections) {
            return Err(format!(
                "edge.max_connections must be 1-1000000, not {}",
                self.max_connections
            ));
        }
        for (name, ms) in [
            ("header_read_timeout_ms", self.header_read_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("body_timeout_ms", self.body_timeout_ms),
        ] {
            if !(1..=3_600_000).contains(&ms) {
                return Err(format!("edge.{name} must be 1-3600000 ms, not {ms}"));
            }
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err("edge: tls_cert and tls_key go together (both or neither)".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_validation() {
        let d = EdgeConfig::default();
        assert!(d.validate().is_ok());
        assert!(d.tls().is_none());
        let parsed: EdgeConfig = toml::from_str("max_connections = 10\ntls_cert = \"c\"").unwrap();
        assert_eq!(parsed.max_connections, 10);
        assert_eq!(parsed.idle_timeout_ms, defaults::IDLE_TIMEOUT_MS);
        assert!(parsed.validate().unwrap_err().contains("both or neither"));
        let zero = EdgeConfig {
            body_timeout_ms: 0,
            ..EdgeConfig::default()
        };
        assert!(zero.validate().is_err());
        assert!(toml::from_str::<EdgeConfig>("max_conns = 1").is_err());
    }
}
