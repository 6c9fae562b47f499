//! The README's start command, end to end: `ember-invoke-router up` builds
//! what it needs, serves the Lambda API on a local port (through the soft
//! KVM host here), registers `hello` and prints credentials and an `aws
//! lambda invoke` line; the real AWS CLI then invokes `hello` with those
//! credentials, and SIGTERM stops everything with status 0. A second `up`
//! on the same data directory finds what the first one stored.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use ember_e2e::{artifacts_unless_skipped, free_port, tempdir};

/// One `up` run: what it printed, whether it got ready, and how it ended.
struct UpRun {
    printed: Vec<String>,
    log: String,
    ready: bool,
    exit_ok: bool,
    /// What `during` returned while `up` was ready.
    results: Vec<(String, Output)>,
}

impl UpRun {
    fn value(&self, key: &str) -> Option<String> {
        self.printed
            .iter()
            .find_map(|l| l.strip_prefix(key))
            .map(str::to_string)
    }

    fn context(&self) -> String {
        format!(
            "--- up stdout ---\n{}\n--- up stderr ---\n{}",
            self.printed.join("\n"),
            self.log
        )
    }

    fn result(&self, name: &str) -> &Output {
        &self
            .results
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no {name} result:\n{}", self.context()))
            .1
    }
}

/// Runs `up` on `port` and `data`, calls `during` with the printed lines
/// once it is ready, then stops it with SIGTERM.
fn run_up(
    router: &Path,
    port: u16,
    data: &Path,
    during: impl FnOnce(&[String]) -> Vec<(String, Output)>,
) -> UpRun {
    let mut up = Command::new(router)
        .args([
            "up",
            "--port",
            &port.to_string(),
            "--softhost-mem-mib",
            "2048",
        ])
        .arg("--data-dir")
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ember-invoke-router up");
    let (tx, rx) = mpsc::channel();
    let stdout = up.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let stderr = up.stderr.take().unwrap();
    let err_log = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
            .join("\n")
    });
    let mut printed = Vec::new();
    let ready = loop {
        match rx.recv_timeout(Duration::from_secs(600)) {
            Ok(line) => {
                let done = line.starts_with("Press Ctrl-C");
                printed.push(line);
                if done {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    let results = if ready { during(&printed) } else { vec![] };
    // SAFETY: plain kill(2) of our child.
    unsafe { libc::kill(up.id() as i32, libc::SIGTERM) };
    let status = up.wait().expect("wait for up");
    UpRun {
        printed,
        log: err_log.join().unwrap_or_default(),
        ready,
        exit_ok: status.success(),
        results,
    }
}

/// Runs the AWS CLI against `up`'s endpoint with its printed credentials.
fn aws(aws: &Path, printed: &[String], args: &[&str]) -> Output {
    let value = |key: &str| {
        printed
            .iter()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_default()
            .to_string()
    };
    Command::new(aws)
        .args([
            "--endpoint-url",
            &value("ENDPOINT="),
            "--region",
            "us-east-1",
        ])
        .args(args)
        .env("AWS_ACCESS_KEY_ID", value("AWS_ACCESS_KEY_ID="))
        .env("AWS_SECRET_ACCESS_KEY", value("AWS_SECRET_ACCESS_KEY="))
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .output()
        .expect("run aws")
}

fn assert_ok(run: &UpRun, name: &str) -> String {
    let out = run.result(name);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "aws {name} failed: {text}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        run.context()
    );
    text
}

#[test]
fn up_serves_hello_to_the_aws_cli_and_keeps_its_registry() {
    let Some(a) = artifacts_unless_skipped("up_serves_hello_to_the_aws_cli") else {
        return;
    };
    let cli = which("aws").expect(
        "the AWS CLI (`aws`) is not on PATH: .ci/run installs it; locally `pip install awscli`",
    );
    let port = free_port();
    let dir = tempdir("up");
    let data = dir.join("data");
    let out_json = dir.join("out.json");

    let first = run_up(&a.router, port, &data, |printed| {
        let out = out_json.to_str().unwrap();
        vec![
            (
                "invoke".into(),
                aws(
                    &cli,
                    printed,
                    &["lambda", "invoke", "--function-name", "hello", out],
                ),
            ),
            (
                "put-concurrency".into(),
                aws(
                    &cli,
                    printed,
                    &[
                        "lambda",
                        "put-function-concurrency",
                        "--function-name",
                        "hello",
                        "--reserved-concurrent-executions",
                        "3",
                    ],
                ),
            ),
        ]
    });
    let body = std::fs::read_to_string(&out_json).unwrap_or_default();
    let second = run_up(&a.router, port, &data, |printed| {
        vec![(
            "get-concurrency".into(),
            aws(
                &cli,
                printed,
                &[
                    "lambda",
                    "get-function-concurrency",
                    "--function-name",
                    "hello",
                ],
            ),
        )]
    });
    let _ = std::fs::remove_dir_all(&dir);

    let context = first.context();
    assert!(first.ready, "up never said it was ready:\n{context}");
    assert_eq!(
        first.value("ENDPOINT="),
        Some(format!("http://127.0.0.1:{port}")),
        "{context}"
    );
    assert!(first.value("AWS_ACCESS_KEY_ID=").is_some(), "{context}");
    assert!(first.value("AWS_SECRET_ACCESS_KEY=").is_some(), "{context}");
    assert!(
        first
            .printed
            .iter()
            .any(|l| l.contains("aws lambda invoke --endpoint-url")),
        "no aws invoke line:\n{context}"
    );
    assert_ok(&first, "invoke");
    assert!(
        body.contains("Hello from Ember"),
        "out.json: {body}\n{context}"
    );
    assert_ok(&first, "put-concurrency");
    assert!(first.exit_ok, "up must stop cleanly on SIGTERM:\n{context}");

    assert!(
        second.ready,
        "the second up never got ready:\n{}",
        second.context()
    );
    assert_eq!(
        second.value("AWS_ACCESS_KEY_ID="),
        first.value("AWS_ACCESS_KEY_ID="),
        "the default tenant's credentials must be kept"
    );
    let kept = assert_ok(&second, "get-concurrency");
    assert!(
        kept.contains("\"ReservedConcurrentExecutions\": 3"),
        "the registry must survive: {kept}\n{}",
        second.context()
    );
    assert!(second.exit_ok, "{}", second.context());
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
