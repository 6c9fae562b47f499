//! Reserved concurrency: Put/Get/DeleteFunctionConcurrency. The sum of a
//! tenant's reservations may not exceed its concurrency limit.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::json;

use super::error::ApiError;
use super::shapes::{parse_body, ConcurrencyRequest};
use super::{AppState, Caller};

/// PutFunctionConcurrency → `{"ReservedConcurrentExecutions": n}`.
pub async fn put(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: ConcurrencyRequest = parse_body(&body)?;
    let n = req
        .reserved_concurrent_executions
        .ok_or_else(|| ApiError::invalid_parameter("ReservedConcurrentExecutions is required"))?;
    let n = u32::try_from(n).map_err(|_| {
        ApiError::validation(format!(
            "1 validation error detected: Value '{n}' at 'reservedConcurrentExecutions' failed to \
             satisfy constraint: Member must have value greater than or equal to 0"
        ))
    })?;
    let _changes = state.changes.lock().await;
    let rec = state.function(&caller.0, &name, None)?;
    let others = state
        .registry
        .reserved_total_except(&caller.0.id, &rec.name)?;
    let limit = u64::from(caller.0.concurrency);
    if others + u64::from(n) > limit {
        return Err(ApiError::invalid_parameter(format!(
            "Specified ReservedConcurrentExecutions for function decreases account's \
             UnreservedConcurrentExecution below its minimum value of [0]: the account's limit is \
             {limit} and other functions reserve {others}"
        )));
    }
    state
        .registry
        .set_reserved_concurrency(&caller.0.id, &rec.name, Some(n))?;
    Ok(Json(json!({ "ReservedConcurrentExecutions": n })).into_response())
}

/// GetFunctionConcurrency → the reservation, or `{}` without one.
pub async fn get(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let rec = state.function(&caller.0, &name, None)?;
    let body = match rec.reserved_concurrency {
        Some(n) => json!({ "ReservedConcurrentExecutions": n }),
        None => json!({}),
    };
    Ok(Json(body).into_response())
}

/// DeleteFunctionConcurrency → 204.
pub async fn delete(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let _changes = state.changes.lock().await;
    let rec = state.function(&caller.0, &name, None)?;
    state
        .registry
        .set_reserved_concurrency(&caller.0.id, &rec.name, None)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
