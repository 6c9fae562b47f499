//! The attacks, one function each. Every attack starts from a reset device
//! and leaves it reset; none asserts anything about the VMM (the host side
//! watches it), but each prints what the device showed.

use std::time::Duration;

use crate::hw::{activate, reg, Dev, Ram, Rings, Rng, F_INDIRECT, F_NEXT, F_WRITE};
use crate::hw::{S_ACK, S_DRIVER, S_DRIVER_OK, S_FEATURES_OK, S_NEEDS_RESET};

/// vsock queues and header fields.
const VSOCK_RX: usize = 0;
const VSOCK_TX: usize = 1;
const HDR_LEN: u32 = 44;
const OP_REQUEST: u16 = 1;
const OP_RST: u16 = 3;
const OP_RW: u16 = 5;
const OP_CREDIT_UPDATE: u16 = 6;
const TYPE_STREAM: u16 = 1;
const GUEST_CID: u64 = 3;
const HOST_CID: u64 = 2;

/// Where attack buffers go (after the rings and indirect tables).
fn buf(ram: &Ram, n: u64) -> u64 {
    ram.phys + 0x10_0000 + n * 0x1000
}

fn tables(ram: &Ram) -> u64 {
    ram.phys + 0x8_0000
}

/// The queue the attacks post on: TX for vsock, the only queue for block.
fn attack_queue(dev: &Dev) -> usize {
    if dev.id == 19 {
        VSOCK_TX
    } else {
        0
    }
}

/// Bad queue configurations: zero, odd, too large sizes; misaligned rings;
/// rings outside guest memory or wrapping the address space.
pub fn bad_queue_configs(dev: &Dev, ram: &Ram) {
    for size in [0u32, 1, 3, 100, 255, 257, 512, 1024, 32768, 65535, u32::MAX] {
        dev.negotiate();
        for q in 0..dev.queues {
            let r = Rings::for_queue(ram, q, 256);
            dev.queue(q, size, r.desc, r.avail, r.used);
        }
        println!("  size {size}: status {:#x}", dev.go());
        dev.reset();
    }
    let p = ram.phys;
    let layouts: [(&str, u64, u64, u64); 5] = [
        ("misaligned", p + 1, p + 0x4001, p + 0x8002),
        ("outside memory", 0x40_0000_0000, p + 0x4000, p + 0x8000),
        ("used outside", p, p + 0x4000, 0xffff_ffff_0000),
        ("wrapping", u64::MAX - 0x100, u64::MAX - 0x10, u64::MAX - 8),
        ("in the MMIO gap", 0xd000_0000, 0xd000_0000, 0xfee0_0000),
    ];
    for (name, desc, avail, used) in layouts {
        dev.negotiate();
        for q in 0..dev.queues {
            dev.queue(q, 256, desc, avail, used);
        }
        println!("  rings {name}: status {:#x}", dev.go());
        dev.reset();
    }
    // DRIVER_OK without FEATURES_OK, features the device never offered,
    // and status bits cleared without a reset.
    dev.reset();
    dev.w(reg::STATUS, S_ACK | S_DRIVER | S_DRIVER_OK);
    dev.reset();
    dev.w(reg::STATUS, S_ACK | S_DRIVER);
    dev.w(reg::DRIVER_FEATURES_SEL, 0);
    dev.w(reg::DRIVER_FEATURES, 0xffff_ffff);
    dev.w(reg::STATUS, S_ACK | S_DRIVER | S_FEATURES_OK);
    dev.w(reg::STATUS, S_ACK);
    dev.reset();
}

/// One chain per case on the attack queue of an active device, each after
/// a fresh activation: descriptors outside memory, address/length overflow,
/// loops, out-of-range `next`, indirect tables, a runaway avail index.
pub fn bad_descriptors(dev: &Dev, ram: &Ram) {
    let q = attack_queue(dev);
    let b = buf(ram, 0);
    let t = tables(ram);
    type Case = (&'static str, fn(&Ram, &Rings, u64, u64));
    let cases: [Case; 14] = [
        ("descriptor outside memory", |ram, r, _, _| {
            ram.desc(r.desc, 0, 0x40_0000_0000, 4096, 0, 0);
        }),
        ("address + length overflow", |ram, r, _, _| {
            ram.desc(r.desc, 0, u64::MAX - 16, 4096, 0, 0);
        }),
        ("length past the end of RAM", |ram, r, b, _| {
            ram.desc(r.desc, 0, b, u32::MAX, 0, 0);
        }),
        ("zero length", |ram, r, b, _| {
            ram.desc(r.desc, 0, b, 0, 0, 0);
        }),
        ("looped chain", |ram, r, b, _| {
            ram.desc(r.desc, 0, b, 64, F_NEXT, 1);
            ram.desc(r.desc, 1, b, 64, F_NEXT, 0);
        }),
        ("self loop", |ram, r, b, _| {
            ram.desc(r.desc, 0, b, 64, F_NEXT | F_WRITE, 0);
        }),
        ("next out of range", |ram, r, b, _| {
            ram.desc(r.desc, 0, b, 64, F_NEXT, 300);
        }),
        ("next = 65535", |ram, r, b, _| {
            ram.desc(r.desc, 0, b, 64, F_NEXT, u16::MAX);
        }),
        ("indirect table of length 0", |ram, r, _, t| {
            ram.desc(r.desc, 0, t, 0, F_INDIRECT, 0);
        }),
        ("indirect table of odd length", |ram, r, _, t| {
            ram.desc(r.desc, 0, t, 17, F_INDIRECT, 0);
        }),
        ("indirect table outside memory", |ram, r, _, _| {
            ram.desc(r.desc, 0, 0x40_0000_0000, 4096, F_INDIRECT, 0);
        }),
        ("nested indirect", |ram, r, b, t| {
            ram.desc(r.desc, 0, t, 32, F_INDIRECT, 0);
            ram.desc(t, 0, t, 32, F_INDIRECT | F_NEXT, 1);
            ram.desc(t, 1, b, 64, 0, 0);
        }),
        ("looped indirect", |ram, r, b, t| {
            ram.desc(r.desc, 0, t, 32, F_INDIRECT, 0);
            ram.desc(t, 0, b, 64, F_NEXT, 1);
            ram.desc(t, 1, b, 64, F_NEXT, 0);
        }),
        ("huge indirect table", |ram, r, _, t| {
            ram.desc(r.desc, 0, t, 0x10_0000, F_INDIRECT, 0);
        }),
    ];
    for (name, write) in cases {
        let (status, rings) = activate(dev, ram, 256);
        let r = rings[q];
        ram.zero(t, 0x1000);
        write(ram, &r, b, t);
        r.publish(ram, 0);
        dev.notify(q as u32);
        let used = r.wait_used(ram, Duration::from_millis(200));
        println!(
            "  {name}: status {status:#x} -> {:#x}, used {used}",
            dev.status()
        );
        dev.reset();
    }
    // A runaway avail index: thousands of chains that cannot exist.
    let (_, rings) = activate(dev, ram, 256);
    ram.w16(rings[q].avail + 2, 5000);
    dev.notify(q as u32);
    std::thread::sleep(Duration::from_millis(100));
    println!("  runaway avail index: status {:#x}", dev.status());
    // And a head index outside the table.
    let (_, rings) = activate(dev, ram, 256);
    ram.w16(rings[q].avail + 4, 999);
    ram.w16(rings[q].avail + 2, 1);
    dev.notify(q as u32);
    std::thread::sleep(Duration::from_millis(100));
    println!("  head out of range: status {:#x}", dev.status());
    dev.reset();
}

/// A vsock header.
#[allow(clippy::too_many_arguments)]
fn header(
    src_cid: u64,
    dst_cid: u64,
    src_port: u32,
    dst_port: u32,
    len: u32,
    type_: u16,
    op: u16,
    buf_alloc: u32,
    fwd_cnt: u32,
) -> [u8; 44] {
    let mut h = [0u8; 44];
    h[0..8].copy_from_slice(&src_cid.to_le_bytes());
    h[8..16].copy_from_slice(&dst_cid.to_le_bytes());
    h[16..20].copy_from_slice(&src_port.to_le_bytes());
    h[20..24].copy_from_slice(&dst_port.to_le_bytes());
    h[24..28].copy_from_slice(&len.to_le_bytes());
    h[28..30].copy_from_slice(&type_.to_le_bytes());
    h[30..32].copy_from_slice(&op.to_le_bytes());
    // flags (32..36) stay 0.
    h[36..40].copy_from_slice(&buf_alloc.to_le_bytes());
    h[40..44].copy_from_slice(&fwd_cnt.to_le_bytes());
    h
}

/// The vsock driver side: RX buffers posted, TX packets sent one chain each.
struct VsockDriver<'a> {
    dev: &'a Dev,
    ram: &'a Ram,
    rings: Vec<Rings>,
    sent: u64,
    rx_seen: u16,
}

impl<'a> VsockDriver<'a> {
    fn new(dev: &'a Dev, ram: &'a Ram) -> Option<Self> {
        let (status, rings) = activate(dev, ram, 256);
        if status & S_NEEDS_RESET != 0 {
            println!("  vsock refused activation: status {status:#x}");
            return None;
        }
        let d = Self {
            dev,
            ram,
            rings,
            sent: 0,
            rx_seen: 0,
        };
        d.refill_rx();
        Some(d)
    }

    /// Posts 128 RX buffers (header + 4 KiB, write-only), heads 0, 2, ...
    fn refill_rx(&self) {
        let r = self.rings[VSOCK_RX];
        for i in 0..128u16 {
            let b = buf(self.ram, 1000 + u64::from(i) * 2);
            self.ram
                .desc(r.desc, 2 * i, b, HDR_LEN, F_WRITE | F_NEXT, 2 * i + 1);
            self.ram
                .desc(r.desc, 2 * i + 1, b + 0x100, 4096, F_WRITE, 0);
            r.publish(self.ram, 2 * i);
        }
        self.dev.notify(VSOCK_RX as u32);
    }

    /// Sends `hdr` with `data` (its own descriptor when not empty).
    fn send(&mut self, hdr: &[u8; 44], data: &[u8]) {
        let r = self.rings[VSOCK_TX];
        let slot = (self.sent % 128) as u16;
        let b = buf(self.ram, 2 * u64::from(slot));
        self.ram.write(b, hdr);
        if data.is_empty() {
            self.ram.desc(r.desc, 2 * slot, b, HDR_LEN, 0, 0);
        } else {
            self.ram.write(b + 0x100, data);
            self.ram
                .desc(r.desc, 2 * slot, b, HDR_LEN, F_NEXT, 2 * slot + 1);
            self.ram
                .desc(r.desc, 2 * slot + 1, b + 0x100, data.len() as u32, 0, 0);
        }
        r.publish(self.ram, 2 * slot);
        self.dev.notify(VSOCK_TX as u32);
        self.sent += 1;
        if self.sent % 64 == 0 && !r.wait_used(self.ram, Duration::from_secs(2)) {
            println!("  vsock TX stalled after {} packets", self.sent);
        }
    }

    /// Ops of the packets the device put in RX buffers since the last call;
    /// the buffers are given back.
    fn received(&mut self) -> Vec<u16> {
        let r = self.rings[VSOCK_RX];
        let mut ops = Vec::new();
        while self.rx_seen != r.used_idx(self.ram) {
            let (id, _) = r.used_elem(self.ram, self.rx_seen);
            let b = buf(self.ram, 1000 + u64::from(id as u16));
            ops.push(self.ram.r16(b + 30));
            self.rx_seen = self.rx_seen.wrapping_add(1);
            r.publish(self.ram, id as u16);
        }
        self.dev.notify(VSOCK_RX as u32);
        ops
    }
}

/// Hostile vsock headers: spoofed and wrong CIDs, huge `len`, unknown ops
/// and types, credit overflow, packets for no connection, and a flood of
/// connections to arbitrary host ports (none of which is allowed). Then
/// proves the device still answers: a REQUEST gets its RST.
pub fn vsock_headers(dev: &Dev, ram: &Ram) {
    let Some(mut v) = VsockDriver::new(dev, ram) else {
        return;
    };
    let s = TYPE_STREAM;
    let cases: [[u8; 44]; 10] = [
        header(7, HOST_CID, 1, 5000, 0, s, OP_REQUEST, 4096, 0),
        header(HOST_CID, HOST_CID, 1, 5000, 0, s, OP_REQUEST, 4096, 0),
        header(GUEST_CID, 5, 1, 5000, 0, s, OP_REQUEST, 4096, 0),
        header(GUEST_CID, u64::MAX, 1, 5000, 0, s, OP_REQUEST, 4096, 0),
        header(GUEST_CID, HOST_CID, 1, 5000, u32::MAX, s, OP_RW, 4096, 0),
        header(GUEST_CID, HOST_CID, 1, 5000, 1000, s, OP_RW, 4096, 0),
        header(GUEST_CID, HOST_CID, 1, 5000, 0, s, 99, 4096, 0),
        header(GUEST_CID, HOST_CID, 1, 5000, 0, 7, OP_REQUEST, 4096, 0),
        header(
            GUEST_CID,
            HOST_CID,
            2,
            5000,
            0,
            s,
            OP_REQUEST,
            u32::MAX,
            u32::MAX,
        ),
        header(
            GUEST_CID,
            HOST_CID,
            2,
            5000,
            0,
            s,
            OP_CREDIT_UPDATE,
            0,
            u32::MAX,
        ),
    ];
    for hdr in &cases {
        v.send(hdr, b"0123456789");
    }
    // Connections to arbitrary host ports, a few thousand of them.
    for port in 0..2048u32 {
        let dst = if port % 2 == 0 {
            port
        } else {
            port.wrapping_mul(2_654_435_761)
        };
        v.send(
            &header(
                GUEST_CID,
                HOST_CID,
                10_000 + port,
                dst,
                0,
                s,
                OP_REQUEST,
                4096,
                0,
            ),
            &[],
        );
        if port % 100 == 0 {
            v.received();
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    v.received();
    // Still alive: one more REQUEST must come back as an RST.
    v.send(
        &header(GUEST_CID, HOST_CID, 4242, 9, 0, s, OP_REQUEST, 4096, 0),
        &[],
    );
    let mut alive = false;
    for _ in 0..200 {
        std::thread::sleep(Duration::from_millis(10));
        if v.received().contains(&OP_RST) {
            alive = true;
            break;
        }
    }
    println!("HOSTILE-VSOCK-ALIVE {alive}");
    dev.reset();
}

/// Twenty thousand queue kicks (in-kernel ioeventfds) and kicks of
/// queues that do not exist (each a trip to the VMM).
pub fn notify_storm(dev: &Dev, ram: &Ram) {
    let (status, _) = activate(dev, ram, 256);
    for i in 0..20_000u32 {
        dev.notify(i % dev.queues);
    }
    for i in 0..2_000u32 {
        dev.notify(3 + i % 1000);
    }
    println!("  status {status:#x} -> {:#x}", dev.status());
    dev.reset();
}

/// Hundreds of activations, each followed by a reset.
pub fn reset_storm(dev: &Dev, ram: &Ram) {
    for _ in 0..200 {
        activate(dev, ram, 256);
        dev.notify(0);
        dev.reset();
    }
    println!("  final status {:#x}", dev.status());
}

/// Random writes and reads of random widths anywhere in the register
/// window (config space included). Ring address registers only ever get
/// addresses inside the reserved range, so the device never scribbles on
/// the kernel's own memory (which would only crash this guest).
pub fn random_registers(dev: &Dev, ram: &Ram, seed: u64) {
    let mut rng = Rng(seed | 1);
    ram.zero(ram.phys, 0x3_0000);
    for _ in 0..20_000 {
        let x = rng.next();
        let off = x % 0x200;
        let width = 1 << (x >> 16 & 3);
        let mut value = rng.next();
        if (0x80..0xa8).contains(&(off & !3)) {
            value = if off & 4 == 0 {
                ram.phys + value % 0x3_0000
            } else {
                0
            };
        }
        if x >> 20 & 7 == 0 {
            dev.r_raw(off, width);
        } else {
            dev.w_raw(off, width, value);
        }
    }
    println!("  status {:#x}", dev.status());
    dev.reset();
}

/// Block requests that break the rules on an active block device: out of
/// range sectors, a status descriptor the device may not write, a request
/// header too short, data written to a read-only drive.
pub fn block_requests(dev: &Dev, ram: &Ram) {
    let (status, rings) = activate(dev, ram, 256);
    let r = rings[0];
    let b = buf(ram, 0);
    // (type, sector, header len, data len, status flags)
    let cases: [(u32, u64, u32, u32, u16); 6] = [
        (0, u64::MAX, 16, 512, F_WRITE),
        (0, u64::MAX / 512, 16, 512, F_WRITE),
        (1, 0, 16, 512, F_WRITE),
        (0, 0, 16, 512, 0),
        (0, 0, 3, 512, F_WRITE),
        (77, 0, 16, 512, F_WRITE),
    ];
    for (i, (kind, sector, hlen, dlen, sflags)) in cases.into_iter().enumerate() {
        let h = b + i as u64 * 0x3000;
        ram.w32(h, kind);
        ram.w32(h + 4, 0);
        ram.w64(h + 8, sector);
        let head = 3 * i as u16;
        let data_flags = if kind == 1 { 0 } else { F_WRITE };
        ram.desc(r.desc, head, h, hlen, F_NEXT, head + 1);
        ram.desc(
            r.desc,
            head + 1,
            h + 0x1000,
            dlen,
            data_flags | F_NEXT,
            head + 2,
        );
        ram.desc(r.desc, head + 2, h + 0x2000, 1, sflags, 0);
        r.publish(ram, head);
    }
    dev.notify(0);
    let used = r.wait_used(ram, Duration::from_secs(2));
    println!(
        "  status {status:#x} -> {:#x}, all used {used}",
        dev.status()
    );
    dev.reset();
}
