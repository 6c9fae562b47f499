//! Ember's VMM for Linux microVMs on KVM, built on rust-vmm crates.
//!
//! Modules, in boot order as they land:
//! - [`probe`]: proves `/dev/kvm` can run a guest (API version, a tiny guest).
//! - [`devices`]: what the guest sees: buses, legacy devices, virtio devices.

pub mod devices;
pub mod probe;
