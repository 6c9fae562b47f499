//! The body layout of each message, and the rules its fields follow. The
//! same rules run before encoding and after decoding, so neither side can
//! send what the other would refuse.

use crate::message::*;
use crate::wire::{Reader, Writer};
use crate::{LOG_TAIL_LEN, MAX_ENV_VARS, MAX_LOG_RECORD_LEN, MAX_PAYLOAD_LEN, MAX_STRING_LEN};

/// The longest request id.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Whether `id` is a valid request id: 1 to 128 characters of
/// `[A-Za-z0-9._:-]`, so it is safe in a URL path and an HTTP header.
pub fn is_valid_request_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Whether `s` can be an HTTP header value: visible ASCII and spaces.
fn is_header_safe(s: &str) -> bool {
    s.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
}

type Rule = (&'static str, &'static str);

fn check(ok: bool, field: &'static str, reason: &'static str) -> Result<(), Rule> {
    if ok {
        Ok(())
    } else {
        Err((field, reason))
    }
}

fn check_str(s: &str, field: &'static str) -> Result<(), Rule> {
    check(s.len() <= MAX_STRING_LEN, field, "longer than 64 KiB")?;
    check(!s.contains('\0'), field, "contains a NUL byte")
}

fn check_error_info(e: &ErrorInfo) -> Result<(), Rule> {
    check_str(&e.error_type, "error_type")?;
    check_str(&e.error_message, "error_message")
}

fn check_request_id(id: &str) -> Result<(), Rule> {
    check(
        is_valid_request_id(id),
        "request_id",
        "must be 1 to 128 characters of [A-Za-z0-9._:-]",
    )
}

/// The protocol's rules for every field; payload sizes are checked apart
/// because their violation has its own error.
fn validate(m: &Message) -> Result<(), Rule> {
    match m {
        Message::Hello(h) => check_str(&h.agent_version, "agent_version"),
        Message::Configure(c) => {
            check_str(&c.function_name, "function_name")?;
            check(!c.function_name.is_empty(), "function_name", "is empty")?;
            check_str(&c.function_version, "function_version")?;
            check_str(&c.function_arn, "function_arn")?;
            check(
                is_header_safe(&c.function_arn),
                "function_arn",
                "is not header-safe ASCII",
            )?;
            check_str(&c.handler, "handler")?;
            check(
                c.env.len() <= MAX_ENV_VARS,
                "env",
                "more than 1024 variables",
            )?;
            for (k, v) in &c.env {
                check_str(k, "env name")?;
                check_str(v, "env value")?;
                check(
                    !k.is_empty() && !k.contains('='),
                    "env name",
                    "empty or contains '='",
                )?;
            }
            check(c.memory_mib > 0, "memory_mib", "is zero")?;
            check(c.init_timeout_ms > 0, "init_timeout_ms", "is zero")
        }
        Message::Invoke(i) => {
            check_request_id(&i.request_id)?;
            check(i.timeout_ms > 0, "timeout_ms", "is zero")?;
            if let Some(cc) = &i.client_context {
                check_str(cc, "client_context")?;
                check(
                    is_header_safe(cc),
                    "client_context",
                    "is not header-safe ASCII",
                )?;
            }
            if let Some(t) = &i.trace_id {
                check_str(t, "trace_id")?;
                check(is_header_safe(t), "trace_id", "is not header-safe ASCII")?;
            }
            Ok(())
        }
        Message::Result(r) => {
            check_request_id(&r.request_id)?;
            check(
                r.log_tail.len() <= LOG_TAIL_LEN,
                "log_tail",
                "longer than 4 KiB",
            )?;
            match &r.outcome {
                Outcome::HandledError(e) | Outcome::UnhandledError(e) => check_error_info(e),
                Outcome::RuntimeExit(x) => check(
                    x.status.is_some() != x.signal.is_some(),
                    "exit",
                    "needs exactly one of status and signal",
                ),
                Outcome::Ok | Outcome::Timeout => Ok(()),
            }
        }
        Message::InitError(e) => check_error_info(e),
        Message::Log(l) => {
            if let Some(id) = &l.request_id {
                check_request_id(id)?;
            }
            check(
                l.data.len() <= MAX_LOG_RECORD_LEN,
                "data",
                "longer than 16 KiB",
            )
        }
        Message::Error(e) => {
            if let Some(id) = &e.request_id {
                check_request_id(id)?;
            }
            check_str(&e.message, "message")
        }
        Message::Ready(_) | Message::Ping(_) | Message::Pong(_) | Message::Shutdown => Ok(()),
    }
}

/// The body of `m`, after checking every rule.
pub(crate) fn encode_body(m: &Message) -> Result<Vec<u8>, EncodeError> {
    let payload_len = match m {
        Message::Invoke(i) => i.payload.len(),
        Message::Result(r) => r.payload.len(),
        _ => 0,
    };
    if payload_len > MAX_PAYLOAD_LEN {
        return Err(EncodeError::PayloadTooLarge { len: payload_len });
    }
    validate(m).map_err(|(field, reason)| EncodeError::Invalid { field, reason })?;
    let mut w = Writer::default();
    match m {
        Message::Hello(h) => {
            w.str(&h.agent_version);
            w.u64(h.boot.kernel_us);
            w.u64(h.boot.agent_us);
        }
        Message::Configure(c) => {
            w.str(&c.function_name);
            w.str(&c.function_version);
            w.str(&c.function_arn);
            w.str(&c.handler);
            w.u8(match c.runtime {
                RuntimeKind::Provided => 0,
                RuntimeKind::Exec => 1,
                RuntimeKind::Python313 => 2,
                RuntimeKind::Nodejs20 => 3,
            });
            w.u32(c.env.len() as u32);
            for (k, v) in &c.env {
                w.str(k);
                w.str(v);
            }
            w.u32(c.memory_mib);
            w.u64(c.timeout_ms);
            w.u64(c.init_timeout_ms);
        }
        Message::Ready(r) => w.u64(r.init_duration_us),
        Message::InitError(e) => put_error_info(&mut w, e),
        Message::Invoke(i) => {
            w.str(&i.request_id);
            w.u64(i.timeout_ms);
            w.opt_str(i.client_context.as_deref());
            w.opt_str(i.trace_id.as_deref());
            w.bytes(&i.payload);
        }
        Message::Result(r) => {
            w.str(&r.request_id);
            match &r.outcome {
                Outcome::Ok => w.u8(0),
                Outcome::HandledError(e) => {
                    w.u8(1);
                    put_error_info(&mut w, e);
                }
                Outcome::UnhandledError(e) => {
                    w.u8(2);
                    put_error_info(&mut w, e);
                }
                Outcome::Timeout => w.u8(3),
                Outcome::RuntimeExit(x) => {
                    w.u8(4);
                    w.opt_i32(x.status);
                    w.opt_i32(x.signal);
                }
            }
            w.u64(r.duration_us);
            w.opt_u64(r.init_duration_us);
            w.opt_u64(r.peak_memory_bytes);
            w.bytes(&r.log_tail);
            w.bytes(&r.payload);
        }
        Message::Log(l) => {
            w.opt_str(l.request_id.as_deref());
            w.u8(match l.stream {
                LogStream::Stdout => 0,
                LogStream::Stderr => 1,
                LogStream::Agent => 2,
            });
            w.bytes(&l.data);
        }
        Message::Ping(n) | Message::Pong(n) => w.u64(*n),
        Message::Shutdown => {}
        Message::Error(e) => {
            w.opt_str(e.request_id.as_deref());
            w.u16(e.code as u16);
            w.str(&e.message);
        }
    }
    Ok(w.buf)
}

fn put_error_info(w: &mut Writer, e: &ErrorInfo) {
    w.str(&e.error_type);
    w.str(&e.error_message);
}

fn get_error_info(r: &mut Reader<'_>) -> Result<ErrorInfo, DecodeError> {
    Ok(ErrorInfo {
        error_type: r.string("error_type", MAX_STRING_LEN)?,
        error_message: r.string("error_message", MAX_STRING_LEN)?,
    })
}

/// A payload's length prefix, refused with [`DecodeError::PayloadTooLarge`]
/// before a byte of it is copied.
fn get_payload(r: &mut Reader<'_>, request_id: &str) -> Result<Vec<u8>, DecodeError> {
    let len = r.len("payload", usize::MAX)?;
    if len > MAX_PAYLOAD_LEN {
        return Err(DecodeError::PayloadTooLarge {
            request_id: is_valid_request_id(request_id).then(|| request_id.to_string()),
            len,
        });
    }
    r.raw("payload", len)
}

/// Decodes the body of a frame of type `kind`, then checks every rule.
pub(crate) fn decode_body(kind: MessageType, body: &[u8]) -> Result<Message, DecodeError> {
    let mut r = Reader::new(body);
    let s = MAX_STRING_LEN;
    let m = match kind {
        MessageType::Hello => Message::Hello(Hello {
            agent_version: r.string("agent_version", s)?,
            boot: BootTiming {
                kernel_us: r.u64("kernel_us")?,
                agent_us: r.u64("agent_us")?,
            },
        }),
        MessageType::Configure => {
            let function_name = r.string("function_name", s)?;
            let function_version = r.string("function_version", s)?;
            let function_arn = r.string("function_arn", s)?;
            let handler = r.string("handler", s)?;
            let runtime = match r.u8("runtime")? {
                0 => RuntimeKind::Provided,
                1 => RuntimeKind::Exec,
                2 => RuntimeKind::Python313,
                3 => RuntimeKind::Nodejs20,
                tag => {
                    return Err(DecodeError::BadTag {
                        field: "runtime",
                        tag,
                    })
                }
            };
            let count = r.len("env", MAX_ENV_VARS)?;
            let mut env = Vec::with_capacity(count);
            for _ in 0..count {
                env.push((r.string("env name", s)?, r.string("env value", s)?));
            }
            Message::Configure(Configure {
                function_name,
                function_version,
                function_arn,
                handler,
                runtime,
                env,
                memory_mib: r.u32("memory_mib")?,
                timeout_ms: r.u64("timeout_ms")?,
                init_timeout_ms: r.u64("init_timeout_ms")?,
            })
        }
        MessageType::Ready => Message::Ready(Ready {
            init_duration_us: r.u64("init_duration_us")?,
        }),
        MessageType::InitError => Message::InitError(get_error_info(&mut r)?),
        MessageType::Invoke => {
            let request_id = r.string("request_id", s)?;
            let timeout_ms = r.u64("timeout_ms")?;
            let client_context = r.opt_string("client_context", s)?;
            let trace_id = r.opt_string("trace_id", s)?;
            let payload = get_payload(&mut r, &request_id)?;
            Message::Invoke(Invoke {
                request_id,
                timeout_ms,
                payload,
                client_context,
                trace_id,
            })
        }
        MessageType::Result => {
            let request_id = r.string("request_id", s)?;
            let outcome = match r.u8("outcome")? {
                0 => Outcome::Ok,
                1 => Outcome::HandledError(get_error_info(&mut r)?),
                2 => Outcome::UnhandledError(get_error_info(&mut r)?),
                3 => Outcome::Timeout,
                4 => Outcome::RuntimeExit(ExitInfo {
                    status: r.opt_i32("exit status")?,
                    signal: r.opt_i32("exit signal")?,
                }),
                tag => {
                    return Err(DecodeError::BadTag {
                        field: "outcome",
                        tag,
                    })
                }
            };
            let duration_us = r.u64("duration_us")?;
            let init_duration_us = r.opt_u64("init_duration_us")?;
            let peak_memory_bytes = r.opt_u64("peak_memory_bytes")?;
            let log_tail = r.bytes("log_tail", LOG_TAIL_LEN)?;
            let payload = get_payload(&mut r, &request_id)?;
            Message::Result(InvokeResult {
                request_id,
                outcome,
                payload,
                duration_us,
                init_duration_us,
                peak_memory_bytes,
                log_tail,
            })
        }
        MessageType::Log => Message::Log(LogRecord {
            request_id: r.opt_string("request_id", s)?,
            stream: match r.u8("stream")? {
                0 => LogStream::Stdout,
                1 => LogStream::Stderr,
                2 => LogStream::Agent,
                tag => {
                    return Err(DecodeError::BadTag {
                        field: "stream",
                        tag,
                    })
                }
            },
            data: r.bytes("data", MAX_LOG_RECORD_LEN)?,
        }),
        MessageType::Ping => Message::Ping(r.u64("nonce")?),
        MessageType::Pong => Message::Pong(r.u64("nonce")?),
        MessageType::Shutdown => Message::Shutdown,
        MessageType::Error => {
            let request_id = r.opt_string("request_id", s)?;
            let raw = r.u16("code")?;
            let code = ErrorCode::from_u16(raw).ok_or(DecodeError::Invalid {
                field: "code",
                reason: "unknown error code",
            })?;
            Message::Error(ProtocolError {
                request_id,
                code,
                message: r.string("message", s)?,
            })
        }
    };
    r.finish()?;
    validate(&m).map_err(|(field, reason)| DecodeError::Invalid { field, reason })?;
    Ok(m)
}

impl Message {
    /// The frame type this message travels in.
    pub fn message_type(&self) -> MessageType {
        match self {
            Message::Hello(_) => MessageType::Hello,
            Message::Configure(_) => MessageType::Configure,
            Message::Ready(_) => MessageType::Ready,
            Message::InitError(_) => MessageType::InitError,
            Message::Invoke(_) => MessageType::Invoke,
            Message::Result(_) => MessageType::Result,
            Message::Log(_) => MessageType::Log,
            Message::Ping(_) => MessageType::Ping,
            Message::Pong(_) => MessageType::Pong,
            Message::Shutdown => MessageType::Shutdown,
            Message::Error(_) => MessageType::Error,
        }
    }
}
