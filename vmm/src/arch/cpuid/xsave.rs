//! Makes CPUID leaf 0xD (XSAVE) consistent with itself and with the feature
//! flags the guest is told about.
//!
//! A Linux guest computes the XSAVE buffer size from the per-component
//! sub-leaves of leaf 0xD and compares it with the totals in 0xD.0 EBX
//! (standard format) or 0xD.1 EBX (compacted format); a mismatch, or a
//! component whose size differs from the architectural one, gives the
//! "XSAVE consistency problem" WARN. Hosts that emulate a CPU (e.g. QEMU
//! `-cpu host` on an emulated EPYC) can report such tables. So:
//!
//! 1. keep an XCR0 component only if its sub-leaf is present and sane, the
//!    feature flag that enables it is set, and its whole group is kept
//!    (AVX-512: 5, 6, 7; MPX: 3, 4; AMX: 17, 18; AVX-512 needs YMM);
//! 2. clear feature flags whose components were dropped;
//! 3. recompute 0xD.0 EBX/ECX and 0xD.1 EBX from the kept sub-leaves, and
//!    drop the sub-leaves of components that are not offered.
//!
//! KVM refreshes 0xD.0 EBX and 0xD.1 EBX for the guest's actual XCR0/XSS at
//! run time; the values set here are those for everything offered.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// Size of the legacy FXSAVE region plus the XSAVE header.
const XSAVE_BASE_SIZE: u32 = 512 + 64;

/// x87 state.
const X87: u32 = 0;
/// SSE state.
const SSE: u32 = 1;
/// Upper halves of YMM0-15 (AVX).
const YMM: u32 = 2;
/// MPX bound registers.
const BNDREGS: u32 = 3;
/// MPX bound config and status.
const BNDCSR: u32 = 4;
/// AVX-512 opmask registers.
const OPMASK: u32 = 5;
/// AVX-512 upper halves of ZMM0-15.
const ZMM_HI256: u32 = 6;
/// AVX-512 ZMM16-31.
const HI16_ZMM: u32 = 7;
/// Protection key rights register.
const PKRU: u32 = 9;
/// AMX tile configuration.
const XTILECFG: u32 = 17;
/// AMX tile data.
const XTILEDATA: u32 = 18;

/// Architectural sizes of the user components Linux checks.
const KNOWN_SIZES: [(u32, u32); 9] = [
    (YMM, 256),
    (BNDREGS, 64),
    (BNDCSR, 64),
    (OPMASK, 64),
    (ZMM_HI256, 512),
    (HI16_ZMM, 1024),
    (PKRU, 8),
    (XTILECFG, 64),
    (XTILEDATA, 8192),
];

/// Components that are offered together or not at all.
const GROUPS: [&[u32]; 3] = [
    &[BNDREGS, BNDCSR],
    &[OPMASK, ZMM_HI256, HI16_ZMM],
    &[XTILECFG, XTILEDATA],
];

/// A feature flag (in sub-leaf 0 of its leaf) that enables XSAVE components.
struct Gate {
    /// Leaf holding the flag.
    function: u32,
    /// Register: 1 = EBX, 2 = ECX, 3 = EDX.
    reg: usize,
    /// The flag's bit.
    bit: u32,
    /// The components it enables.
    components: &'static [u32],
    /// Further bits of the same register to clear when the flag is cleared.
    also_clear: u32,
}

/// Flags that enable components: leaf 1 ECX AVX; leaf 7 EBX MPX, AVX512F;
/// leaf 7 ECX PKU (and OSPKE); leaf 7 EDX AMX-TILE (and AMX-BF16/INT8).
const GATES: [Gate; 5] = [
    Gate {
        function: 1,
        reg: 2,
        bit: 28,
        components: &[YMM],
        also_clear: 0,
    },
    Gate {
        function: 7,
        reg: 1,
        bit: 14,
        components: &[BNDREGS, BNDCSR],
        also_clear: 0,
    },
    Gate {
        function: 7,
        reg: 1,
        bit: 16,
        components: &[OPMASK, ZMM_HI256, HI16_ZMM],
        also_clear: 0,
    },
    Gate {
        function: 7,
        reg: 2,
        bit: 3,
        components: &[PKRU],
        also_clear: 1 << 4,
    },
    Gate {
        function: 7,
        reg: 3,
        bit: 24,
        components: &[XTILECFG, XTILEDATA],
        also_clear: (1 << 22) | (1 << 25),
    },
];

/// 0xD.1 EAX bit 1: XSAVEC (compacted format).
const XSAVEC: u32 = 1 << 1;
/// 0xD.1 EAX bit 3: XSAVES/XRSTORS.
const XSAVES: u32 = 1 << 3;

/// One XSAVE component's sub-leaf.
#[derive(Debug, Clone, Copy, Default)]
struct Component {
    /// Size in bytes (EAX).
    size: u32,
    /// Offset in the standard format (EBX); 0 for supervisor components.
    offset: u32,
    /// Managed through IA32_XSS (ECX bit 0).
    supervisor: bool,
    /// 64-byte aligned in the compacted format (ECX bit 1).
    align64: bool,
}

/// Bit `i` of a 64-bit mask.
const fn bit(i: u32) -> u64 {
    1 << i
}

/// Register `reg` (0 = EAX .. 3 = EDX) of an entry.
fn reg_mut(entry: &mut kvm_cpuid_entry2, reg: usize) -> &mut u32 {
    match reg {
        0 => &mut entry.eax,
        1 => &mut entry.ebx,
        2 => &mut entry.ecx,
        _ => &mut entry.edx,
    }
}

/// Finds sub-leaf `index` of leaf `function`.
fn find(cpuid: &mut CpuId, function: u32, index: u32) -> Option<&mut kvm_cpuid_entry2> {
    cpuid
        .as_mut_slice()
        .iter_mut()
        .find(|e| e.function == function && e.index == index)
}

/// Rewrites leaf 0xD as described in the module docs. A table without
/// leaf 0xD is left alone.
pub fn normalize(cpuid: &mut CpuId) {
    let Some(leaf0) = find(cpuid, 0xd, 0).copied() else {
        return;
    };
    let offered_user = u64::from(leaf0.eax) | (u64::from(leaf0.edx) << 32);
    let offered_sup = find(cpuid, 0xd, 1)
        .map(|e| u64::from(e.ecx) | (u64::from(e.edx) << 32))
        .unwrap_or(0);

    let mut components = [None::<Component>; 64];
    for e in cpuid
        .as_slice()
        .iter()
        .filter(|e| e.function == 0xd && e.index >= 2 && e.index < 64)
    {
        components[e.index as usize] = Some(Component {
            size: e.eax,
            offset: e.ebx,
            supervisor: e.ecx & 1 != 0,
            align64: e.ecx & 2 != 0,
        });
    }

    let mut user = offered_user & (bit(X87) | bit(SSE));
    let mut supervisor = 0u64;
    for i in 2..64u32 {
        let Some(c) = components[i as usize].filter(|c| c.size > 0) else {
            continue;
        };
        let size_ok = KNOWN_SIZES
            .iter()
            .all(|&(known, size)| known != i || size == c.size);
        if offered_user & bit(i) != 0 && !c.supervisor && c.offset >= XSAVE_BASE_SIZE && size_ok {
            user |= bit(i);
        }
        if offered_sup & bit(i) != 0 && c.supervisor {
            supervisor |= bit(i);
        }
    }

    // Components need the flag that enables them.
    for gate in &GATES {
        let flag = find(cpuid, gate.function, 0).map(|e| *reg_mut(e, gate.reg) & (1 << gate.bit));
        if flag.unwrap_or(0) == 0 {
            for &c in gate.components {
                user &= !bit(c);
            }
        }
    }
    // AVX needs SSE state; AVX-512 needs AVX; groups go together.
    if user & bit(SSE) == 0 {
        user &= !bit(YMM);
    }
    if user & bit(YMM) == 0 {
        user &= !(bit(OPMASK) | bit(ZMM_HI256) | bit(HI16_ZMM));
    }
    for group in GROUPS {
        if !group.iter().all(|&c| user & bit(c) != 0) {
            for &c in group {
                user &= !bit(c);
            }
        }
    }

    // Flags whose components are not all offered are cleared.
    for gate in &GATES {
        if !gate.components.iter().all(|&c| user & bit(c) != 0) {
            if let Some(e) = find(cpuid, gate.function, 0) {
                *reg_mut(e, gate.reg) &= !((1 << gate.bit) | gate.also_clear);
            }
        }
    }

    let standard = standard_size(&components, user);
    if let Some(e) = find(cpuid, 0xd, 0) {
        e.eax = user as u32;
        e.edx = (user >> 32) as u32;
        e.ebx = standard;
        e.ecx = standard;
    }
    let compacted = compacted_size(&components, user | supervisor);
    if let Some(e) = find(cpuid, 0xd, 1) {
        e.ecx = supervisor as u32;
        e.edx = (supervisor >> 32) as u32;
        if e.eax & (XSAVEC | XSAVES) != 0 {
            e.ebx = compacted;
        }
    }
    let offered = user | supervisor;
    cpuid.retain(|e| {
        e.function != 0xd || e.index < 2 || (e.index < 64 && offered & bit(e.index) != 0)
    });
}

/// Size of a standard-format XSAVE area holding the `mask` components.
fn standard_size(components: &[Option<Component>; 64], mask: u64) -> u32 {
    (2..64u32)
        .filter(|&i| mask & bit(i) != 0)
        .filter_map(|i| components[i as usize])
        .map(|c| c.offset + c.size)
        .fold(XSAVE_BASE_SIZE, u32::max)
}

/// Size of a compacted-format XSAVE area holding the `mask` components.
fn compacted_size(components: &[Option<Component>; 64], mask: u64) -> u32 {
    (2..64u32)
        .filter(|&i| mask & bit(i) != 0)
        .filter_map(|i| components[i as usize])
        .fold(XSAVE_BASE_SIZE, |size, c| {
            let start = if c.align64 {
                size.next_multiple_of(64)
            } else {
                size
            };
            start + c.size
        })
}
