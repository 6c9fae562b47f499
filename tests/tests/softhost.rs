//! The `images/softhost` contract: output, status, environment, files,
//! timeouts, port forwarding, and clear errors for bad arguments.

use std::time::Duration;

use ember_e2e::{exchange_until, free_port, run, skipped, softhost, tempdir};

#[test]
fn streams_status_env_and_put_files_come_through() {
    if skipped("streams_status_env_and_put_files_come_through") {
        return;
    }
    let dir = tempdir("put");
    std::fs::create_dir_all(dir.join("data/deep")).unwrap();
    std::fs::write(dir.join("outside"), "payload-bytes\n").unwrap();
    // An absolute symlink to a file outside the put: its content must arrive.
    std::os::unix::fs::symlink(dir.join("outside"), dir.join("data/deep/payload")).unwrap();
    let put_dir = format!("{}:nested/data", dir.join("data").display());
    // A dynamically linked binary from this machine: its libraries must come along.
    let put_dyn = "/usr/bin/stat:bin/gnu-stat";
    let script = r#"
        echo "to-stdout"
        echo "to-stderr" >&2
        echo "V=$V"
        cat nested/data/deep/payload
        ./bin/gnu-stat --version | head -n 1
        test -c /dev/kvm && echo "kvm-present"
        printf 'no-newline'
        exit 7
    "#;
    let out = run(softhost(&[
        "--timeout",
        "300",
        "--env",
        "V=two words 'quoted' $NOT_EXPANDED",
        "--put",
        &put_dir,
        "--put",
        put_dyn,
    ])
    .args(["sh", "-c", script]));
    assert_eq!(out.code, Some(7), "exit status must come back:\n{out}");
    let lines: Vec<&str> = out.stdout.split('\n').collect();
    assert_eq!(
        lines.len(),
        6,
        "stdout must be exactly the command's:\n{out}"
    );
    assert_eq!(lines[0], "to-stdout", "{out}");
    assert_eq!(lines[1], "V=two words 'quoted' $NOT_EXPANDED", "{out}");
    assert_eq!(lines[2], "payload-bytes", "{out}");
    assert!(lines[3].starts_with("stat (GNU coreutils) "), "{out}");
    assert_eq!(lines[4], "kvm-present", "{out}");
    assert_eq!(lines[5], "no-newline", "no byte may be added:\n{out}");
    assert!(out.stderr.starts_with("to-stderr\n"), "stderr:\n{out}");
    assert!(
        !out.stdout.contains("Linux version") && !out.stderr.contains("Linux version"),
        "boot chatter leaked:\n{out}"
    );
}

#[test]
fn timeout_kills_the_command_and_says_so() {
    if skipped("timeout_kills_the_command_and_says_so") {
        return;
    }
    let started = std::time::Instant::now();
    let out = run(softhost(&["--timeout", "20"]).args(["sleep", "600"]));
    assert_eq!(out.code, Some(124), "{out}");
    assert!(out.stderr.contains("timed out after 20 s"), "{out}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}

/// A boot that never reaches the soft host's init (here: QEMU frozen
/// before its first instruction) is detected within the boot bound,
/// reported with its console log, and retried once.
#[test]
fn a_hung_boot_is_detected_and_retried_once() {
    if skipped("a_hung_boot_is_detected_and_retried_once") {
        return;
    }
    let started = std::time::Instant::now();
    let out = run(softhost(&["--timeout", "300", "--keep-log"])
        .args(["echo", "second-boot"])
        .env("EMBER_SOFTHOST", "emulate")
        .env("EMBER_SOFTHOST_BOOT_SECS", "15")
        .env("EMBER_SOFTHOST_TEST_FREEZE_FIRST_BOOT", "1"));
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "second-boot\n"),
        "the retry must run the command:\n{out}"
    );
    assert!(
        out.stderr
            .contains("did not reach its init within 15 s (console log: "),
        "the hang must be reported:\n{out}"
    );
    assert!(out.stderr.contains("retrying once"), "{out}");
    let log = out
        .stderr
        .split("(console log: ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .expect("the warning names the log");
    assert!(
        std::path::Path::new(log).is_file(),
        "the hung boot's console log {log} must be kept:\n{out}"
    );
    if let Some(dir) = std::path::Path::new(log).parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
    assert!(
        started.elapsed() < Duration::from_secs(240),
        "took {:?}",
        started.elapsed()
    );
}

/// Two boots that both hang end the run with status 125 and both logs
/// named, never a silent long wait (the bound here is shorter than a boot).
#[test]
fn two_hung_boots_fail_with_their_logs() {
    if skipped("two_hung_boots_fail_with_their_logs") {
        return;
    }
    let started = std::time::Instant::now();
    let out = run(softhost(&["--timeout", "300"])
        .args(["true"])
        .env("EMBER_SOFTHOST", "emulate")
        .env("EMBER_SOFTHOST_BOOT_SECS", "1"));
    assert_eq!(out.code, Some(125), "{out}");
    assert!(
        out.stderr
            .contains("did not reach its init within 1 s twice; console logs: "),
        "{out}"
    );
    let logs = out
        .stderr
        .split("console logs: ")
        .nth(1)
        .and_then(|rest| rest.lines().next())
        .expect("the error names the logs");
    for log in logs.split(' ') {
        assert!(std::path::Path::new(log).is_file(), "{log} kept:\n{out}");
    }
    if let Some(dir) = logs
        .split(' ')
        .next()
        .and_then(|l| std::path::Path::new(l).parent())
    {
        let _ = std::fs::remove_dir_all(dir);
    }
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}

/// A `--disk` image is mounted at /work/disk and what one soft host writes
/// there, the next one reads.
#[test]
fn disk_state_outlives_the_soft_host() {
    if skipped("disk_state_outlives_the_soft_host") {
        return;
    }
    let dir = tempdir("softhost-disk");
    let image = dir.join("state.ext4");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(64 << 20))
        .unwrap();
    let mkfs = run(std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&image));
    assert_eq!(mkfs.code, Some(0), "{mkfs}");
    let disk = image.to_str().unwrap();
    let first = run(softhost(&["--disk", disk]).args(["sh", "-c", "echo kept > disk/note"]));
    assert_eq!(first.code, Some(0), "{first}");
    let second = run(softhost(&["--disk", disk]).args(["cat", "disk/note"]));
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        (second.code, second.stdout.as_str()),
        (Some(0), "kept\n"),
        "{second}"
    );
}

#[test]
fn forwarded_port_reaches_a_server_inside() {
    if skipped("forwarded_port_reaches_a_server_inside") {
        return;
    }
    let port = free_port();
    // Our own busybox: on a hardware KVM host the command runs there, where
    // `nc` may be another netcat.
    let child = softhost(&[
        "--timeout",
        "300",
        "--forward",
        &port.to_string(),
        "--put",
        "/bin/busybox:busybox",
    ])
    .args([
        "sh",
        "-c",
        &format!("echo pong | ./busybox nc -l -p {port}"),
    ])
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .expect("spawn softhost");
    let reply = exchange_until(port, b"ping\n", Duration::from_secs(240));
    let out: ember_e2e::Finished = child.wait_with_output().expect("wait softhost").into();
    assert_eq!(
        reply.as_deref(),
        Some(&b"pong\n"[..]),
        "no reply through 127.0.0.1:{port}:\n{out}"
    );
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(
        out.stdout, "ping\n",
        "the server inside saw our request:\n{out}"
    );
}

#[test]
fn bad_arguments_are_refused_with_the_reason() {
    // These fail before any soft host boots, so they also run with EMBER_E2E_SKIP.
    let cases: &[(&[&str], &str)] = &[
        (
            &["--put", "/nonexistent/file", "--", "true"],
            "'/nonexistent/file' does not exist",
        ),
        (
            &["--disk", "/nonexistent.ext4", "--", "true"],
            "--disk '/nonexistent.ext4' is not a file",
        ),
        (
            &["--put", "/etc/hostname:../escape", "--", "true"],
            "must be a relative path",
        ),
        (
            &["--put", "/etc/hostname:/abs", "--", "true"],
            "must be a relative path",
        ),
        (
            &["--forward", "70000", "--", "true"],
            "--forward must be a TCP port",
        ),
        (
            &["--timeout", "soon", "--", "true"],
            "--timeout must be a number of seconds",
        ),
        (&["--mem", "64", "--", "true"], "--mem must be at least 512"),
        (
            &["--env", "1BAD=x", "--", "true"],
            "not a valid variable name",
        ),
        (
            &["--env", "EMBER_SURELY_UNSET_VAR", "--", "true"],
            "is not set here",
        ),
        (&["--bogus", "--", "true"], "unknown argument '--bogus'"),
        (&["--timeout", "5"], "no COMMAND given"),
    ];
    for (args, reason) in cases {
        let mut cmd = std::process::Command::new(ember_e2e::repo_root().join("images/softhost"));
        let out = run(cmd.args(*args).env_remove("EMBER_SURELY_UNSET_VAR"));
        assert_eq!(
            out.code,
            Some(1),
            "{args:?} must fail with status 1:\n{out}"
        );
        assert!(
            out.stderr.contains(reason),
            "{args:?} must say '{reason}':\n{out}"
        );
        assert!(out.stdout.is_empty(), "{args:?} wrote to stdout:\n{out}");
    }
}
