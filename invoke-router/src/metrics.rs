//! Prometheus metrics.
//!
//! STAND-IN (API branch): only the calls the API makes; replaced at merge.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// The router's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
}

impl Metrics {
    /// Empty metrics.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Counts one API request by operation and status code.
    pub fn record_request(&self, operation: &str, status: u16) {
        if let Ok(mut map) = self.requests.lock() {
            *map.entry((operation.to_string(), status)).or_default() += 1;
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::from("# TYPE ember_api_requests_total counter\n");
        if let Ok(map) = self.requests.lock() {
            for ((op, status), n) in map.iter() {
                out.push_str(&format!(
                    "ember_api_requests_total{{operation=\"{op}\",status=\"{status}\"}} {n}\n"
                ));
            }
        }
        out
    }
}
