//! x86_64 boot: everything between "guest memory exists" and "vCPU 0 may run".
//!
//! - [`layout`]: the guest physical memory map and IRQ numbers.
//! - [`memory`]: guest RAM regions, their allocation, and the E820 map.
//! - [`loader`]: loads an ELF vmlinux or a bzImage, the command line and the
//!   initrd, and fills the Linux zero page (64-bit boot protocol).
//! - [`mptable`]: the MP table that tells the guest its CPUs and IOAPIC.
//! - [`cpuid`]: the CPUID each vCPU sees (topology, hypervisor bit, XSAVE).
//! - [`regs`]: VM-wide setup (TSS, irqchip, PIT) and per-vCPU registers,
//!   using [`gdt`] for the boot GDT and [`paging`] for the boot page tables.
//!
//! Boot order: [`memory::create`], [`regs::setup_vm`], [`loader::load`],
//! [`mptable::setup`], then per vCPU [`cpuid::apply`] and [`regs::setup_vcpu`].

pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod loader;
pub mod memory;
pub mod mptable;
pub mod paging;
pub mod regs;
