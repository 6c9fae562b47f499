//! Field encoding inside a frame body: fixed-width little-endian integers,
//! byte strings and UTF-8 strings prefixed with a `u32` length, options as a
//! `0`/`1` tag byte. Every read is bounds-checked and every length limited.

use crate::message::DecodeError;

/// Appends fields to a frame body.
#[derive(Default)]
pub(crate) struct Writer {
    pub(crate) buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    pub(crate) fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub(crate) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub(crate) fn i32(&mut self, v: i32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub(crate) fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// Callers check `v.len()` against the field's limit first, so the
    /// length always fits a `u32`.
    pub(crate) fn bytes(&mut self, v: &[u8]) {
        self.u32(v.len() as u32);
        self.buf.extend_from_slice(v);
    }

    pub(crate) fn str(&mut self, v: &str) {
        self.bytes(v.as_bytes());
    }

    pub(crate) fn opt_str(&mut self, v: Option<&str>) {
        match v {
            None => self.u8(0),
            Some(s) => {
                self.u8(1);
                self.str(s);
            }
        }
    }

    pub(crate) fn opt_u64(&mut self, v: Option<u64>) {
        match v {
            None => self.u8(0),
            Some(x) => {
                self.u8(1);
                self.u64(x);
            }
        }
    }

    pub(crate) fn opt_i32(&mut self, v: Option<i32>) {
        match v {
            None => self.u8(0),
            Some(x) => {
                self.u8(1);
                self.i32(x);
            }
        }
    }
}

/// Reads fields from a frame body, refusing to read past its end.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated { field });
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    pub(crate) fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_le_bytes(self.array(field)?))
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    /// The length prefix of a byte field, checked against `max` before any
    /// byte of the field is looked at.
    pub(crate) fn len(&mut self, field: &'static str, max: usize) -> Result<usize, DecodeError> {
        let len = self.u32(field)? as usize;
        if len > max {
            return Err(DecodeError::FieldTooLong { field, len, max });
        }
        Ok(len)
    }

    pub(crate) fn bytes(
        &mut self,
        field: &'static str,
        max: usize,
    ) -> Result<Vec<u8>, DecodeError> {
        let len = self.len(field, max)?;
        Ok(self.take(len, field)?.to_vec())
    }

    /// The `len` bytes of a field whose length prefix was already read.
    pub(crate) fn raw(&mut self, field: &'static str, len: usize) -> Result<Vec<u8>, DecodeError> {
        Ok(self.take(len, field)?.to_vec())
    }

    pub(crate) fn string(
        &mut self,
        field: &'static str,
        max: usize,
    ) -> Result<String, DecodeError> {
        let bytes = self.bytes(field, max)?;
        String::from_utf8(bytes).map_err(|_| DecodeError::NotUtf8 { field })
    }

    fn tag(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            tag => Err(DecodeError::BadTag { field, tag }),
        }
    }

    pub(crate) fn opt_string(
        &mut self,
        field: &'static str,
        max: usize,
    ) -> Result<Option<String>, DecodeError> {
        Ok(if self.tag(field)? {
            Some(self.string(field, max)?)
        } else {
            None
        })
    }

    pub(crate) fn opt_u64(&mut self, field: &'static str) -> Result<Option<u64>, DecodeError> {
        Ok(if self.tag(field)? {
            Some(self.u64(field)?)
        } else {
            None
        })
    }

    pub(crate) fn opt_i32(&mut self, field: &'static str) -> Result<Option<i32>, DecodeError> {
        Ok(if self.tag(field)? {
            Some(self.i32(field)?)
        } else {
            None
        })
    }

    /// Fails unless every byte of the body was consumed: trailing bytes mean
    /// the peer and we disagree about the message's layout.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes {
                len: self.buf.len(),
            })
        }
    }
}
