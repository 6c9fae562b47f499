//! The router's metrics, rendered in Prometheus' text format at `/metrics`:
//! API requests, invocations by outcome, cold vs warm starts, histograms of
//! queue wait, cold-start time and duration, slots by state, capacity in
//! use, and Event invocations. Hand-rolled: a few counters, gauges and
//! fixed-bucket histograms need no client library. Every label set is
//! bounded (operations and outcomes are fixed names).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Bucket bounds in seconds for invocation latencies (5 ms to 15 min).
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
];

/// A cumulative histogram with fixed buckets (seconds).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative; summed when rendered).
    counts: Vec<AtomicU64>,
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    /// An empty histogram with `bounds` (ascending, in seconds).
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|b| secs <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cumulative += c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// How an invocation ended, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum InvocationOutcome {
    /// The function returned a response.
    Success,
    /// The function reported an error.
    HandledError,
    /// The runtime failed.
    UnhandledError,
    /// The function ran out of time.
    Timeout,
    /// The runtime exited mid-invocation.
    RuntimeExit,
    /// Refused: over a concurrency limit or no capacity in time (429).
    Throttled,
    /// The VM or runtime broke (502).
    RuntimeFailed,
    /// The router could not run it (500).
    Unavailable,
}

impl InvocationOutcome {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            InvocationOutcome::Success => "success",
            InvocationOutcome::HandledError => "handled_error",
            InvocationOutcome::UnhandledError => "unhandled_error",
            InvocationOutcome::Timeout => "timeout",
            InvocationOutcome::RuntimeExit => "runtime_exit",
            InvocationOutcome::Throttled => "throttled",
            InvocationOutcome::RuntimeFailed => "runtime_failed",
            InvocationOutcome::Unavailable => "unavailable",
        }
    }
}

/// Slots per state, as last reported by the dispatcher.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlotGauges {
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

/// Capacity in use and in total.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapacityGauges {
    /// Memory held by VMs (MiB).
    pub used_mem_mib: u64,
    /// Memory guests may use (MiB).
    pub total_mem_mib: u64,
    /// vCPUs held by VMs.
    pub used_vcpus: u32,
    /// vCPUs guests may use.
    pub total_vcpus: u32,
}

/// All of the router's metrics.
#[derive(Debug)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    invocations: Mutex<BTreeMap<InvocationOutcome, u64>>,
    cold_starts: AtomicU64,
    warm_starts: AtomicU64,
    cold_start_failures: AtomicU64,
    events: Mutex<BTreeMap<&'static str, u64>>,
    slots: Mutex<SlotGauges>,
    capacity: Mutex<CapacityGauges>,
    /// Time from an invocation's arrival to getting a slot.
    pub queue_wait: Histogram,
    /// Time to boot a VM to a configured agent.
    pub cold_start: Histogram,
    /// Invocation duration as measured by the agent.
    pub duration: Histogram,
}

/// The longest operation label kept; longer ones are cut (labels come from
/// the API's own route names, so this is only a guard).
const MAX_OPERATION_LEN: usize = 64;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// No observations yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Metrics {
            requests: Mutex::new(BTreeMap::new()),
            invocations: Mutex::new(BTreeMap::new()),
            cold_starts: AtomicU64::new(0),
            warm_starts: AtomicU64::new(0),
            cold_start_failures: AtomicU64::new(0),
            events: Mutex::new(BTreeMap::new()),
            slots: Mutex::new(SlotGauges::default()),
            capacity: Mutex::new(CapacityGauges::default()),
            queue_wait: Histogram::new(LATENCY_BUCKETS),
            cold_start: Histogram::new(LATENCY_BUCKETS),
            duration: Histogram::new(LATENCY_BUCKETS),
        })
    }

    /// Counts one API request by operation and HTTP status.
    pub fn record_request(&self, operation: &str, status: u16) {
        let op: String = operation.chars().take(MAX_OPERATION_LEN).collect();
        *lock(&self.requests).entry((op, status)).or_insert(0) += 1;
    }

    /// Counts one invocation by outcome.
    pub fn record_invocation(&self, outcome: InvocationOutcome) {
        *lock(&self.invocations).entry(outcome).or_insert(0) += 1;
    }

    /// Invocations counted with `outcome`.
    pub fn invocations(&self, outcome: InvocationOutcome) -> u64 {
        lock(&self.invocations).get(&outcome).copied().unwrap_or(0)
    }

    /// Counts a start on a slot: cold (a new VM) or warm.
    pub fn record_start(&self, cold: bool) {
        let c = if cold {
            &self.cold_starts
        } else {
            &self.warm_starts
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a cold start that failed.
    pub fn record_cold_start_failure(&self) {
        self.cold_start_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Cold and warm starts so far.
    pub fn starts(&self) -> (u64, u64) {
        (
            self.cold_starts.load(Ordering::Relaxed),
            self.warm_starts.load(Ordering::Relaxed),
        )
    }

    /// Counts an Event-invocation transition (`queued`, `attempt`,
    /// `succeeded`, `failed`, `throttled`).
    pub fn record_event(&self, what: &'static str) {
        *lock(&self.events).entry(what).or_insert(0) += 1;
    }

    /// Replaces the slots-by-state gauges.
    pub fn set_slots(&self, s: SlotGauges) {
        *lock(&self.slots) = s;
    }

    /// Slots by state, as last set.
    pub fn slots(&self) -> SlotGauges {
        *lock(&self.slots)
    }

    /// Replaces the capacity gauges.
    pub fn set_capacity(&self, c: CapacityGauges) {
        *lock(&self.capacity) = c;
    }

    /// Capacity, as last set.
    pub fn capacity(&self) -> CapacityGauges {
        *lock(&self.capacity)
    }

    /// Everything, in Prometheus' text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let o = &mut out;
        header(
            o,
            "ember_api_requests_total",
            "API requests by operation and HTTP status.",
            "counter",
        );
        for ((op, status), n) in lock(&self.requests).iter() {
            let _ = writeln!(
                o,
                "ember_api_requests_total{{operation=\"{}\",status=\"{status}\"}} {n}",
                escape(op)
            );
        }
        header(
            o,
            "ember_invocations_total",
            "Invocations by outcome.",
            "counter",
        );
        {
            let inv = lock(&self.invocations);
            for outcome in [
                InvocationOutcome::Success,
                InvocationOutcome::HandledError,
                InvocationOutcome::UnhandledError,
                InvocationOutcome::Timeout,
                InvocationOutcome::RuntimeExit,
                InvocationOutcome::Throttled,
                InvocationOutcome::RuntimeFailed,
                InvocationOutcome::Unavailable,
            ] {
                let n = inv.get(&outcome).copied().unwrap_or(0);
                let _ = writeln!(
                    o,
                    "ember_invocations_total{{outcome=\"{}\"}} {n}",
                    outcome.label()
                );
            }
        }
        header(
            o,
            "ember_slot_starts_total",
            "Invocations by start kind: cold (new VM) or warm.",
            "counter",
        );
        let (cold, warm) = self.starts();
        let _ = writeln!(o, "ember_slot_starts_total{{start=\"cold\"}} {cold}");
        let _ = writeln!(o, "ember_slot_starts_total{{start=\"warm\"}} {warm}");
        header(
            o,
            "ember_cold_start_failures_total",
            "Cold starts that failed.",
            "counter",
        );
        let _ = writeln!(
            o,
            "ember_cold_start_failures_total {}",
            self.cold_start_failures.load(Ordering::Relaxed)
        );
        self.queue_wait.render(
            o,
            "ember_queue_wait_seconds",
            "Time from an invocation's arrival to getting a slot.",
        );
        self.cold_start.render(
            o,
            "ember_cold_start_seconds",
            "Time to boot a VM and configure its agent.",
        );
        self.duration.render(
            o,
            "ember_invocation_duration_seconds",
            "Invocation duration measured by the guest agent.",
        );
        header(o, "ember_slots", "Slots (VMs) by state.", "gauge");
        let s = self.slots();
        for (state, n) in [
            ("starting", s.starting),
            ("idle", s.idle),
            ("busy", s.busy),
            ("checking", s.checking),
            ("stopping", s.stopping),
        ] {
            let _ = writeln!(o, "ember_slots{{state=\"{state}\"}} {n}");
        }
        let c = self.capacity();
        header(
            o,
            "ember_capacity_memory_mib",
            "Guest memory in MiB: in use by VMs, and the total.",
            "gauge",
        );
        let _ = writeln!(
            o,
            "ember_capacity_memory_mib{{kind=\"used\"}} {}",
            c.used_mem_mib
        );
        let _ = writeln!(
            o,
            "ember_capacity_memory_mib{{kind=\"total\"}} {}",
            c.total_mem_mib
        );
        header(
            o,
            "ember_capacity_vcpus",
            "Guest vCPUs: in use by VMs, and the total.",
            "gauge",
        );
        let _ = writeln!(o, "ember_capacity_vcpus{{kind=\"used\"}} {}", c.used_vcpus);
        let _ = writeln!(
            o,
            "ember_capacity_vcpus{{kind=\"total\"}} {}",
            c.total_vcpus
        );
        header(
            o,
            "ember_events_total",
            "Event invocations by transition.",
            "counter",
        );
        for (what, n) in lock(&self.events).iter() {
            let _ = writeln!(o, "ember_events_total{{transition=\"{what}\"}} {n}");
        }
        out
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_with_sum_and_count() {
        let m = Metrics::new();
        m.duration.observe(Duration::from_millis(3));
        m.duration.observe(Duration::from_millis(40));
        m.duration.observe(Duration::from_secs(2000));
        let text = m.render();
        assert!(text.contains("# TYPE ember_invocation_duration_seconds histogram"));
        assert!(text.contains("ember_invocation_duration_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("ember_invocation_duration_seconds_bucket{le=\"0.05\"} 2\n"));
        assert!(text.contains("ember_invocation_duration_seconds_bucket{le=\"900\"} 2\n"));
        assert!(text.contains("ember_invocation_duration_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("ember_invocation_duration_seconds_count 3\n"));
        assert!(text.contains("ember_invocation_duration_seconds_sum 2000.043\n"));
    }

    #[test]
    fn counters_and_gauges_render_with_labels() {
        let m = Metrics::new();
        m.record_request("Invoke", 200);
        m.record_request("Invoke", 200);
        m.record_request("Get\"Fn\n", 404);
        m.record_invocation(InvocationOutcome::Throttled);
        m.record_start(true);
        m.record_start(false);
        m.record_start(false);
        m.record_event("queued");
        m.set_slots(SlotGauges {
            idle: 2,
            busy: 1,
            ..Default::default()
        });
        m.set_capacity(CapacityGauges {
            used_mem_mib: 384,
            total_mem_mib: 4096,
            used_vcpus: 3,
            total_vcpus: 4,
        });
        let text = m.render();
        for line in [
            "ember_api_requests_total{operation=\"Invoke\",status=\"200\"} 2",
            "ember_api_requests_total{operation=\"Get\\\"Fn\\n\",status=\"404\"} 1",
            "ember_invocations_total{outcome=\"throttled\"} 1",
            "ember_invocations_total{outcome=\"success\"} 0",
            "ember_slot_starts_total{start=\"cold\"} 1",
            "ember_slot_starts_total{start=\"warm\"} 2",
            "ember_slots{state=\"idle\"} 2",
            "ember_slots{state=\"busy\"} 1",
            "ember_capacity_memory_mib{kind=\"used\"} 384",
            "ember_capacity_vcpus{kind=\"total\"} 4",
            "ember_events_total{transition=\"queued\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // Every sample line is `name{labels} value` or `name value`.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let value = l.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{l}");
        }
    }
}
