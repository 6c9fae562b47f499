//! The pure mapping from dispatch results to Invoke replies.

use ember_protocol::{ErrorInfo, ExitInfo, InvokeResult};

use super::*;
use crate::dispatch::counting::Throttle;
use crate::dispatch::placement::PlacementError;

fn output(outcome: Outcome, payload: &[u8], tail: &[u8]) -> InvokeOutput {
    InvokeOutput {
        result: InvokeResult {
            request_id: "r1".into(),
            outcome,
            payload: payload.to_vec(),
            duration_us: 1500,
            init_duration_us: None,
            peak_memory_bytes: None,
            log_tail: tail.to_vec(),
        },
        cold_start: true,
        slot_id: "slot-7".into(),
    }
}

fn hdr<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn body_of(r: Response) -> Vec<u8> {
    use http_body_util::BodyExt;
    r.into_body().collect().await.unwrap().to_bytes().to_vec()
}

#[tokio::test]
async fn success_carries_payload_and_ember_headers() {
    let r = invoke_response(
        "r1",
        &Ok(output(Outcome::Ok, b"{\"ok\":1}", b"hello\n")),
        true,
        3,
    );
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(hdr(&r, "x-amzn-requestid"), Some("r1"));
    assert_eq!(hdr(&r, "x-amz-executed-version"), Some("$LATEST"));
    assert_eq!(hdr(&r, "x-amz-function-error"), None);
    assert_eq!(hdr(&r, "x-amz-log-result"), Some("aGVsbG8K"));
    assert_eq!(hdr(&r, "x-ember-slot"), Some("slot-7"));
    assert_eq!(hdr(&r, "x-ember-cold-start"), Some("true"));
    assert_eq!(body_of(r).await, b"{\"ok\":1}");
    let r = invoke_response("r1", &Ok(output(Outcome::Ok, b"1", b"x")), false, 3);
    assert_eq!(hdr(&r, "x-amz-log-result"), None);
}

#[tokio::test]
async fn function_errors_are_200_with_the_error_header() {
    let info = ErrorInfo {
        error_type: "MyError".into(),
        error_message: "boom".into(),
    };
    let r = invoke_response(
        "r1",
        &Ok(output(Outcome::HandledError(info.clone()), b"", b"")),
        false,
        3,
    );
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(hdr(&r, "x-amz-function-error"), Some("Handled"));
    let doc: serde_json::Value = serde_json::from_slice(&body_of(r).await).unwrap();
    assert_eq!(doc["errorType"], "MyError");
    // The runtime's own document wins when it posted one.
    let r = invoke_response(
        "r1",
        &Ok(output(Outcome::UnhandledError(info), b"{\"x\":1}", b"")),
        false,
        3,
    );
    assert_eq!(hdr(&r, "x-amz-function-error"), Some("Unhandled"));
    assert_eq!(body_of(r).await, b"{\"x\":1}");
    let r = invoke_response("r9", &Ok(output(Outcome::Timeout, b"", b"")), false, 5);
    assert_eq!(hdr(&r, "x-amz-function-error"), Some("Unhandled"));
    let doc: serde_json::Value = serde_json::from_slice(&body_of(r).await).unwrap();
    assert_eq!(doc["errorType"], "Sandbox.Timedout");
    assert!(doc["errorMessage"]
        .as_str()
        .unwrap()
        .contains("r9 Error: Task timed out after 5.00 seconds"));
    let exit = Outcome::RuntimeExit(ExitInfo {
        status: None,
        signal: Some(9),
    });
    let r = invoke_response("r1", &Ok(output(exit, b"", b"")), false, 3);
    let doc: serde_json::Value = serde_json::from_slice(&body_of(r).await).unwrap();
    assert_eq!(doc["errorType"], "Runtime.ExitError");
    assert!(doc["errorMessage"].as_str().unwrap().ends_with("signal 9"));
}

#[tokio::test]
async fn dispatch_errors_map_to_lambda_errors() {
    let cases = [
        (
            DispatchError::Throttled(Throttle::TenantLimit(1)),
            429,
            "TooManyRequestsException",
            "User",
        ),
        (
            DispatchError::Placement(PlacementError::Init {
                error_type: "Runtime.ExitError".into(),
                error_message: "init failed".into(),
            }),
            502,
            "InvalidRuntimeException",
            "Service",
        ),
        (
            DispatchError::Placement(PlacementError::Host("vmm missing".into())),
            500,
            "ServiceException",
            "Service",
        ),
    ];
    for (err, status, code, fault) in cases {
        let r = invoke_response("r1", &Err(err), true, 3);
        assert_eq!(r.status().as_u16(), status);
        assert_eq!(hdr(&r, "x-amzn-errortype"), Some(code));
        assert_eq!(hdr(&r, "x-amzn-requestid"), Some("r1"));
        let doc: serde_json::Value = serde_json::from_slice(&body_of(r).await).unwrap();
        assert_eq!(doc["Type"], fault);
        assert!(doc["message"].is_string());
    }
}

#[test]
fn a_full_event_queue_is_throttling() {
    let e = event_error(&EventError::TenantQueueFull { limit: 5 });
    assert_eq!(e.status.as_u16(), 429);
    assert_eq!(e.code, "TooManyRequestsException");
    assert!(e.message.contains("5 Event invocations"), "{}", e.message);
    let e = event_error(&EventError::Duplicate("x".into()));
    assert_eq!(e.status.as_u16(), 500);
}

#[test]
fn header_parsing() {
    assert_eq!(
        invocation_type(None).unwrap(),
        InvocationType::RequestResponse
    );
    assert_eq!(
        invocation_type(Some("Event")).unwrap(),
        InvocationType::Event
    );
    assert_eq!(
        invocation_type(Some("DryRun")).unwrap(),
        InvocationType::DryRun
    );
    assert_eq!(
        invocation_type(Some("Sync")).unwrap_err().code,
        "ValidationException"
    );
    assert!(wants_tail(Some("Tail")).unwrap() && !wants_tail(None).unwrap());
    assert!(wants_tail(Some("All")).is_err());
    assert_eq!(
        client_context(Some("eyJhIjoxfQ==")).unwrap().as_deref(),
        Some("{\"a\":1}")
    );
    assert!(client_context(Some("***")).is_err());
    let big = base64::engine::general_purpose::STANDARD.encode(vec![b'a'; MAX_CLIENT_CONTEXT + 1]);
    assert!(client_context(Some(&big)).is_err());
    // The tail header carries at most the last 4 KiB.
    let long = vec![b'x'; LOG_TAIL_LEN + 100];
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(log_result(&long))
        .unwrap();
    assert_eq!(decoded.len(), LOG_TAIL_LEN);
}
