//! The boot page tables: an identity map of the first GiB with 2 MiB pages,
//! enough for the kernel's 64-bit entry to run until it builds its own.

use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use super::layout::{PDE_START, PDPTE_START, PML4_START};

/// Page table entry bits: present and writable.
const PRESENT_RW: u64 = 0x3;
/// Page directory entry bit: this entry maps a 2 MiB page.
const PAGE_SIZE_2M: u64 = 0x80;
/// Entries in one page table.
const ENTRIES: usize = 512;
/// Bytes mapped by one page directory entry.
const HUGE_PAGE: u64 = 2 << 20;

/// Why the page tables could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PagingError {
    /// Guest memory refused a write.
    #[error("cannot write the boot {table} at {addr:#x}: {source}")]
    Write {
        /// "PML4", "PDPT" or "PD".
        table: &'static str,
        /// Where it was being written.
        addr: u64,
        /// What guest memory reported.
        #[source]
        source: GuestMemoryError,
    },
}

/// Writes the PML4, PDPT and PD that identity-map the first GiB, and
/// returns the address to load into CR3.
pub fn write_identity_map(mem: &GuestMemoryMmap) -> Result<GuestAddress, PagingError> {
    let mut pml4 = [0u64; ENTRIES];
    pml4[0] = PDPTE_START | PRESENT_RW;
    let mut pdpt = [0u64; ENTRIES];
    pdpt[0] = PDE_START | PRESENT_RW;
    let mut pd = [0u64; ENTRIES];
    for (i, pde) in pd.iter_mut().enumerate() {
        *pde = (i as u64 * HUGE_PAGE) | PAGE_SIZE_2M | PRESENT_RW;
    }
    for (table, addr, entries) in [
        ("PML4", PML4_START, &pml4),
        ("PDPT", PDPTE_START, &pdpt),
        ("PD", PDE_START, &pd),
    ] {
        let bytes: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
        mem.write_slice(&bytes, GuestAddress(addr))
            .map_err(|source| PagingError::Write {
                table,
                addr,
                source,
            })?;
    }
    Ok(GuestAddress(PML4_START))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::layout::IDENTITY_MAP_SIZE;

    fn read(mem: &GuestMemoryMmap, table: u64, index: u64) -> u64 {
        mem.read_obj(GuestAddress(table + 8 * index)).unwrap()
    }

    /// Walks the tables like the MMU for a 2 MiB-mapped address.
    fn translate(mem: &GuestMemoryMmap, cr3: u64, va: u64) -> Option<u64> {
        let mask = 0x000f_ffff_ffff_f000;
        let pml4e = read(mem, cr3, (va >> 39) & 0x1ff);
        if pml4e & 1 == 0 {
            return None;
        }
        let pdpte = read(mem, pml4e & mask, (va >> 30) & 0x1ff);
        if pdpte & 1 == 0 {
            return None;
        }
        let pde = read(mem, pdpte & mask, (va >> 21) & 0x1ff);
        if pde & 1 == 0 || pde & PAGE_SIZE_2M == 0 {
            return None;
        }
        Some((pde & 0x000f_ffff_ffe0_0000) | (va & (HUGE_PAGE - 1)))
    }

    #[test]
    fn first_gib_is_identity_mapped() {
        let mem = crate::arch::memory::create(2).unwrap();
        let cr3 = write_identity_map(&mem).unwrap();
        assert_eq!(cr3, GuestAddress(PML4_START));
        assert_eq!(read(&mem, PML4_START, 0), 0xa003);
        assert_eq!(read(&mem, PDPTE_START, 0), 0xb003);
        assert_eq!(read(&mem, PDE_START, 0), 0x83);
        assert_eq!(read(&mem, PDE_START, 511), 0x3fe0_0083);
        for va in [0, 0x7000, 0x100_0000, 0x1234_5678, IDENTITY_MAP_SIZE - 1] {
            assert_eq!(translate(&mem, cr3.0, va), Some(va), "va {va:#x}");
        }
        assert_eq!(translate(&mem, cr3.0, IDENTITY_MAP_SIZE), None);
        assert_eq!(read(&mem, PML4_START, 1), 0);
    }
}
