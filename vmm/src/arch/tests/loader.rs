//! Tests of the kernel loader on synthetic ELF and bzImage kernels.

use std::io::Write;

use linux_loader::loader::bootparam::{boot_params, CAN_USE_HEAP, LOADED_HIGH};
use vmm_sys_util::tempfile::TempFile;

use super::*;
use crate::arch::layout::EBDA_START;
use crate::arch::memory;

/// Physical address (and entry point) of the synthetic ELF kernel.
const ELF_ENTRY: u64 = 0x100_0000;
/// The synthetic kernel's code: four HLTs.
const CODE: [u8; 4] = [0xf4; 4];
/// Memory size of the synthetic ELF segment (bss included).
const ELF_MEMSZ: u64 = 0x2000;
const MIB: u64 = 1 << 20;

fn file_with(bytes: &[u8]) -> File {
    let mut file = TempFile::new().unwrap().into_file();
    file.write_all(bytes).unwrap();
    file
}

fn sparse_file(len: u64) -> File {
    let file = TempFile::new().unwrap().into_file();
    file.set_len(len).unwrap();
    file
}

fn put<const N: usize>(buf: &mut [u8], offset: usize, bytes: [u8; N]) {
    buf[offset..offset + N].copy_from_slice(&bytes);
}

/// A minimal ELF64 executable with one PT_LOAD segment at [`ELF_ENTRY`].
fn elf_kernel() -> Vec<u8> {
    let mut buf = vec![0u8; 0x100];
    buf[..4].copy_from_slice(b"\x7fELF");
    buf[4] = 2; // ELFCLASS64
    buf[5] = 1; // ELFDATA2LSB
    buf[6] = 1; // EV_CURRENT
    put(&mut buf, 0x10, 2u16.to_le_bytes()); // e_type = ET_EXEC
    put(&mut buf, 0x12, 0x3eu16.to_le_bytes()); // e_machine = x86_64
    put(&mut buf, 0x14, 1u32.to_le_bytes()); // e_version
    put(&mut buf, 0x18, ELF_ENTRY.to_le_bytes()); // e_entry
    put(&mut buf, 0x20, 64u64.to_le_bytes()); // e_phoff
    put(&mut buf, 0x34, 64u16.to_le_bytes()); // e_ehsize
    put(&mut buf, 0x36, 56u16.to_le_bytes()); // e_phentsize
    put(&mut buf, 0x38, 1u16.to_le_bytes()); // e_phnum
    let ph = 64;
    put(&mut buf, ph, 1u32.to_le_bytes()); // p_type = PT_LOAD
    put(&mut buf, ph + 4, 5u32.to_le_bytes()); // p_flags = R|X
    put(&mut buf, ph + 8, 0x100u64.to_le_bytes()); // p_offset
    put(
        &mut buf,
        ph + 16,
        (0xffff_ffff_8000_0000 | ELF_ENTRY).to_le_bytes(),
    ); // p_vaddr
    put(&mut buf, ph + 24, ELF_ENTRY.to_le_bytes()); // p_paddr
    put(&mut buf, ph + 32, (CODE.len() as u64).to_le_bytes()); // p_filesz
    put(&mut buf, ph + 40, ELF_MEMSZ.to_le_bytes()); // p_memsz
    put(&mut buf, ph + 48, 0x1000u64.to_le_bytes()); // p_align
    buf.extend_from_slice(&CODE);
    buf
}

/// Fields of the synthetic bzImage's setup header that tests vary.
struct BzParams {
    xloadflags: u16,
    initrd_addr_max: u32,
    cmdline_size: u32,
    init_size: u32,
}

impl Default for BzParams {
    fn default() -> Self {
        BzParams {
            xloadflags: 0x3, // XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G
            initrd_addr_max: 0x7fff_ffff,
            cmdline_size: 2047,
            init_size: 0x40_0000,
        }
    }
}

/// A minimal bzImage: one setup sector after the boot sector, then a
/// protected-mode "kernel" that starts with [`CODE`].
fn bzimage(p: &BzParams) -> Vec<u8> {
    let mut buf = vec![0u8; 1024];
    buf[0x1f1] = 1; // setup_sects
    put(&mut buf, 0x1fe, 0xaa55u16.to_le_bytes()); // boot_flag
    buf[0x202..0x206].copy_from_slice(b"HdrS");
    put(&mut buf, 0x206, 0x020fu16.to_le_bytes()); // version 2.15
    buf[0x211] = LOADED_HIGH; // loadflags
    put(&mut buf, 0x214, (HIMEM_START as u32).to_le_bytes()); // code32_start
    put(&mut buf, 0x22c, p.initrd_addr_max.to_le_bytes());
    put(&mut buf, 0x230, 0x20_0000u32.to_le_bytes()); // kernel_alignment
    buf[0x234] = 1; // relocatable_kernel
    put(&mut buf, 0x236, p.xloadflags.to_le_bytes());
    put(&mut buf, 0x238, p.cmdline_size.to_le_bytes());
    put(&mut buf, 0x258, ELF_ENTRY.to_le_bytes()); // pref_address
    put(&mut buf, 0x260, p.init_size.to_le_bytes());
    buf.extend_from_slice(&CODE);
    buf.resize(1024 + 0x800, 0x90);
    buf
}

fn cmdline(text: &str) -> Cmdline {
    let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE * 2).unwrap();
    cmdline.insert_str(text).unwrap();
    cmdline
}

fn zero_page(mem: &GuestMemoryMmap) -> boot_params {
    mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap()
}

#[test]
fn elf_kernel_loads_with_zero_page() {
    let mem = memory::create(128).unwrap();
    let mut kernel = file_with(&elf_kernel());
    let boot = load(&mem, &mut kernel, None, &cmdline("console=ttyS0 reboot=k")).unwrap();
    assert_eq!(
        boot,
        BootInfo {
            entry: GuestAddress(ELF_ENTRY),
            zero_page: GuestAddress(ZERO_PAGE_START),
            kind: KernelKind::Elf,
        }
    );
    let mut code = [0u8; 4];
    mem.read_slice(&mut code, GuestAddress(ELF_ENTRY)).unwrap();
    assert_eq!(code, CODE);

    let params = zero_page(&mem);
    let hdr = params.hdr;
    assert_eq!({ hdr.boot_flag }, 0xaa55);
    assert_eq!({ hdr.header }, 0x5372_6448);
    assert_eq!(hdr.type_of_loader, 0xff);
    assert_eq!({ hdr.kernel_alignment }, 0x0100_0000);
    assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_START as u32);
    assert_eq!({ hdr.cmdline_size }, 22);
    assert_eq!(hdr.loadflags, LOADED_HIGH | CAN_USE_HEAP);
    assert_eq!({ hdr.heap_end_ptr }, 0xfe00);
    assert_eq!({ hdr.ramdisk_image }, 0);
    assert_eq!({ hdr.ramdisk_size }, 0);

    let mut text = [0u8; 23];
    mem.read_slice(&mut text, GuestAddress(CMDLINE_START))
        .unwrap();
    assert_eq!(&text, b"console=ttyS0 reboot=k\0");

    assert_eq!(params.e820_entries, 3);
    let table = params.e820_table;
    let e820: Vec<(u64, u64, u32)> = table[..3]
        .iter()
        .map(|e| ({ e.addr }, { e.size }, { e.r#type }))
        .collect();
    assert_eq!(
        e820,
        vec![
            (0, EBDA_START, 1),
            (EBDA_START, HIMEM_START - EBDA_START, 2),
            (HIMEM_START, 127 * MIB, 1)
        ]
    );
}

#[test]
fn elf_initrd_goes_to_the_top_of_low_memory() {
    let mem = memory::create(128).unwrap();
    let mut kernel = file_with(&elf_kernel());
    let image: Vec<u8> = (0..3 * 4096 + 100).map(|i| i as u8).collect();
    let mut initrd = file_with(&image);
    load(&mem, &mut kernel, Some(&mut initrd), &cmdline("")).unwrap();

    let hdr = zero_page(&mem).hdr;
    let addr = 128 * MIB - 4 * 4096;
    assert_eq!({ hdr.ramdisk_image }, addr as u32);
    assert_eq!({ hdr.ramdisk_size }, image.len() as u32);
    let mut back = vec![0u8; image.len()];
    mem.read_slice(&mut back, GuestAddress(addr)).unwrap();
    assert_eq!(back, image);
}

#[test]
fn initrd_too_large_names_size_and_room() {
    let mem = memory::create(32).unwrap();
    let mut kernel = file_with(&elf_kernel());
    let mut initrd = sparse_file(20 * MIB);
    let err = load(&mem, &mut kernel, Some(&mut initrd), &cmdline("")).unwrap_err();
    let room = 32 * MIB - (ELF_ENTRY + ELF_MEMSZ);
    match err {
        LoadError::InitrdTooLarge { size, room: r } => {
            assert_eq!(size, 20 * MIB);
            assert_eq!(r, room);
        }
        other => panic!("expected InitrdTooLarge, got {other:?}"),
    }

    // Exactly the room fits.
    let mut initrd = sparse_file(room);
    load(&mem, &mut kernel, Some(&mut initrd), &cmdline("")).unwrap();
    assert_eq!(
        { zero_page(&mem).hdr.ramdisk_image },
        (ELF_ENTRY + ELF_MEMSZ) as u32
    );
}

#[test]
fn bzimage_loads_at_himem_with_its_setup_header() {
    let mem = memory::create(128).unwrap();
    let mut kernel = file_with(&bzimage(&BzParams {
        initrd_addr_max: 0x3ff_ffff,
        ..Default::default()
    }));
    let mut initrd = file_with(&[7u8; 5000]);
    let boot = load(&mem, &mut kernel, Some(&mut initrd), &cmdline("quiet")).unwrap();
    assert_eq!(boot.kind, KernelKind::BzImage);
    assert_eq!(boot.entry, GuestAddress(HIMEM_START + 0x200));
    let mut code = [0u8; 4];
    mem.read_slice(&mut code, GuestAddress(HIMEM_START))
        .unwrap();
    assert_eq!(code, CODE);

    let hdr = zero_page(&mem).hdr;
    // From the image.
    assert_eq!({ hdr.version }, 0x020f);
    assert_eq!(hdr.setup_sects, 1);
    assert_eq!({ hdr.kernel_alignment }, 0x20_0000);
    assert_eq!({ hdr.cmdline_size }, 2047);
    assert_eq!({ hdr.code32_start }, HIMEM_START as u32);
    // Set by the loader.
    assert_eq!(hdr.type_of_loader, 0xff);
    assert_eq!(hdr.loadflags, LOADED_HIGH | CAN_USE_HEAP);
    assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_START as u32);
    // The initrd ends below initrd_addr_max, page aligned.
    assert_eq!({ hdr.ramdisk_image }, 0x400_0000 - 2 * 4096);
    assert_eq!({ hdr.ramdisk_size }, 5000);
}

#[test]
fn bzimage_initrd_stays_clear_of_the_decompressor() {
    // pref_address (16 MiB) + init_size (4 MiB) = 20 MiB; 24 MiB of RAM
    // leave 4 MiB for the initrd.
    let mem = memory::create(24).unwrap();
    let mut kernel = file_with(&bzimage(&BzParams::default()));
    let mut initrd = sparse_file(4 * MIB + 1);
    let err = load(&mem, &mut kernel, Some(&mut initrd), &cmdline("")).unwrap_err();
    assert!(
        matches!(err, LoadError::InitrdTooLarge { room, .. } if room == 4 * MIB),
        "{err:?}"
    );
}

#[test]
fn bzimage_without_64bit_entry_is_refused() {
    let mem = memory::create(32).unwrap();
    let mut kernel = file_with(&bzimage(&BzParams {
        xloadflags: 0,
        ..Default::default()
    }));
    let err = load(&mem, &mut kernel, None, &cmdline("")).unwrap_err();
    assert!(
        matches!(
            err,
            LoadError::BzImageNot64Bit {
                version: 0x020f,
                xloadflags: 0
            }
        ),
        "{err:?}"
    );
}

#[test]
fn garbage_is_not_a_kernel() {
    let mem = memory::create(32).unwrap();
    for bytes in [
        &b"MZ\x90\x00 not a kernel at all"[..],
        &[0u8; 0x1000][..],
        &[][..],
    ] {
        let mut kernel = file_with(bytes);
        let err = load(&mem, &mut kernel, None, &cmdline("")).unwrap_err();
        match err {
            LoadError::NotAKernel { first_bytes } => {
                assert_eq!(first_bytes, bytes[..bytes.len().min(4)].to_vec())
            }
            other => panic!("expected NotAKernel, got {other:?}"),
        }
    }
}

#[test]
fn cmdline_too_long_is_refused() {
    let mem = memory::create(32).unwrap();
    let mut kernel = file_with(&elf_kernel());
    let long = "a".repeat(CMDLINE_MAX_SIZE);
    let err = load(&mem, &mut kernel, None, &cmdline(&long)).unwrap_err();
    assert!(
        matches!(err, LoadError::CmdlineTooLong { len, max } if len == CMDLINE_MAX_SIZE && max == CMDLINE_MAX_SIZE - 1),
        "{err:?}"
    );
    // The longest accepted line fits.
    let longest = "a".repeat(CMDLINE_MAX_SIZE - 1);
    load(&mem, &mut kernel, None, &cmdline(&longest)).unwrap();

    // A bzImage's own cmdline_size is a tighter limit.
    let mut kernel = file_with(&bzimage(&BzParams {
        cmdline_size: 100,
        ..Default::default()
    }));
    let err = load(&mem, &mut kernel, None, &cmdline(&"b".repeat(101))).unwrap_err();
    assert!(
        matches!(err, LoadError::CmdlineTooLong { len: 101, max: 100 }),
        "{err:?}"
    );
}
