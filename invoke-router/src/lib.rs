//! Ember's invoke router as a library: the data plane that runs
//! invocations on microVM slots, the durable queue of Event invocations,
//! and the metrics both report.

pub mod dispatch;
pub mod events;
pub mod metrics;
