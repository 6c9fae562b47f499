//! The `ember-vmm` command line refuses bad settings before any guest runs:
//! one line on stderr naming the setting and the reason, exit status 2, and
//! nothing left behind. None of these reach KVM, so they run on any host.

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("ember-vmm-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// A file that passes the kernel format check (an ELF header).
    fn fake_kernel(&self) -> PathBuf {
        let path = self.path("vmlinux");
        let mut bytes = b"\x7fELF".to_vec();
        bytes.resize(4096, 0);
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs ember-vmm with `args` and returns (exit code, stderr).
fn vmm(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ember-vmm"))
        .args(args)
        .output()
        .expect("run ember-vmm");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asserts a refusal: status 2 and one stderr line that holds every needle.
fn refused(args: &[&str], needles: &[&str]) {
    let (code, stderr) = vmm(args);
    assert_eq!(code, Some(2), "args {args:?}: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "args {args:?}: want one line, got:\n{stderr}"
    );
    for needle in needles {
        assert!(
            lines[0].contains(needle),
            "args {args:?}: {:?} lacks {needle:?}",
            lines[0]
        );
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn refuses_kernels_it_cannot_boot() {
    let dir = Dir::new("kernel");
    refused(
        &["--kernel", "/nonexistent/vmlinux"],
        &["--kernel", "No such file"],
    );
    let text = dir.path("notes.txt");
    std::fs::write(&text, "not a kernel").unwrap();
    refused(
        &["--kernel", s(&text)],
        &["--kernel", "neither an ELF vmlinux nor a bzImage"],
    );
    refused(
        &["--kernel", s(&dir.0)],
        &["--kernel", "not a regular file"],
    );
    refused(&[], &["--kernel"]);
}

#[test]
fn refuses_machine_sizes_out_of_range() {
    let dir = Dir::new("sizes");
    let k = dir.fake_kernel();
    refused(
        &["--kernel", s(&k), "--vcpus", "0"],
        &["--vcpus", "must be 1 to 254"],
    );
    refused(&["--kernel", s(&k), "--vcpus", "255"], &["--vcpus"]);
    refused(&["--kernel", s(&k), "--vcpus", "-1"], &["--vcpus"]);
    refused(
        &["--kernel", s(&k), "--mem-mib", "1"],
        &["--mem-mib", "must be 16"],
    );
    refused(
        &["--kernel", s(&k), "--mem-mib", "1048576"],
        &["--mem-mib", "more than this host"],
    );
    refused(
        &["--kernel", s(&k), "--mem-mib", "99999999999"],
        &["--mem-mib"],
    );
    let initrd = dir.path("initrd");
    std::fs::File::create(&initrd)
        .unwrap()
        .set_len(200 << 20)
        .unwrap();
    refused(
        &[
            "--kernel",
            s(&k),
            "--initrd",
            s(&initrd),
            "--mem-mib",
            "128",
        ],
        &["--initrd", "does not fit in 128 MiB"],
    );
}

#[test]
fn refuses_bad_vsock_settings_and_leaves_no_socket() {
    let dir = Dir::new("vsock");
    let k = dir.fake_kernel();
    let uds = dir.path("v.sock");
    refused(
        &[
            "--kernel",
            s(&k),
            "--vsock-cid",
            "2",
            "--vsock-uds",
            s(&uds),
        ],
        &["--vsock-cid", "must be 3"],
    );
    refused(&["--kernel", s(&k), "--vsock-cid", "3"], &["--vsock-uds"]);
    refused(
        &["--kernel", s(&k), "--vsock-allow-port", "7000"],
        &["--vsock-uds"],
    );
    refused(
        &[
            "--kernel",
            s(&k),
            "--vsock-cid",
            "3",
            "--vsock-uds",
            s(&uds),
            "--vsock-allow-port",
            "4294967295",
        ],
        &["--vsock-allow-port", "must be 0 to"],
    );
    refused(
        &[
            "--kernel",
            s(&k),
            "--vsock-cid",
            "3",
            "--vsock-uds",
            s(&uds),
            "--vsock-allow-port",
            "-1",
        ],
        &["--vsock-allow-port"],
    );
    let long = dir.path(&"x".repeat(120));
    refused(
        &[
            "--kernel",
            s(&k),
            "--vsock-cid",
            "3",
            "--vsock-uds",
            s(&long),
        ],
        &["--vsock-uds", "too long"],
    );

    // A live socket is in use; it must survive the refusal.
    let live = UnixListener::bind(&uds).unwrap();
    refused(
        &[
            "--kernel",
            s(&k),
            "--vsock-cid",
            "3",
            "--vsock-uds",
            s(&uds),
        ],
        &["--vsock-uds", "in use"],
    );
    assert!(uds.exists(), "the other owner's socket must stay");
    drop(live);

    // A failure after the socket was bound removes it again.
    let _ = std::fs::remove_file(&uds);
    refused(
        &[
            "--kernel",
            s(&k),
            "--vsock-cid",
            "3",
            "--vsock-uds",
            s(&uds),
            "--serial",
            "file:/nonexistent/dir/console",
        ],
        &["--serial", "No such file"],
    );
    assert!(!uds.exists(), "no stale socket may be left behind");
}

#[test]
fn refuses_bad_drives_serial_and_config_files() {
    let dir = Dir::new("misc");
    let k = dir.fake_kernel();
    refused(
        &["--kernel", s(&k), "--drive", "/nonexistent.img"],
        &["--drive", "No such file"],
    );
    refused(
        &["--kernel", s(&k), "--drive", "a.img,rox"],
        &["--drive", "rox"],
    );
    refused(
        &["--kernel", s(&k), "--serial", "tty"],
        &["--serial", "expected stdout, none or file:PATH"],
    );
    refused(
        &["--config", "/nonexistent.json"],
        &["--config", "No such file"],
    );
    let bad = dir.path("bad.json");
    std::fs::write(
        &bad,
        r#"{"boot-source": {"kernel_image_path": "/k"}, "balloon": {}}"#,
    )
    .unwrap();
    refused(&["--config", s(&bad)], &["--config", "balloon"]);
    let zero = dir.path("zero.json");
    let text = format!(
        r#"{{"boot-source": {{"kernel_image_path": "{}"}}, "machine-config": {{"vcpu_count": 0, "mem_size_mib": 128}}}}"#,
        s(&k)
    );
    std::fs::write(&zero, text).unwrap();
    refused(&["--config", s(&zero)], &["machine-config.vcpu_count"]);
    let (code, stderr) = vmm(&["--config", s(&zero), "--vcpus", "2"]);
    assert_eq!(code, Some(2), "{stderr}");
}
