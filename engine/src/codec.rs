//! The strict binary reader and writer every Larder format is built from.
//!
//! All integers are fixed-width little-endian, so every value has exactly one encoding
//! and a decoded message re-encodes to the identical bytes. The [`Reader`] checks every
//! length against what is left of the input before using it and reports precisely what
//! was wrong; it never panics and never allocates. The [`Writer`] writes into a
//! caller-owned buffer and, when the buffer is too small, reports how many bytes the
//! whole encoding needs.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::key::{KeyRef, MAX_KEY_LEN};

/// Why bytes could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended before `what` could be read.
    #[error("truncated input: {what} needs {needed} more bytes, {available} left")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Bytes it needs.
        needed: usize,
        /// Bytes left in the input.
        available: usize,
    },
    /// The format version byte is not one this build understands.
    #[error("unsupported {what} format version {found} (this build reads {supported})")]
    UnsupportedVersion {
        /// Which format.
        what: &'static str,
        /// The version found.
        found: u8,
        /// The version this build reads.
        supported: u8,
    },
    /// A tag byte names no known variant.
    #[error("unknown {what} tag {tag}")]
    UnknownTag {
        /// Which enumeration.
        what: &'static str,
        /// The tag found.
        tag: u8,
    },
    /// A length or count is larger than its bound.
    #[error("{what} is {len}, the maximum is {max}")]
    TooLong {
        /// The field.
        what: &'static str,
        /// The length found.
        len: u64,
        /// Its bound.
        max: u64,
    },
    /// A field holds a value outside its domain (a zero length, a boolean that is
    /// neither 0 nor 1, …).
    #[error("invalid {what}")]
    InvalidValue {
        /// The field.
        what: &'static str,
    },
    /// Bytes remain after a complete message.
    #[error("{count} trailing bytes after a complete {what}")]
    TrailingBytes {
        /// What was decoded.
        what: &'static str,
        /// How many bytes are left over.
        count: usize,
    },
}

/// Why a value could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The caller's buffer is too small; `needed` is the full encoded length.
    #[error("buffer of {available} bytes is too small, the encoding needs {needed}")]
    BufferTooSmall {
        /// Bytes the encoding needs.
        needed: usize,
        /// Bytes the buffer has.
        available: usize,
    },
    /// A value breaks a bound the decoder enforces, so encoding it would produce bytes
    /// nobody can read back.
    #[error("{what} is {len}, the maximum is {max}")]
    TooLong {
        /// The field.
        what: &'static str,
        /// Its length.
        len: u64,
        /// Its bound.
        max: u64,
    },
    /// A field holds a value the decoder refuses (out of its domain).
    #[error("invalid {what}")]
    Invalid {
        /// The field.
        what: &'static str,
    },
}

/// A cursor over a borrowed input.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Starts reading `buf` from its first byte.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Bytes read so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Takes the next `n` bytes.
    pub fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError::Truncated { what, needed: n, available: self.remaining() });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N, what)?);
        Ok(out)
    }

    /// Reads one byte.
    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }

    /// Reads a little-endian `u16`.
    pub fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    /// Reads a little-endian `u32`.
    pub fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    /// Reads a little-endian `u64`.
    pub fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Reads a boolean stored as exactly 0 or 1.
    pub fn bool(&mut self, what: &'static str) -> Result<bool, DecodeError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::InvalidValue { what }),
        }
    }

    /// Reads a format version byte and checks it.
    pub fn version(&mut self, what: &'static str, supported: u8) -> Result<(), DecodeError> {
        let found = self.u8(what)?;
        if found == supported {
            Ok(())
        } else {
            Err(DecodeError::UnsupportedVersion { what, found, supported })
        }
    }

    /// Reads a key: a `u16` length (1..=[`MAX_KEY_LEN`]) and the bytes.
    pub fn key(&mut self) -> Result<KeyRef<'a>, DecodeError> {
        let len = usize::from(self.u16("key length")?);
        if len == 0 {
            return Err(DecodeError::InvalidValue { what: "key length" });
        }
        if len > MAX_KEY_LEN {
            return Err(DecodeError::TooLong { what: "key", len: len as u64, max: MAX_KEY_LEN as u64 });
        }
        let bytes = self.bytes(len, "key")?;
        KeyRef::new(bytes).map_err(|_| DecodeError::InvalidValue { what: "key" })
    }

    /// Reads a `u32` element count for a list whose elements each take at least
    /// `min_element_len` bytes, checking it against `max` and against what the input can
    /// still hold. A caller may therefore allocate `count` elements without trusting the
    /// input: the allocation is bounded by the input's size.
    pub fn count(
        &mut self,
        what: &'static str,
        max: usize,
        min_element_len: usize,
    ) -> Result<usize, DecodeError> {
        let count = self.u32(what)? as usize;
        if count > max {
            return Err(DecodeError::TooLong { what, len: count as u64, max: max as u64 });
        }
        let needed = count.saturating_mul(min_element_len.max(1));
        if needed > self.remaining() {
            return Err(DecodeError::Truncated { what, needed, available: self.remaining() });
        }
        Ok(count)
    }

    /// Reads an optional socket address: a family byte (0 none, 4, 6), the address and
    /// a non-zero port.
    pub fn socket_addr(&mut self) -> Result<Option<SocketAddr>, DecodeError> {
        let ip = match self.u8("address family")? {
            0 => return Ok(None),
            4 => {
                let b = self.bytes(4, "ipv4 address")?;
                IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
            }
            6 => {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(self.bytes(16, "ipv6 address")?);
                IpAddr::V6(Ipv6Addr::from(octets))
            }
            tag => return Err(DecodeError::UnknownTag { what: "address family", tag }),
        };
        let port = self.u16("port")?;
        if port == 0 {
            return Err(DecodeError::InvalidValue { what: "port" });
        }
        Ok(Some(SocketAddr::new(ip, port)))
    }

    /// Fails unless the whole input has been read.
    pub fn finish(&self, what: &'static str) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes { what, count }),
        }
    }
}

/// A cursor over a caller-owned output buffer.
///
/// Writing past the end is not an error at the time: the writer keeps counting, so
/// that [`Writer::finish`] can report the full length the encoding needs. This also
/// makes `Writer::new(&mut [])` a cheap way to compute an encoded length.
#[derive(Debug)]
pub struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> Writer<'a> {
    /// Starts writing at the first byte of `buf`.
    pub fn new(buf: &'a mut [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Appends raw bytes.
    pub fn bytes(&mut self, bytes: &[u8]) {
        let end = self.pos + bytes.len();
        if end <= self.buf.len() {
            self.buf[self.pos..end].copy_from_slice(bytes);
        }
        self.pos = end;
    }

    /// Appends one byte.
    pub fn u8(&mut self, v: u8) {
        self.bytes(&[v]);
    }

    /// Appends a little-endian `u16`.
    pub fn u16(&mut self, v: u16) {
        self.bytes(&v.to_le_bytes());
    }

    /// Appends a little-endian `u32`.
    pub fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }

    /// Appends a little-endian `u64`.
    pub fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }

    /// Appends a boolean as 0 or 1.
    pub fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }

    /// Appends a key as a `u16` length and the bytes. A [`KeyRef`] is always within
    /// bounds, so this cannot fail.
    pub fn key(&mut self, key: KeyRef<'_>) {
        // A KeyRef is at most MAX_KEY_LEN (4096) bytes, which fits in a u16.
        self.u16(key.len() as u16);
        self.bytes(key.as_bytes());
    }

    /// Writes an optional socket address in the form [`Reader::socket_addr`] reads.
    pub fn socket_addr(&mut self, addr: Option<SocketAddr>) {
        match addr {
            None => self.u8(0),
            Some(SocketAddr::V4(a)) => {
                self.u8(4);
                self.bytes(&a.ip().octets());
                self.u16(a.port());
            }
            Some(SocketAddr::V6(a)) => {
                self.u8(6);
                self.bytes(&a.ip().octets());
                self.u16(a.port());
            }
        }
    }

    /// Appends a list count, checking it against the bound the decoder enforces.
    pub fn count(&mut self, what: &'static str, count: usize, max: usize) -> Result<(), EncodeError> {
        if count > max {
            return Err(EncodeError::TooLong { what, len: count as u64, max: max as u64 });
        }
        self.u32(count as u32);
        Ok(())
    }

    /// The number of bytes the encoding needs, or an error if the buffer was too small.
    pub fn finish(self) -> Result<usize, EncodeError> {
        if self.pos <= self.buf.len() {
            Ok(self.pos)
        } else {
            Err(EncodeError::BufferTooSmall { needed: self.pos, available: self.buf.len() })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_round_trip_little_endian() {
        let mut buf = [0u8; 15];
        let mut w = Writer::new(&mut buf);
        w.u8(1);
        w.u16(0x0302);
        w.u32(0x0706_0504);
        w.u64(0x0f0e_0d0c_0b0a_0908);
        assert_eq!(w.finish(), Ok(15));
        assert_eq!(buf, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]);
        let mut r = Reader::new(&buf);
        assert_eq!(r.u8("a"), Ok(1));
        assert_eq!(r.u16("b"), Ok(0x0302));
        assert_eq!(r.u32("c"), Ok(0x0706_0504));
        assert_eq!(r.u64("d"), Ok(0x0f0e_0d0c_0b0a_0908));
        assert_eq!(r.finish("x"), Ok(()));
    }

    #[test]
    fn short_buffer_reports_full_length() {
        let mut buf = [0u8; 3];
        let mut w = Writer::new(&mut buf);
        w.u64(1);
        w.u8(2);
        assert_eq!(w.finish(), Err(EncodeError::BufferTooSmall { needed: 9, available: 3 }));
    }

    #[test]
    fn truncation_is_precise() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u32("size"), Err(DecodeError::Truncated { what: "size", needed: 4, available: 3 }));
    }

    #[test]
    fn booleans_are_strict() {
        assert_eq!(Reader::new(&[0]).bool("f"), Ok(false));
        assert_eq!(Reader::new(&[1]).bool("f"), Ok(true));
        assert_eq!(Reader::new(&[2]).bool("f"), Err(DecodeError::InvalidValue { what: "f" }));
    }

    #[test]
    fn keys_are_bounded_and_non_empty() {
        assert_eq!(Reader::new(&[0, 0]).key(), Err(DecodeError::InvalidValue { what: "key length" }));
        let too_long = ((MAX_KEY_LEN + 1) as u16).to_le_bytes();
        assert!(matches!(Reader::new(&too_long).key(), Err(DecodeError::TooLong { .. })));
        // A length that claims more bytes than the input holds is caught before use.
        assert!(matches!(Reader::new(&[10, 0, b'a']).key(), Err(DecodeError::Truncated { .. })));
        let mut r = Reader::new(&[2, 0, b'h', b'i']);
        assert_eq!(r.key().map(|k| k.as_bytes()), Ok(&b"hi"[..]));
    }

    #[test]
    fn counts_are_checked_against_the_input() {
        // 1000 elements of at least 8 bytes cannot fit in 4 remaining bytes.
        let mut input = [0u8; 8];
        input[..4].copy_from_slice(&1000u32.to_le_bytes());
        assert!(matches!(Reader::new(&input).count("n", 10_000, 8), Err(DecodeError::Truncated { .. })));
        assert!(matches!(Reader::new(&input).count("n", 10, 8), Err(DecodeError::TooLong { .. })));
        let mut w = Writer::new(&mut []);
        assert!(matches!(w.count("n", 11, 10), Err(EncodeError::TooLong { .. })));
    }

    #[test]
    fn versions_and_trailing_bytes() {
        assert_eq!(
            Reader::new(&[2]).version("thing", 1),
            Err(DecodeError::UnsupportedVersion { what: "thing", found: 2, supported: 1 })
        );
        let mut r = Reader::new(&[1, 9, 9]);
        r.version("thing", 1).unwrap();
        assert_eq!(r.finish("thing"), Err(DecodeError::TrailingBytes { what: "thing", count: 2 }));
    }
}
