//! Guest RAM: its regions around the MMIO gap, its allocation, and the E820
//! map the guest kernel is given.

use vm_memory::mmap::FromRangesError;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::layout::{EBDA_START, HIGH_RAM_START, HIMEM_START, MMIO_GAP_START};

/// Bytes in a MiB.
const MIB: u64 = 1 << 20;

/// Smallest guest the memory map makes sense for, in MiB: everything the
/// boot code places below [`HIMEM_START`] plus room for a kernel above it.
pub const MIN_MEM_MIB: u64 = 2;

/// Why guest memory could not be created.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// `mem_mib` was below [`MIN_MEM_MIB`].
    #[error(
        "guest memory size mem_mib={mem_mib} is too small: at least {MIN_MEM_MIB} MiB are needed"
    )]
    TooSmall {
        /// The size asked for, in MiB.
        mem_mib: u64,
    },
    /// `mem_mib` does not fit in the host's address space.
    #[error("guest memory size mem_mib={mem_mib} is too large for this host")]
    TooLarge {
        /// The size asked for, in MiB.
        mem_mib: u64,
    },
    /// The host refused to map the memory.
    #[error("cannot map {mem_mib} MiB of guest memory: {source}")]
    Mmap {
        /// The size asked for, in MiB.
        mem_mib: u64,
        /// What the mapping reported.
        #[source]
        source: FromRangesError,
    },
}

/// The kind of an E820 memory map entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum E820Kind {
    /// Usable RAM (`E820_RAM`, 1).
    Ram,
    /// Reserved, not to be used by the kernel (`E820_RESERVED`, 2).
    Reserved,
}

impl E820Kind {
    /// The numeric type the boot protocol uses for this kind.
    pub fn as_u32(self) -> u32 {
        match self {
            E820Kind::Ram => 1,
            E820Kind::Reserved => 2,
        }
    }
}

/// One entry of the E820 memory map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// Guest physical start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// What the range is.
    pub kind: E820Kind,
}

/// Splits `mem_bytes` of RAM into guest regions: up to the MMIO gap from
/// address 0, and the remainder from 4 GiB up.
pub fn regions(mem_bytes: u64) -> Vec<(GuestAddress, usize)> {
    if mem_bytes <= MMIO_GAP_START {
        vec![(GuestAddress(0), mem_bytes as usize)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START as usize),
            (
                GuestAddress(HIGH_RAM_START),
                (mem_bytes - MMIO_GAP_START) as usize,
            ),
        ]
    }
}

/// Maps `mem_mib` MiB of anonymous guest RAM laid out by [`regions`].
pub fn create(mem_mib: u64) -> Result<GuestMemoryMmap, MemoryError> {
    if mem_mib < MIN_MEM_MIB {
        return Err(MemoryError::TooSmall { mem_mib });
    }
    let mem_bytes = mem_mib
        .checked_mul(MIB)
        .filter(|bytes| {
            usize::try_from(*bytes).is_ok()
                && (*bytes - MMIO_GAP_START.min(*bytes))
                    .checked_add(HIGH_RAM_START)
                    .is_some()
        })
        .ok_or(MemoryError::TooLarge { mem_mib })?;
    GuestMemoryMmap::from_ranges(&regions(mem_bytes))
        .map_err(|source| MemoryError::Mmap { mem_mib, source })
}

/// The E820 map for a guest with `mem_bytes` of RAM laid out by [`regions`]:
/// low RAM, the reserved EBDA/BIOS area, RAM from [`HIMEM_START`] to the MMIO
/// gap, and RAM above 4 GiB for large guests.
pub fn e820_entries(mem_bytes: u64) -> Vec<E820Entry> {
    let mut entries = Vec::with_capacity(4);
    let mut push = |start: u64, end: u64, kind: E820Kind| {
        if end > start {
            entries.push(E820Entry {
                addr: start,
                size: end - start,
                kind,
            });
        }
    };
    let low_end = mem_bytes.min(MMIO_GAP_START);
    push(0, low_end.min(EBDA_START), E820Kind::Ram);
    push(EBDA_START, low_end.min(HIMEM_START), E820Kind::Reserved);
    push(HIMEM_START, low_end, E820Kind::Ram);
    if mem_bytes > MMIO_GAP_START {
        push(
            HIGH_RAM_START,
            HIGH_RAM_START + (mem_bytes - MMIO_GAP_START),
            E820Kind::Ram,
        );
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

    const GIB: u64 = 1 << 30;

    fn ram(addr: u64, size: u64) -> E820Entry {
        E820Entry {
            addr,
            size,
            kind: E820Kind::Ram,
        }
    }

    fn reserved_bios() -> E820Entry {
        E820Entry {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            kind: E820Kind::Reserved,
        }
    }

    #[test]
    fn small_guest_has_one_region() {
        let mem = 128 * MIB;
        assert_eq!(regions(mem), vec![(GuestAddress(0), mem as usize)]);
        assert_eq!(
            e820_entries(mem),
            vec![
                ram(0, EBDA_START),
                reserved_bios(),
                ram(HIMEM_START, mem - HIMEM_START)
            ]
        );
    }

    #[test]
    fn guest_reaching_into_the_gap_is_split() {
        let mem = 3 * GIB + GIB / 2; // 3.5 GiB: 256 MiB more than fits below the gap.
        let high = mem - MMIO_GAP_START;
        assert_eq!(high, 256 * MIB);
        assert_eq!(
            regions(mem),
            vec![
                (GuestAddress(0), MMIO_GAP_START as usize),
                (GuestAddress(4 * GIB), high as usize)
            ]
        );
        assert_eq!(
            e820_entries(mem),
            vec![
                ram(0, EBDA_START),
                reserved_bios(),
                ram(HIMEM_START, MMIO_GAP_START - HIMEM_START),
                ram(4 * GIB, high)
            ]
        );
    }

    #[test]
    fn large_guest_has_ram_above_4g() {
        let mem = 8 * GIB;
        let entries = e820_entries(mem);
        assert_eq!(entries.len(), 4);
        assert_eq!(entries[3], ram(4 * GIB, mem - MMIO_GAP_START));
        let ram_total: u64 = entries
            .iter()
            .filter(|e| e.kind == E820Kind::Ram)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram_total, mem - (HIMEM_START - EBDA_START));
        let region_total: usize = regions(mem).iter().map(|r| r.1).sum();
        assert_eq!(region_total as u64, mem);
    }

    #[test]
    fn exactly_up_to_the_gap_is_one_region() {
        assert_eq!(regions(MMIO_GAP_START).len(), 1);
        assert_eq!(e820_entries(MMIO_GAP_START).len(), 3);
    }

    #[test]
    fn create_maps_the_regions() {
        let mem = create(128).unwrap();
        assert_eq!(mem.num_regions(), 1);
        assert_eq!(mem.iter().next().unwrap().len(), 128 * MIB);
        assert!(matches!(
            create(1),
            Err(MemoryError::TooSmall { mem_mib: 1 })
        ));
        assert!(matches!(
            create(u64::MAX),
            Err(MemoryError::TooLarge { .. })
        ));
    }
}
