//! The bucket file format.
//!
//! A bucket is an immutable file holding a batch of records, then a footer listing
//! them, then a fixed-size trailer pointing at the footer:
//!
//! ```text
//! record 0: [header 40 B][key][zeros to 4 KiB] [value][zeros to 4 KiB]
//! record 1: …
//! footer:   [magic "LFTR"][version][flags][bucket id][count][entries…][crc32c]
//! zeros, so that the trailer ends the file on a 4 KiB boundary
//! trailer:  [magic "LTRL"][version][flags][bucket id][footer offset][footer length]
//!           [record count][reserved][crc32c]                                  (64 B)
//! ```
//!
//! Every value starts on a 4 KiB boundary and every record is a whole number of 4 KiB
//! blocks, so values can be read and written with `O_DIRECT`. A record header carries
//! the key length, value length, object version, the CRC32C of the value and a CRC32C of
//! the header and key. The footer repeats what recovery needs for each record (offset,
//! lengths, version, value CRC, key) under one CRC, so reopening a node reads only
//! trailers and footers, never values.
//!
//! All integers are little-endian. Decoding is strict: magic, version, reserved fields,
//! every length and every offset are checked before use, records must lie in the data
//! region in ascending, non-overlapping order, and nothing panics on any input.

use alloc::vec::Vec;

use crate::checksum::{crc32c, crc32c_append};
use crate::codec::{DecodeError, Reader, Writer};
use crate::ids::{BucketId, ObjectVersion};
use crate::key::{KeyRef, MAX_KEY_LEN};

/// Block size every record and the file are aligned to.
pub const BLOCK: u64 = 4096;
/// Format version written and read by this build. Every later version keeps the
/// trailer's first bytes (magic, then version) and its last four (the CRC32C of the 60
/// before them), so that a build can tell a bucket written by a newer one from a
/// damaged one ([`Trailer::peek_version`]).
pub const FORMAT_VERSION: u16 = 1;
/// Bytes of a record header before the key.
pub const RECORD_HEADER_LEN: usize = 40;
/// Bytes of the trailer.
pub const TRAILER_LEN: usize = 64;
/// The largest value a record may hold.
pub const MAX_VALUE_LEN: u64 = 1 << 32;
/// The most records one bucket may hold.
pub const MAX_RECORDS: u32 = 1 << 20;

const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"LREC");
const FOOTER_MAGIC: u32 = u32::from_le_bytes(*b"LFTR");
const TRAILER_MAGIC: u32 = u32::from_le_bytes(*b"LTRL");
/// Fixed bytes of a footer entry before its key.
const FOOTER_ENTRY_LEN: usize = 8 + 8 + 8 + 4 + 2;
/// Fixed bytes of a footer before its entries (magic through count) and after (crc).
const FOOTER_HEAD_LEN: usize = 4 + 2 + 2 + 8 + 4;

/// Why bytes are not a valid bucket, footer, trailer or record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// A field could not be read (truncated input, a bad length…).
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The magic number is wrong: not this kind of structure at all.
    #[error("bad {what} magic")]
    BadMagic {
        /// Which structure.
        what: &'static str,
    },
    /// A format version this build does not read.
    #[error("{what} format version {found}, this build reads {FORMAT_VERSION}")]
    UnsupportedVersion {
        /// Which structure.
        what: &'static str,
        /// The version found.
        found: u16,
    },
    /// A checksum does not match: the bytes are damaged.
    #[error("{what} checksum mismatch")]
    Checksum {
        /// What the checksum covers.
        what: &'static str,
    },
    /// A reserved field is not zero, or a field is out of its domain.
    #[error("invalid {what}")]
    Invalid {
        /// The field.
        what: &'static str,
    },
    /// The structure belongs to another bucket.
    #[error("bucket id {found:?} where {expected:?} was expected")]
    WrongBucket {
        /// The bucket the file should be.
        expected: BucketId,
        /// The bucket the structure names.
        found: BucketId,
    },
}

/// Rounds `n` up to a whole number of blocks.
pub const fn align_up(n: u64) -> u64 {
    n.div_ceil(BLOCK) * BLOCK
}

/// Where a record's parts are, relative to the record's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordLayout {
    /// Offset of the value from the record's start (the header and key, padded).
    pub value_offset: u64,
    /// The whole record, padded.
    pub len: u64,
}

impl RecordLayout {
    /// The layout of a record with a key of `key_len` and a value of `value_len` bytes.
    pub const fn new(key_len: usize, value_len: u64) -> Self {
        let value_offset = align_up((RECORD_HEADER_LEN + key_len) as u64);
        Self { value_offset, len: value_offset + align_up(value_len) }
    }
}

/// What a record header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader<'a> {
    /// The record's key.
    pub key: KeyRef<'a>,
    /// The value's length.
    pub value_len: u64,
    /// The object version the value belongs to.
    pub version: ObjectVersion,
    /// CRC32C of the value.
    pub value_crc: u32,
}

impl RecordHeader<'_> {
    /// Bytes the header and key take before padding.
    pub fn encoded_len(&self) -> usize {
        RECORD_HEADER_LEN + self.key.len()
    }

    /// Writes the header and key into `out` (which must hold [`Self::encoded_len`]
    /// bytes); the caller pads to the block.
    pub fn encode(&self, out: &mut [u8]) -> usize {
        let n = self.encoded_len();
        let mut w = Writer::new(&mut out[..n]);
        w.u32(RECORD_MAGIC);
        w.u16(FORMAT_VERSION);
        w.u16(0);
        w.u16(self.key.len() as u16);
        w.u16(0);
        w.u64(self.value_len);
        w.u64(self.version.0);
        w.u32(self.value_crc);
        w.u32(0); // header crc, filled below
        w.u32(0);
        w.bytes(self.key.as_bytes());
        let written = w.finish().expect("sized above");
        let crc = header_crc(&out[..32], &out[36..n]);
        out[32..36].copy_from_slice(&crc.to_le_bytes());
        written
    }

    /// Decodes the header at the start of `block` (the key must be in `block` too).
    pub fn decode(block: &[u8]) -> Result<RecordHeader<'_>, FormatError> {
        let mut r = Reader::new(block);
        if r.u32("record magic")? != RECORD_MAGIC {
            return Err(FormatError::BadMagic { what: "record" });
        }
        check_version(r.u16("record version")?, "record")?;
        reserved(r.u16("record flags")?.into(), "record flags")?;
        let key_len = usize::from(r.u16("key length")?);
        reserved(r.u16("record reserved")?.into(), "record reserved")?;
        let value_len = r.u64("value length")?;
        let version = ObjectVersion(r.u64("object version")?);
        let value_crc = r.u32("value crc")?;
        let stored_crc = r.u32("header crc")?;
        reserved(r.u32("record reserved")?.into(), "record reserved")?;
        check_key_len(key_len)?;
        check_value_len(value_len)?;
        let key_bytes = r.bytes(key_len, "key")?;
        let key = KeyRef::new(key_bytes).map_err(|_| FormatError::Invalid { what: "key" })?;
        let end = RECORD_HEADER_LEN + key_len;
        if header_crc(&block[..32], &block[36..end]) != stored_crc {
            return Err(FormatError::Checksum { what: "record header" });
        }
        Ok(RecordHeader { key, value_len, version, value_crc })
    }
}

fn header_crc(head: &[u8], rest: &[u8]) -> u32 {
    crc32c_append(crc32c(head), rest)
}

fn check_version(found: u16, what: &'static str) -> Result<(), FormatError> {
    if found == FORMAT_VERSION { Ok(()) } else { Err(FormatError::UnsupportedVersion { what, found }) }
}

fn reserved(value: u64, what: &'static str) -> Result<(), FormatError> {
    if value == 0 { Ok(()) } else { Err(FormatError::Invalid { what }) }
}

fn check_key_len(len: usize) -> Result<(), FormatError> {
    if (1..=MAX_KEY_LEN).contains(&len) { Ok(()) } else { Err(FormatError::Invalid { what: "key length" }) }
}

fn check_value_len(len: u64) -> Result<(), FormatError> {
    if (1..=MAX_VALUE_LEN).contains(&len) {
        Ok(())
    } else {
        Err(FormatError::Invalid { what: "value length" })
    }
}

/// One record as the footer lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FooterEntry<'a> {
    /// Offset of the record (its header) in the file.
    pub record_offset: u64,
    /// The value's length.
    pub value_len: u64,
    /// The object version.
    pub version: ObjectVersion,
    /// CRC32C of the value.
    pub value_crc: u32,
    /// The key.
    pub key: KeyRef<'a>,
}

impl FooterEntry<'_> {
    /// Where the record's value starts in the file.
    pub fn value_offset(&self) -> u64 {
        self.record_offset + RecordLayout::new(self.key.len(), self.value_len).value_offset
    }

    /// Where the record ends in the file (padded).
    pub fn record_end(&self) -> u64 {
        self.record_offset + RecordLayout::new(self.key.len(), self.value_len).len
    }
}

/// Builds a footer as records are appended.
#[derive(Debug, Clone)]
pub struct FooterBuilder {
    bytes: Vec<u8>,
    count: u32,
}

impl FooterBuilder {
    /// A footer for bucket `bucket`.
    pub fn new(bucket: BucketId) -> Self {
        let mut bytes = Vec::with_capacity(4096);
        bytes.extend_from_slice(&FOOTER_MAGIC.to_le_bytes());
        bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        bytes.extend_from_slice(&0u16.to_le_bytes());
        bytes.extend_from_slice(&bucket.0.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes()); // count, patched in finish
        Self { bytes, count: 0 }
    }

    /// Records listed so far.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Bytes the footer will take once finished.
    pub fn encoded_len(&self) -> usize {
        self.bytes.len() + 4
    }

    /// Lists one record.
    pub fn push(&mut self, e: &FooterEntry<'_>) {
        self.bytes.extend_from_slice(&e.record_offset.to_le_bytes());
        self.bytes.extend_from_slice(&e.value_len.to_le_bytes());
        self.bytes.extend_from_slice(&e.version.0.to_le_bytes());
        self.bytes.extend_from_slice(&e.value_crc.to_le_bytes());
        self.bytes.extend_from_slice(&(e.key.len() as u16).to_le_bytes());
        self.bytes.extend_from_slice(e.key.as_bytes());
        self.count += 1;
    }

    /// The finished footer bytes (count patched in, CRC appended).
    pub fn finish(mut self) -> Vec<u8> {
        self.bytes[16..20].copy_from_slice(&self.count.to_le_bytes());
        let crc = crc32c(&self.bytes);
        self.bytes.extend_from_slice(&crc.to_le_bytes());
        self.bytes
    }
}

/// A decoded footer; entries borrow their keys from the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footer<'a> {
    /// The bucket it describes.
    pub bucket: BucketId,
    /// Every record, in file order.
    pub entries: Vec<FooterEntry<'a>>,
}

impl<'a> Footer<'a> {
    /// Decodes a footer that must describe bucket `bucket` and whose records must all
    /// lie in `[0, data_len)` in ascending, non-overlapping order.
    pub fn decode(bytes: &'a [u8], bucket: BucketId, data_len: u64) -> Result<Self, FormatError> {
        if bytes.len() < FOOTER_HEAD_LEN + 4 {
            return Err(DecodeError::Truncated {
                what: "footer",
                needed: FOOTER_HEAD_LEN + 4,
                available: bytes.len(),
            }
            .into());
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if crc32c(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
            return Err(FormatError::Checksum { what: "footer" });
        }
        let mut r = Reader::new(body);
        if r.u32("footer magic")? != FOOTER_MAGIC {
            return Err(FormatError::BadMagic { what: "footer" });
        }
        check_version(r.u16("footer version")?, "footer")?;
        reserved(r.u16("footer flags")?.into(), "footer flags")?;
        let found = BucketId(r.u64("bucket id")?);
        if found != bucket {
            return Err(FormatError::WrongBucket { expected: bucket, found });
        }
        let count = r.count("footer entries", MAX_RECORDS as usize, FOOTER_ENTRY_LEN + 1)?;
        let mut entries = Vec::with_capacity(count);
        let mut next_free = 0u64;
        for _ in 0..count {
            let record_offset = r.u64("record offset")?;
            let value_len = r.u64("value length")?;
            let version = ObjectVersion(r.u64("object version")?);
            let value_crc = r.u32("value crc")?;
            let key_len = usize::from(r.u16("key length")?);
            check_key_len(key_len)?;
            check_value_len(value_len)?;
            let key =
                KeyRef::new(r.bytes(key_len, "key")?).map_err(|_| FormatError::Invalid { what: "key" })?;
            let e = FooterEntry { record_offset, value_len, version, value_crc, key };
            if record_offset % BLOCK != 0 || record_offset < next_free || e.record_end() > data_len {
                return Err(FormatError::Invalid { what: "record extent" });
            }
            next_free = e.record_end();
            entries.push(e);
        }
        r.finish("footer")?;
        Ok(Footer { bucket, entries })
    }
}

/// The fixed structure at the end of every bucket file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    /// The bucket.
    pub bucket: BucketId,
    /// Where the footer starts (also the end of the records).
    pub footer_offset: u64,
    /// The footer's length, CRC included.
    pub footer_len: u64,
    /// Records in the bucket.
    pub record_count: u32,
}

impl Trailer {
    /// The format version a trailer says it has, if it is a trailer whose checksum
    /// holds: a bucket written by a newer build is told apart from a damaged one by
    /// this, since every later version keeps the magic and version first and the
    /// checksum last (a flipped bit in the version fails the checksum: damage).
    pub fn peek_version(bytes: &[u8]) -> Option<u16> {
        let tail: &[u8; TRAILER_LEN] = bytes.try_into().ok()?;
        let stored = u32::from_le_bytes(tail[60..].try_into().ok()?);
        let mut r = Reader::new(tail);
        let intact = r.u32("trailer magic").ok()? == TRAILER_MAGIC && crc32c(&tail[..60]) == stored;
        intact.then(|| r.u16("trailer version").ok()).flatten()
    }

    /// The total file length for a trailer: records, footer, padding, trailer.
    pub fn file_len(&self) -> u64 {
        align_up(self.footer_offset + self.footer_len + TRAILER_LEN as u64)
    }

    /// Encodes the trailer.
    pub fn encode(&self) -> [u8; TRAILER_LEN] {
        let mut out = [0u8; TRAILER_LEN];
        let mut w = Writer::new(&mut out);
        w.u32(TRAILER_MAGIC);
        w.u16(FORMAT_VERSION);
        w.u16(0);
        w.u64(self.bucket.0);
        w.u64(self.footer_offset);
        w.u64(self.footer_len);
        w.u32(self.record_count);
        w.bytes(&[0u8; 24]);
        w.u32(0);
        w.finish().expect("fixed size");
        let crc = crc32c(&out[..60]);
        out[60..].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes the trailer of bucket `bucket`, whose file is `file_len` bytes long;
    /// the footer it points at must lie inside the file, before the trailer.
    pub fn decode(bytes: &[u8], bucket: BucketId, file_len: u64) -> Result<Self, FormatError> {
        let mut r = Reader::new(bytes);
        if r.u32("trailer magic")? != TRAILER_MAGIC {
            return Err(FormatError::BadMagic { what: "trailer" });
        }
        check_version(r.u16("trailer version")?, "trailer")?;
        reserved(r.u16("trailer flags")?.into(), "trailer flags")?;
        let found = BucketId(r.u64("bucket id")?);
        let footer_offset = r.u64("footer offset")?;
        let footer_len = r.u64("footer length")?;
        let record_count = r.u32("record count")?;
        if r.bytes(24, "trailer reserved")?.iter().any(|b| *b != 0) {
            return Err(FormatError::Invalid { what: "trailer reserved" });
        }
        let stored_crc = r.u32("trailer crc")?;
        r.finish("trailer")?;
        if crc32c(&bytes[..60]) != stored_crc {
            return Err(FormatError::Checksum { what: "trailer" });
        }
        if found != bucket {
            return Err(FormatError::WrongBucket { expected: bucket, found });
        }
        let t = Trailer { bucket, footer_offset, footer_len, record_count };
        let fits = footer_offset % BLOCK == 0
            && footer_len >= (FOOTER_HEAD_LEN + 4) as u64
            && footer_offset
                .checked_add(footer_len)
                .is_some_and(|end| end <= file_len.saturating_sub(TRAILER_LEN as u64))
            && t.file_len() == file_len
            && record_count <= MAX_RECORDS;
        if !fits {
            return Err(FormatError::Invalid { what: "trailer extents" });
        }
        Ok(t)
    }
}
