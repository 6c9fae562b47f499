//! Virtio devices and their MMIO transport.
//!
//! A device (features, config space, what it does with its queues) is apart
//! from the transport (the registers the guest driver programs). The device
//! is shared as `Arc<Mutex<_>>` between the transport, which vCPU threads
//! drive, and the event loop, which runs the device's queue work when the
//! guest kicks a queue (an ioeventfd) or a host socket is ready.

pub mod block;
pub mod interrupt;
pub mod mmio;
pub mod vsock;

use event_manager::MutEventSubscriber;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub use interrupt::{IrqKind, VirtioInterrupt};

/// Feature bit every device offers: the device is virtio 1.x (non-legacy).
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;

/// A virtqueue as the transport hands it to the device on activation.
pub type Queue = virtio_queue::Queue;

/// Why a device could not start working.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver set up a different number of queues than the device has.
    #[error("driver set up {got} queues, the device needs {want}")]
    QueueCount {
        /// Queues the driver handed over.
        got: usize,
        /// Queues the device needs.
        want: usize,
    },
    /// The driver did not accept a feature the device cannot work without.
    #[error("driver did not accept required feature bit {0}")]
    MissingFeature(u32),
    /// Something device-specific failed.
    #[error("{0}")]
    Device(String),
}

/// A virtio device behind a transport.
///
/// The device is also an event subscriber: on registration it watches its
/// queue events (and whatever host fds it owns); before activation it must
/// ignore them.
pub trait VirtioDevice: MutEventSubscriber + Send {
    /// The virtio device id (e.g. 2 = block, 19 = vsock).
    fn device_type(&self) -> u32;
    /// The maximum size of each of the device's queues; its length is the queue count.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits the device offers (always including [`VIRTIO_F_VERSION_1`]).
    fn avail_features(&self) -> u64;
    /// Records the features the driver accepted (a subset of `avail_features`).
    fn set_acked_features(&mut self, features: u64);
    /// Reads the device config space at `offset`; bytes beyond it read as 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device config space; read-only or out-of-range bytes are ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// One event per queue, signalled when the guest kicks that queue.
    fn queue_events(&self) -> &[EventFd];
    /// The interrupt the device raises towards the guest.
    fn interrupt(&self) -> &VirtioInterrupt;
    /// Starts the device with the driver's queues; called once, on DRIVER_OK.
    fn activate(&mut self, mem: GuestMemoryMmap, queues: Vec<Queue>) -> Result<(), ActivateError>;
    /// Whether `activate` succeeded.
    fn is_activated(&self) -> bool;
    /// Returns the device to its pre-activation state for a driver reset.
    /// Returns false when the device cannot be reset (the transport then
    /// marks it as needing a reset and leaves it stopped).
    fn reset(&mut self) -> bool {
        false
    }
}
