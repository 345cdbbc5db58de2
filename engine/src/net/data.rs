//! The data plane: reading and writing byte ranges of a node's memory segment, and
//! the fence that keeps a stale writer out of a range given to a newer object.
//!
//! Values never pass through the master: a writer copies its value into the range the
//! master granted, on whichever node holds it, with a [`DataRequest::Write`]; a reader
//! fetches a replica with a [`DataRequest::Read`]. Both name the object version the
//! master handed out, and the owning node keeps, per segment, the [`Extents`] written:
//!
//! - a write is refused when it overlaps an extent of a *newer* version (versions only
//!   grow, so the writer's put was discarded or preempted and its range given to
//!   someone else): a late write can never land in another object's bytes;
//! - a read is answered only from an extent of exactly that offset, length and version,
//!   with the CRC32C the node computed when the bytes arrived; the reader checks the
//!   bytes it received against it. A range that holds anything else is refused, never
//!   returned as the object.
//!
//! Over RDMA the node moves the bytes itself, so that it keeps every one of these
//! checks: a writer that registered its value sends a [`DataRequest::PullWrite`] and the
//! node reads the value from the writer's memory (RDMA READ) into a staging buffer, then
//! takes it as a [`DataRequest::Write`]; a reader sends a [`DataRequest::PushRead`] and
//! the node, having checked the range as for a [`DataRequest::Read`], writes the bytes
//! into the reader's memory (RDMA WRITE). The endpoint handshake that sets up the QPs
//! travels in [`DataRequest::Endpoint`] bodies on the same connection.
//!
//! Bodies travel in [`super::FrameKind::Request`] / [`super::FrameKind::Response`]
//! frames. Each starts `[DATA_FORMAT_VERSION, tag]`; integers are little-endian; the
//! value bytes are the rest of the body (the frame's length bounds them).

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use crate::codec::{DecodeError, Reader, Writer};
use crate::ids::{ObjectVersion, SegmentId};
use crate::key::{Key, KeyRef, MAX_KEY_LEN};

/// The format byte that starts every data-plane body.
pub const DATA_FORMAT_VERSION: u8 = 1;

/// Bytes of a write request before its value, its key aside (two bytes of length and
/// the key follow these).
pub const WRITE_HEADER_LEN: usize = 2 + 8 + 8 + 8 + 8 + 4;
/// The most bytes of a write request before its value (with the longest key).
pub const MAX_WRITE_HEAD_LEN: usize = WRITE_HEADER_LEN + 2 + MAX_KEY_LEN;
/// Bytes of a read answer before its value.
pub const READ_ANSWER_HEADER_LEN: usize = 2 + 4;

const TAG_WRITE: u8 = 1;
const TAG_READ: u8 = 2;
const TAG_READ_DISK: u8 = 3;
const TAG_ENDPOINT: u8 = 4;
const TAG_PULL_WRITE: u8 = 5;
const TAG_PUSH_READ: u8 = 6;
const TAG_WRITTEN: u8 = 1;
const TAG_READ_ANSWER: u8 = 2;
const TAG_REFUSED: u8 = 3;
const TAG_ENDPOINT_ANSWER: u8 = 4;
const TAG_PUSHED: u8 = 5;

/// The most bytes of one endpoint-handshake message in a [`DataRequest::Endpoint`]
/// (the RDMA endpoint codec's own bound is lower).
pub const MAX_ENDPOINT_MESSAGE: usize = 4096;

/// A request to the node that owns a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataRequest<'a> {
    /// Copy `bytes` into the segment at `offset`, for object `version`.
    Write {
        /// The segment.
        segment: SegmentId,
        /// Where in it.
        offset: u64,
        /// The version the master granted the range to.
        version: ObjectVersion,
        /// The run of the master that granted it (its Welcome's incarnation): a node
        /// takes writes only for the master run it mounted its segment with.
        epoch: u64,
        /// CRC32C of `bytes` as the writer computed it; checked on arrival.
        crc32c: u32,
        /// The object's key: the node keeps it with the range, so that it can tell a
        /// restarted master which objects its segment holds.
        key: KeyRef<'a>,
        /// The value (never empty).
        bytes: &'a [u8],
    },
    /// Send back `len` bytes at `offset`, if they are object `version`'s.
    Read {
        /// The segment.
        segment: SegmentId,
        /// Where in it.
        offset: u64,
        /// How many bytes (never zero).
        len: u64,
        /// The version the reader's replica list names.
        version: ObjectVersion,
    },
    /// Send back the value of `key` from your SSD tier, if it holds `version`.
    ReadDisk {
        /// The key.
        key: KeyRef<'a>,
        /// The version the reader's replica list names.
        version: ObjectVersion,
    },
    /// RDMA endpoint-handshake messages from the sender (answered with the node's).
    Endpoint {
        /// The messages.
        messages: EndpointMessages<'a>,
    },
    /// A [`DataRequest::Write`] whose `len` bytes the node reads (RDMA READ) from the
    /// writer's registered memory at `source`, over the endpoint this connection's peer
    /// set up.
    PullWrite {
        /// The segment.
        segment: SegmentId,
        /// Where in it.
        offset: u64,
        /// The version the master granted the range to.
        version: ObjectVersion,
        /// The master run that granted it.
        epoch: u64,
        /// CRC32C of the value as the writer computed it; checked on arrival.
        crc32c: u32,
        /// The object's key.
        key: KeyRef<'a>,
        /// The value's length (never zero).
        len: u64,
        /// The value's address in the writer's memory, inside a region it offered.
        source: u64,
    },
    /// A [`DataRequest::Read`] whose bytes the node writes (RDMA WRITE) into the
    /// reader's registered memory at `dest`; answered with [`DataResponse::Pushed`]
    /// once they are there.
    PushRead {
        /// The segment.
        segment: SegmentId,
        /// Where in it.
        offset: u64,
        /// How many bytes (never zero).
        len: u64,
        /// The version the reader's replica list names.
        version: ObjectVersion,
        /// Where in the reader's memory, inside a region it offered.
        dest: u64,
    },
}

/// A sequence of endpoint-handshake messages, each one to 4096 bytes, as they travel:
/// each behind its two-byte length. A decoded one is well formed throughout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointMessages<'a>(&'a [u8]);

impl<'a> EndpointMessages<'a> {
    /// No messages.
    pub const EMPTY: EndpointMessages<'static> = EndpointMessages(&[]);

    /// Appends `message` to `out` as one element of a sequence.
    ///
    /// # Panics
    /// If `message` is empty or longer than [`MAX_ENDPOINT_MESSAGE`].
    pub fn push(out: &mut Vec<u8>, message: &[u8]) {
        assert!(!message.is_empty() && message.len() <= MAX_ENDPOINT_MESSAGE, "an endpoint message's size");
        out.extend_from_slice(&(message.len() as u16).to_le_bytes());
        out.extend_from_slice(message);
    }

    /// Checks `bytes` as a sequence built by [`EndpointMessages::push`].
    pub fn new(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        while r.remaining() > 0 {
            let len = usize::from(r.u16("endpoint message length")?);
            if len == 0 || len > MAX_ENDPOINT_MESSAGE {
                return Err(DecodeError::InvalidValue { what: "endpoint message length" });
            }
            r.bytes(len, "endpoint message")?;
        }
        Ok(Self(bytes))
    }

    /// The encoded sequence.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.0
    }

    /// The messages, in order.
    pub fn iter(&self) -> impl Iterator<Item = &'a [u8]> {
        let mut rest = self.0;
        core::iter::from_fn(move || {
            let (len, tail) = rest.split_first_chunk::<2>()?;
            let (message, tail) = tail.split_at(usize::from(u16::from_le_bytes(*len)));
            rest = tail;
            Some(message)
        })
    }
}

/// The owning node's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataResponse<'a> {
    /// The write is in the segment.
    Written,
    /// The bytes asked for, and their CRC32C as computed when they were written.
    Read {
        /// CRC32C of `bytes` when they arrived; check it.
        crc32c: u32,
        /// The value.
        bytes: &'a [u8],
    },
    /// Refused.
    Refused(DataError),
    /// The node's endpoint-handshake messages, in answer to the sender's.
    Endpoint {
        /// The messages.
        messages: EndpointMessages<'a>,
    },
    /// The bytes of a [`DataRequest::PushRead`] are in the reader's memory.
    Pushed {
        /// Their CRC32C as computed when they were written; check it.
        crc32c: u32,
    },
}

/// Why a node refused a data request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// The node serves no segment with that id.
    #[error("no such segment on this node")]
    UnknownSegment,
    /// The range does not lie inside the segment, or is empty.
    #[error("range outside the segment")]
    OutOfBounds,
    /// A newer object holds (part of) the range, or the write was granted by another
    /// run of the master than the one the segment is mounted with: this put is void.
    #[error("the range belongs to a newer object or another master run")]
    Fenced,
    /// The range does not hold that version (never written, overwritten, or another
    /// length).
    #[error("the range does not hold that object version")]
    NotHeld,
    /// The bytes received do not match their CRC32C.
    #[error("the bytes do not match their checksum")]
    Corrupted,
    /// The node has no SSD tier, or its tier could not read the record.
    #[error("the node's SSD tier cannot serve it")]
    DiskUnavailable,
    /// No RDMA transfer with this node now: it has no device, no endpoint with this
    /// peer (handshake first), or the transfer failed. TCP serves instead.
    #[error("no RDMA transfer with this node now")]
    RdmaUnavailable,
    /// A code this build does not know.
    #[error("unknown data error code {0}")]
    Unknown(u16),
}

impl DataError {
    const fn code(self) -> u16 {
        match self {
            DataError::UnknownSegment => 1,
            DataError::OutOfBounds => 2,
            DataError::Fenced => 3,
            DataError::NotHeld => 4,
            DataError::Corrupted => 5,
            DataError::DiskUnavailable => 6,
            DataError::RdmaUnavailable => 7,
            DataError::Unknown(code) => code,
        }
    }

    fn from_code(code: u16) -> Self {
        match code {
            1 => DataError::UnknownSegment,
            2 => DataError::OutOfBounds,
            3 => DataError::Fenced,
            4 => DataError::NotHeld,
            5 => DataError::Corrupted,
            6 => DataError::DiskUnavailable,
            7 => DataError::RdmaUnavailable,
            other => DataError::Unknown(other),
        }
    }
}

impl<'a> DataRequest<'a> {
    /// Appends the encoded request to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.encode_head(out);
        if let DataRequest::Write { bytes, .. } = *self {
            out.extend_from_slice(bytes);
        }
    }

    /// Appends the encoded request to `out` without a write's value: the value follows
    /// as the next part of the frame's body, sent from the writer's buffer. The same as
    /// [`DataRequest::encode`] for the other requests.
    pub fn encode_head(&self, out: &mut Vec<u8>) {
        match *self {
            DataRequest::Write { segment, offset, version, epoch, crc32c, key, bytes: _ } => {
                write_header(out, WRITE_HEADER_LEN + 2 + key.len(), |w| {
                    w.u8(DATA_FORMAT_VERSION);
                    w.u8(TAG_WRITE);
                    w.u64(segment.0);
                    w.u64(offset);
                    w.u64(version.0);
                    w.u64(epoch);
                    w.u32(crc32c);
                    w.key(key);
                });
            }
            DataRequest::ReadDisk { key, version } => {
                write_header(out, 2 + 8 + 2 + key.len(), |w| {
                    w.u8(DATA_FORMAT_VERSION);
                    w.u8(TAG_READ_DISK);
                    w.u64(version.0);
                    w.key(key);
                });
            }
            DataRequest::Read { segment, offset, len, version } => {
                write_header(out, 2 + 32, |w| {
                    w.u8(DATA_FORMAT_VERSION);
                    w.u8(TAG_READ);
                    w.u64(segment.0);
                    w.u64(offset);
                    w.u64(len);
                    w.u64(version.0);
                });
            }
            DataRequest::Endpoint { messages } => {
                out.extend_from_slice(&[DATA_FORMAT_VERSION, TAG_ENDPOINT]);
                out.extend_from_slice(messages.as_bytes());
            }
            DataRequest::PullWrite { segment, offset, version, epoch, crc32c, key, len, source } => {
                write_header(out, WRITE_HEADER_LEN + 16 + 2 + key.len(), |w| {
                    w.u8(DATA_FORMAT_VERSION);
                    w.u8(TAG_PULL_WRITE);
                    w.u64(segment.0);
                    w.u64(offset);
                    w.u64(version.0);
                    w.u64(epoch);
                    w.u32(crc32c);
                    w.u64(len);
                    w.u64(source);
                    w.key(key);
                });
            }
            DataRequest::PushRead { segment, offset, len, version, dest } => {
                write_header(out, 2 + 40, |w| {
                    w.u8(DATA_FORMAT_VERSION);
                    w.u8(TAG_PUSH_READ);
                    w.u64(segment.0);
                    w.u64(offset);
                    w.u64(len);
                    w.u64(version.0);
                    w.u64(dest);
                });
            }
        }
    }

    /// Decodes a whole request body.
    pub fn decode(body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        r.version("data request", DATA_FORMAT_VERSION)?;
        match r.u8("data request tag")? {
            TAG_WRITE => {
                let WriteHead { segment, offset, version, epoch, crc32c, key } = WriteHead::read(&mut r)?;
                let bytes = r.bytes(r.remaining(), "value")?;
                if bytes.is_empty() {
                    return Err(DecodeError::InvalidValue { what: "empty value" });
                }
                Ok(DataRequest::Write { segment, offset, version, epoch, crc32c, key, bytes })
            }
            TAG_READ => {
                let segment = SegmentId(r.u64("segment")?);
                let offset = r.u64("offset")?;
                let len = r.u64("length")?;
                let version = ObjectVersion(r.u64("version")?);
                r.finish("data request")?;
                if len == 0 {
                    return Err(DecodeError::InvalidValue { what: "empty read" });
                }
                Ok(DataRequest::Read { segment, offset, len, version })
            }
            TAG_READ_DISK => {
                let version = ObjectVersion(r.u64("version")?);
                let key = r.key()?;
                r.finish("data request")?;
                Ok(DataRequest::ReadDisk { key, version })
            }
            TAG_ENDPOINT => {
                let messages = EndpointMessages::new(r.bytes(r.remaining(), "endpoint messages")?)?;
                Ok(DataRequest::Endpoint { messages })
            }
            TAG_PULL_WRITE => {
                let segment = SegmentId(r.u64("segment")?);
                let offset = r.u64("offset")?;
                let version = ObjectVersion(r.u64("version")?);
                let epoch = r.u64("epoch")?;
                let crc32c = r.u32("crc32c")?;
                let len = r.u64("length")?;
                let source = r.u64("source address")?;
                let key = r.key()?;
                r.finish("data request")?;
                if len == 0 {
                    return Err(DecodeError::InvalidValue { what: "empty value" });
                }
                Ok(DataRequest::PullWrite { segment, offset, version, epoch, crc32c, key, len, source })
            }
            TAG_PUSH_READ => {
                let segment = SegmentId(r.u64("segment")?);
                let offset = r.u64("offset")?;
                let len = r.u64("length")?;
                let version = ObjectVersion(r.u64("version")?);
                let dest = r.u64("destination address")?;
                r.finish("data request")?;
                if len == 0 {
                    return Err(DecodeError::InvalidValue { what: "empty read" });
                }
                Ok(DataRequest::PushRead { segment, offset, len, version, dest })
            }
            tag => Err(DecodeError::UnknownTag { what: "data request", tag }),
        }
    }
}

impl<'a> DataResponse<'a> {
    /// Appends the encoded response to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            DataResponse::Written => out.extend_from_slice(&[DATA_FORMAT_VERSION, TAG_WRITTEN]),
            DataResponse::Read { crc32c, bytes } => {
                Self::encode_read_header(out, crc32c);
                out.extend_from_slice(bytes);
            }
            DataResponse::Refused(e) => {
                out.extend_from_slice(&[DATA_FORMAT_VERSION, TAG_REFUSED]);
                out.extend_from_slice(&e.code().to_le_bytes());
            }
            DataResponse::Endpoint { messages } => {
                out.extend_from_slice(&[DATA_FORMAT_VERSION, TAG_ENDPOINT_ANSWER]);
                out.extend_from_slice(messages.as_bytes());
            }
            DataResponse::Pushed { crc32c } => {
                out.extend_from_slice(&[DATA_FORMAT_VERSION, TAG_PUSHED]);
                out.extend_from_slice(&crc32c.to_le_bytes());
            }
        }
    }

    /// Appends only the header of a read answer (its value follows, written by the
    /// caller straight from the segment).
    pub fn encode_read_header(out: &mut Vec<u8>, crc32c: u32) {
        out.extend_from_slice(&[DATA_FORMAT_VERSION, TAG_READ_ANSWER]);
        out.extend_from_slice(&crc32c.to_le_bytes());
    }

    /// Decodes a whole response body. An unknown refusal code decodes as
    /// [`DataError::Unknown`].
    pub fn decode(body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        r.version("data response", DATA_FORMAT_VERSION)?;
        let response = match r.u8("data response tag")? {
            TAG_WRITTEN => DataResponse::Written,
            TAG_READ_ANSWER => {
                let crc32c = r.u32("crc32c")?;
                let bytes = r.bytes(r.remaining(), "value")?;
                return Ok(DataResponse::Read { crc32c, bytes });
            }
            TAG_REFUSED => DataResponse::Refused(DataError::from_code(r.u16("data error")?)),
            TAG_ENDPOINT_ANSWER => {
                let messages = EndpointMessages::new(r.bytes(r.remaining(), "endpoint messages")?)?;
                return Ok(DataResponse::Endpoint { messages });
            }
            TAG_PUSHED => DataResponse::Pushed { crc32c: r.u32("crc32c")? },
            tag => return Err(DecodeError::UnknownTag { what: "data response", tag }),
        };
        r.finish("data response")?;
        Ok(response)
    }
}

/// A write request's fields before its value: what a node needs to take the value
/// from the socket straight into its segment, before the value has arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteHead<'a> {
    /// The segment written.
    pub segment: SegmentId,
    /// Where in it.
    pub offset: u64,
    /// The object version the range was granted to.
    pub version: ObjectVersion,
    /// The master run that granted it.
    pub epoch: u64,
    /// The writer's CRC32C of the value.
    pub crc32c: u32,
    /// The object's key.
    pub key: KeyRef<'a>,
}

impl<'a> WriteHead<'a> {
    /// The head of the write request whose body starts with `prefix`, and how many
    /// bytes of the body it takes (its value follows). `Ok(None)`: the body is not a
    /// write of this format (decode it whole), or `prefix` ends inside the head.
    pub fn decode_prefix(prefix: &'a [u8]) -> Result<Option<(Self, usize)>, DecodeError> {
        if prefix.get(..2) != Some(&[DATA_FORMAT_VERSION, TAG_WRITE]) {
            return Ok(None);
        }
        let Some(key_len) = prefix.get(WRITE_HEADER_LEN..WRITE_HEADER_LEN + 2) else { return Ok(None) };
        let head_len = WRITE_HEADER_LEN + 2 + usize::from(u16::from_le_bytes([key_len[0], key_len[1]]));
        let Some(head) = prefix.get(..head_len) else { return Ok(None) };
        let mut r = Reader::new(head);
        r.version("data request", DATA_FORMAT_VERSION)?;
        r.u8("data request tag")?;
        let decoded = Self::read(&mut r)?;
        r.finish("write head")?;
        Ok(Some((decoded, head_len)))
    }

    fn read(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        Ok(Self {
            segment: SegmentId(r.u64("segment")?),
            offset: r.u64("offset")?,
            version: ObjectVersion(r.u64("version")?),
            epoch: r.u64("epoch")?,
            crc32c: r.u32("crc32c")?,
            key: r.key()?,
        })
    }
}

fn write_header(out: &mut Vec<u8>, len: usize, write: impl FnOnce(&mut Writer<'_>)) {
    let start = out.len();
    out.resize(start + len, 0);
    let mut w = Writer::new(&mut out[start..]);
    write(&mut w);
    debug_assert_eq!(w.finish(), Ok(len));
}

/// One write that landed in a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extent {
    /// Its length.
    pub len: u64,
    /// The object version that wrote it.
    pub version: ObjectVersion,
    /// CRC32C of the bytes as they arrived.
    pub crc32c: u32,
    /// The object's key.
    pub key: Key,
}

/// What a node knows of the writes into one of its segments: which version wrote which
/// range. Extents never overlap: a write replaces every extent it overlaps.
#[derive(Debug, Clone, Default)]
pub struct Extents {
    size: u64,
    by_offset: BTreeMap<u64, Extent>,
}

impl Extents {
    /// A segment of `size` bytes with nothing written.
    pub fn new(size: u64) -> Self {
        Self { size, by_offset: BTreeMap::new() }
    }

    /// The segment's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Extents recorded.
    pub fn len(&self) -> usize {
        self.by_offset.len()
    }

    /// True if nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.by_offset.is_empty()
    }

    /// Forgets every write (the master that granted them is gone).
    pub fn clear(&mut self) {
        self.by_offset.clear();
    }

    fn in_bounds(&self, offset: u64, len: u64) -> Result<u64, DataError> {
        match offset.checked_add(len) {
            Some(end) if len > 0 && end <= self.size => Ok(end),
            _ => Err(DataError::OutOfBounds),
        }
    }

    /// The extents overlapping `offset..end`, latest offset first.
    fn overlapping(&self, offset: u64, end: u64) -> impl Iterator<Item = (&u64, &Extent)> {
        // Extents are disjoint and sorted, so going down from `end`, once one ends at
        // or before `offset` so do all below it.
        self.by_offset.range(..end).rev().take_while(move |(start, e)| **start + e.len > offset)
    }

    /// May `version` write `len` bytes at `offset`?
    pub fn check_write(&self, offset: u64, len: u64, version: ObjectVersion) -> Result<(), DataError> {
        let end = self.in_bounds(offset, len)?;
        if self.overlapping(offset, end).any(|(_, e)| e.version > version) {
            return Err(DataError::Fenced);
        }
        Ok(())
    }

    /// Records a write that [`Extents::check_write`] allowed and that has landed.
    pub fn record_write(
        &mut self,
        offset: u64,
        len: u64,
        version: ObjectVersion,
        crc32c: u32,
        key: KeyRef<'_>,
    ) {
        if self.in_bounds(offset, len).is_err() {
            return;
        }
        self.forget_overlapping(offset, len);
        self.by_offset.insert(offset, Extent { len, version, crc32c, key: key.to_key() });
    }

    /// Forgets every extent overlapping `len` bytes at `offset`: a write that
    /// [`Extents::check_write`] allowed is landing there, and what they held is being
    /// overwritten.
    pub fn forget_overlapping(&mut self, offset: u64, len: u64) {
        let end = offset.saturating_add(len).min(self.size);
        let replaced: Vec<u64> = self.overlapping(offset, end).map(|(start, _)| *start).collect();
        for start in replaced {
            self.by_offset.remove(&start);
        }
    }

    /// Forgets the extent at `offset` if object `version` wrote it (the master freed
    /// that range); a newer write there is kept. Whether one was forgotten.
    pub fn forget(&mut self, offset: u64, version: ObjectVersion) -> bool {
        let held = self.by_offset.get(&offset).is_some_and(|e| e.version == version);
        if held {
            self.by_offset.remove(&offset);
        }
        held
    }

    /// Every extent, by offset, lowest first.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &Extent)> {
        self.by_offset.iter().map(|(offset, e)| (*offset, e))
    }

    /// The CRC32C of object `version`'s `len` bytes at `offset`, if that is exactly what
    /// the range holds.
    pub fn check_read(&self, offset: u64, len: u64, version: ObjectVersion) -> Result<u32, DataError> {
        self.in_bounds(offset, len)?;
        match self.by_offset.get(&offset) {
            Some(e) if e.len == len && e.version == version => Ok(e.crc32c),
            _ => Err(DataError::NotHeld),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEG: SegmentId = SegmentId(4);
    const V1: ObjectVersion = ObjectVersion(1);
    const V2: ObjectVersion = ObjectVersion(2);

    fn k() -> KeyRef<'static> {
        KeyRef::new(b"k").unwrap()
    }

    fn round_trip_request(r: DataRequest<'_>) {
        let mut out = Vec::new();
        r.encode(&mut out);
        assert_eq!(DataRequest::decode(&out), Ok(r));
    }

    fn round_trip_response(r: DataResponse<'_>) {
        let mut out = Vec::new();
        r.encode(&mut out);
        assert_eq!(DataResponse::decode(&out), Ok(r));
    }

    #[test]
    fn a_write_head_decodes_from_any_prefix_that_holds_it() {
        let key = KeyRef::new(b"prefix/7").unwrap();
        let request = DataRequest::Write {
            segment: SEG,
            offset: 64,
            version: V2,
            epoch: 3,
            crc32c: 5,
            key,
            bytes: b"value",
        };
        let mut body = Vec::new();
        request.encode(&mut body);
        let head_len = body.len() - 5;
        let head = WriteHead { segment: SEG, offset: 64, version: V2, epoch: 3, crc32c: 5, key };
        for cut in 0..=body.len() {
            let decoded = WriteHead::decode_prefix(&body[..cut]).unwrap();
            if cut < head_len {
                assert_eq!(decoded, None, "cut at {cut}");
            } else {
                assert_eq!(decoded, Some((head, head_len)), "cut at {cut}");
            }
        }
        let mut read = Vec::new();
        DataRequest::Read { segment: SEG, offset: 0, len: 1, version: V1 }.encode(&mut read);
        assert_eq!(WriteHead::decode_prefix(&read), Ok(None), "not a write");
        let mut empty_key = body.clone();
        empty_key[WRITE_HEADER_LEN..WRITE_HEADER_LEN + 2].copy_from_slice(&0u16.to_le_bytes());
        assert!(WriteHead::decode_prefix(&empty_key).is_err(), "a malformed head");
    }

    #[test]
    fn bodies_round_trip() {
        round_trip_request(DataRequest::Write {
            segment: SEG,
            offset: 4096,
            version: V2,
            epoch: 7,
            crc32c: 9,
            key: KeyRef::new(b"prefix/1").unwrap(),
            bytes: b"value",
        });
        round_trip_request(DataRequest::Read { segment: SEG, offset: 8, len: 5, version: V1 });
        round_trip_request(DataRequest::ReadDisk { key: KeyRef::new(b"prefix/0").unwrap(), version: V2 });
        round_trip_response(DataResponse::Written);
        round_trip_response(DataResponse::Read { crc32c: 0xdead_beef, bytes: b"value" });
        round_trip_response(DataResponse::Read { crc32c: 0, bytes: b"" });
        round_trip_request(DataRequest::PullWrite {
            segment: SEG,
            offset: 64,
            version: V2,
            epoch: 3,
            crc32c: 11,
            key: KeyRef::new(b"prefix/2").unwrap(),
            len: 5,
            source: 0x1000_0000,
        });
        round_trip_request(DataRequest::PushRead {
            segment: SEG,
            offset: 8,
            len: 5,
            version: V1,
            dest: 0x2000,
        });
        let mut messages = Vec::new();
        EndpointMessages::push(&mut messages, b"info");
        EndpointMessages::push(&mut messages, b"ready");
        let messages = EndpointMessages::new(&messages).unwrap();
        assert_eq!(messages.iter().collect::<Vec<_>>(), [&b"info"[..], &b"ready"[..]]);
        round_trip_request(DataRequest::Endpoint { messages });
        round_trip_request(DataRequest::Endpoint { messages: EndpointMessages::EMPTY });
        round_trip_response(DataResponse::Endpoint { messages });
        round_trip_response(DataResponse::Endpoint { messages: EndpointMessages::EMPTY });
        round_trip_response(DataResponse::Pushed { crc32c: 0x1234_5678 });
        for e in [
            DataError::UnknownSegment,
            DataError::OutOfBounds,
            DataError::Fenced,
            DataError::NotHeld,
            DataError::Corrupted,
            DataError::DiskUnavailable,
            DataError::RdmaUnavailable,
            DataError::Unknown(999),
        ] {
            round_trip_response(DataResponse::Refused(e));
        }
        let mut write = Vec::new();
        DataRequest::Write {
            segment: SEG,
            offset: 0,
            version: V1,
            epoch: 1,
            crc32c: 0,
            key: k(),
            bytes: b"x",
        }
        .encode(&mut write);
        assert_eq!(write.len(), WRITE_HEADER_LEN + 2 + 1 + 1);
    }

    #[test]
    fn decoding_is_strict() {
        let mut empty_write = Vec::new();
        DataRequest::Write {
            segment: SEG,
            offset: 0,
            version: V1,
            epoch: 1,
            crc32c: 0,
            key: k(),
            bytes: b"x",
        }
        .encode(&mut empty_write);
        empty_write.pop();
        assert_eq!(DataRequest::decode(&empty_write), Err(DecodeError::InvalidValue { what: "empty value" }));
        let mut read = Vec::new();
        DataRequest::Read { segment: SEG, offset: 0, len: 1, version: V1 }.encode(&mut read);
        read.push(0);
        assert_eq!(
            DataRequest::decode(&read),
            Err(DecodeError::TrailingBytes { what: "data request", count: 1 })
        );
        let mut zero = Vec::new();
        DataRequest::Read { segment: SEG, offset: 0, len: 0, version: V1 }.encode(&mut zero);
        assert_eq!(DataRequest::decode(&zero), Err(DecodeError::InvalidValue { what: "empty read" }));
        assert_eq!(
            DataRequest::decode(&[1, 9]),
            Err(DecodeError::UnknownTag { what: "data request", tag: 9 })
        );
        assert!(matches!(DataResponse::decode(&[2, 1]), Err(DecodeError::UnsupportedVersion { .. })));
        // Endpoint messages: each non-empty, at most 4096 bytes, and whole.
        for bad in [&[0u8, 0][..], &[1, 0][..], &[3, 0, 1, 2][..], &[1][..]] {
            assert!(EndpointMessages::new(bad).is_err(), "{bad:?}");
            let body = [&[DATA_FORMAT_VERSION, TAG_ENDPOINT][..], bad].concat();
            assert!(DataRequest::decode(&body).is_err(), "{bad:?}");
        }
        let long = (MAX_ENDPOINT_MESSAGE as u16 + 1).to_le_bytes();
        let body = [&long[..], &[0u8; MAX_ENDPOINT_MESSAGE + 1][..]].concat();
        assert!(EndpointMessages::new(&body).is_err());
        let mut zero = Vec::new();
        DataRequest::PushRead { segment: SEG, offset: 0, len: 0, version: V1, dest: 0 }.encode(&mut zero);
        assert_eq!(DataRequest::decode(&zero), Err(DecodeError::InvalidValue { what: "empty read" }));
        let mut zero = Vec::new();
        DataRequest::PullWrite {
            segment: SEG,
            offset: 0,
            version: V1,
            epoch: 1,
            crc32c: 0,
            key: k(),
            len: 0,
            source: 0,
        }
        .encode(&mut zero);
        assert_eq!(DataRequest::decode(&zero), Err(DecodeError::InvalidValue { what: "empty value" }));
    }

    #[test]
    fn a_stale_writer_cannot_write_into_a_newer_objects_range() {
        let mut x = Extents::new(1 << 20);
        x.check_write(0, 100, V2).unwrap();
        x.record_write(0, 100, V2, 7, k());
        assert_eq!(x.check_write(50, 100, V1), Err(DataError::Fenced), "overlapping the end");
        assert_eq!(x.check_write(0, 1, V1), Err(DataError::Fenced), "its first byte");
        assert_eq!(x.check_write(100, 10, V1), Ok(()), "right after it");
        assert_eq!(x.check_write(0, 100, ObjectVersion(3)), Ok(()), "a newer object may reuse it");
    }

    #[test]
    fn ranges_outside_the_segment_are_refused_without_overflow() {
        let x = Extents::new(4096);
        assert_eq!(x.check_write(4096, 1, V1), Err(DataError::OutOfBounds));
        assert_eq!(x.check_write(0, 4097, V1), Err(DataError::OutOfBounds));
        assert_eq!(x.check_write(u64::MAX, 2, V1), Err(DataError::OutOfBounds));
        assert_eq!(x.check_write(0, 0, V1), Err(DataError::OutOfBounds));
        assert_eq!(x.check_read(4000, u64::MAX, V1), Err(DataError::OutOfBounds));
        assert_eq!(x.check_write(0, 4096, V1), Ok(()));
    }

    #[test]
    fn a_read_is_answered_only_for_exactly_what_was_written() {
        let mut x = Extents::new(1 << 20);
        x.record_write(4096, 100, V1, 42, k());
        assert_eq!(x.check_read(4096, 100, V1), Ok(42));
        assert_eq!(x.check_read(4096, 100, V2), Err(DataError::NotHeld), "another version");
        assert_eq!(x.check_read(4096, 99, V1), Err(DataError::NotHeld), "another length");
        assert_eq!(x.check_read(4097, 99, V1), Err(DataError::NotHeld), "inside it");
        x.record_write(4100, 10, V2, 43, k());
        assert_eq!(x.check_read(4096, 100, V1), Err(DataError::NotHeld), "overwritten in part");
        x.clear();
        assert_eq!(x.check_read(4100, 10, V2), Err(DataError::NotHeld));
    }

    #[test]
    fn a_freed_range_is_forgotten_only_for_the_version_freed() {
        let mut x = Extents::new(1 << 20);
        x.record_write(0, 100, V1, 1, KeyRef::new(b"old").unwrap());
        x.record_write(4096, 100, V2, 2, KeyRef::new(b"new").unwrap());
        // The range was given to V2 and written before the notice for V1 arrived.
        assert!(!x.forget(4096, V1), "a newer write is kept");
        assert_eq!(x.check_read(4096, 100, V2), Ok(2));
        assert!(x.forget(0, V1));
        assert_eq!(x.check_read(0, 100, V1), Err(DataError::NotHeld));
        let live: Vec<_> =
            x.iter().map(|(offset, e)| (offset, e.version, e.key.as_ref().as_bytes().to_vec())).collect();
        assert_eq!(live, [(4096, V2, b"new".to_vec())]);
    }

    /// A write the model has seen succeed.
    #[derive(Debug, Clone, Copy)]
    struct Landed {
        offset: u64,
        len: u64,
        version: u64,
        crc: u32,
    }

    fn overlaps(a: &Landed, offset: u64, len: u64) -> bool {
        a.offset < offset + len && offset < a.offset + a.len
    }

    /// The writes still readable: those no later successful write overlapped.
    fn readable(landed: &[Landed]) -> Vec<Landed> {
        landed
            .iter()
            .enumerate()
            .filter(|(i, w)| !landed[i + 1..].iter().any(|later| overlaps(later, w.offset, w.len)))
            .map(|(_, w)| *w)
            .collect()
    }

    proptest! {
        /// Against a model that keeps every successful write: a write is fenced exactly
        /// when it overlaps something readable of a newer version, and a read is
        /// answered exactly for what is readable, with its CRC.
        #[test]
        fn extents_follow_the_model(ops in proptest::collection::vec((0u64..64, 1u64..16, 1u64..8), 1..60)) {
            let mut x = Extents::new(64);
            let mut landed: Vec<Landed> = Vec::new();
            for (i, (offset, len, version)) in ops.into_iter().enumerate() {
                let live = readable(&landed);
                let expected = if offset + len > 64 {
                    Err(DataError::OutOfBounds)
                } else if live.iter().any(|w| overlaps(w, offset, len) && w.version > version) {
                    Err(DataError::Fenced)
                } else {
                    Ok(())
                };
                prop_assert_eq!(x.check_write(offset, len, ObjectVersion(version)), expected);
                if expected.is_ok() {
                    let crc = i as u32;
                    x.record_write(offset, len, ObjectVersion(version), crc, k());
                    landed.push(Landed { offset, len, version, crc });
                }
                let live = readable(&landed);
                prop_assert_eq!(x.len(), live.len());
                for w in &live {
                    prop_assert_eq!(x.check_read(w.offset, w.len, ObjectVersion(w.version)), Ok(w.crc));
                }
            }
        }
    }
}
