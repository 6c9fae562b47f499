//! The Lambda HTTP API (axum): routes, authentication, body limits and
//! request metrics. One file per group of operations.
//!
//! | method | path | operation |
//! | --- | --- | --- |
//! | POST | `/2015-03-31/functions` | CreateFunction |
//! | GET | `/2015-03-31/functions/` | ListFunctions (`Marker`, `MaxItems`) |
//! | GET | `/2015-03-31/functions/{name}` | GetFunction |
//! | DELETE | `/2015-03-31/functions/{name}` | DeleteFunction |
//! | GET/PUT | `/2015-03-31/functions/{name}/configuration` | Get/UpdateFunctionConfiguration |
//! | PUT | `/2015-03-31/functions/{name}/code` | UpdateFunctionCode |
//! | POST | `/2015-03-31/functions/{name}/invocations` | Invoke |
//! | GET | `/2015-03-31/functions/{name}/invocations/{request_id}/logs` | Ember: an invocation's log tail and outcome |
//! | PUT/DELETE | `/2017-10-31/functions/{name}/concurrency` | Put/DeleteFunctionConcurrency |
//! | GET | `/2019-09-30/functions/{name}/concurrency` | GetFunctionConcurrency |
//! | GET | `/metrics` | Prometheus text (not signed) |

mod auth;
mod concurrency;
pub mod error;
mod functions;
pub mod invoke;
mod logs;
pub mod shapes;

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::Method;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;

use crate::codestore::CodeStore;
use crate::config::{ServeConfig, TenantConfig};
use crate::dispatch::{Dispatcher, FunctionSpec};
use crate::events::EventQueue;
use crate::locks::ChangeLocks;
use crate::metrics::Metrics;
use crate::registry::{FunctionRecord, Registry};
use error::ApiError;

/// A tenant as the API sees it.
#[derive(Debug, Clone)]
pub struct Tenant {
    /// Tenant id (namespace of its functions).
    pub id: String,
    /// Account id in its ARNs.
    pub account: String,
    /// Its concurrency limit.
    pub concurrency: u32,
    /// Its storage quotas.
    pub quotas: crate::quotas::Quotas,
}

/// The authenticated caller, put in each request's extensions.
#[derive(Debug, Clone)]
pub struct Caller(pub Arc<Tenant>);

/// What every handler shares.
pub struct AppState {
    /// Region in ARNs.
    pub region: String,
    /// Access key id → (secret, tenant).
    pub keys: HashMap<String, (String, Arc<Tenant>)>,
    /// Tenant id → tenant.
    pub tenants: HashMap<String, Arc<Tenant>>,
    /// The registry.
    pub registry: Arc<Registry>,
    /// The code store.
    pub code: CodeStore,
    /// The data plane.
    pub dispatcher: Arc<Dispatcher>,
    /// Event invocations.
    pub events: Arc<EventQueue>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Locks per function and per code version (see `locks.rs`): changes
    /// to one function wait for each other only.
    pub changes: ChangeLocks,
}

impl AppState {
    /// Builds the state from the settings and the opened parts.
    pub fn new(
        config: &ServeConfig,
        registry: Arc<Registry>,
        code: CodeStore,
        dispatcher: Arc<Dispatcher>,
        events: Arc<EventQueue>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let mut keys = HashMap::new();
        let mut tenants = HashMap::new();
        for t in &config.tenants {
            let tenant = Arc::new(tenant_of(t));
            for k in &t.keys {
                keys.insert(
                    k.access_key_id.clone(),
                    (k.secret_access_key.clone(), tenant.clone()),
                );
            }
            tenants.insert(t.id.clone(), tenant);
        }
        Self {
            region: config.region.clone(),
            keys,
            tenants,
            registry,
            code,
            dispatcher,
            events,
            metrics,
            changes: ChangeLocks::default(),
        }
    }

    /// A function's ARN.
    pub fn arn(&self, tenant: &Tenant, name: &str) -> String {
        format!(
            "arn:aws:lambda:{}:{}:function:{name}",
            self.region, tenant.account
        )
    }

    /// What the data plane needs to run a stored function.
    pub fn spec(&self, tenant: &Tenant, rec: &FunctionRecord) -> Arc<FunctionSpec> {
        Arc::new(FunctionSpec {
            tenant: rec.tenant.clone(),
            name: rec.name.clone(),
            arn: self.arn(tenant, &rec.name),
            revision: rec.revision_id.clone(),
            code_image: self.code.image_path(&rec.code_sha256_hex),
            runtime: rec.runtime.kind(),
            handler: rec.handler.clone(),
            env: rec
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            memory_mib: rec.memory_mib,
            timeout: std::time::Duration::from_secs(u64::from(rec.timeout_s)),
            reserved_concurrency: rec.reserved_concurrency,
        })
    }

    /// The current spec of (tenant id, function), for the event worker.
    pub fn resolve(&self, tenant: &str, name: &str) -> Option<Arc<FunctionSpec>> {
        let t = self.tenants.get(tenant)?;
        let rec = self.registry.get(tenant, name).ok()??;
        Some(self.spec(t, &rec))
    }

    /// Loads a function of the caller named by a path parameter, or 404.
    pub fn function(
        &self,
        tenant: &Tenant,
        raw: &str,
        qualifier: Option<&str>,
    ) -> Result<FunctionRecord, ApiError> {
        let name = resolve_name(tenant, raw, qualifier)?;
        self.registry.get(&tenant.id, &name)?.ok_or_else(|| {
            ApiError::not_found(format!("Function not found: {}", self.arn(tenant, &name)))
        })
    }
}

fn tenant_of(t: &TenantConfig) -> Tenant {
    Tenant {
        id: t.id.clone(),
        account: t.account(),
        concurrency: t.concurrency,
        quotas: t.quotas,
    }
}

/// The function name in a path parameter: a name, `name:qualifier`, a
/// partial ARN (`ACCOUNT:function:name`) or a full ARN. Another account's
/// ARN, or a qualifier other than `$LATEST`, names nothing of the caller's.
pub fn resolve_name(
    tenant: &Tenant,
    raw: &str,
    qualifier: Option<&str>,
) -> Result<String, ApiError> {
    let not_found = || {
        ApiError::not_found(format!(
            "Function not found: {}",
            shapes::truncate(raw, 170)
        ))
    };
    if raw.len() > 170 {
        return Err(ApiError::validation("Value at 'functionName' failed to satisfy constraint: Member must have length less than or equal to 170"));
    }
    let parts: Vec<&str> = raw.split(':').collect();
    let (account, name, inline_qualifier) = match parts.as_slice() {
        [name] => (None, *name, None),
        [name, q] => (None, *name, Some(*q)),
        [acct, "function", name] => (Some(*acct), *name, None),
        [acct, "function", name, q] => (Some(*acct), *name, Some(*q)),
        ["arn", "aws", "lambda", _region, acct, "function", name] => (Some(*acct), *name, None),
        ["arn", "aws", "lambda", _region, acct, "function", name, q] => {
            (Some(*acct), *name, Some(*q))
        }
        _ => {
            return Err(shapes::check_function_name(raw)
                .err()
                .unwrap_or_else(not_found))
        }
    };
    shapes::check_function_name(name)?;
    if account.is_some_and(|a| a != tenant.account) {
        return Err(not_found());
    }
    for q in [inline_qualifier, qualifier].into_iter().flatten() {
        if q != "$LATEST" {
            return Err(not_found());
        }
    }
    Ok(name.to_string())
}

/// The full router over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    let signed = Router::new()
        .route(
            "/2015-03-31/functions",
            post(functions::create).get(functions::list),
        )
        .route(
            "/2015-03-31/functions/",
            post(functions::create).get(functions::list),
        )
        .route(
            "/2015-03-31/functions/{name}",
            get(functions::get).delete(functions::delete),
        )
        .route(
            "/2015-03-31/functions/{name}/configuration",
            get(functions::get_configuration).put(functions::update_configuration),
        )
        .route(
            "/2015-03-31/functions/{name}/code",
            put(functions::update_code),
        )
        .route(
            "/2015-03-31/functions/{name}/invocations",
            post(invoke::invoke),
        )
        .route(
            "/2015-03-31/functions/{name}/invocations/{request_id}/logs",
            get(logs::invocation_logs),
        )
        .route(
            "/2017-10-31/functions/{name}/concurrency",
            put(concurrency::put).delete(concurrency::delete),
        )
        .route(
            "/2019-09-30/functions/{name}/concurrency",
            get(concurrency::get),
        )
        .fallback(unknown_operation)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ));
    Router::new()
        .route("/metrics", get(metrics))
        .merge(signed)
        .layer(middleware::from_fn_with_state(state.clone(), count_request))
        .with_state(state)
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics.render(),
    )
        .into_response()
}

async fn unknown_operation() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::NOT_FOUND,
        "UnknownOperationException",
        "Unknown operation",
    )
}

async fn count_request(
    State(state): State<Arc<AppState>>,
    req: axum::extract::Request,
    next: middleware::Next,
) -> Response {
    let op = operation_name(req.method(), req.uri().path());
    let resp = next.run(req).await;
    state.metrics.record_request(op, resp.status().as_u16());
    resp
}

/// The Lambda operation a request calls, for metrics and limits.
pub fn operation_name(method: &Method, path: &str) -> &'static str {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    match (method.as_str(), segs.as_slice()) {
        (_, ["metrics"]) => "Metrics",
        ("POST", [_, "functions"]) => "CreateFunction",
        ("GET", [_, "functions"]) => "ListFunctions",
        ("GET", [_, "functions", _]) => "GetFunction",
        ("DELETE", [_, "functions", _]) => "DeleteFunction",
        ("GET", [_, "functions", _, "configuration"]) => "GetFunctionConfiguration",
        ("PUT", [_, "functions", _, "configuration"]) => "UpdateFunctionConfiguration",
        ("PUT", [_, "functions", _, "code"]) => "UpdateFunctionCode",
        ("POST", [_, "functions", _, "invocations"]) => "Invoke",
        ("GET", [_, "functions", _, "invocations", _, "logs"]) => "GetInvocationLogs",
        ("PUT", [_, "functions", _, "concurrency"]) => "PutFunctionConcurrency",
        ("DELETE", [_, "functions", _, "concurrency"]) => "DeleteFunctionConcurrency",
        ("GET", [_, "functions", _, "concurrency"]) => "GetFunctionConcurrency",
        _ => "Unknown",
    }
}
