//! Ember's invoke router: a Lambda-compatible HTTP API in front of a pool of
//! microVM slots per function.

pub mod api; // the Lambda HTTP API: routes, auth, shapes, errors
pub mod client; // a SigV4-signing client of that API
pub mod codestore; // zip validation, content-addressed code, ext4 images
pub mod config; // settings: config file and flags
pub mod dispatch; // the data plane: slots, assignment, placement, counting
pub mod events; // durable Event-invocation queue
pub mod metrics; // Prometheus metrics
pub mod registry; // SQLite registry of functions and invocation logs
pub mod runtimes; // runtime names and the managed runtimes' images
pub mod server; // accept loop and graceful shutdown
pub mod sigv4; // AWS Signature Version 4
pub mod timefmt; // AWS timestamp formats
