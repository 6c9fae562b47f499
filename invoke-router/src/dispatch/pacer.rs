//! How fast the router reads what an agent sends besides the answer it
//! waits for (log records, stale results, pongs). The guest is untrusted:
//! a flood of such frames must cost the router little CPU, whatever the
//! guest does. Past a burst, frames are taken at a steady byte rate; the
//! rest waits in the guest's own buffers (vsock credit), so a flooding
//! guest only delays its own answer, still bounded by its deadline.

use std::time::{Duration, Instant};

use ember_protocol::Message;

/// Bytes per second of discarded frames read from one agent.
pub const RATE_BYTES_PER_SEC: f64 = 4.0 * 1024.0 * 1024.0;
/// Bytes that may be read at once before the rate applies.
pub const BURST_BYTES: f64 = 4.0 * 1024.0 * 1024.0;
/// What a frame without a body is charged (its header and decoding).
const FRAME_COST: usize = 64;

/// A token bucket over bytes, filled at [`RATE_BYTES_PER_SEC`].
#[derive(Debug)]
pub struct Pacer {
    tokens: f64,
    last: Instant,
}

impl Pacer {
    /// A full bucket at `now`.
    pub fn new(now: Instant) -> Self {
        Pacer {
            tokens: BURST_BYTES,
            last: now,
        }
    }

    /// Charges `bytes` read at `now`; how long to wait before reading more.
    pub fn charge(&mut self, bytes: usize, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * RATE_BYTES_PER_SEC).min(BURST_BYTES);
        self.tokens -= bytes as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / RATE_BYTES_PER_SEC)
        }
    }
}

/// What reading `m` is charged: its variable-size bytes plus a frame.
pub fn cost(m: &Message) -> usize {
    FRAME_COST
        + match m {
            Message::Log(l) => l.data.len(),
            Message::Result(r) => r.payload.len() + r.log_tail.len(),
            _ => 0,
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn a_burst_is_free_then_the_rate_holds() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0);
        assert_eq!(p.charge(4 * MIB, t0), Duration::ZERO);
        // 8 MiB more at once: two seconds' worth of debt.
        let wait = p.charge(8 * MIB, t0);
        assert!((wait.as_secs_f64() - 2.0).abs() < 0.01, "{wait:?}");
        // Two seconds later the debt is paid and nothing is left over.
        let later = t0 + Duration::from_secs(2);
        let wait = p.charge(MIB, later);
        assert!((wait.as_secs_f64() - 0.25).abs() < 0.01, "{wait:?}");
    }

    #[test]
    fn a_quiet_agent_never_waits() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0);
        for i in 0..1000u64 {
            // 1 MiB/s of logs in 10 ms steps.
            let now = t0 + Duration::from_millis(10 * i);
            assert_eq!(p.charge(MIB / 100, now), Duration::ZERO);
        }
    }

    #[test]
    fn idle_time_refills_only_up_to_the_burst() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0);
        let hour = t0 + Duration::from_secs(3600);
        assert_eq!(p.charge(4 * MIB, hour), Duration::ZERO);
        assert!(p.charge(MIB, hour) > Duration::ZERO);
    }
}
