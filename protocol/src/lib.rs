//! The wire protocol between Ember's invoke router and the guest agent.
//!
//! The router talks to the agent over one vsock stream per VM (the agent
//! listens on [`AGENT_VSOCK_PORT`]). Both sides exchange [`Message`]s in
//! length-prefixed, versioned frames:
//!
//! ```text
//! offset  size  field
//! 0       4     body length in bytes, big-endian (at most MAX_BODY_LEN)
//! 4       1     protocol version (PROTOCOL_VERSION)
//! 5       1     message type (MessageType)
//! 6       2     reserved, zero
//! 8       len   body: the message's fields, see `message.rs`
//! ```
//!
//! Because every frame states its length up front, a receiver that refuses a
//! frame (unknown type, bad body, unsupported version) skips exactly that
//! frame and keeps serving the stream.
//!
//! A conversation: the agent sends [`Hello`] on every new connection; the
//! router sends [`Configure`] once, the agent answers [`Ready`] or
//! [`Message::InitError`]; then [`Invoke`] / [`InvokeResult`] pairs, one at a
//! time, with [`LogRecord`]s streaming in between; [`Message::Ping`] at any
//! time; [`Message::Shutdown`] ends the VM.
//!
//! The host reaches the agent through the VMM's Unix socket with the
//! vsock handshake in [`handshake`] (blocking) or `conn` (tokio, the
//! `tokio` feature), which also holds the async framed connection every
//! async side uses. [`read_message`] / [`write_message`] are the blocking
//! equivalents for small static tools.

mod codec;
#[cfg(feature = "tokio")]
pub mod conn;
mod frame;
pub mod handshake;
mod message;
mod wire;

pub use codec::{is_valid_request_id, MAX_REQUEST_ID_LEN};
pub use frame::{read_message, write_message, FrameHeader, HEADER_LEN};
pub use message::{
    BootTiming, Configure, DecodeError, EncodeError, ErrorCode, ErrorInfo, ExitInfo, Hello, Invoke,
    InvokeResult, LogRecord, LogStream, Message, MessageType, Outcome, ProtocolError, Ready,
    RuntimeKind,
};

/// The protocol version this crate speaks; a frame with another version is
/// refused with [`ErrorCode::UnsupportedVersion`].
pub const PROTOCOL_VERSION: u8 = 1;

/// The vsock port the guest agent listens on (the router connects to it
/// through the VMM's vsock device, Firecracker style: `CONNECT 5000`).
pub const AGENT_VSOCK_PORT: u32 = 5000;

/// The largest invocation payload or function response, in bytes: 6 MiB,
/// AWS Lambda's limit for synchronous invocations. Larger ones are refused by
/// the encoder and by the decoder.
pub const MAX_PAYLOAD_LEN: usize = 6 * 1024 * 1024;

/// How many bytes of the runtime's most recent output return with each
/// result (Lambda's `LogResult` tail: 4 KiB).
pub const LOG_TAIL_LEN: usize = 4 * 1024;

/// The largest chunk of output one [`LogRecord`] carries.
pub const MAX_LOG_RECORD_LEN: usize = 16 * 1024;

/// The largest string field (names, handler, error messages, env values).
pub const MAX_STRING_LEN: usize = 64 * 1024;

/// The most environment variables a [`Configure`] may carry.
pub const MAX_ENV_VARS: usize = 1024;

/// The largest frame body: a full payload plus room for every other field.
pub const MAX_BODY_LEN: usize = MAX_PAYLOAD_LEN + 1024 * 1024;
