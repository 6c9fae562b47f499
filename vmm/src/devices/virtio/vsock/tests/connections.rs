//! Connection life cycles: opening from either side, data, credit, closing.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixListener;
use std::time::Duration;

use super::super::packet::{op, SHUTDOWN_RCV, SHUTDOWN_SEND};
use super::{memory, ops, Guest, GUEST_CID};
use crate::devices::bus::lock;
use vm_memory::{Bytes, GuestAddress};

#[test]
fn host_initiated_data_flows_both_ways() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let (mut client, local) = g.host_connect(1234);
    client.write_all(b"hello guest").unwrap();
    g.add_rx(2);
    g.run();
    let pkts = g.recv();
    assert_eq!(ops(&pkts), [op::RW]);
    let (hdr, data) = &pkts[0];
    assert_eq!((hdr.src_port, hdr.dst_port), (local, 1234));
    assert_eq!(data, b"hello guest");

    g.send(g.hdr(1234, local, op::RW).with_len(10), b"hello host");
    g.run();
    let mut buf = [0u8; 10];
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello host");
    assert_eq!(g.used(super::TX).len(), 2);
}

#[test]
fn host_initiated_refused_by_guest_rst_closes_the_client() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let mut client = g.host_client(77);
    g.add_rx(1);
    g.run();
    let req = g.recv()[0].0;
    assert_eq!(req.op, op::REQUEST);
    g.send(g.hdr(77, req.src_port, op::RST), &[]);
    g.run();
    let mut buf = [0u8; 8];
    assert_eq!(client.read(&mut buf).unwrap(), 0);
    assert_eq!(lock(&g.dev).connection_count(), 0);
}

#[test]
fn unanswered_request_times_out_with_rst() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let mut client = g.host_client(77);
    g.add_rx(2);
    g.run();
    assert_eq!(ops(&g.recv()), [op::REQUEST]);
    g.run_for(Duration::from_millis(150));
    assert_eq!(ops(&g.recv()), [op::RST]);
    let mut buf = [0u8; 8];
    assert_eq!(client.read(&mut buf).unwrap(), 0);
}

#[test]
fn silent_or_garbled_host_clients_are_closed() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let mut silent = std::os::unix::net::UnixStream::connect(&g.uds).unwrap();
    let mut garbled = std::os::unix::net::UnixStream::connect(&g.uds).unwrap();
    garbled.write_all(b"HELLO 5\n").unwrap();
    g.add_rx(1);
    g.run();
    let mut buf = [0u8; 8];
    assert_eq!(garbled.read(&mut buf).unwrap(), 0);
    g.run_for(Duration::from_millis(150));
    assert_eq!(silent.read(&mut buf).unwrap(), 0);
    assert!(g.recv().is_empty());
}

#[test]
fn guest_initiated_connects_to_the_port_socket() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let listener = UnixListener::bind(format!("{}_5000", g.uds.display())).unwrap();
    lock(&g.dev).allow_host_ports([5000]);
    g.add_rx(2);
    g.send(g.hdr(40000, 5000, op::REQUEST), &[]);
    g.run();
    let pkts = g.recv();
    assert_eq!(ops(&pkts), [op::RESPONSE]);
    let hdr = pkts[0].0;
    assert_eq!(
        (hdr.src_port, hdr.dst_port, hdr.dst_cid),
        (5000, 40000, GUEST_CID)
    );
    assert!(hdr.buf_alloc > 0);
    let (mut host, _) = listener.accept().unwrap();

    g.send(g.hdr(40000, 5000, op::RW).with_len(4), b"ping");
    g.run();
    let mut buf = [0u8; 4];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    host.write_all(b"pong").unwrap();
    g.run();
    let pkts = g.recv();
    assert_eq!(ops(&pkts), [op::RW]);
    assert_eq!(pkts[0].1, b"pong");
}

/// Host ports are closed unless allowed: a live listener on a port not in
/// the list never sees the connection; the guest gets an RST, counted.
#[test]
fn guest_connects_reach_only_allowed_host_ports() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let open = UnixListener::bind(format!("{}_5000", g.uds.display())).unwrap();
    let closed = UnixListener::bind(format!("{}_5001", g.uds.display())).unwrap();
    closed.set_nonblocking(true).unwrap();
    open.set_nonblocking(true).unwrap();
    // Default: nothing allowed, not even a port with a listener.
    g.add_rx(8);
    g.send(g.hdr(40000, 5000, op::REQUEST), &[]);
    g.run();
    assert_eq!(ops(&g.recv()), [op::RST]);
    assert!(open.accept().is_err(), "a port not allowed was connected");
    lock(&g.dev).allow_host_ports([5000]);
    for port in [5001, 0, 1, 22, u32::MAX] {
        g.send(g.hdr(40001, port, op::REQUEST), &[]);
    }
    g.send(g.hdr(40002, 5000, op::REQUEST), &[]);
    g.run();
    let pkts = g.recv();
    assert_eq!(
        ops(&pkts),
        [op::RST, op::RST, op::RST, op::RST, op::RST, op::RESPONSE]
    );
    assert!(closed.accept().is_err(), "port 5001 is not allowed");
    assert!(open.accept().is_ok(), "port 5000 is allowed");
    assert_eq!(lock(&g.dev).refused_connections(), 6);
    assert_eq!(lock(&g.dev).connection_count(), 1);
}

#[test]
fn guest_connect_to_a_missing_socket_is_reset() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    lock(&g.dev).allow_host_ports([5001]);
    g.add_rx(1);
    g.send(g.hdr(40000, 5001, op::REQUEST), &[]);
    g.run();
    let pkts = g.recv();
    assert_eq!(ops(&pkts), [op::RST]);
    assert_eq!((pkts[0].0.src_port, pkts[0].0.dst_port), (5001, 40000));
    assert_eq!(lock(&g.dev).connection_count(), 0);
}

#[test]
fn host_to_guest_data_stops_at_the_guest_credit() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let listener = UnixListener::bind(format!("{}_6000", g.uds.display())).unwrap();
    lock(&g.dev).allow_host_ports([6000]);
    let mut req = g.hdr(41000, 6000, op::REQUEST);
    req.buf_alloc = 100;
    g.add_rx(8);
    g.send(req, &[]);
    g.run();
    assert_eq!(ops(&g.recv()), [op::RESPONSE]);
    let (mut host, _) = listener.accept().unwrap();
    host.write_all(&[7u8; 300]).unwrap();
    g.run();
    let got: usize = g.recv().iter().map(|(_, d)| d.len()).sum();
    assert_eq!(got, 100, "the device sent more than the guest's buf_alloc");

    // The guest consumed 60 bytes: 60 more may come.
    let mut update = g.hdr(41000, 6000, op::CREDIT_UPDATE);
    update.buf_alloc = 100;
    update.fwd_cnt = 60;
    g.send(update, &[]);
    g.run();
    let got: usize = g.recv().iter().map(|(_, d)| d.len()).sum();
    assert_eq!(got, 60);

    update.fwd_cnt = 160;
    g.send(update, &[]);
    g.run();
    let got: usize = g.recv().iter().map(|(_, d)| d.len()).sum();
    assert_eq!(got, 100);
}

#[test]
fn no_rx_buffers_means_no_reading_until_the_guest_adds_some() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let (mut client, _) = g.host_connect(9);
    client.write_all(&[1u8; 10_000]).unwrap();
    g.run(); // must go idle: no buffers, no busy loop
    assert!(g.recv().is_empty());
    g.add_rx(1);
    g.run();
    assert_eq!(g.recv()[0].1.len(), super::RX_DATA_LEN as usize);
    g.add_rx(4);
    g.run();
    let got: usize = g.recv().iter().map(|(_, d)| d.len()).sum();
    assert_eq!(got, 10_000 - super::RX_DATA_LEN as usize);
}

#[test]
fn guest_rst_closes_the_host_socket() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let (mut client, local) = g.host_connect(10);
    g.send(g.hdr(10, local, op::RST), &[]);
    g.run();
    let mut buf = [0u8; 1];
    assert_eq!(client.read(&mut buf).unwrap(), 0);
    assert_eq!(lock(&g.dev).connection_count(), 0);
}

#[test]
fn guest_shutdown_gets_rst_and_the_host_sees_eof() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let (mut client, local) = g.host_connect(11);
    g.add_rx(2);
    g.send(g.hdr(11, local, op::RW).with_len(3), b"bye");
    let mut shut = g.hdr(11, local, op::SHUTDOWN);
    shut.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    g.send(shut, &[]);
    g.run();
    assert_eq!(ops(&g.recv()), [op::RST]);
    let mut got = vec![];
    client.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"bye");
}

#[test]
fn guest_half_close_is_forwarded_as_eof() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let (mut client, local) = g.host_connect(12);
    let mut shut = g.hdr(12, local, op::SHUTDOWN);
    shut.flags = SHUTDOWN_SEND;
    g.send(shut, &[]);
    g.run();
    let mut buf = [0u8; 1];
    assert_eq!(client.read(&mut buf).unwrap(), 0);
    // The other direction still works.
    client.write_all(b"still here").unwrap();
    g.add_rx(1);
    g.run();
    assert_eq!(g.recv()[0].1, b"still here");
}

#[test]
fn host_close_sends_shutdown_and_kills_after_timeout() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let (client, _) = g.host_connect(13);
    drop(client);
    g.add_rx(2);
    g.run();
    let pkts = g.recv();
    assert_eq!(ops(&pkts), [op::SHUTDOWN]);
    assert_eq!(pkts[0].0.flags, SHUTDOWN_RCV | SHUTDOWN_SEND);
    assert_eq!(lock(&g.dev).connection_count(), 1);
    // The guest never answers with RST: the device gives up on its own.
    g.run_for(Duration::from_millis(150));
    assert_eq!(ops(&g.recv()), [op::RST]);
    assert_eq!(lock(&g.dev).connection_count(), 0);
}

#[test]
fn guest_ignoring_credit_is_reset() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let (client, local) = g.host_connect(14);
    // The client never reads: the socket fills, then the device's buffer.
    client.set_nonblocking(true).unwrap();
    g.add_rx(2);
    let chunk = vec![0xabu8; 64 * 1024];
    for _ in 0..32 {
        g.send(
            g.hdr(14, local, op::RW).with_len(chunk.len() as u32),
            &chunk,
        );
        g.run();
        if lock(&g.dev).connection_count() == 0 {
            break;
        }
    }
    assert_eq!(lock(&g.dev).connection_count(), 0);
    assert_eq!(ops(&g.recv()).last(), Some(&op::RST));
    // What the device forwarded before giving up is intact.
    let mut client = client;
    let mut buf = vec![0u8; 4096];
    match client.read(&mut buf) {
        Ok(n) => assert!(buf[..n].iter().all(|&b| b == 0xab)),
        Err(e) => assert_eq!(e.kind(), ErrorKind::WouldBlock),
    }
}

#[test]
fn credit_updates_follow_the_host_draining_the_buffer() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let (mut client, local) = g.host_connect(15);
    g.add_rx(8);
    let chunk = vec![1u8; 64 * 1024];
    // Fill until the socket pushes back into the device's buffer.
    for _ in 0..4 {
        g.send(
            g.hdr(15, local, op::RW).with_len(chunk.len() as u32),
            &chunk,
        );
    }
    g.run();
    // Drain on the host side while the device flushes its buffer.
    client.set_nonblocking(true).unwrap();
    let mut total = 0;
    let mut sink = vec![0u8; 64 * 1024];
    let mut pkts = vec![];
    for _ in 0..1000 {
        match client.read(&mut sink) {
            Ok(n) => total += n,
            Err(e) => assert_eq!(e.kind(), ErrorKind::WouldBlock),
        }
        g.run();
        pkts.extend(g.recv());
        if total == 4 * 64 * 1024 {
            break;
        }
    }
    assert_eq!(total, 4 * 64 * 1024);
    let last = pkts.iter().rev().find(|(h, _)| h.op == op::CREDIT_UPDATE);
    let last = last.expect("no CREDIT_UPDATE after the host drained");
    // The guest now sees at least a full packet of room.
    let in_flight = 4 * 64 * 1024 - last.0.fwd_cnt;
    assert!(last.0.buf_alloc - in_flight >= 64 * 1024, "{:?}", last.0);
}

/// Linux puts a packet's data in as many descriptors as it likes (a large
/// write arrives as the header plus page fragments); a header split in two
/// and data in three pieces must still reach the host intact.
#[test]
fn guest_data_spread_over_many_descriptors_arrives_whole() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let (mut client, local) = g.host_connect(1234);
    let payload: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    let hdr = g
        .hdr(1234, local, op::RW)
        .with_len(payload.len() as u32)
        .to_bytes();
    let mut descs = Vec::new();
    for piece in [
        &hdr[..20],
        &hdr[20..],
        &payload[..1000],
        &payload[1000..1001],
        &payload[1001..],
    ] {
        let addr = g.alloc(piece.len() as u64);
        mem.write_slice(piece, GuestAddress(addr)).unwrap();
        descs.push((addr, piece.len() as u32, 0));
    }
    g.add_chain(super::TX, &descs);
    g.kick(super::TX);
    g.run();
    let mut got = vec![0u8; payload.len()];
    client.read_exact(&mut got).unwrap();
    assert_eq!(got, payload);

    // A chain shorter than its header's len is dropped, not half-delivered.
    let short = g.hdr(1234, local, op::RW).with_len(100).to_bytes();
    let addr = g.alloc(short.len() as u64 + 10);
    mem.write_slice(&short, GuestAddress(addr)).unwrap();
    g.add_chain(super::TX, &[(addr, short.len() as u32 + 10, 0)]);
    g.kick(super::TX);
    g.run();
    client.set_nonblocking(true).unwrap();
    let mut byte = [0u8];
    assert!(
        client.read(&mut byte).is_err(),
        "a truncated packet must not reach the host"
    );
}
