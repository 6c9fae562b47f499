//! The conversation over an async byte stream (tokio; the `tokio`
//! feature): [`FrameReader`] and [`FrameWriter`], [`Connection`] holding
//! both, and the vsock handshake ([`connect`], [`read_connect`]) on tokio
//! Unix sockets. The router, the agent and the host tests all use these.
//!
//! The reader buffers what it has read, so [`FrameReader::read`] is cancel
//! safe (a timed-out read loses nothing; the next call goes on where it
//! stopped). Its buffer never holds more than one frame's worth: a frame
//! announcing more than [`crate::MAX_BODY_LEN`] is reported and its bytes
//! skipped as they arrive, never stored.

use std::io;
use std::path::Path;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::time::{timeout_at, Instant};

use crate::frame::{FrameHeader, HEADER_LEN};
use crate::handshake::{self, Answer, HandshakeError, MAX_ANSWER_LEN, RETRY_PAUSE};
use crate::message::{DecodeError, EncodeError, Message};

/// How much is read from the stream at a time.
const READ_CHUNK: usize = 64 * 1024;

/// Reads frames from an async stream.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
    /// Bytes of a refused, oversized frame still to drop.
    skip: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Reads frames from `inner`.
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            buf: Vec::new(),
            skip: 0,
        }
    }

    /// The next frame: `Ok(None)` at a clean end of stream between
    /// frames; `Ok(Some(Err(..)))` for a frame that was read whole (or is
    /// being skipped, if too large) but does not decode, so the caller can
    /// answer it and read on; `Err` when the stream failed, ended inside a
    /// frame, or is out of step (a bad header). Cancel safe.
    pub async fn read(&mut self) -> io::Result<Option<Result<Message, DecodeError>>> {
        loop {
            if self.skip > 0 {
                let n = self.skip.min(self.buf.len());
                self.buf.drain(..n);
                self.skip -= n;
            }
            if self.skip == 0 {
                if let Some(item) = self.parse()? {
                    return Ok(Some(item));
                }
            }
            self.buf.reserve(READ_CHUNK);
            let n = (&mut self.inner)
                .take(READ_CHUNK as u64)
                .read_buf(&mut self.buf)
                .await?;
            if n == 0 {
                if self.buf.is_empty() && self.skip == 0 {
                    return Ok(None);
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the stream ended inside a frame",
                ));
            }
        }
    }

    /// A whole frame from the buffer, if one is there.
    fn parse(&mut self) -> io::Result<Option<Result<Message, DecodeError>>> {
        let Some(head) = self.buf.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let header = match FrameHeader::parse(head) {
            Ok(h) => h,
            Err(DecodeError::FrameTooLarge { len }) => {
                self.buf.drain(..HEADER_LEN);
                self.skip = len;
                return Ok(Some(Err(DecodeError::FrameTooLarge { len })));
            }
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
        };
        let total = HEADER_LEN + header.body_len;
        if self.buf.len() < total {
            return Ok(None);
        }
        let m = header.decode_body(&self.buf[HEADER_LEN..total]);
        self.buf.drain(..total);
        if self.buf.capacity() > 2 * READ_CHUNK && self.buf.len() < READ_CHUNK {
            self.buf.shrink_to(READ_CHUNK);
        }
        Ok(Some(m))
    }
}

/// Why a message was not sent.
#[derive(Debug)]
pub enum SendError {
    /// It breaks the protocol's rules; nothing was written.
    Encode(EncodeError),
    /// The stream failed (part of the frame may have been written).
    Io(io::Error),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Encode(e) => write!(f, "cannot encode the message: {e}"),
            SendError::Io(e) => write!(f, "cannot send the message: {e}"),
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SendError::Encode(e) => Some(e),
            SendError::Io(e) => Some(e),
        }
    }
}

/// Writes frames to an async stream.
#[derive(Debug)]
pub struct FrameWriter<W> {
    inner: W,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// Writes frames to `inner`.
    pub fn new(inner: W) -> Self {
        FrameWriter { inner }
    }

    /// Encodes `m` and writes its frame (flushed). Not cancel safe: a
    /// write cut short leaves the stream out of step, so give up on it.
    pub async fn write(&mut self, m: &Message) -> Result<(), SendError> {
        let frame = m.encode().map_err(SendError::Encode)?;
        self.inner.write_all(&frame).await.map_err(SendError::Io)?;
        self.inner.flush().await.map_err(SendError::Io)
    }

    /// Shuts the write side down.
    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.inner.shutdown().await
    }
}

/// Both directions of one stream.
#[derive(Debug)]
pub struct Connection<R, W> {
    /// Frames in.
    pub reader: FrameReader<R>,
    /// Frames out.
    pub writer: FrameWriter<W>,
}

/// A connection over a tokio Unix socket.
pub type UnixConnection =
    Connection<tokio::net::unix::OwnedReadHalf, tokio::net::unix::OwnedWriteHalf>;

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Connection<R, W> {
    /// A connection over a read half and a write half.
    pub fn new(r: R, w: W) -> Self {
        Connection {
            reader: FrameReader::new(r),
            writer: FrameWriter::new(w),
        }
    }

    /// The next frame (see [`FrameReader::read`]).
    pub async fn read(&mut self) -> io::Result<Option<Result<Message, DecodeError>>> {
        self.reader.read().await
    }

    /// Sends one message (see [`FrameWriter::write`]).
    pub async fn write(&mut self, m: &Message) -> Result<(), SendError> {
        self.writer.write(m).await
    }
}

impl UnixConnection {
    /// A connection over a Unix stream.
    pub fn unix(s: UnixStream) -> Self {
        let (r, w) = s.into_split();
        Connection::new(r, w)
    }
}

/// One handshake attempt on a connected stream: writes `CONNECT <port>`,
/// reads the answer byte by byte (nothing after it is consumed).
pub async fn handshake(s: &mut UnixStream, port: u32) -> Result<u32, HandshakeError> {
    s.write_all(handshake::connect_line(port).as_bytes())
        .await
        .map_err(HandshakeError::Io)?;
    let mut answer = Answer::default();
    loop {
        let got = match s.read_u8().await {
            Ok(b) => Some(b),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
                ) =>
            {
                None
            }
            Err(e) => return Err(HandshakeError::Io(e)),
        };
        if let Some(port) = answer.push(got)? {
            return Ok(port);
        }
    }
}

/// Connects to guest `port` through the VMM's socket `uds`, retrying while
/// the VMM or the guest is not ready, until `deadline`. `attempt` bounds
/// each try (a VMM that accepts but never answers is tried again).
pub async fn connect(
    uds: &Path,
    port: u32,
    deadline: Instant,
    attempt: std::time::Duration,
) -> Result<UnixStream, HandshakeError> {
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(HandshakeError::Timeout);
        }
        let try_once = async {
            let mut s = UnixStream::connect(uds)
                .await
                .map_err(HandshakeError::Unreachable)?;
            handshake(&mut s, port).await.map(|_| s)
        };
        match timeout_at(deadline.min(now + attempt), try_once).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) if !e.is_retryable() => return Err(e),
            Ok(Err(_)) | Err(_) => {}
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// The VMM's side: reads a `CONNECT <port>\n` request (at most
/// [`MAX_ANSWER_LEN`] bytes, byte by byte); the port, or `None` for
/// anything else.
pub async fn read_connect(s: &mut (impl AsyncRead + Unpin)) -> Option<u32> {
    let mut line = Vec::new();
    while line.len() < MAX_ANSWER_LEN {
        match s.read_u8().await.ok()? {
            b'\n' => return handshake::parse_connect(&line),
            b => line.push(b),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Hello;

    fn hello() -> Message {
        Message::Hello(Hello {
            agent_version: "t".into(),
            boot: Default::default(),
        })
    }

    #[tokio::test]
    async fn frames_survive_partial_reads_and_oversized_frames_are_skipped() {
        let (a, b) = tokio::io::duplex(64);
        let (ar, aw) = tokio::io::split(a);
        let (br, bw) = tokio::io::split(b);
        let mut left = Connection::new(ar, aw);
        let mut right = Connection::new(br, bw);
        let writer = tokio::spawn(async move {
            right.write(&Message::Ping(1)).await.unwrap();
            // A header announcing 8 MiB (over MAX_BODY_LEN), then its
            // bytes, then a good frame.
            let len: u32 = 8 << 20;
            let mut raw = len.to_be_bytes().to_vec();
            raw.extend_from_slice(&[1, 10, 0, 0]);
            right.writer.inner.write_all(&raw).await.unwrap();
            let zeros = vec![0u8; 1 << 20];
            for _ in 0..8 {
                right.writer.inner.write_all(&zeros).await.unwrap();
            }
            right.write(&hello()).await.unwrap();
            right
        });
        assert_eq!(
            left.read().await.unwrap().unwrap().unwrap(),
            Message::Ping(1)
        );
        assert!(matches!(
            left.read().await.unwrap().unwrap(),
            Err(DecodeError::FrameTooLarge { .. })
        ));
        assert_eq!(left.read().await.unwrap().unwrap().unwrap(), hello());
        assert!(left.reader.buf.capacity() < 4 * READ_CHUNK);
        drop(writer.await.unwrap());
        assert!(left.read().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_cancelled_read_loses_nothing() {
        let (a, mut b) = tokio::io::duplex(1024);
        let mut r = FrameReader::new(a);
        let frame = Message::Ping(9).encode().unwrap();
        b.write_all(&frame[..5]).await.unwrap();
        let cut = tokio::time::timeout(std::time::Duration::from_millis(50), r.read()).await;
        assert!(cut.is_err());
        b.write_all(&frame[5..]).await.unwrap();
        assert_eq!(r.read().await.unwrap().unwrap().unwrap(), Message::Ping(9));
    }
}
