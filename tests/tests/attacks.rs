//! Function-level attacks through the router's API, with real VMs in the
//! soft host: each hostile function of tenant `alpha` runs while a steady
//! function of tenant `beta` is invoked in a loop and must keep answering
//! correctly. The hostile function must fail cleanly (a Lambda-shaped
//! function error or its own output, within its Timeout plus a margin),
//! and the platform must stay usable: the next invocation of a harmless
//! function of the same tenant answers.
//!
//! Attacks: a fork bomb, a memory hog past its MemorySize, a CPU spin past
//! its Timeout, a 300 MB stderr flood, a 7 MB response, filling `/tmp`,
//! and `echo c > /proc/sysrq-trigger`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ember_e2e::artifacts_unless_skipped;
use ember_e2e::lambda_api::{exec_function, Key, Reply};
use ember_e2e::soft_router::SoftRouter;
use serde_json::json;

const ALPHA: Key = Key {
    id: "AKIAEMBERE2EATTACK01",
    secret: "alpha-attack-secret-0123",
};
const BETA: Key = Key {
    id: "AKIAEMBERE2ESTEADY01",
    secret: "beta-steady-secret-0123",
};

/// What one attack is and what its reply must look like.
struct Attack {
    name: &'static str,
    handler: &'static str,
    memory_mib: u32,
    timeout_s: u32,
    /// Checks the hostile invocation's reply.
    check: fn(&Reply),
    /// Invoke it a second time and expect the same VM (it survived).
    again_warm: bool,
}

fn function_error(r: &Reply) -> Option<&str> {
    r.header("x-amz-function-error")
}

fn attacks() -> Vec<Attack> {
    vec![
        Attack {
            name: "fork-bomb",
            // Forks until pids.max refuses, then spins (no fork needed) past
            // its Timeout: the agent must still be there to end it.
            handler: "b() { b | b & }; b; while :; do :; done",
            memory_mib: 128,
            timeout_s: 8,
            check: |r| {
                assert_eq!(r.status, 200, "{r}");
                assert_eq!(function_error(r), Some("Unhandled"), "{r}");
                assert!(
                    r.text().contains("Task timed out after 8.00 seconds"),
                    "{r}"
                );
            },
            again_warm: false,
        },
        Attack {
            name: "memory-hog",
            handler: "awk 'BEGIN { s = \"x\"; while (1) s = s s }'; echo survived",
            memory_mib: 128,
            timeout_s: 30,
            check: |r| {
                // The cgroup's OOM killer ends the handler: its exit is the
                // error (or, if only awk died, the shell goes on).
                assert_eq!(r.status, 200, "{r}");
                assert!(
                    function_error(r) == Some("Unhandled") || r.text().trim() == "survived",
                    "{r}"
                );
            },
            again_warm: false,
        },
        Attack {
            name: "cpu-spin",
            handler: "while :; do :; done",
            memory_mib: 128,
            timeout_s: 3,
            check: |r| {
                assert_eq!(r.status, 200, "{r}");
                assert!(
                    r.text().contains("Task timed out after 3.00 seconds"),
                    "{r}"
                );
            },
            again_warm: false,
        },
        Attack {
            name: "stderr-flood",
            handler: "head -c 314572800 /dev/zero | tr '\\0' E >&2; echo flooded",
            memory_mib: 128,
            // Below the client's 120 s read timeout, so a timeout still answers.
            timeout_s: 90,
            check: |r| {
                // Either the flood got through (the log tail is bounded) or
                // it ran past its Timeout; never a broken VM or router.
                assert_eq!(r.status, 200, "{r}");
                if function_error(r).is_none() {
                    assert_eq!(r.text().trim(), "flooded", "{r}");
                } else {
                    assert!(r.text().contains("Task timed out"), "{r}");
                }
                let tail = r.header("x-amz-log-result").unwrap_or("");
                assert!(tail.len() <= 8192, "log tail of {} bytes", tail.len());
            },
            again_warm: false,
        },
        Attack {
            name: "huge-response",
            handler: "head -c 7340032 /dev/zero | tr '\\0' R",
            memory_mib: 256,
            timeout_s: 60,
            check: |r| {
                assert_eq!(r.status, 200, "{}", r.status);
                assert_eq!(function_error(r), Some("Unhandled"), "{}", r.status);
                assert!(
                    r.body.len() < 4096,
                    "a {} byte body came back",
                    r.body.len()
                );
                assert!(r.text().contains("ResponseSizeTooLarge"), "{r}");
            },
            again_warm: false,
        },
        Attack {
            name: "fill-tmp",
            handler: "dd if=/dev/zero of=/tmp/fill bs=1M count=4096 2>/dev/null; \
                      echo \"filled $(ls -l /tmp/fill | awk '{print $5}')\"",
            memory_mib: 128,
            timeout_s: 60,
            check: |r| {
                assert_eq!(r.status, 200, "{r}");
                // Filling tmpfs is charged to the handler's memory: an OOM
                // kill is a clean failure too.
                if function_error(r).is_some() {
                    return;
                }
                let size: u64 = r
                    .text()
                    .trim()
                    .strip_prefix("filled ")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("{r}"));
                assert!(size < 4096 << 20, "/tmp took {size} bytes: it has no limit");
            },
            again_warm: true,
        },
        Attack {
            name: "sysrq-crash",
            handler: "echo c > /proc/sysrq-trigger && echo crashed-nothing || echo refused",
            memory_mib: 128,
            timeout_s: 10,
            check: |r| {
                assert_eq!(r.status, 200, "{r}");
                assert_eq!(r.text().trim(), "refused", "{r}");
            },
            again_warm: true,
        },
    ]
}

/// Invokes a hostile function; a cold start that did not come up in time
/// (the soft host under load, before the handler ran at all) is retried
/// once, said on stderr.
fn invoke_hostile(router: &SoftRouter, name: &str) -> (Reply, Duration) {
    let (r, took) = router.invoke(ALPHA, name, &json!({}));
    if r.status == 502 && r.text().contains("the VM failed to start") {
        eprintln!(
            "attack {name}: cold start failed ({}); retrying once",
            r.text()
        );
        return router.invoke(ALPHA, name, &json!({}));
    }
    (r, took)
}

/// Each attack runs while tenant beta's `steady` function is invoked in a
/// loop; every steady reply must be right, and after each attack a harmless
/// function of the attacking tenant still answers.
#[test]
fn hostile_functions_fail_cleanly_while_another_tenant_keeps_working() {
    let Some(a) = artifacts_unless_skipped("attacks") else {
        return;
    };
    let router = SoftRouter::start(&a, "attacks", &[("alpha", ALPHA), ("beta", BETA)], 900);
    router.create(
        BETA,
        exec_function("steady", "printf 'steady:'; cat", 128, 10),
    );
    router.create(
        ALPHA,
        exec_function("harmless", "printf 'ok:'; cat", 128, 10),
    );
    let (first, _) = router.invoke(BETA, "steady", &json!(0));
    assert_eq!(
        (first.status, first.text()),
        (200, "steady:0".into()),
        "{first}"
    );
    for attack in attacks() {
        router.create(
            ALPHA,
            exec_function(
                attack.name,
                attack.handler,
                attack.memory_mib,
                attack.timeout_s,
            ),
        );
        let done = AtomicBool::new(false);
        let (hostile, steady) = std::thread::scope(|s| {
            let steady = s.spawn(|| {
                let mut n = 0u32;
                while !done.load(Ordering::SeqCst) {
                    n += 1;
                    let (r, took) = router.invoke(BETA, "steady", &json!(n));
                    assert_eq!(
                        (r.status, r.text()),
                        (200, format!("steady:{n}")),
                        "during {}: {r}",
                        attack.name
                    );
                    assert!(
                        took < Duration::from_secs(30),
                        "during {}: steady took {took:?}",
                        attack.name
                    );
                }
                n
            });
            let hostile = invoke_hostile(&router, attack.name);
            done.store(true, Ordering::SeqCst);
            (hostile, steady.join())
        });
        let steady =
            steady.unwrap_or_else(|_| panic!("the steady tenant failed during {}", attack.name));
        let (reply, took) = hostile;
        eprintln!(
            "attack {}: HTTP {} {:?} in {took:?}, {steady} steady invocations meanwhile",
            attack.name,
            reply.status,
            function_error(&reply)
        );
        (attack.check)(&reply);
        let margin = Duration::from_secs(u64::from(attack.timeout_s) + 60);
        assert!(took < margin, "{} took {took:?}", attack.name);
        assert!(
            steady >= 1,
            "no steady invocation ran during {}",
            attack.name
        );
        if attack.again_warm {
            let (again, _) = router.invoke(ALPHA, attack.name, &json!({}));
            (attack.check)(&again);
            assert_eq!(
                again.header("x-ember-cold-start"),
                Some("false"),
                "the VM of {} did not survive it: {again}",
                attack.name
            );
        }
        let (after, _) = router.invoke(ALPHA, "harmless", &json!(attack.name));
        assert_eq!(
            (after.status, after.text()),
            (200, format!("ok:\"{}\"", attack.name)),
            "after {}: {after}",
            attack.name
        );
    }
    let mut router = router;
    let out = router.stop();
    assert!(!out.stdout.contains("ROUTER-DIED"), "{out}");
    assert!(out.stdout.contains("ROUTER-EXIT 0"), "{out}");
    assert!(out.stdout.contains("LEFT-VM-DIRS 0"), "{out}");
}
