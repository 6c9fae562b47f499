//! Devices the guest sees: the legacy PC pieces and the virtio devices.

pub mod bus;
pub mod virtio;
