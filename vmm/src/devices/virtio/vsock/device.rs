//! The virtio-vsock device: features, config space (the guest CID),
//! activation, and the event-loop subscriber that runs its queues, the
//! listener, the connection sockets and the deadline timer.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::time::Instant;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::muxer::Muxer;
use super::packet::{self, RxBuffer, MAX_PKT_DATA};
use super::{VsockError, VsockTimeouts};
use crate::devices::counters;
use crate::devices::virtio::{
    ActivateError, IrqKind, Queue, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1,
};

/// The virtio device id of vsock.
pub const VIRTIO_ID_VSOCK: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
/// Size of each of the three queues.
pub const QUEUE_SIZE: u16 = 256;
/// Queue indices: guest RX (device → guest), TX (guest → device), events.
const RXQ: usize = 0;
const TXQ: usize = 1;
const EVQ: usize = 2;
const QUEUE_SIZES: [u16; 3] = [QUEUE_SIZE; 3];
/// Most chains handled per queue per event; the rest waits behind the other
/// event sources (a re-kick), so one busy guest cannot hog the loop.
pub(super) const CHAINS_PER_EVENT: usize = 64;
/// `virtio_vsock_event_id`: the guest must drop all its connections.
const EVENT_TRANSPORT_RESET: u32 = 0;

/// What the device has once the driver activated it.
#[derive(Debug)]
struct Active {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
}

/// A virtio-vsock device relaying guest streams to host Unix sockets.
#[derive(Debug)]
pub struct Vsock {
    guest_cid: u64,
    uds_path: PathBuf,
    acked_features: u64,
    queue_events: Vec<EventFd>,
    interrupt: VirtioInterrupt,
    active: Option<Active>,
    /// A queue proved corrupt: the device stops touching its queues.
    broken: bool,
    /// The guest has (or may have) RX buffers; false after running out.
    rx_ready: bool,
    /// A TRANSPORT_RESET event waits for an event-queue buffer.
    reset_event_pending: bool,
    muxer: Muxer,
    rx_scratch: Vec<u8>,
}

impl Vsock {
    /// A device for guest `guest_cid` (3 or more), taking host clients on
    /// `listener`, bound at `uds_path` (see [`super::bind_listener`]); the
    /// path is unlinked when the device is dropped.
    pub fn new(
        guest_cid: u64,
        uds_path: PathBuf,
        listener: UnixListener,
        interrupt: VirtioInterrupt,
    ) -> Result<Self, VsockError> {
        if guest_cid < 3 || guest_cid > u64::from(u32::MAX) {
            return Err(VsockError::ReservedCid(guest_cid));
        }
        let queue_events = (0..QUEUE_SIZES.len())
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| VsockError::Host {
                what: "queue eventfds",
                source,
            })?;
        let muxer = Muxer::new(guest_cid, uds_path.clone(), listener)?;
        Ok(Self {
            guest_cid,
            uds_path,
            acked_features: 0,
            queue_events,
            interrupt,
            active: None,
            broken: false,
            rx_ready: false,
            reset_event_pending: false,
            muxer,
            rx_scratch: vec![0; MAX_PKT_DATA as usize],
        })
    }

    /// The guest's CID.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// Replaces the connection timeouts (tests use short ones).
    pub fn set_timeouts(&mut self, timeouts: VsockTimeouts) {
        self.muxer.timeouts = timeouts;
    }

    /// Live connections.
    pub fn connection_count(&self) -> usize {
        self.muxer.connection_count()
    }

    /// The host ports guest-initiated connections may reach (to
    /// `<uds path>_<port>`); every other port is refused with an RST.
    /// The default is none.
    pub fn allow_host_ports(&mut self, ports: impl IntoIterator<Item = u32>) {
        self.muxer.allowed_ports = ports.into_iter().collect();
    }

    /// Guest-initiated connections this device refused.
    pub fn refused_connections(&self) -> u64 {
        self.muxer.refused_connections
    }

    /// Whether a corrupt queue made the device stop.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Tells the guest its vsock transport was reset (after a snapshot
    /// restore): queues a TRANSPORT_RESET event and drops every connection.
    pub fn send_transport_reset(&mut self) {
        self.reset_event_pending = true;
        self.muxer.reset_all();
        // Wake the event loop: it delivers the event and closes the sockets.
        if let Err(e) = self.queue_events[EVQ].write(1) {
            log::error!("vsock: cannot wake the event loop: {e}");
        }
    }

    fn signal_used(&self) {
        if let Err(e) = self.interrupt.trigger(IrqKind::Vring) {
            crate::error_limited!("vsock: cannot interrupt the guest: {e}");
        }
    }

    /// Forwards every packet the guest queued on TX.
    fn process_tx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = &active.mem;
        let queue = &mut active.queues[TXQ];
        let now = Instant::now();
        let mut used = false;
        let mut budget = CHAINS_PER_EVENT;
        loop {
            let chain = match queue.iter(mem) {
                Ok(mut it) => it.next(),
                Err(e) => {
                    counters::QUEUE_BROKEN.inc();
                    crate::error_limited!("vsock: TX queue is corrupt ({e}); the device stops");
                    self.broken = true;
                    break;
                }
            };
            let Some(mut chain) = chain else { break };
            if budget == 0 {
                queue.go_to_previous_position();
                counters::QUEUE_YIELDS.inc();
                if let Err(e) = self.queue_events[TXQ].write(1) {
                    crate::error_limited!("vsock: cannot re-kick the TX queue: {e}");
                }
                break;
            }
            budget -= 1;
            let head = chain.head_index();
            match packet::read_tx(mem, &mut chain) {
                Ok(pkt) => self.muxer.on_guest_packet(&pkt, now),
                Err(e) => {
                    counters::VSOCK_BAD_CHAIN.inc();
                    crate::warn_limited!("vsock: dropping a TX chain: {e}");
                }
            }
            if let Err(e) = queue.add_used(mem, head, 0) {
                counters::QUEUE_BROKEN.inc();
                crate::error_limited!("vsock: cannot return a TX chain ({e}); the device stops");
                self.broken = true;
                break;
            }
            used = true;
        }
        if used {
            self.signal_used();
        }
    }

    /// Fills the guest's RX buffers with whatever the muxer has for it.
    fn process_rx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = &active.mem;
        let queue = &mut active.queues[RXQ];
        let now = Instant::now();
        let mut used = false;
        let mut budget = CHAINS_PER_EVENT;
        while self.muxer.has_pending_rx() {
            if budget == 0 {
                // Come round again after the other events (the kick sets rx_ready).
                counters::QUEUE_YIELDS.inc();
                if let Err(e) = self.queue_events[RXQ].write(1) {
                    crate::error_limited!("vsock: cannot re-kick the RX queue: {e}");
                }
                break;
            }
            budget -= 1;
            let chain = match queue.iter(mem) {
                Ok(mut it) => it.next(),
                Err(e) => {
                    counters::QUEUE_BROKEN.inc();
                    crate::error_limited!("vsock: RX queue is corrupt ({e}); the device stops");
                    self.broken = true;
                    break;
                }
            };
            let Some(mut chain) = chain else {
                // Out of buffers: stop reading host sockets until the guest kicks.
                self.rx_ready = false;
                break;
            };
            let head = chain.head_index();
            let used_len = match RxBuffer::new(mem, &mut chain) {
                Ok(mut buf) => {
                    let cap = buf.capacity();
                    let Some(hdr) = self.muxer.next_rx(&mut self.rx_scratch[..cap], now) else {
                        // Nothing after all: give the buffer back for later.
                        queue.go_to_previous_position();
                        break;
                    };
                    let data = &self.rx_scratch[..hdr.len as usize];
                    buf.write(&hdr, data).unwrap_or_else(|e| {
                        counters::VSOCK_BAD_CHAIN.inc();
                        crate::warn_limited!("vsock: cannot write an RX packet: {e}");
                        0
                    })
                }
                Err(e) => {
                    counters::VSOCK_BAD_CHAIN.inc();
                    crate::warn_limited!("vsock: dropping an RX chain: {e}");
                    0
                }
            };
            if let Err(e) = queue.add_used(mem, head, used_len) {
                counters::QUEUE_BROKEN.inc();
                crate::error_limited!("vsock: cannot return an RX chain ({e}); the device stops");
                self.broken = true;
                break;
            }
            used = true;
        }
        if used {
            self.signal_used();
        }
    }

    /// Delivers a pending TRANSPORT_RESET event.
    fn process_evq(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if !self.reset_event_pending {
            return;
        }
        let mem = &active.mem;
        let queue = &mut active.queues[EVQ];
        let chain = match queue.iter(mem) {
            Ok(mut it) => it.next(),
            Err(e) => {
                counters::QUEUE_BROKEN.inc();
                crate::error_limited!("vsock: event queue is corrupt ({e}); the device stops");
                self.broken = true;
                return;
            }
        };
        let Some(mut chain) = chain else { return };
        let head = chain.head_index();
        let mut len = 0;
        match chain.next() {
            Some(d) if d.is_write_only() && d.len() >= 4 => {
                match mem.write_obj(EVENT_TRANSPORT_RESET.to_le(), d.addr()) {
                    Ok(()) => {
                        len = 4;
                        self.reset_event_pending = false;
                    }
                    Err(e) => {
                        counters::VSOCK_BAD_CHAIN.inc();
                        crate::warn_limited!("vsock: cannot write an event: {e}");
                    }
                }
            }
            _ => {
                counters::VSOCK_BAD_CHAIN.inc();
                crate::warn_limited!("vsock: dropping a malformed event buffer");
            }
        }
        if let Err(e) = queue.add_used(mem, head, len) {
            counters::QUEUE_BROKEN.inc();
            crate::error_limited!("vsock: cannot return an event buffer ({e}); the device stops");
            self.broken = true;
            return;
        }
        self.signal_used();
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.uds_path) {
            log::warn!("vsock: cannot remove {:?}: {e}", self.uds_path);
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.guest_cid.to_le_bytes();
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|o| config.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        counters::MMIO_BAD_ACCESS.inc();
        crate::warn_limited!(
            "vsock: guest wrote {} bytes of read-only config at {offset:#x}",
            data.len()
        );
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    fn interrupt(&self) -> &VirtioInterrupt {
        &self.interrupt
    }

    fn activate(&mut self, mem: GuestMemoryMmap, queues: Vec<Queue>) -> Result<(), ActivateError> {
        if queues.len() != QUEUE_SIZES.len() {
            return Err(ActivateError::QueueCount {
                got: queues.len(),
                want: QUEUE_SIZES.len(),
            });
        }
        self.active = Some(Active { mem, queues });
        self.rx_ready = true;
        // Kicks that came before activation were ignored: look at every queue once.
        for evt in &self.queue_events {
            if let Err(e) = evt.write(1) {
                crate::error_limited!("vsock: cannot wake the event loop: {e}");
            }
        }
        Ok(())
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    /// A driver reset (also on the guest's way to a reboot): every
    /// connection is dropped and the device waits for a new activation.
    fn reset(&mut self) -> bool {
        self.muxer.reset_all();
        self.active = None;
        self.broken = false;
        self.rx_ready = false;
        self.reset_event_pending = false;
        // Wake the event loop: the dropped connections' sockets leave epoll and close.
        if let Err(e) = self.queue_events[EVQ].write(1) {
            crate::error_limited!("vsock: cannot wake the event loop: {e}");
        }
        true
    }
}

impl MutEventSubscriber for Vsock {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        let now = Instant::now();
        if let Some(q) = self.queue_events.iter().position(|e| e.as_raw_fd() == fd) {
            // Drain the kick even when the device ignores it (level-triggered epoll).
            let _ = self.queue_events[q].read();
            if self.active.is_some() && !self.broken {
                match q {
                    RXQ => self.rx_ready = true,
                    TXQ => self.process_tx(),
                    _ => self.process_evq(),
                }
            }
        } else if fd == self.muxer.listener().as_raw_fd() {
            self.muxer.accept(now);
        } else if fd == self.muxer.timer().as_raw_fd() {
            self.muxer.on_timer(now);
        } else {
            self.muxer.on_socket_event(fd, events.event_set(), now);
        }
        if self.active.is_some() && !self.broken && self.rx_ready {
            self.process_rx();
        }
        let rx_ready = self.rx_ready && self.active.is_some() && !self.broken;
        self.muxer.sync_epoll(ops, rx_ready, now);
    }

    fn init(&mut self, ops: &mut EventOps) {
        let mut add = |events, what| {
            if let Err(e) = ops.add(events) {
                log::error!("vsock: cannot watch {what}: {e:?}");
            }
        };
        for evt in &self.queue_events {
            add(Events::new(evt, EventSet::IN), "a queue event");
        }
        add(
            Events::new(self.muxer.listener(), EventSet::IN),
            "the listener",
        );
        add(Events::new(self.muxer.timer(), EventSet::IN), "the timer");
    }
}
