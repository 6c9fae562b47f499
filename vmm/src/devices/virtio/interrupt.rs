//! The interrupt line from a virtio-mmio device to the guest.

use std::sync::atomic::{AtomicU32, Ordering};

use vmm_sys_util::eventfd::EventFd;

/// Why the device interrupts (the bits of the InterruptStatus register).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqKind {
    /// The device used buffers in a queue.
    Vring = 1,
    /// The device configuration changed.
    Config = 2,
}

/// A device's InterruptStatus register plus the irqfd that injects its IRQ.
#[derive(Debug)]
pub struct VirtioInterrupt {
    status: AtomicU32,
    irqfd: EventFd,
}

impl VirtioInterrupt {
    /// An interrupt that signals `irqfd` (registered with KVM for the device's GSI).
    pub fn new(irqfd: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            irqfd,
        }
    }

    /// Sets the status bit for `kind` and injects the interrupt.
    pub fn trigger(&self, kind: IrqKind) -> std::io::Result<()> {
        self.status.fetch_or(kind as u32, Ordering::SeqCst);
        self.irqfd.write(1)
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// Clears the bits the driver acknowledged (InterruptACK).
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// The eventfd KVM injects the interrupt from.
    pub fn irqfd(&self) -> &EventFd {
        &self.irqfd
    }
}
