//! `ember-guest-agent`: the guest's `/init`. See the library for the parts
//! and `options.rs` for the settings (`ember.agent=oneshot` for boot tests).

use std::process::ExitCode;
use std::time::Instant;

use ember_guest_agent::options::{Mode, Settings};
use ember_guest_agent::sandbox::SandboxOptions;
use ember_guest_agent::{init, Agent, AgentOptions, Listener, Stop};
use ember_protocol::BootTiming;

/// Printed on the console once the agent is up; E2E tests wait for it.
const READY_MARKER: &str = "EMBER-GUEST-READY";

fn main() -> ExitCode {
    let kernel_us = init::uptime_us();
    let started = Instant::now();
    let pid1 = init::is_pid1();
    let code = match run(pid1, kernel_us, started) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ember-guest-agent: {e}");
            ExitCode::FAILURE
        }
    };
    if pid1 {
        init::power_off();
    }
    code
}

fn run(pid1: bool, kernel_us: u64, started: Instant) -> Result<(), String> {
    if pid1 {
        for warning in init::mount_all()? {
            eprintln!("ember-guest-agent: warning: {warning}");
        }
        if let Err(e) = init::loopback_up() {
            eprintln!("ember-guest-agent: warning: loopback: {e}");
        }
    }
    let settings = Settings::read(&init::kernel_cmdline(), pid1)?;
    if let Some(dev) = &settings.task_device {
        if dev.exists() {
            if let Err(e) = init::mount_task(dev, &settings.task_root) {
                // The runtime's start will fail and say why to the router.
                eprintln!("ember-guest-agent: warning: {e}");
            }
        }
    }
    // A managed runtime's image is the second drive (only such VMs have one).
    if let Some(dev) = settings.runtime_device.as_ref().filter(|d| d.exists()) {
        let root = std::path::Path::new(ember_guest_agent::runtime::RUNTIME_ROOT);
        if let Err(e) = init::mount_runtime(dev, root, &settings.task_root) {
            eprintln!("ember-guest-agent: warning: runtime image: {e}");
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    rt.block_on(async {
        let listener = Listener::bind(&settings.listen);
        let opts = AgentOptions {
            runtime_api_addr: settings.runtime_api,
            task_root: settings.task_root.clone(),
            sandbox: SandboxOptions {
                uid_gid: settings.uid.map(|u| (u, u)),
                cgroup_root: settings.cgroup_root.clone(),
            },
            boot: BootTiming {
                kernel_us,
                agent_us: 0,
            },
        };
        let agent = Agent::start(opts).await.map_err(|e| e.to_string());
        let boot = BootTiming {
            kernel_us,
            agent_us: started.elapsed().as_micros() as u64,
        };
        let ready = format!(
            "{READY_MARKER} kernel={} boot_us={} agent_us={}",
            init::kernel_release(),
            boot.kernel_us,
            boot.agent_us
        );
        if settings.mode == Mode::Oneshot {
            // Boot tests only need to know user space came up; they may run
            // without a vsock device.
            if let Err(e) = &listener {
                eprintln!("ember-guest-agent: warning: {e}");
            }
            println!("{ready}");
            return agent.map(drop);
        }
        let listener = listener.map_err(|e| e.to_string())?;
        let mut agent = agent?;
        agent.set_boot(boot);
        println!("{ready}");
        // As PID 1, the usual init signals (busybox `poweroff` sends
        // SIGUSR2, `reboot` SIGTERM, `halt` SIGUSR1) stop the VM cleanly.
        let stop = tokio::select! {
            stop = agent.serve(&listener) => stop,
            sig = init::stop_signal(), if pid1 => {
                eprintln!("ember-guest-agent: {sig}: shutting down");
                Stop::Shutdown
            }
        };
        agent.stop_function().await;
        match stop {
            Stop::Shutdown => Ok(()),
            Stop::InitFailed => Err("the runtime could not start; shutting down".into()),
            Stop::Disconnected => Ok(()),
        }
    })
}
