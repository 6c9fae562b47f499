//! `vsock-tool`: both ends of Ember's vsock tests and benchmarks.
//!
//! Guest side (inside a microVM, AF_VSOCK):
//!   vsock-tool guest-echo PORT             echo every connection on PORT
//!   vsock-tool guest-send PORT BYTES       connect to the host's PORT, send BYTES,
//!                                          expect them echoed back
//! Host side (Firecracker-style Unix sockets):
//!   vsock-tool host-echo PATH              echo every connection on Unix socket PATH
//!   vsock-tool host-send UDS PORT BYTES    CONNECT to guest PORT, send BYTES, expect echo
//!   vsock-tool host-rtt UDS PORT COUNT     COUNT 64-byte round trips, print p50/p99
//!
//! Host commands retry the CONNECT handshake for up to 60 s while the guest
//! boots. Every command prints `KEY value` result lines and exits non-zero
//! with a reason on failure.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use ember_protocol::handshake;

type Result<T> = std::result::Result<T, String>;

const HOST_CID: u32 = 2;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["guest-echo", port] => parse(port).and_then(guest_echo),
        ["guest-send", port, bytes] => parse(port).and_then(|p| guest_send(p, parse(bytes)?)),
        ["host-echo", path] => host_echo(path),
        ["host-send", uds, port, bytes] => {
            parse(port).and_then(|p| host_send(uds, p, parse(bytes)?))
        }
        ["host-rtt", uds, port, count] => parse(port).and_then(|p| host_rtt(uds, p, parse(count)?)),
        _ => Err("usage: see the header of tests/src/bin/vsock-tool.rs".into()),
    };
    if let Err(e) = result {
        eprintln!("vsock-tool: {e}");
        std::process::exit(1);
    }
}

fn parse<T: std::str::FromStr>(s: &str) -> Result<T> {
    s.parse().map_err(|_| format!("not a number: {s:?}"))
}

/// Deterministic test bytes.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

fn vsock_addr(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = cid;
    addr.svm_port = port;
    addr
}

fn vsock_socket() -> Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!(
            "socket(AF_VSOCK): {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: fd is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn check(rc: libc::c_int, what: &str) -> Result<()> {
    if rc < 0 {
        return Err(format!("{what}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

fn guest_echo(port: u32) -> Result<()> {
    use std::os::fd::AsRawFd;
    let sock = vsock_socket()?;
    let addr = vsock_addr(libc::VMADDR_CID_ANY, port);
    let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: addr is a valid sockaddr_vm of `len` bytes.
    check(
        unsafe {
            libc::bind(
                sock.as_raw_fd(),
                (&addr as *const libc::sockaddr_vm).cast(),
                len,
            )
        },
        "bind",
    )?;
    // SAFETY: listen on a bound socket we own.
    check(unsafe { libc::listen(sock.as_raw_fd(), 16) }, "listen")?;
    println!("VSOCK-LISTENING {port}");
    loop {
        // SAFETY: accept with null address pointers is allowed.
        let fd = unsafe {
            libc::accept4(
                sock.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        check(fd, "accept")?;
        // SAFETY: fd is the fresh connection, owned here.
        let conn = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        std::thread::spawn(move || echo(conn));
    }
}

fn echo<S: Read + Write>(mut conn: S) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

/// Sends `bytes` of the pattern while reading the echo, and checks it.
fn exchange<S: Read + Write>(
    conn: &mut S,
    writer: impl Write + Send,
    bytes: usize,
) -> Result<Duration> {
    let data = pattern(bytes);
    let start = Instant::now();
    let received = std::thread::scope(|s| {
        let sender = s.spawn(|| {
            let mut writer = writer;
            writer.write_all(&data).map_err(|e| format!("send: {e}"))
        });
        let mut got = vec![0u8; bytes];
        let read = conn
            .read_exact(&mut got)
            .map_err(|e| format!("receive: {e}"));
        sender.join().map_err(|_| "sender panicked".to_string())??;
        read.map(|_| got)
    })?;
    let elapsed = start.elapsed();
    if received != data {
        let at = received
            .iter()
            .zip(&data)
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        return Err(format!("echo differs at byte {at}"));
    }
    Ok(elapsed)
}

fn guest_send(port: u32, bytes: usize) -> Result<()> {
    use std::os::fd::AsRawFd;
    let sock = vsock_socket()?;
    let addr = vsock_addr(HOST_CID, port);
    let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: addr is a valid sockaddr_vm of `len` bytes.
    check(
        unsafe {
            libc::connect(
                sock.as_raw_fd(),
                (&addr as *const libc::sockaddr_vm).cast(),
                len,
            )
        },
        "connect to the host",
    )?;
    let mut conn = std::fs::File::from(sock);
    let writer = conn.try_clone().map_err(|e| e.to_string())?;
    let took = exchange(&mut conn, writer, bytes)?;
    println!("GUEST-SEND-OK {bytes} {:.1}ms", took.as_secs_f64() * 1e3);
    Ok(())
}

fn host_echo(path: &str) -> Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(|e| format!("bind {path}: {e}"))?;
    println!("HOST-LISTENING {path}");
    for conn in listener.incoming() {
        let conn = conn.map_err(|e| format!("accept: {e}"))?;
        std::thread::spawn(move || echo(conn));
    }
    Ok(())
}

/// Connects through the VMM's vsock socket to guest `port`, retrying while
/// the guest is not listening yet. Returns the stream and the time it took.
fn host_connect(uds: &str, port: u32) -> Result<(UnixStream, Duration)> {
    let start = Instant::now();
    let s = handshake::connect_until(
        std::path::Path::new(uds),
        port,
        start + Duration::from_secs(60),
    )
    .map_err(|e| format!("CONNECT {port} through {uds} kept failing for 60 s; last: {e}"))?;
    // Every later read and write is bounded too (a stalled peer must
    // fail the tool, not hang it).
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    Ok((s, start.elapsed()))
}

fn host_send(uds: &str, port: u32, bytes: usize) -> Result<()> {
    let (mut conn, waited) = host_connect(uds, port)?;
    println!("CONNECTED_AFTER_MS {}", waited.as_millis());
    let writer = conn.try_clone().map_err(|e| e.to_string())?;
    let took = exchange(&mut conn, writer, bytes)?;
    println!("HOST-SEND-OK {bytes}");
    println!(
        "ECHO_MIB_PER_S {:.2}",
        bytes as f64 / (1 << 20) as f64 / took.as_secs_f64()
    );
    Ok(())
}

fn host_rtt(uds: &str, port: u32, count: usize) -> Result<()> {
    let (mut conn, waited) = host_connect(uds, port)?;
    println!("CONNECTED_AFTER_MS {}", waited.as_millis());
    let msg = pattern(64);
    let mut got = [0u8; 64];
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let t = Instant::now();
        conn.write_all(&msg).map_err(|e| format!("send: {e}"))?;
        conn.read_exact(&mut got)
            .map_err(|e| format!("receive: {e}"))?;
        samples.push(t.elapsed());
        if got[..] != msg[..] {
            return Err("round trip echo differs".into());
        }
    }
    samples.sort();
    let pct = |p: usize| samples[(samples.len() * p / 100).min(samples.len() - 1)];
    println!("RTT_P50_US {}", pct(50).as_micros());
    println!("RTT_P99_US {}", pct(99).as_micros());
    Ok(())
}
