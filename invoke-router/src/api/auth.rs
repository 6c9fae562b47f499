//! Authentication: every request but `/metrics` carries a SigV4 signature
//! made with one of a tenant's keys.
//!
//! The headers are checked first (known key, date window, signed header
//! set; the whole signature when the client declared its payload hash), so
//! nothing of an unknown caller's body is read. Only then is the body read,
//! bounded by the operation's Lambda limit and the body deadline, and hashed
//! as it streams in; the signature's payload hash is checked at its end.

use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::{operation_name, AppState, Caller};
use crate::edge::body::{drain, read_hashed, BodyError, DRAIN_PAST_LIMIT};
use crate::edge::limits::BodyLimit;
use crate::sigv4::{self, RequestHead};

/// Headers that change what a request does: when present, they must be
/// signed (boto3 and the AWS CLI sign every header they send but
/// `User-Agent`, `Expect` and `X-Amzn-Trace-Id`).
pub const MUST_BE_SIGNED: [&str; 3] = [
    "x-amz-invocation-type",
    "x-amz-log-type",
    "x-amz-client-context",
];

/// Verifies the signature, reads the body, and hands the request on with
/// the caller's [`Caller`] in its extensions.
pub async fn authenticate(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    match check(&state, req).await {
        Ok(req) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

async fn check(state: &AppState, req: Request) -> Result<Request, ApiError> {
    let (mut parts, body) = req.into_parts();
    let headers = header_list(&parts);
    let head = RequestHead {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or(""),
        headers: &headers,
    };
    let lookup = |key: &str| state.keys.get(key).map(|(secret, _)| secret.clone());
    let pending = sigv4::verify_head(&head, "lambda", SystemTime::now(), lookup, &MUST_BE_SIGNED)
        .map_err(forbidden)?;
    let tenant = state
        .keys
        .get(&pending.authorization().access_key_id)
        .map(|(_, t)| t.clone())
        .ok_or_else(|| forbidden(sigv4::AuthError::UnknownKey))?;

    let operation = operation_name(&parts.method, parts.uri.path());
    let invocation_type = parts
        .headers
        .get("x-amz-invocation-type")
        .and_then(|v| v.to_str().ok());
    let limit = BodyLimit::of(operation, invocation_type);
    let declared = parts
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let deadline = tokio::time::Instant::now() + state.body_timeout;
    let mut body = body;
    let too_large = || ApiError::too_large_with(limit.message(declared));
    if declared.is_some_and(|n| n > limit.max as u64) {
        // The caller is known: take (and drop) a body a little over the
        // limit, so a client that writes it all before reading sees the 413.
        let most = limit.max as u64 + DRAIN_PAST_LIMIT;
        if declared.is_some_and(|n| n <= most) {
            drain(&mut body, most, deadline).await;
        }
        return Err(too_large());
    }
    let body = match read_hashed(&mut body, limit.max, declared, deadline).await {
        Ok(b) => b,
        Err(BodyError::TooLarge(_)) => {
            drain(&mut body, DRAIN_PAST_LIMIT, deadline).await;
            return Err(too_large());
        }
        Err(BodyError::TimedOut) => return Err(ApiError::body_timeout(state.body_timeout)),
        Err(BodyError::Read(e)) => {
            return Err(ApiError::bad_content(format!(
                "could not read the request body: {e}"
            )))
        }
    };
    pending.finish(&body.sha256).map_err(forbidden)?;
    parts.extensions.insert(Caller(tenant));
    Ok(Request::from_parts(parts, Body::from(body.bytes)))
}

fn forbidden(e: sigv4::AuthError) -> ApiError {
    ApiError::forbidden(e.code(), e.to_string())
}

/// The headers as (name, value) text, with `host` from the URI for a
/// client that sent none (HTTP/2's `:authority`).
fn header_list(parts: &Parts) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    if !headers.iter().any(|(n, _)| n == "host") {
        if let Some(a) = parts.uri.authority() {
            headers.push(("host".into(), a.to_string()));
        }
    }
    headers
}
