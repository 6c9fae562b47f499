//! Vsock packets crossing the virtqueues: headers and data read (and copied,
//! so the guest cannot change them under us) from TX chains, and written
//! into the guest's RX chains.

use virtio_queue::DescriptorChain;
use virtio_vsock::packet::{VsockPacket, PKT_HEADER_SIZE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Size of `virtio_vsock_hdr`.
pub const HEADER_SIZE: usize = PKT_HEADER_SIZE;
/// The largest payload accepted from, or sent to, the guest in one packet.
pub const MAX_PKT_DATA: u32 = 64 * 1024;

/// The only socket type: stream.
pub const TYPE_STREAM: u16 = 1;
/// SHUTDOWN flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// Packet operations (`virtio_vsock_op`).
pub mod op {
    /// Connection request.
    pub const REQUEST: u16 = 1;
    /// Connection accepted.
    pub const RESPONSE: u16 = 2;
    /// Connection reset (refused or aborted).
    pub const RST: u16 = 3;
    /// Half or full close, with `SHUTDOWN_*` flags.
    pub const SHUTDOWN: u16 = 4;
    /// Stream data.
    pub const RW: u16 = 5;
    /// Unsolicited credit (buf_alloc / fwd_cnt) update.
    pub const CREDIT_UPDATE: u16 = 6;
    /// Asks the peer for a credit update.
    pub const CREDIT_REQUEST: u16 = 7;

    /// Whether `op` is one the device understands.
    pub fn is_known(op: u16) -> bool {
        (REQUEST..=CREDIT_REQUEST).contains(&op)
    }
}

/// A `virtio_vsock_hdr`, in host byte order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Header {
    /// The little-endian wire form.
    pub fn to_bytes(self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// The same header with `len` set (used by tests playing the guest).
    #[cfg(test)]
    pub fn with_len(mut self, len: u32) -> Self {
        self.len = len;
        self
    }

    /// Parses the wire form.
    pub fn from_bytes(b: &[u8; HEADER_SIZE]) -> Self {
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
        let u16_at = |i: usize| u16::from_le_bytes(b[i..i + 2].try_into().unwrap());
        Self {
            src_cid: u64::from_le_bytes(b[0..8].try_into().unwrap()),
            dst_cid: u64::from_le_bytes(b[8..16].try_into().unwrap()),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }
}

/// Why a guest chain could not be used as a vsock packet.
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    /// The chain's layout or addresses are wrong (virtio-vsock's own checks:
    /// too short, wrong direction, outside guest memory, `len` too big).
    #[error("malformed descriptor chain: {0}")]
    Chain(#[from] virtio_vsock::packet::Error),
    /// An RX chain with no room for data at all.
    #[error("RX buffer has no room for data")]
    NoRxRoom,
    /// The TX chain holds fewer bytes than its header announces.
    #[error("TX chain ends after {got} of {need} bytes")]
    ShortChain {
        /// Bytes the header (plus its `len`) calls for.
        need: usize,
        /// Bytes the chain held.
        got: usize,
    },
    /// A TX descriptor is device-writable.
    #[error("TX chain has a device-writable descriptor")]
    WriteOnly,
    /// A TX descriptor points outside guest memory.
    #[error("TX descriptor outside guest memory: {0}")]
    Memory(vm_memory::GuestMemoryError),
    /// The header announces more data than a packet may carry.
    #[error("header len {0} exceeds the {MAX_PKT_DATA}-byte packet limit")]
    TooLong(u32),
}

/// A packet the guest sent, copied out of guest memory.
#[derive(Debug, Clone, Default)]
pub struct TxPacket {
    pub hdr: Header,
    /// The payload (RW only; empty for every other op).
    pub data: Vec<u8>,
}

/// Reads one TX chain. The payload is at most [`MAX_PKT_DATA`] bytes.
///
/// Linux splits a packet over as many descriptors as it likes (the header
/// alone, then page-sized fragments of data), so the chain is read as one
/// byte stream: the header, then `len` bytes of data.
pub fn read_tx<'m>(
    mem: &'m GuestMemoryMmap,
    chain: &mut DescriptorChain<&'m GuestMemoryMmap>,
) -> Result<TxPacket, PacketError> {
    let mut reader = ChainReader {
        mem,
        chain,
        addr: GuestAddress(0),
        left: 0,
        read: 0,
    };
    let mut raw = [0u8; HEADER_SIZE];
    reader.read_exact(&mut raw, HEADER_SIZE)?;
    let hdr = Header::from_bytes(&raw);
    let mut data = Vec::new();
    if hdr.op == op::RW && hdr.len > 0 {
        if hdr.len > MAX_PKT_DATA {
            return Err(PacketError::TooLong(hdr.len));
        }
        data = vec![0; hdr.len as usize];
        reader.read_exact(&mut data, HEADER_SIZE + hdr.len as usize)?;
    }
    Ok(TxPacket { hdr, data })
}

/// Reads a TX chain's readable descriptors as one stream of bytes.
struct ChainReader<'a, 'm> {
    mem: &'m GuestMemoryMmap,
    chain: &'a mut DescriptorChain<&'m GuestMemoryMmap>,
    addr: GuestAddress,
    left: u32,
    read: usize,
}

impl ChainReader<'_, '_> {
    /// Fills `buf`; `need` is the packet size so far, for the error.
    fn read_exact(&mut self, buf: &mut [u8], need: usize) -> Result<(), PacketError> {
        let mut done = 0;
        while done < buf.len() {
            if self.left == 0 {
                let desc = self.chain.next().ok_or(PacketError::ShortChain {
                    need,
                    got: self.read,
                })?;
                if desc.is_write_only() {
                    return Err(PacketError::WriteOnly);
                }
                self.addr = desc.addr();
                self.left = desc.len();
                continue;
            }
            let n = (buf.len() - done).min(self.left as usize);
            self.mem
                .read_slice(&mut buf[done..done + n], self.addr)
                .map_err(PacketError::Memory)?;
            done += n;
            self.read += n;
            self.left -= n as u32;
            self.addr = GuestAddress(self.addr.0.wrapping_add(n as u64));
        }
        Ok(())
    }
}

/// A guest RX buffer, ready to receive one packet.
pub struct RxBuffer<'a> {
    pkt: VsockPacket<'a, ()>,
}

impl<'a> RxBuffer<'a> {
    /// Validates one RX chain: a header buffer plus room for data.
    pub fn new(
        mem: &'a GuestMemoryMmap,
        chain: &mut DescriptorChain<&'a GuestMemoryMmap>,
    ) -> Result<Self, PacketError> {
        let pkt = VsockPacket::from_rx_virtq_chain(mem, chain, MAX_PKT_DATA)?;
        if pkt.data_slice().map_or(true, |s| s.is_empty()) {
            return Err(PacketError::NoRxRoom);
        }
        Ok(Self { pkt })
    }

    /// How many data bytes fit (at most [`MAX_PKT_DATA`]).
    pub fn capacity(&self) -> usize {
        self.pkt
            .data_slice()
            .map_or(0, |s| s.len().min(MAX_PKT_DATA as usize))
    }

    /// Writes the packet; returns the used length to report. `data` must
    /// fit in [`capacity`](Self::capacity) and match `hdr.len`.
    pub fn write(&mut self, hdr: &Header, data: &[u8]) -> Result<u32, PacketError> {
        let data = &data[..data.len().min(self.capacity())];
        if let Some(slice) = self.pkt.data_slice() {
            slice.copy_from(data);
        }
        self.pkt.set_header_from_raw(&hdr.to_bytes())?;
        Ok((HEADER_SIZE + data.len()) as u32)
    }
}
