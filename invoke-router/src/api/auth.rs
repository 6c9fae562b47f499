//! Authentication: every request but `/metrics` carries a SigV4 signature
//! made with one of a tenant's keys. The body is read here, bounded by the
//! operation's limit, because the signature covers it.

use std::sync::Arc;
use std::time::SystemTime;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::error::ApiError;
use super::{operation_name, AppState, Caller};
use crate::sigv4::{self, RequestParts};

/// Lambda's request limit for CreateFunction and UpdateFunctionCode: a
/// 50 MiB zip in base64 plus the rest of the JSON.
pub const MAX_CODE_REQUEST: usize = 70_167_211;
/// The largest body of any other operation but Invoke.
pub const MAX_OTHER_REQUEST: usize = 256 * 1024;

/// The body limit of an operation.
pub fn body_limit(operation: &str) -> usize {
    match operation {
        "Invoke" => ember_protocol::MAX_PAYLOAD_LEN,
        "CreateFunction" | "UpdateFunctionCode" => MAX_CODE_REQUEST,
        _ => MAX_OTHER_REQUEST,
    }
}

/// Reads the body, verifies the signature, and hands the request on with
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
    let operation = operation_name(&parts.method, parts.uri.path());
    let limit = body_limit(operation);
    let too_large = || ApiError::too_large(limit, operation);
    let declared = parts
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let bytes: Bytes = match Limited::new(body, limit).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return Err(too_large()),
        Err(e) => {
            return Err(ApiError::bad_content(format!(
                "could not read the request body: {e}"
            )))
        }
    };
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    // HTTP/1.1 clients send Host; an HTTP/2 client's :authority is in the URI.
    let mut headers = headers;
    if !headers.iter().any(|(n, _)| n == "host") {
        if let Some(a) = parts.uri.authority() {
            headers.push(("host".into(), a.to_string()));
        }
    }
    let request = RequestParts {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or(""),
        headers: &headers,
        body: &bytes,
    };
    let lookup = |key: &str| state.keys.get(key).map(|(secret, _)| secret.clone());
    let auth = sigv4::verify(&request, "lambda", SystemTime::now(), lookup)
        .map_err(|e| ApiError::forbidden(e.code(), e.to_string()))?;
    let tenant = state
        .keys
        .get(&auth.access_key_id)
        .map(|(_, t)| t.clone())
        .ok_or_else(|| {
            ApiError::forbidden(
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            )
        })?;
    parts.extensions.insert(Caller(tenant));
    Ok(Request::from_parts(parts, Body::from(bytes)))
}
