//! Kernel loading for the Linux 64-bit boot protocol.
//!
//! Loads an ELF `vmlinux` or a `bzImage`, the command line and an optional
//! initrd into guest memory, and fills the zero page (`struct boot_params`)
//! that vCPU 0 finds in RSI when it starts at the kernel's 64-bit entry.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};

use linux_loader::loader::bootparam::{boot_params, CAN_USE_HEAP, LOADED_HIGH, XLF_KERNEL_64};
use linux_loader::loader::{load_cmdline, BzImage, Cmdline, Elf, KernelLoader};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError, GuestMemoryMmap,
    GuestMemoryRegion,
};

use super::layout::{
    CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START, MMIO_GAP_START, ZERO_PAGE_START,
};
use super::memory::e820_entries;

/// The ELF magic at offset 0 of a vmlinux.
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
/// Offset of the "HdrS" magic in a bzImage.
const BZIMAGE_MAGIC_OFFSET: usize = 0x202;
/// The setup header magic, "HdrS".
const BZIMAGE_MAGIC: &[u8; 4] = b"HdrS";
/// `setup_header.header` as a little-endian integer.
const HDR_MAGIC: u32 = 0x5372_6448;
/// `setup_header.boot_flag`.
const BOOT_FLAG: u16 = 0xaa55;
/// `setup_header.type_of_loader`: a loader without an assigned id.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// `setup_header.kernel_alignment` for an ELF kernel (16 MiB).
const ELF_KERNEL_ALIGNMENT: u32 = 0x0100_0000;
/// `setup_header.heap_end_ptr`: end of the setup heap, relative to the
/// real-mode code, minus 0x200 (the real-mode setup is skipped anyway).
const HEAP_END_PTR: u16 = 0xfe00;
/// Offset of the 64-bit entry (`startup_64`) in a bzImage's protected-mode code.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// Highest initrd address for an ELF kernel (the value x86_64 kernels
/// advertise as `initrd_addr_max`).
const ELF_INITRD_ADDR_MAX: u64 = 0x7fff_ffff;
/// `initrd_addr_max` of bzImages older than boot protocol 2.03.
const OLD_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;
/// Initrd placement granularity.
const PAGE_SIZE: u64 = 0x1000;

/// The kind of kernel image that was loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelKind {
    /// An uncompressed ELF `vmlinux`.
    Elf,
    /// A compressed `bzImage`.
    BzImage,
}

/// Where the boot vCPU starts, as found by [`load`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootInfo {
    /// The kernel's 64-bit entry point (RIP).
    pub entry: GuestAddress,
    /// The zero page (RSI).
    pub zero_page: GuestAddress,
    /// What kind of image was loaded.
    pub kind: KernelKind,
}

/// Why the kernel, command line or initrd could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The kernel file could not be read.
    #[error("cannot read the kernel image: {0}")]
    ReadKernel(#[source] io::Error),
    /// The kernel file is neither an ELF vmlinux nor a bzImage.
    #[error("the kernel image is not a kernel: no ELF magic at offset 0 and no \"HdrS\" at offset 0x202 (first bytes {first_bytes:02x?})")]
    NotAKernel {
        /// Up to the first four bytes of the file.
        first_bytes: Vec<u8>,
    },
    /// linux-loader rejected the ELF kernel.
    #[error("cannot load the ELF kernel: {0}")]
    Elf(#[source] linux_loader::loader::Error),
    /// linux-loader rejected the bzImage kernel.
    #[error("cannot load the bzImage kernel: {0}")]
    BzImage(#[source] linux_loader::loader::Error),
    /// The bzImage has no 64-bit entry point.
    #[error("the bzImage has no 64-bit entry: boot protocol version {version:#06x}, xloadflags {xloadflags:#06x} lacks XLF_KERNEL_64")]
    BzImageNot64Bit {
        /// `setup_header.version`.
        version: u16,
        /// `setup_header.xloadflags`.
        xloadflags: u16,
    },
    /// The command line is not a valid C string.
    #[error("the kernel command line is invalid: {0}")]
    InvalidCmdline(#[source] linux_loader::cmdline::Error),
    /// The command line is longer than the VMM or the kernel accepts.
    #[error("the kernel command line is {len} bytes long; at most {max} fit")]
    CmdlineTooLong {
        /// Its length in bytes, without the NUL.
        len: usize,
        /// The most bytes accepted, without the NUL.
        max: usize,
    },
    /// The command line could not be written to guest memory.
    #[error("cannot write the kernel command line at {CMDLINE_START:#x}: {0}")]
    WriteCmdline(#[source] linux_loader::loader::Error),
    /// Guest memory has no region at address 0.
    #[error("guest memory has no RAM at address 0")]
    NoLowMemory,
    /// The initrd file could not be measured.
    #[error("cannot read the initrd's size: {0}")]
    InitrdSize(#[source] io::Error),
    /// The initrd does not fit between the kernel and the top of low memory.
    #[error("the initrd is {size} bytes but only {room} bytes fit between the kernel and the initrd address limit")]
    InitrdTooLarge {
        /// The initrd's size in bytes.
        size: u64,
        /// The room available in bytes.
        room: u64,
    },
    /// The initrd could not be read into guest memory.
    #[error("cannot read the initrd ({size} bytes) into guest memory at {addr:#x}: {source}")]
    ReadInitrd {
        /// Where it was being placed.
        addr: u64,
        /// Its size in bytes.
        size: u64,
        /// What went wrong.
        #[source]
        source: GuestMemoryError,
    },
    /// The zero page could not be written.
    #[error("cannot write the zero page at {ZERO_PAGE_START:#x}: {0}")]
    WriteZeroPage(#[source] GuestMemoryError),
}

/// Loads `kernel`, `cmdline` and `initrd` into `mem` and writes the zero page.
///
/// An ELF kernel is loaded at its physical addresses and entered at its ELF
/// entry point; a bzImage's protected-mode code is loaded at [`HIMEM_START`]
/// and entered 0x200 bytes in (`startup_64`). Either way the vCPU must start
/// in 64-bit mode with RSI pointing at [`BootInfo::zero_page`].
pub fn load(
    mem: &GuestMemoryMmap,
    kernel: &mut File,
    initrd: Option<&mut File>,
    cmdline: &Cmdline,
) -> Result<BootInfo, LoadError> {
    let kind = detect(kernel)?;
    let himem = GuestAddress(HIMEM_START);
    let (entry, setup_header, kernel_end) = match kind {
        KernelKind::Elf => {
            let loaded = Elf::load(mem, None, kernel, Some(himem)).map_err(LoadError::Elf)?;
            (loaded.kernel_load, None, loaded.kernel_end)
        }
        KernelKind::BzImage => {
            let loaded =
                BzImage::load(mem, Some(himem), kernel, Some(himem)).map_err(LoadError::BzImage)?;
            // BzImage::load always returns the header it read.
            let hdr = loaded.setup_header.unwrap_or_default();
            if hdr.xloadflags & XLF_KERNEL_64 == 0 {
                return Err(LoadError::BzImageNot64Bit {
                    version: hdr.version,
                    xloadflags: hdr.xloadflags,
                });
            }
            // The decompressor runs in place at max(load, pref_address) and
            // needs init_size bytes there; keep the initrd clear of it.
            let run_at = hdr.pref_address.max(HIMEM_START);
            let end = loaded
                .kernel_end
                .max(run_at.saturating_add(u64::from(hdr.init_size)));
            let entry = himem.unchecked_add(BZIMAGE_64BIT_ENTRY_OFFSET);
            (entry, Some(hdr), end)
        }
    };

    let mut params = boot_params::default();
    if let Some(hdr) = setup_header {
        params.hdr = hdr;
    }

    let cmdline_len = write_cmdline(mem, cmdline, setup_header.map(|h| h.cmdline_size))?;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    if kind == KernelKind::Elf {
        params.hdr.cmdline_size = cmdline_len as u32;
        params.hdr.kernel_alignment = ELF_KERNEL_ALIGNMENT;
    }

    if let Some(initrd) = initrd {
        let addr_max = match setup_header {
            Some(hdr) if hdr.version >= 0x0203 => u64::from(hdr.initrd_addr_max),
            Some(_) => OLD_INITRD_ADDR_MAX,
            None => ELF_INITRD_ADDR_MAX,
        };
        let (addr, size) = load_initrd(mem, initrd, kernel_end, addr_max)?;
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }

    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.boot_flag = BOOT_FLAG;
    params.hdr.header = HDR_MAGIC;
    params.hdr.loadflags |= LOADED_HIGH | CAN_USE_HEAP;
    params.hdr.heap_end_ptr = HEAP_END_PTR;

    let mem_bytes: u64 = mem.iter().map(|r| r.len()).sum();
    let entries = e820_entries(mem_bytes);
    for (slot, entry) in params.e820_table.iter_mut().zip(&entries) {
        slot.addr = entry.addr;
        slot.size = entry.size;
        slot.r#type = entry.kind.as_u32();
    }
    params.e820_entries = entries.len().min(params.e820_table.len()) as u8;

    let zero_page = GuestAddress(ZERO_PAGE_START);
    mem.write_obj(params, zero_page)
        .map_err(LoadError::WriteZeroPage)?;
    Ok(BootInfo {
        entry,
        zero_page,
        kind,
    })
}

/// Tells an ELF vmlinux from a bzImage by their magic numbers.
pub fn detect(kernel: &mut File) -> Result<KernelKind, LoadError> {
    kernel
        .seek(SeekFrom::Start(0))
        .map_err(LoadError::ReadKernel)?;
    let mut head = Vec::with_capacity(BZIMAGE_MAGIC_OFFSET + 4);
    kernel
        .by_ref()
        .take((BZIMAGE_MAGIC_OFFSET + 4) as u64)
        .read_to_end(&mut head)
        .map_err(LoadError::ReadKernel)?;
    if head.starts_with(ELF_MAGIC) {
        Ok(KernelKind::Elf)
    } else if head.get(BZIMAGE_MAGIC_OFFSET..) == Some(&BZIMAGE_MAGIC[..]) {
        Ok(KernelKind::BzImage)
    } else {
        head.truncate(4);
        Err(LoadError::NotAKernel { first_bytes: head })
    }
}

/// Writes the command line at [`CMDLINE_START`] and returns its length
/// without the NUL. `kernel_max` is the bzImage's `cmdline_size`, if any.
fn write_cmdline(
    mem: &GuestMemoryMmap,
    cmdline: &Cmdline,
    kernel_max: Option<u32>,
) -> Result<usize, LoadError> {
    let len = cmdline
        .as_cstring()
        .map_err(LoadError::InvalidCmdline)?
        .as_bytes()
        .len();
    let mut max = CMDLINE_MAX_SIZE - 1;
    if let Some(kernel_max) = kernel_max.filter(|m| *m != 0) {
        max = max.min(kernel_max as usize);
    }
    if len > max {
        return Err(LoadError::CmdlineTooLong { len, max });
    }
    load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline).map_err(LoadError::WriteCmdline)?;
    Ok(len)
}

/// Reads `initrd` to the highest page-aligned address where it ends at or
/// below both `addr_max` and the end of low RAM, and starts at or above
/// `kernel_end`. Returns its address and size.
fn load_initrd(
    mem: &GuestMemoryMmap,
    initrd: &mut File,
    kernel_end: u64,
    addr_max: u64,
) -> Result<(u64, u64), LoadError> {
    let size = initrd
        .seek(SeekFrom::End(0))
        .and_then(|size| initrd.seek(SeekFrom::Start(0)).map(|_| size))
        .map_err(LoadError::InitrdSize)?;
    let low = mem
        .find_region(GuestAddress(0))
        .ok_or(LoadError::NoLowMemory)?;
    let low_end = (low.start_addr().raw_value() + low.len()).min(MMIO_GAP_START);
    let top = low_end.min(addr_max.saturating_add(1)) & !(PAGE_SIZE - 1);
    let bottom = kernel_end.div_ceil(PAGE_SIZE) * PAGE_SIZE;
    let room = top.saturating_sub(bottom);
    if size > room {
        return Err(LoadError::InitrdTooLarge { size, room });
    }
    let addr = (top - size) & !(PAGE_SIZE - 1);
    mem.read_exact_volatile_from(GuestAddress(addr), initrd, size as usize)
        .map_err(|source| LoadError::ReadInitrd { addr, size, source })?;
    Ok((addr, size))
}

#[cfg(test)]
#[path = "tests/loader.rs"]
mod tests;
