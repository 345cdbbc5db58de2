//! Bucket format: round trips, and every damage is a precise error.

use alloc::vec;
use alloc::vec::Vec;

use super::format::*;
use crate::ids::{BucketId, ObjectVersion};
use crate::key::KeyRef;

const B: BucketId = BucketId(7);

fn k(s: &str) -> KeyRef<'_> {
    KeyRef::new(s.as_bytes()).unwrap()
}

fn header() -> RecordHeader<'static> {
    RecordHeader {
        key: k("prefix/00042"),
        value_len: 65536,
        version: ObjectVersion(99),
        value_crc: 0xabcd_1234,
    }
}

/// A footer for three records laid out back to back, and its data length.
fn footer_bytes() -> (Vec<u8>, u64) {
    let mut f = FooterBuilder::new(B);
    let mut offset = 0;
    for (i, (key, len)) in [("a", 1u64), ("bb", 4096), ("ccc", 100_000)].iter().enumerate() {
        let e = FooterEntry {
            record_offset: offset,
            value_len: *len,
            version: ObjectVersion(i as u64 + 1),
            value_crc: i as u32,
            key: k(key),
        };
        f.push(&e);
        offset = e.record_end();
    }
    assert_eq!(f.count(), 3);
    let len = f.encoded_len();
    let bytes = f.finish();
    assert_eq!(bytes.len(), len);
    (bytes, offset)
}

#[test]
fn record_layout_is_block_aligned() {
    let l = RecordLayout::new(10, 1);
    assert_eq!((l.value_offset, l.len), (4096, 8192));
    let l = RecordLayout::new(4096, 65536);
    assert_eq!((l.value_offset, l.len), (8192, 8192 + 65536));
    assert_eq!(align_up(0), 0);
    assert_eq!(align_up(4097), 8192);
}

#[test]
fn record_headers_round_trip() {
    let h = header();
    let mut block = vec![0u8; 4096];
    let n = h.encode(&mut block);
    assert_eq!(n, RECORD_HEADER_LEN + h.key.len());
    assert_eq!(RecordHeader::decode(&block).unwrap(), h);
    assert_eq!(RecordHeader::decode(&block[..n]).unwrap(), h);
}

#[test]
fn any_flipped_bit_in_a_record_header_is_caught() {
    let mut block = vec![0u8; 4096];
    let n = header().encode(&mut block);
    for byte in 0..n {
        for bit in 0..8 {
            let mut bad = block.clone();
            bad[byte] ^= 1 << bit;
            assert!(RecordHeader::decode(&bad).is_err(), "flip at byte {byte} bit {bit} went unnoticed");
        }
    }
}

#[test]
fn record_header_errors_are_precise() {
    let mut block = vec![0u8; 4096];
    header().encode(&mut block);
    let mut bad = block.clone();
    bad[0] = b'X';
    assert_eq!(RecordHeader::decode(&bad), Err(FormatError::BadMagic { what: "record" }));
    let mut bad = block.clone();
    bad[4] = 9;
    assert_eq!(RecordHeader::decode(&bad), Err(FormatError::UnsupportedVersion { what: "record", found: 9 }));
    assert!(matches!(RecordHeader::decode(&block[..20]), Err(FormatError::Decode(_))));
    // A key length larger than the input is a truncation, not a panic.
    let mut bad = block.clone();
    bad[8..10].copy_from_slice(&4000u16.to_le_bytes());
    assert!(RecordHeader::decode(&bad[..100]).is_err());
}

#[test]
fn footers_round_trip() {
    let (bytes, data_len) = footer_bytes();
    let f = Footer::decode(&bytes, B, data_len).unwrap();
    assert_eq!(f.entries.len(), 3);
    assert_eq!(f.entries[2].key, k("ccc"));
    assert_eq!(f.entries[1].value_offset(), f.entries[1].record_offset + 4096);
}

#[test]
fn any_flipped_bit_in_a_footer_is_caught() {
    let (bytes, data_len) = footer_bytes();
    for byte in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[byte] ^= 0x10;
        assert!(Footer::decode(&bad, B, data_len).is_err(), "flip at byte {byte}");
    }
}

#[test]
fn footer_checks_bucket_and_extents() {
    let (bytes, data_len) = footer_bytes();
    assert_eq!(
        Footer::decode(&bytes, BucketId(8), data_len),
        Err(FormatError::WrongBucket { expected: BucketId(8), found: B })
    );
    assert_eq!(Footer::decode(&bytes, B, data_len - 1), Err(FormatError::Invalid { what: "record extent" }));
    // Overlapping records are refused even with a valid CRC.
    let mut f = FooterBuilder::new(B);
    let e = FooterEntry {
        record_offset: 0,
        value_len: 10_000,
        version: ObjectVersion(1),
        value_crc: 0,
        key: k("x"),
    };
    f.push(&e);
    f.push(&FooterEntry { record_offset: 4096, ..e });
    assert_eq!(Footer::decode(&f.finish(), B, 1 << 20), Err(FormatError::Invalid { what: "record extent" }));
    assert!(matches!(Footer::decode(&[1, 2, 3], B, 0), Err(FormatError::Decode(_))));
}

#[test]
fn footer_counts_cannot_force_big_allocations() {
    let mut f = FooterBuilder::new(B).finish();
    // Claim a million entries in a 24-byte footer (and fix the CRC so only the count is wrong).
    f[16..20].copy_from_slice(&MAX_RECORDS.to_le_bytes());
    let n = f.len();
    let crc = crate::checksum::crc32c(&f[..n - 4]);
    f[n - 4..].copy_from_slice(&crc.to_le_bytes());
    assert!(matches!(Footer::decode(&f, B, 1 << 30), Err(FormatError::Decode(_))));
}

#[test]
fn trailers_round_trip_and_locate_the_footer() {
    let (footer, data_len) = footer_bytes();
    let t = Trailer { bucket: B, footer_offset: data_len, footer_len: footer.len() as u64, record_count: 3 };
    let file_len = t.file_len();
    assert_eq!(file_len % BLOCK, 0);
    assert!(file_len >= data_len + footer.len() as u64 + TRAILER_LEN as u64);
    let bytes = t.encode();
    assert_eq!(Trailer::decode(&bytes, B, file_len).unwrap(), t);
    for byte in 0..TRAILER_LEN {
        let mut bad = bytes;
        bad[byte] ^= 0x01;
        assert!(Trailer::decode(&bad, B, file_len).is_err(), "flip at byte {byte}");
    }
    assert_eq!(
        Trailer::decode(&bytes, B, file_len + BLOCK),
        Err(FormatError::Invalid { what: "trailer extents" })
    );
    assert!(matches!(Trailer::decode(&bytes[..63], B, file_len), Err(FormatError::Decode(_))));
}
