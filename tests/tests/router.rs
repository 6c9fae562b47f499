//! The router with real microVMs (issue 5): `ember-invoke-router serve`
//! runs inside the soft KVM host with the static `ember-vmm`, the guest
//! images and `mkfs.ext4`; the tests drive its Lambda API from this machine
//! over HTTP through the soft host's forwarded port, with SigV4-signed
//! requests from two tenants.
//!
//! The soft host's script (see [`SoftRouter::start`]) starts the router,
//! then serves a one-line control port (busybox `nc`, forwarded too):
//! `restart` stops the router with SIGTERM and starts it again on the same
//! data directory, `stop` stops it and ends the job, printing the router's
//! exit statuses and its log. Every test stops its soft host, and a test
//! that fails prints the soft host's output (with the router's log).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ember_e2e::lambda_api::{self, exec_function, zip_file, Key, Reply};
use ember_e2e::{
    artifacts_unless_skipped, exchange_until, free_port, tempdir, Artifacts, Finished,
};
use serde_json::{json, Value};

const ALPHA: Key = Key {
    id: "AKIAEMBERE2EALPHA000",
    secret: "alpha-secret-0123456789",
};
const BETA: Key = Key {
    id: "AKIAEMBERE2EBETA0000",
    secret: "beta-secret-0123456789",
};

/// Longest wait for the router to answer after the soft host starts (boot
/// under TCG, possibly next to other soft hosts).
const READY_WITHIN: Duration = Duration::from_secs(240);

/// A router serving inside a soft host, driven from here.
struct SoftRouter {
    child: Child,
    api: String,
    ctrl: u16,
    dir: PathBuf,
    finished: bool,
}

impl SoftRouter {
    /// Boots a soft host running the router with tenants `alpha` and `beta`
    /// and waits until its API answers.
    fn start(a: &Artifacts, tag: &str) -> Self {
        let (port, ctrl) = (free_port(), free_port());
        let dir = tempdir(&format!("router-{tag}"));
        // Tenants (with their secrets) from a file, never argv.
        let tenants = format!(
            "{}{}",
            ALPHA.tenant_entry("alpha"),
            BETA.tenant_entry("beta")
        );
        // A short data dir in the job's own directory: the VMs' vsock
        // sockets live under it and a Unix socket path must fit in 107 bytes.
        let script = format!(
            "export PATH=$PWD/bin:$PATH
             (umask 077; printf '%s' '{tenants}' >tenants.toml)
             serve() {{
                 ./ember-invoke-router serve --listen 0.0.0.0:{port} --data-dir $PWD/d \
                     --kernel vmlinux --initramfs initramfs --vmm ./ember-vmm \
                     --capacity-mem-mib 2048 --capacity-vcpus 8 --tenants-file tenants.toml >>router.log 2>&1 &
                 router=$!
             }}
             stop() {{
                 kill -TERM $router; wait $router; echo \"ROUTER-EXIT $?\"
                 echo \"LEFT-VM-DIRS $(ls d/run | wc -l)\"
             }}
             serve
             while :; do
                 cmd=$(echo ok | ./busybox nc -l -p {ctrl})
                 case \"$cmd\" in
                     restart*) stop; serve ;;
                     stop*) break ;;
                 esac
             done
             stop
             echo '--- router log ---'
             cat router.log"
        );
        let puts = [
            format!("{}:ember-invoke-router", a.router.display()),
            format!("{}:ember-vmm", a.vmm.display()),
            format!("{}:vmlinux", a.vmlinux.display()),
            format!("{}:initramfs", a.initramfs.display()),
            "/sbin/mkfs.ext4:bin/mkfs.ext4".to_string(),
            "/bin/busybox:busybox".to_string(),
        ];
        let mut args = vec![
            "--timeout".to_string(),
            "400".into(),
            "--mem".into(),
            "3072".into(),
            "--forward".into(),
            port.to_string(),
            "--forward".into(),
            ctrl.to_string(),
        ];
        for p in puts {
            args.extend(["--put".to_string(), p]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let file = |name: &str| std::fs::File::create(dir.join(name)).expect("output file");
        let child = {
            use std::os::unix::process::CommandExt;
            let mut cmd: Command = ember_e2e::softhost(&args);
            cmd.args(["sh", "-c", &script])
                .stdin(Stdio::null())
                .stdout(file("stdout"))
                .stderr(file("stderr"))
                .process_group(0)
                .spawn()
                .expect("spawn images/softhost")
        };
        let mut router = SoftRouter {
            child,
            api: format!("127.0.0.1:{port}"),
            ctrl,
            dir,
            finished: false,
        };
        router.wait_ready();
        router
    }

    /// Polls ListFunctions until it answers 200; panics (with the soft
    /// host's output) when the soft host ends first or after READY_WITHIN.
    fn wait_ready(&mut self) {
        let start = Instant::now();
        while start.elapsed() < READY_WITHIN {
            if let Ok(Some(_)) = self.child.try_wait() {
                panic!("the soft host ended before the router answered");
            }
            if let Ok(r) =
                lambda_api::request(&self.api, ALPHA, "GET", "/2015-03-31/functions/", b"", &[])
            {
                if r.status == 200 {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!("the router did not answer within {READY_WITHIN:?}");
    }

    /// Sends a request as `key`; panics when the connection fails.
    fn call(&self, key: Key, method: &str, uri: &str, body: &Value) -> Reply {
        let bytes = if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        self.raw(key, method, uri, &bytes, &[])
    }

    /// Sends a request with extra headers as `key`.
    fn raw(&self, key: Key, method: &str, uri: &str, body: &[u8], extra: &[(&str, &str)]) -> Reply {
        lambda_api::request(&self.api, key, method, uri, body, extra)
            .unwrap_or_else(|e| panic!("{method} {uri}: {e}"))
    }

    /// Creates a function as `key` and asserts 201.
    fn create(&self, key: Key, body: Value) {
        let r = self.call(key, "POST", "/2015-03-31/functions", &body);
        assert_eq!(
            r.status, 201,
            "CreateFunction {}:\n{r}",
            body["FunctionName"]
        );
    }

    /// A synchronous invocation of `name` with `payload`, and its duration.
    fn invoke(&self, key: Key, name: &str, payload: &Value) -> (Reply, Duration) {
        let started = Instant::now();
        let r = self.call(
            key,
            "POST",
            &format!("/2015-03-31/functions/{name}/invocations"),
            payload,
        );
        (r, started.elapsed())
    }

    /// Queues an Event invocation of `name` (asserting 202) and polls its
    /// record until it is `Succeeded` or `Failed`; returns the record.
    fn event(&self, key: Key, name: &str, payload: &Value) -> Value {
        let id = self.queue_event(key, name, payload);
        self.event_outcome(key, name, &id)
    }

    /// Queues an Event invocation of `name`, asserts 202, returns its
    /// request id.
    fn queue_event(&self, key: Key, name: &str, payload: &Value) -> String {
        let queued = self.raw(
            key,
            "POST",
            &format!("/2015-03-31/functions/{name}/invocations"),
            payload.to_string().as_bytes(),
            &[("x-amz-invocation-type", "Event")],
        );
        assert_eq!(queued.status, 202, "{queued}");
        queued
            .header("x-amzn-requestid")
            .expect("request id")
            .to_string()
    }

    /// Polls the record of Event `id` until it is `Succeeded` or `Failed`.
    fn event_outcome(&self, key: Key, name: &str, id: &str) -> Value {
        let logs = format!("/2015-03-31/functions/{name}/invocations/{id}/logs");
        let start = Instant::now();
        loop {
            let r = self.call(key, "GET", &logs, &Value::Null);
            assert_eq!(r.status, 200, "{r}");
            let doc = r.json();
            if doc["Status"] == "Succeeded" || doc["Status"] == "Failed" {
                return doc;
            }
            assert!(
                start.elapsed() < Duration::from_secs(90),
                "the event is stuck: {doc}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Asks the soft host's script to restart the router, then waits for it.
    fn restart(&mut self) {
        let reply = exchange_until(self.ctrl, b"restart\n", Duration::from_secs(60));
        assert!(reply.is_some(), "the control port did not answer");
        // The old router may still answer for a moment: wait until it is gone.
        let gone = Instant::now();
        while gone.elapsed() < Duration::from_secs(60)
            && lambda_api::request(&self.api, ALPHA, "GET", "/2015-03-31/functions/", b"", &[])
                .is_ok_and(|r| r.status == 200)
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        self.wait_ready();
    }

    /// Stops the router and the soft host and returns the soft host's output.
    fn stop(&mut self) -> Finished {
        self.finished = true;
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = exchange_until(self.ctrl, b"stop\n", Duration::from_secs(30));
        }
        let start = Instant::now();
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(s)) => break Some(s),
                _ if start.elapsed() > Duration::from_secs(90) => {
                    // The soft host's own process group: QEMU and its helpers.
                    // SAFETY: kill(2) on a process group we created.
                    unsafe { libc::kill(-(self.child.id() as i32), libc::SIGTERM) };
                    break self.child.wait().ok();
                }
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        };
        let read = |name: &str| std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        let out = Finished {
            code: status.and_then(|s| s.code()),
            stdout: read("stdout"),
            stderr: read("stderr"),
        };
        let _ = std::fs::remove_dir_all(&self.dir);
        out
    }

    /// Stops everything and asserts a clean end: the job's exit 0, and
    /// every router run ending with status 0 (graceful shutdown) and no VM
    /// directory left behind.
    fn finish(mut self) -> Finished {
        let out = self.stop();
        assert_eq!(out.code, Some(0), "{out}");
        let lines = |prefix: &str| -> Vec<String> {
            let found = out.stdout.lines().filter(|l| l.starts_with(prefix));
            found.map(str::to_string).collect()
        };
        let exits = lines("ROUTER-EXIT");
        assert!(
            !exits.is_empty() && exits.iter().all(|l| l == "ROUTER-EXIT 0"),
            "{out}"
        );
        let left = lines("LEFT-VM-DIRS");
        assert!(
            left.len() == exits.len() && left.iter().all(|l| l == "LEFT-VM-DIRS 0"),
            "{out}"
        );
        out
    }
}

impl Drop for SoftRouter {
    fn drop(&mut self) {
        if !self.finished {
            let out = self.stop();
            eprintln!("--- the soft host's output ---\n{out}");
        }
    }
}

/// The value of the sample whose line starts with `series` (name and
/// labels) in Prometheus text.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

fn slot(r: &Reply) -> String {
    r.header("x-ember-slot")
        .unwrap_or_else(|| panic!("no X-Ember-Slot:\n{r}"))
        .to_string()
}

fn cold(r: &Reply) -> bool {
    match r.header("x-ember-cold-start") {
        Some("true") => true,
        Some("false") => false,
        _ => panic!("no X-Ember-Cold-Start:\n{r}"),
    }
}

/// Cold then warm on the same VM (and faster); two functions and two
/// tenants (even with equal function names) never share a VM; reserved
/// concurrency 1 turns a second concurrent invocation into 429; `/metrics`
/// counts what happened.
#[test]
fn warm_reuse_isolation_and_concurrency_limits() {
    let Some(a) = artifacts_unless_skipped("router_warm_reuse") else {
        return;
    };
    let router = SoftRouter::start(&a, "warm");
    router.create(
        ALPHA,
        exec_function("echo", "printf 'alpha:'; cat", 128, 10),
    );
    let (first, cold_took) = router.invoke(ALPHA, "echo", &json!("one"));
    assert_eq!(first.status, 200, "{first}");
    assert_eq!(first.text(), "alpha:\"one\"", "{first}");
    assert!(cold(&first), "{first}");
    let (second, warm_took) = router.invoke(ALPHA, "echo", &json!("two"));
    assert_eq!(second.status, 200, "{second}");
    assert_eq!(second.text(), "alpha:\"two\"", "{second}");
    assert!(!cold(&second), "{second}");
    assert_eq!(
        slot(&second),
        slot(&first),
        "a warm invocation reuses the VM"
    );
    assert!(
        warm_took < cold_took,
        "warm {warm_took:?} is not faster than cold {cold_took:?}"
    );

    // Another function of the same tenant, and the other tenant's function
    // of the same name: each cold starts its own VM.
    router.create(
        ALPHA,
        exec_function("other", "printf 'other:'; cat", 128, 10),
    );
    router.create(BETA, exec_function("echo", "printf 'beta:'; cat", 128, 10));
    let (other, _) = router.invoke(ALPHA, "other", &json!(1));
    let (beta, _) = router.invoke(BETA, "echo", &json!(2));
    assert_eq!(
        (other.status, other.text()),
        (200, "other:1".to_string()),
        "{other}"
    );
    assert_eq!(
        (beta.status, beta.text()),
        (200, "beta:2".to_string()),
        "{beta}"
    );
    assert!(cold(&other) && cold(&beta), "{other}\n{beta}");
    let slots = [slot(&first), slot(&other), slot(&beta)];
    assert!(
        slots[0] != slots[1] && slots[1] != slots[2] && slots[0] != slots[2],
        "VMs shared across functions or tenants: {slots:?}"
    );
    let (again, _) = router.invoke(ALPHA, "echo", &json!("three"));
    assert_eq!(
        (slot(&again), cold(&again)),
        (slot(&first), false),
        "{again}"
    );

    // A new configuration is a new revision: its invocations never reach
    // the VMs of the old one.
    let update = router.call(
        ALPHA,
        "PUT",
        "/2015-03-31/functions/echo/configuration",
        &json!({ "Handler": "printf 'alpha2:'; cat" }),
    );
    assert_eq!(update.status, 200, "{update}");
    let (updated, _) = router.invoke(ALPHA, "echo", &json!("four"));
    assert_eq!(updated.status, 200, "{updated}");
    assert_eq!(updated.text(), "alpha2:\"four\"", "{updated}");
    assert!(cold(&updated), "{updated}");
    assert!(!slots.contains(&slot(&updated)), "{updated}");

    // Reserved concurrency 1 and two concurrent slow invocations: one runs,
    // the other is refused at once.
    router.create(ALPHA, exec_function("slow", "sleep 4; echo done", 128, 20));
    let put = router.call(
        ALPHA,
        "PUT",
        "/2017-10-31/functions/slow/concurrency",
        &json!({ "ReservedConcurrentExecutions": 1 }),
    );
    assert_eq!(put.status, 200, "{put}");
    let barrier = std::sync::Barrier::new(2);
    let replies: Vec<Reply> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    router.invoke(ALPHA, "slow", &json!({})).0
                })
            })
            .collect();
        calls
            .into_iter()
            .map(|c| c.join().expect("invoke thread"))
            .collect()
    });
    let mut statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    statuses.sort();
    assert_eq!(statuses, [200, 429], "{}\n{}", replies[0], replies[1]);
    let (ok, refused) = if replies[0].status == 200 {
        (&replies[0], &replies[1])
    } else {
        (&replies[1], &replies[0])
    };
    assert_eq!(ok.text().trim(), "done", "{ok}");
    assert_eq!(
        refused.header("x-amzn-errortype"),
        Some("TooManyRequestsException"),
        "{refused}"
    );

    let m = router.call(ALPHA, "GET", "/metrics", &Value::Null);
    assert_eq!(m.status, 200, "{m}");
    let text = m.text();
    assert!(
        metric(&text, "ember_invocations_total{outcome=\"success\"}") >= 6.0,
        "{text}"
    );
    assert!(
        metric(&text, "ember_invocations_total{outcome=\"throttled\"}") >= 1.0,
        "{text}"
    );
    assert!(
        metric(&text, "ember_slot_starts_total{start=\"cold\"}") >= 4.0,
        "{text}"
    );
    assert!(
        metric(&text, "ember_slot_starts_total{start=\"warm\"}") >= 2.0,
        "{text}"
    );
    router.finish();
}

/// A handler that overruns its timeout gets `Sandbox.Timedout` and its VM
/// is replaced (the next invocation cold starts elsewhere); an Event
/// invocation is accepted with 202 and its record reaches `Succeeded`
/// (on a warm VM, and on a cold start whose VM then serves synchronous
/// invocations); a `provided.al2023` function built with the
/// `lambda_runtime` crate runs.
#[test]
fn timeouts_replace_the_vm_events_run_and_lambda_runtime_works() {
    let Some(a) = artifacts_unless_skipped("router_timeouts_events") else {
        return;
    };
    let router = SoftRouter::start(&a, "timeouts");
    let handler = r#"read -r e; [ "$e" = '"sleep"' ] && sleep 60; echo "ok $e""#;
    router.create(ALPHA, exec_function("sleepy", handler, 128, 2));
    let (first, _) = router.invoke(ALPHA, "sleepy", &json!("hi"));
    assert_eq!(
        (first.status, first.text().trim()),
        (200, "ok \"hi\""),
        "{first}"
    );
    let (late, took) = router.invoke(ALPHA, "sleepy", &json!("sleep"));
    assert_eq!(late.status, 200, "{late}");
    assert_eq!(
        late.header("x-amz-function-error"),
        Some("Unhandled"),
        "{late}"
    );
    assert_eq!(late.json()["errorType"], "Sandbox.Timedout", "{late}");
    assert_eq!(slot(&late), slot(&first), "{late}");
    assert!(took < Duration::from_secs(30), "the timeout took {took:?}");
    let (after, _) = router.invoke(ALPHA, "sleepy", &json!("after"));
    assert_eq!(
        (after.status, after.text().trim()),
        (200, "ok \"after\""),
        "{after}"
    );
    assert!(cold(&after), "the timed-out VM must be replaced:\n{after}");
    assert_ne!(slot(&after), slot(&first), "{after}");

    // Event: 202 now, Succeeded later.
    let record = router.event(ALPHA, "sleepy", &json!("event"));
    assert_eq!(record["Status"], "Succeeded", "{record}");
    assert_eq!(record["Outcome"], "Success", "{record}");
    assert_eq!(
        record["Payload"].as_str().map(str::trim),
        Some("ok \"event\""),
        "{record}"
    );

    // provided.al2023 with a real lambda_runtime bootstrap.
    let bootstrap = std::fs::read(&a.lambda_bootstrap).expect("read the bootstrap");
    router.create(
        BETA,
        json!({
            "FunctionName": "echo-rs",
            "Runtime": "provided.al2023",
            "Role": "arn:aws:iam::123456789012:role/ember",
            "Handler": "bootstrap",
            "Code": { "ZipFile": zip_file(&[("bootstrap", &bootstrap, 0o755)]) },
            "MemorySize": 128,
            "Timeout": 10,
        }),
    );
    // An Event cold starts the function's first VM; synchronous
    // invocations then find it warm.
    let record = router.event(BETA, "echo-rs", &json!({ "queued": true }));
    assert_eq!(record["Status"], "Succeeded", "{record}");
    let payload: Value =
        serde_json::from_str(record["Payload"].as_str().unwrap_or("")).unwrap_or_default();
    assert_eq!(payload["echo"], json!({ "queued": true }), "{record}");
    for _ in 0..2 {
        let (r, _) = router.invoke(BETA, "echo-rs", &json!({ "hello": "world" }));
        assert_eq!(r.status, 200, "{r}");
        assert_eq!(r.header("x-amz-function-error"), None, "{r}");
        let doc = r.json();
        assert_eq!(doc["echo"], json!({ "hello": "world" }), "{r}");
        assert_eq!(doc["function"], "echo-rs", "{r}");
        assert_eq!(
            doc["request_id"].as_str(),
            r.header("x-amzn-requestid"),
            "{r}"
        );
        assert!(!cold(&r), "{r}");
    }
    router.finish();
}

/// Functions, code, settings, invocation logs and queued Events are on
/// disk: after the router restarts, GetFunction returns the same function,
/// an invocation runs (on a new VM: the old ones stopped with the router),
/// an Event queued just before the restart succeeds, and the logs of an
/// invocation from before the restart are still there.
#[test]
fn the_registry_survives_a_router_restart() {
    let Some(a) = artifacts_unless_skipped("router_restart") else {
        return;
    };
    let mut router = SoftRouter::start(&a, "restart");
    router.create(
        BETA,
        exec_function("keeper", "printf 'kept:'; cat", 128, 10),
    );
    let before = router.call(BETA, "GET", "/2015-03-31/functions/keeper", &Value::Null);
    assert_eq!(before.status, 200, "{before}");
    let (r, _) = router.invoke(BETA, "keeper", &json!("before"));
    assert_eq!(
        (r.status, r.text()),
        (200, "kept:\"before\"".to_string()),
        "{r}"
    );
    let first_id = r
        .header("x-amzn-requestid")
        .expect("request id")
        .to_string();
    // An Event still running or queued when the router stops runs to the
    // end, before or after the restart (at least once).
    router.create(
        BETA,
        exec_function("later", "sleep 2; printf 'late:'; cat", 128, 10),
    );
    let event = router.queue_event(BETA, "later", &json!("queued"));

    router.restart();

    let after = router.call(BETA, "GET", "/2015-03-31/functions/keeper", &Value::Null);
    assert_eq!(after.status, 200, "{after}");
    assert_eq!(
        after.json()["Configuration"],
        before.json()["Configuration"],
        "{after}"
    );
    let (r, _) = router.invoke(BETA, "keeper", &json!("after"));
    assert_eq!(
        (r.status, r.text()),
        (200, "kept:\"after\"".to_string()),
        "{r}"
    );
    assert!(cold(&r), "{r}");
    let record = router.event_outcome(BETA, "later", &event);
    assert_eq!(record["Status"], "Succeeded", "{record}");
    assert_eq!(record["Payload"], "late:\"queued\"", "{record}");
    let logs = format!("/2015-03-31/functions/keeper/invocations/{first_id}/logs");
    let log = router.call(BETA, "GET", &logs, &Value::Null);
    assert_eq!(log.status, 200, "{log}");
    assert_eq!(
        (&log.json()["Outcome"], &log.json()["ColdStart"]),
        (&json!("Success"), &json!(true)),
        "{log}"
    );
    // The other tenant still sees none of it.
    let theirs = router.call(ALPHA, "GET", "/2015-03-31/functions/keeper", &Value::Null);
    assert_eq!(theirs.status, 404, "{theirs}");
    let out = router.finish();
    assert_eq!(out.stdout.matches("ROUTER-EXIT 0").count(), 2, "{out}");
}
