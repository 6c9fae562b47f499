//! `ember-invoke-router`: Ember's frontend, assignment, placement and
//! counting services in one binary.
//!
//! - `serve`: the Lambda API on `--listen` (default 127.0.0.1:9000), with
//!   settings from `--config FILE` (TOML or JSON) and flags on top.
//! - `up` (also without a subcommand): the README's start command (so far: says what it will do and
//!   prints the default tenant's credentials).
//!
//! Exit status: 0 after a clean shutdown, 1 on a runtime failure, 2 on bad
//! settings.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ember_invoke_router::config::{self, defaults, ConfigFile, ServeConfig, TenantConfig};
use ember_invoke_router::{runtimes, server};

mod up;

#[derive(Parser)]
#[command(
    name = "ember-invoke-router",
    version,
    about = "Ember's Lambda-compatible invoke router"
)]
struct Cli {
    /// Without a subcommand: `up`.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the Lambda API.
    Serve(Box<ServeArgs>),
    /// Start the platform: images, router, a sample `hello` function.
    Up(up::UpArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Config file (TOML, or JSON when it ends in .json).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Listen address [default: 127.0.0.1:9000].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Data directory (registry, code, images, queue, VM dirs)
    /// [default: $XDG_DATA_HOME/ember or ~/.local/share/ember].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Total guest memory the router may use, MiB [default: 4096].
    #[arg(long)]
    capacity_mem_mib: Option<u64>,
    /// Total guest vCPUs the router may use [default: 8].
    #[arg(long)]
    capacity_vcpus: Option<u32>,
    /// Guest kernel [default: `images/build --print-paths`].
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Guest initramfs [default: `images/build --print-paths`].
    #[arg(long)]
    initramfs: Option<PathBuf>,
    /// A managed runtime's image, NAME=PATH (repeatable) [default: the
    /// config file's [guest.runtimes], else `images/build --print-paths`].
    #[arg(long = "runtime-image", value_parser = runtimes::parse_flag)]
    runtime_images: Vec<(String, PathBuf)>,
    /// The ember-vmm binary [default: next to this one, else on PATH].
    #[arg(long)]
    vmm: Option<PathBuf>,
    /// A tenant with one key pair, ID:ACCESS_KEY_ID:SECRET (repeatable; adds
    /// to the config file's tenants).
    #[arg(long = "tenant", value_parser = config::parse_tenant_flag)]
    tenants: Vec<TenantConfig>,
    /// Region named in ARNs [default: us-east-1].
    #[arg(long)]
    region: Option<String>,
    /// Idle VMs are stopped after this many seconds [default: 300].
    #[arg(long)]
    keep_alive_secs: Option<u64>,
    /// Longest wait for a slot before 429, milliseconds [default: 1000].
    #[arg(long)]
    queue_wait_ms: Option<u64>,
    /// Log filter (tracing's EnvFilter syntax) [default: info, or RUST_LOG].
    #[arg(long)]
    log_level: Option<String>,
}

/// The default data home: `$XDG_DATA_HOME/ember`, else `~/.local/share/ember`.
fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("ember");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share/ember")
}

fn resolve(args: ServeArgs) -> Result<ServeConfig, config::ConfigError> {
    let file = match &args.config {
        Some(p) => ConfigFile::load(p)?,
        None => ConfigFile::default(),
    };
    let mut tenants = file.tenants;
    tenants.extend(args.tenants);
    let kernel = args.kernel.or(file.guest.kernel);
    let initramfs = args.initramfs.or(file.guest.initramfs);
    let guest_defaulted = kernel.is_none() || initramfs.is_none();
    let (kernel, initramfs) = match (kernel, initramfs) {
        (Some(k), Some(i)) => (k, i),
        (k, i) => {
            let (dk, di) = config::default_guest_images()?;
            (k.unwrap_or(dk), i.unwrap_or(di))
        }
    };
    let runtime_images = runtimes::RuntimeImages::resolve(
        &file.guest.runtimes,
        &args.runtime_images,
        guest_defaulted,
    )?;
    for (what, p) in [("kernel", &kernel), ("initramfs", &initramfs)] {
        if !p.is_file() {
            return Err(config::ConfigError::Invalid(format!(
                "guest {what} {} is not a file",
                p.display()
            )));
        }
    }
    let secs = Duration::from_secs;
    let cfg = ServeConfig {
        listen: args.listen.or(file.listen).unwrap_or_else(|| {
            defaults::LISTEN
                .parse()
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9000)))
        }),
        data_dir: args
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(default_data_dir),
        region: args
            .region
            .or(file.region)
            .unwrap_or_else(|| defaults::REGION.into()),
        capacity_mem_mib: args
            .capacity_mem_mib
            .or(file.capacity.memory_mib)
            .unwrap_or(defaults::CAPACITY_MEM_MIB),
        capacity_vcpus: args
            .capacity_vcpus
            .or(file.capacity.vcpus)
            .unwrap_or(defaults::CAPACITY_VCPUS),
        kernel,
        initramfs,
        runtime_images,
        vmm: args
            .vmm
            .or(file.guest.vmm)
            .unwrap_or_else(config::default_vmm),
        keep_alive: secs(
            args.keep_alive_secs
                .or(file.timing.keep_alive_secs)
                .unwrap_or(defaults::KEEP_ALIVE_SECS),
        ),
        queue_wait: Duration::from_millis(
            args.queue_wait_ms
                .or(file.timing.queue_wait_ms)
                .unwrap_or(defaults::QUEUE_WAIT_MS),
        ),
        health_interval: secs(
            file.timing
                .health_interval_secs
                .unwrap_or(defaults::HEALTH_INTERVAL_SECS),
        ),
        shutdown_grace: secs(
            file.timing
                .shutdown_grace_secs
                .unwrap_or(defaults::SHUTDOWN_GRACE_SECS),
        ),
        tenants,
    };
    cfg.validate()?;
    Ok(cfg)
}

fn init_logging(filter: Option<&str>) {
    let filter = filter
        .map(tracing_subscriber::EnvFilter::new)
        .or_else(|| tracing_subscriber::EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: a log file or a journal gets plain text.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

async fn interrupted() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Up(up::UpArgs::default())) {
        Command::Up(args) => up::run(args, &default_data_dir()),
        Command::Serve(args) => {
            init_logging(args.log_level.as_deref());
            let cfg = match resolve(*args) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("ember-invoke-router: {e}");
                    return ExitCode::from(2);
                }
            };
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("ember-invoke-router: cannot start the async runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            match runtime.block_on(server::serve_until(cfg, interrupted())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ember-invoke-router: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}
