//! The agent with the `exec` runtime: the handler command gets the event on
//! stdin and answers on stdout.

mod support;

use ember_protocol::*;
use support::*;

fn exec(tag: &str, handler: &str) -> Harness {
    let mut h = Harness::start(task_dir(tag));
    let ready = h.configure_ready(RuntimeKind::Exec, handler, &[]);
    assert_eq!(ready.init_duration_us, 0);
    h
}

#[test]
fn stdin_in_stdout_out() {
    let mut h = exec("cat", "tr a-z A-Z");
    let r = h.call("x-1", b"hello", 5000);
    assert_eq!(r.outcome, Outcome::Ok);
    assert_eq!(r.payload, b"HELLO");
    assert!(r.peak_memory_bytes.is_some());
    assert_eq!(h.call("x-2", b"again", 5000).payload, b"AGAIN");
}

#[test]
fn a_non_zero_exit_is_a_function_error_with_the_logs() {
    let mut h = exec("fail", "echo partial; echo oops >&2; exit 3");
    let r = h.call("x-1", b"", 5000);
    assert_eq!(
        r.outcome,
        Outcome::HandledError(ErrorInfo {
            error_type: "Function.ExitError".into(),
            error_message: "handler exited with status 3".into()
        })
    );
    assert_eq!(r.payload, b"partial\n");
    assert!(
        String::from_utf8_lossy(&r.log_tail).contains("oops"),
        "{r:?}"
    );
    assert!(h
        .logs
        .iter()
        .any(|l| l.stream == LogStream::Stderr && l.request_id.as_deref() == Some("x-1")));
}

#[test]
fn the_deadline_kills_the_whole_process_group() {
    // The first run leaves a background child; later runs return at once.
    let mut h = exec(
        "sleep",
        "[ -e child ] && exit 0; sleep 30 & echo $! > child; wait",
    );
    let r = h.call("x-1", b"", 400);
    assert_eq!(r.outcome, Outcome::Timeout);
    assert!(r.duration_us < 5_000_000);
    let child = std::fs::read_to_string(h.dir.join("child")).unwrap();
    let gone = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(20));
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", child.trim())).unwrap_or_default();
        // Gone, or a zombie waiting for its reaper (the test's init).
        stat.is_empty() || stat.contains(") Z ")
    });
    assert!(gone, "the handler's child {child} survived");
    let r = h.call("x-2", b"", 5000);
    assert_eq!(
        r.outcome,
        Outcome::Ok,
        "{}",
        String::from_utf8_lossy(&r.log_tail)
    );
}

#[test]
fn a_signal_is_a_runtime_exit() {
    let mut h = exec("signal", "kill -9 $$");
    let r = h.call("x-1", b"", 5000);
    assert_eq!(
        r.outcome,
        Outcome::RuntimeExit(ExitInfo {
            status: None,
            signal: Some(9)
        })
    );
}

#[test]
fn an_empty_handler_is_an_init_error() {
    let mut h = Harness::start(task_dir("empty"));
    h.configure(RuntimeKind::Exec, " ", &[]);
    assert!(
        matches!(h.recv(), Message::InitError(e) if e.error_type == "Runtime.InvalidEntrypoint")
    );
}
