//! The MP table (Intel MultiProcessor Specification 1.4) that tells the
//! guest its CPUs, its ISA bus, its IOAPIC and how IRQs are wired.
//!
//! Layout at [`MPTABLE_START`]: the MP floating pointer, then the MP
//! configuration table: processor entries, one ISA bus, one IOAPIC, an I/O
//! interrupt entry per IOAPIC pin (ISA IRQ i to pin i), and the local
//! interrupt entries (ExtINT to LINT0, NMI to LINT1 on every LAPIC).

use std::mem::size_of;

use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use super::layout::{
    HIMEM_START, IOAPIC_PINS, IOAPIC_START, LAPIC_START, MAX_VCPUS, MPTABLE_START,
};

/// Most bytes the tables may take: up to [`HIMEM_START`], all reserved in E820.
pub const MPTABLE_MAX_SIZE: usize = (HIMEM_START - MPTABLE_START) as usize;

/// MP spec revision 1.4.
const MP_SPEC_REV: u8 = 4;
/// LAPIC version reported for each processor.
const LAPIC_VERSION: u8 = 0x14;
/// IOAPIC version (82093AA-compatible, 24 pins).
const IOAPIC_VERSION: u8 = 0x11;
/// Processor entry flags.
const CPU_ENABLED: u8 = 1;
/// Processor entry flag of the bootstrap processor.
const CPU_BSP: u8 = 2;
/// Processor signature: family 6.
const CPU_SIGNATURE: u32 = 0x600;
/// Processor feature flags: FPU and APIC.
const CPU_FEATURES: u32 = 0x001 | 0x200;
/// IOAPIC entry flag: usable.
const IOAPIC_ENABLED: u8 = 1;
/// Entry types.
const ENTRY_PROCESSOR: u8 = 0;
/// Bus entry type.
const ENTRY_BUS: u8 = 1;
/// IOAPIC entry type.
const ENTRY_IOAPIC: u8 = 2;
/// I/O interrupt assignment entry type.
const ENTRY_IO_INTERRUPT: u8 = 3;
/// Local interrupt assignment entry type.
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
/// Interrupt types.
const INT_TYPE_INT: u8 = 0;
/// NMI interrupt type.
const INT_TYPE_NMI: u8 = 1;
/// ExtINT interrupt type (from the 8259 PIC).
const INT_TYPE_EXTINT: u8 = 3;
/// Polarity and trigger mode conform to the bus.
const INT_FLAGS_CONFORM: u16 = 0;
/// Destination LAPIC id meaning "all LAPICs".
const ALL_LAPICS: u8 = 0xff;
/// The ISA bus's id.
const ISA_BUS_ID: u8 = 0;

/// Why the MP table could not be built or written.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// `num_cpus` was 0.
    #[error("num_cpus is 0: the MP table needs at least one processor")]
    NoCpus,
    /// `num_cpus` leaves no xAPIC id for the IOAPIC.
    #[error(
        "num_cpus={num_cpus} is too many: at most {MAX_VCPUS} fit in xAPIC ids next to the IOAPIC"
    )]
    TooManyCpus {
        /// The count asked for.
        num_cpus: u8,
    },
    /// The tables would not fit below [`HIMEM_START`].
    #[error(
        "the MP table for num_cpus={num_cpus} needs {size} bytes, only {MPTABLE_MAX_SIZE} fit"
    )]
    TooLarge {
        /// The count asked for.
        num_cpus: u8,
        /// Bytes needed.
        size: usize,
    },
    /// Guest memory refused the write.
    #[error("cannot write the MP table ({size} bytes) at {MPTABLE_START:#x}: {source}")]
    Write {
        /// Bytes being written.
        size: usize,
        /// What guest memory reported.
        #[source]
        source: GuestMemoryError,
    },
}

/// MP floating pointer structure.
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, Default)]
struct FloatingPointer {
    signature: [u8; 4],
    config_table: u32,
    length_paragraphs: u8,
    spec_rev: u8,
    checksum: u8,
    features: [u8; 5],
}

/// MP configuration table header.
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, Default)]
struct ConfigHeader {
    signature: [u8; 4],
    base_length: u16,
    spec_rev: u8,
    checksum: u8,
    oem_id: [u8; 8],
    product_id: [u8; 12],
    oem_table: u32,
    oem_table_size: u16,
    entry_count: u16,
    lapic_address: u32,
    extended_length: u16,
    extended_checksum: u8,
    reserved: u8,
}

/// Processor entry.
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, Default)]
struct Processor {
    entry_type: u8,
    lapic_id: u8,
    lapic_version: u8,
    flags: u8,
    signature: u32,
    features: u32,
    reserved: [u32; 2],
}

/// Bus entry.
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, Default)]
struct Bus {
    entry_type: u8,
    bus_id: u8,
    bus_type: [u8; 6],
}

/// IOAPIC entry.
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, Default)]
struct IoApic {
    entry_type: u8,
    id: u8,
    version: u8,
    flags: u8,
    address: u32,
}

/// I/O or local interrupt assignment entry (same layout).
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, Default)]
struct Interrupt {
    entry_type: u8,
    int_type: u8,
    flags: u16,
    source_bus: u8,
    source_irq: u8,
    dest_apic: u8,
    dest_pin: u8,
}

// SAFETY: each type is `repr(C, packed)`, so it has no padding, and it is
// made only of integers and integer arrays, for which every bit pattern is
// valid.
unsafe impl ByteValued for FloatingPointer {}
// SAFETY: as above.
unsafe impl ByteValued for ConfigHeader {}
// SAFETY: as above.
unsafe impl ByteValued for Processor {}
// SAFETY: as above.
unsafe impl ByteValued for Bus {}
// SAFETY: as above.
unsafe impl ByteValued for IoApic {}
// SAFETY: as above.
unsafe impl ByteValued for Interrupt {}

/// Bytes the floating pointer and configuration table take for `num_cpus`.
pub fn size(num_cpus: u8) -> usize {
    size_of::<FloatingPointer>()
        + size_of::<ConfigHeader>()
        + usize::from(num_cpus) * size_of::<Processor>()
        + size_of::<Bus>()
        + size_of::<IoApic>()
        + (IOAPIC_PINS as usize + 2) * size_of::<Interrupt>()
}

/// The value that makes `bytes` sum to zero modulo 256.
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)))
}

/// Builds the floating pointer and configuration table for `num_cpus`
/// vCPUs, as they are to be placed at [`MPTABLE_START`].
pub fn build(num_cpus: u8) -> Result<Vec<u8>, MptableError> {
    if num_cpus == 0 {
        return Err(MptableError::NoCpus);
    }
    if num_cpus > MAX_VCPUS {
        return Err(MptableError::TooManyCpus { num_cpus });
    }
    let size = size(num_cpus);
    if size > MPTABLE_MAX_SIZE {
        return Err(MptableError::TooLarge { num_cpus, size });
    }
    let ioapic_id = num_cpus;

    let mut entries = Vec::with_capacity(size);
    let mut count: u16 = 0;
    let mut push = |bytes: &[u8]| {
        entries.extend_from_slice(bytes);
        count += 1;
    };
    for cpu in 0..num_cpus {
        let bsp = if cpu == 0 { CPU_BSP } else { 0 };
        push(
            Processor {
                entry_type: ENTRY_PROCESSOR,
                lapic_id: cpu,
                lapic_version: LAPIC_VERSION,
                flags: CPU_ENABLED | bsp,
                signature: CPU_SIGNATURE,
                features: CPU_FEATURES,
                reserved: [0; 2],
            }
            .as_slice(),
        );
    }
    push(
        Bus {
            entry_type: ENTRY_BUS,
            bus_id: ISA_BUS_ID,
            bus_type: *b"ISA   ",
        }
        .as_slice(),
    );
    push(
        IoApic {
            entry_type: ENTRY_IOAPIC,
            id: ioapic_id,
            version: IOAPIC_VERSION,
            flags: IOAPIC_ENABLED,
            address: IOAPIC_START as u32,
        }
        .as_slice(),
    );
    for irq in 0..IOAPIC_PINS as u8 {
        push(
            Interrupt {
                entry_type: ENTRY_IO_INTERRUPT,
                int_type: INT_TYPE_INT,
                flags: INT_FLAGS_CONFORM,
                source_bus: ISA_BUS_ID,
                source_irq: irq,
                dest_apic: ioapic_id,
                dest_pin: irq,
            }
            .as_slice(),
        );
    }
    for (pin, int_type) in [INT_TYPE_EXTINT, INT_TYPE_NMI].into_iter().enumerate() {
        push(
            Interrupt {
                entry_type: ENTRY_LOCAL_INTERRUPT,
                int_type,
                flags: INT_FLAGS_CONFORM,
                source_bus: ISA_BUS_ID,
                source_irq: 0,
                dest_apic: ALL_LAPICS,
                dest_pin: pin as u8,
            }
            .as_slice(),
        );
    }

    let mut header = ConfigHeader {
        signature: *b"PCMP",
        base_length: (size_of::<ConfigHeader>() + entries.len()) as u16,
        spec_rev: MP_SPEC_REV,
        checksum: 0,
        oem_id: *b"EMBER   ",
        product_id: *b"MICROVM     ",
        entry_count: count,
        lapic_address: LAPIC_START as u32,
        ..Default::default()
    };
    let mut table = header.as_slice().to_vec();
    table.extend_from_slice(&entries);
    header.checksum = checksum(&table);
    table[..size_of::<ConfigHeader>()].copy_from_slice(header.as_slice());

    let mut pointer = FloatingPointer {
        signature: *b"_MP_",
        config_table: (MPTABLE_START + size_of::<FloatingPointer>() as u64) as u32,
        length_paragraphs: 1,
        spec_rev: MP_SPEC_REV,
        ..Default::default()
    };
    pointer.checksum = checksum(pointer.as_slice());

    let mut bytes = pointer.as_slice().to_vec();
    bytes.extend_from_slice(&table);
    debug_assert_eq!(bytes.len(), size);
    Ok(bytes)
}

/// Writes the MP floating pointer and configuration table for `num_cpus`
/// vCPUs at [`MPTABLE_START`].
pub fn setup(mem: &GuestMemoryMmap, num_cpus: u8) -> Result<(), MptableError> {
    let bytes = build(num_cpus)?;
    mem.write_slice(&bytes, GuestAddress(MPTABLE_START))
        .map_err(|source| MptableError::Write {
            size: bytes.len(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    fn read_table(num_cpus: u8) -> Vec<u8> {
        let mem = crate::arch::memory::create(2).unwrap();
        setup(&mem, num_cpus).unwrap();
        let mut bytes = vec![0u8; size(num_cpus)];
        mem.read_slice(&mut bytes, GuestAddress(MPTABLE_START))
            .unwrap();
        bytes
    }

    fn check(num_cpus: u8) {
        let bytes = read_table(num_cpus);
        let fp = FloatingPointer::from_slice(&bytes[..16]).unwrap();
        assert_eq!(&fp.signature, b"_MP_");
        assert_eq!({ fp.config_table }, MPTABLE_START as u32 + 16);
        assert_eq!(fp.spec_rev, 4);
        assert_eq!(sum(&bytes[..16]), 0, "floating pointer checksum");

        let table = &bytes[16..];
        let header = ConfigHeader::from_slice(&table[..44]).unwrap();
        assert_eq!(&header.signature, b"PCMP");
        assert_eq!(header.base_length as usize, table.len());
        assert_eq!(sum(table), 0, "configuration table checksum");
        assert_eq!({ header.lapic_address }, 0xfee0_0000);
        assert_eq!({ header.entry_count }, u16::from(num_cpus) + 2 + 24 + 2);

        // Walk the entries by type.
        let mut at = 44;
        let mut counts = [0usize; 5];
        let mut bsps = 0;
        while at < table.len() {
            let kind = table[at];
            counts[kind as usize] += 1;
            match kind {
                ENTRY_PROCESSOR => {
                    let cpu = Processor::from_slice(&table[at..at + 20]).unwrap();
                    assert_eq!(cpu.lapic_id as usize, counts[0] - 1);
                    assert_ne!(cpu.flags & CPU_ENABLED, 0);
                    bsps += usize::from(cpu.flags & CPU_BSP != 0);
                    if cpu.lapic_id == 0 {
                        assert_ne!(cpu.flags & CPU_BSP, 0);
                    }
                    at += 20;
                }
                ENTRY_IOAPIC => {
                    let ioapic = IoApic::from_slice(&table[at..at + 8]).unwrap();
                    assert_eq!(ioapic.id, num_cpus);
                    assert_eq!(ioapic.version, 0x11);
                    assert_eq!({ ioapic.address }, 0xfec0_0000);
                    at += 8;
                }
                ENTRY_IO_INTERRUPT => {
                    let int = Interrupt::from_slice(&table[at..at + 8]).unwrap();
                    assert_eq!(int.source_irq, int.dest_pin);
                    assert_eq!(int.dest_apic, num_cpus);
                    at += 8;
                }
                ENTRY_LOCAL_INTERRUPT => {
                    let int = Interrupt::from_slice(&table[at..at + 8]).unwrap();
                    assert_eq!(int.dest_apic, 0xff);
                    let expected = if int.dest_pin == 0 {
                        INT_TYPE_EXTINT
                    } else {
                        INT_TYPE_NMI
                    };
                    assert_eq!(int.int_type, expected);
                    at += 8;
                }
                _ => at += 8,
            }
        }
        assert_eq!(at, table.len());
        assert_eq!(counts, [num_cpus as usize, 1, 1, 24, 2]);
        assert_eq!(bsps, 1);
    }

    #[test]
    fn one_cpu() {
        check(1);
    }

    #[test]
    fn two_cpus() {
        check(2);
    }

    #[test]
    fn the_largest_table_fits() {
        check(MAX_VCPUS);
        assert!(size(MAX_VCPUS) <= MPTABLE_MAX_SIZE);
    }

    #[test]
    fn bad_cpu_counts_are_refused() {
        assert!(matches!(build(0), Err(MptableError::NoCpus)));
        assert!(matches!(
            build(255),
            Err(MptableError::TooManyCpus { num_cpus: 255 })
        ));
    }

    #[test]
    fn struct_sizes_match_the_spec() {
        assert_eq!(size_of::<FloatingPointer>(), 16);
        assert_eq!(size_of::<ConfigHeader>(), 44);
        assert_eq!(size_of::<Processor>(), 20);
        assert_eq!(size_of::<Bus>(), 8);
        assert_eq!(size_of::<IoApic>(), 8);
        assert_eq!(size_of::<Interrupt>(), 8);
    }
}
