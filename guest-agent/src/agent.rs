//! The agent as a whole: the Runtime API server, the function (once
//! configured) and the accept loop that serves one router connection at a
//! time. The function outlives connections: a router that reconnects finds
//! it as it was, and results produced meanwhile wait for it.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ember_protocol::{BootTiming, Configure, ErrorCode, Message, ProtocolError};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::listener::Listener;
use crate::logs::LogSink;
use crate::runtime::Launcher;
use crate::runtime_api::{self, RuntimeApi};
use crate::sandbox::{self, Cgroup, SandboxOptions};
use crate::supervisor::{Command, Supervisor};
use crate::{reaper, session};

/// Messages for the router that may wait for a connection.
const OUTGOING_QUEUE: usize = 1024;

/// Why the agent stopped serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The router connection ended; accept the next one.
    Disconnected,
    /// The router sent `Shutdown`.
    Shutdown,
    /// The runtime could not start (the router was told).
    InitFailed,
}

/// How the agent runs, apart from where it listens.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The Runtime API's address (`127.0.0.1:9001` in the guest; tests use
    /// port 0).
    pub runtime_api_addr: SocketAddr,
    /// The function's code (`/var/task` in the guest).
    pub task_root: PathBuf,
    /// How handlers are confined.
    pub sandbox: SandboxOptions,
    /// Boot timing to report in `Hello`.
    pub boot: BootTiming,
}

/// The function-facing half of the agent, shared by successive sessions.
pub struct Host {
    opts: AgentOptions,
    api: RuntimeApi,
    api_addr: SocketAddr,
    out: mpsc::Sender<Message>,
    function: Option<(mpsc::Sender<Command>, JoinHandle<()>)>,
    busy: Option<String>,
    /// Boot timing reported in every `Hello`.
    pub boot: BootTiming,
}

fn refusal(request_id: Option<String>, code: ErrorCode, message: impl Into<String>) -> Message {
    Message::Error(ProtocolError {
        request_id,
        code,
        message: message.into(),
    })
}

impl Host {
    /// Handles one message from the router: the replies to send now, or
    /// why to stop.
    pub async fn handle(&mut self, m: Message) -> Result<Vec<Message>, Stop> {
        Ok(match m {
            Message::Configure(c) => self.configure(c),
            Message::Invoke(inv) => {
                let id = inv.request_id.clone();
                let Some((commands, _)) = &self.function else {
                    return Ok(vec![refusal(
                        Some(id),
                        ErrorCode::NotConfigured,
                        "invoke before configure",
                    )]);
                };
                if let Some(running) = &self.busy {
                    let why = format!("invocation {running} is still running; one at a time");
                    return Ok(vec![refusal(Some(id), ErrorCode::Busy, why)]);
                }
                if commands
                    .send(Command::Invoke(inv, Instant::now()))
                    .await
                    .is_err()
                {
                    return Ok(vec![refusal(
                        Some(id),
                        ErrorCode::NotConfigured,
                        "the function has stopped",
                    )]);
                }
                self.busy = Some(id);
                vec![]
            }
            Message::Ping(n) => vec![Message::Pong(n)],
            Message::Pong(_) => vec![],
            Message::Shutdown => {
                self.stop_function().await;
                return Err(Stop::Shutdown);
            }
            Message::Error(e) => {
                eprintln!(
                    "ember-guest-agent: the router refused a frame: {:?}: {}",
                    e.code, e.message
                );
                vec![]
            }
            other => vec![refusal(
                None,
                ErrorCode::UnexpectedMessage,
                format!(
                    "the agent does not accept {:?} messages",
                    other.message_type()
                ),
            )],
        })
    }

    /// Notes a message on its way to the router.
    pub fn sent(&mut self, m: &Message) {
        if let Message::Result(r) = m {
            if self.busy.as_deref() == Some(r.request_id.as_str()) {
                self.busy = None;
            }
        }
    }

    fn configure(&mut self, config: Configure) -> Vec<Message> {
        if self.function.is_some() {
            return vec![refusal(
                None,
                ErrorCode::AlreadyConfigured,
                "this VM is already configured",
            )];
        }
        let logs = LogSink::new(self.out.clone());
        let sb = &self.opts.sandbox;
        let cgroup = sb.cgroup_root.as_ref().and_then(|root| {
            let limit = sandbox::memory_limit(config.memory_mib);
            match Cgroup::create(root, "ember-handler", limit) {
                Ok(c) => Some(c),
                Err(e) => {
                    logs.note(&format!("no memory limit for the handler: cgroup: {e}"));
                    None
                }
            }
        });
        let uid_gid = match sb.uid_gid {
            Some(ids) if sandbox::can_switch_uid() => Some(ids),
            Some((uid, _)) => {
                logs.note(&format!("not root: the handler runs as our uid, not {uid}"));
                None
            }
            None => None,
        };
        let launcher = Launcher {
            task_root: self.opts.task_root.clone(),
            runtime_api: self.api_addr.to_string(),
            config,
            cgroup,
            uid_gid,
        };
        let (tx, commands) = mpsc::channel(4);
        let supervisor = Supervisor {
            launcher,
            api: self.api.clone(),
            logs,
            out: self.out.clone(),
            commands,
        };
        self.function = Some((tx, tokio::spawn(supervisor.run())));
        vec![]
    }

    /// Kills the runtime and waits (briefly) for the supervisor to finish.
    pub async fn stop_function(&mut self) {
        if let Some((commands, task)) = self.function.take() {
            let _ = commands.send(Command::Shutdown).await;
            drop(commands);
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

/// The guest agent: serves the router and the function's runtime.
pub struct Agent {
    host: Host,
    outgoing: mpsc::Receiver<Message>,
}

impl Agent {
    /// Binds the Runtime API and starts reaping children. Call inside a
    /// tokio runtime.
    pub async fn start(opts: AgentOptions) -> io::Result<Agent> {
        let tcp = TcpListener::bind(opts.runtime_api_addr)
            .await
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("bind the Runtime API on {}: {e}", opts.runtime_api_addr),
                )
            })?;
        let api_addr = tcp.local_addr()?;
        let api = RuntimeApi::default();
        tokio::spawn(runtime_api::serve(tcp, api.clone()));
        tokio::spawn(reaper::run());
        let (out, outgoing) = mpsc::channel(OUTGOING_QUEUE);
        Ok(Agent {
            host: Host {
                boot: opts.boot,
                opts,
                api,
                api_addr,
                out,
                function: None,
                busy: None,
            },
            outgoing,
        })
    }

    /// Replaces the boot timing reported in `Hello` (known only once the
    /// agent is listening).
    pub fn set_boot(&mut self, boot: BootTiming) {
        self.host.boot = boot;
    }

    /// Where the Runtime API listens.
    pub fn runtime_api_addr(&self) -> SocketAddr {
        self.host.api_addr
    }

    /// Stops the function's runtime, if one runs (for a shutdown that does
    /// not come from the router).
    pub async fn stop_function(&mut self) {
        self.host.stop_function().await;
    }

    /// Serves router connections from `listener`, one at a time, until the
    /// router asks for a shutdown or the runtime cannot start. The function
    /// is stopped before this returns.
    pub async fn serve(&mut self, listener: &Listener) -> Stop {
        loop {
            let stream = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    // Out of descriptors or the like: passing, keep serving.
                    eprintln!("ember-guest-agent: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            match session::run(stream, &mut self.host, &mut self.outgoing).await {
                Stop::Disconnected => continue,
                stop => {
                    self.host.stop_function().await;
                    return stop;
                }
            }
        }
    }
}
