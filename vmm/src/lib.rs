//! Ember's VMM for Linux microVMs on KVM, built on rust-vmm crates.
//!
//! Modules, in boot order as they land:
//! - [`probe`]: proves `/dev/kvm` can run a guest (API version, a tiny guest).

pub mod probe;
