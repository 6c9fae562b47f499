//! The agent with a provided runtime (a `bootstrap` speaking the Runtime
//! API), on a Unix socket: invocations, errors, deadlines, crashes, limits
//! and bad input.

#[path = "support/runtime_client.rs"]
mod runtime_client;
mod support;

use ember_guest_agent::Stop;
use ember_protocol::*;
use support::*;

/// Not a test: the test runtime, when this binary runs as a `bootstrap`.
#[test]
fn test_runtime_entry() {
    if std::env::var_os("EMBER_TEST_RUNTIME").is_some() {
        runtime_client::run();
    }
}

fn started(tag: &str, env: &[(&str, &str)]) -> Harness {
    let dir = task_dir(tag);
    self_bootstrap(&dir);
    let mut h = Harness::start(dir);
    let mut all = vec![("EMBER_TEST_RUNTIME", "1")];
    all.extend_from_slice(env);
    h.configure_ready(RuntimeKind::Provided, "handler.main", &all);
    h
}

fn text(r: &InvokeResult) -> String {
    String::from_utf8_lossy(&r.payload).into_owned()
}

#[test]
fn invocations_run_warm_with_lambda_headers_env_and_logs() {
    let mut h = started(
        "ok",
        &[("MY_VAR", "mine"), ("AWS_LAMBDA_FUNCTION_NAME", "spoofed")],
    );
    h.send(&Message::Invoke(Invoke {
        request_id: "req-1".into(),
        timeout_ms: 5000,
        payload: b"headers".to_vec(),
        client_context: Some("eyJjIjoxfQ==".into()),
        trace_id: Some("Root=1-abc;Sampled=1".into()),
    }));
    let r = h.result("req-1");
    assert_eq!(r.outcome, Outcome::Ok, "{r:?}");
    let out = text(&r);
    for want in [
        "lambda-runtime-aws-request-id=req-1",
        "lambda-runtime-invoked-function-arn=arn:aws:lambda:local:000000000000:function:fn-test",
        "lambda-runtime-trace-id=Root=1-abc;Sampled=1",
        "lambda-runtime-client-context=eyJjIjoxfQ==",
        "_HANDLER=handler.main",
        &format!("LAMBDA_TASK_ROOT={}", h.dir.display()),
        "AWS_LAMBDA_FUNCTION_NAME=fn-test",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE=128",
        "AWS_LAMBDA_FUNCTION_VERSION=$LATEST",
        "MY_VAR=mine",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    let deadline: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("lambda-runtime-deadline-ms="))
        .unwrap()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        deadline > now && deadline <= now + 5000,
        "deadline {deadline}, now {now}"
    );
    assert!(
        r.init_duration_us.is_some(),
        "the first invocation is a cold start"
    );
    assert!(r.peak_memory_bytes.is_some());

    let a = h.call("req-2", b"pid", 5000);
    let b = h.call("req-3", b"pid", 5000);
    assert_eq!(a.init_duration_us, None, "the runtime stays warm");
    assert_eq!(text(&a), text(&b), "one runtime serves both");

    let r = h.call("req-4", b"echo:hello", 5000);
    assert_eq!(text(&r), "hello");
    assert!(
        String::from_utf8_lossy(&r.log_tail).contains("log:hello"),
        "{r:?}"
    );
    assert!(h
        .logs
        .iter()
        .any(|l| l.request_id.as_deref() == Some("req-4") && l.stream == LogStream::Stdout));
}

#[test]
fn function_errors_are_handled_and_runtime_errors_unhandled() {
    let mut h = started("err", &[]);
    let r = h.call("e-1", b"fail", 5000);
    assert_eq!(
        r.outcome,
        Outcome::HandledError(ErrorInfo {
            error_type: "MyError".into(),
            error_message: "boom".into()
        })
    );
    assert!(
        text(&r).contains(r#""stackTrace""#),
        "the error document returns"
    );
    let r = h.call("e-2", b"runtime-fail", 5000);
    assert!(matches!(&r.outcome, Outcome::UnhandledError(e) if e.error_type == "Runtime.Broken"));
    assert_eq!(text(&h.call("e-3", b"echo:after", 5000)), "after");
}

#[test]
fn a_timeout_kills_the_runtime_and_a_fresh_one_serves_next() {
    let mut h = started("timeout", &[]);
    let before = text(&h.call("t-0", b"pid", 5000));
    let r = h.call("t-1", b"sleep:10000", 300);
    assert_eq!(r.outcome, Outcome::Timeout);
    assert!(
        r.duration_us >= 300_000 && r.duration_us < 5_000_000,
        "{r:?}"
    );
    let after = h.call("t-2", b"pid", 5000);
    assert_eq!(after.outcome, Outcome::Ok);
    assert_ne!(text(&after), before, "a fresh runtime");
    assert!(
        after.init_duration_us.is_some(),
        "the fresh runtime's init is reported"
    );
    // The killed runtime is gone.
    assert!(!std::path::Path::new(&format!("/proc/{before}")).exists());
}

#[test]
fn a_crash_reports_its_status_or_signal_and_the_runtime_restarts() {
    let mut h = started("crash", &[]);
    let r = h.call("c-1", b"crash:3", 5000);
    assert_eq!(
        r.outcome,
        Outcome::RuntimeExit(ExitInfo {
            status: Some(3),
            signal: None
        })
    );
    assert!(
        String::from_utf8_lossy(&r.log_tail).contains("dying"),
        "{r:?}"
    );
    let r = h.call("c-2", b"abort", 5000);
    assert_eq!(
        r.outcome,
        Outcome::RuntimeExit(ExitInfo {
            status: None,
            signal: Some(6)
        })
    );
    assert_eq!(text(&h.call("c-3", b"echo:alive", 5000)), "alive");
}

#[test]
fn oversized_payloads_are_refused_both_ways() {
    let mut h = started("big", &[]);
    // From the router: built by hand, since our encoder refuses it.
    let mut frame = Message::Invoke(Invoke {
        request_id: "big-1".into(),
        timeout_ms: 1000,
        payload: vec![b'x'; MAX_PAYLOAD_LEN],
        client_context: None,
        trace_id: None,
    })
    .encode()
    .unwrap();
    frame.push(b'x');
    let body_len = (frame.len() - HEADER_LEN) as u32;
    frame[..4].copy_from_slice(&body_len.to_be_bytes());
    let at = frame.len() - MAX_PAYLOAD_LEN - 1 - 4;
    frame[at..at + 4].copy_from_slice(&(MAX_PAYLOAD_LEN as u32 + 1).to_le_bytes());
    h.send_raw(&frame);
    let e = h.refusal();
    assert_eq!(e.code, ErrorCode::PayloadTooLarge);
    assert_eq!(e.request_id.as_deref(), Some("big-1"));
    assert!(e.message.contains("6291456"), "{e:?}");
    h.ping(1);

    // From the runtime: a 413, and the invocation fails.
    let r = h.call("big-2", b"big", 5000);
    assert!(
        matches!(&r.outcome, Outcome::UnhandledError(e) if e.error_type == "Function.ResponseSizeTooLarge"),
        "{r:?}"
    );
    assert_eq!(text(&h.call("big-3", b"echo:fine", 5000)), "fine");
    assert!(
        log_text(&h.logs).contains("big=413 again=400"),
        "{}",
        log_text(&h.logs)
    );
}

#[test]
fn an_unknown_request_id_gets_a_400_and_the_agent_keeps_serving() {
    let mut h = started("wrong-id", &[]);
    let r = h.call("w-1", b"wrong-id", 5000);
    assert_eq!(r.outcome, Outcome::Ok);
    assert!(text(&r).starts_with("400 "), "{}", text(&r));
    assert!(text(&r).contains("InvalidRequestID"), "{}", text(&r));
}

#[test]
fn a_second_invoke_while_one_runs_is_refused() {
    let mut h = started("busy", &[]);
    h.invoke("b-1", b"sleep:500", 5000);
    h.invoke("b-2", b"echo:x", 5000);
    let e = h.refusal();
    assert_eq!(e.code, ErrorCode::Busy);
    assert_eq!(e.request_id.as_deref(), Some("b-2"));
    assert_eq!(text(&h.result("b-1")), "slept");
    assert_eq!(text(&h.call("b-3", b"echo:x", 5000)), "x");
}

#[test]
fn bad_frames_are_refused_and_the_session_goes_on() {
    let mut h = started("frames", &[]);
    // A Ping whose body is too short.
    h.send_raw(&[
        0,
        0,
        0,
        2,
        PROTOCOL_VERSION,
        MessageType::Ping as u8,
        0,
        0,
        1,
        2,
    ]);
    assert_eq!(h.refusal().code, ErrorCode::MalformedFrame);
    h.send_raw(&[0, 0, 0, 0, PROTOCOL_VERSION, 200, 0, 0]);
    assert_eq!(h.refusal().code, ErrorCode::UnknownMessageType);
    h.send_raw(&[0, 0, 0, 0, 9, MessageType::Ping as u8, 0, 0]);
    assert_eq!(h.refusal().code, ErrorCode::UnsupportedVersion);
    h.send(&Message::Ready(Ready {
        init_duration_us: 1,
    }));
    assert_eq!(h.refusal().code, ErrorCode::UnexpectedMessage);
    h.configure(RuntimeKind::Provided, "again", &[]);
    assert_eq!(h.refusal().code, ErrorCode::AlreadyConfigured);
    h.ping(2);
    // A frame cut short by a closed connection: the agent accepts the next
    // one, with the function as it was.
    h.send_raw(&[
        0,
        0,
        0,
        100,
        PROTOCOL_VERSION,
        MessageType::Invoke as u8,
        0,
        0,
        1,
    ]);
    h.conn.shutdown(std::net::Shutdown::Both).unwrap();
    h.reconnect();
    assert_eq!(text(&h.call("f-1", b"echo:still", 5000)), "still");
}

#[test]
fn init_errors_reach_the_router_and_stop_the_agent() {
    for (init, want_type, want_msg) in [
        ("error", "Init.Bad", "cannot load handler"),
        ("exit", "Runtime.ExitError", "status 7"),
    ] {
        let dir = task_dir("init");
        self_bootstrap(&dir);
        let mut h = Harness::start(dir);
        h.configure(
            RuntimeKind::Provided,
            "h",
            &[("EMBER_TEST_RUNTIME", "1"), ("EMBER_TEST_INIT", init)],
        );
        match h.recv() {
            Message::InitError(e) => {
                assert_eq!(e.error_type, want_type);
                assert!(e.error_message.contains(want_msg), "{e:?}");
            }
            other => panic!("expected InitError, got {other:?}"),
        }
        assert_eq!(h.stopped(), Stop::InitFailed);
    }
}

#[test]
fn a_missing_or_non_executable_bootstrap_is_an_init_error() {
    for (setup, want) in [(None, "No such file"), (Some(0o644), "is not executable")] {
        let dir = task_dir("no-bootstrap");
        if let Some(mode) = setup {
            write_bootstrap(&dir, "#!/bin/sh\n", mode);
        }
        let mut h = Harness::start(dir);
        h.invoke("early", b"x", 1000);
        assert_eq!(h.refusal().code, ErrorCode::NotConfigured);
        h.configure(RuntimeKind::Provided, "h", &[]);
        match h.recv() {
            Message::InitError(e) => {
                assert_eq!(e.error_type, "Runtime.InvalidEntrypoint");
                assert!(e.error_message.contains(want), "{e:?}");
                assert!(e.error_message.contains("bootstrap"), "{e:?}");
            }
            other => panic!("expected InitError, got {other:?}"),
        }
        assert_eq!(h.stopped(), Stop::InitFailed);
    }
}

#[test]
fn shutdown_kills_the_runtime_and_stops_the_agent() {
    let mut h = started("shutdown", &[]);
    let pid = text(&h.call("s-1", b"pid", 5000));
    h.send(&Message::Shutdown);
    assert_eq!(h.stopped(), Stop::Shutdown);
    let gone = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(20));
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    });
    assert!(gone, "runtime {pid} survived the shutdown");
}
