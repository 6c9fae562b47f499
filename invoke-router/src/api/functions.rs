//! Function CRUD: CreateFunction, GetFunction(Configuration), ListFunctions,
//! UpdateFunctionCode, UpdateFunctionConfiguration, DeleteFunction.
//!
//! Every change stores code first (fsynced, see `codestore.rs`), then
//! writes the registry in one transaction that also checks the tenant's
//! quotas, so a failure leaves nothing half-created; VMs of the old revision
//! are retired after the registry changed. Changes lock the one function
//! they change (and the code version they store or remove, see `locks.rs`),
//! so one tenant's slow upload never holds up another's. SQLite, mkfs and
//! file work run on the blocking pool, never on an executor thread.

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
use super::{resolve_name, AppState, Caller, Tenant};
use crate::codestore::{CodeError, CodeStore, StoredCode};
use crate::registry::{FunctionRecord, Registry, RegistryError};
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

/// Registry work, on the blocking pool.
pub(super) async fn registry<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&Registry) -> Result<T, RegistryError> + Send + 'static,
) -> Result<T, ApiError> {
    Ok(state.registry.blocking(f).await?)
}

/// Code store work (unzip, mkfs, hashing), on the blocking pool.
async fn code_store<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&CodeStore) -> Result<T, CodeError> + Send + 'static,
) -> Result<T, ApiError> {
    let code = state.code.clone();
    let done = tokio::task::spawn_blocking(move || f(&code))
        .await
        .map_err(|e| ApiError::service(format!("code store task failed: {e}")))?;
    done.map_err(|e| match e {
        CodeError::Invalid(m) => ApiError::invalid_parameter(m),
        CodeError::Internal(m) => ApiError::service(m),
    })
}

/// Parses a body that may carry a 50 MiB zip (70 MB of JSON), on the
/// blocking pool: it takes a while.
async fn parse_large<T: serde::de::DeserializeOwned + Send + 'static>(
    body: Bytes,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(move || parse_body(&body))
        .await
        .map_err(|e| ApiError::service(format!("parsing task failed: {e}")))?
}

/// Decodes `Code.ZipFile` (base64), on the blocking pool; `elsewhere`: the
/// code was given as S3 or an image instead.
async fn decode_large(zip_b64: Option<String>, elsewhere: bool) -> Result<Vec<u8>, ApiError> {
    tokio::task::spawn_blocking(move || decode_zip(zip_b64.as_deref(), elsewhere, false))
        .await
        .map_err(|e| ApiError::service(format!("decoding task failed: {e}")))?
}

/// Loads the caller's function named by a path parameter, or 404 (the
/// async twin of [`AppState::function`]).
pub(super) async fn load(
    state: &AppState,
    tenant: &Tenant,
    raw: &str,
    qualifier: Option<&str>,
) -> Result<FunctionRecord, ApiError> {
    let name = resolve_name(tenant, raw, qualifier)?;
    let (t, n) = (tenant.id.clone(), name.clone());
    registry(state, move |r| r.get(&t, &n))
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!("Function not found: {}", state.arn(tenant, &name)))
        })
}

/// Stores a zip, returning it held by its code lock: the lock must be kept
/// until the registry row naming the code is committed (or the code
/// collected again). A failed store leaves no code behind.
async fn store_code(
    state: &AppState,
    zip: Vec<u8>,
) -> Result<(StoredCode, crate::locks::KeyGuard), ApiError> {
    let zip = Arc::new(zip);
    let z = zip.clone();
    let stored = code_store(state, move |c| c.describe(&z)).await?;
    let lock = state.changes.code(&stored.sha256_hex).await;
    let s = stored.clone();
    if let Err(e) = code_store(state, move |c| c.put(&zip, &s)).await {
        collect_locked(state, &stored.sha256_hex).await;
        return Err(e);
    }
    Ok((stored, lock))
}

/// Removes code no function uses any more; the caller holds its code lock.
async fn collect_locked(state: &AppState, sha256_hex: &str) {
    let code = state.code.clone();
    let sha = sha256_hex.to_string();
    let collected = registry(state, move |r| {
        if !r.code_in_use(&sha)? {
            code.remove(&sha);
        }
        Ok(())
    })
    .await;
    if let Err(e) = collected {
        tracing::warn!(error = %e, "cannot tell whether code is still used");
    }
}

/// Removes code no function uses any more.
async fn collect_code(state: &AppState, sha256_hex: &str) {
    let _lock = state.changes.code(sha256_hex).await;
    collect_locked(state, sha256_hex).await;
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
    let req: CreateFunctionRequest = parse_large(body).await?;
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
    let zip = decode_large(
        code.zip_file,
        code.s3_bucket.is_some() || code.image_uri.is_some(),
    )
    .await?;

    let tenant = caller.0.clone();
    let _function = state.changes.function(&tenant.id, name).await;
    let (t, n) = (tenant.id.clone(), name.to_string());
    let (exists, usage) = registry(&state, move |r| {
        Ok((r.get(&t, &n)?.is_some(), r.usage(&t)?))
    })
    .await?;
    if exists {
        return Err(ApiError::conflict(format!(
            "Function already exist: {name}"
        )));
    }
    // Before the costly store; the registry checks again as it commits.
    tenant
        .quotas
        .check_create(usage, zip.len() as u64)
        .map_err(|q| ApiError::quota(&q))?;
    let (stored, _code) = store_code(&state, zip).await?;
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
    let (r2, quotas) = (rec.clone(), tenant.quotas);
    if let Err(e) = state
        .registry
        .blocking(move |r| r.create_within(&r2, &quotas))
        .await
    {
        collect_locked(&state, &stored.sha256_hex).await;
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
    let rec = load(&state, &caller.0, &name, qualifier(&q)).await?;
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
    let rec = load(&state, &caller.0, &name, qualifier(&q)).await?;
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
    let marker = q.get("Marker").filter(|m| !m.is_empty()).cloned();
    let tenant = caller.0.id.clone();
    let mut recs = registry(&state, move |r| r.list(&tenant, marker.as_deref(), max + 1)).await?;
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
    let req: UpdateCodeRequest = parse_large(body).await?;
    check_architectures(req.architectures.as_ref())?;
    let elsewhere = req.s3_bucket.is_some() || req.image_uri.is_some();
    let zip = decode_large(req.zip_file.clone(), elsewhere).await?;
    let tenant = caller.0.clone();
    let name = resolve_name(&tenant, &name, None)?;
    let _function = state.changes.function(&tenant.id, &name).await;
    let mut rec = load(&state, &tenant, &name, None).await?;
    let (t, n) = (tenant.id.clone(), name.clone());
    let others = registry(&state, move |r| r.usage_except(&t, &n)).await?;
    tenant
        .quotas
        .check_code(others, zip.len() as u64)
        .map_err(|q| ApiError::quota(&q))?;
    let (stored, code_lock) = store_code(&state, zip).await?;
    if req.dry_run == Some(true) {
        collect_locked(&state, &stored.sha256_hex).await;
        return Ok(Json(configuration(&state, &caller, &rec)).into_response());
    }
    let old_code = std::mem::replace(&mut rec.code_sha256_hex, stored.sha256_hex.clone());
    rec.code_sha256_base64 = stored.sha256_base64;
    rec.code_size = stored.size;
    (rec.revision_id, rec.last_modified) = new_revision();
    let (r2, expected, quotas) = (rec.clone(), req.revision_id.clone(), tenant.quotas);
    if let Err(e) = registry(&state, move |r| {
        r.update_within(&r2, expected.as_deref(), &quotas)
    })
    .await
    {
        collect_locked(&state, &stored.sha256_hex).await;
        return Err(e);
    }
    drop(code_lock);
    state.dispatcher.retire(&tenant.id, &rec.name).await;
    if old_code != rec.code_sha256_hex {
        collect_code(&state, &old_code).await;
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
    let name = resolve_name(&caller.0, &name, None)?;
    let _function = state.changes.function(&caller.0.id, &name).await;
    let mut rec = load(&state, &caller.0, &name, None).await?;
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
    let (r2, expected) = (rec.clone(), req.revision_id.clone());
    registry(&state, move |r| r.update(&r2, expected.as_deref())).await?;
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
    let name = resolve_name(&caller.0, &name, qualifier(&q))?;
    let _function = state.changes.function(&caller.0.id, &name).await;
    let rec = load(&state, &caller.0, &name, None).await?;
    let (t, n) = (caller.0.id.clone(), rec.name.clone());
    let rec = registry(&state, move |r| r.delete(&t, &n)).await?;
    state.dispatcher.retire(&caller.0.id, &rec.name).await;
    collect_code(&state, &rec.code_sha256_hex).await;
    tracing::info!(tenant = %caller.0.id, function = %rec.name, "function deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}
