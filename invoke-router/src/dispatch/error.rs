//! Why an invocation did not run to a result, with the cause kept: the
//! API maps each to Lambda's error by its [`ErrorClass`], the event queue
//! tells throttling and shutdown apart by the variant.

use std::time::Duration;

use ember_protocol::EncodeError;

use super::agent_conn::ConnError;
use super::counting::Throttle;
use super::placement::PlacementError;

/// How a caller should see a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Over a limit or out of capacity: try later (429).
    TooManyRequests,
    /// The VM or the function's runtime broke (502).
    RuntimeFailed,
    /// The router cannot run it now (500).
    Unavailable,
}

/// Why an invocation did not run to a result.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// Over a concurrency limit (refused at once).
    #[error("{}", .0.message())]
    Throttled(Throttle),
    /// No slot or capacity became free within the queue wait.
    #[error("Rate Exceeded. No VM slot or host capacity became free within {} ms.", .0.as_millis())]
    NoSlot(Duration),
    /// The function's VM is larger than the whole host capacity.
    #[error(
        "the function's VM needs {needs_mib} MiB and 1 vCPU; the host capacity is {capacity_mib} MiB and {capacity_vcpus} vCPUs"
    )]
    TooLarge {
        /// What one VM of the function takes.
        needs_mib: u64,
        /// The host's memory capacity.
        capacity_mib: u64,
        /// The host's vCPU capacity.
        capacity_vcpus: u32,
    },
    /// The router is shutting down and takes no new work.
    #[error("the router is shutting down")]
    ShuttingDown,
    /// The router shut down before the invocation finished.
    #[error("the router shut down before the invocation finished")]
    Aborted,
    /// The cold start failed.
    #[error(transparent)]
    Placement(#[from] PlacementError),
    /// The VM failed during the invocation (it is stopped).
    #[error("the VM failed during the invocation: {0}")]
    Vm(#[source] ConnError),
    /// The invocation cannot be encoded; nothing was sent.
    #[error("cannot send the invocation: {0}")]
    Encode(#[source] EncodeError),
    /// The invocation's task failed inside the router.
    #[error("the invocation failed inside the router: {0}")]
    Internal(#[source] tokio::task::JoinError),
}

impl DispatchError {
    /// How the caller should see it.
    pub fn class(&self) -> ErrorClass {
        match self {
            DispatchError::Throttled(_) | DispatchError::NoSlot(_) => ErrorClass::TooManyRequests,
            DispatchError::Placement(PlacementError::Host(_)) => ErrorClass::Unavailable,
            DispatchError::Placement(_) | DispatchError::Vm(_) => ErrorClass::RuntimeFailed,
            DispatchError::TooLarge { .. }
            | DispatchError::ShuttingDown
            | DispatchError::Aborted
            | DispatchError::Encode(_)
            | DispatchError::Internal(_) => ErrorClass::Unavailable,
        }
    }

    /// Whether it comes from the router stopping (the work may run again
    /// after a restart).
    pub fn is_shutdown(&self) -> bool {
        matches!(self, DispatchError::ShuttingDown | DispatchError::Aborted)
    }
}
