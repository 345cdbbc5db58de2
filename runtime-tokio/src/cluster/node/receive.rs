//! Writes whose value is read from the socket straight into the segment.
//!
//! A write's value is most of its frame. Buffered, it is copied twice on the node: by
//! the kernel into the connection's buffer, then into the segment. Received in place,
//! the kernel copies it into the segment range the master granted, and its CRC32C is
//! taken a read at a time while the bytes are still in cache.
//!
//! While a value is being received its range is lent out of the segment
//! ([`larder_engine::memory::LentRange`]): what the range held is forgotten first (it is
//! being overwritten, so no read may reach it), no other write lands there, and the
//! new extent is recorded only once every byte is in and matches the writer's CRC32C.
//! A receive cut short (the peer gone, the node stopping) gives the range back holding
//! nothing.
//!
//! Forgetting what the range held when a receive begins loses nothing a reader may
//! still ask for: the master grants a range only once the object that held it is gone
//! (and a removed object's range stays out of use while it is leased). A receive that
//! stalls keeps its range from other writes until its connection ends (at the idle
//! timeout, if the peer says nothing): a put granted the same range meanwhile is
//! refused as fenced, and its writer gets that error.

use std::sync::{Arc, PoisonError};

use bytes::Bytes;
use larder_engine::memory::LentRange;
use larder_engine::net::data::{DataError, DataResponse, WriteHead};
use larder_engine::{Key, ObjectVersion, SegmentId};

use super::{NodeState, usize_range};
use crate::cluster::connection::BodySink;

/// A write whose value is arriving straight into its range of the segment.
#[derive(Debug)]
pub(super) struct SegmentReceive {
    state: Arc<NodeState>,
    segment: SegmentId,
    offset: u64,
    version: ObjectVersion,
    epoch: u64,
    /// The writer's CRC32C of the value.
    crc32c: u32,
    key: Key,
    range: LentRange,
    /// Bytes of the range received so far, from its start.
    filled: usize,
    /// CRC32C of those bytes.
    crc_so_far: u32,
}

impl NodeState {
    /// Begins the write `head` of a `len`-byte value, whose first bytes, `received`,
    /// have arrived, if the segment would take it as a buffered write (mounted with the
    /// write's master run, not fenced, the range inside it and lent to no other write).
    pub(super) fn begin_receive(
        self: &Arc<Self>,
        head: &WriteHead<'_>,
        len: u64,
        received: &[u8],
    ) -> Result<SegmentReceive, DataError> {
        if received.len() as u64 > len {
            return Err(DataError::OutOfBounds);
        }
        let mut s = self.segment.write().unwrap_or_else(PoisonError::into_inner);
        s.admits(head.segment, head.epoch, head.version)?;
        s.extents.check_write(head.offset, len, head.version)?;
        let (start, ulen) = usize_range(head.offset, len);
        let range = s.bytes.lend(start, ulen).ok_or(DataError::Fenced)?;
        // Overwritten from now on: no read may reach these bytes while they are lent.
        s.extents.forget_overlapping(head.offset, len);
        drop(s);
        let mut receive = SegmentReceive {
            state: Arc::clone(self),
            segment: head.segment,
            offset: head.offset,
            version: head.version,
            epoch: head.epoch,
            crc32c: head.crc32c,
            key: head.key.to_key(),
            range,
            filled: 0,
            crc_so_far: 0,
        };
        receive.unfilled()[..received.len()].copy_from_slice(received);
        receive.filled(received.len());
        Ok(receive)
    }
}

impl SegmentReceive {
    /// Every byte is in: the write lands if they match the writer's CRC32C and the
    /// segment is still mounted as when it began.
    fn land(self) -> Result<(), DataError> {
        let whole = self.filled == self.range.len();
        let arrived = whole && self.crc_so_far == self.crc32c;
        let len = self.range.len() as u64;
        let mut s = self.state.segment.write().unwrap_or_else(PoisonError::into_inner);
        // The range is the segment's again, under the lock and before it holds an
        // extent, so no read finds an extent over lent bytes.
        drop(self.range);
        s.admits(self.segment, self.epoch, self.version)?;
        if !arrived {
            self.state.note_crc_failure();
            return Err(DataError::Corrupted);
        }
        s.extents.check_write(self.offset, len, self.version)?;
        s.extents.record_write(self.offset, len, self.version, self.crc32c, self.key.as_ref());
        drop(s);
        self.state.received_in_place.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

impl BodySink for SegmentReceive {
    fn unfilled(&mut self) -> &mut [u8] {
        let filled = self.filled;
        &mut self.range.bytes_mut()[filled..]
    }

    fn filled(&mut self, n: usize) {
        let new = &self.range.bytes()[self.filled..self.filled + n];
        self.crc_so_far = larder_engine::checksum::crc32c_append(self.crc_so_far, new);
        self.filled += n;
    }

    fn finish(self: Box<Self>) -> Bytes {
        let mut out = Vec::new();
        match self.land() {
            Ok(()) => DataResponse::Written.encode(&mut out),
            Err(e) => DataResponse::Refused(e).encode(&mut out),
        }
        Bytes::from(out)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::RwLock;
    use std::sync::atomic::AtomicU64;

    use larder_engine::memory::SegmentMemory;
    use larder_engine::net::data::Extents;
    use larder_engine::{KeyRef, MemoryReplica};

    use super::super::Segment;
    use super::*;

    const SEGMENT: SegmentId = SegmentId(3);
    const EPOCH: u64 = 40;
    const SIZE: usize = 1 << 20;

    fn node() -> Arc<NodeState> {
        let segment = Segment {
            id: SEGMENT,
            bytes: SegmentMemory::committed(SIZE).unwrap(),
            extents: Extents::new(SIZE as u64),
            epoch: Some(EPOCH),
            version_floor: ObjectVersion(0),
        };
        Arc::new(NodeState {
            segment: RwLock::new(segment),
            tier: None,
            crc_failures_unreported: AtomicU64::new(0),
            received_in_place: AtomicU64::new(0),
        })
    }

    fn value(seed: u8, len: usize) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    fn head(offset: u64, version: u64, value: &[u8]) -> WriteHead<'static> {
        WriteHead {
            segment: SEGMENT,
            offset,
            version: ObjectVersion(version),
            epoch: EPOCH,
            crc32c: larder_engine::checksum::crc32c(value),
            key: KeyRef::new(b"k").unwrap(),
        }
    }

    /// Feeds `rest` to the receive in reads of at most `read` bytes, as a socket would.
    fn feed(receive: &mut SegmentReceive, rest: &[u8], read: usize) {
        for piece in rest.chunks(read) {
            receive.unfilled()[..piece.len()].copy_from_slice(piece);
            receive.filled(piece.len());
        }
    }

    fn answer(receive: SegmentReceive) -> DataResponse<'static> {
        let body = Box::new(receive).finish();
        match DataResponse::decode(&body).unwrap() {
            DataResponse::Written => DataResponse::Written,
            DataResponse::Refused(e) => DataResponse::Refused(e),
            other => panic!("{other:?}"),
        }
    }

    fn read(node: &NodeState, offset: u64, len: usize, version: u64) -> Result<Bytes, DataError> {
        let replica = MemoryReplica { segment: SEGMENT, offset, len: len as u64 };
        node.copy_replica(&replica, ObjectVersion(version), None)
    }

    #[test]
    fn a_value_received_in_place_is_readable_only_once_all_of_it_is_in() {
        let node = node();
        let v = value(1, 300_000);
        for read_size in [1, 4096, 65_536, 300_000] {
            let offset = 4096;
            let mut receive =
                node.begin_receive(&head(offset, read_size as u64, &v), v.len() as u64, &v[..1000]).unwrap();
            feed(&mut receive, &v[1000..v.len() - 1], read_size);
            assert_eq!(
                read(&node, offset, v.len(), read_size as u64),
                Err(DataError::NotHeld),
                "before the last byte"
            );
            feed(&mut receive, &v[v.len() - 1..], 1);
            assert!(receive.unfilled().is_empty());
            assert_eq!(answer(receive), DataResponse::Written);
            assert_eq!(read(&node, offset, v.len(), read_size as u64).unwrap(), v, "reads of {read_size}");
        }
        assert_eq!(node.received_in_place.load(std::sync::atomic::Ordering::Relaxed), 4);
    }

    #[test]
    fn while_a_value_is_received_its_range_is_no_one_elses() {
        let node = node();
        let (old, new) = (value(1, 200_000), value(2, 200_000));
        node.write(&head(0, 1, &old), &old).unwrap();
        let mut receive = node.begin_receive(&head(100_000, 2, &new), new.len() as u64, &[]).unwrap();
        // What the range held is being overwritten: never read half new.
        assert_eq!(read(&node, 0, old.len(), 1), Err(DataError::NotHeld));
        let overlapping = value(3, 1000);
        assert_eq!(node.write(&head(299_500, 3, &overlapping), &overlapping), Err(DataError::Fenced));
        let err = node.begin_receive(&head(250_000, 3, &new), new.len() as u64, &[]).unwrap_err();
        assert_eq!(err, DataError::Fenced);
        // Beside it, writes go on.
        node.write(&head(300_000, 3, &overlapping), &overlapping).unwrap();
        feed(&mut receive, &new, 65_536);
        assert_eq!(answer(receive), DataResponse::Written);
        assert_eq!(read(&node, 100_000, new.len(), 2).unwrap(), new);
        assert_eq!(read(&node, 300_000, overlapping.len(), 3).unwrap(), overlapping);
    }

    #[test]
    fn a_receive_cut_short_gives_the_range_back_holding_nothing() {
        let node = node();
        let v = value(4, 150_000);
        let mut receive = node.begin_receive(&head(0, 5, &v), v.len() as u64, &v[..70_000]).unwrap();
        feed(&mut receive, &v[70_000..100_000], 8192);
        drop(receive);
        assert_eq!(read(&node, 0, v.len(), 5), Err(DataError::NotHeld));
        // The range is the segment's again: the writer's retry lands.
        node.write(&head(0, 5, &v), &v).unwrap();
        assert_eq!(read(&node, 0, v.len(), 5).unwrap(), v);
    }

    #[test]
    fn damaged_bytes_and_a_remount_midway_are_refused_and_land_nothing() {
        let node = node();
        let v = value(5, 100_000);
        let mut damaged = v.clone();
        damaged[77_777] ^= 1;
        let mut receive = node.begin_receive(&head(0, 6, &v), v.len() as u64, &[]).unwrap();
        feed(&mut receive, &damaged, 65_536);
        assert_eq!(answer(receive), DataResponse::Refused(DataError::Corrupted));
        assert_eq!(node.crc_failures_unreported.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert_eq!(read(&node, 0, v.len(), 6), Err(DataError::NotHeld));

        let mut receive = node.begin_receive(&head(0, 7, &v), v.len() as u64, &[]).unwrap();
        feed(&mut receive, &v, 65_536);
        // The master the write was granted by expired the segment meanwhile.
        node.segment.write().unwrap().epoch = Some(EPOCH + 1);
        assert_eq!(answer(receive), DataResponse::Refused(DataError::Fenced));
        assert_eq!(read(&node, 0, v.len(), 7), Err(DataError::NotHeld));
    }

    /// A read answer is sent from the segment itself: while its bytes are out, no write
    /// or receive lands on them, so what the socket sends is what was checked.
    #[test]
    fn a_range_being_sent_takes_no_write_or_receive_until_it_is_sent() {
        let node = node();
        let (old, new) = (value(7, 100_000), value(8, 100_000));
        node.write(&head(0, 1, &old), &old).unwrap();
        let (crc, shared) = node.share_replica(SEGMENT, 0, old.len() as u64, ObjectVersion(1)).unwrap();
        assert_eq!(crc, larder_engine::checksum::crc32c(&old));
        let sent = Bytes::from_owner(shared);
        assert_eq!(node.write(&head(50_000, 2, &new), &new), Err(DataError::Fenced));
        assert_eq!(
            node.begin_receive(&head(0, 2, &new), new.len() as u64, &[]).unwrap_err(),
            DataError::Fenced
        );
        let again = read(&node, 0, old.len(), 1).unwrap();
        assert!(sent == old && again == old, "sent and read again: the old bytes");
        drop(sent);
        node.write(&head(50_000, 2, &new), &new).unwrap();
        assert_eq!(read(&node, 50_000, new.len(), 2).unwrap(), new);
        assert_eq!(
            node.share_replica(SEGMENT, 0, old.len() as u64, ObjectVersion(1)).unwrap_err(),
            DataError::NotHeld,
            "overwritten"
        );
    }

    #[test]
    fn a_receive_is_refused_up_front_as_a_buffered_write_would_be() {
        let node = node();
        let v = value(6, 70_000);
        let len = v.len() as u64;
        let other_segment = WriteHead { segment: SegmentId(9), ..head(0, 8, &v) };
        let other_run = WriteHead { epoch: EPOCH + 5, ..head(0, 8, &v) };
        assert_eq!(node.begin_receive(&other_segment, len, &[]).unwrap_err(), DataError::UnknownSegment);
        assert_eq!(node.begin_receive(&other_run, len, &[]).unwrap_err(), DataError::Fenced);
        assert_eq!(
            node.begin_receive(&head(SIZE as u64 - 10, 8, &v), len, &[]).unwrap_err(),
            DataError::OutOfBounds
        );
        node.write(&head(0, 9, &v), &v).unwrap();
        assert_eq!(
            node.begin_receive(&head(0, 8, &v), len, &[]).unwrap_err(),
            DataError::Fenced,
            "a newer object there"
        );
        assert_eq!(node.begin_receive(&head(0, 8, &v), 10, &v[..11]).unwrap_err(), DataError::OutOfBounds);
        assert_eq!(read(&node, 0, v.len(), 9).unwrap(), v, "the newer object is untouched");
    }
}
