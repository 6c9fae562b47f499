//! `ember-invoke-router`: Ember's frontend, assignment, placement and
//! counting services in one binary.
//!
//! - `serve`: the Lambda API on `--listen` (default 127.0.0.1:9000), with
//!   settings from `--config FILE` (TOML or JSON), flags on top and tenants
//!   from `--tenants-file` or `EMBER_TENANTS_FILE` (see `config.rs`).
//! - `up` (also without a subcommand): the README's start command (so far: says what it will do and
//!   prints the default tenant's credentials).
//!
//! Exit status: 0 after a clean shutdown, 1 on a runtime failure, 2 on bad
//! settings.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ember_invoke_router::config::{self, ServeConfig, ServeFlags};
use ember_invoke_router::server;

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
    Serve(Box<ServeFlags>),
    /// Start the platform: images, router, a sample `hello` function.
    Up(up::UpArgs),
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
        Command::Up(args) => up::run(args, &config::default_data_dir()),
        Command::Serve(args) => {
            init_logging(args.log_level.as_deref());
            let cfg = match ServeConfig::resolve(&args) {
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
