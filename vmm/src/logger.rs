//! A small stderr logger (`ember-vmm: LEVEL message`) and the rate limit
//! for messages a guest can cause.
//!
//! A hostile guest can hit a device error path millions of times; each
//! such message goes through [`warn_limited!`] / [`error_limited!`]: a token
//! bucket per call site lets [`BURST`] lines through, then one per
//! [`REFILL`]; the next line let through says how many were suppressed in
//! between. Messages of other crates (rust-vmm's virtio-queue logs some
//! guest-caused errors itself) get the same limit per call site in the
//! logger. The errors themselves are counted in
//! [`crate::devices::counters`], which the VMM logs as one summary line
//! when it exits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use log::{LevelFilter, Log, Metadata, Record};

/// Lines one call site may log at once.
pub const BURST: u32 = 5;
/// After the burst, one more line per call site per this interval.
pub const REFILL: Duration = Duration::from_secs(10);

/// Lines suppressed by every rate limit since the VMM started.
static SUPPRESSED: AtomicU64 = AtomicU64::new(0);

struct StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        // rust-vmm crates log guest-caused errors themselves (an invalid
        // queue size, a ring out of memory): limit them per call site too.
        if !record.target().starts_with("ember_vmm") {
            let site = foreign_site(record.file().unwrap_or(""), record.line().unwrap_or(0));
            match FOREIGN[site].admit(Instant::now()) {
                None => return,
                Some(0) => {}
                Some(n) => {
                    eprintln!(
                        "ember-vmm: {} {} ({n} more like this suppressed)",
                        record.level(),
                        record.args()
                    );
                    return;
                }
            }
        }
        eprintln!("ember-vmm: {} {}", record.level(), record.args());
    }

    fn flush(&self) {}
}

/// Buckets for messages of other crates, shared by call sites that hash alike.
const FOREIGN_SITES: usize = 64;
static FOREIGN: [RateLimit; FOREIGN_SITES] = [const { RateLimit::new() }; FOREIGN_SITES];

fn foreign_site(file: &str, line: u32) -> usize {
    // FNV-1a: small, stable, no allocation.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in file.bytes().chain(line.to_le_bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    (h % FOREIGN_SITES as u64) as usize
}

/// Logs to stderr from `level` up; a second call changes nothing.
pub fn init(level: LevelFilter) {
    if log::set_logger(&StderrLogger).is_ok() {
        log::set_max_level(level);
    }
}

/// Lines suppressed by rate limits so far (all call sites).
pub fn suppressed_total() -> u64 {
    SUPPRESSED.load(Ordering::Relaxed)
}

#[derive(Debug)]
struct Bucket {
    tokens: u32,
    refilled: Option<Instant>,
    suppressed: u64,
}

/// One call site's token bucket (see the module doc).
#[derive(Debug)]
pub struct RateLimit {
    bucket: Mutex<Bucket>,
}

impl RateLimit {
    /// A full bucket.
    pub const fn new() -> Self {
        Self {
            bucket: Mutex::new(Bucket {
                tokens: BURST,
                refilled: None,
                suppressed: 0,
            }),
        }
    }

    /// Whether a line may be logged at `now`: `Some(n)` with the number of
    /// lines suppressed since the last one let through, or `None` (counted
    /// as suppressed).
    pub fn admit(&self, now: Instant) -> Option<u64> {
        let mut b = crate::devices::bus::lock(&self.bucket);
        let since = *b.refilled.get_or_insert(now);
        let earned = now.saturating_duration_since(since).as_nanos() / REFILL.as_nanos();
        if earned > 0 {
            let earned = u32::try_from(earned).unwrap_or(u32::MAX);
            b.tokens = b.tokens.saturating_add(earned).min(BURST);
            b.refilled = Some(since + REFILL * earned.min(1 << 20));
        }
        if b.tokens == 0 {
            b.suppressed += 1;
            SUPPRESSED.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        b.tokens -= 1;
        Some(std::mem::take(&mut b.suppressed))
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        Self::new()
    }
}

/// Logs at `level` through a rate limit of its own call site.
#[macro_export]
macro_rules! log_limited {
    ($level:expr, $($arg:tt)+) => {{
        static LIMIT: $crate::logger::RateLimit = $crate::logger::RateLimit::new();
        if log::log_enabled!($level) {
            if let Some(n) = LIMIT.admit(std::time::Instant::now()) {
                if n == 0 {
                    log::log!($level, $($arg)+);
                } else {
                    log::log!($level, "{} ({n} more like this suppressed)", format_args!($($arg)+));
                }
            }
        }
    }};
}

/// `log::warn!` for messages a guest can cause, rate-limited per call site.
#[macro_export]
macro_rules! warn_limited {
    ($($arg:tt)+) => { $crate::log_limited!(log::Level::Warn, $($arg)+) };
}

/// `log::error!` for messages a guest can cause, rate-limited per call site.
#[macro_export]
macro_rules! error_limited {
    ($($arg:tt)+) => { $crate::log_limited!(log::Level::Error, $($arg)+) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_one_line_per_refill_with_the_suppressed_count() {
        let limit = RateLimit::new();
        let t0 = Instant::now();
        for _ in 0..BURST {
            assert_eq!(limit.admit(t0), Some(0));
        }
        for _ in 0..1000 {
            assert_eq!(limit.admit(t0 + Duration::from_millis(1)), None);
        }
        assert_eq!(limit.admit(t0 + REFILL / 2), None);
        assert_eq!(limit.admit(t0 + REFILL), Some(1001));
        assert_eq!(limit.admit(t0 + REFILL), None);
        // A long quiet spell refills the burst, never more.
        let later = t0 + REFILL * 100;
        for _ in 0..BURST {
            assert!(limit.admit(later).is_some());
        }
        assert_eq!(limit.admit(later), None);
    }

    #[test]
    fn a_million_admissions_let_few_lines_through() {
        let limit = RateLimit::new();
        let t0 = Instant::now();
        // A storm of a million bad accesses over 60 s.
        let through = (0..1_000_000u64)
            .filter(|i| limit.admit(t0 + Duration::from_micros(i * 60)).is_some())
            .count();
        assert!(through <= BURST as usize + 6, "{through} lines let through");
    }
}
