//! The guest agent runs functions in a real microVM under Ember's VMM (in the
//! soft KVM host here): `agent-client` plays the router over vsock, the
//! function's code arrives on a read-only ext4 drive, and the agent is the
//! images' `/init`. Covers an `exec` shell handler, a `bootstrap` built with
//! the `lambda_runtime` crate, deadlines, crashes, an oversized frame, a
//! memory hog held by the handler's cgroup, and a missing bootstrap.

use std::path::Path;
use std::process::Command;

use ember_e2e::{
    artifacts_unless_skipped, assert_line, in_softhost, run, tempdir, Artifacts, Finished,
};

/// Makes the read-only code image (ext4) of `dir` at `out`.
fn code_image(dir: &Path, out: &Path) {
    let mkext4 = ember_e2e::repo_root().join("images/mkext4");
    let r = run(Command::new(mkext4).arg(dir).arg(out));
    assert_eq!(r.code, Some(0), "mkext4:\n{r}");
}

/// Boots a VM with the agent as /init and `code` as its code drive, runs
/// `agent-client` with `client_args` against it and waits for the VMM.
fn with_agent(a: &Artifacts, code: &Path, client_args: &str) -> Finished {
    let script = format!(
        "./ember-vmm --kernel vmlinux --initrd initramfs --mem-mib 256 \
           --cmdline 'console=ttyS0 reboot=k panic=1 quiet' --vsock-cid 3 --vsock-uds v.sock \
           --drive code.ext4,ro --serial file:console & vmm=$!; \
         ./agent-client v.sock {client_args} || echo CLIENT-FAILED; \
         i=0; while kill -0 $vmm 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; \
         kill -TERM $vmm 2>/dev/null && echo VMM-KILLED; wait $vmm; echo VMM-EXIT $?; \
         echo '--- console ---'; cat console"
    );
    in_softhost(
        &[
            (&a.vmm, "ember-vmm"),
            (&a.vmlinux, "vmlinux"),
            (&a.initramfs, "initramfs"),
            (&a.agent_client, "agent-client"),
            (code, "code.ext4"),
        ],
        &script,
    )
}

fn result_line<'a>(out: &'a Finished, id: &str) -> &'a str {
    let prefix = format!("RESULT {id} ");
    out.stdout
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no result for {id}:\n{out}"))
}

/// The `exec` runtime: a busybox shell handler gets the event on stdin and
/// answers on stdout, as an unprivileged user; errors, deadlines, crashes,
/// a memory hog and an oversized frame are each reported and the agent
/// keeps serving with a fresh handler.
#[test]
fn exec_handler_runs_and_survives_every_failure() {
    let Some(a) = artifacts_unless_skipped("agent_exec") else {
        return;
    };
    let dir = tempdir("agent-exec");
    let task = dir.join("task");
    std::fs::create_dir_all(&task).unwrap();
    std::fs::write(task.join("README"), "exec handlers need no code\n").unwrap();
    let image = dir.join("code.ext4");
    code_image(&task, &image);
    let handler = r#"read -r e; case "$e" in fail) echo nope >&2; exit 3;; sleep) sleep 30;; hog) echo hogging; awk 'BEGIN { s = "x"; while (1) s = s s }';; crash) kill -9 $$;; *) echo "got $e as uid $(id -u)";; esac"#;
    let args = format!(
        "--runtime exec --handler '{}' --memory 64 --timeout-ms 8000 --shutdown \
         hello fail sleep again hog after-hog crash after-crash @oversize after-oversize",
        handler.replace('\'', r"'\''")
    );
    let out = with_agent(&a, &image, &args);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.stdout.contains("EMBER-GUEST-READY"), "{out}");
    assert!(out.stdout.lines().any(|l| l.starts_with("READY ")), "{out}");
    assert!(
        result_line(&out, "req-0").contains("Ok payload=got hello as uid 1000"),
        "{out}"
    );
    let fail = result_line(&out, "req-1");
    assert!(
        fail.contains("HandledError(") && fail.contains("logs=nope"),
        "{out}"
    );
    assert!(result_line(&out, "req-2").contains(" Timeout "), "{out}");
    assert!(
        result_line(&out, "req-3").contains("Ok payload=got again"),
        "{out}"
    );
    assert!(
        result_line(&out, "req-4").contains("signal=Some(9)"),
        "the memory hog must be killed by its cgroup's OOM killer:\n{out}"
    );
    assert!(
        result_line(&out, "req-5").contains("Ok payload=got after-hog"),
        "{out}"
    );
    assert!(
        result_line(&out, "req-6").contains("RuntimeExit(status=None,signal=Some(9))"),
        "{out}"
    );
    assert!(
        result_line(&out, "req-7").contains("Ok payload=got after-crash"),
        "{out}"
    );
    assert!(
        out.stdout.lines().any(|l| l.starts_with("REFUSED ")),
        "oversized frame:\n{out}"
    );
    assert!(
        result_line(&out, "req-9").contains("Ok payload=got after-oversize"),
        "{out}"
    );
    assert_line(&out, "SHUTDOWN-SENT");
    assert!(
        !out.stdout.contains("CLIENT-FAILED") && !out.stdout.contains("VMM-KILLED"),
        "{out}"
    );
    assert_line(&out, "VMM-EXIT 0");
}

/// A `bootstrap` written with the `lambda_runtime` crate runs unmodified:
/// it answers, reports a function error, and after it crashes a fresh
/// runtime takes the next event.
#[test]
fn lambda_runtime_bootstrap_runs_unmodified() {
    let Some(a) = artifacts_unless_skipped("agent_lambda_runtime") else {
        return;
    };
    let dir = tempdir("agent-lambda");
    let task = dir.join("task");
    std::fs::create_dir_all(&task).unwrap();
    std::fs::copy(&a.lambda_bootstrap, task.join("bootstrap")).unwrap();
    let image = dir.join("code.ext4");
    code_image(&task, &image);
    let out = with_agent(
        &a,
        &image,
        r#"--runtime provided --handler echo.handler --timeout-ms 10000 --shutdown '{"name":"ember"}' '{"fail":true}' '{"crash":true}' '{"name":"again"}'"#,
    );
    let _ = std::fs::remove_dir_all(&dir);
    let ok = result_line(&out, "req-0");
    assert!(
        ok.contains(r#""echo":{"name":"ember"}"#)
            && ok.contains(r#""function":"e2e""#)
            && ok.contains(r#""request_id":"req-0""#),
        "{out}"
    );
    assert!(
        result_line(&out, "req-1").contains("HandledError("),
        "{out}"
    );
    assert!(
        result_line(&out, "req-2").contains("RuntimeExit(status=Some(3)"),
        "{out}"
    );
    assert!(
        result_line(&out, "req-3").contains(r#""echo":{"name":"again"}"#),
        "{out}"
    );
    assert_line(&out, "VMM-EXIT 0");
}

/// A function without a `bootstrap` fails to initialise with the reason,
/// and the VM shuts itself down.
#[test]
fn missing_bootstrap_is_an_init_error_and_the_vm_stops() {
    let Some(a) = artifacts_unless_skipped("agent_missing_bootstrap") else {
        return;
    };
    let dir = tempdir("agent-nobootstrap");
    let task = dir.join("task");
    std::fs::create_dir_all(&task).unwrap();
    std::fs::write(task.join("handler.sh"), "echo hi\n").unwrap();
    let image = dir.join("code.ext4");
    code_image(&task, &image);
    let out = with_agent(&a, &image, "--runtime provided --handler x");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("INIT-ERROR Runtime.InvalidEntrypoint")),
        "{out}"
    );
    assert!(
        !out.stdout.contains("VMM-KILLED"),
        "the VM must stop by itself:\n{out}"
    );
    assert_line(&out, "VMM-EXIT 0");
}
