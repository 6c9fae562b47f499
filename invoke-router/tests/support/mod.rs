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
use ember_invoke_router::dispatch::clock::Clock;
use ember_invoke_router::dispatch::{DispatchConfig, Dispatcher, FunctionSpec, InvokeInput};
use ember_invoke_router::metrics::Metrics;
use ember_protocol::{BootTiming, RuntimeKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

/// How the fake VMM behaves (set per dispatcher, through its script).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeVmm {
    /// Boots (after a short delay) and serves the agent.
    Normal,
    /// Exits with status 1 at once, printing a console line.
    ExitAtOnce,
}

/// A test's dispatcher, its directories and metrics.
pub struct Env {
    pub dispatcher: Arc<Dispatcher>,
    pub metrics: Arc<Metrics>,
    pub dir: tempfile::TempDir,
    pub run_dir: PathBuf,
}

/// Settings tests change.
pub struct Settings {
    pub capacity_mem_mib: u64,
    pub capacity_vcpus: u32,
    pub tenant_concurrency: u32,
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
    let run_dir = dir.path().join("run");
    let vmm = dir.path().join("fake-vmm");
    let exe = std::env::current_exe().unwrap();
    let mode = match s.vmm {
        FakeVmm::Normal => "normal",
        FakeVmm::ExitAtOnce => "exit",
    };
    std::fs::write(
        &vmm,
        format!(
            "#!/bin/sh\nEMBER_FAKE_VMM_MODE={mode} EMBER_FAKE_VMM_ARGS=\"$(printf '%s\\n' \"$@\")\" \
             exec '{}' --exact fake_vmm_entry --nocapture --test-threads=1 --quiet\n",
            exe.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&vmm, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = DispatchConfig {
        vmm,
        kernel: dir.path().join("vmlinux"),
        initramfs: dir.path().join("initramfs"),
        run_dir: run_dir.clone(),
        capacity_mem_mib: s.capacity_mem_mib,
        capacity_vcpus: s.capacity_vcpus,
        tenant_concurrency: s.tenant_concurrency,
        keep_alive: s.keep_alive,
        queue_wait: s.queue_wait,
        health_interval: s.health_interval,
    };
    let metrics = Metrics::new();
    let dispatcher = match s.clock {
        Some(c) => Dispatcher::with_clock(config, metrics.clone(), c),
        None => Dispatcher::new(config, metrics.clone()),
    };
    Env {
        dispatcher,
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
            runtime_image: None,
            handler: handler.into(),
            env: vec![("GREETING".into(), "hi".into())],
            memory_mib: 128,
            timeout: Duration::from_secs(10),
            reserved_concurrency: None,
        }
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
    if std::env::var("EMBER_FAKE_VMM_MODE").as_deref() == Ok("exit") {
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

/// Firecracker's host side: `CONNECT <port>\n`, `OK <n>\n`, then bytes.
async fn relay(vsock: UnixListener, agent_sock: PathBuf) {
    loop {
        let Ok((mut client, _)) = vsock.accept().await else {
            return;
        };
        let agent_sock = agent_sock.clone();
        tokio::spawn(async move {
            let mut line = Vec::new();
            let mut b = [0u8; 1];
            while line.len() < 32 {
                if client.read_exact(&mut b).await.is_err() {
                    return;
                }
                if b[0] == b'\n' {
                    break;
                }
                line.push(b[0]);
            }
            if line != b"CONNECT 5000" {
                return;
            }
            // Nobody listening yet: the guest answers with a reset.
            let Ok(mut agent) = UnixStream::connect(&agent_sock).await else {
                return;
            };
            if client.write_all(b"OK 1073741824\n").await.is_err() {
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
