//! Counters of guest-caused device errors and of the limits that fired.
//!
//! Each error a guest can cause at will (a bad register access, a malformed
//! chain, a refused connection) bumps a counter here instead of writing a
//! log line of its own; the messages that remain go through the logger's
//! rate limit. One VMM runs one VM, so the counters are process-wide. The
//! VMM logs [`summary`] once when it exits (see `Vmm::run`).

use std::sync::atomic::{AtomicU64, Ordering};

/// One counter.
#[derive(Debug)]
pub struct Counter {
    name: &'static str,
    value: AtomicU64,
}

impl Counter {
    const fn new(name: &'static str) -> Self {
        Self {
            name,
            value: AtomicU64::new(0),
        }
    }

    /// Adds one.
    pub fn inc(&self) {
        self.value.fetch_add(1, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }

    /// The name used in the summary.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

/// Register accesses the transport refused (unknown offset, bad width,
/// queue registers outside setup or of a missing queue, read-only config).
pub static MMIO_BAD_ACCESS: Counter = Counter::new("mmio_bad_access");
/// Status writes refused (bits cleared without reset, bad features,
/// DRIVER_OK before FEATURES_OK or with an invalid queue, failed activation).
pub static MMIO_BAD_STATUS: Counter = Counter::new("mmio_bad_status");
/// Driver resets (status 0) of an activated device.
pub static MMIO_RESETS: Counter = Counter::new("mmio_resets");
/// Queues found corrupt (runaway avail index, bad ring address): the device stops.
pub static QUEUE_BROKEN: Counter = Counter::new("queue_broken");
/// Times a queue's work budget for one notification ran out and the rest
/// was put back behind the other event sources.
pub static QUEUE_YIELDS: Counter = Counter::new("queue_yields");
/// Block requests refused or failed (bad chains, ranges, directions).
pub static BLOCK_BAD_REQUEST: Counter = Counter::new("block_bad_request");
/// Vsock chains that could not be parsed or filled.
pub static VSOCK_BAD_CHAIN: Counter = Counter::new("vsock_bad_chain");
/// Vsock packets dropped or reset for their header (spoofed or wrong CIDs,
/// unknown type or op, a packet for no connection).
pub static VSOCK_BAD_PACKET: Counter = Counter::new("vsock_bad_packet");
/// Guest-initiated connections refused: host port not allowed, no socket
/// there, or the connection limit.
pub static VSOCK_REFUSED_CONNECT: Counter = Counter::new("vsock_refused_connect");
/// Connections reset for breaking the protocol or their deadline.
pub static VSOCK_RESETS: Counter = Counter::new("vsock_resets");
/// RSTs dropped because the guest did not take the ones queued.
pub static VSOCK_RST_DROPPED: Counter = Counter::new("vsock_rst_dropped");

/// Every counter, in summary order.
pub static ALL: [&Counter; 11] = [
    &MMIO_BAD_ACCESS,
    &MMIO_BAD_STATUS,
    &MMIO_RESETS,
    &QUEUE_BROKEN,
    &QUEUE_YIELDS,
    &BLOCK_BAD_REQUEST,
    &VSOCK_BAD_CHAIN,
    &VSOCK_BAD_PACKET,
    &VSOCK_REFUSED_CONNECT,
    &VSOCK_RESETS,
    &VSOCK_RST_DROPPED,
];

/// `name=value` for every counter that is not zero, plus the log lines the
/// rate limit suppressed; `None` when all are zero.
pub fn summary() -> Option<String> {
    let mut parts: Vec<String> = ALL
        .iter()
        .filter(|c| c.get() > 0)
        .map(|c| format!("{}={}", c.name(), c.get()))
        .collect();
    let suppressed = crate::logger::suppressed_total();
    if suppressed > 0 {
        parts.push(format!("log_lines_suppressed={suppressed}"));
    }
    (!parts.is_empty()).then(|| parts.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_names_nonzero_counters() {
        VSOCK_RST_DROPPED.inc();
        let s = summary().expect("a counter is set");
        assert!(s.contains("vsock_rst_dropped="), "{s}");
        let names: std::collections::HashSet<_> = ALL.iter().map(|c| c.name()).collect();
        assert_eq!(names.len(), ALL.len(), "counter names must be unique");
    }
}
