//! Test support: a fake `ember-vmm` that runs the real guest agent (the
//! `ember_guest_agent` library) on the host, behind the VMM's vsock
//! handshake on its `--vsock-uds` socket, and dispatchers wired to it.
//!
//! The fake VMM is this test binary re-executed: a script named as the VMM
//! passes its arguments in `EMBER_FAKE_VMM_ARGS` and runs only the
//! `fake_vmm_entry` test, which then plays the VMM. The "code image" given
//! with `--drive` is a directory used as `/var/task`.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ember_guest_agent::{Agent, AgentOptions, ListenAddr, Listener};
use ember_invoke_router::config::{
    CapacitySettings, GuestSettings, ServeConfig, TenantConfig, TimingSettings,
};
use ember_invoke_router::dispatch::clock::Clock;
use ember_invoke_router::dispatch::{Dispatcher, FunctionSpec, InvokeInput};
use ember_invoke_router::metrics::Metrics;
use ember_protocol::conn::{self, UnixConnection};
use ember_protocol::handshake;
use ember_protocol::{BootTiming, Hello, Message, Ready, RuntimeKind, AGENT_VSOCK_PORT};
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

/// How the fake VMM behaves (set per dispatcher, through its script).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeVmm {
    /// Boots (after a short delay) and serves the agent.
    Normal,
    /// Exits with status 1 at once, printing a console line.
    ExitAtOnce,
    /// Like `ExitAtOnce` on its first boot only, then `Normal`.
    ExitFirstBoot,
}

/// A file in a function's code directory that makes its fake VMM a guest
/// whose agent gets ready, then never reads again (no vsock credit, no RX
/// buffers).
pub const DEAF_MARKER: &str = "EMBER_FAKE_DEAF";

/// A test's dispatcher, its directories and metrics.
pub struct Env {
    pub dispatcher: Arc<Dispatcher>,
    /// The settings it was built from (data dir = `dir`).
    pub config: ServeConfig,
    /// Its background token.
    pub background: CancellationToken,
    pub metrics: Arc<Metrics>,
    pub dir: tempfile::TempDir,
    pub run_dir: PathBuf,
}

/// Settings tests change.
pub struct Settings {
    pub capacity_mem_mib: u64,
    pub capacity_vcpus: u32,
    /// The limit of tenants `t1` and `t2`.
    pub tenant_concurrency: u32,
    /// More tenants and their limits.
    pub tenants: Vec<(&'static str, u32)>,
    pub keep_alive: Duration,
    pub queue_wait: Duration,
    pub health_interval: Duration,
    pub vmm: FakeVmm,
    pub clock: Option<Arc<dyn Clock>>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            capacity_mem_mib: 8192,
            capacity_vcpus: 16,
            tenant_concurrency: 100,
            tenants: vec![],
            keep_alive: Duration::from_secs(600),
            queue_wait: Duration::from_secs(5),
            health_interval: Duration::from_secs(600),
            vmm: FakeVmm::Normal,
            clock: None,
        }
    }
}

/// A dispatcher with the fake VMM.
pub fn env(s: Settings) -> Env {
    let dir = tempfile::Builder::new().prefix("ed").tempdir().unwrap();
    let vmm = dir.path().join("fake-vmm");
    let exe = std::env::current_exe().unwrap();
    let mode = match s.vmm {
        FakeVmm::Normal => "normal",
        FakeVmm::ExitAtOnce => "exit",
        FakeVmm::ExitFirstBoot => "exit-first",
    };
    let first_boot_marker = dir.path().join("first-boot-done");
    std::fs::write(
        &vmm,
        format!(
            "#!/bin/sh\nEMBER_FAKE_VMM_FIRST_BOOT='{}' EMBER_FAKE_VMM_MODE={mode} EMBER_FAKE_VMM_ARGS=\"$(printf '%s\\n' \"$@\")\" \
             exec '{}' --exact fake_vmm_entry --nocapture --test-threads=1 --quiet\n",
            first_boot_marker.display(),
            exe.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&vmm, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut tenants: Vec<(&str, u32)> =
        vec![("t1", s.tenant_concurrency), ("t2", s.tenant_concurrency)];
    tenants.extend(s.tenants.iter().copied());
    let tenants = tenants
        .into_iter()
        .enumerate()
        .map(|(i, (id, limit))| TenantConfig {
            concurrency: limit,
            ..TenantConfig::new(id, &format!("AKIAEMBERTEST{i:07}"), "secretsecretsecret")
        })
        .collect();
    let guest = GuestSettings {
        vmm,
        runtime_images: Default::default(),
        kernel: dir.path().join("vmlinux"),
        initramfs: dir.path().join("initramfs"),
    };
    let mut config = ServeConfig::new(dir.path().to_path_buf(), guest, tenants);
    // The fake VMM is a shell script: it cannot jail itself.
    config.jail.unjailed_development = true;
    config.capacity = CapacitySettings {
        mem_mib: s.capacity_mem_mib,
        vcpus: s.capacity_vcpus,
    };
    config.timing = TimingSettings {
        keep_alive: s.keep_alive,
        queue_wait: s.queue_wait,
        health_interval: s.health_interval,
        ..TimingSettings::default()
    };
    let run_dir = config.run_dir();
    let metrics = Metrics::new();
    let background = CancellationToken::new();
    let dispatcher = match s.clock {
        Some(c) => Dispatcher::with_clock(&config, metrics.clone(), c, background.clone()),
        None => Dispatcher::new(&config, metrics.clone(), background.clone()),
    };
    Env {
        dispatcher,
        config,
        background,
        metrics,
        dir,
        run_dir,
    }
}

impl Env {
    /// A function whose code is a fresh directory (the fake "image").
    pub fn function(&self, tenant: &str, name: &str, handler: &str) -> FunctionSpec {
        static N: AtomicU32 = AtomicU32::new(0);
        let code = self
            .dir
            .path()
            .join(format!("code-{}", N.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir_all(&code).unwrap();
        FunctionSpec {
            tenant: tenant.into(),
            name: name.into(),
            arn: format!("arn:aws:lambda:local:000000000000:function:{name}"),
            revision: "r1".into(),
            code_image: code,
            runtime: RuntimeKind::Exec,
            handler: handler.into(),
            env: vec![("GREETING".into(), "hi".into())],
            memory_mib: 128,
            timeout: Duration::from_secs(10),
            reserved_concurrency: None,
        }
    }

    /// A function whose VM stops reading once it is ready.
    pub fn deaf_function(&self, tenant: &str, name: &str) -> FunctionSpec {
        let spec = self.function(tenant, name, "cat");
        std::fs::write(spec.code_image.join(DEAF_MARKER), b"").unwrap();
        spec
    }

    /// The slot directories that exist now.
    pub fn slot_dirs(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.run_dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Waits (up to 20 s) until no slot exists and no slot directory is left.
    pub async fn wait_all_gone(&self) {
        for _ in 0..400 {
            let (counts, used) = self.dispatcher.slots();
            if counts == Default::default() && used.mem_mib == 0 && self.slot_dirs().is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "slots left: {:?}, dirs {:?}",
            self.dispatcher.slots(),
            self.slot_dirs()
        );
    }

    /// The fake VMM's pid for a slot.
    pub fn vmm_pid(&self, slot: &str) -> i32 {
        std::fs::read_to_string(self.run_dir.join(slot).join("pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

/// Whether a process exists (and is not a zombie).
pub fn alive(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !stat.is_empty() && !stat.contains(") Z ")
}

static REQ: AtomicU32 = AtomicU32::new(0);

/// An invocation input with a fresh request id.
pub fn input(payload: &[u8]) -> InvokeInput {
    InvokeInput {
        request_id: format!(
            "req-{}-{}",
            std::process::id(),
            REQ.fetch_add(1, Ordering::Relaxed)
        ),
        payload: payload.to_vec(),
        client_context: None,
        trace_id: None,
    }
}

/// The fake VMM's main, when this binary runs as one. Returns at once
/// otherwise.
pub fn fake_vmm_main() {
    let Ok(args) = std::env::var("EMBER_FAKE_VMM_ARGS") else {
        return;
    };
    let args: Vec<String> = args.lines().map(String::from).collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    println!("fake-vmm: booting with {args:?}");
    let mode = std::env::var("EMBER_FAKE_VMM_MODE").unwrap_or_default();
    let first_boot = std::env::var_os("EMBER_FAKE_VMM_FIRST_BOOT").map(PathBuf::from);
    let exit_now = match (mode.as_str(), first_boot) {
        ("exit", _) => true,
        ("exit-first", Some(marker)) => std::fs::create_dir(marker).is_ok(),
        _ => false,
    };
    if exit_now {
        println!("fake-vmm: no KVM here, giving up");
        std::process::exit(1);
    }
    let uds = PathBuf::from(value("--vsock-uds").expect("--vsock-uds"));
    let drive = value("--drive").expect("--drive");
    let task_root = PathBuf::from(drive.trim_end_matches(",ro"));
    let slot_dir = uds.parent().unwrap().to_path_buf();
    std::fs::write(slot_dir.join("pid"), std::process::id().to_string()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    if task_root.join(DEAF_MARKER).exists() {
        rt.block_on(serve_deaf(uds.clone()));
    }
    let code = rt.block_on(serve(uds.clone(), task_root));
    let _ = std::fs::remove_file(&uds);
    std::process::exit(code);
}

async fn serve(uds: PathBuf, task_root: PathBuf) -> i32 {
    let agent_sock = uds.with_extension("agent");
    // The "VMM" socket exists at once; the "guest" listens a little later,
    // so the router's CONNECT retries are exercised.
    let vsock = UnixListener::bind(&uds).unwrap();
    tokio::spawn(relay(vsock, agent_sock.clone()));
    tokio::time::sleep(Duration::from_millis(150)).await;
    let listener = Listener::bind(&ListenAddr::Unix(agent_sock)).unwrap();
    let mut agent = Agent::start(AgentOptions {
        runtime_api_addr: "127.0.0.1:0".parse().unwrap(),
        task_root,
        sandbox: Default::default(),
        boot: BootTiming::default(),
    })
    .await
    .unwrap();
    println!("EMBER-GUEST-READY (fake)");
    let stop = agent.serve(&listener).await;
    println!("fake-vmm: agent stopped: {stop:?}");
    // Let the relay deliver the agent's last frames (InitError) first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    0
}

/// A guest that greets, gets configured, answers `Ready`, then never
/// reads its connection again (it stays open). Never returns.
async fn serve_deaf(uds: PathBuf) {
    let l = UnixListener::bind(&uds).unwrap();
    let mut held = Vec::new();
    loop {
        let Ok((mut c, _)) = l.accept().await else {
            continue;
        };
        if conn::read_connect(&mut c).await != Some(AGENT_VSOCK_PORT) {
            continue;
        }
        c.write_all(handshake::ok_line(1 << 30).as_bytes())
            .await
            .unwrap();
        let mut conn = UnixConnection::unix(c);
        let hello = Hello {
            agent_version: "deaf".into(),
            boot: BootTiming::default(),
        };
        conn.write(&Message::Hello(hello)).await.unwrap();
        loop {
            match conn.read().await {
                Ok(Some(Ok(Message::Configure(_)))) => break,
                Ok(Some(_)) => continue,
                _ => std::process::exit(1),
            }
        }
        let ready = Ready {
            init_duration_us: 1,
        };
        conn.write(&Message::Ready(ready)).await.unwrap();
        println!("fake-vmm: deaf from now on");
        held.push(conn);
    }
}

/// The VMM's host side of the vsock handshake (`ember_protocol::handshake`), then bytes.
async fn relay(vsock: UnixListener, agent_sock: PathBuf) {
    loop {
        let Ok((mut client, _)) = vsock.accept().await else {
            return;
        };
        let agent_sock = agent_sock.clone();
        tokio::spawn(async move {
            if conn::read_connect(&mut client).await != Some(AGENT_VSOCK_PORT) {
                return;
            }
            // Nobody listening yet: the guest answers with a reset.
            let Ok(mut agent) = UnixStream::connect(&agent_sock).await else {
                return;
            };
            if client
                .write_all(handshake::ok_line(1 << 30).as_bytes())
                .await
                .is_err()
            {
                return;
            }
            let _ = tokio::io::copy_bidirectional(&mut client, &mut agent).await;
        });
    }
}

/// Polls `cond` every 20 ms for up to `secs`.
pub async fn eventually(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..secs * 50 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("not within {secs} s: {what}");
}

/// Whether `p` exists.
pub fn exists(p: &Path) -> bool {
    p.exists()
}
