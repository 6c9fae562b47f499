//! Function CRUD: CreateFunction, GetFunction(Configuration), ListFunctions,
//! UpdateFunctionCode, UpdateFunctionConfiguration, DeleteFunction.
//!
//! Every change stores code first, then writes the registry in one
//! statement, so a failure leaves nothing half-created; VMs of the old
//! revision are retired after the registry changed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::json;

use super::error::ApiError;
use super::shapes::{self, *};
use super::{AppState, Caller};
use crate::codestore::{CodeError, StoredCode};
use crate::registry::{FunctionRecord, RegistryError};
use crate::timefmt;

/// ListFunctions' page size limits.
const MAX_ITEMS: usize = 10_000;
const DEFAULT_ITEMS: usize = 50;

fn new_revision() -> (String, String) {
    (
        uuid::Uuid::new_v4().to_string(),
        timefmt::lambda_timestamp(SystemTime::now()),
    )
}

/// Stores a zip off the async runtime (mkfs takes a moment).
async fn store_code(state: &Arc<AppState>, zip: Vec<u8>) -> Result<StoredCode, ApiError> {
    let code = state.code.clone();
    let stored = tokio::task::spawn_blocking(move || code.store(&zip))
        .await
        .map_err(|e| ApiError::service(format!("code store task failed: {e}")))?;
    stored.map_err(|e| match e {
        CodeError::Invalid(m) => ApiError::invalid_parameter(m),
        CodeError::Internal(m) => ApiError::service(m),
    })
}

/// Removes code no function uses any more.
fn collect_code(state: &AppState, sha256_hex: &str) {
    match state.registry.code_in_use(sha256_hex) {
        Ok(false) => state.code.remove(sha256_hex),
        Ok(true) => {}
        Err(e) => tracing::warn!(error = %e, "cannot tell whether code is still used"),
    }
}

fn configuration(state: &AppState, caller: &Caller, rec: &FunctionRecord) -> FunctionConfiguration {
    FunctionConfiguration::from_record(rec, state.arn(&caller.0, &rec.name))
}

/// CreateFunction: `POST /2015-03-31/functions` → 201 FunctionConfiguration.
pub async fn create(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: CreateFunctionRequest = parse_body(&body)?;
    let name = req
        .function_name
        .as_deref()
        .ok_or_else(|| ApiError::invalid_parameter("FunctionName is required"))?;
    check_function_name(name)?;
    if req.package_type.as_deref().is_some_and(|p| p != "Zip") {
        return Err(ApiError::invalid_parameter(
            "Ember runs Zip packages only (PackageType Zip)",
        ));
    }
    check_architectures(req.architectures.as_ref())?;
    let runtime = req
        .runtime
        .as_deref()
        .ok_or_else(|| ApiError::invalid_parameter("Runtime is required for a Zip package"))?;
    let runtime = check_runtime(runtime)?;
    let handler = req
        .handler
        .as_deref()
        .ok_or_else(|| ApiError::invalid_parameter("Handler is required for a Zip package"))?;
    check_handler(runtime, handler)?;
    let memory = check_memory(req.memory_size.unwrap_or(128))?;
    let timeout = check_timeout(req.timeout.unwrap_or(3))?;
    let description = req.description.unwrap_or_default();
    check_description(&description)?;
    let env = req.environment.map(|e| e.variables).unwrap_or_default();
    check_environment(&env)?;
    let code = req.code.unwrap_or_default();
    let zip = decode_zip(
        code.zip_file.as_deref(),
        code.s3_bucket.is_some(),
        code.image_uri.is_some(),
    )?;

    let _changes = state.changes.lock().await;
    if state.registry.get(&caller.0.id, name)?.is_some() {
        return Err(ApiError::conflict(format!(
            "Function already exist: {name}"
        )));
    }
    let stored = store_code(&state, zip).await?;
    let (revision_id, last_modified) = new_revision();
    let rec = FunctionRecord {
        tenant: caller.0.id.clone(),
        name: name.to_string(),
        runtime,
        handler: handler.to_string(),
        role: req.role.unwrap_or_default(),
        description,
        memory_mib: memory,
        timeout_s: timeout,
        env,
        code_sha256_hex: stored.sha256_hex.clone(),
        code_sha256_base64: stored.sha256_base64,
        code_size: stored.size,
        revision_id,
        last_modified,
        reserved_concurrency: None,
    };
    if let Err(e) = state.registry.create(&rec) {
        collect_code(&state, &stored.sha256_hex);
        return Err(match e {
            RegistryError::Conflict => {
                ApiError::conflict(format!("Function already exist: {name}"))
            }
            other => other.into(),
        });
    }
    tracing::info!(tenant = %caller.0.id, function = %name, "function created");
    Ok((
        StatusCode::CREATED,
        Json(configuration(&state, &caller, &rec)),
    )
        .into_response())
}

/// The `Qualifier` query parameter.
fn qualifier(q: &HashMap<String, String>) -> Option<&str> {
    q.get("Qualifier").map(String::as_str)
}

/// GetFunction: configuration, code info and reserved concurrency.
pub async fn get(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let rec = state.function(&caller.0, &name, qualifier(&q))?;
    let mut body = json!({
        "Configuration": configuration(&state, &caller, &rec),
        "Code": { "RepositoryType": "S3" },
    });
    if let Some(n) = rec.reserved_concurrency {
        body["Concurrency"] = json!({ "ReservedConcurrentExecutions": n });
    }
    Ok(Json(body).into_response())
}

/// GetFunctionConfiguration.
pub async fn get_configuration(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let rec = state.function(&caller.0, &name, qualifier(&q))?;
    Ok(Json(configuration(&state, &caller, &rec)).into_response())
}

/// ListFunctions: by name, `MaxItems` per page (default 50), `NextMarker`
/// when more follow.
pub async fn list(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let max = match q.get("MaxItems") {
        None => DEFAULT_ITEMS,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_ITEMS).contains(&n) => n,
            _ => {
                return Err(ApiError::validation(format!(
                    "1 validation error detected: Value '{}' at 'maxItems' failed to satisfy constraint: \
                     Member must have value between 1 and {MAX_ITEMS}",
                    shapes::truncate(v, 32)
                )))
            }
        },
    };
    let marker = q
        .get("Marker")
        .map(String::as_str)
        .filter(|m| !m.is_empty());
    let mut recs = state.registry.list(&caller.0.id, marker, max + 1)?;
    let next = if recs.len() > max {
        recs.truncate(max);
        recs.last().map(|r| r.name.clone())
    } else {
        None
    };
    let functions: Vec<_> = recs
        .iter()
        .map(|r| configuration(&state, &caller, r))
        .collect();
    let mut body = json!({ "Functions": functions });
    if let Some(n) = next {
        body["NextMarker"] = json!(n);
    }
    Ok(Json(body).into_response())
}

/// UpdateFunctionCode: new zip, new revision.
pub async fn update_code(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: UpdateCodeRequest = parse_body(&body)?;
    check_architectures(req.architectures.as_ref())?;
    let zip = decode_zip(
        req.zip_file.as_deref(),
        req.s3_bucket.is_some(),
        req.image_uri.is_some(),
    )?;
    let _changes = state.changes.lock().await;
    let mut rec = state.function(&caller.0, &name, None)?;
    let stored = store_code(&state, zip).await?;
    if req.dry_run == Some(true) {
        collect_code(&state, &stored.sha256_hex);
        return Ok(Json(configuration(&state, &caller, &rec)).into_response());
    }
    let old_code = std::mem::replace(&mut rec.code_sha256_hex, stored.sha256_hex.clone());
    rec.code_sha256_base64 = stored.sha256_base64;
    rec.code_size = stored.size;
    (rec.revision_id, rec.last_modified) = new_revision();
    if let Err(e) = state.registry.update(&rec, req.revision_id.as_deref()) {
        collect_code(&state, &stored.sha256_hex);
        return Err(e.into());
    }
    state.dispatcher.retire(&caller.0.id, &rec.name).await;
    if old_code != rec.code_sha256_hex {
        collect_code(&state, &old_code);
    }
    Ok(Json(configuration(&state, &caller, &rec)).into_response())
}

/// UpdateFunctionConfiguration: the fields given replace the old ones.
pub async fn update_configuration(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: UpdateConfigRequest = parse_body(&body)?;
    let _changes = state.changes.lock().await;
    let mut rec = state.function(&caller.0, &name, None)?;
    if let Some(r) = req.runtime {
        rec.runtime = check_runtime(&r)?;
    }
    if let Some(h) = req.handler {
        rec.handler = h;
    }
    check_handler(rec.runtime, &rec.handler)?;
    if let Some(m) = req.memory_size {
        rec.memory_mib = check_memory(m)?;
    }
    if let Some(t) = req.timeout {
        rec.timeout_s = check_timeout(t)?;
    }
    if let Some(d) = req.description {
        check_description(&d)?;
        rec.description = d;
    }
    if let Some(role) = req.role {
        rec.role = role;
    }
    if let Some(env) = req.environment {
        check_environment(&env.variables)?;
        rec.env = env.variables;
    }
    (rec.revision_id, rec.last_modified) = new_revision();
    state.registry.update(&rec, req.revision_id.as_deref())?;
    state.dispatcher.retire(&caller.0.id, &rec.name).await;
    Ok(Json(configuration(&state, &caller, &rec)).into_response())
}

/// DeleteFunction: 204; its VMs are retired and unused code removed.
pub async fn delete(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let _changes = state.changes.lock().await;
    let rec = state.function(&caller.0, &name, qualifier(&q))?;
    let rec = state.registry.delete(&caller.0.id, &rec.name)?;
    state.dispatcher.retire(&caller.0.id, &rec.name).await;
    collect_code(&state, &rec.code_sha256_hex);
    tracing::info!(tenant = %caller.0.id, function = %rec.name, "function deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}
