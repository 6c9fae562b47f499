//! Event invocations processed by a real dispatcher (fake VMM, real
//! agent): success, Lambda's two retries, a vanished function, and events
//! queued before a restart.

mod support;

use std::sync::Arc;
use std::time::Duration;

use ember_invoke_router::dispatch::FunctionSpec;
use ember_invoke_router::events::{EventQueue, EventStatus, Resolver};
use ember_protocol::Outcome;
use support::*;

/// Not a test: the fake VMM's entry point (see `support`).
#[test]
fn fake_vmm_entry() {
    fake_vmm_main();
}

fn resolver(specs: Vec<FunctionSpec>) -> Resolver {
    let specs: Vec<Arc<FunctionSpec>> = specs.into_iter().map(Arc::new).collect();
    Arc::new(move |tenant: &str, name: &str| {
        specs
            .iter()
            .find(|s| s.tenant == tenant && s.name == name)
            .cloned()
    })
}

async fn settled(q: &EventQueue, id: &str) -> EventStatus {
    for _ in 0..1000 {
        let s = q.get(id).unwrap().status;
        if matches!(s, EventStatus::Succeeded | EventStatus::Failed { .. }) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("event {id} did not settle: {:?}", q.get(id));
}

#[tokio::test]
async fn events_run_and_failures_are_retried_twice() {
    let env = env(Settings::default());
    let count = env.dir.path().join("attempts");
    let ok = env.function("t1", "ok", "tr a-z A-Z");
    let bad = env.function(
        "t1",
        "bad",
        &format!("echo x >> '{}'; exit 1", count.display()),
    );
    let q = EventQueue::open(&env.config).unwrap();
    q.set_retry_delays([Duration::from_millis(50), Duration::from_millis(100)]);
    let worker = q.start(
        env.dispatcher.clone(),
        resolver(vec![ok, bad]),
        env.background.clone(),
    );
    q.enqueue("t1", "ok", "ev-ok", b"event").unwrap();
    q.enqueue("t1", "bad", "ev-bad", b"").unwrap();
    q.enqueue("t1", "gone", "ev-gone", b"").unwrap();

    assert_eq!(settled(&q, "ev-ok").await, EventStatus::Succeeded);
    let rec = q.get("ev-ok").unwrap();
    let result = rec.result.unwrap();
    assert_eq!(result.outcome, Outcome::Ok);
    assert_eq!(result.payload, b"EVENT");

    match settled(&q, "ev-bad").await {
        EventStatus::Failed { attempts, error } => {
            assert_eq!(attempts, 3);
            assert!(error.contains("Function.ExitError"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(std::fs::read_to_string(&count).unwrap().lines().count(), 3);
    assert!(q.get("ev-bad").unwrap().result.is_some());

    match settled(&q, "ev-gone").await {
        EventStatus::Failed { attempts: 0, error } => {
            assert!(error.contains("ResourceNotFoundException"), "{error}")
        }
        other => panic!("{other:?}"),
    }
    assert!(env
        .metrics
        .render()
        .contains("ember_invocations_total{outcome=\"handled_error\"} 3"));
    env.dispatcher.shutdown(Duration::from_secs(5)).await;
    worker.await.unwrap();
    env.wait_all_gone().await;
}

#[tokio::test]
async fn events_queued_before_a_restart_run_after_it() {
    let env = env(Settings::default());
    let spec = env.function("t1", "f", "cat");
    {
        let q = EventQueue::open(&env.config).unwrap();
        q.enqueue("t1", "f", "ev-1", b"one").unwrap();
        q.enqueue("t1", "f", "ev-2", b"two").unwrap();
        // The router stops before processing them.
    }
    let q = EventQueue::open(&env.config).unwrap();
    assert_eq!(q.get("ev-1").unwrap().status, EventStatus::Queued);
    let worker = q.start(
        env.dispatcher.clone(),
        resolver(vec![spec]),
        env.background.clone(),
    );
    assert_eq!(settled(&q, "ev-1").await, EventStatus::Succeeded);
    assert_eq!(settled(&q, "ev-2").await, EventStatus::Succeeded);
    assert_eq!(q.get("ev-2").unwrap().result.unwrap().payload, b"two");
    drop(q);
    // And the outcomes are still there after another restart.
    let q = EventQueue::open(&env.config).unwrap();
    assert_eq!(q.get("ev-1").unwrap().status, EventStatus::Succeeded);
    assert_eq!(q.get("ev-1").unwrap().result.unwrap().payload, b"one");
    env.dispatcher.shutdown(Duration::from_secs(5)).await;
    worker.await.unwrap();
    env.wait_all_gone().await;
}

#[tokio::test]
async fn a_tenant_backlog_does_not_delay_another_tenants_event() {
    let env = env(Settings {
        tenants: vec![("busy", 100), ("quiet", 10)],
        ..Default::default()
    });
    let slow = env.function("busy", "slow", "sleep 1; cat");
    let quick = env.function("quiet", "quick", "cat");
    let mut config = env.config.clone();
    config.events.workers = 3;
    config.events.workers_per_tenant = 2;
    let q = EventQueue::open(&config).unwrap();
    for i in 0..1000 {
        q.enqueue("busy", "slow", &format!("busy-{i:04}"), b"x")
            .unwrap();
    }
    // Queued after the whole backlog.
    q.enqueue("quiet", "quick", "quiet-1", b"first").unwrap();
    let started = std::time::Instant::now();
    let worker = q.start(
        env.dispatcher.clone(),
        resolver(vec![slow, quick]),
        env.background.clone(),
    );
    assert_eq!(settled(&q, "quiet-1").await, EventStatus::Succeeded);
    // One cold start and one attempt, not 1,000 slow attempts.
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(q.pending_of("busy") > 950, "{}", q.pending_of("busy"));
    env.dispatcher.shutdown(Duration::from_secs(5)).await;
    worker.await.unwrap();
    env.wait_all_gone().await;
}
