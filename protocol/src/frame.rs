//! Frames: an 8-byte header (body length, version, type, reserved) and the
//! body. See the crate docs for the layout.

use std::io::{self, Read, Write};

use crate::codec::{decode_body, encode_body};
use crate::message::{DecodeError, EncodeError, Message, MessageType};
use crate::{MAX_BODY_LEN, PROTOCOL_VERSION};

/// Length of a frame header in bytes.
pub const HEADER_LEN: usize = 8;

/// A parsed frame header. Once one is parsed, its body can be read (or
/// skipped) whatever it holds, which keeps the stream in step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Length of the body that follows.
    pub body_len: usize,
    /// The sender's protocol version.
    pub version: u8,
    /// The raw type byte.
    pub kind: u8,
}

impl FrameHeader {
    /// Parses a header. [`DecodeError::FrameTooLarge`] still returns the
    /// length, so the caller may skip the body; [`DecodeError::BadHeader`]
    /// means the stream is out of step and should be closed.
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Result<FrameHeader, DecodeError> {
        let body_len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        if bytes[6] != 0 || bytes[7] != 0 {
            return Err(DecodeError::BadHeader);
        }
        if body_len > MAX_BODY_LEN {
            return Err(DecodeError::FrameTooLarge { len: body_len });
        }
        Ok(FrameHeader {
            body_len,
            version: bytes[4],
            kind: bytes[5],
        })
    }

    /// Decodes the body this header announced.
    pub fn decode_body(&self, body: &[u8]) -> Result<Message, DecodeError> {
        if self.version != PROTOCOL_VERSION {
            return Err(DecodeError::UnsupportedVersion(self.version));
        }
        let kind =
            MessageType::from_byte(self.kind).ok_or(DecodeError::UnknownMessageType(self.kind))?;
        if body.len() != self.body_len {
            return Err(DecodeError::Truncated {
                field: "frame body",
            });
        }
        decode_body(kind, body)
    }
}

impl Message {
    /// The whole frame for this message, header included. Refuses (and
    /// sends nothing) when a field breaks the protocol's rules, e.g. a
    /// payload over [`crate::MAX_PAYLOAD_LEN`].
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let body = encode_body(self)?;
        let mut frame = Vec::with_capacity(HEADER_LEN + body.len());
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.push(PROTOCOL_VERSION);
        frame.push(self.message_type() as u8);
        frame.extend_from_slice(&[0, 0]);
        frame.extend_from_slice(&body);
        Ok(frame)
    }

    /// Decodes the first frame of `buf`, returning the message and the
    /// number of bytes it took. [`DecodeError::Incomplete`] says how many
    /// bytes a whole frame needs; any other error is about a complete frame.
    pub fn decode(buf: &[u8]) -> Result<(Message, usize), DecodeError> {
        let Some(head) = buf.first_chunk::<HEADER_LEN>() else {
            return Err(DecodeError::Incomplete { needed: HEADER_LEN });
        };
        let header = FrameHeader::parse(head)?;
        let total = HEADER_LEN + header.body_len;
        let Some(body) = buf.get(HEADER_LEN..total) else {
            return Err(DecodeError::Incomplete { needed: total });
        };
        Ok((header.decode_body(body)?, total))
    }
}

/// Reads one frame from a blocking stream. `Ok(None)` is a clean end of
/// stream between frames; an end inside a frame is
/// [`io::ErrorKind::UnexpectedEof`]. A frame that does not decode is
/// consumed whole and returned as `Ok(Some(Err(..)))`, so the caller can
/// answer it and read on.
pub fn read_message(r: &mut impl Read) -> io::Result<Option<Result<Message, DecodeError>>> {
    let mut head = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let header = match FrameHeader::parse(&head) {
        Ok(h) => h,
        Err(DecodeError::FrameTooLarge { len }) => {
            io::copy(&mut r.take(len as u64), &mut io::sink())?;
            return Ok(Some(Err(DecodeError::FrameTooLarge { len })));
        }
        Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
    };
    let mut body = vec![0u8; header.body_len];
    r.read_exact(&mut body)?;
    Ok(Some(header.decode_body(&body)))
}

/// Encodes `m` and writes its frame to a blocking stream.
pub fn write_message(w: &mut impl Write, m: &Message) -> io::Result<()> {
    let frame = m
        .encode()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    w.write_all(&frame)?;
    w.flush()
}
