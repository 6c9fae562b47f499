//! The soft (or hardware) KVM host runs a real KVM guest.

use ember_e2e::{
    artifacts_unless_skipped, assert_agent_ready, initramfs_with_check, run, softhost, tempdir,
};

/// Inside `images/softhost`, `/dev/kvm` opens, KVM_GET_API_VERSION is 12, and
/// a tiny real-mode guest runs to HLT after an I/O exit.
#[test]
fn tiny_guest_runs_to_hlt_with_io_exit() {
    let Some(a) = artifacts_unless_skipped("tiny_guest_runs_to_hlt_with_io_exit") else {
        return;
    };
    let put = format!("{}:ember-vmm", a.vmm.display());
    let out = run(softhost(&["--timeout", "300", "--put", &put]).args(["./ember-vmm", "probe"]));
    assert_eq!(out.code, Some(0), "probe failed in the soft host:\n{out}");
    let flavor = out.stdout.lines().find(|l| l.starts_with("kvm flavor: "));
    assert!(
        flavor.is_some_and(|l| l.contains("kvm_amd (nested paging on)")
            || l.contains("kvm_intel (nested paging on)")),
        "the KVM host must be hardware KVM (or its emulation) with nested paging:\n{out}"
    );
    for line in [
        "kvm api version: 12",
        "io exit: port 0x3f8 data [45]",
        "exits: IoOut(0x3f8), Hlt",
        "probe: ok",
    ] {
        assert!(
            out.stdout.lines().any(|l| l == line),
            "missing '{line}':\n{out}"
        );
    }
}

/// The soft host runs a real Linux guest under KVM with nested paging: our
/// guest kernel and initramfs boot to the guest agent's ready marker, with
/// kvmclock, under QEMU's microvm on `-accel kvm` inside the soft host.
/// This checks the host and the images with a reference VMM, so that a
/// failure of Ember's own VMM can be told apart from a broken host.
#[test]
fn guest_kernel_boots_under_kvm_in_the_soft_host() {
    let Some(a) = artifacts_unless_skipped("guest_kernel_boots_under_kvm_in_the_soft_host") else {
        return;
    };
    let dir = tempdir("nested");
    let initrd = initramfs_with_check(
        &a.initramfs,
        &dir,
        "mount -t proc proc /proc\nmount -t sysfs sys /sys\n\
         echo \"CLOCKSOURCE $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)\"\n\
         exec /init",
    );
    let puts = [
        "/usr/bin/qemu-system-x86_64:qemu".to_string(),
        "/usr/share/qemu:qemu-share".to_string(),
        format!("{}:vmlinux", a.vmlinux.display()),
        format!("{}:initrd", initrd.display()),
    ];
    let mut args = vec!["--timeout", "300"];
    for p in &puts {
        args.extend(["--put", p.as_str()]);
    }
    // reboot=t: the microvm has no i8042, and polling for one through nested
    // exits takes half a minute.
    let qemu = "./qemu -L qemu-share -accel kvm -M microvm -cpu host -m 128 -nodefaults \
                -no-user-config -display none -no-reboot -serial stdio \
                -kernel vmlinux -initrd initrd -append";
    let out = run(softhost(&args)
        .args(qemu.split_whitespace())
        .arg("console=ttyS0 reboot=t panic=-1 quiet rdinit=/check ember.agent=oneshot"));
    let _ = std::fs::remove_dir_all(&dir);
    assert_agent_ready(&out);
    assert!(
        out.stdout
            .lines()
            .any(|l| l.trim_end() == "CLOCKSOURCE kvm-clock"),
        "the guest must run on kvmclock under KVM:\n{out}"
    );
}
