//! The boot GDT: descriptor encoding, decoding into KVM segments, and
//! writing the GDT and an empty IDT to guest memory.

use kvm_bindings::kvm_segment;
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use super::layout::{BOOT_GDT_ENTRIES, BOOT_GDT_START, BOOT_IDT_START};

/// Flags of the 64-bit kernel code segment: G, L, present, DPL 0, code exec/read, accessed.
pub const CODE_FLAGS: u16 = 0xa09b;
/// Flags of the data segment: G, D/B, present, DPL 0, data read/write, accessed.
pub const DATA_FLAGS: u16 = 0xc093;
/// Flags of the TSS: G, present, busy 64-bit TSS.
pub const TSS_FLAGS: u16 = 0x808b;
/// Limit (in 4 KiB units, with G) of every boot segment: all 4 GiB.
pub const FLAT_LIMIT: u32 = 0xfffff;

/// Selector of the code segment (GDT index 1).
pub const CODE_SELECTOR: u16 = 0x08;
/// Selector of the data segment (GDT index 2).
pub const DATA_SELECTOR: u16 = 0x10;
/// Selector of the TSS (GDT index 3).
pub const TSS_SELECTOR: u16 = 0x18;

/// The boot GDT: null, code, data, TSS.
pub const BOOT_GDT: [u64; BOOT_GDT_ENTRIES] = [
    0,
    entry(CODE_FLAGS, 0, FLAT_LIMIT),
    entry(DATA_FLAGS, 0, FLAT_LIMIT),
    entry(TSS_FLAGS, 0, FLAT_LIMIT),
];

/// `gdtr.limit` of the boot GDT.
pub const BOOT_GDT_LIMIT: u16 = (BOOT_GDT_ENTRIES * 8 - 1) as u16;
/// `idtr.limit` of the boot IDT (one empty gate).
pub const BOOT_IDT_LIMIT: u16 = 7;

/// Why the GDT or IDT could not be written.
#[derive(Debug, thiserror::Error)]
pub enum GdtError {
    /// Guest memory refused a write.
    #[error("cannot write the boot {table} at {addr:#x}: {source}")]
    Write {
        /// "GDT" or "IDT".
        table: &'static str,
        /// Where it was being written.
        addr: u64,
        /// What guest memory reported.
        #[source]
        source: GuestMemoryError,
    },
}

/// Encodes a segment descriptor. `flags` holds the access byte in bits 0..8
/// and the G, D/B, L, AVL nibble in bits 12..16; `limit` is 20 bits.
pub const fn entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    ((base & 0xff00_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
        | ((limit & 0xf_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
}

/// Decodes descriptor `index` of [`BOOT_GDT`]-style `entry` into the segment
/// register state KVM expects.
pub fn segment(entry: u64, index: u16) -> kvm_segment {
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let g = bit(55);
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let present = bit(47);
    kvm_segment {
        base,
        limit,
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        s: bit(44),
        dpl: ((entry >> 45) & 3) as u8,
        present,
        avl: bit(52),
        l: bit(53),
        db: bit(54),
        g,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// Writes [`BOOT_GDT`] at [`BOOT_GDT_START`] and an empty IDT at [`BOOT_IDT_START`].
pub fn write(mem: &GuestMemoryMmap) -> Result<(), GdtError> {
    for (i, descriptor) in BOOT_GDT.iter().enumerate() {
        let addr = BOOT_GDT_START + 8 * i as u64;
        mem.write_obj(*descriptor, GuestAddress(addr))
            .map_err(|source| GdtError::Write {
                table: "GDT",
                addr,
                source,
            })?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(|source| GdtError::Write {
            table: "IDT",
            addr: BOOT_IDT_START,
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_the_classic_descriptors() {
        assert_eq!(BOOT_GDT[1], 0x00af_9b00_0000_ffff);
        assert_eq!(BOOT_GDT[2], 0x00cf_9300_0000_ffff);
        assert_eq!(BOOT_GDT[3], 0x008f_8b00_0000_ffff);
        assert_eq!(entry(0x93, 0x1234_5678, 0xabcde), 0x120a_9334_5678_bcde);
    }

    #[test]
    fn decodes_code_data_and_tss() {
        let code = segment(BOOT_GDT[1], 1);
        assert_eq!(code.selector, CODE_SELECTOR);
        assert_eq!((code.base, code.limit), (0, 0xffff_ffff));
        assert_eq!((code.type_, code.s, code.dpl, code.present), (0xb, 1, 0, 1));
        assert_eq!((code.l, code.db, code.g, code.unusable), (1, 0, 1, 0));

        let data = segment(BOOT_GDT[2], 2);
        assert_eq!(data.selector, DATA_SELECTOR);
        assert_eq!(
            (data.type_, data.s, data.l, data.db, data.g),
            (3, 1, 0, 1, 1)
        );

        let tss = segment(BOOT_GDT[3], 3);
        assert_eq!(tss.selector, TSS_SELECTOR);
        assert_eq!((tss.type_, tss.s, tss.present, tss.g), (0xb, 0, 1, 1));

        let null = segment(BOOT_GDT[0], 0);
        assert_eq!((null.present, null.unusable), (0, 1));

        let odd = segment(entry(0x93, 0x1234_5678, 0xabcde), 5);
        assert_eq!((odd.base, odd.limit, odd.g), (0x1234_5678, 0xabcde, 0));
    }

    #[test]
    fn written_gdt_reads_back() {
        let mem = crate::arch::memory::create(2).unwrap();
        write(&mem).unwrap();
        for (i, descriptor) in BOOT_GDT.iter().enumerate() {
            let addr = GuestAddress(BOOT_GDT_START + 8 * i as u64);
            assert_eq!(mem.read_obj::<u64>(addr).unwrap(), *descriptor);
        }
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(BOOT_IDT_START)).unwrap(),
            0
        );
    }
}
