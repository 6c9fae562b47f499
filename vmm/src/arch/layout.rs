//! The guest physical memory map and interrupt numbers of an x86_64 microVM.
//!
//! Everything the boot code places in guest memory lives at a fixed address
//! below 1 MiB; the kernel is loaded at [`HIMEM_START`]. RAM is split around
//! a 768 MiB MMIO gap below 4 GiB that holds the virtio-mmio device windows,
//! the IOAPIC and the local APIC.

use vm_memory::GuestAddress;

/// One KiB.
const KIB: u64 = 1 << 10;
/// One MiB.
const MIB: u64 = 1 << 20;
/// One GiB.
const GIB: u64 = 1 << 30;

/// Guest address of the boot GDT (four 8-byte descriptors).
pub const BOOT_GDT_START: u64 = 0x500;
/// Number of descriptors in the boot GDT: null, code, data, TSS.
pub const BOOT_GDT_ENTRIES: usize = 4;
/// Guest address of the (empty) boot IDT.
pub const BOOT_IDT_START: u64 = 0x520;
/// Guest address of the Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU (grows down, below the page tables).
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Guest address of the boot PML4 table.
pub const PML4_START: u64 = 0x9000;
/// Guest address of the boot page-directory-pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// Guest address of the boot page directory (512 x 2 MiB pages = 1 GiB).
pub const PDE_START: u64 = 0xb000;
/// Bytes identity-mapped by the boot page tables.
pub const IDENTITY_MAP_SIZE: u64 = GIB;
/// Guest address of the kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line accepted, in bytes, including the terminating NUL.
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// Start of the extended BIOS data area; RAM below it is usable low memory.
pub const EBDA_START: u64 = 0x9fc00;
/// Guest address of the MP floating pointer and, right after it, the MP table.
pub const MPTABLE_START: u64 = EBDA_START;
/// Start of high memory: the kernel is loaded here.
pub const HIMEM_START: u64 = MIB;
/// Start of the MMIO gap below 4 GiB.
pub const MMIO_GAP_START: u64 = 0xd000_0000;
/// End (exclusive) of the MMIO gap below 4 GiB.
pub const MMIO_GAP_END: u64 = 4 * GIB;
/// Size of the MMIO gap (768 MiB).
pub const MMIO_GAP_SIZE: u64 = MMIO_GAP_END - MMIO_GAP_START;
/// Where RAM resumes above the MMIO gap.
pub const HIGH_RAM_START: u64 = MMIO_GAP_END;
/// Guest address of the IOAPIC's registers.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Guest address of the local APICs' registers.
pub const LAPIC_START: u64 = 0xfee0_0000;
/// Address KVM uses for its three-page TSS region (`KVM_SET_TSS_ADDR`).
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;

/// Base of the first virtio-mmio device window.
pub const VIRTIO_MMIO_START: u64 = MMIO_GAP_START;
/// Size of each virtio-mmio device window.
pub const VIRTIO_MMIO_SIZE: u64 = 4 * KIB;

/// IRQ of the i8042 keyboard controller (used for guest reboot).
pub const IRQ_I8042: u32 = 1;
/// IRQ of the COM1 serial port.
pub const IRQ_SERIAL_COM1: u32 = 4;
/// IRQ of the first virtio-mmio device.
pub const IRQ_VIRTIO_FIRST: u32 = 5;
/// IRQ of the last virtio-mmio device (the IOAPIC's last pin).
pub const IRQ_VIRTIO_LAST: u32 = 23;
/// Number of IOAPIC pins (IRQ 0..=23).
pub const IOAPIC_PINS: u32 = 24;
/// Most vCPUs a guest may have: xAPIC ids 0..=253 for the vCPUs, the next
/// id for the IOAPIC, and 0xff is the broadcast id.
pub const MAX_VCPUS: u8 = 254;
/// Number of virtio-mmio devices the IRQ range leaves room for.
pub const MAX_VIRTIO_DEVICES: usize = (IRQ_VIRTIO_LAST - IRQ_VIRTIO_FIRST + 1) as usize;

// The layout's invariants, checked at compile time: the boot structures
// below 1 MiB do not overlap, and the virtio IRQs are IOAPIC pins.
const _: () = {
    assert!(BOOT_GDT_START + 8 * BOOT_GDT_ENTRIES as u64 <= BOOT_IDT_START);
    assert!(BOOT_IDT_START + 8 <= ZERO_PAGE_START);
    assert!(ZERO_PAGE_START + 4096 <= BOOT_STACK_POINTER);
    assert!(BOOT_STACK_POINTER < PML4_START);
    assert!(PML4_START + 0x1000 == PDPTE_START);
    assert!(PDPTE_START + 0x1000 == PDE_START);
    assert!(PDE_START + 0x1000 <= CMDLINE_START);
    assert!(CMDLINE_START + CMDLINE_MAX_SIZE as u64 <= MPTABLE_START);
    assert!(MPTABLE_START < HIMEM_START);
    assert!(IRQ_VIRTIO_LAST < IOAPIC_PINS);
    assert!(IRQ_SERIAL_COM1 < IRQ_VIRTIO_FIRST && IRQ_I8042 < IRQ_VIRTIO_FIRST);
};

/// Why a layout lookup failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// A virtio device index past the last IRQ was asked for.
    #[error("virtio device index {index} is out of range: at most {max} devices fit (IRQs {IRQ_VIRTIO_FIRST}..={IRQ_VIRTIO_LAST})")]
    NoSuchVirtioSlot {
        /// The index asked for.
        index: usize,
        /// How many devices fit.
        max: usize,
    },
}

/// Where the `index`-th virtio-mmio device lives: its window and its IRQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioSlot {
    /// Base of the device's register window ([`VIRTIO_MMIO_SIZE`] bytes).
    pub base: GuestAddress,
    /// The device's IRQ (an IOAPIC pin).
    pub irq: u32,
}

/// Returns the window and IRQ of the `index`-th virtio-mmio device (from 0).
pub fn virtio_slot(index: usize) -> Result<VirtioSlot, LayoutError> {
    if index >= MAX_VIRTIO_DEVICES {
        return Err(LayoutError::NoSuchVirtioSlot {
            index,
            max: MAX_VIRTIO_DEVICES,
        });
    }
    Ok(VirtioSlot {
        base: GuestAddress(VIRTIO_MMIO_START + index as u64 * VIRTIO_MMIO_SIZE),
        irq: IRQ_VIRTIO_FIRST + index as u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mmio_gap_holds_the_apics_and_devices() {
        assert_eq!(MMIO_GAP_SIZE, 768 * MIB);
        for addr in [IOAPIC_START, LAPIC_START, KVM_TSS_ADDRESS] {
            assert!((MMIO_GAP_START..MMIO_GAP_END).contains(&addr));
        }
        let last = virtio_slot(MAX_VIRTIO_DEVICES - 1).unwrap();
        assert!(last.base.0 + VIRTIO_MMIO_SIZE <= IOAPIC_START);
        assert_eq!(last.irq, IRQ_VIRTIO_LAST);
    }

    #[test]
    fn virtio_slots() {
        let first = virtio_slot(0).unwrap();
        assert_eq!(first.base, GuestAddress(MMIO_GAP_START));
        assert_eq!(first.irq, 5);
        assert_eq!(virtio_slot(2).unwrap().base, GuestAddress(0xd000_2000));
        assert_eq!(
            virtio_slot(19),
            Err(LayoutError::NoSuchVirtioSlot { index: 19, max: 19 })
        );
    }
}
