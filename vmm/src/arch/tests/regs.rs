//! Tests of the boot register state, including one on a real KVM vCPU.

use kvm_bindings::{kvm_msr_entry, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::Kvm;
use vm_memory::GuestAddress;

use super::*;
use crate::arch::layout::{PML4_START, ZERO_PAGE_START};
use crate::arch::loader::KernelKind;
use crate::arch::{cpuid, memory, mptable};

fn boot_info() -> BootInfo {
    BootInfo {
        entry: GuestAddress(0x100_0000),
        zero_page: GuestAddress(ZERO_PAGE_START),
        kind: KernelKind::Elf,
    }
}

#[test]
fn general_registers_point_at_entry_stack_and_zero_page() {
    let regs = boot_regs(&boot_info());
    assert_eq!(regs.rip, 0x100_0000);
    assert_eq!(regs.rsi, ZERO_PAGE_START);
    assert_eq!(
        (regs.rsp, regs.rbp),
        (BOOT_STACK_POINTER, BOOT_STACK_POINTER)
    );
    assert_eq!(regs.rflags, 2);
    assert_eq!((regs.rax, regs.rbx, regs.rdi), (0, 0, 0));
}

#[test]
fn boot_msrs_are_the_expected_set() {
    let msrs = boot_msrs();
    let find = |index: u32| msrs.iter().find(|m| m.index == index).map(|m| m.data);
    assert_eq!(msrs.len(), 11);
    assert_eq!(find(MSR_IA32_MISC_ENABLE), Some(1));
    assert_eq!(find(MSR_MTRR_DEF_TYPE), Some(0x806));
    for index in [
        MSR_IA32_SYSENTER_CS,
        MSR_IA32_SYSENTER_ESP,
        MSR_IA32_SYSENTER_EIP,
        MSR_STAR,
        MSR_LSTAR,
        MSR_CSTAR,
        MSR_KERNEL_GS_BASE,
        MSR_SYSCALL_MASK,
        MSR_IA32_TSC,
    ] {
        assert_eq!(find(index), Some(0), "MSR {index:#x}");
    }
}

#[test]
fn lvt_delivery_mode_is_replaced() {
    assert_eq!(
        with_delivery_mode(0x0001_0000, APIC_MODE_EXTINT),
        0x0001_0700
    );
    assert_eq!(with_delivery_mode(0x0001_07ff, APIC_MODE_NMI), 0x0001_04ff);
    let mut lapic = kvm_lapic_state::default();
    set_lapic_reg(&mut lapic, APIC_LVT_LINT1, 0xdead_beef);
    assert_eq!(lapic_reg(&lapic, APIC_LVT_LINT1), 0xdead_beef);
    assert_eq!(lapic.regs[APIC_LVT_LINT1] as u8, 0xef);
}

/// Runs the whole boot setup on real vCPUs. Needs a usable `/dev/kvm`.
#[test]
fn sets_up_real_vcpus() {
    let kvm = Kvm::new().expect("this test needs /dev/kvm (open failed)");
    let vm = kvm.create_vm().expect("KVM_CREATE_VM");
    setup_vm(&vm).unwrap();
    let mem = memory::create(128).unwrap();
    let num_cpus = 2;
    mptable::setup(&mem, num_cpus).unwrap();
    let boot = boot_info();

    for index in 0..num_cpus {
        let vcpu = vm.create_vcpu(u64::from(index)).expect("KVM_CREATE_VCPU");
        cpuid::apply(&kvm, &vcpu, index, num_cpus).unwrap();
        setup_vcpu(&vcpu, &mem, &boot).unwrap();

        let cpuid = vcpu.get_cpuid2(KVM_MAX_CPUID_ENTRIES).unwrap();
        let leaf1 = cpuid.as_slice().iter().find(|e| e.function == 1).unwrap();
        assert_eq!(leaf1.ebx >> 24, u32::from(index), "APIC id in CPUID");
        assert_ne!(leaf1.ecx & (1 << 31), 0, "hypervisor bit");

        let regs = vcpu.get_regs().unwrap();
        assert_eq!(
            (regs.rip, regs.rsi, regs.rsp),
            (0x100_0000, ZERO_PAGE_START, BOOT_STACK_POINTER)
        );

        let sregs = vcpu.get_sregs().unwrap();
        assert_eq!(sregs.cr3, PML4_START);
        assert_ne!(sregs.cr0 & CR0_PG, 0);
        assert_ne!(sregs.cr0 & CR0_PE, 0);
        assert_ne!(sregs.cr4 & CR4_PAE, 0);
        assert_eq!(sregs.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!((sregs.cs.selector, sregs.cs.l), (0x8, 1));
        assert_eq!(
            (sregs.ds.selector, sregs.ss.selector, sregs.tr.selector),
            (0x10, 0x10, 0x18)
        );
        assert_eq!((sregs.gdt.base, sregs.gdt.limit), (BOOT_GDT_START, 31));

        let lapic = vcpu.get_lapic().unwrap();
        assert_eq!(
            (lapic_reg(&lapic, APIC_LVT_LINT0) >> 8) & 7,
            APIC_MODE_EXTINT
        );
        assert_eq!((lapic_reg(&lapic, APIC_LVT_LINT1) >> 8) & 7, APIC_MODE_NMI);

        let mut msrs = Msrs::from_entries(&[
            kvm_msr_entry {
                index: MSR_IA32_MISC_ENABLE,
                ..Default::default()
            },
            kvm_msr_entry {
                index: MSR_MTRR_DEF_TYPE,
                ..Default::default()
            },
        ])
        .unwrap();
        assert_eq!(vcpu.get_msrs(&mut msrs).unwrap(), 2);
        assert_ne!(msrs.as_slice()[0].data & MISC_ENABLE_FAST_STRING, 0);
        assert_eq!(msrs.as_slice()[1].data, MTRR_ENABLE_WB);
    }
}
