//! Checks of the per-tenant storage quotas (`config::Quotas`: how many
//! functions a tenant may have, and how many bytes of code, the sum of its
//! functions' zip sizes as Lambda counts code storage). Set per tenant in
//! the config file:
//!
//! ```toml
//! [[tenants]]
//! id = "acme"
//! quotas = { max_functions = 100, max_code_bytes = 10737418240 }
//! ```
//!
//! The registry checks them in the same transaction that adds or changes a
//! function, so concurrent uploads cannot overshoot.

pub use crate::config::Quotas;

impl Quotas {
    /// No limits (for callers that check none).
    pub const UNLIMITED: Quotas = Quotas {
        max_functions: u32::MAX,
        max_code_bytes: u64::MAX,
        max_pending_events: u32::MAX,
    };

    /// Whether a tenant storing `usage` may get one more function with
    /// `adding` bytes of code.
    pub fn check_create(&self, usage: Usage, adding: u64) -> Result<(), QuotaExceeded> {
        if usage.functions >= u64::from(self.max_functions) {
            return Err(QuotaExceeded::Functions {
                limit: u64::from(self.max_functions),
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
            ..Quotas::default()
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
    }
}
