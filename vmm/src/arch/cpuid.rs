//! The CPUID each vCPU sees.
//!
//! Starts from what KVM supports (`KVM_GET_SUPPORTED_CPUID`) and rewrites
//! what must differ per vCPU or per VM: APIC ids and the CPU topology (one
//! package of `num_cpus` cores, one thread each), the hypervisor bit, and a
//! self-consistent XSAVE leaf 0xD (see [`xsave`]). KVM's paravirtual leaves
//! (0x4000_0000..) are left as KVM reports them. The transforms are pure so
//! they can be tested on a synthetic table.

pub mod xsave;

use kvm_bindings::{
    kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Kvm, VcpuFd};

use super::layout::MAX_VCPUS;

/// Leaf 1 ECX bit 31: running under a hypervisor.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX bit 28: HTT, the package may hold more than one logical CPU.
const LEAF1_EDX_HTT: u32 = 1 << 28;
/// Leaf 1 EBX CLFLUSH line size, in 8-byte units (64 bytes).
const CLFLUSH_LINE_SIZE: u32 = 8;

/// Leaf 0xB/0x1F level type: SMT.
const LEVEL_TYPE_SMT: u32 = 1;
/// Leaf 0xB/0x1F level type: core.
const LEVEL_TYPE_CORE: u32 = 2;

/// Why a vCPU's CPUID could not be built or set.
#[derive(Debug, thiserror::Error)]
pub enum CpuidError {
    /// `num_cpus` was 0.
    #[error("num_cpus is 0: a VM needs at least one vCPU")]
    NoCpus,
    /// `num_cpus` exceeds what xAPIC ids allow.
    #[error("num_cpus={num_cpus} is too many: at most {MAX_VCPUS} vCPUs are supported")]
    TooManyCpus {
        /// The count asked for.
        num_cpus: u8,
    },
    /// `vcpu_index` is not below `num_cpus`.
    #[error("vcpu_index={vcpu_index} is out of range for num_cpus={num_cpus}")]
    VcpuIndexOutOfRange {
        /// The index asked for.
        vcpu_index: u8,
        /// The vCPU count.
        num_cpus: u8,
    },
    /// KVM's table lacks a leaf every x86_64 CPU has.
    #[error("KVM's supported CPUID lacks leaf {function:#x}")]
    MissingLeaf {
        /// The leaf.
        function: u32,
    },
    /// The CPUID table has no room for a rebuilt leaf.
    #[error("no room in the CPUID table for the sub-leaves of leaf {function:#x}: {source}")]
    TableFull {
        /// The leaf being rebuilt.
        function: u32,
        /// What the table reported.
        #[source]
        source: vmm_sys_util::fam::Error,
    },
    /// A KVM ioctl failed.
    #[error("KVM call {call} failed: {source}")]
    Kvm {
        /// Which call.
        call: &'static str,
        /// What KVM returned.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// The CPU topology every vCPU is told about.
#[derive(Debug, Clone, Copy)]
struct Topology {
    /// This vCPU's (x2)APIC id: its index.
    apic_id: u32,
    /// vCPUs (= cores) in the package.
    num_cpus: u32,
    /// APIC id bits of the core level: ceil(log2(num_cpus)).
    core_shift: u32,
}

impl Topology {
    /// Addressable core ids in the package: 2^core_shift.
    fn core_ids(&self) -> u32 {
        1 << self.core_shift
    }
}

/// Builds vCPU `vcpu_index`'s CPUID out of KVM's `supported` table for a VM
/// of `num_cpus` vCPUs. Works for Intel and AMD hosts: leaves a vendor does
/// not have are simply absent from `supported`.
pub fn for_vcpu(supported: &CpuId, vcpu_index: u8, num_cpus: u8) -> Result<CpuId, CpuidError> {
    if num_cpus == 0 {
        return Err(CpuidError::NoCpus);
    }
    if num_cpus > MAX_VCPUS {
        return Err(CpuidError::TooManyCpus { num_cpus });
    }
    if vcpu_index >= num_cpus {
        return Err(CpuidError::VcpuIndexOutOfRange {
            vcpu_index,
            num_cpus,
        });
    }
    if !supported.as_slice().iter().any(|e| e.function == 1) {
        return Err(CpuidError::MissingLeaf { function: 1 });
    }
    let topo = Topology {
        apic_id: u32::from(vcpu_index),
        num_cpus: u32::from(num_cpus),
        core_shift: u32::from(num_cpus).next_power_of_two().trailing_zeros(),
    };
    let amd = is_amd(supported);

    let mut cpuid = supported.clone();
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            0x1 => leaf_1(entry, &topo),
            0x4 => leaf_4(entry, &topo),
            0x8000_0008 if amd => amd_core_count(entry, &topo),
            0x8000_001d => amd_cache_topology(entry, &topo),
            0x8000_001e => amd_extended_apic_id(entry, &topo),
            _ => {}
        }
    }
    // KVM may list only some sub-leaves (an AMD host gives one empty 0xB
    // sub-leaf): rebuild the extended topology leaves the host has.
    for function in [0xb, 0x1f] {
        if cpuid.as_slice().iter().any(|e| e.function == function) {
            cpuid.retain(|e| e.function != function);
            for entry in extended_topology(function, &topo) {
                cpuid
                    .push(entry)
                    .map_err(|source| CpuidError::TableFull { function, source })?;
            }
        }
    }
    xsave::normalize(&mut cpuid);
    Ok(cpuid)
}

/// Fetches KVM's supported CPUID, builds vCPU `vcpu_index`'s with
/// [`for_vcpu`], and sets it on `vcpu`.
pub fn apply(kvm: &Kvm, vcpu: &VcpuFd, vcpu_index: u8, num_cpus: u8) -> Result<(), CpuidError> {
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|source| CpuidError::Kvm {
            call: "KVM_GET_SUPPORTED_CPUID",
            source,
        })?;
    let cpuid = for_vcpu(&supported, vcpu_index, num_cpus)?;
    vcpu.set_cpuid2(&cpuid).map_err(|source| CpuidError::Kvm {
        call: "KVM_SET_CPUID2",
        source,
    })
}

/// Whether leaf 0's vendor is AMD or Hygon (whose leaf 0x8000_0008 ECX
/// holds the core count; on Intel it is reserved).
fn is_amd(cpuid: &CpuId) -> bool {
    cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == 0)
        .is_some_and(|e| {
            let vendor = [e.ebx, e.edx, e.ecx];
            vendor == vendor_words(b"AuthenticAMD") || vendor == vendor_words(b"HygonGenuine")
        })
}

/// A 12-byte vendor string as leaf 0's EBX, EDX, ECX.
fn vendor_words(vendor: &[u8; 12]) -> [u32; 3] {
    std::array::from_fn(|i| {
        u32::from_le_bytes([
            vendor[4 * i],
            vendor[4 * i + 1],
            vendor[4 * i + 2],
            vendor[4 * i + 3],
        ])
    })
}

/// Replaces bits `lo..=hi` of `reg` with `value`.
fn set_bits(reg: &mut u32, lo: u32, hi: u32, value: u32) {
    let mask = (u32::MAX >> (31 - (hi - lo))) << lo;
    *reg = (*reg & !mask) | ((value << lo) & mask);
}

/// Leaf 1: initial APIC id, logical CPU count, CLFLUSH size, HTT and the
/// hypervisor bit.
fn leaf_1(entry: &mut kvm_cpuid_entry2, topo: &Topology) {
    set_bits(&mut entry.ebx, 8, 15, CLFLUSH_LINE_SIZE);
    set_bits(&mut entry.ebx, 16, 23, topo.num_cpus);
    set_bits(&mut entry.ebx, 24, 31, topo.apic_id);
    entry.ecx |= LEAF1_ECX_HYPERVISOR;
    if topo.num_cpus > 1 {
        entry.edx |= LEAF1_EDX_HTT;
    } else {
        entry.edx &= !LEAF1_EDX_HTT;
    }
}

/// Leaf 4 (Intel deterministic cache parameters): cores per package, and
/// which CPUs share each cache (L1/L2 per core, L3 by all).
fn leaf_4(entry: &mut kvm_cpuid_entry2, topo: &Topology) {
    if entry.eax & 0x1f == 0 {
        return; // No cache at this sub-leaf.
    }
    set_bits(&mut entry.eax, 26, 31, (topo.core_ids() - 1).min(0x3f));
    let sharing = cache_sharing(entry.eax, topo);
    set_bits(&mut entry.eax, 14, 25, sharing);
}

/// "Logical CPUs sharing this cache - 1" for a leaf 4/0x8000_001D EAX.
fn cache_sharing(eax: u32, topo: &Topology) -> u32 {
    let level = (eax >> 5) & 0x7;
    if level >= 3 {
        (topo.core_ids() - 1).min(0xfff)
    } else {
        0
    }
}

/// Leaves 0xB and 0x1F (extended topology): an SMT level of one thread, a
/// core level of `num_cpus`, the terminating invalid level, and the x2APIC
/// id in EDX of every sub-leaf.
fn extended_topology(function: u32, topo: &Topology) -> [kvm_cpuid_entry2; 3] {
    let level = |index: u32, shift: u32, count: u32, level_type: u32| kvm_cpuid_entry2 {
        function,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax: shift,
        ebx: count,
        ecx: (level_type << 8) | index,
        edx: topo.apic_id,
        ..Default::default()
    };
    [
        level(0, 0, 1, LEVEL_TYPE_SMT),
        level(1, topo.core_shift, topo.num_cpus, LEVEL_TYPE_CORE),
        level(2, 0, 0, 0),
    ]
}

/// AMD leaf 0x8000_0008 ECX: cores in the package - 1 and the APIC id bits
/// that number them.
fn amd_core_count(entry: &mut kvm_cpuid_entry2, topo: &Topology) {
    set_bits(&mut entry.ecx, 0, 7, topo.num_cpus - 1);
    set_bits(&mut entry.ecx, 12, 15, topo.core_shift);
}

/// AMD leaf 0x8000_001D (cache topology): which CPUs share each cache.
fn amd_cache_topology(entry: &mut kvm_cpuid_entry2, topo: &Topology) {
    if entry.eax & 0x1f == 0 {
        return;
    }
    let sharing = cache_sharing(entry.eax, topo);
    set_bits(&mut entry.eax, 14, 25, sharing);
}

/// AMD leaf 0x8000_001E: extended APIC id, core id (one thread per core),
/// one node.
fn amd_extended_apic_id(entry: &mut kvm_cpuid_entry2, topo: &Topology) {
    entry.eax = topo.apic_id;
    entry.ebx = topo.apic_id & 0xff;
    entry.ecx = 0;
    entry.edx = 0;
}

#[cfg(test)]
#[path = "tests/cpuid.rs"]
mod tests;
