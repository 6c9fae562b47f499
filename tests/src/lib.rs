//! Helpers for Ember's end-to-end tests.
//!
//! The E2E tests boot real guests: the guest kernel and initramfs built by
//! `images/build`, and the real VMM on a KVM host (the soft host from
//! `images/softhost` where this machine lacks hardware virtualization).
//! `tests/run` builds those artifacts and passes their paths in the
//! environment; a test whose artifacts are missing fails and says so.
//! `EMBER_E2E_SKIP=1` skips every E2E test, loudly, for quick local loops.

pub mod lambda_api;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Paths to the artifacts the E2E tests run.
#[derive(Debug, Clone)]
pub struct Artifacts {
    /// The statically linked `ember-vmm` binary.
    pub vmm: PathBuf,
    /// The guest kernel as an ELF.
    pub vmlinux: PathBuf,
    /// The guest kernel as a bzImage.
    pub bzimage: PathBuf,
    /// The guest initramfs (gzip'd cpio).
    pub initramfs: PathBuf,
    /// The statically linked `vsock-tool` (both ends of the vsock tests).
    pub vsock_tool: PathBuf,
    /// The statically linked `agent-client` (plays the router to one agent).
    pub agent_client: PathBuf,
    /// A static `bootstrap` built with the `lambda_runtime` crate.
    pub lambda_bootstrap: PathBuf,
    /// The statically linked `ember-invoke-router`.
    pub router: PathBuf,
}

/// The checkout's root directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// True (and says so on stderr) when `EMBER_E2E_SKIP=1` asks to skip `test`.
pub fn skipped(test: &str) -> bool {
    let skip = std::env::var("EMBER_E2E_SKIP").is_ok_and(|v| v == "1");
    if skip {
        eprintln!("SKIPPED {test}: EMBER_E2E_SKIP=1 (never set this in CI)");
    }
    skip
}

fn artifact(var: &str) -> PathBuf {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        panic!("{var} is not set: run the E2E tests through tests/run, which builds the images and binaries first")
    });
    assert!(
        path.is_file(),
        "{var}={} does not exist: rerun tests/run",
        path.display()
    );
    path
}

/// The artifacts for E2E test `test`, or `None` (said on stderr) when
/// `EMBER_E2E_SKIP=1`. Panics with the reason when an artifact is missing.
pub fn artifacts_unless_skipped(test: &str) -> Option<Artifacts> {
    (!skipped(test)).then(Artifacts::from_env)
}

/// Asserts that `out` is a guest run that exited cleanly after the guest
/// agent printed its ready marker from a 6.12 kernel.
pub fn assert_agent_ready(out: &Finished) {
    assert_eq!(out.code, Some(0), "{out}");
    assert!(
        out.stdout
            .lines()
            .any(|l| l.trim_end().starts_with("EMBER-GUEST-READY kernel=6.12.")),
        "the guest agent did not report ready:\n{out}"
    );
}

impl Artifacts {
    /// Reads the artifact paths `tests/run` exported; panics with the reason
    /// when one is missing.
    pub fn from_env() -> Self {
        Artifacts {
            vmm: artifact("EMBER_VMM_STATIC"),
            vmlinux: artifact("EMBER_VMLINUX"),
            bzimage: artifact("EMBER_BZIMAGE"),
            initramfs: artifact("EMBER_INITRAMFS"),
            vsock_tool: artifact("EMBER_VSOCK_TOOL"),
            agent_client: artifact("EMBER_AGENT_CLIENT"),
            lambda_bootstrap: artifact("EMBER_LAMBDA_BOOTSTRAP"),
            router: artifact("EMBER_ROUTER_STATIC"),
        }
    }
}

/// A finished command: exit code and output as text.
#[derive(Debug)]
pub struct Finished {
    /// The exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Standard output, lossily decoded.
    pub stdout: String,
    /// Standard error, lossily decoded.
    pub stderr: String,
}

impl From<Output> for Finished {
    fn from(o: Output) -> Self {
        Finished {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl std::fmt::Display for Finished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// A `Command` for `images/softhost` with `args` before the `--`.
pub fn softhost(args: &[&str]) -> Command {
    let mut cmd = Command::new(repo_root().join("images/softhost"));
    cmd.args(args).arg("--");
    cmd
}

/// Runs `cmd` to completion and captures its output.
pub fn run(cmd: &mut Command) -> Finished {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
        .into()
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Sends `request` to 127.0.0.1:`port` and returns the reply, retrying
/// until a non-empty reply arrives or `deadline` passes.
pub fn exchange_until(port: u16, request: &[u8], deadline: Duration) -> Option<Vec<u8>> {
    let start = Instant::now();
    while start.elapsed() < deadline {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut reply = Vec::new();
            // Half-close after the request so the server sees its end.
            if s.write_all(request).is_ok()
                && s.shutdown(std::net::Shutdown::Write).is_ok()
                && s.read_to_end(&mut reply).is_ok()
                && !reply.is_empty()
            {
                return Some(reply);
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    None
}

/// A fresh, empty directory under the system temp dir, unique to this
/// process and `tag`.
pub fn tempdir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ember-e2e-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// Writes `initramfs` plus a gzip'd overlay holding `/check` (a sh script
/// made of `body` and a final reset) into `dir`, and returns its path. Boot
/// it with `rdinit=/check`.
pub fn initramfs_with_check(initramfs: &Path, dir: &Path, body: &str) -> PathBuf {
    initramfs_with(initramfs, dir, body, &[])
}

/// Like [`initramfs_with_check`], with `extra` files copied into the
/// overlay's root under their file names.
pub fn initramfs_with(initramfs: &Path, dir: &Path, body: &str, extra: &[&Path]) -> PathBuf {
    let overlay = dir.join("overlay");
    std::fs::create_dir_all(&overlay).unwrap();
    std::fs::write(
        overlay.join("check"),
        format!("#!/bin/sh\n{body}\nreboot -f\n"),
    )
    .unwrap();
    let mut names = vec!["check".to_string()];
    for file in extra {
        let name = file.file_name().expect("extra files have names");
        std::fs::copy(file, overlay.join(name))
            .unwrap_or_else(|e| panic!("copy {}: {e}", file.display()));
        names.push(name.to_string_lossy().into_owned());
    }
    let initrd = dir.join("initrd");
    let r = run(Command::new("sh").arg("-c").arg(format!(
        "chmod 755 '{o}/check' && cat '{base}' > '{i}' && \
         (cd '{o}' && printf '%s\\n' {names} | cpio -o -H newc -R 0:0 --quiet) | gzip -n >> '{i}'",
        o = overlay.display(),
        base = initramfs.display(),
        i = initrd.display(),
        names = names.join(" ")
    )));
    assert_eq!(r.code, Some(0), "overlay initramfs:\n{r}");
    initrd
}

/// Runs `script` (busybox sh) in the soft host, with `files` put in its
/// working directory under the given names.
pub fn in_softhost(files: &[(&Path, &str)], script: &str) -> Finished {
    let puts: Vec<String> = files
        .iter()
        .map(|(src, dst)| format!("{}:{dst}", src.display()))
        .collect();
    let mut args = vec!["--timeout", "300"];
    for p in &puts {
        args.extend(["--put", p.as_str()]);
    }
    run(softhost(&args).args(["sh", "-c", script]))
}

/// What the VMM logs when its guest triple-faults.
pub const GUEST_TRIPLE_FAULT: &str = "guest stopped: vcpu0 shut down";

/// [`in_softhost`] for a script whose guests must not stop by themselves:
/// when one triple-faulted anyway (the emulated soft host does this now
/// and then; see docs/SECURITY.md), the run is repeated once, loudly. A
/// second triple fault is returned for the test to fail on.
pub fn in_softhost_once_more_on_triple_fault(files: &[(&Path, &str)], script: &str) -> Finished {
    let out = in_softhost(files, script);
    if !out.to_string().contains(GUEST_TRIPLE_FAULT) {
        return out;
    }
    eprintln!("warning: a guest triple-faulted; running the scenario once more. First run:\n{out}");
    in_softhost(files, script)
}

/// Asserts that `out`'s stdout has `line` as a whole line.
pub fn assert_line(out: &Finished, line: &str) {
    assert!(
        out.stdout.lines().any(|l| l.trim_end() == line),
        "missing line {line:?}:\n{out}"
    );
}
