//! Ember's VMM for Linux microVMs on KVM, built on rust-vmm crates.
//!
//! Modules, in boot order as they land:
//! - [`probe`]: proves `/dev/kvm` can run a guest (API version, a tiny guest).
//! - [`arch`]: x86_64 boot (memory map, kernel loading, MP table, CPUID, registers).

#[cfg(target_arch = "x86_64")]
pub mod arch;
pub mod probe;
