//! Counting: how many invocations each tenant and each function has in
//! flight, against their limits. Pure bookkeeping (no I/O, no time), so the
//! rules are unit-tested directly; over a limit means an immediate 429.
//!
//! The rules, after Lambda's reserved concurrency:
//! - a function with reserved concurrency `R` runs at most `R` at once
//!   (`R = 0`: throttled), and those `R` are set aside for it;
//! - the tenant's other functions share what is left of the tenant's limit
//!   (the limit minus every reservation the counter knows of);
//! - a tenant never runs more than its limit in total.
//!
//! Reservations are learned from the specs of invocations, so a function's
//! share is set aside from its first invocation on (until it is retired).
//! The API keeps the sum of reservations under the tenant limit.

use std::collections::HashMap;

/// Why an invocation was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Throttle {
    /// The function's reserved concurrency is 0.
    FunctionThrottled,
    /// The function runs as many as its reserved concurrency allows.
    FunctionLimit(u32),
    /// The tenant's unreserved share is used up.
    UnreservedLimit(u32),
    /// The tenant runs as many as its limit allows.
    TenantLimit(u32),
}

impl Throttle {
    /// The message for the caller (Lambda's wording where it has one).
    pub fn message(&self) -> String {
        match self {
            Throttle::FunctionThrottled => {
                "Rate Exceeded. The function's reserved concurrency is 0 (throttled).".into()
            }
            Throttle::FunctionLimit(n) => format!(
                "Rate Exceeded. The function's reserved concurrency limit of {n} is reached."
            ),
            Throttle::UnreservedLimit(n) => {
                format!("Rate Exceeded. The account's unreserved concurrency of {n} is in use.")
            }
            Throttle::TenantLimit(n) => {
                format!("Rate Exceeded. The account's concurrency limit of {n} is reached.")
            }
        }
    }
}

/// Proof that an invocation was admitted; give it back to
/// [`Counting::release`] when the invocation ends.
#[derive(Debug, PartialEq, Eq)]
pub struct Admission {
    tenant: String,
    function: String,
    reserved: bool,
}

#[derive(Debug, Default)]
struct TenantCount {
    total: u32,
    unreserved: u32,
    /// Reservation per function, as last seen.
    reservations: HashMap<String, u32>,
    /// In flight per function.
    functions: HashMap<String, u32>,
}

impl TenantCount {
    fn reserved_sum(&self) -> u32 {
        self.reservations
            .values()
            .fold(0u32, |a, r| a.saturating_add(*r))
    }
}

/// In-flight counts per tenant and function, against each tenant's own limit.
#[derive(Debug)]
pub struct Counting {
    /// Concurrency limit per tenant id; a tenant not listed may run none.
    limits: HashMap<String, u32>,
    tenants: HashMap<String, TenantCount>,
}

impl Counting {
    /// Counting with each tenant's concurrency limit (tenant id → limit).
    pub fn new(limits: HashMap<String, u32>) -> Self {
        Counting {
            limits,
            tenants: HashMap::new(),
        }
    }

    /// The concurrency limit of `tenant` (0 for a tenant not configured).
    pub fn limit(&self, tenant: &str) -> u32 {
        self.limits.get(tenant).copied().unwrap_or(0)
    }

    /// Admits one invocation of `function` (whose reserved concurrency is
    /// `reserved`), or says why not.
    pub fn admit(
        &mut self,
        tenant: &str,
        function: &str,
        reserved: Option<u32>,
    ) -> Result<Admission, Throttle> {
        let limit = self.limit(tenant);
        let t = self.tenants.entry(tenant.to_string()).or_default();
        match reserved {
            Some(r) => {
                t.reservations.insert(function.to_string(), r);
            }
            None => {
                t.reservations.remove(function);
            }
        }
        let running = t.functions.get(function).copied().unwrap_or(0);
        let check = match reserved {
            Some(0) => Err(Throttle::FunctionThrottled),
            Some(r) if running >= r => Err(Throttle::FunctionLimit(r)),
            Some(_) => Ok(()),
            None => {
                let share = limit.saturating_sub(t.reserved_sum());
                if t.unreserved >= share {
                    Err(Throttle::UnreservedLimit(share))
                } else {
                    Ok(())
                }
            }
        };
        let check = check.and(if t.total >= limit {
            Err(Throttle::TenantLimit(limit))
        } else {
            Ok(())
        });
        if let Err(e) = check {
            self.drop_if_empty(tenant);
            return Err(e);
        }
        t.total += 1;
        if reserved.is_none() {
            t.unreserved += 1;
        }
        *t.functions.entry(function.to_string()).or_insert(0) += 1;
        Ok(Admission {
            tenant: tenant.to_string(),
            function: function.to_string(),
            reserved: reserved.is_some(),
        })
    }

    /// Ends an admitted invocation.
    pub fn release(&mut self, a: Admission) {
        if let Some(t) = self.tenants.get_mut(&a.tenant) {
            t.total = t.total.saturating_sub(1);
            if !a.reserved {
                t.unreserved = t.unreserved.saturating_sub(1);
            }
            if let Some(n) = t.functions.get_mut(&a.function) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    t.functions.remove(&a.function);
                }
            }
        }
        self.drop_if_empty(&a.tenant);
    }

    /// Forgets a function's reservation (it was deleted or reconfigured; the
    /// next invocation tells its new one).
    pub fn forget(&mut self, tenant: &str, function: &str) {
        if let Some(t) = self.tenants.get_mut(tenant) {
            t.reservations.remove(function);
        }
        self.drop_if_empty(tenant);
    }

    /// Invocations in flight for `tenant`.
    pub fn tenant_in_flight(&self, tenant: &str) -> u32 {
        self.tenants.get(tenant).map_or(0, |t| t.total)
    }

    /// Invocations in flight for `function` of `tenant`.
    pub fn function_in_flight(&self, tenant: &str, function: &str) -> u32 {
        self.tenants
            .get(tenant)
            .and_then(|t| t.functions.get(function).copied())
            .unwrap_or(0)
    }

    fn drop_if_empty(&mut self, tenant: &str) {
        if self
            .tenants
            .get(tenant)
            .is_some_and(|t| t.total == 0 && t.reservations.is_empty())
        {
            self.tenants.remove(tenant);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tenants `t` and `u`, both with `limit`.
    fn counting(limit: u32) -> Counting {
        Counting::new([("t".to_string(), limit), ("u".to_string(), limit)].into())
    }

    #[test]
    fn each_tenant_has_its_own_limit() {
        let mut c = Counting::new([("small".to_string(), 1), ("big".to_string(), 100)].into());
        let _a = c.admit("small", "f", None).unwrap();
        assert_eq!(
            c.admit("small", "f", None),
            Err(Throttle::UnreservedLimit(1))
        );
        for _ in 0..100 {
            c.admit("big", "f", None).unwrap();
        }
        assert_eq!(
            c.admit("big", "f", None),
            Err(Throttle::UnreservedLimit(100))
        );
        // A tenant nobody configured runs nothing.
        assert_eq!(
            c.admit("stranger", "f", None),
            Err(Throttle::UnreservedLimit(0))
        );
    }

    #[test]
    fn a_reservation_is_carved_from_its_own_tenant_only() {
        let mut c = Counting::new([("a".to_string(), 3), ("b".to_string(), 3)].into());
        let _r = c.admit("a", "reserved", Some(2)).unwrap();
        let _x = c.admit("a", "other", None).unwrap();
        assert_eq!(
            c.admit("a", "other", None),
            Err(Throttle::UnreservedLimit(1))
        );
        // b keeps its whole limit for unreserved functions.
        for _ in 0..3 {
            c.admit("b", "other", None).unwrap();
        }
        assert_eq!(
            c.admit("b", "other", None),
            Err(Throttle::UnreservedLimit(3))
        );
    }

    #[test]
    fn the_tenant_limit_caps_all_functions_together() {
        let mut c = counting(2);
        let a = c.admit("t", "f", None).unwrap();
        let _b = c.admit("t", "g", None).unwrap();
        assert_eq!(c.admit("t", "h", None), Err(Throttle::UnreservedLimit(2)));
        // Another tenant is not affected.
        assert!(c.admit("u", "f", None).is_ok());
        c.release(a);
        assert!(c.admit("t", "h", None).is_ok());
        assert_eq!(c.tenant_in_flight("t"), 2);
    }

    #[test]
    fn reserved_concurrency_caps_the_function() {
        let mut c = counting(10);
        let a = c.admit("t", "f", Some(1)).unwrap();
        assert_eq!(c.admit("t", "f", Some(1)), Err(Throttle::FunctionLimit(1)));
        c.release(a);
        assert!(c.admit("t", "f", Some(1)).is_ok());
    }

    #[test]
    fn zero_reserved_concurrency_throttles_everything() {
        let mut c = counting(10);
        assert_eq!(c.admit("t", "f", Some(0)), Err(Throttle::FunctionThrottled));
        assert_eq!(c.function_in_flight("t", "f"), 0);
    }

    #[test]
    fn a_reservation_is_set_aside_from_the_unreserved_share() {
        let mut c = counting(3);
        // f reserves 2: others share 1.
        let f1 = c.admit("t", "f", Some(2)).unwrap();
        let g1 = c.admit("t", "g", None).unwrap();
        assert_eq!(c.admit("t", "h", None), Err(Throttle::UnreservedLimit(1)));
        // f still gets its second even though g runs.
        let f2 = c.admit("t", "f", Some(2)).unwrap();
        assert_eq!(c.admit("t", "f", Some(2)), Err(Throttle::FunctionLimit(2)));
        c.release(f1);
        c.release(f2);
        c.release(g1);
        // Forgetting the reservation gives the share back.
        c.forget("t", "f");
        let _ = c.admit("t", "g", None).unwrap();
        let _ = c.admit("t", "h", None).unwrap();
        let _ = c.admit("t", "i", None).unwrap();
        assert_eq!(c.admit("t", "j", None), Err(Throttle::UnreservedLimit(3)));
    }

    #[test]
    fn reservations_over_the_limit_still_respect_the_tenant_total() {
        let mut c = counting(2);
        let _a = c.admit("t", "f", Some(5)).unwrap();
        let _b = c.admit("t", "f", Some(5)).unwrap();
        assert_eq!(c.admit("t", "f", Some(5)), Err(Throttle::TenantLimit(2)));
    }

    #[test]
    fn released_tenants_leave_no_state() {
        let mut c = counting(2);
        let a = c.admit("t", "f", None).unwrap();
        c.release(a);
        assert!(c.tenants.is_empty());
        assert_eq!(c.admit("t", "f", Some(0)), Err(Throttle::FunctionThrottled));
        c.forget("t", "f");
        assert!(c.tenants.is_empty());
    }
}
