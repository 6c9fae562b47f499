//! Devices the guest sees: the legacy PC pieces and the virtio devices.

pub mod bus;
pub mod counters;
pub mod i8042;
pub mod legacy;
pub mod serial;
pub mod virtio;
