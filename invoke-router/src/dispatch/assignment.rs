//! Assignment: which slot runs an invocation. Per pool (tenant, function,
//! revision) the warm idle slots; an invocation takes the most recently
//! used one, else a cold start if the host capacity allows, else it waits.
//! When capacity is short, idle slots of other pools are evicted (least
//! recently used first) to make room.
//!
//! This is the pure state machine: no I/O, time passed in. The dispatcher
//! (`mod.rs`) does what the decisions say and reports back.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::slot::{PoolKey, Slot, SlotId, SlotState};

/// vCPUs every VM gets.
pub const VCPUS_PER_SLOT: u32 = 1;

/// Host resources guests may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Guest memory in MiB (VM memory plus the VMM overhead per VM).
    pub mem_mib: u64,
    /// vCPUs.
    pub vcpus: u32,
}

/// What to do with an invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Run it on this warm slot (now `Busy`).
    Warm(SlotId),
    /// Boot this new slot (now `Starting`, its capacity taken) and run it there.
    Cold(SlotId),
    /// No slot and no room: stop these idle slots of other pools (now
    /// `Stopping`), then ask again when something changes.
    Wait {
        /// Slots to stop to make room.
        evict: Vec<SlotId>,
    },
    /// The function needs more than the whole host capacity.
    TooLarge,
}

/// What happens to a slot after an invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Back in its pool, warm.
    Idle,
    /// To be stopped (now `Stopping`).
    Stop,
}

/// Slots per state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlotCounts {
    /// Booting.
    pub starting: u32,
    /// Warm and free.
    pub idle: u32,
    /// Running an invocation.
    pub busy: u32,
    /// Being health-checked.
    pub checking: u32,
    /// Shutting down.
    pub stopping: u32,
}

/// The assignment state: every slot and the capacity they hold.
#[derive(Debug)]
pub struct Assignment {
    capacity: Capacity,
    used: Capacity,
    slots: BTreeMap<SlotId, Slot>,
    prefix: String,
    next: u64,
}

impl Assignment {
    /// No slots yet; new slot ids are `prefix` and a counter.
    pub fn new(capacity: Capacity, prefix: &str) -> Self {
        Assignment {
            capacity,
            used: Capacity {
                mem_mib: 0,
                vcpus: 0,
            },
            slots: BTreeMap::new(),
            prefix: prefix.to_string(),
            next: 1,
        }
    }

    /// Decides where an invocation of `pool` runs; `mem_mib` is what one of
    /// its VMs takes from the capacity.
    pub fn assign(&mut self, pool: &PoolKey, mem_mib: u64, now: Instant) -> Decision {
        let warm = self
            .slots
            .iter()
            .filter(|(_, s)| &s.pool == pool)
            .filter_map(|(id, s)| match s.state {
                SlotState::Idle { since } if !s.retiring => Some((since, id)),
                _ => None,
            })
            .max()
            .map(|(_, id)| id.clone());
        if let Some(id) = warm {
            if let Some(s) = self.slots.get_mut(&id) {
                s.state = SlotState::Busy;
                s.checked_at = now;
            }
            return Decision::Warm(id);
        }
        if mem_mib > self.capacity.mem_mib || VCPUS_PER_SLOT > self.capacity.vcpus {
            return Decision::TooLarge;
        }
        if self.fits(mem_mib, VCPUS_PER_SLOT) {
            let id = SlotId(format!("{}{}", self.prefix, self.next));
            self.next += 1;
            self.used.mem_mib += mem_mib;
            self.used.vcpus += VCPUS_PER_SLOT;
            self.slots.insert(
                id.clone(),
                Slot {
                    pool: pool.clone(),
                    state: SlotState::Starting,
                    mem_mib,
                    vcpus: VCPUS_PER_SLOT,
                    checked_at: now,
                    retiring: false,
                },
            );
            return Decision::Cold(id);
        }
        Decision::Wait {
            evict: self.evict_for(pool, mem_mib),
        }
    }

    fn fits(&self, mem_mib: u64, vcpus: u32) -> bool {
        self.used.mem_mib + mem_mib <= self.capacity.mem_mib
            && self.used.vcpus + vcpus <= self.capacity.vcpus
    }

    /// Marks least recently used idle slots of other pools `Stopping` until
    /// what is stopping would make room for `mem_mib`.
    fn evict_for(&mut self, pool: &PoolKey, mem_mib: u64) -> Vec<SlotId> {
        let (mut mem_free, mut cpu_free) = (
            self.capacity.mem_mib.saturating_sub(self.used.mem_mib),
            self.capacity.vcpus.saturating_sub(self.used.vcpus),
        );
        for s in self.slots.values() {
            if s.state == SlotState::Stopping {
                mem_free += s.mem_mib;
                cpu_free += s.vcpus;
            }
        }
        let mut idle: Vec<(Instant, SlotId)> = self
            .slots
            .iter()
            .filter(|(_, s)| &s.pool != pool)
            .filter_map(|(id, s)| match s.state {
                SlotState::Idle { since } => Some((since, id.clone())),
                _ => None,
            })
            .collect();
        idle.sort();
        let mut evict = Vec::new();
        for (_, id) in idle {
            if mem_free >= mem_mib && cpu_free >= VCPUS_PER_SLOT {
                break;
            }
            if let Some(s) = self.slots.get_mut(&id) {
                s.state = SlotState::Stopping;
                mem_free += s.mem_mib;
                cpu_free += s.vcpus;
                evict.push(id);
            }
        }
        evict
    }

    /// A cold start failed: the slot is gone and its capacity free.
    pub fn start_failed(&mut self, id: &SlotId) {
        self.remove(id);
    }

    /// A cold start succeeded and the slot runs its first invocation.
    pub fn started(&mut self, id: &SlotId) {
        if let Some(s) = self.slots.get_mut(id) {
            if s.state == SlotState::Starting {
                s.state = SlotState::Busy;
            }
        }
    }

    /// An invocation on `id` ended; `reusable` says whether the VM is fit
    /// for another (no timeout, no crash, the connection intact).
    pub fn finished(&mut self, id: &SlotId, reusable: bool, now: Instant) -> Disposition {
        let Some(s) = self.slots.get_mut(id) else {
            return Disposition::Stop;
        };
        if reusable && !s.retiring {
            s.state = SlotState::Idle { since: now };
            s.checked_at = now;
            Disposition::Idle
        } else {
            s.state = SlotState::Stopping;
            Disposition::Stop
        }
    }

    /// A stopping slot's VM is gone: its capacity is free.
    pub fn stopped(&mut self, id: &SlotId) {
        self.remove(id);
    }

    fn remove(&mut self, id: &SlotId) {
        if let Some(s) = self.slots.remove(id) {
            self.used.mem_mib = self.used.mem_mib.saturating_sub(s.mem_mib);
            self.used.vcpus = self.used.vcpus.saturating_sub(s.vcpus);
        }
    }

    /// Idle slots unused for `keep_alive`, now `Stopping`.
    pub fn reap(&mut self, now: Instant, keep_alive: Duration) -> Vec<SlotId> {
        let mut out = Vec::new();
        for (id, s) in self.slots.iter_mut() {
            if let SlotState::Idle { since } = s.state {
                if now.saturating_duration_since(since) >= keep_alive {
                    s.state = SlotState::Stopping;
                    out.push(id.clone());
                }
            }
        }
        out
    }

    /// Idle slots not checked for `interval`, now `Checking` (out of the
    /// pool until [`Assignment::checked`]).
    pub fn due_checks(&mut self, now: Instant, interval: Duration) -> Vec<SlotId> {
        let mut out = Vec::new();
        for (id, s) in self.slots.iter_mut() {
            if let SlotState::Idle { since } = s.state {
                if now.saturating_duration_since(s.checked_at) >= interval {
                    s.state = SlotState::Checking { since };
                    out.push(id.clone());
                }
            }
        }
        out
    }

    /// A health check of `id` ended. A healthy slot goes back to the pool
    /// idle since when it was before (a ping is not use, so it does not
    /// delay reaping); a sick or retired one stops.
    pub fn checked(&mut self, id: &SlotId, healthy: bool, now: Instant) -> Disposition {
        let Some(s) = self.slots.get_mut(id) else {
            return Disposition::Stop;
        };
        match s.state {
            SlotState::Checking { since } if healthy && !s.retiring => {
                s.state = SlotState::Idle { since };
                s.checked_at = now;
                Disposition::Idle
            }
            _ => {
                s.state = SlotState::Stopping;
                Disposition::Stop
            }
        }
    }

    /// Retires every slot of `tenant`'s `function` (all revisions): idle
    /// ones stop now (returned), the others when their work ends.
    pub fn retire(&mut self, tenant: &str, function: &str) -> Vec<SlotId> {
        self.retire_where(|p| p.tenant == tenant && p.function == function)
    }

    /// Retires every slot (shutdown).
    pub fn retire_all(&mut self) -> Vec<SlotId> {
        self.retire_where(|_| true)
    }

    fn retire_where(&mut self, matches: impl Fn(&PoolKey) -> bool) -> Vec<SlotId> {
        let mut out = Vec::new();
        for (id, s) in self.slots.iter_mut() {
            if !matches(&s.pool) {
                continue;
            }
            s.retiring = true;
            if let SlotState::Idle { .. } = s.state {
                s.state = SlotState::Stopping;
                out.push(id.clone());
            }
        }
        out
    }

    /// The slot, if it exists.
    pub fn slot(&self, id: &SlotId) -> Option<&Slot> {
        self.slots.get(id)
    }

    /// Slots per state.
    pub fn counts(&self) -> SlotCounts {
        let mut c = SlotCounts::default();
        for s in self.slots.values() {
            match s.state {
                SlotState::Starting => c.starting += 1,
                SlotState::Idle { .. } => c.idle += 1,
                SlotState::Busy => c.busy += 1,
                SlotState::Checking { .. } => c.checking += 1,
                SlotState::Stopping => c.stopping += 1,
            }
        }
        c
    }

    /// Capacity held by slots.
    pub fn used(&self) -> Capacity {
        self.used
    }

    /// The host capacity.
    pub fn capacity(&self) -> Capacity {
        self.capacity
    }

    /// Whether no slot exists.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

#[cfg(test)]
#[path = "assignment_tests.rs"]
mod tests;
