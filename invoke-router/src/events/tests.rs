//! The queue's durability and bookkeeping, without a dispatcher (the
//! processing itself is tested against a fake VMM in `tests/`).

use super::*;
use crate::config::{GuestSettings, TenantConfig};
use ember_protocol::ErrorInfo;

/// Settings with tenant `t` (pending quota 1000) and `small` (quota 2).
fn cfg(data: &Path) -> ServeConfig {
    let guest = GuestSettings {
        kernel: "k".into(),
        initramfs: "i".into(),
        vmm: "v".into(),
        runtime_images: Default::default(),
    };
    let mut small = TenantConfig::new("small", "AKIAEMBERTESTSMALL01", "secretsecretsecret");
    small.quotas.max_pending_events = 2;
    let t = TenantConfig::new("t", "AKIAEMBERTESTTTTTT01", "secretsecretsecret");
    let mut c = ServeConfig::new(data.to_path_buf(), guest, vec![t, small]);
    c.events.keep_finished = 3;
    c
}

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
    let q = EventQueue::open(&cfg(data.path())).unwrap();
    q.enqueue("t", "f", "req-1", b"{\"a\":1}").unwrap();
    let rec = q.get("req-1").unwrap();
    assert_eq!(rec.status, EventStatus::Queued);
    assert_eq!((rec.tenant.as_str(), rec.function.as_str()), ("t", "f"));
    drop(q);
    let q = EventQueue::open(&cfg(data.path())).unwrap();
    assert_eq!(q.get("req-1").unwrap().status, EventStatus::Queued);
    assert_eq!(q.lock().fair.queued(), 1);
    assert_eq!(
        std::fs::read(data.path().join("events/req-1/payload")).unwrap(),
        b"{\"a\":1}"
    );
    assert!(q.get("req-2").is_none());
}

#[test]
fn a_running_attempt_runs_again_after_a_restart_and_outcomes_stay() {
    let data = tempfile::tempdir().unwrap();
    let q = EventQueue::open(&cfg(data.path())).unwrap();
    for id in ["run", "retry", "ok", "bad"] {
        q.enqueue("t", "f", id, b"x").unwrap();
    }
    q.lock().fair.clear();
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

    let q = EventQueue::open(&cfg(data.path())).unwrap();
    let st = q.lock();
    assert_eq!(st.entries["run"].status, EventStatus::Queued);
    // Attempt 2 was cut short: it is attempt 2 again.
    assert_eq!(st.entries["run"].attempts, 1);
    assert_eq!(st.entries["retry"].attempts, 1);
    assert_eq!(st.entries["retry"].due_ms, 42);
    let due = st.fair.queued_ids();
    let due: Vec<&str> = due.iter().map(String::as_str).collect();
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
    let q = EventQueue::open(&cfg(data.path())).unwrap();
    assert_eq!(q.get("retry").unwrap().status, EventStatus::Queued);
    assert_eq!(q.lock().entries["retry"].attempts, 1);
    assert_eq!(q.get("ok").unwrap().status, EventStatus::Succeeded);
}

#[test]
fn bad_events_are_refused_and_leave_nothing() {
    let data = tempfile::tempdir().unwrap();
    let q = EventQueue::open(&cfg(data.path())).unwrap();
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

#[test]
fn a_tenant_past_its_pending_quota_is_throttled_and_others_are_not() {
    let data = tempfile::tempdir().unwrap();
    let q = EventQueue::open(&cfg(data.path())).unwrap();
    q.enqueue("small", "f", "s1", b"").unwrap();
    q.enqueue("small", "f", "s2", b"").unwrap();
    let err = q.enqueue("small", "f", "s3", b"").unwrap_err();
    assert!(
        matches!(err, EventError::TenantQueueFull { limit: 2 }),
        "{err}"
    );
    assert!(err.to_string().starts_with("Rate Exceeded."), "{err}");
    // Nothing of the refused event is left behind.
    assert!(!data.path().join("events/s3").exists());
    q.enqueue("t", "f", "t1", b"").unwrap();
    assert_eq!(q.pending_of("small"), 2);
    // Running events count too; a finished one frees its place.
    while q.lock().fair.pop_ready(u64::MAX, 10, 10).is_some() {}
    assert_eq!(q.pending_of("small"), 2);
    q.lock().fair.finished("small");
    q.record(Record::Succeeded {
        id: "s1".into(),
        attempts: 1,
    });
    q.enqueue("small", "f", "s3", b"").unwrap();
    assert!(matches!(
        q.enqueue("small", "f", "s4", b""),
        Err(EventError::TenantQueueFull { .. })
    ));
}

#[test]
fn finished_events_are_pruned_while_running_and_stay_pruned() {
    let data = tempfile::tempdir().unwrap();
    let q = EventQueue::open(&cfg(data.path())).unwrap();
    for i in 0..5 {
        let id = format!("e{i}");
        q.enqueue("t", "f", &id, b"x").unwrap();
        q.record(Record::Succeeded { id, attempts: 1 });
    }
    // keep_finished = 3: the two oldest went, entry and directory.
    assert_eq!(q.finished_count(), 3);
    assert!(q.get("e0").is_none() && q.get("e1").is_none());
    assert!(!data.path().join("events/e0").exists());
    assert_eq!(q.get("e4").unwrap().status, EventStatus::Succeeded);
    drop(q);
    // The journal still names them, but they do not come back.
    let q = EventQueue::open(&cfg(data.path())).unwrap();
    assert!(q.get("e0").is_none() && q.get("e1").is_none());
    assert_eq!(q.finished_count(), 3);
}

#[test]
fn the_journal_is_compacted_while_running() {
    let data = tempfile::tempdir().unwrap();
    let q = EventQueue::open(&cfg(data.path())).unwrap();
    q.lock().compact_slack = 20;
    for i in 0..200 {
        let id = format!("e{i}");
        q.enqueue("t", "f", &id, b"x").unwrap();
        q.record(Record::Attempt {
            id: id.clone(),
            attempt: 1,
        });
        q.record(Record::Succeeded { id, attempts: 1 });
    }
    // A running attempt survives a compaction as running.
    q.enqueue("t", "f", "live", b"x").unwrap();
    q.record(Record::Retry {
        id: "live".into(),
        attempts: 1,
        error: "e".into(),
        due_ms: 1,
    });
    q.record(Record::Attempt {
        id: "live".into(),
        attempt: 2,
    });
    let lines = |q: &EventQueue| {
        let path = q.lock().journal.path().to_path_buf();
        std::fs::read_to_string(path).unwrap().lines().count()
    };
    // 600 records went in; at most 5 events were known at any time, so the
    // journal holds at most their compacted records (2 each) plus what may
    // be appended before the next compaction (4 per event + 20).
    assert!(lines(&q) <= 5 * 2 + 5 * 4 + 20 + 1, "{}", lines(&q));
    drop(q);
    let q = EventQueue::open(&cfg(data.path())).unwrap();
    assert_eq!(q.finished_count(), 3);
    assert_eq!(q.get("e199").unwrap().status, EventStatus::Succeeded);
    // Cut short by the "crash": attempt 2 runs again.
    assert_eq!(q.get("live").unwrap().status, EventStatus::Queued);
    assert_eq!(q.lock().entries["live"].attempts, 1);
}
