//! The data plane: assigns invocations to warm or cold microVM slots.
//!
//! STAND-IN (API branch): only the shared interface, so that the API compiles.
//! The dispatch engineer's real implementation replaces this file at merge.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ember_protocol::{InvokeResult, RuntimeKind};

use crate::metrics::Metrics;

/// Everything the data plane needs to run one revision of a function.
#[derive(Debug, Clone)]
pub struct FunctionSpec {
    /// The owning tenant's id.
    pub tenant: String,
    /// The function's name (unique within the tenant).
    pub name: String,
    /// The function's ARN.
    pub arn: String,
    /// Changes on every code or configuration update; a VM never serves two revisions.
    pub revision: String,
    /// Read-only ext4 image holding the function's code (mounted at /var/task).
    pub code_image: PathBuf,
    /// Which runtime runs the handler.
    pub runtime: RuntimeKind,
    /// The handler (`_HANDLER`, or the `exec` command).
    pub handler: String,
    /// The function's environment variables.
    pub env: Vec<(String, String)>,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Per-invocation timeout.
    pub timeout: Duration,
    /// Reserved concurrency (PutFunctionConcurrency); Some(0) means throttled.
    pub reserved_concurrency: Option<u32>,
}

/// One invocation's input.
#[derive(Debug, Clone)]
pub struct InvokeInput {
    /// The request id (also the `X-Amzn-RequestId`).
    pub request_id: String,
    /// The event.
    pub payload: Vec<u8>,
    /// The decoded `X-Amz-Client-Context`, if any.
    pub client_context: Option<String>,
    /// The `X-Amzn-Trace-Id`, if any.
    pub trace_id: Option<String>,
}

/// How an invocation ran.
#[derive(Debug, Clone)]
pub struct InvokeOutput {
    /// The agent's result.
    pub result: InvokeResult,
    /// Whether a VM was started for it.
    pub cold_start: bool,
    /// Identifies the VM that ran it (tests check that VMs are never shared).
    pub slot_id: String,
}

/// Why an invocation could not run.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// Over a concurrency limit or no capacity in time → 429.
    #[error("{0}")]
    TooManyRequests(String),
    /// The VM or runtime broke (init error, crash before result) → 502.
    #[error("{0}")]
    RuntimeFailed(String),
    /// The platform could not serve it → 500.
    #[error("{0}")]
    Unavailable(String),
}

/// How the data plane runs VMs.
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    /// The `ember-vmm` binary.
    pub vmm: PathBuf,
    /// The guest kernel.
    pub kernel: PathBuf,
    /// The guest initramfs.
    pub initramfs: PathBuf,
    /// Per-VM dirs live under it.
    pub run_dir: PathBuf,
    /// Total guest memory the router may use.
    pub capacity_mem_mib: u64,
    /// Total vCPUs the router may use.
    pub capacity_vcpus: u32,
    /// Per-tenant concurrency limit.
    pub tenant_concurrency: u32,
    /// How long an idle VM is kept.
    pub keep_alive: Duration,
    /// How long an invocation may wait for a slot before 429.
    pub queue_wait: Duration,
    /// How often idle VMs are pinged.
    pub health_interval: Duration,
}

/// The data plane (stand-in: refuses every invocation).
#[derive(Debug)]
pub struct Dispatcher {
    _config: DispatchConfig,
}

impl Dispatcher {
    /// Creates the dispatcher and spawns its background tasks.
    pub fn new(config: DispatchConfig, _metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self { _config: config })
    }

    /// Runs one invocation on a slot of `spec`.
    pub async fn invoke(
        &self,
        _spec: Arc<FunctionSpec>,
        _input: InvokeInput,
    ) -> Result<InvokeOutput, DispatchError> {
        Err(DispatchError::Unavailable(
            "the dispatcher is a stand-in on this branch".into(),
        ))
    }

    /// Stops (after their in-flight invocation) every VM of this function.
    pub async fn retire(&self, _tenant: &str, _name: &str) {}

    /// Finishes in-flight invocations within `grace`, then stops every VM.
    pub async fn shutdown(&self, _grace: Duration) {}
}
