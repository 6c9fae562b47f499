//! The guest images from `images/build` boot and hold what they promise.
//!
//! These boot the guest kernel under plain QEMU emulation (no KVM), which
//! checks the images on their own; booting them under Ember's VMM is the
//! VMM's tests' job.

use std::path::Path;
use std::process::Command;

use ember_e2e::{
    artifacts_unless_skipped, assert_agent_ready, initramfs_with_check, repo_root, run, tempdir,
    Finished,
};

/// Boots `kernel` with `initrd` in QEMU TCG; the guest must reset (which
/// `-no-reboot` turns into QEMU exiting) within two minutes.
fn qemu_boot(
    machine: &str,
    kernel: &Path,
    initrd: &Path,
    append: &str,
    extra: &[&str],
) -> Finished {
    let out = run(Command::new("timeout")
        .args(["120", "qemu-system-x86_64", "-accel", "tcg", "-M", machine])
        .args([
            "-m",
            "256",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
        ])
        .args(["-no-reboot", "-serial", "stdio", "-kernel"])
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", append])
        .args(extra));
    assert_ne!(out.code, Some(124), "guest did not finish in 120 s:\n{out}");
    out
}

#[test]
fn vmlinux_boots_to_the_guest_agent() {
    let Some(a) = artifacts_unless_skipped("vmlinux_boots_to_the_guest_agent") else {
        return;
    };
    let out = qemu_boot(
        "microvm",
        &a.vmlinux,
        &a.initramfs,
        "console=ttyS0 reboot=k panic=-1 ember.agent=oneshot",
        &[],
    );
    assert_agent_ready(&out);
}

#[test]
fn bzimage_boots_to_the_guest_agent() {
    let Some(a) = artifacts_unless_skipped("bzimage_boots_to_the_guest_agent") else {
        return;
    };
    let out = qemu_boot(
        "q35",
        &a.bzimage,
        &a.initramfs,
        "console=ttyS0 panic=-1 ember.agent=oneshot",
        &[],
    );
    assert_agent_ready(&out);
}

#[test]
fn initramfs_is_reproducible_and_holds_the_agent_and_busybox() {
    let Some(a) =
        artifacts_unless_skipped("initramfs_is_reproducible_and_holds_the_agent_and_busybox")
    else {
        return;
    };
    let out = run(Command::new("sh").arg("-c").arg(format!(
        "gzip -dc '{}' | cpio -tv --numeric-uid-gid --quiet",
        a.initramfs.display()
    )));
    assert_eq!(out.code, Some(0), "{out}");
    let mut names = Vec::new();
    for line in out.stdout.lines() {
        // mode links uid gid size month day year name [-> target]
        let f: Vec<&str> = line.split_whitespace().collect();
        assert!(f.len() >= 9, "odd cpio listing line: {line}");
        assert_eq!((f[2], f[3]), ("0", "0"), "not owned by root: {line}");
        assert_eq!(f[7], "1970", "timestamp not fixed: {line}");
        if f[8] == "init" {
            assert!(f[0].starts_with("-rwx"), "/init not executable: {line}");
        }
        names.push(f[8].to_string());
    }
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "entries must be sorted");
    for want in ["init", "bin/busybox", "bin/sh", "dev", "proc", "sys"] {
        assert!(names.iter().any(|n| n == want), "initramfs lacks {want}");
    }
}

/// `images/mkext4` makes a reproducible image the guest kernel mounts over
/// virtio-mmio + virtio-blk.
#[test]
fn ext4_image_from_a_directory_mounts_in_the_guest() {
    let Some(a) = artifacts_unless_skipped("ext4_image_from_a_directory_mounts_in_the_guest")
    else {
        return;
    };
    let dir = tempdir("ext4");
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("sub/greeting"), "hello from ext4\n").unwrap();
    let mkext4 = |out: &Path| {
        let r = run(Command::new(repo_root().join("images/mkext4"))
            .arg(&tree)
            .arg(out));
        assert_eq!(r.code, Some(0), "mkext4 failed:\n{r}");
    };
    let (img, img2) = (dir.join("a.ext4"), dir.join("b.ext4"));
    mkext4(&img);
    // Reading the tree moves its atimes; the image must not change with them.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    std::fs::read(tree.join("sub/greeting")).unwrap();
    mkext4(&img2);
    assert!(
        std::fs::read(&img).unwrap() == std::fs::read(&img2).unwrap(),
        "mkext4 is not reproducible"
    );

    let initrd = initramfs_with_check(
        &a.initramfs,
        &dir,
        "mount -t devtmpfs dev /dev\nmkdir -p /mnt\n\
         mount -t ext4 -o ro /dev/vda /mnt && cat /mnt/sub/greeting && stat -c 'owner=%u:%g' /mnt/sub/greeting\n",
    );
    let drive = format!(
        "id=d0,file={},format=raw,if=none,readonly=on",
        img.display()
    );
    let out = qemu_boot(
        "microvm,acpi=off",
        &a.vmlinux,
        &initrd,
        "console=ttyS0 reboot=k panic=-1 quiet rdinit=/check",
        &["-drive", &drive, "-device", "virtio-blk-device,drive=d0"],
    );
    assert_eq!(out.code, Some(0), "{out}");
    assert!(
        out.stdout.contains("hello from ext4"),
        "guest could not read the image:\n{out}"
    );
    assert!(
        out.stdout.contains("owner=0:0"),
        "files must be owned by root:\n{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The guest kernel has, at run time, what the agent and handler
/// confinement need (images/kernel.config asks for each).
#[test]
fn guest_kernel_has_the_features_the_agent_needs() {
    let Some(a) = artifacts_unless_skipped("guest_kernel_has_the_features_the_agent_needs") else {
        return;
    };
    let dir = tempdir("features");
    let checks = [
        ("smp", "[ $(grep -c ^processor /proc/cpuinfo) = 2 ]"),
        ("ext4", "grep -qw ext4 /proc/filesystems"),
        ("tmpfs", "grep -qw tmpfs /proc/filesystems"),
        ("overlay", "grep -qw overlay /proc/filesystems"),
        ("cgroup2", "mkdir -p /cg && mount -t cgroup2 none /cg && grep -qw memory /cg/cgroup.controllers && grep -qw pids /cg/cgroup.controllers && grep -qw cpu /cg/cgroup.controllers"),
        ("namespaces", "for n in pid net user uts ipc cgroup mnt; do [ -e /proc/self/ns/$n ] || exit 1; done"),
        ("seccomp", "grep -q '^Seccomp_filters:' /proc/self/status"),
        ("unix", "[ -e /proc/net/unix ]"),
        ("loopback", "ip link set lo up && ip addr show lo | grep -q 127.0.0.1"),
        ("vsock", "[ -c /dev/vsock ]"),
        ("virtio-rng", "grep -q virtio_rng /sys/class/misc/hw_random/rng_available"),
        ("console-8250", "grep -q 'ttyS0' /proc/consoles"),
        ("no-ipv6", "! [ -e /proc/net/if_inet6 ]"),
    ];
    let mut body = String::from(
        "mount -t devtmpfs dev /dev\nmount -t proc proc /proc\nmount -t sysfs sys /sys\n",
    );
    for (name, check) in checks {
        body.push_str(&format!("if ( {check} ); then echo 'FEATURE {name} ok'; else echo 'FEATURE {name} MISSING'; fi\n"));
    }
    let initrd = initramfs_with_check(&a.initramfs, &dir, &body);
    let out = qemu_boot(
        "microvm,acpi=off",
        &a.vmlinux,
        &initrd,
        "console=ttyS0 reboot=k panic=-1 quiet rdinit=/check",
        &["-smp", "2", "-device", "virtio-rng-device"],
    );
    assert_eq!(out.code, Some(0), "{out}");
    for (name, _) in checks {
        assert!(
            out.stdout
                .lines()
                .any(|l| l.trim_end() == format!("FEATURE {name} ok")),
            "guest kernel lacks {name}:\n{out}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
