//! Reserved concurrency: Put/Get/DeleteFunctionConcurrency. The sum of a
//! tenant's reservations may not exceed its concurrency limit (checked
//! under the tenant's reservations lock; registry work on the blocking pool).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::json;

use super::error::ApiError;
use super::functions::{load, registry};
use super::shapes::{parse_body, ConcurrencyRequest};
use super::{resolve_name, AppState, Caller};

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
    let name = resolve_name(&caller.0, &name, None)?;
    let _function = state.changes.function(&caller.0.id, &name).await;
    let _reservations = state.changes.reservations(&caller.0.id).await;
    let rec = load(&state, &caller.0, &name, None).await?;
    let (t, f) = (caller.0.id.clone(), rec.name.clone());
    let others = registry(&state, move |r| r.reserved_total_except(&t, &f)).await?;
    let limit = u64::from(caller.0.concurrency);
    if others + u64::from(n) > limit {
        return Err(ApiError::invalid_parameter(format!(
            "Specified ReservedConcurrentExecutions for function decreases account's \
             UnreservedConcurrentExecution below its minimum value of [0]: the account's limit is \
             {limit} and other functions reserve {others}"
        )));
    }
    let (t, f) = (caller.0.id.clone(), rec.name.clone());
    registry(&state, move |r| r.set_reserved_concurrency(&t, &f, Some(n))).await?;
    Ok(Json(json!({ "ReservedConcurrentExecutions": n })).into_response())
}

/// GetFunctionConcurrency → the reservation, or `{}` without one.
pub async fn get(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let rec = load(&state, &caller.0, &name, None).await?;
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
    let name = resolve_name(&caller.0, &name, None)?;
    let _function = state.changes.function(&caller.0.id, &name).await;
    let rec = load(&state, &caller.0, &name, None).await?;
    let (t, f) = (caller.0.id.clone(), rec.name.clone());
    registry(&state, move |r| r.set_reserved_concurrency(&t, &f, None)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
