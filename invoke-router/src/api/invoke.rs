//! Invoke: `POST /2015-03-31/functions/{name}/invocations`.
//!
//! `X-Amz-Invocation-Type`: `RequestResponse` (default; 200 with the
//! function's response), `Event` (202 once durably queued), `DryRun` (204
//! after validation). `X-Amz-Log-Type: Tail` returns the last 4 KiB of output
//! in `X-Amz-Log-Result` (base64). Function errors are 200 with
//! `X-Amz-Function-Error`, as on Lambda. The mapping from a dispatch result to
//! the HTTP reply is [`invoke_response`], a pure function.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use base64::Engine;
use ember_protocol::{Outcome, LOG_TAIL_LEN};

use super::error::ApiError;
use super::{AppState, Caller};
use crate::dispatch::{DispatchError, ErrorClass, InvokeInput, InvokeOutput};
use crate::events::EventError;
use crate::registry::InvocationLog;
use crate::timefmt;

/// Lambda's limit on an Event invocation's payload.
pub const MAX_EVENT_PAYLOAD: usize = 256 * 1024;
/// Lambda's limit on the decoded client context.
pub const MAX_CLIENT_CONTEXT: usize = 3583;

/// How the caller wants the invocation run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvocationType {
    /// Synchronous.
    RequestResponse,
    /// Queued, at least once.
    Event,
    /// Validate only.
    DryRun,
}

/// Parses `X-Amz-Invocation-Type` (absent: RequestResponse).
pub fn invocation_type(v: Option<&str>) -> Result<InvocationType, ApiError> {
    match v {
        None | Some("RequestResponse") => Ok(InvocationType::RequestResponse),
        Some("Event") => Ok(InvocationType::Event),
        Some("DryRun") => Ok(InvocationType::DryRun),
        Some(other) => Err(ApiError::validation(format!(
            "1 validation error detected: Value '{}' at 'invocationType' failed to satisfy constraint: \
             Member must satisfy enum value set: [Event, RequestResponse, DryRun]",
            super::shapes::truncate(other, 64)
        ))),
    }
}

/// Parses `X-Amz-Log-Type`: whether to return the log tail.
pub fn wants_tail(v: Option<&str>) -> Result<bool, ApiError> {
    match v {
        None | Some("None") => Ok(false),
        Some("Tail") => Ok(true),
        Some(other) => Err(ApiError::validation(format!(
            "1 validation error detected: Value '{}' at 'logType' failed to satisfy constraint: \
             Member must satisfy enum value set: [None, Tail]",
            super::shapes::truncate(other, 64)
        ))),
    }
}

/// `X-Amz-Client-Context`: base64 of at most 3583 bytes of UTF-8.
pub fn client_context(v: Option<&str>) -> Result<Option<String>, ApiError> {
    let Some(v) = v else { return Ok(None) };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v.trim())
        .map_err(|_| {
            ApiError::invalid_parameter(
                "Client context must be a valid Base64-encoded JSON object.",
            )
        })?;
    if bytes.len() > MAX_CLIENT_CONTEXT {
        return Err(ApiError::invalid_parameter(format!(
            "Client context must be smaller than {MAX_CLIENT_CONTEXT} bytes when decoded."
        )));
    }
    String::from_utf8(bytes).map(Some).map_err(|_| {
        ApiError::invalid_parameter("Client context must be a valid Base64-encoded JSON object.")
    })
}

/// The error document Lambda returns for failures the function did not
/// report itself.
fn error_document(error_type: &str, message: &str) -> Vec<u8> {
    serde_json::json!({ "errorType": error_type, "errorMessage": message })
        .to_string()
        .into_bytes()
}

/// For a run that reached the function: (`X-Amz-Function-Error`, body).
pub fn function_reply(
    request_id: &str,
    outcome: &Outcome,
    payload: &[u8],
    timeout_s: u32,
) -> (Option<&'static str>, Vec<u8>) {
    let or_doc = |doc: Vec<u8>| {
        if payload.is_empty() {
            doc
        } else {
            payload.to_vec()
        }
    };
    match outcome {
        Outcome::Ok => (None, payload.to_vec()),
        Outcome::HandledError(e) => (
            Some("Handled"),
            or_doc(error_document(&e.error_type, &e.error_message)),
        ),
        Outcome::UnhandledError(e) => (
            Some("Unhandled"),
            or_doc(error_document(&e.error_type, &e.error_message)),
        ),
        Outcome::Timeout => (
            Some("Unhandled"),
            error_document(
                "Sandbox.Timedout",
                &format!(
                    "RequestId: {request_id} Error: Task timed out after {timeout_s}.00 seconds"
                ),
            ),
        ),
        Outcome::RuntimeExit(exit) => {
            let how = match (exit.status, exit.signal) {
                (_, Some(sig)) => format!("signal {sig}"),
                (Some(code), None) => format!("exit status {code}"),
                (None, None) => "unknown".to_string(),
            };
            (
                Some("Unhandled"),
                error_document(
                    "Runtime.ExitError",
                    &format!("RequestId: {request_id} Error: Runtime exited with error: {how}"),
                ),
            )
        }
    }
}

/// Maps a dispatch failure to Lambda's error, by its class.
pub fn dispatch_error(e: &DispatchError) -> ApiError {
    match e.class() {
        ErrorClass::TooManyRequests => ApiError::too_many(e.to_string()),
        ErrorClass::RuntimeFailed => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "InvalidRuntimeException",
            e.to_string(),
        ),
        ErrorClass::Unavailable => ApiError::service(e.to_string()),
    }
}

/// Maps a refused Event to Lambda's error: a full queue is throttling.
pub fn event_error(e: &EventError) -> ApiError {
    match e {
        EventError::TenantQueueFull { .. } | EventError::QueueFull => {
            ApiError::too_many(e.to_string())
        }
        EventError::PayloadTooLarge(_) => ApiError::too_large(MAX_EVENT_PAYLOAD, "Invoke"),
        _ => ApiError::service(format!("could not queue the event: {e}")),
    }
}

/// `X-Amz-Log-Result`: base64 of the last 4 KiB of output.
pub fn log_result(tail: &[u8]) -> String {
    let start = tail.len().saturating_sub(LOG_TAIL_LEN);
    base64::engine::general_purpose::STANDARD.encode(&tail[start..])
}

/// The outcome's name in invocation records.
pub fn outcome_name(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Ok => "Success",
        Outcome::HandledError(_) => "Handled",
        Outcome::UnhandledError(_) => "Unhandled",
        Outcome::Timeout => "Timeout",
        Outcome::RuntimeExit(_) => "RuntimeExit",
    }
}

/// The HTTP reply to a synchronous invocation (pure).
pub fn invoke_response(
    request_id: &str,
    result: &Result<InvokeOutput, DispatchError>,
    tail: bool,
    timeout_s: u32,
) -> Response {
    let out = match result {
        Ok(out) => out,
        Err(e) => {
            let mut resp = dispatch_error(e).into_response();
            set(resp.headers_mut(), "x-amzn-RequestId", request_id);
            return resp;
        }
    };
    let (function_error, body) = function_reply(
        request_id,
        &out.result.outcome,
        &out.result.payload,
        timeout_s,
    );
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    set(h, "content-type", "application/json");
    set(h, "x-amzn-RequestId", request_id);
    set(h, "X-Amz-Executed-Version", "$LATEST");
    if let Some(fe) = function_error {
        set(h, "X-Amz-Function-Error", fe);
    }
    if tail {
        set(h, "X-Amz-Log-Result", &log_result(&out.result.log_tail));
    }
    set(h, "X-Ember-Slot", &out.slot_id);
    set(
        h,
        "X-Ember-Cold-Start",
        if out.cold_start { "true" } else { "false" },
    );
    resp
}

fn set(h: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// The Invoke handler.
pub async fn invoke(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let kind = invocation_type(header(&headers, "x-amz-invocation-type"))?;
    let tail = wants_tail(header(&headers, "x-amz-log-type"))?;
    let context = client_context(header(&headers, "x-amz-client-context"))?;
    let rec = state.function(&caller.0, &name, q.get("Qualifier").map(String::as_str))?;
    if !body.is_empty() {
        serde_json::from_slice::<serde::de::IgnoredAny>(&body).map_err(|e| {
            ApiError::bad_content(format!("Could not parse request body into json: {e}"))
        })?;
    }
    let request_id = uuid::Uuid::new_v4().to_string();
    match kind {
        InvocationType::DryRun => {
            let mut resp = StatusCode::NO_CONTENT.into_response();
            set(resp.headers_mut(), "x-amzn-RequestId", &request_id);
            Ok(resp)
        }
        InvocationType::Event => {
            if body.len() > MAX_EVENT_PAYLOAD {
                return Err(ApiError::too_large(MAX_EVENT_PAYLOAD, "Invoke"));
            }
            // Durable: fsyncs, so off the async executor.
            let (events, tenant, name, id) = (
                state.events.clone(),
                caller.0.id.clone(),
                rec.name.clone(),
                request_id.clone(),
            );
            tokio::task::spawn_blocking(move || events.enqueue(&tenant, &name, &id, &body))
                .await
                .map_err(|e| ApiError::service(format!("could not queue the event: {e}")))?
                .map_err(|e| event_error(&e))?;
            let mut resp = StatusCode::ACCEPTED.into_response();
            set(resp.headers_mut(), "x-amzn-RequestId", &request_id);
            Ok(resp)
        }
        InvocationType::RequestResponse => {
            let spec = state.spec(&caller.0, &rec);
            let input = InvokeInput {
                request_id: request_id.clone(),
                payload: body.to_vec(),
                client_context: context,
                trace_id: header(&headers, "x-amzn-trace-id").map(str::to_string),
            };
            let result = state.dispatcher.invoke(spec, input).await;
            if let Ok(out) = &result {
                let log = InvocationLog {
                    request_id: request_id.clone(),
                    tenant: caller.0.id.clone(),
                    function: rec.name.clone(),
                    timestamp: timefmt::lambda_timestamp(SystemTime::now()),
                    outcome: outcome_name(&out.result.outcome).to_string(),
                    slot_id: out.slot_id.clone(),
                    cold_start: out.cold_start,
                    duration_us: out.result.duration_us,
                    log_tail: out.result.log_tail.clone(),
                };
                if let Err(e) = state.registry.record_invocation(&log) {
                    tracing::warn!(error = %e, "could not record the invocation's logs");
                }
            }
            Ok(invoke_response(&request_id, &result, tail, rec.timeout_s))
        }
    }
}

#[cfg(test)]
#[path = "invoke_tests.rs"]
mod tests;
