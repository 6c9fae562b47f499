//! The README's start command, end to end: `ember-invoke-router up` builds
//! what it needs, serves the Lambda API on a local port (through the soft
//! KVM host here), registers `hello` and prints credentials and an `aws
//! lambda invoke` line; the real AWS CLI then invokes `hello` with those
//! credentials, and SIGTERM stops everything with status 0.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use ember_e2e::{artifacts_unless_skipped, free_port, tempdir};

#[test]
fn up_serves_hello_to_the_aws_cli() {
    let Some(a) = artifacts_unless_skipped("up_serves_hello_to_the_aws_cli") else {
        return;
    };
    let aws = which("aws").expect(
        "the AWS CLI (`aws`) is not on PATH: .ci/run installs it; locally `pip install awscli`",
    );
    let port = free_port();
    let dir = tempdir("up");
    let mut up = Command::new(&a.router)
        .args([
            "up",
            "--port",
            &port.to_string(),
            "--softhost-mem-mib",
            "2048",
        ])
        .arg("--data-dir")
        .arg(dir.join("data"))
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
    let value = |key: &str| {
        printed
            .iter()
            .find_map(|l| l.strip_prefix(key))
            .map(str::to_string)
    };
    let (id, secret) = (value("AWS_ACCESS_KEY_ID="), value("AWS_SECRET_ACCESS_KEY="));
    let endpoint = value("ENDPOINT=");
    let invoke = ready.then(|| {
        let out = dir.join("out.json");
        let result = Command::new(&aws)
            .args(["lambda", "invoke", "--endpoint-url"])
            .arg(endpoint.clone().unwrap_or_default())
            .args(["--region", "us-east-1", "--function-name", "hello"])
            .arg(&out)
            .env("AWS_ACCESS_KEY_ID", id.clone().unwrap_or_default())
            .env("AWS_SECRET_ACCESS_KEY", secret.clone().unwrap_or_default())
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .output()
            .expect("run aws");
        (result, std::fs::read_to_string(&out).unwrap_or_default())
    });
    // SAFETY: plain kill(2) of our child.
    unsafe { libc::kill(up.id() as i32, libc::SIGTERM) };
    let status = up.wait().expect("wait for up");
    let log = err_log.join().unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    let context = format!(
        "--- up stdout ---\n{}\n--- up stderr ---\n{log}",
        printed.join("\n")
    );
    assert!(ready, "up never said it was ready:\n{context}");
    assert_eq!(
        endpoint.as_deref(),
        Some(&*format!("http://127.0.0.1:{port}")),
        "{context}"
    );
    assert!(
        id.is_some() && secret.is_some(),
        "no credentials printed:\n{context}"
    );
    assert!(
        printed
            .iter()
            .any(|l| l.contains("aws lambda invoke --endpoint-url")),
        "no aws invoke line:\n{context}"
    );
    let (result, body) = invoke.unwrap();
    assert!(
        result.status.success(),
        "aws lambda invoke failed: {}\n{}\n{context}",
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );
    assert!(
        body.contains("Hello from Ember"),
        "out.json: {body}\n{context}"
    );
    assert!(
        status.success(),
        "up must stop cleanly on SIGTERM ({status}):\n{context}"
    );
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
