//! One vsock stream between a guest port and a host Unix socket.
//!
//! The state machine follows the virtio-vsock spec as Firecracker speaks it:
//! REQUEST/RESPONSE to open, RW to carry data, SHUTDOWN (with its RCV/SEND
//! flags) to close, RST to abort. Flow control is credit based: the guest
//! advertises `buf_alloc` (its receive buffer) and `fwd_cnt` (bytes it has
//! consumed), and the device never sends more than `buf_alloc - (sent -
//! fwd_cnt)`; the device advertises its own buffer ([`TXBUF_CAPACITY`]) and
//! how much guest data it has written to the host socket.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use event_manager::EventSet;

use super::packet::{op, Header, TxPacket, MAX_PKT_DATA, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use super::txbuf::{TxBuf, TXBUF_CAPACITY};
use super::{VsockTimeouts, VSOCK_HOST_CID};

/// When the guest believes it has less room than this in our buffer, and we
/// have in fact freed some, tell it with a CREDIT_UPDATE.
const CREDIT_UPDATE_THRESHOLD: u32 = MAX_PKT_DATA;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// The host opened it: REQUEST sent (or queued), waiting for RESPONSE.
    LocalInit,
    /// The guest opened it: RESPONSE queued.
    PeerInit,
    /// Data flows (possibly half-closed by the guest: see the peer flags).
    Established,
    /// The host socket hit EOF: SHUTDOWN sent, waiting for the guest's RST.
    LocalClosed,
}

/// What the muxer must do with a connection after an event.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Keep it.
    Keep,
    /// Send the guest an RST and drop it.
    Reset,
    /// Drop it silently (the guest reset it).
    Drop,
}

/// The next thing a connection has for the guest.
#[derive(Debug, PartialEq, Eq)]
pub enum ToGuest {
    /// A packet; its data (header `len` bytes) is at the start of the buffer.
    Packet(Header),
    /// Nothing now.
    Nothing,
    /// The host socket failed: reset the connection.
    Reset,
}

/// Control packets waiting for the guest.
#[derive(Debug, Default)]
struct Pending {
    request: bool,
    response: bool,
    credit_update: bool,
}

/// One stream; see the module doc.
#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
    local_port: u32,
    peer_port: u32,
    guest_cid: u64,
    state: State,
    pending: Pending,
    /// The host socket may have data (epoll said so and no read hit WouldBlock).
    readable: bool,
    txbuf: TxBuf,
    /// Guest bytes written to the host socket (advertised to the guest).
    fwd_cnt: Wrapping<u32>,
    /// Guest bytes received (`fwd_cnt` plus what `txbuf` holds).
    recv_cnt: Wrapping<u32>,
    /// The `fwd_cnt` the guest last heard from us.
    last_fwd_cnt_sent: Wrapping<u32>,
    /// Bytes sent to the guest.
    rx_cnt: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    peer_no_recv: bool,
    peer_no_send: bool,
    host_write_shut: bool,
    /// When the connection is reset if it has not moved on by then.
    pub expiry: Option<Instant>,
    /// Whether the muxer has it in its RX queue.
    pub queued: bool,
}

impl Connection {
    fn new(
        stream: UnixStream,
        local_port: u32,
        peer_port: u32,
        guest_cid: u64,
        state: State,
    ) -> Self {
        Self {
            stream,
            local_port,
            peer_port,
            guest_cid,
            state,
            pending: Pending::default(),
            readable: false,
            txbuf: TxBuf::new(TXBUF_CAPACITY),
            fwd_cnt: Wrapping(0),
            recv_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            rx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            peer_no_recv: false,
            peer_no_send: false,
            host_write_shut: false,
            expiry: None,
            queued: false,
        }
    }

    /// A host-initiated connection: REQUEST queued, answer due by `deadline`.
    pub fn new_local(
        stream: UnixStream,
        local_port: u32,
        peer_port: u32,
        guest_cid: u64,
        deadline: Instant,
    ) -> Self {
        let mut c = Self::new(stream, local_port, peer_port, guest_cid, State::LocalInit);
        c.pending.request = true;
        c.expiry = Some(deadline);
        c
    }

    /// A guest-initiated connection whose host socket is connected: RESPONSE queued.
    pub fn new_peer(stream: UnixStream, request: &Header, guest_cid: u64) -> Self {
        let mut c = Self::new(
            stream,
            request.dst_port,
            request.src_port,
            guest_cid,
            State::PeerInit,
        );
        c.peer_buf_alloc = request.buf_alloc;
        c.peer_fwd_cnt = Wrapping(request.fwd_cnt);
        c.pending.response = true;
        c
    }

    /// The host Unix socket.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Gives up the host socket (the connection is over).
    pub fn into_stream(self) -> UnixStream {
        self.stream
    }

    /// The connection's state.
    pub fn state(&self) -> State {
        self.state
    }

    /// A header from the host end of this connection, carrying our credit.
    fn header(&mut self, op: u16) -> Header {
        self.last_fwd_cnt_sent = self.fwd_cnt;
        Header {
            src_cid: VSOCK_HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: TXBUF_CAPACITY as u32,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    /// How many bytes the guest can still take.
    fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Whether the device may read the host socket for the guest now.
    fn may_read(&self) -> bool {
        self.state == State::Established && !self.peer_no_recv && self.peer_credit() > 0
    }

    /// Whether the connection has something for the guest.
    pub fn has_pending_rx(&self) -> bool {
        self.pending.request
            || self.pending.response
            || self.pending.credit_update
            || (self.readable && self.may_read())
    }

    /// The epoll events the connection wants on its socket. `rx_ready` says
    /// whether the guest has RX buffers (without them, reading is pointless).
    pub fn interest(&self, rx_ready: bool) -> EventSet {
        let mut set = EventSet::empty();
        if rx_ready && self.may_read() {
            set |= EventSet::IN;
        }
        if !self.txbuf.is_empty() {
            set |= EventSet::OUT;
        }
        set
    }

    /// The host socket is readable.
    pub fn on_readable(&mut self) {
        self.readable = true;
    }

    /// The host socket is writable: flush buffered guest data.
    pub fn on_writable(&mut self) -> Verdict {
        match self.txbuf.flush_to(&mut self.stream) {
            Ok(n) => self.fwd_cnt += Wrapping(n as u32),
            Err(e) => {
                log::debug!("vsock: host socket of port {} failed: {e}", self.local_port);
                return Verdict::Reset;
            }
        }
        self.after_flush()
    }

    fn after_flush(&mut self) -> Verdict {
        self.check_credit_update();
        if !self.txbuf.is_empty() {
            return Verdict::Keep;
        }
        if self.peer_no_send && self.peer_no_recv {
            // Full close and everything forwarded: finish with RST.
            return Verdict::Reset;
        }
        if self.peer_no_send && !self.host_write_shut {
            self.host_write_shut = true;
            // The host app sees EOF, as the guest app asked.
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        Verdict::Keep
    }

    fn check_credit_update(&mut self) {
        let guest_view_free =
            (TXBUF_CAPACITY as u32).saturating_sub((self.recv_cnt - self.last_fwd_cnt_sent).0);
        if guest_view_free < CREDIT_UPDATE_THRESHOLD && self.fwd_cnt != self.last_fwd_cnt_sent {
            self.pending.credit_update = true;
        }
    }

    /// Handles a packet the guest sent on this connection.
    pub fn on_guest_packet(
        &mut self,
        pkt: &TxPacket,
        now: Instant,
        timeouts: &VsockTimeouts,
    ) -> Verdict {
        let hdr = &pkt.hdr;
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        if hdr.op == op::RST {
            return Verdict::Drop;
        }
        match (self.state, hdr.op) {
            (State::LocalInit, op::RESPONSE) => {
                self.state = State::Established;
                self.expiry = None;
                let line = format!("OK {}\n", self.local_port);
                // A fresh socket's buffer always takes a few bytes.
                match self.stream.write(line.as_bytes()) {
                    Ok(n) if n == line.len() => Verdict::Keep,
                    _ => Verdict::Reset,
                }
            }
            (State::LocalInit, _) => Verdict::Reset,
            (State::PeerInit, op::CREDIT_UPDATE) => Verdict::Keep,
            (State::PeerInit, _) => Verdict::Reset,
            // SHUTDOWN sent; only the guest's RST matters now.
            (State::LocalClosed, _) => Verdict::Keep,
            (State::Established, op::RW) => self.guest_data(&pkt.data),
            (State::Established, op::CREDIT_UPDATE) => Verdict::Keep,
            (State::Established, op::CREDIT_REQUEST) => {
                self.pending.credit_update = true;
                Verdict::Keep
            }
            (State::Established, op::SHUTDOWN) => {
                self.peer_no_recv |= hdr.flags & SHUTDOWN_RCV != 0;
                self.peer_no_send |= hdr.flags & SHUTDOWN_SEND != 0;
                if self.peer_no_recv && self.peer_no_send {
                    // Flushing what is left is bounded in time.
                    self.expiry.get_or_insert(now + timeouts.shutdown);
                }
                self.after_flush()
            }
            (State::Established, _) => Verdict::Reset,
        }
    }

    fn guest_data(&mut self, data: &[u8]) -> Verdict {
        if self.peer_no_send {
            log::debug!(
                "vsock: guest port {} sent data after SHUTDOWN",
                self.peer_port
            );
            return Verdict::Reset;
        }
        let mut rest = data;
        if self.txbuf.is_empty() {
            match self.stream.write(data) {
                Ok(n) => {
                    self.fwd_cnt += Wrapping(n as u32);
                    rest = &data[n..];
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    log::debug!("vsock: host socket of port {} failed: {e}", self.local_port);
                    return Verdict::Reset;
                }
            }
        }
        if self.txbuf.push(rest).is_err() {
            crate::warn_limited!(
                "vsock: guest port {} ignored its credit (sent {} bytes, {} buffered); resetting",
                self.peer_port,
                data.len(),
                self.txbuf.len()
            );
            return Verdict::Reset;
        }
        self.recv_cnt += Wrapping(data.len() as u32);
        self.check_credit_update();
        Verdict::Keep
    }

    /// Produces the next packet for the guest, reading host data into `buf`
    /// (at most its length, and never more than the guest's credit).
    pub fn next_for_guest(
        &mut self,
        buf: &mut [u8],
        now: Instant,
        timeouts: &VsockTimeouts,
    ) -> ToGuest {
        if std::mem::take(&mut self.pending.request) {
            return ToGuest::Packet(self.header(op::REQUEST));
        }
        if std::mem::take(&mut self.pending.response) {
            self.state = State::Established;
            return ToGuest::Packet(self.header(op::RESPONSE));
        }
        if std::mem::take(&mut self.pending.credit_update) {
            return ToGuest::Packet(self.header(op::CREDIT_UPDATE));
        }
        if !(self.readable && self.may_read()) || buf.is_empty() {
            return ToGuest::Nothing;
        }
        let max = buf.len().min(self.peer_credit() as usize);
        match self.stream.read(&mut buf[..max]) {
            Ok(0) => {
                self.state = State::LocalClosed;
                self.readable = false;
                self.expiry = Some(now + timeouts.shutdown);
                let mut hdr = self.header(op::SHUTDOWN);
                hdr.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
                ToGuest::Packet(hdr)
            }
            Ok(n) => {
                self.rx_cnt += Wrapping(n as u32);
                let mut hdr = self.header(op::RW);
                hdr.len = n as u32;
                ToGuest::Packet(hdr)
            }
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.kind() == io::ErrorKind::Interrupted =>
            {
                self.readable = false;
                ToGuest::Nothing
            }
            Err(e) => {
                log::debug!("vsock: host socket of port {} failed: {e}", self.local_port);
                ToGuest::Reset
            }
        }
    }
}
