//! A guest that breaks the rules: nothing panics, nothing leaks, bad
//! packets are dropped or answered with RST, and the device keeps working.

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use vm_memory::{Address, Bytes, GuestAddress};

use super::super::device::CHAINS_PER_EVENT;
use super::super::packet::{op, HEADER_SIZE};
use super::{memory, ops, Guest, EV, RX, TX};
use crate::devices::bus::lock;

/// The device still answers a valid packet (a connect to nothing → RST).
fn still_works(g: &mut Guest) {
    g.add_rx(1);
    g.send(g.hdr(1, 999, op::REQUEST), &[]);
    g.run();
    assert_eq!(ops(&g.recv()), [op::RST]);
}

#[test]
fn unknown_op_and_type_get_rst() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    g.add_rx(4);
    g.send(g.hdr(1, 2, 99), &[]);
    let mut dgram = g.hdr(1, 3, op::REQUEST);
    dgram.type_ = 2;
    g.send(dgram, &[]);
    g.run();
    let pkts = g.recv();
    assert_eq!(ops(&pkts), [op::RST, op::RST]);
    assert_eq!(pkts[1].0.src_port, 3);
    // Stray packets for connections that do not exist get RST, RSTs nothing.
    g.send(g.hdr(1, 4, op::RW).with_len(2), b"hi");
    g.send(g.hdr(1, 5, op::RST), &[]);
    g.run();
    assert_eq!(ops(&g.recv()), [op::RST]);
}

#[test]
fn wrong_cids_are_dropped() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    g.add_rx(4);
    let mut spoofed = g.hdr(1, 999, op::REQUEST);
    spoofed.src_cid = 7;
    g.send(spoofed, &[]);
    let mut elsewhere = g.hdr(1, 999, op::REQUEST);
    elsewhere.dst_cid = 4;
    g.send(elsewhere, &[]);
    g.run();
    assert_eq!(g.used(TX).len(), 2);
    assert!(g.recv().is_empty());
    still_works(&mut g);
}

#[test]
fn bad_tx_chains_are_dropped() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    g.add_rx(4);
    let h = 0x80_0000;
    let d = 0x80_1000;
    // len larger than the data descriptor.
    mem.write_slice(
        &g.hdr(1, 999, op::RW).with_len(500).to_bytes(),
        GuestAddress(h),
    )
    .unwrap();
    g.add_chain(TX, &[(h, HEADER_SIZE as u32, 0), (d, 100, 0)]);
    // len above the 64 KiB maximum.
    let h2 = 0x80_2000;
    mem.write_slice(
        &g.hdr(1, 999, op::RW).with_len(100_000).to_bytes(),
        GuestAddress(h2),
    )
    .unwrap();
    g.add_chain(TX, &[(h2, HEADER_SIZE as u32, 0), (0x90_0000, 100_000, 0)]);
    // Header outside guest memory.
    g.add_chain(TX, &[(0xffff_0000_0000, HEADER_SIZE as u32, 0)]);
    // Data outside guest memory.
    let h3 = 0x80_3000;
    mem.write_slice(
        &g.hdr(1, 999, op::RW).with_len(16).to_bytes(),
        GuestAddress(h3),
    )
    .unwrap();
    g.add_chain(TX, &[(h3, HEADER_SIZE as u32, 0), (u64::MAX - 8, 16, 0)]);
    // Header descriptor too short, and a device-writable TX descriptor.
    g.add_chain(TX, &[(h, 8, 0)]);
    g.add_chain(TX, &[(h, HEADER_SIZE as u32, VRING_DESC_F_WRITE as u16)]);
    g.kick(TX);
    g.run();
    let used = g.used(TX);
    assert_eq!(used.len(), 6);
    assert!(used.iter().all(|&(_, len)| len == 0));
    assert!(g.recv().is_empty());
    still_works(&mut g);
}

#[test]
fn a_descriptor_loop_ends() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let h = 0x80_0000;
    mem.write_slice(
        &g.hdr(1, 999, op::RW).with_len(16).to_bytes(),
        GuestAddress(h),
    )
    .unwrap();
    // Descriptor 0 → 1 → 0 → ...: a cycle the driver should never build.
    g.add_chain(TX, &[(h, HEADER_SIZE as u32, 0), (h, 16, 0)]);
    let next = VRING_DESC_F_NEXT as u16;
    let raw = RawDescriptor::from(Descriptor::new(h, 16, next, 0));
    g.queues[TX].desc_table().store(1, raw).unwrap();
    g.kick(TX);
    g.run();
    assert_eq!(g.used(TX).len(), 1);
}

#[test]
fn bad_rx_chains_are_skipped() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    // A read-only RX buffer, one outside memory, one with no data room.
    g.add_chain(
        RX,
        &[(0x80_0000, HEADER_SIZE as u32, 0), (0x80_1000, 4096, 0)],
    );
    let w = VRING_DESC_F_WRITE as u16;
    g.add_chain(
        RX,
        &[
            (0xffff_0000_0000, HEADER_SIZE as u32, w),
            (0x80_1000, 4096, w),
        ],
    );
    g.add_chain(RX, &[(0x80_0000, HEADER_SIZE as u32, w)]);
    g.send(g.hdr(1, 999, op::REQUEST), &[]);
    g.run();
    assert_eq!(g.used(RX).len(), 3);
    // The RST waits for a good buffer.
    g.add_rx(1);
    g.run();
    assert_eq!(ops(&g.recv()), [op::RST]);
}

#[test]
fn a_runaway_avail_index_stops_the_device() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let avail_idx = g.queues[TX].avail_addr().unchecked_add(2);
    mem.write_obj(1000u16, avail_idx).unwrap();
    g.kick(TX);
    g.run();
    assert!(lock(&g.dev).is_broken());
    // Further kicks are drained and ignored, without spinning or panicking.
    g.kick(RX);
    g.kick(EV);
    g.run();
    assert!(g.used(TX).is_empty());
}

#[test]
fn stray_rsts_are_bounded() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    // No RX buffers: RSTs pile up, but only up to the bound.
    for port in 0..300 {
        g.send(g.hdr(port, 999, op::REQUEST), &[]);
        if port % 64 == 0 {
            g.run();
        }
    }
    g.run();
    let mut n = 0;
    // 300 buffers (the table holds 128 two-descriptor chains at a time).
    for _ in 0..3 {
        g.add_rx(100);
        g.run();
        n += g.recv().len();
    }
    assert_eq!(n, 256, "RSTs kept for the guest");
}

/// One kick runs a bounded batch of TX chains; the rest follows on later
/// rounds of the event loop, so other devices and sockets get their turn.
#[test]
fn one_kick_runs_a_bounded_batch() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let n = 3 * CHAINS_PER_EVENT;
    for port in 0..n as u32 {
        // Packets for no connection: each gets an RST.
        let hdr = g.hdr(port, 999, op::RW).with_len(0);
        let h = g.alloc(HEADER_SIZE as u64);
        mem.write_slice(&hdr.to_bytes(), GuestAddress(h)).unwrap();
        g.add_chain(TX, &[(h, HEADER_SIZE as u32, 0)]);
    }
    g.kick(TX);
    g.run_once();
    assert_eq!(g.used(TX).len(), CHAINS_PER_EVENT, "first round");
    g.run();
    assert_eq!(g.used(TX).len(), n - CHAINS_PER_EVENT, "later rounds");
    assert!(!lock(&g.dev).is_broken());
    still_works(&mut g);
}
