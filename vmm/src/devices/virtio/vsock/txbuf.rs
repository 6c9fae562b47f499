//! The bounded buffer for guest data a host Unix socket cannot take yet.
//!
//! Its capacity is the `buf_alloc` the device advertises to the guest, so a
//! guest that respects its credit can never overflow it; an overflow means the
//! guest ignored flow control and the connection is reset.

use std::collections::VecDeque;
use std::io::{self, Write};

/// Bytes of guest data one connection may hold for its host socket.
pub const TXBUF_CAPACITY: usize = 256 * 1024;

/// The data overflowed the buffer (the guest ignored its credit).
#[derive(Debug, PartialEq, Eq)]
pub struct Overflow;

/// A FIFO of bytes waiting for the host socket, never above its capacity.
#[derive(Debug)]
pub struct TxBuf {
    bytes: VecDeque<u8>,
    capacity: usize,
}

impl TxBuf {
    /// An empty buffer holding at most `capacity` bytes.
    pub fn new(capacity: usize) -> Self {
        Self {
            bytes: VecDeque::new(),
            capacity,
        }
    }

    /// Bytes waiting.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Appends `data`, all or nothing.
    pub fn push(&mut self, data: &[u8]) -> Result<(), Overflow> {
        if data.len() > self.capacity - self.bytes.len() {
            return Err(Overflow);
        }
        self.bytes.extend(data);
        Ok(())
    }

    /// Writes as much as `sink` takes without blocking; returns the byte count.
    pub fn flush_to<W: Write>(&mut self, sink: &mut W) -> io::Result<usize> {
        let mut written = 0;
        while !self.bytes.is_empty() {
            let (front, _) = self.bytes.as_slices();
            match sink.write(front) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.bytes.drain(..n);
                    written += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        if self.bytes.is_empty() {
            // Give the memory back: most connections are idle most of the time.
            self.bytes.shrink_to(4096);
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that takes at most `room` bytes, then would block.
    struct Limited {
        got: Vec<u8>,
        room: usize,
    }

    impl Write for Limited {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            self.got.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn refuses_overflow_whole() {
        let mut b = TxBuf::new(8);
        b.push(b"12345").unwrap();
        assert_eq!(b.push(b"6789"), Err(Overflow));
        assert_eq!(b.len(), 5);
        b.push(b"678").unwrap();
        assert_eq!(b.len(), 8);
    }

    #[test]
    fn flushes_in_order_until_the_sink_blocks() {
        let mut b = TxBuf::new(16);
        b.push(b"hello ").unwrap();
        b.push(b"world").unwrap();
        let mut sink = Limited {
            got: vec![],
            room: 7,
        };
        assert_eq!(b.flush_to(&mut sink).unwrap(), 7);
        assert_eq!(b.len(), 4);
        sink.room = 100;
        assert_eq!(b.flush_to(&mut sink).unwrap(), 4);
        assert!(b.is_empty());
        assert_eq!(sink.got, b"hello world");
    }
}
