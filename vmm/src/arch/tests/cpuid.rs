//! Tests of the CPUID transforms on synthetic Intel- and AMD-like tables.

use super::*;

fn e(function: u32, index: u32, eax: u32, ebx: u32, ecx: u32, edx: u32) -> kvm_cpuid_entry2 {
    let indexed = matches!(function, 4 | 7 | 0xb | 0xd | 0x1f | 0x8000_001d);
    kvm_cpuid_entry2 {
        function,
        index,
        flags: if indexed {
            KVM_CPUID_FLAG_SIGNIFCANT_INDEX
        } else {
            0
        },
        eax,
        ebx,
        ecx,
        edx,
        ..Default::default()
    }
}

fn vendor(name: &[u8; 12]) -> kvm_cpuid_entry2 {
    let [ebx, edx, ecx] = vendor_words(name);
    e(0, 0, 0x1f, ebx, ecx, edx)
}

fn get(cpuid: &CpuId, function: u32, index: u32) -> Option<kvm_cpuid_entry2> {
    cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == function && e.index == index)
        .copied()
}

const AVX: u32 = 1 << 28;
const XSAVE: u32 = 1 << 26;
const AVX512F: u32 = 1 << 16;
const PKU: u32 = 1 << 3;
const OSPKE: u32 = 1 << 4;

/// XCR0 of the synthetic host: x87, SSE, YMM, AVX-512 (5-7) and PKRU.
const HOST_XCR0: u32 = 0x2e7;
/// IA32_XSS of the synthetic host: CET user state.
const HOST_XSS: u32 = 1 << 11;
/// Standard-format size of [`HOST_XCR0`]: PKRU's offset + size.
const HOST_STANDARD_SIZE: u32 = 2688 + 8;
/// Compacted size of [`HOST_XCR0`] | [`HOST_XSS`].
const HOST_COMPACTED_SIZE: u32 = 576 + 256 + 64 + 512 + 1024 + 8 + 16;

/// XSAVE leaf 0xD of an AVX-512 host with PKRU and CET_U.
fn xsave_leaves() -> Vec<kvm_cpuid_entry2> {
    vec![
        e(0xd, 0, HOST_XCR0, 0x1111, 0x2222, 0),
        e(0xd, 1, 0xf, 0x3333, HOST_XSS, 0),
        e(0xd, 2, 256, 576, 0, 0),
        e(0xd, 5, 64, 1088, 0, 0),
        e(0xd, 6, 512, 1152, 0, 0),
        e(0xd, 7, 1024, 1664, 0, 0),
        e(0xd, 9, 8, 2688, 0, 0),
        e(0xd, 11, 16, 0, 1, 0),
    ]
}

/// An Intel-like table as KVM_GET_SUPPORTED_CPUID might return it.
fn intel() -> Vec<kvm_cpuid_entry2> {
    let mut entries = vec![
        vendor(b"GenuineIntel"),
        e(1, 0, 0x806f8, 0x0a10_0800, XSAVE | AVX, 1 << 28),
        e(4, 0, 0x0400_0121, 0, 0, 0), // L1d
        e(4, 1, 0x0400_0122, 0, 0, 0), // L1i
        e(4, 2, 0x0400_4143, 0, 0, 0), // L2, shared by 2
        e(4, 3, 0x0403_c163, 0, 0, 0), // L3, shared by 16
        e(4, 4, 0, 0, 0, 0),           // no more caches
        e(7, 0, 0, AVX512F, PKU | OSPKE, 0),
        e(0xb, 0, 1, 2, 0x100, 0x0a),
        e(0xb, 1, 4, 16, 0x201, 0x0a),
        e(0xb, 2, 0, 0, 2, 0x0a),
        e(0x4000_0000, 0, 0x4000_0001, 0x4b4d_564b, 0x564b_4d56, 0x4d),
        e(0x4000_0001, 0, 0x0100_7afb, 0, 0, 1),
        e(0x8000_0000, 0, 0x8000_0008, 0, 0, 0),
        e(0x8000_0008, 0, 0x3030, 0, 0, 0),
    ];
    entries.extend(xsave_leaves());
    entries
}

/// An AMD-like table (no leaf 4/0xB; topology in 0x8000_00xx).
fn amd() -> Vec<kvm_cpuid_entry2> {
    vec![
        vendor(b"AuthenticAMD"),
        e(1, 0, 0xa00f11, 0x0520_0800, 0, 1 << 28),
        e(0x8000_0008, 0, 0x3030, 0, 0x0001_700f, 0),
        e(0x8000_001d, 0, 0x0000_4121, 0, 0, 0), // L1d, shared by 2
        e(0x8000_001d, 1, 0x0003_c163, 0, 0, 0), // L3, shared by 16
        e(0x8000_001d, 2, 0, 0, 0, 0),
        e(0x8000_001e, 0, 0x0a, 0x0105, 0x0300, 0),
    ]
}

fn transform(entries: &[kvm_cpuid_entry2], vcpu_index: u8, num_cpus: u8) -> CpuId {
    let supported = CpuId::from_entries(entries).unwrap();
    for_vcpu(&supported, vcpu_index, num_cpus).unwrap()
}

#[test]
fn leaf_1_has_the_apic_id_and_cpu_count() {
    let cpuid = transform(&intel(), 3, 4);
    let leaf = get(&cpuid, 1, 0).unwrap();
    assert_eq!(leaf.ebx >> 24, 3, "initial APIC id");
    assert_eq!((leaf.ebx >> 16) & 0xff, 4, "logical CPUs");
    assert_eq!((leaf.ebx >> 8) & 0xff, 8, "CLFLUSH line / 8");
    assert_ne!(leaf.ecx & (1 << 31), 0, "hypervisor bit");
    assert_ne!(leaf.edx & (1 << 28), 0, "HTT");
    assert_eq!(leaf.eax, 0x806f8, "signature kept");

    let single = get(&transform(&intel(), 0, 1), 1, 0).unwrap();
    assert_eq!(single.ebx >> 16, 1);
    assert_eq!(single.edx & (1 << 28), 0, "no HTT with one CPU");
}

#[test]
fn leaf_4_describes_one_package_of_cores() {
    let cpuid = transform(&intel(), 1, 3);
    for index in 0..4 {
        let leaf = get(&cpuid, 4, index).unwrap();
        assert_eq!(leaf.eax >> 26, 3, "core ids - 1 (3 CPUs -> 4 ids)");
        let sharing = (leaf.eax >> 14) & 0xfff;
        let level = (leaf.eax >> 5) & 7;
        assert_eq!(sharing, if level == 3 { 3 } else { 0 }, "sub-leaf {index}");
        assert_eq!(leaf.eax & 0x3fff, intel()[2 + index as usize].eax & 0x3fff);
    }
    assert_eq!(get(&cpuid, 4, 4).unwrap().eax, 0, "null sub-leaf untouched");
}

#[test]
fn leaf_0xb_has_smt_and_core_levels() {
    let cpuid = transform(&intel(), 5, 6);
    let smt = get(&cpuid, 0xb, 0).unwrap();
    assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 5));
    let core = get(&cpuid, 0xb, 1).unwrap();
    assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (3, 6, 0x201, 5));
    let end = get(&cpuid, 0xb, 2).unwrap();
    assert_eq!((end.eax, end.ebx, end.ecx, end.edx), (0, 0, 2, 5));
}

#[test]
fn partial_extended_topology_is_rebuilt() {
    let mut entries = amd();
    entries.push(e(0xb, 0, 0, 0, 0, 0));
    entries.push(e(0x1f, 0, 0, 0, 0, 0));
    entries.push(e(0x1f, 3, 9, 9, 9, 9));
    let cpuid = transform(&entries, 1, 2);
    for function in [0xb, 0x1f] {
        let leaves: Vec<_> = cpuid
            .as_slice()
            .iter()
            .filter(|e| e.function == function)
            .map(|e| (e.index, e.eax, e.ebx, e.ecx, e.edx))
            .collect();
        assert_eq!(
            leaves,
            vec![(0, 0, 1, 0x100, 1), (1, 1, 2, 0x201, 1), (2, 0, 0, 2, 1)],
            "leaf {function:#x}"
        );
    }
    // Absent from the host: not invented.
    assert!(get(&transform(&amd(), 0, 2), 0xb, 0).is_none());
}

#[test]
fn paravirt_and_unrelated_leaves_are_kept() {
    let cpuid = transform(&intel(), 0, 2);
    for function in [0x4000_0000, 0x4000_0001, 0x8000_0000, 0x8000_0008] {
        let before = intel()
            .into_iter()
            .find(|e| e.function == function)
            .unwrap();
        assert_eq!(get(&cpuid, function, 0), Some(before), "leaf {function:#x}");
    }
}

#[test]
fn amd_topology_leaves() {
    let cpuid = transform(&amd(), 2, 3);
    let leaf = get(&cpuid, 0x8000_0008, 0).unwrap();
    assert_eq!(leaf.ecx & 0xff, 2, "NC = num_cpus - 1");
    assert_eq!((leaf.ecx >> 12) & 0xf, 2, "APIC id core bits");
    assert_eq!(leaf.ecx >> 16, 1, "PerfTscSize kept");
    let l1 = get(&cpuid, 0x8000_001d, 0).unwrap();
    assert_eq!((l1.eax >> 14) & 0xfff, 0);
    let l3 = get(&cpuid, 0x8000_001d, 1).unwrap();
    assert_eq!((l3.eax >> 14) & 0xfff, 3);
    let ext = get(&cpuid, 0x8000_001e, 0).unwrap();
    assert_eq!((ext.eax, ext.ebx, ext.ecx, ext.edx), (2, 2, 0, 0));
    let leaf1 = get(&cpuid, 1, 0).unwrap();
    assert_eq!(leaf1.ebx >> 24, 2);
}

#[test]
fn bad_arguments_are_refused() {
    let supported = CpuId::from_entries(&intel()).unwrap();
    assert!(matches!(
        for_vcpu(&supported, 0, 0),
        Err(CpuidError::NoCpus)
    ));
    assert!(matches!(
        for_vcpu(&supported, 2, 2),
        Err(CpuidError::VcpuIndexOutOfRange {
            vcpu_index: 2,
            num_cpus: 2
        })
    ));
    assert!(matches!(
        for_vcpu(&supported, 0, 255),
        Err(CpuidError::TooManyCpus { num_cpus: 255 })
    ));
    let no_leaf_1 = CpuId::from_entries(&[vendor(b"GenuineIntel")]).unwrap();
    assert!(matches!(
        for_vcpu(&no_leaf_1, 0, 1),
        Err(CpuidError::MissingLeaf { function: 1 })
    ));
}

fn xcr0(cpuid: &CpuId) -> u32 {
    get(cpuid, 0xd, 0).unwrap().eax
}

fn xsave_sub_leaves(cpuid: &CpuId) -> Vec<u32> {
    cpuid
        .as_slice()
        .iter()
        .filter(|e| e.function == 0xd && e.index >= 2)
        .map(|e| e.index)
        .collect()
}

#[test]
fn consistent_xsave_keeps_components_and_fixes_sizes() {
    let cpuid = transform(&intel(), 0, 1);
    let leaf0 = get(&cpuid, 0xd, 0).unwrap();
    assert_eq!(leaf0.eax, HOST_XCR0);
    assert_eq!(leaf0.ebx, HOST_STANDARD_SIZE);
    assert_eq!(leaf0.ecx, HOST_STANDARD_SIZE);
    let leaf1 = get(&cpuid, 0xd, 1).unwrap();
    assert_eq!(leaf1.ecx, HOST_XSS);
    assert_eq!(leaf1.ebx, HOST_COMPACTED_SIZE);
    assert_eq!(xsave_sub_leaves(&cpuid), vec![2, 5, 6, 7, 9, 11]);
}

#[test]
fn xsave_components_without_their_flag_are_dropped() {
    let mut entries = intel();
    // PKU not advertised in leaf 7.
    entries.iter_mut().find(|e| e.function == 7).unwrap().ecx = 0;
    let cpuid = transform(&entries, 0, 1);
    assert_eq!(xcr0(&cpuid), HOST_XCR0 & !(1 << 9));
    assert_eq!(get(&cpuid, 0xd, 0).unwrap().ecx, 1664 + 1024);
    assert_eq!(get(&cpuid, 0xd, 1).unwrap().ebx, HOST_COMPACTED_SIZE - 8);
    assert_eq!(xsave_sub_leaves(&cpuid), vec![2, 5, 6, 7, 11]);
}

#[test]
fn incomplete_avx512_group_is_dropped_with_its_flag() {
    let mut entries = intel();
    entries.retain(|e| !(e.function == 0xd && e.index == 7));
    let cpuid = transform(&entries, 0, 1);
    assert_eq!(xcr0(&cpuid), 0x207, "x87, SSE, YMM, PKRU");
    assert_eq!(get(&cpuid, 7, 0).unwrap().ebx & AVX512F, 0);
    assert_eq!(get(&cpuid, 0xd, 0).unwrap().ebx, HOST_STANDARD_SIZE);
    assert_eq!(get(&cpuid, 0xd, 1).unwrap().ebx, 576 + 256 + 8 + 16);
    assert_eq!(xsave_sub_leaves(&cpuid), vec![2, 9, 11]);
}

#[test]
fn wrong_component_size_drops_it_and_what_depends_on_it() {
    let mut entries = intel();
    let ymm = entries
        .iter_mut()
        .find(|e| e.function == 0xd && e.index == 2)
        .unwrap();
    ymm.eax = 128;
    let cpuid = transform(&entries, 0, 1);
    assert_eq!(xcr0(&cpuid), 0x203, "x87, SSE, PKRU");
    assert_eq!(get(&cpuid, 1, 0).unwrap().ecx & AVX, 0, "AVX cleared");
    assert_eq!(
        get(&cpuid, 7, 0).unwrap().ebx & AVX512F,
        0,
        "AVX512F cleared"
    );
    let pku = get(&cpuid, 7, 0).unwrap().ecx;
    assert_eq!(pku & (PKU | OSPKE), PKU | OSPKE, "PKU kept");
}

#[test]
fn supervisor_components_must_be_marked_supervisor() {
    let mut entries = intel();
    let cet = entries
        .iter_mut()
        .find(|e| e.function == 0xd && e.index == 11)
        .unwrap();
    cet.ecx = 0; // claims to be a user component
    let cpuid = transform(&entries, 0, 1);
    assert_eq!(get(&cpuid, 0xd, 1).unwrap().ecx, 0);
    assert_eq!(get(&cpuid, 0xd, 1).unwrap().ebx, HOST_COMPACTED_SIZE - 16);
}

#[test]
fn table_without_xsave_is_left_alone() {
    let cpuid = transform(&amd(), 0, 1);
    assert!(get(&cpuid, 0xd, 0).is_none());
    assert_eq!(cpuid.as_slice().len(), amd().len());
}
