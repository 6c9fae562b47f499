//! Ember's invoke router: a Lambda-compatible HTTP API in front of a pool of
//! microVM slots per function.

pub mod api; // the Lambda HTTP API: routes, auth, shapes, errors
pub mod client; // a SigV4-signing client of that API
pub mod codestore; // zip validation, content-addressed code, ext4 images
pub mod config; // settings: config file and flags
pub mod datadir; // the data directory at start: private modes, sweep of leftovers
pub mod dispatch; // the data plane: slots, assignment, placement, counting
pub mod durable; // private (0600/0700), atomically written, fsynced state files
pub mod edge; // connection cap, timeouts, TLS, body limits
pub mod events; // durable Event-invocation queue
pub mod locks; // per-function and per-code locks of the control plane
pub mod metrics; // Prometheus metrics
pub mod quotas; // per-tenant quotas: functions, code bytes
pub mod registry; // SQLite registry of functions and invocation logs
pub mod runtime; // the closed set of function runtimes
pub mod runtime_images; // the managed runtimes' root file systems
pub mod server; // accept loop and graceful shutdown
pub mod sigv4; // AWS Signature Version 4
pub mod timefmt; // AWS timestamp formats
