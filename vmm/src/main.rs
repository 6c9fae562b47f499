//! `ember-vmm`: the command-line front end of the Ember VMM library.
//!
//! Exit status: 0 when the guest rebooted or powered off, or on SIGTERM /
//! SIGINT; 1 when the VM failed; 2 for a bad setting (one line on stderr
//! naming the flag and the reason).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ember_vmm::config::{self, VmmConfig};
use ember_vmm::jail::{self, Entered, JailConfig, JailError};
use ember_vmm::seccomp::Filters;
use ember_vmm::vmm::{Vmm, VmmError};

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
    /// Run without the per-thread seccomp filters (for debugging only).
    #[arg(long)]
    no_seccomp: bool,
    #[command(flatten)]
    jail: JailArgs,
    /// Debug only: once the filters are in, make a forbidden syscall (the
    /// VMM must die with SIGSYS).
    #[arg(long, hide = true)]
    debug_seccomp_trigger: bool,
    /// Debug only: inside the jail, before the VM is built, try to open
    /// (and connect to) PATH and report the result on stderr.
    #[arg(long, hide = true, value_name = "PATH")]
    debug_jail_probe: Vec<PathBuf>,
}

/// The jail (see `ember_vmm::jail`): given `--jail-root`, the VMM runs in
/// its own namespaces, root, cgroup and uid.
#[derive(clap::Args)]
struct JailArgs {
    /// Jail the VMM in this per-VM directory (created; must be absent or empty; removed at exit).
    #[arg(long, value_name = "DIR", requires_all = ["jail_uid", "jail_gid"])]
    jail_root: Option<PathBuf>,
    /// The jailed VMM's uid (not 0; one per live VM).
    #[arg(long, value_name = "N", requires = "jail_root")]
    jail_uid: Option<u32>,
    /// The jailed VMM's gid (not 0).
    #[arg(long, value_name = "N", requires = "jail_root")]
    jail_gid: Option<u32>,
    /// The VM's cgroup v2 directory, e.g. /sys/fs/cgroup/ember/vm1 (created; removed at exit).
    #[arg(long, value_name = "DIR", requires = "jail_root")]
    jail_cgroup: Option<PathBuf>,
    /// memory.max = guest memory + this many MiB for the VMM itself.
    #[arg(long, value_name = "MIB", default_value_t = 32)]
    jail_overhead_mib: u64,
    /// pids.max of the VM's cgroup (default: vCPUs + 8).
    #[arg(long, value_name = "N")]
    jail_pids_max: Option<u64>,
    /// RLIMIT_NOFILE of the jailed VMM.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    jail_nofile: u64,
    /// RLIMIT_FSIZE of the jailed VMM in MiB (raised to the largest read-write drive).
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    jail_fsize_mib: u64,
}

impl JailArgs {
    fn config(&self) -> Option<JailConfig> {
        Some(JailConfig {
            root: self.jail_root.clone()?,
            uid: self.jail_uid?,
            gid: self.jail_gid?,
            cgroup: self.jail_cgroup.clone(),
            overhead_mib: self.jail_overhead_mib,
            pids_max: self.jail_pids_max,
            nofile: self.jail_nofile,
            fsize_mib: self.jail_fsize_mib,
        })
    }
}

#[derive(Subcommand)]
enum Command {
    /// Check that /dev/kvm can run a guest: API version, capabilities, and a
    /// tiny real-mode guest that must exit on port I/O and then halt.
    Probe,
    /// Check that this host can jail VMMs (root, cgroup v2 with the memory,
    /// cpu and pids controllers under PARENT, namespaces, /dev/kvm).
    JailCheck {
        /// The cgroup v2 directory VM cgroups go under.
        #[arg(long, value_name = "PARENT", default_value = "/sys/fs/cgroup/ember")]
        cgroup_parent: PathBuf,
    },
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
    if let Some(Command::JailCheck { cgroup_parent }) = &cli.command {
        return match jail::check_host(cgroup_parent) {
            Ok(()) => {
                println!("jail-check: ok");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ember-vmm jail-check: {e}");
                ExitCode::FAILURE
            }
        };
    }
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
    match run_vm(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ember-vmm: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Why `ember-vmm` failed before or while running the VM.
#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error(transparent)]
    Vmm(#[from] VmmError),
    #[error(transparent)]
    Jail(#[from] JailError),
    #[error(transparent)]
    Seccomp(#[from] ember_vmm::seccomp::SeccompError),
}

impl RunError {
    fn exit_code(&self) -> u8 {
        match self {
            RunError::Vmm(e) => e.exit_code(),
            RunError::Jail(JailError::Setting { .. }) => 2,
            _ => 1,
        }
    }
}

/// Builds and runs the VM, jailed when asked; the exit status.
fn run_vm(cli: &Cli) -> Result<ExitCode, RunError> {
    let config = cli.vmm_config().map_err(VmmError::from)?;
    // Compiled before the jail: nothing can fail later for want of memory.
    let filters = if cli.no_seccomp {
        log::warn!("--no-seccomp: the VMM runs without seccomp filters");
        None
    } else {
        Some(Filters::build()?)
    };
    let jailed = match cli.jail.config() {
        Some(j) => match jail::enter(&j, &config)? {
            Entered::Keeper(code) => return Ok(ExitCode::from(code)),
            Entered::Jailed(jailed) => Some(jailed),
        },
        None => None,
    };
    let config = jailed.as_ref().map_or(config, |j| j.config.clone());
    for path in &cli.debug_jail_probe {
        probe(path);
    }
    let vmm = Vmm::build(&config)?;
    if let Some(j) = &jailed {
        j.drop_privileges()?;
    }
    let reason = vmm.run_confined(filters.as_ref(), cli.debug_seccomp_trigger)?;
    Ok(ExitCode::from(reason.exit_code()))
}

/// `--debug-jail-probe`: what this process can reach at `path`.
fn probe(path: &std::path::Path) {
    let open = std::fs::File::open(path).map(|_| "opened".to_string());
    let connect = std::os::unix::net::UnixStream::connect(path).map(|_| "connected".to_string());
    let show = |r: std::io::Result<String>| match r {
        Ok(s) => s,
        Err(e) => format!("error {}", e.raw_os_error().unwrap_or(0)),
    };
    eprintln!(
        "ember-vmm: jail-probe {}: open {}, connect {}",
        path.display(),
        show(open),
        show(connect)
    );
}
