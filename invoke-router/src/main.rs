//! `ember-invoke-router`: Ember's frontend, assignment, placement and
//! counting services in one binary.
//!
//! Not built yet: this placeholder only says what is coming, so that the
//! README's start command already runs end to end (images, then router).

use std::process::ExitCode;

const COMING: &str = "\
ember-invoke-router: the router is not built yet. What is here today:
  - images/build     the guest kernel and initramfs (cached)
  - images/softhost  a KVM host with hardware-virtualization semantics
  - ember-vmm probe  proves /dev/kvm runs a guest
Coming next: the VMM booting Linux with virtio-vsock and virtio-blk, the
guest agent serving the Lambda Runtime API, then this router (HTTP invoke
frontend, warm/cold slot assignment, placement, per-tenant limits).";

fn main() -> ExitCode {
    if let Some(arg) = std::env::args().nth(1) {
        if arg != "--help" && arg != "-h" {
            eprintln!("ember-invoke-router: unknown argument '{arg}'\n");
            eprintln!("{COMING}");
            return ExitCode::from(2);
        }
    }
    println!("{COMING}");
    ExitCode::SUCCESS
}
