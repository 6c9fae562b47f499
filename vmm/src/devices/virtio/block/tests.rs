//! virtio-block driven through a mock split queue over real guest memory and
//! a temporary disk file.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberOps};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::{parse_drive_spec, Block, BlockError};
use crate::devices::bus::lock;
use crate::devices::virtio::{ActivateError, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1};

const MEM_SIZE: u64 = 0x10_0000;
const QUEUE_SIZE: u16 = 256;
const HEADER: u64 = 0x1_0000;
const DATA: u64 = 0x2_0000;
const STATUS: u64 = 0x3_0000;
/// Well past the end of guest memory.
const NOWHERE: u64 = 0x1000_0000;
/// 8 whole sectors plus a tail the device must not expose.
const DISK_LEN: u64 = 8 * 512 + 100;
const DISK_SECTORS: u64 = 8;
/// A status value no request returns, to see whether the device wrote one.
const UNTOUCHED: u8 = 0xee;

/// One descriptor of a test chain: device-readable or device-writable.
#[derive(Clone, Copy)]
enum D {
    R(u64, u32),
    W(u64, u32),
}

fn disk_byte(i: u64) -> u8 {
    ((i / 512) as u8).wrapping_mul(31) ^ (i % 251) as u8
}

/// A read-write file of `len` pattern bytes whose path is already gone.
fn temp_disk(len: u64) -> File {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let path = std::env::temp_dir().join(format!(
        "ember-block-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    let content: Vec<u8> = (0..len).map(disk_byte).collect();
    file.write_all_at(&content, 0).unwrap();
    file
}

fn interrupt() -> VirtioInterrupt {
    VirtioInterrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())
}

fn test_mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
}

/// A driver's view of one activated block device.
struct Harness<'a> {
    mem: &'a GuestMemoryMmap,
    vq: MockSplitQueue<'a, GuestMemoryMmap>,
    block: Block,
    /// The disk file, to check what the device wrote.
    disk: File,
    next_desc: u16,
}

impl<'a> Harness<'a> {
    fn new(mem: &'a GuestMemoryMmap, read_only: bool) -> Self {
        let file = temp_disk(DISK_LEN);
        let disk = file.try_clone().unwrap();
        let mut block = Block::new(file, read_only, "ember-disk-0".into(), interrupt()).unwrap();
        let vq = MockSplitQueue::new(mem, QUEUE_SIZE);
        block.set_acked_features(block.avail_features());
        block
            .activate(mem.clone(), vec![vq.create_queue().unwrap()])
            .unwrap();
        // Activation kicks the queue; tests drive the queue by hand.
        block.queue_events()[0].read().unwrap();
        Self {
            mem,
            vq,
            block,
            disk,
            next_desc: 0,
        }
    }

    /// Makes a chain of `descs` available (without kicking).
    fn add_chain(&mut self, descs: &[D]) {
        let first = self.next_desc;
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let (addr, len, mut flags) = match *d {
                    D::R(addr, len) => (addr, len, 0),
                    D::W(addr, len) => (addr, len, VRING_DESC_F_WRITE as u16),
                };
                let last = i + 1 == descs.len();
                if !last {
                    flags |= VRING_DESC_F_NEXT as u16;
                }
                let next = if last { 0 } else { first + i as u16 + 1 };
                RawDescriptor::from(Descriptor::new(addr, len, flags, next))
            })
            .collect();
        self.vq.add_desc_chains(&raw, first).unwrap();
        self.next_desc += descs.len() as u16;
    }

    fn write_header(&self, request_type: u32, sector: u64) {
        self.mem
            .write_obj(request_type.to_le(), GuestAddress(HEADER))
            .unwrap();
        self.mem.write_obj(0u32, GuestAddress(HEADER + 4)).unwrap();
        self.mem
            .write_obj(sector.to_le(), GuestAddress(HEADER + 8))
            .unwrap();
        self.mem.write_obj(UNTOUCHED, GuestAddress(STATUS)).unwrap();
    }

    /// Makes the usual three-part request available: header, data, status.
    fn request(&mut self, request_type: u32, sector: u64, data: Option<D>) {
        self.write_header(request_type, sector);
        let mut descs = vec![D::R(HEADER, 16)];
        descs.extend(data);
        descs.push(D::W(STATUS, 1));
        self.add_chain(&descs);
    }

    /// Runs one request and returns (status byte, used length).
    fn run(&mut self, request_type: u32, sector: u64, data: Option<D>) -> (u8, u32) {
        self.request(request_type, sector, data);
        self.block.process_queue();
        (self.status(), self.last_used().1)
    }

    fn status(&self) -> u8 {
        self.mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    fn used_idx(&self) -> u16 {
        self.mem
            .read_obj(self.vq.used_addr().unchecked_add(2))
            .unwrap()
    }

    /// The most recent used element: (descriptor head, length).
    fn last_used(&self) -> (u32, u32) {
        let idx = self.used_idx();
        assert!(idx > 0, "nothing was used");
        let elem = self
            .vq
            .used_addr()
            .unchecked_add(4 + 8 * u64::from((idx - 1) % QUEUE_SIZE));
        (
            self.mem.read_obj(elem).unwrap(),
            self.mem.read_obj(elem.unchecked_add(4)).unwrap(),
        )
    }

    fn guest_bytes(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        self.mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf
    }

    fn disk_bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        self.disk.read_exact_at(&mut buf, offset).unwrap();
        buf
    }

    /// How many times the device raised its interrupt since last asked.
    fn interrupts(&self) -> u64 {
        self.block.interrupt().irqfd().read().unwrap_or(0)
    }
}

fn pattern(offset: u64, len: u64) -> Vec<u8> {
    (offset..offset + len).map(disk_byte).collect()
}

const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;

#[test]
fn read_one_sector() {
    let mem = test_mem();
    let mut h = Harness::new(&mem, false);
    assert_eq!(h.run(VIRTIO_BLK_T_IN, 2, Some(D::W(DATA, 512))), (OK, 513));
    assert_eq!(h.guest_bytes(DATA, 512), pattern(1024, 512));
    assert_eq!(h.block.interrupt().status() & 1, 1);
    assert_eq!(h.interrupts(), 1);
}

#[test]
fn read_the_last_sector() {
    let mem = test_mem();
    let mut h = Harness::new(&mem, false);
    let last = DISK_SECTORS - 1;
    assert_eq!(
        h.run(VIRTIO_BLK_T_IN, last, Some(D::W(DATA, 512))),
        (OK, 513)
    );
    assert_eq!(h.guest_bytes(DATA, 512), pattern(last * 512, 512));
}

#[test]
fn read_with_any_framing() {
    let mem = test_mem();
    let mut h = Harness::new(&mem, false);
    h.write_header(VIRTIO_BLK_T_IN, 3);
    // Header split in two; data split unevenly; the status byte shares the
    // last data descriptor.
    h.add_chain(&[
        D::R(HEADER, 8),
        D::R(HEADER + 8, 8),
        D::W(DATA, 100),
        D::W(DATA + 100, 925),
    ]);
    h.block.process_queue();
    assert_eq!(h.last_used(), (0, 1025));
    assert_eq!(h.guest_bytes(DATA, 1024), pattern(3 * 512, 1024));
    assert_eq!(h.guest_bytes(DATA + 1024, 1), [OK]);
}

#[test]
fn several_requests_one_interrupt() {
    let mem = test_mem();
    let mut h = Harness::new(&mem, false);
    h.request(VIRTIO_BLK_T_IN, 0, Some(D::W(DATA, 512)));
    h.request(VIRTIO_BLK_T_FLUSH, 0, None);
    h.request(VIRTIO_BLK_T_IN, 1, Some(D::W(DATA, 512)));
    h.block.process_queue();
    assert_eq!(h.used_idx(), 3);
    assert_eq!(h.last_used(), (5, 513));
    assert_eq!(h.interrupts(), 1);
    // Nothing new: no interrupt.
    h.block.process_queue();
    assert_eq!(h.interrupts(), 0);
}

#[test]
fn write_sectors() {
    let mem = test_mem();
    let mut h = Harness::new(&mem, false);
    mem.write_slice(&[0xab; 1024], GuestAddress(DATA)).unwrap();
    assert_eq!(h.run(VIRTIO_BLK_T_OUT, 5, Some(D::R(DATA, 1024))), (OK, 1));
    assert_eq!(h.disk_bytes(5 * 512, 1024), vec![0xab; 1024]);
    assert_eq!(h.disk_bytes(4 * 512, 512), pattern(4 * 512, 512));
    assert_eq!(h.disk_bytes(7 * 512, 612), pattern(7 * 512, 612));
}

#[test]
fn write_refused_on_read_only_disk() {
    let mem = test_mem();
    let mut h = Harness::new(&mem, true);
    assert_ne!(h.block.avail_features() & (1 << VIRTIO_BLK_F_RO), 0);
    mem.write_slice(&[0xab; 512], GuestAddress(DATA)).unwrap();
    assert_eq!(
        h.run(VIRTIO_BLK_T_OUT, 0, Some(D::R(DATA, 512))),
        (IOERR, 1)
    );
    assert_eq!(h.disk_bytes(0, 512), pattern(0, 512));
    // Reading and flushing still work.
    assert_eq!(h.run(VIRTIO_BLK_T_IN, 0, Some(D::W(DATA, 512))), (OK, 513));
    assert_eq!(h.run(VIRTIO_BLK_T_FLUSH, 0, None), (OK, 1));
}

#[test]
fn flush() {
    let mem = test_mem();
    let mut h = Harness::new(&mem, false);
    assert_eq!(h.run(VIRTIO_BLK_T_FLUSH, 0, None), (OK, 1));
    // A flush carries no data.
    assert_eq!(
        h.run(VIRTIO_BLK_T_FLUSH, 0, Some(D::W(DATA, 512))),
        (IOERR, 1)
    );
}

#[test]
fn get_id() {
    let mem = test_mem();
    let mut h = Harness::new(&mem, false);
    mem.write_slice(&[0xff; 20], GuestAddress(DATA)).unwrap();
    assert_eq!(
        h.run(VIRTIO_BLK_T_GET_ID, 0, Some(D::W(DATA, 20))),
        (OK, 21)
    );
    let mut want = b"ember-disk-0".to_vec();
    want.resize(20, 0);
    assert_eq!(h.guest_bytes(DATA, 20), want);
}

#[test]
fn get_id_defaults_to_inode_and_device() {
    let mem = test_mem();
    let block = Block::new(temp_disk(512), false, String::new(), interrupt()).unwrap();
    let mut h = Harness::new(&mem, false);
    h.block = block;
    h.block.set_acked_features(h.block.avail_features());
    h.block
        .activate(mem.clone(), vec![h.vq.create_queue().unwrap()])
        .unwrap();
    assert_eq!(
        h.run(VIRTIO_BLK_T_GET_ID, 0, Some(D::W(DATA, 20))),
        (OK, 21)
    );
    let id = h.guest_bytes(DATA, 20);
    assert!(id.contains(&b'-') && id[0] != 0, "{id:?}");
}

#[test]
fn requests_beyond_the_disk_fail() {
    let mem = test_mem();
    let mut h = Harness::new(&mem, false);
    let cases = [
        (DISK_SECTORS, 512),
        (DISK_SECTORS - 1, 1024),
        (u64::MAX, 512),
        (u64::MAX / 512, 512),
    ];
    for (sector, len) in cases {
        assert_eq!(
            h.run(VIRTIO_BLK_T_IN, sector, Some(D::W(DATA, len))),
            (IOERR, 1),
            "read of {len} bytes at sector {sector}"
        );
        assert_eq!(
            h.run(VIRTIO_BLK_T_OUT, sector, Some(D::R(DATA, len))),
            (IOERR, 1),
            "write of {len} bytes at sector {sector}"
        );
    }
    assert_eq!(h.disk_bytes(0, DISK_LEN as usize), pattern(0, DISK_LEN));
}

#[test]
fn partial_sectors_fail() {
    let mem = test_mem();
    let mut h = Harness::new(&mem, false);
    assert_eq!(h.run(VIRTIO_BLK_T_IN, 0, Some(D::W(DATA, 100))), (IOERR, 1));
    assert_eq!(
        h.run(VIRTIO_BLK_T_OUT, 0, Some(D::R(DATA, 513))),
        (IOERR, 1)
    );
}

#[test]
fn data_the_wrong_way_fails() {
    let mem = test_mem();
    let mut h = Harness::new(&mem, false);
    assert_eq!(h.run(VIRTIO_BLK_T_IN, 0, Some(D::R(DATA, 512))), (IOERR, 1));
    assert_eq!(
        h.run(VIRTIO_BLK_T_OUT, 0, Some(D::W(DATA, 512))),
        (IOERR, 1)
    );
    assert_eq!(h.disk_bytes(0, 512), pattern(0, 512));
}

#[test]
fn unknown_type_is_unsupported() {
    let mem = test_mem();
    let mut h = Harness::new(&mem, false);
    let unsupp = VIRTIO_BLK_S_UNSUPP as u8;
    assert_eq!(h.run(0x42, 0, Some(D::W(DATA, 512))), (unsupp, 1));
    // DISCARD (11) is not offered either.
    assert_eq!(h.run(11, 0, None), (unsupp, 1));
}

#[test]
fn chain_without_status_is_given_back() {
    let mem = test_mem();
    let mut h = Harness::new(&mem, false);
    h.write_header(VIRTIO_BLK_T_IN, 0);
    h.add_chain(&[D::R(HEADER, 16)]);
    h.block.process_queue();
    assert_eq!(h.last_used(), (0, 0));
    assert_eq!(h.interrupts(), 1);
}

#[test]
fn status_descriptor_not_writable() {
    let mem = test_mem();
    let mut h = Harness::new(&mem, false);
    h.write_header(VIRTIO_BLK_T_FLUSH, 0);
    h.add_chain(&[D::R(HEADER, 16), D::R(STATUS, 1)]);
    h.block.process_queue();
    assert_eq!(h.last_used(), (0, 0));
    assert_eq!(h.status(), UNTOUCHED);
}

#[test]
fn readable_after_writable_fails() {
    let mem = test_mem();
    let mut h = Harness::new(&mem, false);
    h.write_header(VIRTIO_BLK_T_OUT, 0);
    h.add_chain(&[D::R(HEADER, 16), D::W(STATUS, 1), D::R(DATA, 512)]);
    h.block.process_queue();
    assert_eq!(h.last_used(), (0, 1));
    assert_eq!(h.status(), IOERR);
    assert_eq!(h.disk_bytes(0, 512), pattern(0, 512));
}

#[test]
fn header_too_short() {
    let mem = test_mem();
    let mut h = Harness::new(&mem, false);
    h.write_header(VIRTIO_BLK_T_IN, 0);
    h.add_chain(&[D::R(HEADER, 8), D::W(STATUS, 1)]);
    h.block.process_queue();
    assert_eq!(h.last_used(), (0, 1));
    assert_eq!(h.status(), IOERR);
    // No header at all: the only byte is the status.
    h.add_chain(&[D::W(STATUS, 1)]);
    h.block.process_queue();
    assert_eq!(h.last_used(), (2, 1));
}

#[test]
fn descriptors_outside_guest_memory() {
    let mem = test_mem();
    let mut h = Harness::new(&mem, false);
    assert_eq!(
        h.run(VIRTIO_BLK_T_IN, 0, Some(D::W(NOWHERE, 512))),
        (IOERR, 1)
    );
    assert_eq!(
        h.run(VIRTIO_BLK_T_OUT, 0, Some(D::R(NOWHERE, 512))),
        (IOERR, 1)
    );
    // Straddling the end of guest memory.
    assert_eq!(
        h.run(VIRTIO_BLK_T_IN, 0, Some(D::W(MEM_SIZE - 256, 512))),
        (IOERR, 1)
    );
    // An address that overflows when the length is added.
    assert_eq!(
        h.run(VIRTIO_BLK_T_IN, 0, Some(D::W(u64::MAX - 100, 512))),
        (IOERR, 1)
    );
    // Header nowhere.
    h.add_chain(&[D::R(NOWHERE, 16), D::W(STATUS, 1)]);
    h.block.process_queue();
    assert_eq!(h.last_used().1, 1);
    assert_eq!(h.status(), IOERR);
    // Status nowhere: nothing can be said.
    for status in [NOWHERE, u64::MAX] {
        h.write_header(VIRTIO_BLK_T_FLUSH, 0);
        h.add_chain(&[D::R(HEADER, 16), D::W(status, 1)]);
        h.block.process_queue();
        assert_eq!(h.last_used().1, 0);
    }
    assert_eq!(h.status(), UNTOUCHED);
}

#[test]
fn looping_or_dangling_chains_are_given_back() {
    let mem = test_mem();
    let mut h = Harness::new(&mem, false);
    h.write_header(VIRTIO_BLK_T_FLUSH, 0);
    let next = VRING_DESC_F_NEXT as u16;
    let write = VRING_DESC_F_WRITE as u16;
    // 0 -> 1 -> 0 -> ...
    let looping = [
        Descriptor::new(HEADER, 16, next, 1),
        Descriptor::new(STATUS, 1, next | write, 0),
    ];
    // 2 -> 3 -> (index past the table)
    let dangling = [
        Descriptor::new(HEADER, 16, next, 3),
        Descriptor::new(STATUS, 1, next | write, QUEUE_SIZE + 5),
    ];
    for (i, desc) in looping.iter().chain(&dangling).enumerate() {
        h.vq.desc_table()
            .store(i as u16, RawDescriptor::from(*desc))
            .unwrap();
    }
    for (slot, head) in [(0u16, 0u16), (1, 2)] {
        h.vq.avail()
            .ring()
            .ref_at(slot as usize)
            .unwrap()
            .store(head);
    }
    h.vq.avail().idx().store(2);
    h.block.process_queue();
    assert_eq!(h.used_idx(), 2);
    assert_eq!(h.last_used(), (2, 0));
    assert_eq!(h.status(), UNTOUCHED);
}

#[test]
fn head_index_past_the_table_stops_the_device() {
    let mem = test_mem();
    let mut h = Harness::new(&mem, false);
    h.vq.avail().ring().ref_at(0).unwrap().store(QUEUE_SIZE + 1);
    h.vq.avail().idx().store(1);
    h.block.process_queue();
    assert_eq!(h.used_idx(), 0);
}

#[test]
fn broken_avail_index_stops_the_device_until_reset() {
    let mem = test_mem();
    let mut h = Harness::new(&mem, false);
    h.request(VIRTIO_BLK_T_FLUSH, 0, None);
    // The driver claims far more requests than the ring holds.
    h.vq.avail().idx().store(QUEUE_SIZE + 10);
    h.block.process_queue();
    assert_eq!(h.used_idx(), 0);
    // Even once the index looks sane again, the device stays stopped.
    h.vq.avail().idx().store(1);
    h.block.process_queue();
    assert_eq!(h.used_idx(), 0);
    assert_eq!(h.interrupts(), 0);
    // A driver reset brings it back.
    assert!(h.block.reset());
    assert!(!h.block.is_activated());
    h.block.set_acked_features(h.block.avail_features());
    h.block
        .activate(mem.clone(), vec![h.vq.create_queue().unwrap()])
        .unwrap();
    h.block.process_queue();
    assert_eq!(h.last_used(), (0, 1));
    assert_eq!(h.status(), OK);
}

#[test]
fn features_and_identity() {
    let block = Block::new(temp_disk(DISK_LEN), false, "d".into(), interrupt()).unwrap();
    assert_eq!(block.device_type(), 2);
    assert_eq!(block.queue_max_sizes(), &[256]);
    assert_eq!(block.queue_events().len(), 1);
    assert_eq!(
        block.avail_features(),
        VIRTIO_F_VERSION_1 | 1 << VIRTIO_BLK_F_FLUSH | 1 << VIRTIO_BLK_F_SEG_MAX
    );
    assert!(!block.is_activated());
}

#[test]
fn config_space() {
    let mut block = Block::new(temp_disk(DISK_LEN), false, "d".into(), interrupt()).unwrap();
    let read = |block: &Block, offset: u64, len: usize| {
        let mut data = vec![0xaa; len];
        block.read_config(offset, &mut data);
        data
    };
    assert_eq!(read(&block, 0, 8), DISK_SECTORS.to_le_bytes());
    assert_eq!(read(&block, 0, 4), [8, 0, 0, 0]);
    assert_eq!(read(&block, 4, 4), [0; 4]);
    // size_max is not offered; seg_max leaves room for header and status.
    assert_eq!(read(&block, 8, 4), [0; 4]);
    assert_eq!(read(&block, 12, 4), 254u32.to_le_bytes());
    assert_eq!(read(&block, 14, 4), [0, 0, 0, 0]);
    assert_eq!(read(&block, 16, 8), [0; 8]);
    assert_eq!(read(&block, u64::MAX, 4), [0; 4]);
    block.write_config(0, &[1; 8]);
    assert_eq!(read(&block, 0, 8), DISK_SECTORS.to_le_bytes());
}

#[test]
fn config_space_counts_whole_sectors() {
    let block = Block::new(temp_disk(512 * 3 + 511), true, "d".into(), interrupt()).unwrap();
    let mut capacity = [0; 8];
    block.read_config(0, &mut capacity);
    assert_eq!(u64::from_le_bytes(capacity), 3);
}

#[test]
fn constructor_refusals() {
    for len in [0, 511] {
        let err = Block::new(temp_disk(len), false, "d".into(), interrupt()).unwrap_err();
        assert!(matches!(err, BlockError::TooSmall(l) if l == len), "{err}");
    }
    let (socket, _peer) = UnixStream::pair().unwrap();
    let socket = File::from(std::os::fd::OwnedFd::from(socket));
    let err = Block::new(socket, false, "d".into(), interrupt()).unwrap_err();
    assert!(matches!(err, BlockError::NotSeekable(_)), "{err}");
    let err = Block::new(temp_disk(512), false, "x".repeat(21), interrupt()).unwrap_err();
    assert!(matches!(err, BlockError::IdTooLong(_)), "{err}");
    assert!(Block::new(temp_disk(512), false, "x".repeat(20), interrupt()).is_ok());
}

#[test]
fn activate_wants_one_queue() {
    let mem = test_mem();
    let vq = MockSplitQueue::new(&mem, QUEUE_SIZE);
    let mut block = Block::new(temp_disk(DISK_LEN), false, "d".into(), interrupt()).unwrap();
    let queues = vec![vq.create_queue().unwrap(), vq.create_queue().unwrap()];
    let err = block.activate(mem.clone(), queues).unwrap_err();
    assert!(matches!(err, ActivateError::QueueCount { got: 2, want: 1 }));
    assert!(!block.is_activated());
}

#[test]
fn event_loop_runs_the_queue_only_once_active() {
    let mem = test_mem();
    // The harness plays the driver; a second device, not yet active, serves
    // the same ring through the event loop.
    let mut h = Harness::new(&mem, false);
    let vq = MockSplitQueue::new(&mem, QUEUE_SIZE);
    let block = Block::new(temp_disk(DISK_LEN), false, "d".into(), interrupt()).unwrap();
    let block = Arc::new(Mutex::new(block));
    let mut event_manager = EventManager::<Arc<Mutex<Block>>>::new().unwrap();
    event_manager.add_subscriber(block.clone());

    h.request(VIRTIO_BLK_T_IN, 1, Some(D::W(DATA, 512)));
    // A kick before activation is drained and ignored.
    lock(&block).queue_events()[0].write(1).unwrap();
    assert_eq!(event_manager.run_with_timeout(100).unwrap(), 1);
    assert_eq!(event_manager.run_with_timeout(0).unwrap(), 0);
    assert_eq!(h.used_idx(), 0);

    // Activation looks at what the driver made available before.
    {
        let mut block = lock(&block);
        let features = block.avail_features();
        block.set_acked_features(features);
        block
            .activate(mem.clone(), vec![vq.create_queue().unwrap()])
            .unwrap();
    }
    assert_eq!(event_manager.run_with_timeout(100).unwrap(), 1);
    assert_eq!(h.last_used(), (0, 513));
    assert_eq!(h.guest_bytes(DATA, 512), pattern(512, 512));
    assert_eq!(lock(&block).interrupt().irqfd().read().unwrap(), 1);
}

#[test]
fn drive_specs() {
    assert_eq!(
        parse_drive_spec("disk.img").unwrap(),
        (PathBuf::from("disk.img"), false)
    );
    assert_eq!(
        parse_drive_spec("/var/lib/ember/root.ext4,ro").unwrap(),
        (PathBuf::from("/var/lib/ember/root.ext4"), true)
    );
    for spec in ["", ",ro"] {
        let err = parse_drive_spec(spec).unwrap_err();
        assert!(matches!(err, BlockError::SpecNoPath(_)), "{spec}: {err}");
    }
    for (spec, bad) in [
        ("d.img,rw", "rw"),
        ("d.img,ro,cache", "cache"),
        ("d.img,", ""),
    ] {
        match parse_drive_spec(spec) {
            Err(BlockError::SpecOption { option, .. }) => assert_eq!(option, bad, "{spec}"),
            other => panic!("{spec}: {other:?}"),
        }
    }
}
