//! Slots: one microVM each, and the pool a slot belongs to. A slot serves
//! exactly one (tenant, function, revision) for its whole life, and one
//! invocation at a time.

use std::fmt;
use std::time::Instant;

/// Identifies one slot (one VM) for the life of the router process; also
/// the name of the slot's directory under the run dir.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotId(pub String);

impl fmt::Display for SlotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The pool a slot belongs to: a VM is never reused across tenants,
/// functions or revisions, so all three name the pool.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolKey {
    /// The tenant owning the function.
    pub tenant: String,
    /// The function's name, unique within its tenant.
    pub function: String,
    /// The function's revision (code and configuration).
    pub revision: String,
}

/// Where a slot is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// The VM is booting and its agent being configured (a cold start).
    Starting,
    /// Running an invocation.
    Busy,
    /// Warm and free; `since` is when it last finished work.
    Idle {
        /// When it became idle.
        since: Instant,
    },
    /// Idle, but out of the pool while a health ping is in flight.
    Checking {
        /// When it became idle (a ping is not use).
        since: Instant,
    },
    /// Being shut down; it still holds its capacity until it is gone.
    Stopping,
}

impl SlotState {
    /// The state's name in metrics.
    pub fn label(&self) -> &'static str {
        match self {
            SlotState::Starting => "starting",
            SlotState::Busy => "busy",
            SlotState::Idle { .. } => "idle",
            SlotState::Checking { .. } => "checking",
            SlotState::Stopping => "stopping",
        }
    }
}

/// What the assignment state machine knows about a slot.
#[derive(Debug, Clone)]
pub struct Slot {
    /// Its pool.
    pub pool: PoolKey,
    /// Its state.
    pub state: SlotState,
    /// Guest memory it holds against the host capacity (MiB).
    pub mem_mib: u64,
    /// vCPUs it holds against the host capacity.
    pub vcpus: u32,
    /// When its last health check (or its last work) happened.
    pub checked_at: Instant,
    /// Set when its function was retired while it was busy or starting:
    /// it stops instead of going back to the pool.
    pub retiring: bool,
}
