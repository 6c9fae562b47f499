//! The function's life in this VM: start its runtime, hand it one
//! invocation at a time, enforce deadlines, and start a fresh runtime after
//! a timeout or a crash. Runs as its own task; the session sends it
//! [`Command`]s and it answers with messages for the router.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ember_protocol::{
    ErrorInfo, ExitInfo, Invoke, InvokeResult, Message, Outcome, Ready, RuntimeKind,
    MAX_PAYLOAD_LEN,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::sleep_until;

use crate::logs::LogSink;
use crate::runtime::{Launcher, Process, SHELL};
use crate::runtime_api::{Completion, Event, InitProgress, RuntimeApi};

/// How long a dead runtime's last output may take to reach the logs.
const DRAIN: Duration = Duration::from_millis(200);

/// What the session asks of the supervisor.
pub enum Command {
    /// Run this invocation; it arrived at the given instant.
    Invoke(Invoke, Instant),
    /// Kill the runtime and stop.
    Shutdown,
}

/// The supervisor task's state.
pub struct Supervisor {
    /// Starts the function's processes.
    pub launcher: Launcher,
    /// The Runtime API the runtime talks to.
    pub api: RuntimeApi,
    /// Where the runtime's output goes.
    pub logs: LogSink,
    /// Messages for the router.
    pub out: mpsc::Sender<Message>,
    /// Commands from the session.
    pub commands: mpsc::Receiver<Command>,
}

/// Why a runtime's init failed, in Lambda's terms.
fn init_exit_error(exit: ExitInfo) -> ErrorInfo {
    ErrorInfo {
        error_type: "Runtime.ExitError".into(),
        error_message: format!("runtime exited during init: {}", describe(exit)),
    }
}

/// "status 3" or "signal 9".
pub fn describe(exit: ExitInfo) -> String {
    match (exit.status, exit.signal) {
        (_, Some(sig)) => format!("signal {sig}"),
        (Some(st), None) => format!("status {st}"),
        (None, None) => "unknown status".into(),
    }
}

fn epoch_ms_after(d: Duration) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (now + d).as_millis() as u64
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u128::from(u64::MAX)) as u64
}

fn response_too_large() -> Outcome {
    Outcome::UnhandledError(ErrorInfo {
        error_type: "Function.ResponseSizeTooLarge".into(),
        error_message: format!("response exceeds the limit of {MAX_PAYLOAD_LEN} bytes"),
    })
}

/// How an invocation ended, before it becomes an [`InvokeResult`].
struct Ended {
    outcome: Outcome,
    payload: Vec<u8>,
    peak_memory_bytes: Option<u64>,
    /// The runtime is gone (or was killed) and must be started afresh.
    restart: bool,
}

impl Supervisor {
    /// Runs until told to shut down or until the runtime cannot start.
    pub async fn run(mut self) {
        match self.launcher.config.runtime {
            RuntimeKind::Provided | RuntimeKind::Python313 | RuntimeKind::Nodejs20 => {
                self.run_provided().await
            }
            RuntimeKind::Exec => self.run_exec().await,
        }
    }

    async fn send(&self, m: Message) {
        let _ = self.out.send(m).await;
    }

    fn peak(&self, p: Option<&Process>) -> Option<u64> {
        let cgroup = self.launcher.cgroup.as_ref().and_then(|c| c.peak_bytes());
        cgroup.or_else(|| p.and_then(Process::peak_rss_bytes))
    }

    fn kill(&self, p: &Process) {
        p.group().kill();
        if let Some(c) = &self.launcher.cgroup {
            c.kill_all();
        }
    }

    /// Starts `bootstrap` and waits for its first `invocation/next`.
    async fn init_provided(&mut self) -> Result<(Process, Duration), ErrorInfo> {
        self.api.reset();
        self.logs.begin(None);
        let started = Instant::now();
        let mut p = self.launcher.start_bootstrap(&self.logs)?;
        let limit = Duration::from_millis(self.launcher.config.init_timeout_ms);
        let failure = tokio::select! {
            progress = self.api.init_progress() => match progress {
                InitProgress::Ready => return Ok((p, started.elapsed())),
                InitProgress::Failed(e) => e,
            },
            exit = p.wait() => {
                p.drain_output(DRAIN).await;
                self.api.take_init_error().unwrap_or_else(|| init_exit_error(exit.info))
            }
            _ = tokio::time::sleep(limit) => {
                if self.launcher.config.runtime.is_managed() {
                    // As Lambda does for an on-demand function: an init that
                    // outlasts the init limit goes on within the first
                    // invocation, bounded by that invocation's timeout.
                    self.logs.note(&format!(
                        "init still running after {} ms; it continues within the first invocation",
                        limit.as_millis()
                    ));
                    return Ok((p, started.elapsed()));
                }
                ErrorInfo {
                    error_type: "Runtime.InitTimeout".into(),
                    error_message: format!("runtime did not ask for an event within {} ms", limit.as_millis()),
                }
            }
        };
        self.kill(&p);
        Err(failure)
    }

    async fn run_provided(&mut self) {
        let mut first = true;
        loop {
            let (mut p, init) = match self.init_provided().await {
                Ok(ok) => ok,
                Err(e) if self.launcher.config.runtime.is_managed() => {
                    // As on Lambda: a managed runtime whose init fails (a
                    // missing module or handler) answers the invocation
                    // with the init error, and init is tried again for the
                    // next one.
                    self.logs.note(&format!("init failed: {}", e.error_message));
                    let init_output = self.logs.finish();
                    let document = self.api.init_document();
                    if first {
                        self.send(Message::Ready(Ready {
                            init_duration_us: 0,
                        }))
                        .await;
                        first = false;
                    }
                    if self.answer_init_error(e, document, &init_output).await {
                        continue;
                    }
                    return;
                }
                Err(e) => {
                    self.logs.note(&format!("init failed: {}", e.error_message));
                    self.send(Message::InitError(e)).await;
                    return;
                }
            };
            if first {
                self.send(Message::Ready(Ready {
                    init_duration_us: micros(init),
                }))
                .await;
                first = false;
            }
            let mut init_duration = Some(init);
            loop {
                let command = tokio::select! {
                    c = self.commands.recv() => c,
                    exit = p.wait() => {
                        self.logs.note(&format!("runtime exited while idle ({}); restarting it", describe(exit.info)));
                        self.kill(&p);
                        break;
                    }
                };
                let (invoke, arrived) = match command {
                    Some(Command::Invoke(i, at)) => (i, at),
                    Some(Command::Shutdown) | None => {
                        self.kill(&p);
                        return;
                    }
                };
                let ended = self.invoke_provided(&mut p, &invoke, arrived).await;
                let restart = ended.restart;
                self.finish(&invoke, arrived, init_duration.take(), ended)
                    .await;
                if restart {
                    break;
                }
            }
        }
    }

    /// Waits for the next invocation and answers it with a managed
    /// runtime's init error (its posted document, else Lambda's shape of
    /// one); false when told to stop instead.
    /// The init's output leads the invocation's log tail, as on Lambda.
    async fn answer_init_error(
        &mut self,
        e: ErrorInfo,
        document: Option<Vec<u8>>,
        init_output: &[u8],
    ) -> bool {
        let Some(Command::Invoke(invoke, arrived)) = self.commands.recv().await else {
            return false;
        };
        self.logs.begin(Some(&invoke.request_id));
        self.logs
            .write(ember_protocol::LogStream::Stderr, init_output);
        let payload = document.unwrap_or_else(|| {
            serde_json::json!({
                "errorMessage": e.error_message,
                "errorType": e.error_type,
                "requestId": "",
                "stackTrace": [],
            })
            .to_string()
            .into_bytes()
        });
        let ended = Ended {
            outcome: Outcome::UnhandledError(e),
            payload,
            peak_memory_bytes: None,
            restart: true,
        };
        self.finish(&invoke, arrived, None, ended).await;
        true
    }

    async fn invoke_provided(&mut self, p: &mut Process, inv: &Invoke, arrived: Instant) -> Ended {
        let budget = Duration::from_millis(inv.timeout_ms);
        let deadline = arrived + budget;
        let (done, answer) = oneshot::channel();
        self.logs.begin(Some(&inv.request_id));
        self.api.offer(Event {
            request_id: inv.request_id.clone(),
            payload: inv.payload.clone().into(),
            deadline_ms: epoch_ms_after(budget.saturating_sub(arrived.elapsed())),
            function_arn: self.launcher.config.function_arn.clone(),
            trace_id: inv.trace_id.clone(),
            client_context: inv.client_context.clone(),
            done,
        });
        let (outcome, payload, restart) = tokio::select! {
            answer = answer => match answer {
                Ok(Completion::Response(body)) => (Outcome::Ok, body, false),
                Ok(Completion::Error(info, body)) if info.error_type.starts_with("Runtime.") => {
                    (Outcome::UnhandledError(info), body, false)
                }
                // Lambda's managed runtimes report every function error
                // as unhandled.
                Ok(Completion::Error(info, body)) if self.launcher.config.runtime.is_managed() => {
                    (Outcome::UnhandledError(info), body, false)
                }
                Ok(Completion::Error(info, body)) => (Outcome::HandledError(info), body, false),
                Ok(Completion::TooLarge) => (response_too_large(), Vec::new(), false),
                // The API dropped the event: only a reset does that.
                Err(_) => (Outcome::UnhandledError(ErrorInfo {
                    error_type: "Runtime.Unknown".into(),
                    error_message: "the event was lost".into(),
                }), Vec::new(), true),
            },
            _ = sleep_until(deadline.into()) => {
                self.logs.note(&format!("{} timed out after {} ms; killing the runtime", inv.request_id, inv.timeout_ms));
                (Outcome::Timeout, Vec::new(), true)
            }
            exit = p.wait() => {
                p.drain_output(DRAIN).await;
                self.logs.note(&format!("runtime exited during {} ({})", inv.request_id, describe(exit.info)));
                match self.api.take_init_error() {
                    // A managed runtime whose init went on into this
                    // invocation and failed: its init error answers it.
                    Some(e) if self.launcher.config.runtime.is_managed() => {
                        let doc = self.api.init_document().unwrap_or_default();
                        (Outcome::UnhandledError(e), doc, true)
                    }
                    _ => (Outcome::RuntimeExit(exit.info), Vec::new(), true),
                }
            }
        };
        self.api.withdraw();
        let peak_memory_bytes = self.peak(Some(p));
        if restart {
            self.kill(p);
            let _ = tokio::time::timeout(Duration::from_secs(5), p.wait()).await;
        }
        Ended {
            outcome,
            payload,
            peak_memory_bytes,
            restart,
        }
    }

    async fn finish(&self, inv: &Invoke, arrived: Instant, init: Option<Duration>, e: Ended) {
        self.send(Message::Result(InvokeResult {
            request_id: inv.request_id.clone(),
            outcome: e.outcome,
            payload: e.payload,
            duration_us: micros(arrived.elapsed()),
            init_duration_us: init.map(micros),
            peak_memory_bytes: e.peak_memory_bytes,
            log_tail: self.logs.finish(),
        }))
        .await;
    }

    async fn run_exec(&mut self) {
        if self.launcher.config.handler.trim().is_empty() {
            let e = ErrorInfo {
                error_type: "Runtime.InvalidEntrypoint".into(),
                error_message: "the exec runtime needs a handler command".into(),
            };
            self.send(Message::InitError(e)).await;
            return;
        }
        if !std::path::Path::new(SHELL).exists() {
            let e = ErrorInfo {
                error_type: "Runtime.InvalidEntrypoint".into(),
                error_message: format!("the exec runtime needs {SHELL}, which is missing"),
            };
            self.send(Message::InitError(e)).await;
            return;
        }
        self.send(Message::Ready(Ready {
            init_duration_us: 0,
        }))
        .await;
        while let Some(Command::Invoke(inv, arrived)) = self.commands.recv().await {
            let ended = self.invoke_exec(&inv, arrived).await;
            self.finish(&inv, arrived, None, ended).await;
        }
    }

    /// Runs the handler once: the event on its stdin, its stdout the
    /// response, a non-zero exit a function error.
    async fn invoke_exec(&mut self, inv: &Invoke, arrived: Instant) -> Ended {
        self.logs.begin(Some(&inv.request_id));
        let mut p = match self.launcher.start_exec(&self.logs) {
            Ok(p) => p,
            Err(e) => {
                return Ended {
                    outcome: Outcome::UnhandledError(e),
                    payload: Vec::new(),
                    peak_memory_bytes: None,
                    restart: false,
                }
            }
        };
        let group = p.group();
        let stdin = p.stdin.take();
        let stdout = p.stdout.take();
        let payload = &inv.payload;
        let work = async {
            let feed = async {
                if let Some(mut s) = stdin {
                    // A handler that does not read its event is fine.
                    let _ = s.write_all(payload).await;
                }
            };
            let collect = async {
                let mut out = Vec::new();
                if let Some(s) = stdout {
                    let mut limited = s.take(MAX_PAYLOAD_LEN as u64 + 1);
                    let _ = limited.read_to_end(&mut out).await;
                }
                out
            };
            let ((), out) = tokio::join!(feed, collect);
            if out.len() > MAX_PAYLOAD_LEN {
                group.kill();
            }
            let exit = p.wait().await;
            (out, exit)
        };
        let deadline = arrived + Duration::from_millis(inv.timeout_ms);
        let finished = tokio::select! {
            done = work => Some(done),
            _ = sleep_until(deadline.into()) => None,
        };
        let Some((out, exit)) = finished else {
            self.logs.note(&format!(
                "{} timed out after {} ms; killing the handler",
                inv.request_id, inv.timeout_ms
            ));
            self.kill(&p);
            let _ = tokio::time::timeout(Duration::from_secs(5), p.wait()).await;
            p.drain_output(DRAIN).await;
            return Ended {
                outcome: Outcome::Timeout,
                payload: Vec::new(),
                peak_memory_bytes: self.peak(None),
                restart: false,
            };
        };
        // Whatever the handler left behind in its group goes with it.
        self.kill(&p);
        p.drain_output(DRAIN).await;
        let peak_memory_bytes = self.peak(None).or(Some(exit.max_rss_bytes));
        let (outcome, payload) = if out.len() > MAX_PAYLOAD_LEN {
            (response_too_large(), Vec::new())
        } else {
            match (exit.info.status, exit.info.signal) {
                (Some(0), _) => (Outcome::Ok, out),
                (Some(status), None) => (
                    Outcome::HandledError(ErrorInfo {
                        error_type: "Function.ExitError".into(),
                        error_message: format!("handler exited with status {status}"),
                    }),
                    out,
                ),
                _ => (Outcome::RuntimeExit(exit.info), out),
            }
        };
        Ended {
            outcome,
            payload,
            peak_memory_bytes,
            restart: false,
        }
    }
}
