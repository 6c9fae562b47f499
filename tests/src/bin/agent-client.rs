//! `agent-client`: plays the router towards one guest agent, for the E2E
//! tests of the agent in a real VM.
//!
//!   agent-client UDS [--runtime exec|provided] [--handler H] [--memory MIB]
//!                [--timeout-ms N] [--env K=V]... [--shutdown] [--time] [STEP]...
//!
//! Connects through the VMM's vsock socket (`CONNECT 5000`, retried while
//! the guest boots), reads Hello, sends Configure and waits for Ready, then
//! runs each STEP in order:
//!   TEXT           invoke with TEXT as the payload
//!   @bytes:N       invoke with N bytes of 'a'
//!   @oversize      send a raw Invoke frame with a 7 MiB body
//!   @repeat:N:TEXT invoke N times with TEXT as the payload
//! and prints one line per outcome:
//!   READY init_us=N | INIT-ERROR <type>: <message>
//!   RESULT <id> <outcome> payload=<text, cut at 200 bytes> logs=<tail, one line>
//!   REFUSED <message>     (the agent answered Error)
//!   RTT_MS <ms>           (with --time, after each RESULT: Invoke sent to Result read)
//! With --shutdown it finally sends Shutdown and waits for the agent to hang up.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use ember_protocol::{
    handshake, read_message, write_message, Configure, Invoke, Message, Outcome, RuntimeKind,
    AGENT_VSOCK_PORT,
};

fn main() {
    if let Err(e) = run() {
        eprintln!("agent-client: {e}");
        std::process::exit(1);
    }
}

struct Args {
    uds: String,
    configure: Configure,
    shutdown: bool,
    time: bool,
    steps: Vec<String>,
}

fn parse() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let uds = it
        .next()
        .ok_or("usage: agent-client UDS [options] [STEP]...")?;
    let mut configure = Configure {
        function_name: "e2e".into(),
        function_version: "$LATEST".into(),
        function_arn: "arn:aws:lambda:ember:000000000000:function:e2e".into(),
        handler: "cat".into(),
        runtime: RuntimeKind::Exec,
        env: vec![],
        memory_mib: 128,
        timeout_ms: 10_000,
        init_timeout_ms: 10_000,
    };
    let mut shutdown = false;
    let mut time = false;
    let mut steps = vec![];
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--runtime" => {
                configure.runtime = match value()?.as_str() {
                    "exec" => RuntimeKind::Exec,
                    "provided" => RuntimeKind::Provided,
                    other => return Err(format!("unknown runtime {other}")),
                }
            }
            "--handler" => configure.handler = value()?,
            "--memory" => configure.memory_mib = value()?.parse().map_err(|_| "bad --memory")?,
            "--timeout-ms" => {
                configure.timeout_ms = value()?.parse().map_err(|_| "bad --timeout-ms")?
            }
            "--env" => {
                let kv = value()?;
                let (k, v) = kv.split_once('=').ok_or("--env takes K=V")?;
                configure.env.push((k.into(), v.into()));
            }
            "--shutdown" => shutdown = true,
            "--time" => time = true,
            _ => match arg.strip_prefix("@repeat:").and_then(|r| r.split_once(':')) {
                Some((n, text)) => {
                    let n: usize = n.parse().map_err(|_| "bad @repeat:N:TEXT")?;
                    steps.extend((0..n).map(|_| text.to_string()));
                }
                None => steps.push(arg),
            },
        }
    }
    Ok(Args {
        uds,
        configure,
        shutdown,
        time,
        steps,
    })
}

fn connect(uds: &str) -> Result<UnixStream, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let s = handshake::connect_until(std::path::Path::new(uds), AGENT_VSOCK_PORT, deadline)
        .map_err(|e| format!("no agent behind {uds} after 60 s: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(120)))
        .map_err(|e| e.to_string())?;
    Ok(s)
}

fn next(s: &mut UnixStream) -> Result<Message, String> {
    match read_message(s) {
        Ok(Some(Ok(m))) => Ok(m),
        Ok(Some(Err(e))) => Err(format!("undecodable frame: {e}")),
        Ok(None) => Err("the agent hung up".into()),
        Err(e) => Err(format!("read: {e}")),
    }
}

fn one_line(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(max)]).into_owned();
    text.replace('\n', "\\n")
}

fn run() -> Result<(), String> {
    let args = parse()?;
    let mut s = connect(&args.uds)?;
    match next(&mut s)? {
        Message::Hello(h) => println!(
            "HELLO agent={} kernel_us={}",
            h.agent_version, h.boot.kernel_us
        ),
        other => return Err(format!("expected Hello, got {other:?}")),
    }
    let timeout_ms = args.configure.timeout_ms;
    write_message(&mut s, &Message::Configure(args.configure)).map_err(|e| e.to_string())?;
    loop {
        match next(&mut s)? {
            Message::Ready(r) => {
                println!("READY init_us={}", r.init_duration_us);
                break;
            }
            Message::InitError(e) => {
                println!("INIT-ERROR {}: {}", e.error_type, e.error_message);
                return Ok(());
            }
            Message::Log(_) => {}
            other => return Err(format!("expected Ready, got {other:?}")),
        }
    }
    for (i, step) in args.steps.iter().enumerate() {
        let id = format!("req-{i}");
        let sent = Instant::now();
        if step == "@oversize" {
            // A whole Invoke frame (type 5) whose body is over the limit;
            // the agent must refuse it and stay in step with the stream.
            let len: u32 = 7 << 20;
            let mut frame = len.to_be_bytes().to_vec();
            frame.extend_from_slice(&[1, 5, 0, 0]);
            frame.resize(frame.len() + len as usize, 0);
            s.write_all(&frame).map_err(|e| e.to_string())?;
        } else {
            let payload = match step.strip_prefix("@bytes:") {
                Some(n) => vec![b'a'; n.parse().map_err(|_| "bad @bytes:N")?],
                None => step.as_bytes().to_vec(),
            };
            let invoke = Invoke {
                request_id: id.clone(),
                timeout_ms,
                payload,
                client_context: None,
                trace_id: None,
            };
            write_message(&mut s, &Message::Invoke(invoke)).map_err(|e| e.to_string())?;
        }
        loop {
            match next(&mut s)? {
                Message::Log(_) => {}
                Message::Result(r) => {
                    let outcome = match &r.outcome {
                        Outcome::Ok => "Ok".to_string(),
                        Outcome::HandledError(e) => format!("HandledError({})", e.error_type),
                        Outcome::UnhandledError(e) => format!("UnhandledError({})", e.error_type),
                        Outcome::Timeout => "Timeout".to_string(),
                        Outcome::RuntimeExit(x) => {
                            format!("RuntimeExit(status={:?},signal={:?})", x.status, x.signal)
                        }
                    };
                    println!(
                        "RESULT {} {outcome} payload={} logs={}",
                        r.request_id,
                        one_line(&r.payload, 200),
                        one_line(&r.log_tail, 300)
                    );
                    if args.time {
                        println!("RTT_MS {:.3}", sent.elapsed().as_secs_f64() * 1000.0);
                    }
                    break;
                }
                Message::Error(e) => {
                    println!("REFUSED {}", e.message);
                    break;
                }
                other => return Err(format!("unexpected {other:?}")),
            }
        }
    }
    if args.shutdown {
        write_message(&mut s, &Message::Shutdown).map_err(|e| e.to_string())?;
        while let Ok(Some(_)) = read_message(&mut s) {}
        println!("SHUTDOWN-SENT");
    }
    Ok(())
}
