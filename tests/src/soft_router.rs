//! `ember-invoke-router serve` with real VMs in a soft host, driven from
//! this machine through a forwarded port: the harness of the attack tests
//! (`tests/tests/attacks.rs`). It boots the soft host, waits for the API
//! (bounded), and on [`SoftRouter::stop`] (a line on a forwarded control
//! port, busybox `nc`) stops the router with SIGTERM and returns the soft
//! host's output, the router's exit status and log included. A test that
//! panics before prints that output (on drop).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::lambda_api::{self, Key, Reply};
use crate::{free_port, tempdir, Artifacts, Finished};

/// Longest wait for the router to answer after the soft host starts.
const READY_WITHIN: Duration = Duration::from_secs(240);
/// Longest wait for the soft host to end once asked to stop.
const STOP_WITHIN: Duration = Duration::from_secs(90);

/// A router serving in a soft host.
pub struct SoftRouter {
    child: Child,
    /// `127.0.0.1:PORT` of the API.
    pub api: String,
    ctrl: u16,
    dir: PathBuf,
    finished: bool,
}

impl SoftRouter {
    /// Boots a soft host (`timeout_s` at most) running the router with
    /// `tenants` (name and key) and waits until its API answers.
    pub fn start(a: &Artifacts, tag: &str, tenants: &[(&str, Key)], timeout_s: u32) -> Self {
        let (port, ctrl) = (free_port(), free_port());
        let dir = tempdir(&format!("softrouter-{tag}"));
        let ready_key = tenants.first().map(|(_, k)| *k);
        // Tenants (with their secrets) from a file, never argv.
        let tenants: String = tenants.iter().map(|(n, k)| k.tenant_entry(n)).collect();
        let script = format!(
            "export PATH=$PWD/bin:$PATH
             (umask 077; printf '%s' '{tenants}' >tenants.toml)
             ./ember-invoke-router serve --listen 0.0.0.0:{port} --data-dir $PWD/d \
                 --kernel vmlinux --initramfs initramfs --vmm ./ember-vmm \
                 --capacity-mem-mib 2048 --capacity-vcpus 8 --tenants-file tenants.toml \
                 >router.log 2>&1 &
             router=$!
             echo ok | ./busybox nc -l -p {ctrl} >/dev/null
             kill -0 $router || echo ROUTER-DIED
             kill -TERM $router; wait $router; echo ROUTER-EXIT $?
             echo LEFT-VM-DIRS $(ls d/run | wc -l)
             echo '--- router log (its end) ---'; tail -c 200000 router.log"
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
            timeout_s.to_string(),
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
            let mut cmd: Command = crate::softhost(&args);
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
        if let Some(key) = ready_key {
            router.wait_ready(key);
        }
        router
    }

    fn wait_ready(&mut self, key: Key) {
        let start = Instant::now();
        while start.elapsed() < READY_WITHIN {
            if let Ok(Some(_)) = self.child.try_wait() {
                panic!("the soft host ended before the router answered");
            }
            if lambda_api::request(&self.api, key, "GET", "/2015-03-31/functions/", b"", &[])
                .is_ok_and(|r| r.status == 200)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!("the router did not answer within {READY_WITHIN:?}");
    }

    /// Sends a JSON request as `key`; panics when the connection fails.
    pub fn call(&self, key: Key, method: &str, uri: &str, body: &serde_json::Value) -> Reply {
        let bytes = if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        lambda_api::request(&self.api, key, method, uri, &bytes, &[])
            .unwrap_or_else(|e| panic!("{method} {uri}: {e}"))
    }

    /// Creates a function as `key` and asserts 201.
    pub fn create(&self, key: Key, body: serde_json::Value) {
        let r = self.call(key, "POST", "/2015-03-31/functions", &body);
        assert_eq!(
            r.status, 201,
            "CreateFunction {}:\n{r}",
            body["FunctionName"]
        );
    }

    /// A synchronous invocation of `name` and how long it took.
    pub fn invoke(&self, key: Key, name: &str, payload: &serde_json::Value) -> (Reply, Duration) {
        let started = Instant::now();
        let uri = format!("/2015-03-31/functions/{name}/invocations");
        (self.call(key, "POST", &uri, payload), started.elapsed())
    }

    /// Stops the router (SIGTERM, through the control port) and returns
    /// the soft host's output; the soft host is killed if it does not end
    /// within [`STOP_WITHIN`].
    pub fn stop(&mut self) -> Finished {
        self.finished = true;
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = crate::exchange_until(self.ctrl, b"stop\n", Duration::from_secs(30));
        }
        let start = Instant::now();
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(s)) => break Some(s),
                _ if start.elapsed() > STOP_WITHIN => {
                    // SAFETY: kill(2) on the soft host's process group, which we created.
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
}

impl Drop for SoftRouter {
    fn drop(&mut self) {
        if !self.finished {
            let out = self.stop();
            eprintln!("--- the soft host's output ---\n{out}");
        }
    }
}
