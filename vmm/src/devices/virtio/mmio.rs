//! The virtio-mmio transport (virtio 1.x, register layout version 2).
//!
//! The guest driver programs these registers from vCPU threads. Queue kicks
//! normally bypass this code: the VMM registers each queue's event as a KVM
//! ioeventfd on the QueueNotify register, so a kick wakes the event loop
//! without a trip through userspace on the vCPU thread.

use std::sync::{Arc, Mutex};

use log::debug;
use virtio_queue::QueueT;
use vm_memory::GuestMemoryMmap;

use super::{Queue, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::devices::bus::{lock, BusDevice};
use crate::devices::counters;
use crate::{error_limited, warn_limited};

/// Size of one device's register window.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;
/// Offset of the QueueNotify register (where ioeventfds are registered).
pub const QUEUE_NOTIFY_OFFSET: u64 = 0x50;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x4542_4d45; // "EMBE"
const CONFIG_OFFSET: u64 = 0x100;

/// Device status bits (virtio 1.x, 2.1).
mod status {
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    pub const FAILED: u32 = 0x80;
}

/// One virtio device as the guest sees it on the MMIO bus.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    queue_select: u32,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    status: u32,
    config_generation: u32,
}

impl MmioTransport {
    /// A transport for `device`, whose queues will live in `mem`.
    pub fn new(device: Arc<Mutex<dyn VirtioDevice>>, mem: GuestMemoryMmap) -> Self {
        let queues = fresh_queues(&*lock(&device));
        Self {
            device,
            mem,
            queues,
            queue_select: 0,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            status: 0,
            config_generation: 0,
        }
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_select as usize)
    }

    /// Queue registers may only change while the driver sets the device up.
    fn queue_writable(&self) -> bool {
        self.status & (status::DRIVER_OK | status::FAILED | status::DEVICE_NEEDS_RESET) == 0
            && self.status & status::DRIVER != 0
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let added = value & !self.status;
        if value & self.status != self.status {
            counters::MMIO_BAD_STATUS.inc();
            warn_limited!(
                "virtio-mmio: driver cleared status bits {:#x} without a reset",
                self.status & !value
            );
            return;
        }
        if added & status::FEATURES_OK != 0 {
            let offered = lock(&self.device).avail_features();
            let unknown = self.driver_features & !offered;
            if unknown != 0 || self.driver_features & VIRTIO_F_VERSION_1 == 0 {
                counters::MMIO_BAD_STATUS.inc();
                warn_limited!(
                    "virtio-mmio: driver features {:#x} not acceptable (offered {offered:#x})",
                    self.driver_features
                );
                self.status = value & !status::FEATURES_OK;
                return;
            }
            lock(&self.device).set_acked_features(self.driver_features);
        }
        self.status = value;
        if added & status::DRIVER_OK != 0 {
            self.activate();
        }
    }

    fn activate(&mut self) {
        if self.status & status::FEATURES_OK == 0 {
            counters::MMIO_BAD_STATUS.inc();
            warn_limited!("virtio-mmio: DRIVER_OK before FEATURES_OK");
            self.needs_reset();
            return;
        }
        if let Some(i) = self.queues.iter().position(|q| !q.is_valid(&self.mem)) {
            counters::MMIO_BAD_STATUS.inc();
            warn_limited!("virtio-mmio: queue {i} is not ready or not in guest memory");
            self.needs_reset();
            return;
        }
        // The device gets its own copies; the transport keeps answering
        // register reads from the originals.
        let queues = match self
            .queues
            .iter()
            .map(|q| Queue::try_from(q.state()))
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(queues) => queues,
            Err(e) => {
                counters::MMIO_BAD_STATUS.inc();
                warn_limited!("virtio-mmio: queue setup rejected: {e:?}");
                self.needs_reset();
                return;
            }
        };
        let mut device = lock(&self.device);
        if let Err(e) = device.activate(self.mem.clone(), queues) {
            counters::MMIO_BAD_STATUS.inc();
            error_limited!(
                "virtio-mmio: device type {} failed to activate: {e}",
                device.device_type()
            );
            drop(device);
            self.needs_reset();
        }
    }

    fn needs_reset(&mut self) {
        self.status |= status::DEVICE_NEEDS_RESET;
        self.config_generation = self.config_generation.wrapping_add(1);
        let device = lock(&self.device);
        if let Err(e) = device.interrupt().trigger(super::IrqKind::Config) {
            error_limited!("virtio-mmio: cannot raise config interrupt: {e}");
        }
    }

    fn reset(&mut self) {
        let mut device = lock(&self.device);
        if device.is_activated() {
            counters::MMIO_RESETS.inc();
        }
        if device.is_activated() && !device.reset() {
            // Drivers reset devices on the way to a guest reboot, which ends
            // the VM anyway: not worth a warning.
            debug!(
                "virtio-mmio: device type {} cannot be reset; it stays stopped",
                device.device_type()
            );
            drop(device);
            self.status = status::DEVICE_NEEDS_RESET;
            return;
        }
        self.queues = fresh_queues(&*device);
        device.interrupt().ack(u32::MAX);
        drop(device);
        self.queue_select = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.driver_features = 0;
        self.status = 0;
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        let device = lock(&self.device);
        match offset {
            0x000 => MAGIC,
            0x004 => VERSION,
            0x008 => device.device_type(),
            0x00c => VENDOR_ID,
            0x010 => {
                let features = device.avail_features();
                match self.device_features_select {
                    0 => features as u32,
                    1 => (features >> 32) as u32,
                    _ => 0,
                }
            }
            0x034 => {
                drop(device);
                self.selected_queue().map_or(0, |q| u32::from(q.max_size()))
            }
            0x044 => {
                drop(device);
                self.selected_queue().map_or(0, |q| u32::from(q.ready()))
            }
            0x060 => device.interrupt().status(),
            0x070 => self.status,
            0x0fc => self.config_generation,
            _ => {
                counters::MMIO_BAD_ACCESS.inc();
                warn_limited!("virtio-mmio: read of unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        let queue_setup = matches!(offset, 0x038 | 0x044 | 0x080..=0x0a4);
        if queue_setup && !self.queue_writable() {
            counters::MMIO_BAD_ACCESS.inc();
            warn_limited!("virtio-mmio: queue register {offset:#x} written outside device setup");
            return;
        }
        match offset {
            0x014 => self.device_features_select = value,
            0x020 => match self.driver_features_select {
                0 => {
                    self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(value)
                }
                1 => {
                    self.driver_features =
                        (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
                }
                _ => {}
            },
            0x024 => self.driver_features_select = value,
            0x030 => self.queue_select = value,
            0x050 => {
                // Reached only if the ioeventfd is missing: forward the kick.
                let device = lock(&self.device);
                if let Some(evt) = device.queue_events().get(value as usize) {
                    if let Err(e) = evt.write(1) {
                        error_limited!("virtio-mmio: cannot forward queue kick: {e}");
                    }
                }
            }
            0x064 => lock(&self.device).interrupt().ack(value),
            0x070 => self.write_status(value),
            _ if queue_setup => self.write_queue_register(offset, value),
            _ => {
                counters::MMIO_BAD_ACCESS.inc();
                warn_limited!("virtio-mmio: write of unknown register {offset:#x}");
            }
        }
    }

    fn write_queue_register(&mut self, offset: u64, value: u32) {
        let Some(q) = self.selected_queue() else {
            counters::MMIO_BAD_ACCESS.inc();
            warn_limited!(
                "virtio-mmio: queue register {offset:#x} written for a queue that does not exist"
            );
            return;
        };
        match offset {
            0x038 => q.set_size(value.try_into().unwrap_or(0)),
            0x044 => q.set_ready(value == 1),
            0x080 => q.set_desc_table_address(Some(value), None),
            0x084 => q.set_desc_table_address(None, Some(value)),
            0x090 => q.set_avail_ring_address(Some(value), None),
            0x094 => q.set_avail_ring_address(None, Some(value)),
            0x0a0 => q.set_used_ring_address(Some(value), None),
            0x0a4 => q.set_used_ring_address(None, Some(value)),
            _ => {
                counters::MMIO_BAD_ACCESS.inc();
                warn_limited!("virtio-mmio: write of unknown register {offset:#x}");
            }
        }
    }
}

fn fresh_queues(device: &dyn VirtioDevice) -> Vec<Queue> {
    device
        .queue_max_sizes()
        .iter()
        .map(|&max| Queue::new(max).expect("device queue sizes are powers of two up to 32768"))
        .collect()
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_OFFSET {
            lock(&self.device).read_config(offset - CONFIG_OFFSET, data);
        } else if data.len() == 4 && offset % 4 == 0 {
            data.copy_from_slice(&self.read_register(offset).to_le_bytes());
        } else {
            counters::MMIO_BAD_ACCESS.inc();
            warn_limited!(
                "virtio-mmio: {}-byte register read at {offset:#x}",
                data.len()
            );
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_OFFSET {
            lock(&self.device).write_config(offset - CONFIG_OFFSET, data);
            return;
        }
        match <[u8; 4]>::try_from(data) {
            Ok(bytes) if offset % 4 == 0 => self.write_register(offset, u32::from_le_bytes(bytes)),
            _ => {
                counters::MMIO_BAD_ACCESS.inc();
                warn_limited!(
                    "virtio-mmio: {}-byte register write at {offset:#x}",
                    data.len()
                );
            }
        }
    }
}

#[cfg(test)]
#[path = "mmio_tests.rs"]
mod tests;
