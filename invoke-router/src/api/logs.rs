//! Ember's invocation-logs route:
//! `GET /2015-03-31/functions/{name}/invocations/{request_id}/logs` returns
//! the outcome and the last 4 KiB of output of one of the function's recent
//! invocations (the last 1000 per function are kept), or, for an Event
//! invocation, its queue status and result.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::json;

use super::error::ApiError;
use super::invoke::{log_result, outcome_name};
use super::{AppState, Caller};
use crate::events::EventStatus;

/// The handler.
pub async fn invocation_logs(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path((name, request_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let rec = super::functions::load(&state, &caller.0, &name, None).await?;
    let unknown = || {
        ApiError::not_found(format!(
            "No invocation {request_id} of function {}",
            rec.name
        ))
    };
    if !ember_protocol::is_valid_request_id(&request_id) {
        return Err(unknown());
    }
    let (t, f, id) = (caller.0.id.clone(), rec.name.clone(), request_id.clone());
    let found = super::functions::registry(&state, move |r| r.invocation(&t, &f, &id)).await?;
    if let Some(log) = found {
        return Ok(Json(json!({
            "RequestId": log.request_id,
            "FunctionName": log.function,
            "InvocationType": "RequestResponse",
            "Timestamp": log.timestamp,
            "Outcome": log.outcome,
            "ColdStart": log.cold_start,
            "SlotId": log.slot_id,
            "DurationMs": log.duration_us as f64 / 1000.0,
            "LogResult": log_result(&log.log_tail),
            "Log": String::from_utf8_lossy(&log.log_tail),
        }))
        .into_response());
    }
    let event = state
        .events
        .get(&request_id)
        .filter(|e| e.tenant == caller.0.id && e.function == rec.name)
        .ok_or_else(unknown)?;
    let (status, attempts, error) = match &event.status {
        EventStatus::Queued => ("Queued", 0, None),
        EventStatus::Running { attempt } => ("Running", *attempt, None),
        EventStatus::Succeeded => ("Succeeded", 0, None),
        EventStatus::Failed { attempts, error } => ("Failed", *attempts, Some(error.clone())),
    };
    let mut body = json!({
        "RequestId": event.request_id,
        "FunctionName": event.function,
        "InvocationType": "Event",
        "Status": status,
        "Attempts": attempts,
    });
    if let Some(e) = error {
        body["Error"] = json!(e);
    }
    if let Some(r) = &event.result {
        body["Outcome"] = json!(outcome_name(&r.outcome));
        body["LogResult"] = json!(log_result(&r.log_tail));
        body["Log"] = json!(String::from_utf8_lossy(&r.log_tail));
        body["Payload"] = json!(String::from_utf8_lossy(&r.payload));
    }
    Ok(Json(body).into_response())
}
