//! Maps (local port, peer port) to a connection and its host Unix socket.
//!
//! The muxer owns the listener host clients connect to, the clients still
//! sending their `CONNECT <port>\n` line, and every connection. It keeps the
//! queue of connections with something for the guest, a bounded queue of RSTs
//! for connections that no longer exist, and one timer for every deadline
//! (unfinished `CONNECT` lines, unanswered REQUESTs, half-closed connections).
//!
//! It never touches epoll directly: after each batch of work the device calls
//! [`Muxer::sync_epoll`], which brings epoll in line with what each socket
//! wants and closes sockets of dead connections only once epoll forgot them.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events};
use vmm_sys_util::timerfd::TimerFd;

use super::connection::{Connection, ToGuest, Verdict};
use super::packet::{op, Header, TxPacket, TYPE_STREAM};
use super::{VsockError, VsockTimeouts, MAX_CONNECTIONS, VSOCK_HOST_CID};
use crate::devices::counters;

/// The longest `CONNECT <port>\n` line accepted.
const MAX_CONNECT_LINE: usize = 32;
/// RSTs for gone connections waiting for the guest; beyond it they are dropped.
const MAX_PENDING_RSTS: usize = 256;
/// Host-initiated connections get local ports from here up.
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// Clients accepted per listener event, so one flood cannot starve the rest.
const ACCEPTS_PER_EVENT: usize = 32;

/// A connection's identity: its host-side port and its guest-side port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub local_port: u32,
    pub peer_port: u32,
}

/// A host client that has not finished its `CONNECT <port>\n` line.
#[derive(Debug)]
struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
    deadline: Instant,
}

/// See the module doc.
#[derive(Debug)]
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    timer: TimerFd,
    pub timeouts: VsockTimeouts,
    /// Host ports the guest may connect to; none by default.
    pub allowed_ports: BTreeSet<u32>,
    /// Guest-initiated connections refused (port not allowed, no socket, limit).
    pub refused_connections: u64,
    conns: HashMap<ConnKey, Connection>,
    by_fd: HashMap<RawFd, ConnKey>,
    handshakes: HashMap<RawFd, Handshake>,
    /// Connections with something for the guest (each at most once).
    rxq: VecDeque<ConnKey>,
    /// RSTs for connections already dropped.
    rsts: VecDeque<Header>,
    /// What epoll watches on each socket the muxer registered.
    registered: HashMap<RawFd, EventSet>,
    /// Sockets of dead connections still registered with epoll.
    graveyard: Vec<UnixStream>,
    next_local_port: u32,
}

impl Muxer {
    /// A muxer for `guest_cid`, taking host clients from `listener`.
    pub fn new(
        guest_cid: u64,
        uds_path: PathBuf,
        listener: UnixListener,
    ) -> Result<Self, VsockError> {
        let host = |what| move |source| VsockError::Host { what, source };
        listener
            .set_nonblocking(true)
            .map_err(host("a non-blocking listener"))?;
        let timer = TimerFd::new().map_err(|e| host("a timerfd")(e.into()))?;
        set_nonblocking(timer.as_raw_fd()).map_err(host("a non-blocking timerfd"))?;
        Ok(Self {
            guest_cid,
            uds_path,
            listener,
            timer,
            timeouts: VsockTimeouts::default(),
            allowed_ports: BTreeSet::new(),
            refused_connections: 0,
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            handshakes: HashMap::new(),
            rxq: VecDeque::new(),
            rsts: VecDeque::new(),
            registered: HashMap::new(),
            graveyard: Vec::new(),
            next_local_port: FIRST_LOCAL_PORT,
        })
    }

    /// The listener (registered with epoll by the device).
    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    /// The deadline timer (registered with epoll by the device).
    pub fn timer(&self) -> &TimerFd {
        &self.timer
    }

    /// Live connections, for tests and metrics.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    fn rst_for(&self, from_guest: &Header) -> Header {
        Header {
            src_cid: VSOCK_HOST_CID,
            dst_cid: self.guest_cid,
            src_port: from_guest.dst_port,
            dst_port: from_guest.src_port,
            type_: TYPE_STREAM,
            op: op::RST,
            ..Header::default()
        }
    }

    fn queue_rst(&mut self, hdr: Header) {
        if self.rsts.len() >= MAX_PENDING_RSTS {
            counters::VSOCK_RST_DROPPED.inc();
            crate::warn_limited!("vsock: too many RSTs waiting for the guest; dropping one");
            return;
        }
        self.rsts.push_back(hdr);
    }

    fn enqueue(&mut self, key: ConnKey) {
        if let Some(c) = self.conns.get_mut(&key) {
            if !c.queued && c.has_pending_rx() {
                c.queued = true;
                self.rxq.push_back(key);
            }
        }
    }

    /// Drops a connection, closing its socket (once epoll forgot it).
    fn remove(&mut self, key: ConnKey) {
        if let Some(c) = self.conns.remove(&key) {
            let fd = c.stream().as_raw_fd();
            self.by_fd.remove(&fd);
            if c.queued {
                self.rxq.retain(|k| *k != key);
            }
            self.bury(fd, c.into_stream());
        }
    }

    fn bury(&mut self, fd: RawFd, stream: UnixStream) {
        if self.registered.contains_key(&fd) {
            self.graveyard.push(stream);
        }
    }

    /// Drops a connection and tells the guest with an RST.
    fn reset(&mut self, key: ConnKey) {
        counters::VSOCK_RESETS.inc();
        self.remove(key);
        let rst = Header {
            src_cid: VSOCK_HOST_CID,
            dst_cid: self.guest_cid,
            src_port: key.local_port,
            dst_port: key.peer_port,
            type_: TYPE_STREAM,
            op: op::RST,
            ..Header::default()
        };
        self.queue_rst(rst);
    }

    fn apply(&mut self, key: ConnKey, verdict: Verdict) {
        match verdict {
            Verdict::Keep => self.enqueue(key),
            Verdict::Reset => self.reset(key),
            Verdict::Drop => self.remove(key),
        }
    }

    /// Drops every connection without telling the guest (its transport was reset).
    pub fn reset_all(&mut self) {
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for key in keys {
            self.remove(key);
        }
        self.rsts.clear();
    }

    /// Handles one packet from the guest. Nothing in it is trusted: the
    /// source must be the guest's CID, the destination the host.
    pub fn on_guest_packet(&mut self, pkt: &TxPacket, now: Instant) {
        let hdr = &pkt.hdr;
        if hdr.src_cid != self.guest_cid {
            counters::VSOCK_BAD_PACKET.inc();
            crate::warn_limited!(
                "vsock: dropping guest packet with source CID {}",
                hdr.src_cid
            );
            return;
        }
        if hdr.dst_cid != VSOCK_HOST_CID {
            counters::VSOCK_BAD_PACKET.inc();
            log::debug!("vsock: dropping guest packet for CID {}", hdr.dst_cid);
            return;
        }
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        if hdr.type_ != TYPE_STREAM || !op::is_known(hdr.op) {
            counters::VSOCK_BAD_PACKET.inc();
            log::debug!("vsock: guest packet of type {} op {}", hdr.type_, hdr.op);
            if self.conns.contains_key(&key) {
                self.reset(key);
            } else if hdr.op != op::RST {
                self.queue_rst(self.rst_for(hdr));
            }
            return;
        }
        let timeouts = self.timeouts;
        match self.conns.get_mut(&key) {
            Some(conn) => {
                let verdict = conn.on_guest_packet(pkt, now, &timeouts);
                self.apply(key, verdict);
            }
            None if hdr.op == op::REQUEST => self.guest_connect(hdr),
            None if hdr.op == op::RST => {}
            None => {
                counters::VSOCK_BAD_PACKET.inc();
                self.queue_rst(self.rst_for(hdr));
            }
        }
    }

    /// Refuses a guest-initiated connection with an RST, counted.
    fn refuse(&mut self, hdr: &Header) {
        self.refused_connections += 1;
        counters::VSOCK_REFUSED_CONNECT.inc();
        self.queue_rst(self.rst_for(hdr));
    }

    /// The guest connects to host port P: if P is allowed, connect to
    /// `<uds path>_<P>`; else refuse.
    fn guest_connect(&mut self, hdr: &Header) {
        if !self.allowed_ports.contains(&hdr.dst_port) {
            log::debug!(
                "vsock: guest connect to host port {} refused: not allowed",
                hdr.dst_port
            );
            self.refuse(hdr);
            return;
        }
        if self.conns.len() + self.handshakes.len() >= MAX_CONNECTIONS {
            crate::warn_limited!(
                "vsock: connection limit reached; refusing guest port {}",
                hdr.src_port
            );
            self.refuse(hdr);
            return;
        }
        let mut path = self.uds_path.clone().into_os_string();
        path.push(format!("_{}", hdr.dst_port));
        match connect_nonblocking(Path::new(&path)) {
            Ok(stream) => {
                let conn = Connection::new_peer(stream, hdr, self.guest_cid);
                let key = ConnKey {
                    local_port: hdr.dst_port,
                    peer_port: hdr.src_port,
                };
                self.by_fd.insert(conn.stream().as_raw_fd(), key);
                self.conns.insert(key, conn);
                self.enqueue(key);
            }
            Err(e) => {
                log::debug!("vsock: guest connect to {path:?} failed: {e}");
                self.refuse(hdr);
            }
        }
    }

    /// Accepts host clients waiting on the listener.
    pub fn accept(&mut self, now: Instant) {
        for _ in 0..ACCEPTS_PER_EVENT {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    crate::warn_limited!("vsock: accept failed: {e}");
                    return;
                }
            };
            if self.conns.len() + self.handshakes.len() >= MAX_CONNECTIONS {
                crate::warn_limited!("vsock: connection limit reached; closing a host client");
                continue;
            }
            if let Err(e) = stream.set_nonblocking(true) {
                crate::warn_limited!("vsock: cannot make a host client non-blocking: {e}");
                continue;
            }
            let hs = Handshake {
                stream,
                line: Vec::with_capacity(MAX_CONNECT_LINE),
                deadline: now + self.timeouts.connect_line,
            };
            self.handshakes.insert(hs.stream.as_raw_fd(), hs);
        }
    }

    /// Handles epoll events on a connection's or a host client's socket.
    pub fn on_socket_event(&mut self, fd: RawFd, set: EventSet, now: Instant) {
        if self.handshakes.contains_key(&fd) {
            self.continue_handshake(fd, now);
            return;
        }
        let Some(&key) = self.by_fd.get(&fd) else {
            return;
        };
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if set.intersects(EventSet::OUT | EventSet::ERROR | EventSet::HANG_UP) {
            let verdict = conn.on_writable();
            if verdict != Verdict::Keep {
                self.apply(key, verdict);
                return;
            }
        }
        if set.intersects(EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP) {
            conn.on_readable();
        }
        self.enqueue(key);
    }

    /// Reads the client's `CONNECT <port>\n` byte by byte, so no stream data
    /// after the line is consumed.
    fn continue_handshake(&mut self, fd: RawFd, now: Instant) {
        let Some(hs) = self.handshakes.get_mut(&fd) else {
            return;
        };
        let mut byte = [0u8; 1];
        let port = loop {
            match hs.stream.read(&mut byte) {
                Ok(1) if byte[0] == b'\n' => break parse_connect(&hs.line),
                Ok(1) if hs.line.len() < MAX_CONNECT_LINE => hs.line.push(byte[0]),
                Ok(_) => break None,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break None,
            }
        };
        let Some(hs) = self.handshakes.remove(&fd) else {
            return;
        };
        let Some(peer_port) = port else {
            log::debug!("vsock: host client sent a bad CONNECT line");
            self.bury(fd, hs.stream);
            return;
        };
        let key = self.allocate_local_port(peer_port);
        let conn = Connection::new_local(
            hs.stream,
            key.local_port,
            peer_port,
            self.guest_cid,
            now + self.timeouts.request,
        );
        self.by_fd.insert(fd, key);
        self.conns.insert(key, conn);
        self.enqueue(key);
    }

    fn allocate_local_port(&mut self, peer_port: u32) -> ConnKey {
        loop {
            let key = ConnKey {
                local_port: self.next_local_port,
                peer_port,
            };
            self.next_local_port = self.next_local_port.wrapping_add(1).max(FIRST_LOCAL_PORT);
            // At most MAX_CONNECTIONS keys are taken, so this ends quickly.
            if !self.conns.contains_key(&key) {
                return key;
            }
        }
    }

    /// Resets connections and closes host clients whose deadline passed.
    pub fn on_timer(&mut self, now: Instant) {
        // Drain the expiration count (the fd is non-blocking).
        let _ = self.timer.wait();
        let expired: Vec<ConnKey> = self
            .conns
            .iter()
            .filter(|(_, c)| c.expiry.is_some_and(|t| t <= now))
            .map(|(k, _)| *k)
            .collect();
        for key in expired {
            let state = self.conns.get(&key).map(Connection::state);
            log::debug!("vsock: connection {key:?} timed out in state {state:?}");
            self.reset(key);
        }
        let late: Vec<RawFd> = self
            .handshakes
            .iter()
            .filter(|(_, h)| h.deadline <= now)
            .map(|(fd, _)| *fd)
            .collect();
        for fd in late {
            if let Some(hs) = self.handshakes.remove(&fd) {
                log::debug!("vsock: host client did not send CONNECT in time");
                self.bury(fd, hs.stream);
            }
        }
    }

    /// Whether anything waits for the guest.
    pub fn has_pending_rx(&self) -> bool {
        !self.rsts.is_empty() || !self.rxq.is_empty()
    }

    /// The next packet for the guest, its data read into `buf`.
    pub fn next_rx(&mut self, buf: &mut [u8], now: Instant) -> Option<Header> {
        if let Some(rst) = self.rsts.pop_front() {
            return Some(rst);
        }
        let timeouts = self.timeouts;
        while let Some(key) = self.rxq.pop_front() {
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.queued = false;
            match conn.next_for_guest(buf, now, &timeouts) {
                ToGuest::Packet(hdr) => {
                    self.enqueue(key);
                    return Some(hdr);
                }
                ToGuest::Nothing => {}
                ToGuest::Reset => {
                    self.reset(key);
                    return self.rsts.pop_front();
                }
            }
        }
        None
    }

    /// Brings epoll in line with what each socket wants, closes dead
    /// sockets, and arms the timer for the next deadline.
    pub fn sync_epoll(&mut self, ops: &mut EventOps, rx_ready: bool, now: Instant) {
        for stream in self.graveyard.drain(..) {
            let fd = stream.as_raw_fd();
            self.registered.remove(&fd);
            if let Err(e) = ops.remove(Events::empty(&stream)) {
                crate::warn_limited!("vsock: cannot unregister socket {fd}: {e:?}");
            }
        }
        let wanted = self.handshakes.keys().map(|&fd| (fd, EventSet::IN)).chain(
            self.conns
                .values()
                .map(|c| (c.stream().as_raw_fd(), c.interest(rx_ready))),
        );
        let mut changes = Vec::new();
        for (fd, want) in wanted {
            let have = self.registered.get(&fd).copied();
            if have != Some(want) && !(have.is_none() && want.is_empty()) {
                changes.push((fd, have, want));
            }
        }
        for (fd, have, want) in changes {
            // Unregister rather than watch nothing: epoll reports hang-ups
            // even then, and a socket nobody reads would wake us forever.
            let result = match (have, want.is_empty()) {
                (Some(_), true) => ops.remove(Events::new_raw(fd, EventSet::empty())),
                (Some(_), false) => ops.modify(Events::new_raw(fd, want)),
                (None, _) => ops.add(Events::new_raw(fd, want)),
            };
            match result {
                Ok(()) if want.is_empty() => {
                    self.registered.remove(&fd);
                }
                Ok(()) => {
                    self.registered.insert(fd, want);
                }
                Err(e) => crate::warn_limited!("vsock: cannot update epoll for socket {fd}: {e:?}"),
            }
        }
        self.arm_timer(now);
    }

    fn arm_timer(&mut self, now: Instant) {
        let next = self
            .conns
            .values()
            .filter_map(|c| c.expiry)
            .chain(self.handshakes.values().map(|h| h.deadline))
            .min();
        let result = match next {
            // A zero duration would disarm the timer: wait at least 1 ms.
            Some(t) => self.timer.reset(
                t.saturating_duration_since(now)
                    .max(Duration::from_millis(1)),
                None,
            ),
            None => self.timer.clear(),
        };
        if let Err(e) = result {
            crate::warn_limited!("vsock: cannot arm the connection timer: {e}");
        }
    }
}

/// Parses `CONNECT <port>` (the newline already stripped).
fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?;
    line.strip_prefix("CONNECT ")?.trim().parse().ok()
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd we own, with no pointers involved.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Connects to a Unix stream socket without ever blocking: a listener whose
/// backlog is full refuses (EAGAIN) instead of stalling the event loop.
fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: plain syscall; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket nobody else owns.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    // SAFETY: `addr` is a valid sockaddr_un and the length is its size.
    let ret = unsafe {
        libc::connect(
            fd,
            (&addr as *const libc::sockaddr_un).cast::<libc::sockaddr>(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stream)
}
