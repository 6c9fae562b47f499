//! Per-tenant quotas on stored functions: how many a tenant may have and
//! how many bytes of code (the sum of its functions' zip sizes, as Lambda
//! counts code storage). Set per tenant in the config file:
//!
//! ```toml
//! [[tenants]]
//! id = "acme"
//! quotas = { max_functions = 100, max_code_bytes = 10737418240 }
//! ```
//!
//! The registry checks them in the same transaction that adds or changes a
//! function, so concurrent uploads cannot overshoot.

use serde::Deserialize;

/// A tenant's storage quotas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Quotas {
    /// Most functions the tenant may have.
    pub max_functions: u64,
    /// Most bytes of code (zip sizes summed over its functions).
    pub max_code_bytes: u64,
}

/// Defaults: Lambda's code storage (75 GB per account and region) and a
/// thousand functions.
impl Default for Quotas {
    fn default() -> Self {
        Self {
            max_functions: 1000,
            max_code_bytes: 75 * 1000 * 1000 * 1000,
        }
    }
}

impl Quotas {
    /// No limits (for callers that check none).
    pub const UNLIMITED: Quotas = Quotas {
        max_functions: u64::MAX,
        max_code_bytes: u64::MAX,
    };

    /// Whether a tenant storing `usage` may get one more function with
    /// `adding` bytes of code.
    pub fn check_create(&self, usage: Usage, adding: u64) -> Result<(), QuotaExceeded> {
        if usage.functions >= self.max_functions {
            return Err(QuotaExceeded::Functions {
                limit: self.max_functions,
            });
        }
        self.check_code(usage.code_bytes, adding)
    }

    /// Whether a function's code may become `adding` bytes when the
    /// tenant's other functions hold `others` bytes.
    pub fn check_code(&self, others: u64, adding: u64) -> Result<(), QuotaExceeded> {
        if others.saturating_add(adding) > self.max_code_bytes {
            return Err(QuotaExceeded::CodeBytes {
                limit: self.max_code_bytes,
                used: others,
                adding,
            });
        }
        Ok(())
    }
}

/// What a tenant stores now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Its functions.
    pub functions: u64,
    /// Their code, bytes.
    pub code_bytes: u64,
}

/// A quota a change would break.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotaExceeded {
    /// Too many functions.
    #[error("the tenant has reached its quota of {limit} functions")]
    Functions {
        /// The quota.
        limit: u64,
    },
    /// Too many bytes of code.
    #[error(
        "code storage quota exceeded: the tenant's other functions hold {used} bytes of code, \
         this code is {adding} bytes, and the quota is {limit} bytes"
    )]
    CodeBytes {
        /// The quota.
        limit: u64,
        /// Bytes used by the tenant's other functions.
        used: u64,
        /// Bytes the change adds.
        adding: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_inclusive() {
        let q = Quotas {
            max_functions: 2,
            max_code_bytes: 100,
        };
        let usage = |functions, code_bytes| Usage {
            functions,
            code_bytes,
        };
        assert!(q.check_create(usage(1, 60), 40).is_ok());
        assert_eq!(
            q.check_create(usage(2, 0), 1),
            Err(QuotaExceeded::Functions { limit: 2 })
        );
        assert!(matches!(
            q.check_create(usage(1, 60), 41),
            Err(QuotaExceeded::CodeBytes { used: 60, .. })
        ));
        assert!(Quotas::UNLIMITED.check_code(u64::MAX, 1).is_ok());
        let parsed: Quotas = toml::from_str("max_functions = 3").unwrap();
        assert_eq!(parsed.max_functions, 3);
        assert_eq!(parsed.max_code_bytes, Quotas::default().max_code_bytes);
        assert!(toml::from_str::<Quotas>("max_lambdas = 3").is_err());
    }
}
