//! The jail around the VMM (issue 13), with the real VMM, kernel and
//! guest in the soft host:
//! - a jailed `ember-vmm` runs under its own uid without capabilities,
//!   with `no_new_privs` and seccomp, in its own mount, PID, network, IPC
//!   and UTS namespaces, in a root holding only what its VM needs, in a
//!   cgroup with its limits; it cannot open a host file outside that root
//!   nor reach another VM's socket; its inherited fds and environment are
//!   gone; its root and cgroup go when it stops;
//! - a forbidden syscall after the filters are in kills the VMM with
//!   SIGSYS, jailed or not (`--debug-seccomp-trigger`);
//! - the router jails every VM it starts, sweeps leftovers at start, and
//!   leaves no jail behind once its VMs stop.

use std::time::Duration;

use ember_e2e::lambda_api::{self, exec_function, Key};
use ember_e2e::{
    artifacts_unless_skipped, assert_line, exchange_until, free_port, in_softhost, initramfs_with,
    tempdir, Finished,
};
use serde_json::json;

/// `reboot=k`: the guest's reboot ends the VMM.
const CMDLINE: &str = "console=ttyS0 reboot=k panic=1 quiet rdinit=/check";
/// The uids the VMM-level test gives its two VMs.
const UID_A: u32 = 900_100;
const UID_B: u32 = 900_101;

/// The value of `/proc/<pid>/status` field `key` as printed by the script
/// (`STATUS Key:\tvalue...`).
fn status_field<'a>(out: &'a Finished, key: &str) -> &'a str {
    let prefix = format!("STATUS {key}:");
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {key} in the VMM's status:\n{out}"))
}

/// Everything a script line `KEY rest` says after `KEY `.
fn line_after<'a>(out: &'a Finished, key: &str) -> &'a str {
    let prefix = format!("{key} ");
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {key} line:\n{out}"))
}

#[test]
fn a_jailed_vmm_is_confined_and_a_forbidden_syscall_kills_it() {
    let Some(a) = artifacts_unless_skipped("jail_vmm") else {
        return;
    };
    let dir = tempdir("jail-vmm");
    let initrd = initramfs_with(
        &a.initramfs,
        &dir,
        "mount -t devtmpfs dev /dev\n/vsock-tool guest-echo 5000 &\nsleep 600",
        &[&a.vsock_tool],
    );
    let vm = |name: &str, uid: u32, extra: &str| {
        format!(
            "./ember-vmm --kernel vmlinux --initrd initrd --mem-mib 128 --cmdline '{CMDLINE}' \
               --serial none --vsock-cid 3 --vsock-uds $PWD/{name}/vsock/v.sock \
               --jail-root $PWD/{name}/root --jail-uid {uid} --jail-gid {uid} \
               --jail-cgroup /sys/fs/cgroup/ember-test/vm-{name} {extra}"
        )
    };
    // fd 7 (a host file) is open in the shell that starts the VMMs: the
    // jail must not pass it on.
    let script = format!(
        "echo JOB-DIR $PWD; mkdir -p a/vsock b/vsock c/vsock; echo host-secret > secret; exec 7<secret
         {vm_a} --debug-jail-probe $PWD/secret --debug-jail-probe $PWD/b/vsock/v.sock \
             --debug-jail-probe /dev/kvm 2>a.err & keeper=$!
         {vm_b} 2>b.err & keeper_b=$!
         ./vsock-tool host-send a/vsock/v.sock 5000 65536 || echo HOST-SEND-A-FAILED
         ./vsock-tool host-send b/vsock/v.sock 5000 65536 || echo HOST-SEND-B-FAILED
         vmm=
         for p in /proc/[0-9]*; do
             [ \"$(awk '/^PPid:/ {{print $2}}' $p/status 2>/dev/null)\" = $keeper ] && vmm=${{p#/proc/}}
         done
         echo VMM-PID $vmm
         grep -E '^(Uid|Gid|Groups|NoNewPrivs|Seccomp|CapInh|CapPrm|CapEff|CapBnd|CapAmb):' /proc/$vmm/status | sed 's/^/STATUS /'
         for ns in mnt pid net ipc uts; do
             [ \"$(readlink /proc/$vmm/ns/$ns)\" != \"$(readlink /proc/self/ns/$ns)\" ] && echo NS-DIFFERS $ns
         done
         echo ROOT-LIST $(cd /proc/$vmm/root && find . | sort | tr '\\n' ' ')
         echo CGROUP $(cat /proc/$vmm/cgroup)
         cg=/sys/fs/cgroup/ember-test/vm-a
         echo LIMITS $(cat $cg/memory.max) $(cat $cg/cpu.max) $(cat $cg/pids.max)
         echo NOFILE $(awk '/Max open files/ {{print $4}}' /proc/$vmm/limits)
         echo FSIZE $(awk '/Max file size/ {{print $4}}' /proc/$vmm/limits)
         echo ENVIRON-BYTES $(tr -d '\\0' < /proc/$vmm/environ | wc -c)
         for fd in /proc/$vmm/fd/*; do readlink $fd; done | grep -q secret && echo INHERITED-FD
         echo SOCKET-OWNER $(stat -c '%u %a' a/vsock)
         kill -TERM $keeper; wait $keeper; echo KEEPER-EXIT $?
         [ -e a/root ] && echo ROOT-LEFT
         [ -e $cg ] && echo CGROUP-LEFT
         kill -TERM $keeper_b; wait $keeper_b; echo KEEPER-B-EXIT $?
         {vm_c} --debug-seccomp-trigger 2>c.err; echo JAILED-TRIGGER-EXIT $?
         [ -e c/root ] && echo TRIGGER-ROOT-LEFT
         [ -e /sys/fs/cgroup/ember-test/vm-c ] && echo TRIGGER-CGROUP-LEFT
         ./ember-vmm --kernel vmlinux --initrd initrd --mem-mib 128 --cmdline '{CMDLINE}' \
             --serial none --debug-seccomp-trigger 2>d.err; echo TRIGGER-EXIT $?
         ./ember-vmm --kernel vmlinux --initrd initrd --mem-mib 128 --cmdline '{CMDLINE}' \
             --serial none --jail-root $PWD/e/root --jail-uid 0 --jail-gid 0; echo ROOT-UID-EXIT $?
         echo '--- a.err'; cat a.err; echo '--- b.err'; cat b.err
         echo '--- c.err'; cat c.err; echo '--- d.err'; cat d.err",
        vm_a = vm("a", UID_A, ""),
        vm_b = vm("b", UID_B, ""),
        vm_c = vm("c", 900_102, ""),
    );
    let out = in_softhost(
        &[
            (&a.vmm, "ember-vmm"),
            (&a.vmlinux, "vmlinux"),
            (&initrd, "initrd"),
            (&a.vsock_tool, "vsock-tool"),
        ],
        &script,
    );
    let _ = std::fs::remove_dir_all(&dir);

    // Both jailed VMs booted and echo over their own sockets.
    assert_line(&out, "HOST-SEND-OK 65536");
    assert!(!out.stdout.contains("FAILED"), "{out}");
    // The VMM's credentials: its own uid, nothing privileged left.
    let uid = format!("{UID_A}\t{UID_A}\t{UID_A}\t{UID_A}");
    assert_eq!(status_field(&out, "Uid"), uid, "{out}");
    assert_eq!(status_field(&out, "Gid"), uid, "{out}");
    assert_eq!(status_field(&out, "Groups"), "", "{out}");
    assert_eq!(status_field(&out, "NoNewPrivs"), "1", "{out}");
    assert_eq!(status_field(&out, "Seccomp"), "2", "{out}");
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(&out, set), "0000000000000000", "{set}:\n{out}");
    }
    for ns in ["mnt", "pid", "net", "ipc", "uts"] {
        assert_line(&out, &format!("NS-DIFFERS {ns}"));
    }
    // Its root holds what the VM needs and nothing else.
    assert_eq!(
        line_after(&out, "ROOT-LIST"),
        ". ./dev ./dev/kvm ./initrd ./kernel ./vsock ./vsock/v.sock",
        "{out}"
    );
    assert_eq!(line_after(&out, "CGROUP"), "0::/ember-test/vm-a", "{out}");
    // memory.max = 128 MiB guest + 32 MiB overhead; one CPU; vCPUs + 8 tasks.
    assert_eq!(
        line_after(&out, "LIMITS"),
        format!("{} 100000 100000 9", 160u64 << 20),
        "{out}"
    );
    assert_eq!(line_after(&out, "NOFILE"), "1024", "{out}");
    assert_eq!(
        line_after(&out, "FSIZE"),
        (64u64 << 20).to_string(),
        "{out}"
    );
    assert_eq!(line_after(&out, "ENVIRON-BYTES"), "0", "{out}");
    assert!(!out.stdout.contains("INHERITED-FD"), "{out}");
    assert_eq!(
        line_after(&out, "SOCKET-OWNER"),
        format!("{UID_A} 700"),
        "{out}"
    );
    // Inside the jail (still root, before the uid drop): no host file, no
    // other VM's socket; /dev/kvm is there.
    let probe = |path: &str| {
        out.stdout
            .lines()
            .find(|l| l.contains(&format!("jail-probe {path}:")))
            .unwrap_or_else(|| panic!("no probe of {path}:\n{out}"))
            .to_string()
    };
    assert!(
        probe("/dev/kvm").contains("open opened"),
        "{}",
        probe("/dev/kvm")
    );
    let job = line_after(&out, "JOB-DIR");
    let secret = probe(&format!("{job}/secret"));
    assert!(secret.contains("open error 2,"), "{secret}\n{out}");
    let other = probe(&format!("{job}/b/vsock/v.sock"));
    assert!(other.contains("connect error 2"), "{other}\n{out}");
    // SIGTERM reaches the VMM through its keeper; the jail is cleaned up.
    assert_line(&out, "KEEPER-EXIT 0");
    assert_line(&out, "KEEPER-B-EXIT 0");
    assert!(!out.stdout.contains("ROOT-LEFT"), "{out}");
    assert!(!out.stdout.contains("CGROUP-LEFT"), "{out}");
    // A forbidden syscall after the filters are in: SIGSYS (128 + 31).
    assert_line(&out, "JAILED-TRIGGER-EXIT 159");
    assert_line(&out, "TRIGGER-EXIT 159");
    assert!(out.stdout.contains("killed by SIGSYS"), "{out}");
    // A jail for uid 0 is refused as a bad setting.
    assert_line(&out, "ROOT-UID-EXIT 2");
}

const ALPHA: Key = Key {
    id: "AKIAEMBERE2EJAIL0000",
    secret: "jail-secret-0123456789",
};

#[test]
fn the_router_jails_every_vm_and_leaves_no_jail_behind() {
    let Some(a) = artifacts_unless_skipped("jail_router") else {
        return;
    };
    let (port, ctrl) = (free_port(), free_port());
    // A leftover of a router that died: a VM cgroup and a slot directory.
    let script = format!(
        "export PATH=$PWD/bin:$PATH
         mkdir -p /sys/fs/cgroup/ember/vm-stale-1 d/run/vm-stale-1/root
         (umask 077; printf '%s' '{tenants}' >tenants.toml)
         ./ember-invoke-router serve --listen 0.0.0.0:{port} --data-dir $PWD/d \
             --kernel vmlinux --initramfs initramfs --vmm ./ember-vmm \
             --capacity-mem-mib 1024 --capacity-vcpus 4 --tenants-file tenants.toml >router.log 2>&1 &
         router=$!
         cmd=$(echo ok | ./busybox nc -l -p {ctrl})
         [ -e /sys/fs/cgroup/ember/vm-stale-1 ] && echo STALE-CGROUP-LEFT
         [ -e d/run/vm-stale-1 ] && echo STALE-DIR-LEFT
         for p in /proc/[0-9]*; do
             [ \"$(cat $p/comm 2>/dev/null)\" = ember-vmm ] || continue
             uid=$(awk '/^Uid:/ {{print $2}}' $p/status)
             [ \"$uid\" = 0 ] && continue
             echo JAILED-VMM uid=$uid $(grep -E '^(NoNewPrivs|Seccomp):' $p/status | tr -s '\\t\\n' '  ')
             [ \"$(readlink $p/ns/mnt)\" != \"$(readlink /proc/self/ns/mnt)\" ] && echo JAILED-MNT-NS
         done
         echo VM-CGROUPS $(ls /sys/fs/cgroup/ember | grep -c '^vm-')
         echo JAIL-ROOTS $(ls -d d/run/vm-*/root 2>/dev/null | wc -l)
         kill -TERM $router; wait $router; echo ROUTER-EXIT $?
         sleep 1
         echo AFTER-CGROUPS $(ls /sys/fs/cgroup/ember | grep -c '^vm-')
         echo AFTER-DIRS $(ls d/run | wc -l)
         echo '--- router log ---'; cat router.log",
        tenants = ALPHA.tenant_entry("alpha"),
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
        "2048".into(),
        "--forward".into(),
        port.to_string(),
        "--forward".into(),
        ctrl.to_string(),
    ];
    for p in puts {
        args.extend(["--put".to_string(), p]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cmd = ember_e2e::softhost(&args);
    cmd.args(["sh", "-c", &script])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().expect("spawn images/softhost");
    let api = format!("127.0.0.1:{port}");

    // Wait for the API, create a function, invoke it: its VM stays warm.
    let outcome = (|| -> Result<(), String> {
        let start = std::time::Instant::now();
        loop {
            match lambda_api::request(&api, ALPHA, "GET", "/2015-03-31/functions/", b"", &[]) {
                Ok(r) if r.status == 200 => break,
                _ if start.elapsed() > Duration::from_secs(240) => {
                    return Err("the router did not answer within 240 s".into())
                }
                _ => std::thread::sleep(Duration::from_millis(500)),
            }
        }
        let body = exec_function("echo", "printf 'jailed:'; cat", 128, 10).to_string();
        let r = lambda_api::request(
            &api,
            ALPHA,
            "POST",
            "/2015-03-31/functions",
            body.as_bytes(),
            &[],
        )
        .map_err(|e| e.to_string())?;
        if r.status != 201 {
            return Err(format!("CreateFunction: {r}"));
        }
        let r = lambda_api::request(
            &api,
            ALPHA,
            "POST",
            "/2015-03-31/functions/echo/invocations",
            json!("hi").to_string().as_bytes(),
            &[],
        )
        .map_err(|e| e.to_string())?;
        if r.status != 200 || r.text() != "jailed:\"hi\"" {
            return Err(format!("Invoke: {r}"));
        }
        Ok(())
    })();
    // Whatever happened, let the script inspect and stop the router.
    let told = exchange_until(ctrl, b"check\n", Duration::from_secs(60));
    let out: Finished = child.wait_with_output().expect("soft host").into();
    outcome.unwrap_or_else(|e| panic!("{e}\n{out}"));
    assert!(told.is_some(), "the control port did not answer:\n{out}");

    assert!(!out.stdout.contains("STALE-CGROUP-LEFT"), "{out}");
    assert!(!out.stdout.contains("STALE-DIR-LEFT"), "{out}");
    let jailed: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("JAILED-VMM "))
        .collect();
    assert_eq!(jailed.len(), 1, "one warm VM, jailed:\n{out}");
    assert!(
        jailed[0].contains("uid=900000") && jailed[0].contains("NoNewPrivs: 1"),
        "{out}"
    );
    assert!(jailed[0].contains("Seccomp: 2"), "{out}");
    assert_line(&out, "JAILED-MNT-NS");
    assert_line(&out, "VM-CGROUPS 1");
    assert_line(&out, "JAIL-ROOTS 1");
    assert_line(&out, "ROUTER-EXIT 0");
    assert_line(&out, "AFTER-CGROUPS 0");
    assert_line(&out, "AFTER-DIRS 0");
}
