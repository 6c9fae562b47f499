//! Lambda's request size limits, per operation, and the words AWS answers
//! with when a request is over one (413 `RequestEntityTooLargeException`).

/// CreateFunction and UpdateFunctionCode: a 50 MiB zip in base64 plus the
/// rest of the JSON, as Lambda counts it.
pub const MAX_CODE_REQUEST: usize = 70_167_211;
/// A RequestResponse (or DryRun) Invoke payload: 6 MiB.
pub const MAX_SYNC_PAYLOAD: usize = 6 * 1024 * 1024;
/// An Event Invoke payload: 256 KiB.
pub const MAX_EVENT_PAYLOAD: usize = 256 * 1024;
/// Any other operation's body.
pub const MAX_OTHER_REQUEST: usize = 256 * 1024;

/// The body limit of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimit {
    /// The most bytes the body may have.
    pub max: usize,
    /// The operation, as Lambda names it in its message.
    operation: &'static str,
    /// An Event invocation (its own message).
    event: bool,
}

impl BodyLimit {
    /// The limit of `operation` (our operation name); `invocation_type` is
    /// the `X-Amz-Invocation-Type` header of an Invoke.
    pub fn of(operation: &'static str, invocation_type: Option<&str>) -> Self {
        let (max, operation, event) = match operation {
            "Invoke" if invocation_type == Some("Event") => {
                (MAX_EVENT_PAYLOAD, "InvokeFunction", true)
            }
            "Invoke" => (MAX_SYNC_PAYLOAD, "InvokeFunction", false),
            "CreateFunction" | "UpdateFunctionCode" => (MAX_CODE_REQUEST, operation, false),
            _ => (MAX_OTHER_REQUEST, operation, false),
        };
        Self {
            max,
            operation,
            event,
        }
    }

    /// Lambda's message for a body over the limit; `len` is the body's
    /// length when known (Content-Length).
    pub fn message(&self, len: Option<u64>) -> String {
        let max = self.max;
        match (self.event, len) {
            (true, Some(n)) => format!(
                "{n} byte payload is too large for the Event invocation type (limit {max} bytes)"
            ),
            (true, None) => format!(
                "The payload is too large for the Event invocation type (limit {max} bytes)"
            ),
            (false, _) => format!(
                "Request must be smaller than {max} bytes for the {} operation",
                self.operation
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_messages_are_lambdas() {
        let sync = BodyLimit::of("Invoke", None);
        assert_eq!(sync.max, 6_291_456);
        assert_eq!(
            sync.message(Some(7_000_000)),
            "Request must be smaller than 6291456 bytes for the InvokeFunction operation"
        );
        assert_eq!(BodyLimit::of("Invoke", Some("DryRun")).max, 6_291_456);
        let event = BodyLimit::of("Invoke", Some("Event"));
        assert_eq!(event.max, 262_144);
        assert_eq!(
            event.message(Some(300_000)),
            "300000 byte payload is too large for the Event invocation type (limit 262144 bytes)"
        );
        let code = BodyLimit::of("UpdateFunctionCode", None);
        assert_eq!(code.max, 70_167_211);
        assert_eq!(
            code.message(None),
            "Request must be smaller than 70167211 bytes for the UpdateFunctionCode operation"
        );
        assert_eq!(BodyLimit::of("CreateFunction", None).max, 70_167_211);
        assert_eq!(BodyLimit::of("PutFunctionConcurrency", None).max, 262_144);
    }
}
