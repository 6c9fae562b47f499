//! The dispatcher against a fake VMM that runs the real guest agent on the
//! host: cold and warm starts, limits, recycling, reaping, health checks,
//! retiring and shutdown, and that nothing leaks.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use ember_invoke_router::dispatch::clock::ManualClock;
use ember_invoke_router::dispatch::{DispatchError, ErrorClass, InvokeOutput};
use ember_protocol::{ErrorInfo, Outcome, RuntimeKind};
use support::*;

/// The class of a failed invocation.
fn class(r: &Result<InvokeOutput, DispatchError>) -> Option<ErrorClass> {
    r.as_ref().err().map(DispatchError::class)
}

/// Not a test: the fake VMM's entry point (see `support`).
#[test]
fn fake_vmm_entry() {
    fake_vmm_main();
}

#[tokio::test]
async fn cold_then_warm_reuses_the_same_vm() {
    let env = env(Settings::default());
    let spec = Arc::new(env.function("t1", "upper", "tr a-z A-Z; echo \" $GREETING\" >&2"));
    let first = env
        .dispatcher
        .invoke(spec.clone(), input(b"hello"))
        .await
        .unwrap();
    assert_eq!(first.result.outcome, Outcome::Ok);
    assert_eq!(first.result.payload, b"HELLO");
    assert!(first.cold_start);
    assert!(String::from_utf8_lossy(&first.result.log_tail).contains("hi"));
    let slot_dir = env.run_dir.join(&first.slot_id);
    assert!(slot_dir.join("v.sock").exists());
    assert!(std::fs::read_to_string(slot_dir.join("console.log"))
        .unwrap()
        .contains("fake-vmm: booting"));

    let t = Instant::now();
    let second = env
        .dispatcher
        .invoke(spec.clone(), input(b"again"))
        .await
        .unwrap();
    assert!(!second.cold_start);
    assert_eq!(second.slot_id, first.slot_id);
    assert_eq!(second.result.payload, b"AGAIN");
    assert!(t.elapsed() < Duration::from_secs(2));

    assert_eq!(env.metrics.starts(), (1, 1));
    let text = env.metrics.render();
    assert!(
        text.contains("ember_invocations_total{outcome=\"success\"} 2"),
        "{text}"
    );
    assert!(text.contains("ember_slots{state=\"idle\"} 1"), "{text}");
    assert!(text.contains("ember_cold_start_seconds_count 1"), "{text}");
    env.dispatcher.shutdown(Duration::from_secs(5)).await;
    env.wait_all_gone().await;
}

#[tokio::test]
async fn function_errors_come_back_as_results_and_keep_the_vm() {
    let env = env(Settings::default());
    let spec = Arc::new(env.function("t1", "fails", "echo partial; exit 3"));
    let r = env
        .dispatcher
        .invoke(spec.clone(), input(b""))
        .await
        .unwrap();
    assert!(
        matches!(r.result.outcome, Outcome::HandledError(ErrorInfo { ref error_type, .. }) if error_type == "Function.ExitError")
    );
    let again = env.dispatcher.invoke(spec, input(b"")).await.unwrap();
    assert_eq!(again.slot_id, r.slot_id);
    env.dispatcher.shutdown(Duration::from_secs(5)).await;
    env.wait_all_gone().await;
}

#[tokio::test]
async fn vms_are_never_shared_across_tenants_functions_or_revisions() {
    let env = env(Settings::default());
    let a = env.function("t1", "f", "cat");
    let mut b = a.clone();
    b.tenant = "t2".into();
    let mut c = a.clone();
    c.name = "g".into();
    let mut d = a.clone();
    d.revision = "r2".into();
    let mut slots = Vec::new();
    for spec in [a.clone(), b, c, d, a] {
        let out = env
            .dispatcher
            .invoke(Arc::new(spec), input(b"x"))
            .await
            .unwrap();
        slots.push(out.slot_id);
    }
    // The last one (the first spec again) reuses the first VM.
    assert_eq!(slots[4], slots[0]);
    let mut distinct = slots[..4].to_vec();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 4, "{slots:?}");
    env.dispatcher.shutdown(Duration::from_secs(5)).await;
    env.wait_all_gone().await;
}

#[tokio::test]
async fn concurrent_invocations_get_their_own_vms_and_limits_throttle_at_once() {
    let env = env(Settings {
        tenant_concurrency: 2,
        ..Default::default()
    });
    let spec = Arc::new(env.function("t1", "slow", "sleep 1; cat"));
    let (d1, d2) = (env.dispatcher.clone(), env.dispatcher.clone());
    let (s1, s2) = (spec.clone(), spec.clone());
    let r1 = tokio::spawn(async move { d1.invoke(s1, input(b"1")).await });
    let r2 = tokio::spawn(async move { d2.invoke(s2, input(b"2")).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The tenant runs 2: a third is refused without waiting.
    let t = Instant::now();
    let third = env.dispatcher.invoke(spec.clone(), input(b"3")).await;
    assert!(
        class(&third) == Some(ErrorClass::TooManyRequests),
        "{third:?}"
    );
    assert!(t.elapsed() < Duration::from_millis(100));
    let (o1, o2) = (r1.await.unwrap().unwrap(), r2.await.unwrap().unwrap());
    assert_ne!(o1.slot_id, o2.slot_id);

    // Reserved concurrency 0 throttles; 1 allows one at a time.
    let mut throttled = (*spec).clone();
    throttled.reserved_concurrency = Some(0);
    let r = env.dispatcher.invoke(Arc::new(throttled), input(b"")).await;
    assert!(class(&r) == Some(ErrorClass::TooManyRequests));
    let mut one = (*spec).clone();
    one.reserved_concurrency = Some(1);
    let one = Arc::new(one);
    let d = env.dispatcher.clone();
    let o = one.clone();
    let running = tokio::spawn(async move { d.invoke(o, input(b"")).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = env.dispatcher.invoke(one, input(b"")).await;
    assert!(class(&r) == Some(ErrorClass::TooManyRequests), "{r:?}");
    running.await.unwrap().unwrap();
    assert!(env
        .metrics
        .render()
        .contains("ember_invocations_total{outcome=\"throttled\"} 3"));
    env.dispatcher.shutdown(Duration::from_secs(5)).await;
    env.wait_all_gone().await;
}

#[tokio::test]
async fn no_capacity_waits_then_429_and_idle_vms_of_others_are_evicted() {
    // Room for exactly one 128 MiB VM (128 + 64 + 16).
    let env = env(Settings {
        capacity_mem_mib: 208,
        queue_wait: Duration::from_secs(1),
        ..Default::default()
    });
    let slow = Arc::new(env.function("t1", "slow", "sleep 2"));
    let other = Arc::new(env.function("t1", "other", "cat"));
    let d = env.dispatcher.clone();
    let s = slow.clone();
    let busy = tokio::spawn(async move { d.invoke(s, input(b"")).await });
    tokio::time::sleep(Duration::from_millis(800)).await;
    let t = Instant::now();
    let r = env.dispatcher.invoke(other.clone(), input(b"x")).await;
    assert!(class(&r) == Some(ErrorClass::TooManyRequests), "{r:?}");
    assert!(t.elapsed() >= Duration::from_secs(1));
    let slow_slot = busy.await.unwrap().unwrap().slot_id;
    // Now `slow`'s VM is idle: `other` evicts it and cold starts.
    let r = env.dispatcher.invoke(other, input(b"x")).await.unwrap();
    assert!(r.cold_start);
    assert_ne!(r.slot_id, slow_slot);
    assert!(!env.run_dir.join(&slow_slot).exists());
    env.dispatcher.shutdown(Duration::from_secs(5)).await;
    env.wait_all_gone().await;
}

#[tokio::test]
async fn a_timed_out_vm_is_replaced() {
    let env = env(Settings::default());
    let mut spec = env.function(
        "t1",
        "sleepy",
        "read -r x; [ \"$x\" = sleep ] && sleep 30; echo done",
    );
    spec.timeout = Duration::from_millis(500);
    let spec = Arc::new(spec);
    let r = env
        .dispatcher
        .invoke(spec.clone(), input(b"sleep"))
        .await
        .unwrap();
    assert_eq!(r.result.outcome, Outcome::Timeout);
    let pid = env.vmm_pid(&r.slot_id);
    eventually(15, "the timed-out VM is stopped", || {
        !alive(pid) && !env.run_dir.join(&r.slot_id).exists()
    })
    .await;
    let next = env.dispatcher.invoke(spec, input(b"")).await.unwrap();
    assert!(next.cold_start);
    assert_ne!(next.slot_id, r.slot_id);
    assert_eq!(next.result.outcome, Outcome::Ok);
    env.dispatcher.shutdown(Duration::from_secs(5)).await;
    env.wait_all_gone().await;
}

#[tokio::test]
async fn a_vm_dying_mid_invocation_is_a_runtime_failure_and_is_cleaned_up() {
    let env = env(Settings::default());
    // The handler's parent is the (fake) VMM process: kill it.
    let spec = Arc::new(env.function(
        "t1",
        "crash",
        "read -r x; [ \"$x\" = die ] && kill -9 $PPID && sleep 1; echo alive",
    ));
    let r = env.dispatcher.invoke(spec.clone(), input(b"die")).await;
    assert!(class(&r) == Some(ErrorClass::RuntimeFailed), "{r:?}");
    env.wait_all_gone().await;
    let ok = env.dispatcher.invoke(spec, input(b"")).await.unwrap();
    assert!(ok.cold_start);
    env.dispatcher.shutdown(Duration::from_secs(5)).await;
    env.wait_all_gone().await;
}

#[tokio::test]
async fn an_init_error_is_a_runtime_failure_and_leaves_nothing() {
    let env = env(Settings::default());
    let mut spec = env.function("t1", "nobootstrap", "handler.main");
    spec.runtime = RuntimeKind::Provided;
    let r = env.dispatcher.invoke(Arc::new(spec), input(b"")).await;
    match r {
        Err(e @ DispatchError::Placement(_)) => {
            assert_eq!(e.class(), ErrorClass::RuntimeFailed);
            assert!(e.to_string().contains("Runtime."), "{e}")
        }
        other => panic!("{other:?}"),
    }
    env.wait_all_gone().await;
    assert_eq!(env.metrics.starts(), (0, 0));
}

#[tokio::test]
async fn a_vmm_that_cannot_boot_is_reported_with_its_console() {
    let env = env(Settings {
        vmm: FakeVmm::ExitAtOnce,
        ..Default::default()
    });
    let spec = Arc::new(env.function("t1", "f", "cat"));
    match env.dispatcher.invoke(spec, input(b"")).await {
        Err(e @ DispatchError::Placement(_)) => {
            assert_eq!(e.class(), ErrorClass::RuntimeFailed);
            let m = e.to_string();
            assert!(m.contains("status 1"), "{m}");
            assert!(m.contains("no KVM here"), "{m}");
        }
        other => panic!("{other:?}"),
    }
    // The lost VM was replaced once, and that one failed too.
    let text = env.metrics.render();
    assert!(text.contains("ember_cold_start_failures_total 2"), "{text}");
    env.wait_all_gone().await;
}

#[tokio::test]
async fn a_vm_lost_before_it_was_ready_is_replaced_once() {
    let env = env(Settings {
        vmm: FakeVmm::ExitFirstBoot,
        ..Default::default()
    });
    let spec = Arc::new(env.function("t1", "f", "cat"));
    let out = env.dispatcher.invoke(spec, input(b"once")).await.unwrap();
    assert_eq!(out.result.payload, b"once");
    assert!(out.cold_start);
    assert_eq!(env.metrics.starts(), (1, 0));
    let text = env.metrics.render();
    assert!(text.contains("ember_cold_start_failures_total 1"), "{text}");
    env.dispatcher.shutdown(Duration::from_secs(5)).await;
    env.wait_all_gone().await;
}

#[tokio::test]
async fn a_missing_vmm_binary_is_a_service_error() {
    let env = env(Settings::default());
    std::fs::remove_file(env.dir.path().join("fake-vmm")).unwrap();
    let spec = Arc::new(env.function("t1", "f", "cat"));
    let r = env.dispatcher.invoke(spec, input(b"")).await;
    assert!(class(&r) == Some(ErrorClass::Unavailable), "{r:?}");
    env.wait_all_gone().await;
}

#[tokio::test]
async fn idle_vms_are_reaped_after_the_keep_alive() {
    let clock = Arc::new(ManualClock::new());
    let env = env(Settings {
        keep_alive: Duration::from_secs(60),
        clock: Some(clock.clone()),
        ..Default::default()
    });
    let spec = Arc::new(env.function("t1", "f", "cat"));
    let r = env
        .dispatcher
        .invoke(spec.clone(), input(b""))
        .await
        .unwrap();
    let pid = env.vmm_pid(&r.slot_id);
    clock.advance(Duration::from_secs(59));
    env.dispatcher.tick().await;
    assert_eq!(env.dispatcher.slots().0.idle, 1);
    clock.advance(Duration::from_secs(1));
    env.dispatcher.tick().await;
    env.wait_all_gone().await;
    assert!(!alive(pid));
    // The next invocation cold starts.
    let next = env.dispatcher.invoke(spec, input(b"")).await.unwrap();
    assert!(next.cold_start);
    env.dispatcher.shutdown(Duration::from_secs(5)).await;
    env.wait_all_gone().await;
}

#[tokio::test]
async fn health_checks_keep_good_vms_and_recycle_dead_ones() {
    let clock = Arc::new(ManualClock::new());
    let env = env(Settings {
        health_interval: Duration::from_secs(30),
        clock: Some(clock.clone()),
        ..Default::default()
    });
    let spec = Arc::new(env.function("t1", "f", "cat"));
    let r = env
        .dispatcher
        .invoke(spec.clone(), input(b""))
        .await
        .unwrap();
    clock.advance(Duration::from_secs(30));
    env.dispatcher.tick().await;
    let again = env
        .dispatcher
        .invoke(spec.clone(), input(b""))
        .await
        .unwrap();
    assert_eq!(again.slot_id, r.slot_id);
    // The VMM dies while idle: the next check notices and recycles it.
    let pid = env.vmm_pid(&r.slot_id);
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    eventually(5, "the VMM is dead", || !alive(pid)).await;
    clock.advance(Duration::from_secs(30));
    env.dispatcher.tick().await;
    env.wait_all_gone().await;
    let fresh = env.dispatcher.invoke(spec, input(b"")).await.unwrap();
    assert!(fresh.cold_start);
    env.dispatcher.shutdown(Duration::from_secs(5)).await;
    env.wait_all_gone().await;
}

#[tokio::test]
async fn retire_stops_idle_vms_now_and_busy_ones_after_their_invocation() {
    let env = env(Settings::default());
    let spec = Arc::new(env.function(
        "t1",
        "f",
        "read -r x; [ \"$x\" = slow ] && sleep 2; echo ok",
    ));
    let d = env.dispatcher.clone();
    let s = spec.clone();
    let busy = tokio::spawn(async move { d.invoke(s, input(b"slow")).await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    // The first VM is busy, so this one gets its own, which then idles.
    let idle = env
        .dispatcher
        .invoke(spec.clone(), input(b""))
        .await
        .unwrap();
    assert!(idle.cold_start);
    env.dispatcher.retire("t1", "f").await;
    assert!(!env.run_dir.join(&idle.slot_id).exists());
    assert_eq!(env.slot_dirs().len(), 1, "the busy VM runs on");
    let busy = busy.await.unwrap().unwrap();
    assert_ne!(busy.slot_id, idle.slot_id);
    assert_eq!(busy.result.payload, b"ok\n");
    env.wait_all_gone().await;
    env.dispatcher.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn shutdown_finishes_in_flight_work_then_stops_every_vm() {
    let env = env(Settings::default());
    let slow = Arc::new(env.function("t1", "slow", "sleep 1; echo finished"));
    let idle = Arc::new(env.function("t1", "idle", "cat"));
    env.dispatcher
        .invoke(idle.clone(), input(b""))
        .await
        .unwrap();
    let d = env.dispatcher.clone();
    let s = slow.clone();
    let running = tokio::spawn(async move { d.invoke(s, input(b"")).await });
    tokio::time::sleep(Duration::from_millis(700)).await;
    env.dispatcher.shutdown(Duration::from_secs(10)).await;
    let out = running.await.unwrap().unwrap();
    assert_eq!(out.result.payload, b"finished\n");
    env.wait_all_gone().await;
    let r = env.dispatcher.invoke(idle, input(b"")).await;
    assert!(class(&r) == Some(ErrorClass::Unavailable));
}

#[tokio::test]
async fn shutdown_aborts_what_outlives_the_grace() {
    let env = env(Settings::default());
    let stuck = Arc::new(env.function("t1", "stuck", "sleep 30"));
    let d = env.dispatcher.clone();
    let running = tokio::spawn(async move { d.invoke(stuck, input(b"")).await });
    tokio::time::sleep(Duration::from_millis(800)).await;
    let t = Instant::now();
    env.dispatcher.shutdown(Duration::from_millis(200)).await;
    assert!(t.elapsed() < Duration::from_secs(10));
    let r = running.await.unwrap();
    assert!(class(&r) == Some(ErrorClass::Unavailable), "{r:?}");
    env.wait_all_gone().await;
}

#[tokio::test]
async fn each_tenant_gets_its_own_concurrency_limit() {
    let env = env(Settings {
        tenants: vec![("one", 1), ("hundred", 100)],
        ..Default::default()
    });
    let one = Arc::new(env.function("one", "slow", "sleep 1; cat"));
    let hundred = Arc::new(env.function("hundred", "slow", "sleep 1; cat"));
    let (d, s) = (env.dispatcher.clone(), one.clone());
    let first = tokio::spawn(async move { d.invoke(s, input(b"1")).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The tenant with limit 1 is at its limit: refused at once.
    let t = Instant::now();
    let second = env.dispatcher.invoke(one, input(b"2")).await;
    assert_eq!(
        class(&second),
        Some(ErrorClass::TooManyRequests),
        "{second:?}"
    );
    assert!(second
        .unwrap_err()
        .to_string()
        .contains("concurrency of 1 is in use"));
    assert!(t.elapsed() < Duration::from_millis(200));
    // The other tenant's three run side by side.
    let runs: Vec<_> = (0..3)
        .map(|i| {
            let (d, s) = (env.dispatcher.clone(), hundred.clone());
            tokio::spawn(async move { d.invoke(s, input(format!("{i}").as_bytes())).await })
        })
        .collect();
    for r in runs {
        assert_eq!(r.await.unwrap().unwrap().result.outcome, Outcome::Ok);
    }
    first.await.unwrap().unwrap();
    env.dispatcher.shutdown(Duration::from_secs(5)).await;
    env.wait_all_gone().await;
}

#[tokio::test]
async fn reserved_concurrency_is_carved_from_its_own_tenant() {
    let env = env(Settings {
        tenants: vec![("small", 2), ("large", 10)],
        ..Default::default()
    });
    // small reserves its whole limit for `reserved`.
    let mut reserved = env.function("small", "reserved", "cat");
    reserved.reserved_concurrency = Some(2);
    env.dispatcher
        .invoke(Arc::new(reserved), input(b""))
        .await
        .unwrap();
    // Nothing is left for small's other functions...
    let small_other = Arc::new(env.function("small", "other", "cat"));
    let r = env.dispatcher.invoke(small_other, input(b"")).await;
    assert_eq!(class(&r), Some(ErrorClass::TooManyRequests), "{r:?}");
    assert!(r
        .unwrap_err()
        .to_string()
        .contains("unreserved concurrency of 0"));
    // ...while large's unreserved share is whole.
    let large_other = Arc::new(env.function("large", "other", "sleep 1; cat"));
    let runs: Vec<_> = (0..3)
        .map(|_| {
            let (d, s) = (env.dispatcher.clone(), large_other.clone());
            tokio::spawn(async move { d.invoke(s, input(b"")).await })
        })
        .collect();
    for r in runs {
        r.await.unwrap().unwrap();
    }
    env.dispatcher.shutdown(Duration::from_secs(5)).await;
    env.wait_all_gone().await;
}

#[tokio::test]
async fn a_guest_that_stops_reading_fails_its_own_invocation_and_stalls_nothing() {
    let clock = Arc::new(ManualClock::new());
    let env = env(Settings {
        keep_alive: Duration::from_secs(60),
        health_interval: Duration::from_secs(30),
        clock: Some(clock.clone()),
        ..Default::default()
    });
    let other = Arc::new(env.function("t1", "other", "cat"));
    let warm = env
        .dispatcher
        .invoke(other.clone(), input(b"x"))
        .await
        .unwrap();
    let mut deaf = env.deaf_function("t2", "deaf");
    deaf.timeout = Duration::from_secs(1);
    let deaf = Arc::new(deaf);
    // 4 MiB: far more than the socket buffers take without a reader.
    let started = Instant::now();
    let (d, s) = (env.dispatcher.clone(), deaf.clone());
    let stuck = tokio::spawn(async move { d.invoke(s, input(&vec![b'a'; 4 << 20])).await });
    eventually(15, "the deaf VM runs its invocation", || {
        env.dispatcher.slots().0.busy == 1
    })
    .await;
    // Meanwhile the other VM's health check and invocations go on...
    clock.advance(Duration::from_secs(30));
    let t = Instant::now();
    env.dispatcher.tick().await;
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    let again = env
        .dispatcher
        .invoke(other.clone(), input(b"y"))
        .await
        .unwrap();
    assert_eq!(again.slot_id, warm.slot_id);
    // ...and so does its reaping.
    clock.advance(Duration::from_secs(61));
    let t = Instant::now();
    env.dispatcher.tick().await;
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    eventually(10, "the idle VM is reaped", || {
        !env.run_dir.join(&warm.slot_id).exists()
    })
    .await;
    // The deaf guest's invocation fails at its own deadline (timeout +
    // grace), not later, and its VM, slot and capacity go.
    let r = tokio::time::timeout(Duration::from_secs(30), stuck)
        .await
        .expect("the router blocked on a guest that stopped reading")
        .unwrap();
    let took = started.elapsed();
    assert_eq!(class(&r), Some(ErrorClass::RuntimeFailed), "{r:?}");
    assert!(r.unwrap_err().to_string().contains("stopped reading"));
    assert!(took < Duration::from_secs(20), "{took:?}");
    env.wait_all_gone().await;
    env.dispatcher.shutdown(Duration::from_secs(5)).await;
}
