//! Durable queue of Event invocations.
//!
//! STAND-IN (API branch): only the shared interface; replaced at merge.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use ember_protocol::InvokeResult;

use crate::dispatch::{Dispatcher, FunctionSpec};

/// Looks up the current spec of (tenant, function); None when it is gone.
pub type Resolver = Arc<dyn Fn(&str, &str) -> Option<Arc<FunctionSpec>> + Send + Sync>;

/// Where an event is in its life.
#[derive(Debug, Clone)]
pub enum EventStatus {
    /// Recorded, not started.
    Queued,
    /// Running its `attempt`th try.
    Running {
        /// 1-based attempt number.
        attempt: u32,
    },
    /// Ran to a result.
    Succeeded,
    /// Gave up.
    Failed {
        /// How many tries ran.
        attempts: u32,
        /// The last error.
        error: String,
    },
}

/// One event invocation and its outcome.
#[derive(Debug, Clone)]
pub struct EventRecord {
    /// The invocation's request id.
    pub request_id: String,
    /// The owning tenant.
    pub tenant: String,
    /// The function's name.
    pub function: String,
    /// Where it is.
    pub status: EventStatus,
    /// The last result, if any ran.
    pub result: Option<InvokeResult>,
}

/// The queue (stand-in: in memory, never runs anything).
#[derive(Default)]
pub struct EventQueue {
    records: Mutex<HashMap<String, EventRecord>>,
}

impl EventQueue {
    /// Opens (or creates) the queue in `data_dir`.
    pub fn open(_data_dir: &Path) -> Result<Arc<Self>, std::io::Error> {
        Ok(Arc::new(Self::default()))
    }

    /// Durably records the event, then returns.
    pub fn enqueue(
        &self,
        tenant: &str,
        function: &str,
        request_id: &str,
        _payload: &[u8],
    ) -> Result<(), std::io::Error> {
        let record = EventRecord {
            request_id: request_id.to_string(),
            tenant: tenant.to_string(),
            function: function.to_string(),
            status: EventStatus::Queued,
            result: None,
        };
        self.records
            .lock()
            .map_err(|_| std::io::Error::other("event queue poisoned"))?
            .insert(request_id.to_string(), record);
        Ok(())
    }

    /// Starts the worker.
    pub fn start(self: &Arc<Self>, _dispatcher: Arc<Dispatcher>, _resolve: Resolver) {}

    /// The record of one event.
    pub fn get(&self, request_id: &str) -> Option<EventRecord> {
        self.records.lock().ok()?.get(request_id).cloned()
    }
}
