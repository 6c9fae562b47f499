//! The soft (or hardware) KVM host runs a real KVM guest.

use ember_e2e::{run, skipped, softhost, Artifacts};

/// Inside `images/softhost`, `/dev/kvm` opens, KVM_GET_API_VERSION is 12, and
/// a tiny real-mode guest runs to HLT after an I/O exit.
#[test]
fn tiny_guest_runs_to_hlt_with_io_exit() {
    if skipped("tiny_guest_runs_to_hlt_with_io_exit") {
        return;
    }
    let a = Artifacts::from_env();
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
