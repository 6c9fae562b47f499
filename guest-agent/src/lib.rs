//! Ember guest agent: PID 1 inside every Ember microVM. It mounts the
//! guest's filesystems, serves the router over vsock with the
//! `ember-protocol` frames, and runs the function's handler behind Lambda's
//! Runtime API, one invocation at a time.

pub mod agent;
pub mod init;
pub mod listener;
pub mod logs;
pub mod options;
pub mod reaper;
pub mod runtime;
pub mod runtime_api;
pub mod sandbox;
pub mod session;
pub mod supervisor;

pub use agent::{Agent, AgentOptions, Stop};
pub use listener::{ListenAddr, Listener};
