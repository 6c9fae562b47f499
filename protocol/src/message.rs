//! The messages router and agent exchange, and the errors of encoding and
//! decoding them. The byte layout of each message lives in `codec.rs`.

use std::fmt;

/// One protocol message; each travels in its own frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Agent → router, first frame on every connection.
    Hello(Hello),
    /// Router → agent, once: what function this VM runs.
    Configure(Configure),
    /// Agent → router: the runtime started and asked for its first event.
    Ready(Ready),
    /// Agent → router: the runtime could not start; the VM shuts down.
    InitError(ErrorInfo),
    /// Router → agent: run one invocation.
    Invoke(Invoke),
    /// Agent → router: how an invocation ended.
    Result(InvokeResult),
    /// Agent → router: a chunk of the runtime's or the agent's output.
    Log(LogRecord),
    /// Either way: asks for a [`Message::Pong`] with the same nonce.
    Ping(u64),
    /// Either way: answers a [`Message::Ping`].
    Pong(u64),
    /// Router → agent: stop the runtime and power the VM off.
    Shutdown,
    /// Either way: the peer's last frame was refused, and why.
    Error(ProtocolError),
}

/// The type byte of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum MessageType {
    /// [`Message::Hello`]
    Hello = 1,
    /// [`Message::Configure`]
    Configure = 2,
    /// [`Message::Ready`]
    Ready = 3,
    /// [`Message::InitError`]
    InitError = 4,
    /// [`Message::Invoke`]
    Invoke = 5,
    /// [`Message::Result`]
    Result = 6,
    /// [`Message::Log`]
    Log = 7,
    /// [`Message::Ping`]
    Ping = 8,
    /// [`Message::Pong`]
    Pong = 9,
    /// [`Message::Shutdown`]
    Shutdown = 10,
    /// [`Message::Error`]
    Error = 11,
}

impl MessageType {
    /// The type for a frame's type byte, if it names one.
    pub fn from_byte(b: u8) -> Option<Self> {
        use MessageType::*;
        Some(match b {
            1 => Hello,
            2 => Configure,
            3 => Ready,
            4 => InitError,
            5 => Invoke,
            6 => Result,
            7 => Log,
            8 => Ping,
            9 => Pong,
            10 => Shutdown,
            11 => Error,
            _ => return None,
        })
    }
}

/// The agent's greeting, with how long the guest took to get here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The agent's version (its crate version).
    pub agent_version: String,
    /// Boot timing of this guest.
    pub boot: BootTiming,
}

/// Where a guest's boot time went, measured inside the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BootTiming {
    /// Kernel start to the agent's first instruction (guest uptime then).
    pub kernel_us: u64,
    /// The agent's first instruction to listening for the router.
    pub agent_us: u64,
}

/// Which kind of runtime runs the function's handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeKind {
    /// Lambda's custom runtime: `/var/task/bootstrap` speaks the Runtime API
    /// and stays alive between invocations.
    Provided,
    /// Ember's `exec` runtime: the handler is a shell command started per
    /// invocation, given the event on stdin; its stdout is the response and
    /// a non-zero exit a function error.
    Exec,
    /// Lambda's managed `python3.13` runtime: the runtime image's bootstrap
    /// (AWS's awslambdaric) imports the handler from `/var/task`.
    Python313,
    /// Lambda's managed `nodejs20.x` runtime: the runtime image's bootstrap
    /// (Ember's Node.js client) loads the handler from `/var/task`.
    Nodejs20,
}

impl RuntimeKind {
    /// Whether a runtime image (a second, read-only drive) supplies the
    /// interpreter and its bootstrap.
    pub fn is_managed(self) -> bool {
        matches!(self, RuntimeKind::Python313 | RuntimeKind::Nodejs20)
    }

    /// Lambda's name of a managed runtime (`AWS_EXECUTION_ENV` is
    /// `AWS_Lambda_` and this); `None` for the others.
    pub fn managed_name(self) -> Option<&'static str> {
        match self {
            RuntimeKind::Python313 => Some("python3.13"),
            RuntimeKind::Nodejs20 => Some("nodejs20.x"),
            RuntimeKind::Provided | RuntimeKind::Exec => None,
        }
    }
}

/// What function the VM runs; sent once per VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Configure {
    /// The function's name (`AWS_LAMBDA_FUNCTION_NAME`).
    pub function_name: String,
    /// The function's version (`AWS_LAMBDA_FUNCTION_VERSION`).
    pub function_version: String,
    /// The ARN invocations name (`Lambda-Runtime-Invoked-Function-Arn`).
    pub function_arn: String,
    /// The handler (`_HANDLER`; for [`RuntimeKind::Exec`] the command).
    pub handler: String,
    /// Which runtime runs the handler.
    pub runtime: RuntimeKind,
    /// The function's own environment variables, in order.
    pub env: Vec<(String, String)>,
    /// The function's memory size in MiB (`AWS_LAMBDA_FUNCTION_MEMORY_SIZE`,
    /// and the handler's memory limit).
    pub memory_mib: u32,
    /// The function's timeout in milliseconds (informational: each
    /// [`Invoke`] carries its own).
    pub timeout_ms: u64,
    /// How long the runtime may take to ask for its first event.
    pub init_timeout_ms: u64,
}

/// The runtime is up and waiting for an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ready {
    /// From starting the runtime to its first `invocation/next`.
    pub init_duration_us: u64,
}

/// One invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invoke {
    /// Unique id: 1 to 128 characters of `[A-Za-z0-9._:-]`.
    pub request_id: String,
    /// Time the invocation may run, counted by the agent from the frame's
    /// arrival, so that the guest's and the host's clocks need not agree.
    pub timeout_ms: u64,
    /// The event, at most [`crate::MAX_PAYLOAD_LEN`] bytes.
    pub payload: Vec<u8>,
    /// `Lambda-Runtime-Client-Context`, if the caller sent one.
    pub client_context: Option<String>,
    /// `Lambda-Runtime-Trace-Id`, if any.
    pub trace_id: Option<String>,
}

/// How an invocation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvokeResult {
    /// The [`Invoke::request_id`] this answers.
    pub request_id: String,
    /// Success or what kind of failure.
    pub outcome: Outcome,
    /// The response, or the error document the runtime posted.
    pub payload: Vec<u8>,
    /// From the invoke's arrival to its result.
    pub duration_us: u64,
    /// Set on the first invocation after a runtime started (a cold start).
    pub init_duration_us: Option<u64>,
    /// The handler's peak memory use, when the agent could measure it.
    pub peak_memory_bytes: Option<u64>,
    /// The last [`crate::LOG_TAIL_LEN`] bytes of output of this invocation.
    pub log_tail: Vec<u8>,
}

/// The ways an invocation ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The runtime posted a response.
    Ok,
    /// The function failed and the runtime reported it (`invocation/error`,
    /// or an `exec` handler's non-zero exit).
    HandledError(ErrorInfo),
    /// The runtime itself failed (a `Runtime.*` error), or its response was
    /// refused (too large).
    UnhandledError(ErrorInfo),
    /// The deadline passed; the runtime was killed and will be restarted.
    Timeout,
    /// The runtime exited during the invocation.
    RuntimeExit(ExitInfo),
}

/// Lambda's error document: `errorType` and `errorMessage`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorInfo {
    /// e.g. `Runtime.ExitError`, `Function.ResponseSizeTooLarge`.
    pub error_type: String,
    /// Human-readable reason.
    pub error_message: String,
}

/// How a process ended: an exit status or a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    /// The exit status, if it exited.
    pub status: Option<i32>,
    /// The signal number, if a signal killed it.
    pub signal: Option<i32>,
}

/// Which stream a [`LogRecord`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    /// The runtime's stdout.
    Stdout,
    /// The runtime's stderr.
    Stderr,
    /// The agent's own notes (runtime started, killed, ...).
    Agent,
}

/// A chunk of output, forwarded as it is produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// The invocation running when it was produced, if any.
    pub request_id: Option<String>,
    /// Where it came from.
    pub stream: LogStream,
    /// The bytes, at most [`crate::MAX_LOG_RECORD_LEN`].
    pub data: Vec<u8>,
}

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError {
    /// The refused invocation, when the frame named one.
    pub request_id: Option<String>,
    /// The kind of refusal.
    pub code: ErrorCode,
    /// Human-readable details.
    pub message: String,
}

/// The kinds of refusal a [`ProtocolError`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The frame's body did not decode.
    MalformedFrame = 1,
    /// The frame's version is not [`crate::PROTOCOL_VERSION`].
    UnsupportedVersion = 2,
    /// The frame's type byte names no message.
    UnknownMessageType = 3,
    /// The frame is longer than [`crate::MAX_BODY_LEN`].
    FrameTooLarge = 4,
    /// The payload is longer than [`crate::MAX_PAYLOAD_LEN`].
    PayloadTooLarge = 5,
    /// An invocation is already running.
    Busy = 6,
    /// An invoke arrived before [`Configure`].
    NotConfigured = 7,
    /// A second [`Configure`].
    AlreadyConfigured = 8,
    /// A message the receiver never accepts (e.g. a `Result` sent to the agent).
    UnexpectedMessage = 9,
}

impl ErrorCode {
    /// The code for a wire value.
    pub fn from_u16(v: u16) -> Option<Self> {
        use ErrorCode::*;
        Some(match v {
            1 => MalformedFrame,
            2 => UnsupportedVersion,
            3 => UnknownMessageType,
            4 => FrameTooLarge,
            5 => PayloadTooLarge,
            6 => Busy,
            7 => NotConfigured,
            8 => AlreadyConfigured,
            9 => UnexpectedMessage,
            _ => return None,
        })
    }
}

/// Why a message could not be encoded; nothing was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncodeError {
    /// The payload exceeds [`crate::MAX_PAYLOAD_LEN`].
    PayloadTooLarge {
        /// Its length.
        len: usize,
    },
    /// A field breaks the protocol's rules.
    Invalid {
        /// The field.
        field: &'static str,
        /// The rule it breaks.
        reason: &'static str,
    },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::PayloadTooLarge { len } => write!(
                f,
                "payload of {len} bytes exceeds the limit of {} bytes",
                crate::MAX_PAYLOAD_LEN
            ),
            EncodeError::Invalid { field, reason } => write!(f, "field {field}: {reason}"),
        }
    }
}

impl std::error::Error for EncodeError {}

/// Why a frame could not be decoded. A frame whose header was read can be
/// skipped (its length is known), so a receiver answers with
/// [`DecodeError::to_protocol_error`] and keeps serving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The buffer holds less than a whole frame (only from whole-buffer
    /// decoding; streams report a truncated read instead).
    Incomplete {
        /// Bytes needed in total.
        needed: usize,
    },
    /// The header announces a body longer than [`crate::MAX_BODY_LEN`].
    FrameTooLarge {
        /// The announced length.
        len: usize,
    },
    /// The header's reserved bytes are not zero.
    BadHeader,
    /// The frame's version is not [`crate::PROTOCOL_VERSION`].
    UnsupportedVersion(u8),
    /// The frame's type byte names no message.
    UnknownMessageType(u8),
    /// An invoke or result carries a payload over [`crate::MAX_PAYLOAD_LEN`].
    PayloadTooLarge {
        /// The request it belongs to, when that was decoded first.
        request_id: Option<String>,
        /// Its length.
        len: usize,
    },
    /// The body ended inside a field.
    Truncated {
        /// The field.
        field: &'static str,
    },
    /// A length prefix exceeds the field's limit.
    FieldTooLong {
        /// The field.
        field: &'static str,
        /// Its announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A string field is not UTF-8.
    NotUtf8 {
        /// The field.
        field: &'static str,
    },
    /// An enum or option tag has no meaning.
    BadTag {
        /// The field.
        field: &'static str,
        /// The tag.
        tag: u8,
    },
    /// The body has bytes left after the last field.
    TrailingBytes {
        /// How many.
        len: usize,
    },
    /// A field breaks the protocol's rules.
    Invalid {
        /// The field.
        field: &'static str,
        /// The rule it breaks.
        reason: &'static str,
    },
}

impl DecodeError {
    /// The [`ProtocolError`] that tells the peer its frame was refused.
    pub fn to_protocol_error(&self) -> ProtocolError {
        let code = match self {
            DecodeError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            DecodeError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            DecodeError::UnknownMessageType(_) => ErrorCode::UnknownMessageType,
            DecodeError::PayloadTooLarge { .. } => ErrorCode::PayloadTooLarge,
            _ => ErrorCode::MalformedFrame,
        };
        let request_id = match self {
            DecodeError::PayloadTooLarge { request_id, .. } => request_id.clone(),
            _ => None,
        };
        ProtocolError {
            request_id,
            code,
            message: self.to_string(),
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Incomplete { needed } => {
                write!(f, "incomplete frame: {needed} bytes needed")
            }
            DecodeError::FrameTooLarge { len } => write!(
                f,
                "frame body of {len} bytes exceeds the limit of {} bytes",
                crate::MAX_BODY_LEN
            ),
            DecodeError::BadHeader => write!(f, "frame header's reserved bytes are not zero"),
            DecodeError::UnsupportedVersion(v) => write!(
                f,
                "protocol version {v} is not supported (this side speaks {})",
                crate::PROTOCOL_VERSION
            ),
            DecodeError::UnknownMessageType(t) => write!(f, "unknown message type {t}"),
            DecodeError::PayloadTooLarge { len, .. } => write!(
                f,
                "payload of {len} bytes exceeds the limit of {} bytes",
                crate::MAX_PAYLOAD_LEN
            ),
            DecodeError::Truncated { field } => write!(f, "frame body ends inside field {field}"),
            DecodeError::FieldTooLong { field, len, max } => {
                write!(f, "field {field} is {len} bytes long, the limit is {max}")
            }
            DecodeError::NotUtf8 { field } => write!(f, "field {field} is not UTF-8"),
            DecodeError::BadTag { field, tag } => write!(f, "field {field}: unknown tag {tag}"),
            DecodeError::TrailingBytes { len } => {
                write!(f, "{len} bytes left over after the last field")
            }
            DecodeError::Invalid { field, reason } => write!(f, "field {field}: {reason}"),
        }
    }
}

impl std::error::Error for DecodeError {}
