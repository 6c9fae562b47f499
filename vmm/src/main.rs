//! `ember-vmm`: the command-line front end of the Ember VMM library.
//!
//! Exit status: 0 when the guest rebooted or powered off, or on SIGTERM /
//! SIGINT; 1 when the VM failed; 2 for a bad setting (one line on stderr
//! naming the flag and the reason).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ember_vmm::config::{self, VmmConfig};
use ember_vmm::vmm::Vmm;

/// Ember's virtual machine monitor: boots a Linux microVM on KVM.
#[derive(Parser)]
#[command(
    name = "ember-vmm",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// The VM as a Firecracker-style JSON file (instead of the flags below).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["kernel", "initrd", "cmdline", "vcpus", "mem_mib", "vsock_cid", "vsock_uds", "vsock_allow_port", "drive", "serial"])]
    config: Option<PathBuf>,
    /// Guest kernel: an ELF vmlinux or a bzImage.
    #[arg(long, value_name = "PATH", required_unless_present_any = ["config"])]
    kernel: Option<PathBuf>,
    /// Initramfs to load.
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// Kernel command line; Ember appends its virtio-mmio devices.
    #[arg(long, value_name = "STR", default_value = config::DEFAULT_CMDLINE)]
    cmdline: String,
    /// Number of vCPUs.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1,
        allow_negative_numbers = true
    )]
    vcpus: u8,
    /// Guest memory in MiB.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 128,
        allow_negative_numbers = true
    )]
    mem_mib: u64,
    /// The guest's vsock context id (3 or more); needs --vsock-uds.
    #[arg(
        long,
        value_name = "N",
        requires = "vsock_uds",
        allow_negative_numbers = true
    )]
    vsock_cid: Option<u64>,
    /// Host Unix socket for vsock (guest-initiated connections to port P go to PATH_P).
    #[arg(long, value_name = "PATH", requires = "vsock_cid")]
    vsock_uds: Option<PathBuf>,
    /// A host port the guest may connect to (at PATH_PORT); repeat for more. Default: none.
    #[arg(
        long,
        value_name = "PORT",
        requires = "vsock_uds",
        allow_negative_numbers = true
    )]
    vsock_allow_port: Vec<u32>,
    /// A block device backed by a raw file, PATH or PATH,ro; repeat for more.
    #[arg(long, value_name = "PATH[,ro]")]
    drive: Vec<String>,
    /// Where the guest console goes: stdout, none or file:PATH.
    #[arg(long, value_name = "DEST", default_value = "stdout")]
    serial: String,
    /// Log level of the VMM's own messages on stderr.
    #[arg(long, value_name = "LEVEL", default_value = "info", value_parser = ["error", "warn", "info", "debug", "trace"])]
    log_level: String,
}

#[derive(Subcommand)]
enum Command {
    /// Check that /dev/kvm can run a guest: API version, capabilities, and a
    /// tiny real-mode guest that must exit on port I/O and then halt.
    Probe,
}

impl Cli {
    fn vmm_config(&self) -> Result<VmmConfig, config::ConfigError> {
        if let Some(path) = &self.config {
            let text = std::fs::read_to_string(path).map_err(|e| {
                config::ConfigError::new(config::field::CONFIG, format!("{}: {e}", path.display()))
            })?;
            return VmmConfig::from_json(&text);
        }
        let config = VmmConfig {
            kernel: self.kernel.clone().unwrap_or_default(),
            initrd: self.initrd.clone(),
            cmdline: self.cmdline.clone(),
            vcpus: self.vcpus,
            mem_mib: self.mem_mib,
            vsock: match (self.vsock_cid, &self.vsock_uds) {
                (Some(guest_cid), Some(uds_path)) => Some(config::VsockConfig {
                    guest_cid,
                    uds_path: uds_path.clone(),
                    allowed_host_ports: self.vsock_allow_port.clone(),
                }),
                _ => None,
            },
            drives: self
                .drive
                .iter()
                .map(|d| config::parse_drive(d))
                .collect::<Result<_, _>>()?,
            serial: config::parse_serial(&self.serial)?,
        };
        config.validate()?;
        Ok(config)
    }
}

/// Parses the command line; usage errors become one line on stderr and exit status 2.
fn parse_cli() -> Result<Cli, ExitCode> {
    Cli::try_parse().map_err(|e| {
        use clap::error::ErrorKind;
        if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
            e.exit();
        }
        // clap's message up to the usage block, folded onto one line.
        let rendered = e.render().to_string();
        let message: Vec<&str> = rendered
            .lines()
            .take_while(|l| !l.trim().is_empty() && !l.starts_with("Usage:"))
            .map(str::trim)
            .collect();
        let message = message.join(" ");
        let message = message.strip_prefix("error: ").unwrap_or(&message);
        eprintln!("ember-vmm: {message} (see --help)");
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    let cli = match parse_cli() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let level = cli.log_level.parse().unwrap_or(log::LevelFilter::Info);
    ember_vmm::logger::init(level);
    if let Some(Command::Probe) = cli.command {
        return match ember_vmm::probe::run() {
            Ok(report) => {
                println!("{report}");
                println!("probe: ok");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ember-vmm probe: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let result = cli
        .vmm_config()
        .map_err(Into::into)
        .and_then(|config| Vmm::build(&config))
        .and_then(Vmm::run);
    match result {
        Ok(reason) => ExitCode::from(reason.exit_code()),
        Err(e) => {
            eprintln!("ember-vmm: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
