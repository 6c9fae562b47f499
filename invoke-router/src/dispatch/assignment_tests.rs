//! The assignment state machine, driven with a manual clock.

use std::time::Duration;

use super::*;
use crate::dispatch::clock::{Clock, ManualClock};

fn pool(tenant: &str, function: &str, revision: &str) -> PoolKey {
    PoolKey {
        tenant: tenant.into(),
        function: function.into(),
        revision: revision.into(),
    }
}

fn cap(mem_mib: u64, vcpus: u32) -> Assignment {
    Assignment::new(Capacity { mem_mib, vcpus }, "vm-t-")
}

fn cold(d: Decision) -> SlotId {
    match d {
        Decision::Cold(id) => id,
        other => panic!("expected a cold start, got {other:?}"),
    }
}

#[test]
fn cold_then_warm_reuses_the_same_slot() {
    let clock = ManualClock::new();
    let mut a = cap(1024, 4);
    let p = pool("t", "f", "r1");
    let id = cold(a.assign(&p, 256, clock.now()));
    a.started(&id);
    assert_eq!(a.counts().busy, 1);
    assert_eq!(a.finished(&id, true, clock.now()), Disposition::Idle);
    clock.advance(Duration::from_millis(5));
    assert_eq!(a.assign(&p, 256, clock.now()), Decision::Warm(id.clone()));
    // Busy: a second invocation gets its own VM (one invocation per VM).
    let other = cold(a.assign(&p, 256, clock.now()));
    assert_ne!(other, id);
    assert_eq!(
        a.used(),
        Capacity {
            mem_mib: 512,
            vcpus: 2
        }
    );
}

#[test]
fn slots_are_never_shared_across_tenants_functions_or_revisions() {
    let clock = ManualClock::new();
    let mut a = cap(4096, 8);
    let base = pool("t", "f", "r1");
    let id = cold(a.assign(&base, 128, clock.now()));
    a.started(&id);
    a.finished(&id, true, clock.now());
    for p in [
        pool("u", "f", "r1"),
        pool("t", "g", "r1"),
        pool("t", "f", "r2"),
    ] {
        let other = cold(a.assign(&p, 128, clock.now()));
        assert_ne!(other, id, "{p:?} got {base:?}'s slot");
    }
    assert_eq!(a.counts().idle, 1);
}

#[test]
fn the_most_recently_used_idle_slot_is_taken() {
    let clock = ManualClock::new();
    let mut a = cap(1024, 4);
    let p = pool("t", "f", "r");
    let s1 = cold(a.assign(&p, 128, clock.now()));
    let s2 = cold(a.assign(&p, 128, clock.now()));
    a.started(&s1);
    a.started(&s2);
    a.finished(&s1, true, clock.now());
    clock.advance(Duration::from_secs(1));
    a.finished(&s2, true, clock.now());
    // s2 is warmest, so s1 can age out.
    assert_eq!(a.assign(&p, 128, clock.now()), Decision::Warm(s2));
}

#[test]
fn no_capacity_means_wait_and_a_stop_frees_it() {
    let clock = ManualClock::new();
    let mut a = cap(256, 4);
    let p = pool("t", "f", "r");
    let id = cold(a.assign(&p, 256, clock.now()));
    a.started(&id);
    assert_eq!(
        a.assign(&p, 256, clock.now()),
        Decision::Wait { evict: vec![] }
    );
    // A crash: the slot stops, and only once it is gone is there room.
    assert_eq!(a.finished(&id, false, clock.now()), Disposition::Stop);
    assert_eq!(
        a.assign(&p, 256, clock.now()),
        Decision::Wait { evict: vec![] }
    );
    a.stopped(&id);
    assert!(matches!(a.assign(&p, 256, clock.now()), Decision::Cold(_)));
}

#[test]
fn vcpus_are_capacity_too() {
    let clock = ManualClock::new();
    let mut a = cap(100_000, 1);
    let _ = cold(a.assign(&pool("t", "f", "r"), 128, clock.now()));
    assert!(matches!(
        a.assign(&pool("t", "g", "r"), 128, clock.now()),
        Decision::Wait { .. }
    ));
}

#[test]
fn idle_slots_of_other_pools_are_evicted_least_recently_used_first() {
    let clock = ManualClock::new();
    let mut a = cap(384, 8);
    let (f, g, h) = (
        pool("t", "f", "r"),
        pool("t", "g", "r"),
        pool("t", "h", "r"),
    );
    let sf = cold(a.assign(&f, 128, clock.now()));
    let sg = cold(a.assign(&g, 128, clock.now()));
    let sh = cold(a.assign(&h, 128, clock.now()));
    for id in [&sf, &sg, &sh] {
        a.started(id);
    }
    a.finished(&sg, true, clock.now());
    clock.advance(Duration::from_secs(1));
    a.finished(&sf, true, clock.now());
    // h is busy; g idled first, so g goes.
    let k = pool("t", "k", "r");
    assert_eq!(
        a.assign(&k, 128, clock.now()),
        Decision::Wait {
            evict: vec![sg.clone()]
        }
    );
    // Asking again while g stops evicts nothing more.
    assert_eq!(
        a.assign(&k, 128, clock.now()),
        Decision::Wait { evict: vec![] }
    );
    a.stopped(&sg);
    assert!(matches!(a.assign(&k, 128, clock.now()), Decision::Cold(_)));
    assert_eq!(a.counts().idle, 1);
}

#[test]
fn a_function_larger_than_the_host_is_refused() {
    let clock = ManualClock::new();
    let mut a = cap(256, 4);
    assert_eq!(
        a.assign(&pool("t", "f", "r"), 512, clock.now()),
        Decision::TooLarge
    );
}

#[test]
fn a_failed_cold_start_frees_its_capacity() {
    let clock = ManualClock::new();
    let mut a = cap(256, 4);
    let p = pool("t", "f", "r");
    let id = cold(a.assign(&p, 256, clock.now()));
    a.start_failed(&id);
    assert!(a.is_empty());
    assert_eq!(
        a.used(),
        Capacity {
            mem_mib: 0,
            vcpus: 0
        }
    );
}

#[test]
fn idle_slots_are_reaped_after_the_keep_alive() {
    let clock = ManualClock::new();
    let keep = Duration::from_secs(60);
    let mut a = cap(1024, 4);
    let p = pool("t", "f", "r");
    let s1 = cold(a.assign(&p, 128, clock.now()));
    let s2 = cold(a.assign(&p, 128, clock.now()));
    a.started(&s1);
    a.started(&s2);
    a.finished(&s1, true, clock.now());
    clock.advance(Duration::from_secs(59));
    assert!(a.reap(clock.now(), keep).is_empty());
    clock.advance(Duration::from_secs(1));
    // The busy one is never reaped.
    assert_eq!(a.reap(clock.now(), keep), vec![s1.clone()]);
    assert_eq!(a.counts().stopping, 1);
    a.finished(&s2, true, clock.now());
    clock.advance(Duration::from_secs(30));
    assert!(a.reap(clock.now(), keep).is_empty());
    a.stopped(&s1);
    clock.advance(Duration::from_secs(30));
    assert_eq!(a.reap(clock.now(), keep), vec![s2]);
}

#[test]
fn health_checks_take_idle_slots_out_and_do_not_count_as_use() {
    let clock = ManualClock::new();
    let every = Duration::from_secs(10);
    let keep = Duration::from_secs(25);
    let mut a = cap(1024, 4);
    let p = pool("t", "f", "r");
    let id = cold(a.assign(&p, 128, clock.now()));
    a.started(&id);
    a.finished(&id, true, clock.now());
    assert!(a.due_checks(clock.now(), every).is_empty());
    clock.advance(every);
    assert_eq!(a.due_checks(clock.now(), every), vec![id.clone()]);
    // While checking, an invocation does not get it.
    assert!(matches!(a.assign(&p, 128, clock.now()), Decision::Cold(_)));
    assert_eq!(a.checked(&id, true, clock.now()), Disposition::Idle);
    assert!(a.due_checks(clock.now(), every).is_empty());
    clock.advance(Duration::from_secs(15));
    // Idle since the start: reaped at 25 s although pinged at 10 s.
    assert!(a.reap(clock.now(), keep).contains(&id));
}

#[test]
fn a_failed_health_check_stops_the_slot() {
    let clock = ManualClock::new();
    let mut a = cap(1024, 4);
    let p = pool("t", "f", "r");
    let id = cold(a.assign(&p, 128, clock.now()));
    a.started(&id);
    a.finished(&id, true, clock.now());
    clock.advance(Duration::from_secs(1));
    assert_eq!(a.due_checks(clock.now(), Duration::ZERO), vec![id.clone()]);
    assert_eq!(a.checked(&id, false, clock.now()), Disposition::Stop);
    assert_eq!(a.counts().stopping, 1);
}

#[test]
fn retire_stops_idle_slots_now_and_busy_ones_after_their_work() {
    let clock = ManualClock::new();
    let mut a = cap(4096, 8);
    let (f1, f2, g) = (
        pool("t", "f", "r1"),
        pool("t", "f", "r2"),
        pool("t", "g", "r1"),
    );
    let idle = cold(a.assign(&f1, 128, clock.now()));
    let busy = cold(a.assign(&f2, 128, clock.now()));
    let starting = cold(a.assign(&f1, 128, clock.now()));
    let other = cold(a.assign(&g, 128, clock.now()));
    for id in [&idle, &busy, &other] {
        a.started(id);
    }
    a.finished(&idle, true, clock.now());
    a.finished(&other, true, clock.now());
    assert_eq!(a.retire("t", "f"), vec![idle]);
    assert_eq!(a.finished(&busy, true, clock.now()), Disposition::Stop);
    a.started(&starting);
    assert_eq!(a.finished(&starting, true, clock.now()), Disposition::Stop);
    // The other function keeps its warm slot.
    assert_eq!(a.assign(&g, 128, clock.now()), Decision::Warm(other));
}

#[test]
fn retire_all_drains_everything() {
    let clock = ManualClock::new();
    let mut a = cap(4096, 8);
    let p = pool("t", "f", "r");
    let s1 = cold(a.assign(&p, 128, clock.now()));
    let s2 = cold(a.assign(&p, 128, clock.now()));
    a.started(&s1);
    a.started(&s2);
    a.finished(&s1, true, clock.now());
    assert_eq!(a.retire_all(), vec![s1.clone()]);
    assert_eq!(a.finished(&s2, true, clock.now()), Disposition::Stop);
    a.stopped(&s1);
    a.stopped(&s2);
    assert!(a.is_empty());
}
