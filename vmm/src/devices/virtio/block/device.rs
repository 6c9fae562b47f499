//! The virtio-block device: features, config space, activation, and the
//! queue handler the event loop runs when the guest kicks the queue.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::disk::Disk;
use super::{request, BlockError};
use crate::devices::counters;
use crate::devices::virtio::{
    ActivateError, IrqKind, Queue, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1,
};

/// The device's one queue, and its maximum size.
const QUEUE_SIZES: [u16; 1] = [256];
/// Most data segments per request the driver may use: the ring must also
/// hold each request's header and status descriptors.
const SEG_MAX: u32 = QUEUE_SIZES[0] as u32 - 2;
/// Most requests run per queue notification; the rest waits behind the
/// other event sources (a re-kick), so one busy guest cannot hog the loop.
pub(super) const REQUESTS_PER_KICK: usize = 64;
/// The config space we fill: capacity (le64), size_max (le32, not offered), seg_max (le32).
const CONFIG_LEN: usize = 16;

/// What the device works with once the driver has started it.
#[derive(Debug)]
struct Active {
    mem: GuestMemoryMmap,
    queue: Queue,
}

/// A virtio-block device over a raw disk file.
#[derive(Debug)]
pub struct Block {
    disk: Disk,
    avail_features: u64,
    acked_features: u64,
    config: [u8; CONFIG_LEN],
    queue_events: [EventFd; 1],
    interrupt: VirtioInterrupt,
    active: Option<Active>,
    /// The driver broke the queue itself; nothing more is processed until a reset.
    broken: bool,
}

impl Block {
    /// A block device over `file`, opened by the VMM before the guest runs.
    ///
    /// The capacity is the file length rounded down to 512 bytes. `id` is
    /// what GET_ID returns (at most 20 bytes); empty means one derived from
    /// the file's inode and device.
    pub fn new(
        file: File,
        read_only: bool,
        id: String,
        interrupt: VirtioInterrupt,
    ) -> Result<Self, BlockError> {
        let disk = Disk::new(file, read_only, &id)?;
        let mut avail_features =
            VIRTIO_F_VERSION_1 | 1 << VIRTIO_BLK_F_FLUSH | 1 << VIRTIO_BLK_F_SEG_MAX;
        if read_only {
            avail_features |= 1 << VIRTIO_BLK_F_RO;
        }
        let mut config = [0; CONFIG_LEN];
        config[0..8].copy_from_slice(&disk.sectors().to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        let queue_event = EventFd::new(libc::EFD_NONBLOCK).map_err(BlockError::EventFd)?;
        Ok(Self {
            disk,
            avail_features,
            acked_features: 0,
            config,
            queue_events: [queue_event],
            interrupt,
            active: None,
            broken: false,
        })
    }

    /// Runs the requests the driver has made available, at most
    /// [`REQUESTS_PER_KICK`] (then re-kicks itself), and interrupts the guest
    /// if any was used. Does nothing before activation or once broken.
    pub(super) fn process_queue(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mut used_any = false;
        let mut budget = REQUESTS_PER_KICK;
        while !self.broken {
            let chain = match active.queue.iter(&active.mem) {
                Ok(mut available) => available.next(),
                Err(e) => {
                    counters::QUEUE_BROKEN.inc();
                    crate::error_limited!(
                        "virtio-block: queue is broken, stopping the device: {e}"
                    );
                    self.broken = true;
                    break;
                }
            };
            let Some(chain) = chain else { break };
            if budget == 0 {
                // Put it back and come round again after the other events.
                active.queue.go_to_previous_position();
                counters::QUEUE_YIELDS.inc();
                if let Err(e) = self.queue_events[0].write(1) {
                    crate::error_limited!("virtio-block: cannot re-kick the queue: {e}");
                }
                break;
            }
            budget -= 1;
            let head = chain.head_index();
            let len = request::handle(&mut self.disk, &active.mem, chain);
            if let Err(e) = active.queue.add_used(&active.mem, head, len) {
                counters::QUEUE_BROKEN.inc();
                crate::error_limited!(
                    "virtio-block: cannot use descriptor {head}, stopping the device: {e}"
                );
                self.broken = true;
            } else {
                used_any = true;
            }
        }
        if used_any {
            if let Err(e) = self.interrupt.trigger(IrqKind::Vring) {
                crate::error_limited!("virtio-block: cannot interrupt the guest: {e}");
            }
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
        self.disk.write_through = self.acked_features & (1 << VIRTIO_BLK_F_FLUSH) == 0;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some(config) = usize::try_from(offset)
            .ok()
            .and_then(|start| self.config.get(start..))
        else {
            return;
        };
        let n = data.len().min(config.len());
        data[..n].copy_from_slice(&config[..n]);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        counters::MMIO_BAD_ACCESS.inc();
        crate::warn_limited!(
            "virtio-block: guest wrote {} bytes of read-only config at {offset:#x}",
            data.len()
        );
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    fn interrupt(&self) -> &VirtioInterrupt {
        &self.interrupt
    }

    fn activate(&mut self, mem: GuestMemoryMmap, queues: Vec<Queue>) -> Result<(), ActivateError> {
        let [queue] =
            <[Queue; 1]>::try_from(queues).map_err(|queues| ActivateError::QueueCount {
                got: queues.len(),
                want: QUEUE_SIZES.len(),
            })?;
        self.active = Some(Active { mem, queue });
        self.broken = false;
        // Requests made available before DRIVER_OK found the device inactive;
        // a kick makes the event loop look at the queue now.
        if let Err(e) = self.queue_events[0].write(1) {
            log::error!("virtio-block: cannot kick the queue on activation: {e}");
        }
        Ok(())
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn reset(&mut self) -> bool {
        self.active = None;
        self.acked_features = 0;
        self.disk.write_through = false;
        self.broken = false;
        true
    }
}

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.queue_events[0], EventSet::IN)) {
            log::error!("virtio-block: cannot watch the queue event: {e}");
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let queue_event = &self.queue_events[0];
        if events.fd() != queue_event.as_raw_fd() {
            log::warn!("virtio-block: event on unknown fd {}", events.fd());
            return;
        }
        // Drain the kick even when inactive: the event is level-triggered.
        if let Err(e) = queue_event.read() {
            if e.kind() != io::ErrorKind::WouldBlock {
                crate::error_limited!("virtio-block: cannot read the queue event: {e}");
            }
        }
        self.process_queue();
    }
}
