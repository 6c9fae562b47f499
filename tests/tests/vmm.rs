//! Ember's VMM boots the real guest kernel and initramfs on KVM (in the soft
//! host where this machine lacks hardware virtualization): both kernel
//! formats, 1 and 2 vCPUs, vsock both ways, block read/write, guest reboot
//! and SIGTERM. The guest runs a `/check` script (an initramfs overlay) and
//! the soft host runs a shell script around the VMM; both print markers.

use std::path::{Path, PathBuf};

use ember_e2e::{
    artifacts_unless_skipped, assert_line, in_softhost, in_softhost_once_more_on_triple_fault,
    initramfs_with, tempdir, Artifacts,
};

/// The guest command line of these tests (`reboot=k`: the i8042 reset ends the VMM).
const CMDLINE: &str = "console=ttyS0 reboot=k panic=1 quiet rdinit=/check";

/// Builds the guest initrd with `/check` = `guest` (plus vsock-tool).
fn guest_initrd(a: &Artifacts, dir: &Path, guest: &str) -> PathBuf {
    initramfs_with(&a.initramfs, dir, guest, &[&a.vsock_tool])
}

/// How a test hands the VM's settings to the VMM.
#[derive(Clone, Copy)]
enum Settings {
    /// Command-line flags.
    Flags,
    /// A Firecracker-style JSON file (`--config`).
    Json,
}

/// Boots `kernel` with `vcpus`, lets the guest report its CPUs, and expects
/// the guest's `stop` command to end the VMM with status 0.
fn boot_and_stop(
    test: &str,
    kernel_of: fn(&Artifacts) -> &Path,
    vcpus: u32,
    stop: &str,
    settings: Settings,
) {
    let Some(a) = artifacts_unless_skipped(test) else {
        return;
    };
    let dir = tempdir(test);
    let initrd = guest_initrd(
        &a,
        &dir,
        &format!("echo \"GUEST-INIT cpus=$(nproc)\"\n{stop}"),
    );
    let config = dir.join("vm.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"boot-source": {{"kernel_image_path": "kernel", "initrd_path": "initrd", "boot_args": "{CMDLINE}"}},
                "machine-config": {{"vcpu_count": {vcpus}, "mem_size_mib": 128}}}}"#
        ),
    )
    .unwrap();
    let vmm = match settings {
        Settings::Flags => format!(
            "./ember-vmm --kernel kernel --initrd initrd --vcpus {vcpus} --mem-mib 128 --cmdline '{CMDLINE}'"
        ),
        Settings::Json => "./ember-vmm --config vm.json".to_string(),
    };
    let out = in_softhost(
        &[
            (&a.vmm, "ember-vmm"),
            (kernel_of(&a), "kernel"),
            (&initrd, "initrd"),
            (&config, "vm.json"),
        ],
        &format!("{vmm}; echo VMM-EXIT $?"),
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert_line(&out, &format!("GUEST-INIT cpus={vcpus}"));
    assert_line(&out, "VMM-EXIT 0");
    assert!(
        out.stderr
            .contains("guest stopped: reset through the i8042 controller"),
        "the VMM must report the guest's reboot:\n{out}"
    );
}

#[test]
fn boots_vmlinux_on_one_vcpu_and_exits_on_guest_reboot() {
    boot_and_stop(
        "vmm_vmlinux_1",
        |a| &a.vmlinux,
        1,
        "reboot -f",
        Settings::Flags,
    );
}

/// Also: the settings come from a Firecracker-style JSON file.
#[test]
fn boots_bzimage_on_two_vcpus_and_exits_on_guest_reboot() {
    boot_and_stop(
        "vmm_bzimage_2",
        |a| &a.bzimage,
        2,
        "reboot -f",
        Settings::Json,
    );
}

/// `poweroff` in the guest (busybox signals PID 1, the agent) ends the VMM
/// with status 0. (Without ACPI the kernel itself cannot power off: a forced
/// `poweroff -f` halts the vCPUs; the agent turns every stop into a reset.)
#[test]
fn guest_poweroff_through_the_agent_ends_the_vmm_with_status_0() {
    let Some(a) = artifacts_unless_skipped("vmm_poweroff") else {
        return;
    };
    let dir = tempdir("vmm-poweroff");
    let initrd = guest_initrd(
        &a,
        &dir,
        "mount -t devtmpfs dev /dev\n(sleep 2; poweroff) &\nexec /init",
    );
    let script = format!(
        "./ember-vmm --kernel vmlinux --initrd initrd --mem-mib 128 --cmdline '{CMDLINE}' \
           --vsock-cid 3 --vsock-uds v.sock; echo VMM-EXIT $?"
    );
    let out = in_softhost(
        &[
            (&a.vmm, "ember-vmm"),
            (&a.vmlinux, "vmlinux"),
            (&initrd, "initrd"),
        ],
        &script,
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.stdout.contains("EMBER-GUEST-READY"), "{out}");
    assert!(
        out.stdout.contains("SIGUSR2: shutting down")
            || out.stderr.contains("SIGUSR2: shutting down"),
        "{out}"
    );
    assert_line(&out, "VMM-EXIT 0");
}

/// Host→guest and guest→host vsock connections echo 1 MiB each way, then
/// SIGTERM stops the VMM cleanly (status 0) and its socket file is gone.
#[test]
fn vsock_echoes_both_ways_and_sigterm_exits_cleanly() {
    let Some(a) = artifacts_unless_skipped("vsock_echoes_both_ways") else {
        return;
    };
    let dir = tempdir("vmm-vsock");
    let initrd = guest_initrd(
        &a,
        &dir,
        "mount -t devtmpfs dev /dev\n/vsock-tool guest-echo 5000 &\n/vsock-tool guest-send 7000 1048576 || echo GUEST-SEND-FAILED\nsleep 600",
    );
    let script = format!(
        "./vsock-tool host-echo v.sock_7000 & \
         ./ember-vmm --kernel vmlinux --initrd initrd --mem-mib 128 --cmdline '{CMDLINE}' \
           --vsock-cid 3 --vsock-uds v.sock --vsock-allow-port 7000 & vmm=$!; \
         ./vsock-tool host-send v.sock 5000 1048576 || echo HOST-SEND-FAILED; \
         ./vsock-tool host-send v.sock 5000 1 || echo HOST-SEND-FAILED; \
         i=0; while ! grep -q GUEST-SEND-OK console 2>/dev/null && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; \
         kill -TERM $vmm; wait $vmm; echo VMM-EXIT $?; \
         [ -e v.sock ] && echo SOCKET-LEFT; cat console"
    );
    // The console goes to a file so the host script can wait for the guest.
    let script = script.replace("--vsock-cid 3", "--serial file:console --vsock-cid 3");
    let out = in_softhost_once_more_on_triple_fault(
        &[
            (&a.vmm, "ember-vmm"),
            (&a.vmlinux, "vmlinux"),
            (&initrd, "initrd"),
            (&a.vsock_tool, "vsock-tool"),
        ],
        &script,
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert_line(&out, "HOST-SEND-OK 1048576");
    assert_line(&out, "HOST-SEND-OK 1");
    assert!(
        out.stdout.contains("GUEST-SEND-OK 1048576"),
        "guest→host echo failed:\n{out}"
    );
    assert!(!out.stdout.contains("FAILED"), "{out}");
    assert_line(&out, "VMM-EXIT 0");
    assert!(
        !out.stdout.contains("SOCKET-LEFT"),
        "the vsock socket must be removed on exit:\n{out}"
    );
    assert!(out.stderr.contains("stopped by signal 15"), "{out}");
}

/// The guest reads a read-only drive, cannot write it, and writes a
/// read-write drive whose bytes the host then sees.
#[test]
fn block_devices_read_and_write_raw_files() {
    let Some(a) = artifacts_unless_skipped("block_devices_read_and_write") else {
        return;
    };
    let dir = tempdir("vmm-block");
    let ro = dir.join("ro.img");
    let mut disk = b"EMBER-RO-DISK".to_vec();
    disk.resize(1 << 20, 0);
    std::fs::write(&ro, &disk).unwrap();
    let rw = dir.join("rw.img");
    std::fs::write(&rw, vec![0u8; 1 << 20]).unwrap();
    let initrd = guest_initrd(
        &a,
        &dir,
        "mount -t devtmpfs dev /dev\nmount -t sysfs sys /sys\n\
         echo \"RO-READ $(head -c 13 /dev/vda)\"\n\
         echo \"RO-SIZE $(cat /sys/block/vda/size 2>/dev/null || blockdev --getsz /dev/vda)\"\n\
         printf X | dd of=/dev/vda bs=1 count=1 conv=notrunc 2>/dev/null && echo RO-WRITE-SUCCEEDED\n\
         printf EMBER-WRITTEN | dd of=/dev/vdb bs=512 conv=sync,notrunc 2>/dev/null && sync && echo RW-WRITE-OK\n\
         echo \"RW-READBACK $(head -c 13 /dev/vdb)\"",
    );
    let script = format!(
        "./ember-vmm --kernel vmlinux --initrd initrd --mem-mib 128 --cmdline '{CMDLINE}' \
           --drive ro.img,ro --drive rw.img; echo VMM-EXIT $?; echo \"HOST-SEES $(head -c 13 rw.img)\""
    );
    let out = in_softhost(
        &[
            (&a.vmm, "ember-vmm"),
            (&a.vmlinux, "vmlinux"),
            (&initrd, "initrd"),
            (&ro, "ro.img"),
            (&rw, "rw.img"),
        ],
        &script,
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert_line(&out, "RO-READ EMBER-RO-DISK");
    assert_line(&out, "RO-SIZE 2048");
    assert!(
        !out.stdout.contains("RO-WRITE-SUCCEEDED"),
        "a read-only drive took a write:\n{out}"
    );
    assert_line(&out, "RW-WRITE-OK");
    assert_line(&out, "RW-READBACK EMBER-WRITTEN");
    assert_line(&out, "VMM-EXIT 0");
    assert_line(&out, "HOST-SEES EMBER-WRITTEN");
}
