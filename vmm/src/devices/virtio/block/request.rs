//! One virtio-block request: parsed from a descriptor chain, validated, run.
//!
//! The driver may frame a request however it likes (virtio 1.x, 2.6.4), so
//! the chain is read as two byte streams: the device-readable bytes (the
//! 16-byte header, then OUT data) and the device-writable bytes (IN or GET_ID
//! data, then the status byte, which is the last byte of the chain).

use crate::devices::counters;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::disk::{Disk, DiskError, ID_LEN};
use super::SECTOR_SIZE;

/// Length of the request header: type (le32), reserved (le32), sector (le64).
const HEADER_LEN: u64 = 16;

/// Why a request was refused or failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum RequestError {
    /// The queue stopped walking the chain early: a loop, a next index out
    /// of the table, an unreadable descriptor or more than 4 GiB in total.
    #[error("descriptor chain is cut short (loop, bad next index or over 4 GiB)")]
    ChainTruncated,
    /// There is no device-writable byte to put the status in.
    #[error("descriptor chain has no device-writable byte for the status")]
    NoStatus,
    /// The status byte is not in guest memory.
    #[error("status byte at {0:#x} is outside guest memory")]
    StatusOutsideMemory(u64),
    /// A device-readable descriptor follows a device-writable one.
    #[error("device-readable descriptor after a device-writable one")]
    ReadableAfterWritable,
    /// A descriptor points outside guest memory.
    #[error("buffer of {len} bytes at {addr:#x} is outside guest memory")]
    OutsideMemory {
        /// Guest physical address of the buffer.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// The device-readable bytes are too few for the header.
    #[error("request header is {0} bytes, needs {HEADER_LEN}")]
    HeaderTooShort(u64),
    /// The request type is not one the device implements.
    #[error("request type {0} is not supported")]
    UnsupportedType(u32),
    /// The request carries data it has no use for (e.g. readable data on a read).
    #[error("{kind:?} request carries {len} bytes it has no use for")]
    StrayData {
        /// The request type.
        kind: RequestType,
        /// How many bytes are stray.
        len: u64,
    },
    /// IN/OUT data is not a whole number of sectors.
    #[error("data length {0} is not a multiple of {SECTOR_SIZE}")]
    UnalignedLength(u64),
    /// IN/OUT sectors run past the end of the disk (or overflow).
    #[error("{count} sectors at sector {sector} run past the disk's {capacity} sectors")]
    OutOfRange {
        /// First sector.
        sector: u64,
        /// Number of sectors.
        count: u64,
        /// Disk capacity in sectors.
        capacity: u64,
    },
    /// OUT on a read-only disk.
    #[error("write to a read-only disk")]
    ReadOnly,
    /// Guest memory could not be accessed although it was validated.
    #[error("guest memory access failed: {0}")]
    GuestMemory(#[source] vm_memory::GuestMemoryError),
    /// The disk file failed.
    #[error(transparent)]
    Disk(#[from] DiskError),
}

impl RequestError {
    /// The status the driver reads for this error.
    fn status(&self) -> u8 {
        match self {
            Self::UnsupportedType(_) => VIRTIO_BLK_S_UNSUPP as u8,
            _ => VIRTIO_BLK_S_IOERR as u8,
        }
    }
}

/// The request types the device implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RequestType {
    /// Read sectors into guest memory.
    In,
    /// Write sectors from guest memory.
    Out,
    /// Make completed writes durable.
    Flush,
    /// Return the disk's id string.
    GetId,
}

/// A run of guest memory that one descriptor, or part of it, points to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Segment {
    /// Guest physical address.
    pub(super) addr: GuestAddress,
    /// Length in bytes.
    pub(super) len: u32,
}

/// Segments of guest memory seen as one byte stream; all in guest memory.
#[derive(Debug, Default)]
struct Stream(Vec<Segment>);

impl Stream {
    /// A stream over `segments`, provided they all lie in guest memory.
    fn in_memory(mem: &GuestMemoryMmap, segments: Vec<Segment>) -> Result<Self, RequestError> {
        for s in &segments {
            if !GuestMemoryBackend::check_range(mem, s.addr, s.len as usize) {
                return Err(RequestError::OutsideMemory {
                    addr: s.addr.raw_value(),
                    len: s.len,
                });
            }
        }
        Ok(Self(segments))
    }

    fn len(&self) -> u64 {
        self.0.iter().map(|s| u64::from(s.len)).sum()
    }

    /// Splits off the first `n` bytes (or all, if fewer), leaving the rest.
    fn split_front(&mut self, mut n: u64) -> Stream {
        let mut front = Vec::new();
        let mut rest = Vec::new();
        for s in self.0.drain(..) {
            let len = u64::from(s.len);
            if n == 0 {
                rest.push(s);
            } else if len <= n {
                n -= len;
                front.push(s);
            } else {
                // n < s.len, so it fits in u32; and the segment is in guest
                // memory, so the address cannot overflow.
                let cut = n as u32;
                front.push(Segment {
                    addr: s.addr,
                    len: cut,
                });
                rest.push(Segment {
                    addr: s.addr.unchecked_add(n),
                    len: s.len - cut,
                });
                n = 0;
            }
        }
        self.0 = rest;
        Stream(front)
    }

    /// Splits off the last `n` bytes (or all, if fewer), leaving the rest.
    fn split_back(&mut self, n: u64) -> Stream {
        let keep = self.len().saturating_sub(n);
        let front = self.split_front(keep);
        std::mem::replace(self, front)
    }

    /// Copies the stream's first `buf.len()` bytes into `buf`.
    fn read(&self, mem: &GuestMemoryMmap, buf: &mut [u8]) -> Result<(), RequestError> {
        let mut done = 0;
        for s in &self.0 {
            let n = (s.len as usize).min(buf.len() - done);
            mem.read_slice(&mut buf[done..done + n], s.addr)
                .map_err(RequestError::GuestMemory)?;
            done += n;
        }
        Ok(())
    }

    /// Copies `buf` to the start of the stream, as much as fits; returns how much did.
    fn write(&self, mem: &GuestMemoryMmap, buf: &[u8]) -> Result<usize, RequestError> {
        let mut done = 0;
        for s in &self.0 {
            let n = (s.len as usize).min(buf.len() - done);
            mem.write_slice(&buf[done..done + n], s.addr)
                .map_err(RequestError::GuestMemory)?;
            done += n;
        }
        Ok(done)
    }
}

/// A validated request, ready to run.
#[derive(Debug)]
struct Request {
    kind: RequestType,
    /// Byte offset on the disk (IN and OUT).
    offset: u64,
    /// The data buffers: device-readable for OUT, device-writable otherwise.
    data: Stream,
    /// Where the status byte goes.
    status: GuestAddress,
}

/// A chain the device refuses, and where, if anywhere, it can say so.
#[derive(Debug)]
struct Refusal {
    status: Option<GuestAddress>,
    error: RequestError,
}

/// Runs the request in `chain` and writes its status; returns the number of
/// bytes written into the chain's buffers (the used length).
///
/// Never fails: a request that cannot run gets an error status, and a chain
/// with nowhere to put a status is given back with nothing written.
pub(super) fn handle(
    disk: &mut Disk,
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> u32 {
    let head = chain.head_index();
    let (status_addr, status, written) = match parse(disk, mem, chain) {
        Ok(request) => {
            let status_addr = request.status;
            match request.execute(disk, mem) {
                Ok(written) => (status_addr, VIRTIO_BLK_S_OK as u8, written),
                Err(e) => {
                    counters::BLOCK_BAD_REQUEST.inc();
                    crate::error_limited!("virtio-block: request at descriptor {head} failed: {e}");
                    (status_addr, e.status(), 0)
                }
            }
        }
        Err(Refusal {
            status: Some(status_addr),
            error,
        }) => {
            counters::BLOCK_BAD_REQUEST.inc();
            crate::warn_limited!("virtio-block: request at descriptor {head} refused: {error}");
            (status_addr, error.status(), 0)
        }
        Err(Refusal {
            status: None,
            error,
        }) => {
            counters::BLOCK_BAD_REQUEST.inc();
            crate::warn_limited!(
                "virtio-block: chain at descriptor {head} given back unanswered: {error}"
            );
            return 0;
        }
    };
    if let Err(e) = mem.write_obj(status, status_addr) {
        counters::BLOCK_BAD_REQUEST.inc();
        crate::error_limited!("virtio-block: cannot write status at {status_addr:?}: {e}");
        return 0;
    }
    written.saturating_add(1)
}

fn parse(
    disk: &Disk,
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> Result<Request, Refusal> {
    let unanswerable = |error| Refusal {
        status: None,
        error,
    };
    let mut readable = Vec::new();
    let mut writable = Vec::new();
    let mut misordered = false;
    let mut last_has_next = false;
    // The queue bounds the walk: at most queue-size descriptors (or an
    // indirect table's) and 4 GiB in total.
    for desc in chain {
        last_has_next = desc.has_next();
        if desc.len() == 0 {
            continue;
        }
        let segment = Segment {
            addr: desc.addr(),
            len: desc.len(),
        };
        if desc.is_write_only() {
            writable.push(segment);
        } else {
            misordered |= !writable.is_empty();
            readable.push(segment);
        }
    }
    if last_has_next {
        return Err(unanswerable(RequestError::ChainTruncated));
    }
    let last = writable
        .last()
        .ok_or(unanswerable(RequestError::NoStatus))?;
    let status = last
        .addr
        .checked_add(u64::from(last.len) - 1)
        .filter(|&addr| GuestMemoryBackend::check_range(mem, addr, 1))
        .ok_or(unanswerable(RequestError::StatusOutsideMemory(
            last.addr.raw_value().wrapping_add(u64::from(last.len) - 1),
        )))?;

    let refuse = |error| Refusal {
        status: Some(status),
        error,
    };
    if misordered {
        return Err(refuse(RequestError::ReadableAfterWritable));
    }
    let mut readable = Stream::in_memory(mem, readable).map_err(refuse)?;
    let mut writable = Stream::in_memory(mem, writable).map_err(refuse)?;
    writable.split_back(1);

    let header = readable.split_front(HEADER_LEN);
    if header.len() < HEADER_LEN {
        return Err(refuse(RequestError::HeaderTooShort(header.len())));
    }
    let mut raw = [0u8; HEADER_LEN as usize];
    header.read(mem, &mut raw).map_err(refuse)?;
    let request_type = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let sector = u64::from_le_bytes([
        raw[8], raw[9], raw[10], raw[11], raw[12], raw[13], raw[14], raw[15],
    ]);
    let kind = match request_type {
        VIRTIO_BLK_T_IN => RequestType::In,
        VIRTIO_BLK_T_OUT => RequestType::Out,
        VIRTIO_BLK_T_FLUSH => RequestType::Flush,
        VIRTIO_BLK_T_GET_ID => RequestType::GetId,
        other => return Err(refuse(RequestError::UnsupportedType(other))),
    };

    let (data, stray) = match kind {
        RequestType::Out => (readable, writable.len()),
        RequestType::In | RequestType::GetId => (writable, readable.len()),
        RequestType::Flush => {
            let stray = readable.len() + writable.len();
            (Stream::default(), stray)
        }
    };
    if stray != 0 {
        return Err(refuse(RequestError::StrayData { kind, len: stray }));
    }
    let mut offset = 0;
    if matches!(kind, RequestType::In | RequestType::Out) {
        if kind == RequestType::Out && disk.read_only() {
            return Err(refuse(RequestError::ReadOnly));
        }
        let len = data.len();
        if len % SECTOR_SIZE != 0 {
            return Err(refuse(RequestError::UnalignedLength(len)));
        }
        let count = len / SECTOR_SIZE;
        let capacity = disk.sectors();
        if !matches!(sector.checked_add(count), Some(end) if end <= capacity) {
            return Err(refuse(RequestError::OutOfRange {
                sector,
                count,
                capacity,
            }));
        }
        // sector <= capacity = file length / SECTOR_SIZE: cannot overflow.
        offset = sector * SECTOR_SIZE;
    }
    Ok(Request {
        kind,
        offset,
        data,
        status,
    })
}

impl Request {
    /// Runs the request; returns the data bytes written into guest memory.
    fn execute(self, disk: &mut Disk, mem: &GuestMemoryMmap) -> Result<u32, RequestError> {
        let written = match self.kind {
            RequestType::In => {
                disk.read(mem, self.offset, &self.data.0)?;
                self.data.len()
            }
            RequestType::Out => {
                disk.write(mem, self.offset, &self.data.0)?;
                0
            }
            RequestType::Flush => {
                disk.flush()?;
                0
            }
            RequestType::GetId => {
                let id: &[u8; ID_LEN] = disk.id();
                self.data.write(mem, id)? as u64
            }
        };
        // The chain's writable bytes number under 4 GiB.
        Ok(u32::try_from(written).unwrap_or(u32::MAX))
    }
}
