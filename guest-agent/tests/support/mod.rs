//! Test support: an agent serving a Unix socket on its own thread, and a
//! blocking router-side client for it.

#![allow(dead_code)]

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ember_guest_agent::{Agent, AgentOptions, ListenAddr, Listener, Stop};
use ember_protocol::*;

/// A fresh directory for one test's function code.
pub fn task_dir(tag: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "ember-agent-test-{}-{tag}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `dir/bootstrap` with `body` and `mode`.
pub fn write_bootstrap(dir: &Path, body: &str, mode: u32) {
    let path = dir.join("bootstrap");
    std::fs::write(&path, body).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A bootstrap that re-runs this test binary's `test_runtime_entry`.
pub fn self_bootstrap(dir: &Path) {
    let exe = std::env::current_exe().unwrap();
    write_bootstrap(
        dir,
        &format!(
            "#!/bin/sh\nexec '{}' --exact test_runtime_entry --nocapture --test-threads=1 --quiet\n",
            exe.display()
        ),
        0o755,
    );
}

/// An agent on a Unix socket, and the router's end of one connection.
pub struct Harness {
    pub dir: PathBuf,
    pub sock: PathBuf,
    pub conn: UnixStream,
    pub logs: Vec<LogRecord>,
    agent: Option<JoinHandle<Stop>>,
}

impl Harness {
    /// Starts an agent for the code in `dir` and connects to it.
    pub fn start(dir: PathBuf) -> Harness {
        let sock = dir.with_extension("sock");
        let listen = ListenAddr::Unix(sock.clone());
        let task_root = dir.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let agent = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = Listener::bind(&listen).unwrap();
                let mut agent = Agent::start(AgentOptions {
                    runtime_api_addr: "127.0.0.1:0".parse().unwrap(),
                    task_root,
                    sandbox: Default::default(),
                    boot: BootTiming::default(),
                })
                .await
                .unwrap();
                ready_tx.send(()).unwrap();
                agent.serve(&listener).await
            })
        });
        ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        let conn = connect(&sock);
        let mut h = Harness {
            dir,
            sock,
            conn,
            logs: Vec::new(),
            agent: Some(agent),
        };
        h.expect_hello();
        h
    }

    /// Expects the agent's greeting.
    pub fn expect_hello(&mut self) {
        match self.recv() {
            Message::Hello(h) => assert_eq!(h.agent_version, env!("CARGO_PKG_VERSION")),
            other => panic!("expected Hello, got {other:?}"),
        }
    }

    /// Reconnects (after the previous connection was dropped).
    pub fn reconnect(&mut self) {
        self.conn = connect(&self.sock);
        self.expect_hello();
    }

    /// Sends a message.
    pub fn send(&mut self, m: &Message) {
        write_message(&mut self.conn, m).unwrap();
    }

    /// Sends raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.conn.write_all(bytes).unwrap();
    }

    /// The next message that is not a log record (those are kept in
    /// `logs`); panics after 30 s.
    pub fn recv(&mut self) -> Message {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let left = until.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no message from the agent within 30 s");
            self.conn.set_read_timeout(Some(left)).unwrap();
            match read_message(&mut self.conn) {
                Ok(Some(Ok(Message::Log(l)))) => self.logs.push(l),
                Ok(Some(Ok(m))) => return m,
                other => panic!("reading from the agent: {other:?}"),
            }
        }
    }

    /// Configures the function with `runtime`, `handler` and extra env.
    pub fn configure(&mut self, runtime: RuntimeKind, handler: &str, env: &[(&str, &str)]) {
        self.send(&Message::Configure(Configure {
            function_name: "fn-test".into(),
            function_version: "$LATEST".into(),
            function_arn: "arn:aws:lambda:local:000000000000:function:fn-test".into(),
            handler: handler.into(),
            runtime,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            memory_mib: 128,
            timeout_ms: 3000,
            init_timeout_ms: 10_000,
        }));
    }

    /// Configures and expects `Ready`.
    pub fn configure_ready(
        &mut self,
        runtime: RuntimeKind,
        handler: &str,
        env: &[(&str, &str)],
    ) -> Ready {
        self.configure(runtime, handler, env);
        match self.recv() {
            Message::Ready(r) => r,
            other => panic!("expected Ready, got {other:?}"),
        }
    }

    /// Sends an invoke.
    pub fn invoke(&mut self, id: &str, payload: &[u8], timeout_ms: u64) {
        self.send(&Message::Invoke(Invoke {
            request_id: id.into(),
            timeout_ms,
            payload: payload.to_vec(),
            client_context: None,
            trace_id: None,
        }));
    }

    /// Expects the result of `id`.
    pub fn result(&mut self, id: &str) -> InvokeResult {
        match self.recv() {
            Message::Result(r) => {
                assert_eq!(r.request_id, id);
                r
            }
            other => panic!("expected the result of {id}, got {other:?}"),
        }
    }

    /// Invokes and waits for the result.
    pub fn call(&mut self, id: &str, payload: &[u8], timeout_ms: u64) -> InvokeResult {
        self.invoke(id, payload, timeout_ms);
        self.result(id)
    }

    /// Expects a protocol error.
    pub fn refusal(&mut self) -> ProtocolError {
        match self.recv() {
            Message::Error(e) => e,
            other => panic!("expected Error, got {other:?}"),
        }
    }

    /// Checks that the agent still answers.
    pub fn ping(&mut self, n: u64) {
        self.send(&Message::Ping(n));
        assert_eq!(self.recv(), Message::Pong(n));
    }

    /// Waits for the agent to stop and returns why.
    pub fn stopped(&mut self) -> Stop {
        let agent = self.agent.take().unwrap();
        let until = Instant::now() + Duration::from_secs(30);
        while !agent.is_finished() {
            assert!(Instant::now() < until, "the agent did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
        agent.join().unwrap()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if self.agent.as_ref().is_some_and(|a| !a.is_finished()) {
            let _ = write_message(&mut self.conn, &Message::Shutdown);
            if let Some(a) = self.agent.take() {
                let _ = a.join();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(&self.sock);
    }
}

fn connect(sock: &Path) -> UnixStream {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        match UnixStream::connect(sock) {
            Ok(s) => return s,
            Err(e) if Instant::now() > until => panic!("connect {}: {e}", sock.display()),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Every log byte received so far, concatenated.
pub fn log_text(logs: &[LogRecord]) -> String {
    logs.iter()
        .map(|l| String::from_utf8_lossy(&l.data).into_owned())
        .collect()
}
