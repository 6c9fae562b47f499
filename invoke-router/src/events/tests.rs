//! The queue's durability and bookkeeping, without a dispatcher (the
//! processing itself is tested against a fake VMM in `tests/`).

use super::*;
use ember_protocol::ErrorInfo;

fn result(id: &str) -> InvokeResult {
    InvokeResult {
        request_id: id.into(),
        outcome: Outcome::HandledError(ErrorInfo {
            error_type: "Function.ExitError".into(),
            error_message: "exit 1".into(),
        }),
        payload: b"oops".to_vec(),
        duration_us: 5,
        init_duration_us: None,
        peak_memory_bytes: Some(1),
        log_tail: b"log".to_vec(),
    }
}

#[test]
fn queued_events_survive_a_reopen() {
    let data = tempfile::tempdir().unwrap();
    let q = EventQueue::open(data.path()).unwrap();
    q.enqueue("t", "f", "req-1", b"{\"a\":1}").unwrap();
    let rec = q.get("req-1").unwrap();
    assert_eq!(rec.status, EventStatus::Queued);
    assert_eq!((rec.tenant.as_str(), rec.function.as_str()), ("t", "f"));
    drop(q);
    let q = EventQueue::open(data.path()).unwrap();
    assert_eq!(q.get("req-1").unwrap().status, EventStatus::Queued);
    assert_eq!(q.lock().due.len(), 1);
    assert_eq!(
        std::fs::read(data.path().join("events/req-1/payload")).unwrap(),
        b"{\"a\":1}"
    );
    assert!(q.get("req-2").is_none());
}

#[test]
fn a_running_attempt_runs_again_after_a_restart_and_outcomes_stay() {
    let data = tempfile::tempdir().unwrap();
    let q = EventQueue::open(data.path()).unwrap();
    for id in ["run", "retry", "ok", "bad"] {
        q.enqueue("t", "f", id, b"x").unwrap();
    }
    q.lock().due.clear();
    q.record(Record::Attempt {
        id: "run".into(),
        attempt: 2,
    });
    q.record(Record::Retry {
        id: "retry".into(),
        attempts: 1,
        error: "e".into(),
        due_ms: 42,
    });
    q.record(Record::Attempt {
        id: "ok".into(),
        attempt: 1,
    });
    q.record(Record::Succeeded {
        id: "ok".into(),
        attempts: 1,
    });
    q.store_result("bad", &result("bad")).unwrap();
    q.record(Record::Failed {
        id: "bad".into(),
        attempts: 3,
        error: "Function.ExitError: exit 1".into(),
    });
    assert_eq!(
        q.get("run").unwrap().status,
        EventStatus::Running { attempt: 2 }
    );
    drop(q);

    let q = EventQueue::open(data.path()).unwrap();
    let st = q.lock();
    assert_eq!(st.entries["run"].status, EventStatus::Queued);
    // Attempt 2 was cut short: it is attempt 2 again.
    assert_eq!(st.entries["run"].attempts, 1);
    assert_eq!(st.entries["retry"].attempts, 1);
    assert_eq!(st.entries["retry"].due_ms, 42);
    let due: Vec<&str> = st.due.iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(due.len(), 2);
    assert!(due.contains(&"run") && due.contains(&"retry"));
    drop(st);
    assert_eq!(q.get("ok").unwrap().status, EventStatus::Succeeded);
    let bad = q.get("bad").unwrap();
    assert_eq!(
        bad.status,
        EventStatus::Failed {
            attempts: 3,
            error: "Function.ExitError: exit 1".into()
        }
    );
    assert_eq!(bad.result, Some(result("bad")));
    // And once more: the compacted journal replays the same.
    drop(q);
    let q = EventQueue::open(data.path()).unwrap();
    assert_eq!(q.get("retry").unwrap().status, EventStatus::Queued);
    assert_eq!(q.lock().entries["retry"].attempts, 1);
    assert_eq!(q.get("ok").unwrap().status, EventStatus::Succeeded);
}

#[test]
fn bad_events_are_refused_and_leave_nothing() {
    let data = tempfile::tempdir().unwrap();
    let q = EventQueue::open(data.path()).unwrap();
    for id in ["", "..", "a/b", "a b", &"x".repeat(129)] {
        assert!(
            matches!(
                q.enqueue("t", "f", id, b""),
                Err(EventError::InvalidRequestId(_))
            ),
            "{id:?}"
        );
    }
    let big = vec![0u8; ember_protocol::MAX_PAYLOAD_LEN + 1];
    assert!(matches!(
        q.enqueue("t", "f", "big", &big),
        Err(EventError::PayloadTooLarge(_))
    ));
    q.enqueue("t", "f", "dup", b"").unwrap();
    assert!(matches!(
        q.enqueue("t", "f", "dup", b""),
        Err(EventError::Duplicate(_))
    ));
    let mut names: Vec<String> = std::fs::read_dir(data.path().join("events"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["dup", "journal.jsonl"]);
}

#[test]
fn function_errors_are_named() {
    assert_eq!(function_error(&Outcome::Ok), None);
    assert!(function_error(&Outcome::Timeout)
        .unwrap()
        .contains("Timedout"));
    assert_eq!(
        function_error(&result("x").outcome).unwrap(),
        "Function.ExitError: exit 1"
    );
}
