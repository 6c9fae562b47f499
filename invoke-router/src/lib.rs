//! Ember's invoke router: a Lambda-compatible HTTP API in front of a pool of
//! microVM slots per function.

pub mod codestore;
pub mod config;
pub mod dispatch;
pub mod events;
pub mod metrics;
pub mod sigv4;
pub mod timefmt;
