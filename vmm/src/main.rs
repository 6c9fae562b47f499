//! `ember-vmm`: the command-line front end of the Ember VMM library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Ember's virtual machine monitor.
#[derive(Parser)]
#[command(name = "ember-vmm", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check that /dev/kvm can run a guest: API version, capabilities, and a
    /// tiny real-mode guest that must exit on port I/O and then halt.
    Probe,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Probe => match ember_vmm::probe::run() {
            Ok(report) => {
                println!("{report}");
                println!("probe: ok");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ember-vmm probe: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
