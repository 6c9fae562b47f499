//! VM-wide setup (TSS, in-kernel irqchip, PIT) and the boot state of a vCPU:
//! MSRs, FPU, general and special registers (long mode), and the LAPIC.

use kvm_bindings::{
    kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_pit_config, kvm_regs, Msrs, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{VcpuFd, VmFd};
use vm_memory::{Address, GuestMemoryMmap};

use super::gdt::{self, BOOT_GDT, BOOT_GDT_LIMIT, BOOT_IDT_LIMIT};
use super::layout::{BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, KVM_TSS_ADDRESS};
use super::loader::BootInfo;
use super::paging;

/// `IA32_TSC`.
pub const MSR_IA32_TSC: u32 = 0x10;
/// `IA32_SYSENTER_CS`.
pub const MSR_IA32_SYSENTER_CS: u32 = 0x174;
/// `IA32_SYSENTER_ESP`.
pub const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
/// `IA32_SYSENTER_EIP`.
pub const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
/// `IA32_MISC_ENABLE`.
pub const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
/// `IA32_MTRR_DEF_TYPE`.
pub const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// `STAR`: SYSCALL segment selectors.
pub const MSR_STAR: u32 = 0xc000_0081;
/// `LSTAR`: 64-bit SYSCALL target.
pub const MSR_LSTAR: u32 = 0xc000_0082;
/// `CSTAR`: compat-mode SYSCALL target.
pub const MSR_CSTAR: u32 = 0xc000_0083;
/// `SFMASK`: SYSCALL RFLAGS mask.
pub const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
/// `KERNEL_GS_BASE`: the GS base SWAPGS swaps in.
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// `IA32_MISC_ENABLE` bit 0: fast string operations.
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// `IA32_MTRR_DEF_TYPE`: MTRRs enabled (bit 11), default type write-back (6).
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

/// CR0 protection enable.
const CR0_PE: u64 = 1;
/// CR0 extension type (always 1 on modern CPUs).
const CR0_ET: u64 = 1 << 4;
/// CR0 paging.
const CR0_PG: u64 = 1 << 31;
/// CR4 physical address extension.
const CR4_PAE: u64 = 1 << 5;
/// EFER long mode enable.
const EFER_LME: u64 = 1 << 8;
/// EFER long mode active.
const EFER_LMA: u64 = 1 << 10;

/// x87 control word at reset: all exceptions masked, 64-bit precision.
const FPU_FCW: u16 = 0x37f;
/// MXCSR at reset: all SSE exceptions masked.
const FPU_MXCSR: u32 = 0x1f80;
/// RFLAGS with only the always-one bit 1 set.
const RFLAGS_RESERVED: u64 = 0x2;

/// LAPIC register offset of LVT LINT0.
pub const APIC_LVT_LINT0: usize = 0x350;
/// LAPIC register offset of LVT LINT1.
pub const APIC_LVT_LINT1: usize = 0x360;
/// LVT delivery mode ExtINT.
const APIC_MODE_EXTINT: u32 = 0x7;
/// LVT delivery mode NMI.
const APIC_MODE_NMI: u32 = 0x4;

/// Why a VM or vCPU could not be set up for boot.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// A KVM ioctl failed.
    #[error("KVM call {call} failed: {source}")]
    Kvm {
        /// Which call, e.g. "KVM_SET_SREGS".
        call: &'static str,
        /// What KVM returned.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The MSR list could not be built.
    #[error("cannot build the boot MSR list of {count} entries: {source}")]
    MsrList {
        /// How many MSRs there were.
        count: usize,
        /// What the FAM wrapper reported.
        #[source]
        source: vmm_sys_util::fam::Error,
    },
    /// KVM stopped setting MSRs at one it refused.
    #[error("KVM_SET_MSRS set {set} of {total} MSRs; it refused MSR {index:#x}")]
    MsrRefused {
        /// The MSR KVM stopped at.
        index: u32,
        /// How many it set before.
        set: usize,
        /// How many there were.
        total: usize,
    },
    /// The GDT or IDT could not be written.
    #[error(transparent)]
    Gdt(#[from] gdt::GdtError),
    /// The page tables could not be written.
    #[error(transparent)]
    Paging(#[from] paging::PagingError),
}

/// Shorthand for wrapping a KVM error.
fn kvm(call: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> RegsError {
    move |source| RegsError::Kvm { call, source }
}

/// Prepares a VM for an x86 Linux guest: KVM's TSS area, the in-kernel
/// PIC/IOAPIC/LAPICs, and the PIT with a dummy speaker port. Call before
/// creating vCPUs.
pub fn setup_vm(vm: &VmFd) -> Result<(), RegsError> {
    vm.set_tss_address(KVM_TSS_ADDRESS as usize)
        .map_err(kvm("KVM_SET_TSS_ADDR"))?;
    vm.create_irq_chip().map_err(kvm("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(kvm("KVM_CREATE_PIT2"))
}

/// Puts a vCPU into the state the Linux 64-bit boot protocol expects:
/// long mode with the boot GDT and identity page tables, RIP at the kernel
/// entry, RSI at the zero page. Writes the GDT, IDT and page tables into
/// `mem` (the same for every vCPU).
pub fn setup_vcpu(vcpu: &VcpuFd, mem: &GuestMemoryMmap, boot: &BootInfo) -> Result<(), RegsError> {
    setup_msrs(vcpu)?;
    setup_fpu(vcpu)?;
    setup_regs(vcpu, boot)?;
    setup_sregs(vcpu, mem)?;
    setup_lapic(vcpu)
}

/// The MSRs set at boot, with their values.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}

/// Sets [`boot_msrs`].
fn setup_msrs(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let entries = boot_msrs();
    let msrs = Msrs::from_entries(&entries).map_err(|source| RegsError::MsrList {
        count: entries.len(),
        source,
    })?;
    let set = vcpu.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
    if set != entries.len() {
        return Err(RegsError::MsrRefused {
            index: entries[set].index,
            set,
            total: entries.len(),
        });
    }
    Ok(())
}

/// Sets the x87/SSE state to its reset values.
fn setup_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: FPU_FCW,
        mxcsr: FPU_MXCSR,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("KVM_SET_FPU"))
}

/// The general registers at the kernel's 64-bit entry.
pub fn boot_regs(boot: &BootInfo) -> kvm_regs {
    kvm_regs {
        rflags: RFLAGS_RESERVED,
        rip: boot.entry.raw_value(),
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: boot.zero_page.raw_value(),
        ..Default::default()
    }
}

/// Sets [`boot_regs`].
fn setup_regs(vcpu: &VcpuFd, boot: &BootInfo) -> Result<(), RegsError> {
    vcpu.set_regs(&boot_regs(boot)).map_err(kvm("KVM_SET_REGS"))
}

/// Writes the GDT, IDT and page tables and switches the vCPU to long mode.
fn setup_sregs(vcpu: &VcpuFd, mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    let mut sregs = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;

    gdt::write(mem)?;
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = BOOT_GDT_LIMIT;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = BOOT_IDT_LIMIT;

    let data = gdt::segment(BOOT_GDT[2], 2);
    sregs.cs = gdt::segment(BOOT_GDT[1], 1);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = gdt::segment(BOOT_GDT[3], 3);

    let pml4 = paging::write_identity_map(mem)?;
    sregs.cr3 = pml4.raw_value();
    sregs.cr4 |= CR4_PAE;
    sregs.cr0 |= CR0_PE | CR0_ET | CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;

    vcpu.set_sregs(&sregs).map_err(kvm("KVM_SET_SREGS"))
}

/// Reads a 32-bit LAPIC register from a `kvm_lapic_state`.
pub fn lapic_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[offset + i] as u8);
    u32::from_le_bytes(bytes)
}

/// Writes a 32-bit LAPIC register in a `kvm_lapic_state`.
fn set_lapic_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().into_iter().enumerate() {
        lapic.regs[offset + i] = byte as _;
    }
}

/// Replaces the delivery mode (bits 8..11) of an LVT entry.
fn with_delivery_mode(lvt: u32, mode: u32) -> u32 {
    (lvt & !0x700) | (mode << 8)
}

/// Wires LINT0 to ExtINT (the PIC) and LINT1 to NMI, as on a PC.
fn setup_lapic(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let mut lapic = vcpu.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?;
    let lint0 = lapic_reg(&lapic, APIC_LVT_LINT0);
    set_lapic_reg(
        &mut lapic,
        APIC_LVT_LINT0,
        with_delivery_mode(lint0, APIC_MODE_EXTINT),
    );
    let lint1 = lapic_reg(&lapic, APIC_LVT_LINT1);
    set_lapic_reg(
        &mut lapic,
        APIC_LVT_LINT1,
        with_delivery_mode(lint1, APIC_MODE_NMI),
    );
    vcpu.set_lapic(&lapic).map_err(kvm("KVM_SET_LAPIC"))
}

#[cfg(test)]
#[path = "tests/regs.rs"]
mod tests;
