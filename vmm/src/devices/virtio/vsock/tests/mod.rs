//! Tests driving the device as a guest driver would: three mock split
//! queues in real guest memory, a real event loop, real Unix sockets.

mod connections;
mod malformed;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::packet::{op, Header, HEADER_SIZE, TYPE_STREAM};
use super::{bind_listener, Vsock, VsockTimeouts, VSOCK_HOST_CID};
use crate::devices::bus::lock;
use crate::devices::virtio::{VirtioDevice, VirtioInterrupt};

pub const GUEST_CID: u64 = 3;
const MEM_SIZE: usize = 0x100_0000;
const QUEUE_LEN: u16 = 256;
const QUEUE_ADDRS: [u64; 3] = [0x0, 0x1_0000, 0x2_0000];
const BUF_START: u64 = 0x10_0000;
/// Where each used ring lives, from its queue's base. The mock's own used
/// ring overlaps the second half of its avail ring for queues of 256.
const USED_OFFSET: u64 = 0x8000;
pub const RX_DATA_LEN: u32 = 4096;
pub const RX: usize = 0;
pub const TX: usize = 1;
pub const EV: usize = 2;

/// A scratch directory removed at the end of the test.
pub struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "ember-vsock-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

/// The guest driver: owns the driver side of the queues and the event loop.
pub struct Guest<'a> {
    pub mem: &'a GuestMemoryMmap,
    queues: Vec<MockSplitQueue<'a, GuestMemoryMmap>>,
    next_desc: [u16; 3],
    used_seen: [u16; 3],
    next_buf: u64,
    /// RX chain head → (header address, data address).
    rx_bufs: HashMap<u16, (u64, u64)>,
    em: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>,
    pub dev: Arc<Mutex<Vsock>>,
    pub uds: PathBuf,
    /// Holds the sockets; removed with the guest.
    _dir: TempDir,
}

impl<'a> Guest<'a> {
    pub fn new(mem: &'a GuestMemoryMmap) -> Self {
        let dir = TempDir::new();
        let uds = dir.0.join("v.sock");
        let listener = bind_listener(&uds).unwrap();
        let irq = VirtioInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap());
        let mut vsock = Vsock::new(GUEST_CID, uds.clone(), listener, irq).unwrap();
        vsock.set_timeouts(VsockTimeouts {
            connect_line: Duration::from_millis(100),
            request: Duration::from_millis(100),
            shutdown: Duration::from_millis(100),
        });
        let queues: Vec<_> = QUEUE_ADDRS
            .iter()
            .map(|&a| MockSplitQueue::create(mem, GuestAddress(a), QUEUE_LEN))
            .collect();
        let dev = Arc::new(Mutex::new(vsock));
        let mut em = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().unwrap();
        em.add_subscriber(dev.clone());
        let qs: Vec<Queue> = queues
            .iter()
            .zip(QUEUE_ADDRS)
            .map(|(q, base)| {
                let mut q: Queue = q.create_queue().unwrap();
                let used = base + USED_OFFSET;
                q.set_used_ring_address(Some(used as u32), Some((used >> 32) as u32));
                q
            })
            .collect();
        lock(&dev).activate(mem.clone(), qs).unwrap();
        let mut g = Self {
            mem,
            queues,
            next_desc: [0; 3],
            used_seen: [0; 3],
            next_buf: BUF_START,
            rx_bufs: HashMap::new(),
            em,
            dev,
            uds,
            _dir: dir,
        };
        g.run();
        g
    }

    pub fn alloc(&mut self, len: u64) -> u64 {
        let addr = self.next_buf;
        self.next_buf += len.next_multiple_of(16);
        assert!(
            self.next_buf < MEM_SIZE as u64,
            "test ran out of buffer memory"
        );
        addr
    }

    /// Puts one chain on queue `q` (descriptors linked in order) and returns its head.
    pub fn add_chain(&mut self, q: usize, descs: &[(u64, u32, u16)]) -> u16 {
        let mut first = self.next_desc[q];
        if usize::from(first) + descs.len() > usize::from(QUEUE_LEN) {
            first = 0; // chains never straddle the end of the table
        }
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, flags))| {
                let idx = (first + i as u16) % QUEUE_LEN;
                let last = i + 1 == descs.len();
                let flags = if last {
                    flags
                } else {
                    flags | VRING_DESC_F_NEXT as u16
                };
                RawDescriptor::from(Descriptor::new(addr, len, flags, (idx + 1) % QUEUE_LEN))
            })
            .collect();
        // Written by hand rather than with `add_desc_chains`, which does not
        // wrap around the avail ring.
        let mq = &self.queues[q];
        for (i, d) in raw.into_iter().enumerate() {
            mq.desc_table().store(first + i as u16, d).unwrap();
        }
        let avail_idx = mq.avail().idx().load();
        mq.avail()
            .ring()
            .ref_at(usize::from(avail_idx % QUEUE_LEN))
            .unwrap()
            .store(first);
        mq.avail().idx().store(avail_idx.wrapping_add(1));
        self.next_desc[q] = (first + descs.len() as u16) % QUEUE_LEN;
        first
    }

    pub fn kick(&self, q: usize) {
        lock(&self.dev).queue_events()[q].write(1).unwrap();
    }

    /// Gives the device `n` RX buffers (header + 4 KiB data).
    pub fn add_rx(&mut self, n: usize) {
        self.add_rx_sized(n, RX_DATA_LEN);
    }

    pub fn add_rx_sized(&mut self, n: usize, data_len: u32) {
        for _ in 0..n {
            let hdr = self.alloc(HEADER_SIZE as u64);
            let data = self.alloc(u64::from(data_len));
            let w = VRING_DESC_F_WRITE as u16;
            let head = self.add_chain(RX, &[(hdr, HEADER_SIZE as u32, w), (data, data_len, w)]);
            self.rx_bufs.insert(head, (hdr, data));
        }
        self.kick(RX);
    }

    /// Sends one packet on TX (header and data in separate descriptors).
    pub fn send(&mut self, hdr: Header, data: &[u8]) {
        let h = self.alloc(HEADER_SIZE as u64);
        self.mem
            .write_slice(&hdr.to_bytes(), GuestAddress(h))
            .unwrap();
        if data.is_empty() {
            self.add_chain(TX, &[(h, HEADER_SIZE as u32, 0)]);
        } else {
            let d = self.alloc(data.len() as u64);
            self.mem.write_slice(data, GuestAddress(d)).unwrap();
            self.add_chain(TX, &[(h, HEADER_SIZE as u32, 0), (d, data.len() as u32, 0)]);
        }
        self.kick(TX);
    }

    /// A header from guest port `src` to host port `dst`.
    pub fn hdr(&self, src: u32, dst: u32, op: u16) -> Header {
        Header {
            src_cid: GUEST_CID,
            dst_cid: VSOCK_HOST_CID,
            src_port: src,
            dst_port: dst,
            type_: TYPE_STREAM,
            op,
            buf_alloc: 1 << 20,
            ..Header::default()
        }
    }

    /// Runs the event loop until it has been idle for a moment.
    pub fn run(&mut self) {
        for _ in 0..200 {
            if self.em.run_with_timeout(30).unwrap() == 0 {
                return;
            }
        }
        panic!("the device never went idle");
    }

    /// Runs one round of the event loop (each ready source once).
    pub fn run_once(&mut self) {
        self.em.run_with_timeout(30).unwrap();
    }

    /// Runs the event loop for `d` at least.
    pub fn run_for(&mut self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            self.em.run_with_timeout(10).unwrap();
        }
        self.run();
    }

    /// New used elements of queue `q` since the last call: (head, len).
    pub fn used(&mut self, q: usize) -> Vec<(u16, u32)> {
        let used = GuestAddress(QUEUE_ADDRS[q] + USED_OFFSET);
        let idx: u16 = self.mem.read_obj(used.unchecked_add(2)).unwrap();
        let mut out = vec![];
        while self.used_seen[q] != idx {
            let slot = u64::from(self.used_seen[q] % QUEUE_LEN);
            let elem = used.unchecked_add(4 + 8 * slot);
            let id: u32 = self.mem.read_obj(elem).unwrap();
            let len: u32 = self.mem.read_obj(elem.unchecked_add(4)).unwrap();
            out.push((id as u16, len));
            self.used_seen[q] = self.used_seen[q].wrapping_add(1);
        }
        out
    }

    /// Packets the device wrote into RX buffers since the last call.
    pub fn recv(&mut self) -> Vec<(Header, Vec<u8>)> {
        self.used(RX)
            .into_iter()
            .filter_map(|(head, len)| {
                let Some((h, d)) = self.rx_bufs.remove(&head) else {
                    panic!("device used RX chain {head} it was never given");
                };
                if len == 0 {
                    return None;
                }
                let mut raw = [0u8; HEADER_SIZE];
                self.mem.read_slice(&mut raw, GuestAddress(h)).unwrap();
                let hdr = Header::from_bytes(&raw);
                assert_eq!(len as usize, HEADER_SIZE + hdr.len as usize);
                let mut data = vec![0; hdr.len as usize];
                self.mem.read_slice(&mut data, GuestAddress(d)).unwrap();
                Some((hdr, data))
            })
            .collect()
    }

    /// Connects a host client and sends `CONNECT <port>`.
    pub fn host_client(&mut self, port: u32) -> UnixStream {
        let mut s = UnixStream::connect(&self.uds).unwrap();
        writeln!(s, "CONNECT {port}").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s
    }

    /// Opens a host-initiated connection to guest port `port`; returns the
    /// client and the host-side port.
    pub fn host_connect(&mut self, port: u32) -> (UnixStream, u32) {
        let mut client = self.host_client(port);
        self.add_rx(1);
        self.run();
        let pkts = self.recv();
        assert_eq!(pkts.len(), 1, "{pkts:?}");
        let req = pkts[0].0;
        assert_eq!(req.op, op::REQUEST);
        assert_eq!((req.src_cid, req.dst_cid), (VSOCK_HOST_CID, GUEST_CID));
        assert_eq!(req.dst_port, port);
        let local = req.src_port;
        self.send(self.hdr(port, local, op::RESPONSE), &[]);
        self.run();
        let line = read_line(&mut client);
        assert_eq!(line, format!("OK {local}\n"));
        (client, local)
    }
}

/// Reads bytes up to and including `\n`.
pub fn read_line(s: &mut UnixStream) -> String {
    let mut line = vec![];
    let mut b = [0u8; 1];
    while s.read(&mut b).unwrap() == 1 {
        line.push(b[0]);
        if b[0] == b'\n' {
            break;
        }
    }
    String::from_utf8(line).unwrap()
}

pub fn ops(pkts: &[(Header, Vec<u8>)]) -> Vec<u16> {
    pkts.iter().map(|(h, _)| h.op).collect()
}

#[test]
fn config_space_is_the_guest_cid() {
    let mem = memory();
    let g = Guest::new(&mem);
    let dev = lock(&g.dev);
    let mut cfg = [0xffu8; 12];
    dev.read_config(0, &mut cfg);
    assert_eq!(cfg, [3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let mut hi = [0xffu8; 4];
    dev.read_config(4, &mut hi);
    assert_eq!(hi, [0; 4]);
    assert_eq!(dev.device_type(), 19);
    assert_eq!(dev.queue_max_sizes(), &[256, 256, 256]);
}

#[test]
fn bind_listener_refuses_live_long_and_replaces_stale() {
    let dir = TempDir::new();
    let long = dir.0.join("x".repeat(120));
    assert!(matches!(
        bind_listener(&long),
        Err(super::VsockError::PathTooLong { .. })
    ));
    let path = dir.0.join("s");
    let live = bind_listener(&path).unwrap();
    assert!(matches!(
        bind_listener(&path),
        Err(super::VsockError::InUse(_))
    ));
    drop(live); // the socket file stays behind, stale
    let _again = bind_listener(&path).unwrap();
    let file = dir.0.join("f");
    std::fs::write(&file, b"not a socket").unwrap();
    assert!(matches!(
        bind_listener(&file),
        Err(super::VsockError::InUse(_))
    ));
}

#[test]
fn reserved_cids_are_refused() {
    let dir = TempDir::new();
    let path = dir.0.join("s");
    let l = bind_listener(&path).unwrap();
    let irq = VirtioInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap());
    assert!(Vsock::new(2, path, l, irq).is_err());
}

#[test]
fn dropping_the_device_unlinks_the_socket() {
    let mem = memory();
    let g = Guest::new(&mem);
    let uds = g.uds.clone();
    assert!(uds.exists());
    drop(g);
    assert!(!Path::new(&uds).exists());
}

#[test]
fn transport_reset_event_reaches_the_guest() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let (_client, _) = g.host_connect(52);
    assert_eq!(lock(&g.dev).connection_count(), 1);
    let buf = g.alloc(8);
    let head = g.add_chain(EV, &[(buf, 8, VRING_DESC_F_WRITE as u16)]);
    g.kick(EV);
    g.run();
    lock(&g.dev).send_transport_reset();
    g.run();
    assert_eq!(g.used(EV), vec![(head, 4)]);
    let id: u32 = mem.read_obj(GuestAddress(buf)).unwrap();
    assert_eq!(id, 0);
    assert_eq!(lock(&g.dev).connection_count(), 0);
}

#[test]
fn a_driver_reset_closes_every_connection_and_stops_the_device() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let (mut client, _) = g.host_connect(53);
    assert!(lock(&g.dev).reset());
    g.run();
    assert!(!lock(&g.dev).is_activated());
    assert_eq!(lock(&g.dev).connection_count(), 0);
    client
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut byte = [0u8];
    assert_eq!(
        std::io::Read::read(&mut client, &mut byte).unwrap(),
        0,
        "the host side must see the connection end"
    );
}
