//! Fair picking of due events: one queue per tenant, served round-robin,
//! each tenant holding at most `per_tenant` of the `workers`. One tenant's
//! backlog therefore never takes every worker, and a tenant with a due
//! event gets the next free worker before a tenant that just had one.
//! Pure bookkeeping (no I/O; time passed in).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

#[derive(Debug, Default)]
struct TenantQueue {
    /// Queued events by due time.
    due: BTreeSet<(u64, String)>,
    /// Attempts running now.
    running: usize,
}

/// Per-tenant queues of events waiting for an attempt.
#[derive(Debug, Default)]
pub(super) struct FairQueue {
    tenants: BTreeMap<String, TenantQueue>,
    /// The tenant served last; the next round starts after it.
    cursor: Option<String>,
    running: usize,
    queued: usize,
}

impl FairQueue {
    /// Queues event `id` of `tenant`, due at `due_ms`.
    pub(super) fn push(&mut self, tenant: &str, due_ms: u64, id: String) {
        let t = self.tenants.entry(tenant.to_string()).or_default();
        if t.due.insert((due_ms, id)) {
            self.queued += 1;
        }
    }

    /// Events queued, all tenants.
    #[cfg(test)]
    pub(super) fn queued(&self) -> usize {
        self.queued
    }

    /// Events queued or running, all tenants.
    pub(super) fn pending(&self) -> usize {
        self.queued + self.running
    }

    /// Events of `tenant` queued or running.
    pub(super) fn pending_of(&self, tenant: &str) -> usize {
        self.tenants
            .get(tenant)
            .map_or(0, |t| t.due.len() + t.running)
    }

    /// Forgets every queued event (tests).
    #[cfg(test)]
    pub(super) fn clear(&mut self) {
        for t in self.tenants.values_mut() {
            t.due.clear();
        }
        self.queued = 0;
        self.tenants.retain(|_, t| t.running > 0);
    }

    /// The ids queued now (tests).
    #[cfg(test)]
    pub(super) fn queued_ids(&self) -> Vec<String> {
        self.tenants
            .values()
            .flat_map(|t| t.due.iter().map(|(_, id)| id.clone()))
            .collect()
    }

    /// Tenants in round-robin order, starting after the cursor.
    fn order(&self) -> Vec<String> {
        let after = match &self.cursor {
            Some(c) => self
                .tenants
                .range::<String, _>((Bound::Excluded(c), Bound::Unbounded))
                .chain(
                    self.tenants
                        .range::<String, _>((Bound::Unbounded, Bound::Included(c))),
                )
                .map(|(k, _)| k.clone())
                .collect(),
            None => self.tenants.keys().cloned().collect(),
        };
        after
    }

    /// The next event to attempt, if a worker is free and some tenant
    /// under its cap has one due by `now_ms`: (tenant, id). It counts as
    /// running until [`FairQueue::finished`].
    pub(super) fn pop_ready(
        &mut self,
        now_ms: u64,
        workers: usize,
        per_tenant: usize,
    ) -> Option<(String, String)> {
        if self.running >= workers {
            return None;
        }
        for tenant in self.order() {
            let Some(t) = self.tenants.get_mut(&tenant) else {
                continue;
            };
            if t.running >= per_tenant {
                continue;
            }
            let due_now = t.due.first().is_some_and(|(due, _)| *due <= now_ms);
            if !due_now {
                continue;
            }
            let Some((_, id)) = t.due.pop_first() else {
                continue;
            };
            t.running += 1;
            self.running += 1;
            self.queued -= 1;
            self.cursor = Some(tenant.clone());
            return Some((tenant, id));
        }
        None
    }

    /// An attempt of `tenant` ended.
    pub(super) fn finished(&mut self, tenant: &str) {
        if let Some(t) = self.tenants.get_mut(tenant) {
            if t.running > 0 {
                t.running -= 1;
                self.running -= 1;
            }
            if t.running == 0 && t.due.is_empty() {
                self.tenants.remove(tenant);
            }
        }
    }

    /// The earliest due time among tenants that could run one now (None:
    /// nothing queued, or every worker busy).
    pub(super) fn next_due(&self, workers: usize, per_tenant: usize) -> Option<u64> {
        if self.running >= workers {
            return None;
        }
        self.tenants
            .values()
            .filter(|t| t.running < per_tenant)
            .filter_map(|t| t.due.first().map(|(d, _)| *d))
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backlog_does_not_take_every_worker_and_tenants_alternate() {
        let mut q = FairQueue::default();
        for i in 0..1000 {
            q.push("big", 0, format!("b{i:04}"));
        }
        // Two of three workers at most for "big".
        assert_eq!(q.pop_ready(0, 3, 2).unwrap().0, "big");
        assert_eq!(q.pop_ready(0, 3, 2).unwrap().0, "big");
        assert_eq!(q.pop_ready(0, 3, 2), None);
        // "small" arrives later and gets the free worker at once.
        q.push("small", 5, "s1".into());
        assert_eq!(q.next_due(3, 2), Some(5));
        assert_eq!(q.pop_ready(5, 3, 2), Some(("small".into(), "s1".into())));
        assert_eq!(q.pending_of("big"), 1000);
        assert_eq!(q.pending_of("small"), 1);
        // Every worker busy: nothing, and no wake-up time.
        assert_eq!(q.next_due(3, 2), None);
        q.finished("big");
        q.push("small", 5, "s2".into());
        // Round-robin: after "small" came "big"... the cursor is at small,
        // so big is next; then small again.
        q.finished("small");
        assert_eq!(q.pop_ready(5, 3, 2).unwrap().0, "big");
        assert_eq!(q.pop_ready(5, 3, 2).unwrap().0, "small");
        assert_eq!(q.pending(), 1000);
    }

    #[test]
    fn events_not_yet_due_wait() {
        let mut q = FairQueue::default();
        q.push("t", 100, "later".into());
        assert_eq!(q.pop_ready(99, 4, 4), None);
        assert_eq!(q.next_due(4, 4), Some(100));
        assert_eq!(q.pop_ready(100, 4, 4).unwrap().1, "later");
        q.finished("t");
        assert_eq!(q.pending(), 0);
        assert!(q.tenants.is_empty());
    }
}
