//! Length-prefixed frames: the unit every Larder TCP connection carries.
//!
//! A frame is a fixed 16-byte header followed by `body_len` bytes of body:
//!
//! | bytes | field |
//! |---|---|
//! | 0..2 | magic `b"LR"` |
//! | 2 | [`FrameKind`] |
//! | 3 | flags (no flag is defined yet: any set bit is refused) |
//! | 4..8 | `body_len`, u32 little-endian |
//! | 8..16 | request id, u64 little-endian (0 where the kind has none) |
//!
//! The body length is checked against the connection's maximum from the header alone,
//! before a byte of the body is buffered, so a peer announcing 4 GiB is refused at
//! once. Garbage is refused by the magic at its first two bytes.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use bytes::{Buf, Bytes, BytesMut};

/// Bytes in a frame header.
pub const FRAME_HEADER_LEN: usize = 16;

/// The largest frame body a connection accepts unless configured otherwise. The
/// biggest control message fits: a batch of 65,536 replica lists, each at most
/// 16 replicas of 37 bytes plus 30 bytes of list, is under 41 MB.
pub const DEFAULT_MAX_FRAME_BODY: u32 = 64 << 20;

const MAGIC: [u8; 2] = *b"LR";

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FrameKind {
    /// The connecting side's [`Hello`](super::Hello); the first frame it sends.
    Hello,
    /// The accepting side's [`Welcome`](super::Welcome): the connection is established.
    Welcome,
    /// The accepting side's [`Refusal`](super::Refusal); the connection closes after it.
    Refuse,
    /// A request; the request id is the caller's and comes back on its response.
    Request,
    /// The response to the request with the same id.
    Response,
    /// Unsolicited work from the accepting side (the master's node commands); its id is
    /// the command's, acknowledged by a [`FrameKind::CommandAck`].
    Command,
    /// The connecting side has carried out the command with the same id.
    CommandAck,
    /// "Still here": sent by an idle connecting side, answered by a heartbeat ack.
    Heartbeat,
    /// The answer to a heartbeat.
    HeartbeatAck,
}

impl FrameKind {
    /// Every kind, in code order.
    pub const ALL: [FrameKind; 9] = [
        FrameKind::Hello,
        FrameKind::Welcome,
        FrameKind::Refuse,
        FrameKind::Request,
        FrameKind::Response,
        FrameKind::Command,
        FrameKind::CommandAck,
        FrameKind::Heartbeat,
        FrameKind::HeartbeatAck,
    ];

    /// The kind's byte on the wire.
    pub const fn code(self) -> u8 {
        match self {
            FrameKind::Hello => 1,
            FrameKind::Welcome => 2,
            FrameKind::Refuse => 3,
            FrameKind::Request => 4,
            FrameKind::Response => 5,
            FrameKind::Command => 6,
            FrameKind::CommandAck => 7,
            FrameKind::Heartbeat => 8,
            FrameKind::HeartbeatAck => 9,
        }
    }

    /// The kind with this byte.
    pub fn from_code(code: u8) -> Option<FrameKind> {
        FrameKind::ALL.iter().copied().find(|k| k.code() == code)
    }
}

/// Why bytes are not a frame. Every one of them ends the connection: after a bad
/// header nothing that follows can be trusted to start where a frame starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The first two bytes are not `b"LR"`: the peer does not speak this protocol.
    #[error("not a Larder frame (magic {0:02x?})")]
    BadMagic([u8; 2]),
    /// A kind byte this build does not know.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// Flag bits this build does not know.
    #[error("unknown frame flags {0:#04x}")]
    UnknownFlags(u8),
    /// The body is longer than the connection accepts.
    #[error("frame body of {len} bytes, the maximum is {max}")]
    TooLong {
        /// The announced body length.
        len: u32,
        /// The connection's maximum.
        max: u32,
    },
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// What the frame carries.
    pub kind: FrameKind,
    /// The request (or command) id; 0 for kinds without one.
    pub id: u64,
    /// Bytes of body that follow the header.
    pub body_len: u32,
}

impl FrameHeader {
    /// Decodes a header, refusing a body longer than `max_body`.
    pub fn decode(bytes: &[u8; FRAME_HEADER_LEN], max_body: u32) -> Result<Self, FrameError> {
        let magic = [bytes[0], bytes[1]];
        if magic != MAGIC {
            return Err(FrameError::BadMagic(magic));
        }
        let kind = FrameKind::from_code(bytes[2]).ok_or(FrameError::UnknownKind(bytes[2]))?;
        if bytes[3] != 0 {
            return Err(FrameError::UnknownFlags(bytes[3]));
        }
        let body_len = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        if body_len > max_body {
            return Err(FrameError::TooLong { len: body_len, max: max_body });
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&bytes[8..16]);
        Ok(Self { kind, id: u64::from_le_bytes(id), body_len })
    }

    /// The header's 16 bytes.
    pub fn encode(&self) -> [u8; FRAME_HEADER_LEN] {
        let mut out = [0u8; FRAME_HEADER_LEN];
        out[0..2].copy_from_slice(&MAGIC);
        out[2] = self.kind.code();
        out[4..8].copy_from_slice(&self.body_len.to_le_bytes());
        out[8..16].copy_from_slice(&self.id.to_le_bytes());
        out
    }
}

/// Appends one frame (header and body) to `out`. Refuses a body longer than a frame
/// may be (`u32::MAX`) or than `max_body`, the peer's limit.
pub fn write_frame(
    out: &mut Vec<u8>,
    kind: FrameKind,
    id: u64,
    body: &[u8],
    max_body: u32,
) -> Result<(), FrameError> {
    let body_len = checked_body_len(body.len(), max_body)?;
    out.extend_from_slice(&FrameHeader { kind, id, body_len }.encode());
    out.extend_from_slice(body);
    Ok(())
}

fn checked_body_len(len: usize, max_body: u32) -> Result<u32, FrameError> {
    let body_len = u32::try_from(len).map_err(|_| FrameError::TooLong { len: u32::MAX, max: max_body })?;
    if body_len > max_body {
        return Err(FrameError::TooLong { len: body_len, max: max_body });
    }
    Ok(body_len)
}

/// Body parts at least this long are queued by reference, never copied; shorter ones
/// (headers, control messages) are packed together so a write carries many of them.
pub const CHAIN_AT_LEAST: usize = 16 << 10;

/// Frames queued for a socket, in order: small frames and headers packed into one
/// buffer, large body parts kept as the [`Bytes`] they were given (a value is written
/// to the socket straight from the caller's buffer). Write out [`Transmit::chunks`]
/// (vectored), then [`Transmit::advance`] by what the socket took.
#[derive(Debug, Default)]
pub struct Transmit {
    /// Whole chunks, oldest first.
    chunks: VecDeque<Bytes>,
    /// Small bytes not yet sealed into a chunk; they follow every chunk.
    tail: BytesMut,
    /// Bytes of the front chunk already written.
    front_written: usize,
    /// Bytes queued and not yet written.
    len: usize,
}

impl Transmit {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes queued and not yet written.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues one frame whose body is `parts` in order. Refuses a body longer than a
    /// frame may be or than `max_body`, the peer's limit (nothing is queued then).
    pub fn push_frame(
        &mut self,
        kind: FrameKind,
        id: u64,
        parts: &[Bytes],
        max_body: u32,
    ) -> Result<(), FrameError> {
        let body_len = checked_body_len(parts.iter().map(Bytes::len).sum(), max_body)?;
        self.push_small(&FrameHeader { kind, id, body_len }.encode());
        for part in parts {
            if part.len() >= CHAIN_AT_LEAST {
                self.seal_tail();
                self.len += part.len();
                self.chunks.push_back(part.clone());
            } else {
                self.push_small(part);
            }
        }
        Ok(())
    }

    /// Queues a frame with a small body (copied).
    pub fn push_frame_copied(
        &mut self,
        kind: FrameKind,
        id: u64,
        body: &[u8],
        max_body: u32,
    ) -> Result<(), FrameError> {
        let body_len = checked_body_len(body.len(), max_body)?;
        self.push_small(&FrameHeader { kind, id, body_len }.encode());
        self.push_small(body);
        Ok(())
    }

    /// Moves everything queued in `other` behind what this queue holds.
    pub fn append(&mut self, other: &mut Transmit) {
        if other.is_empty() {
            return;
        }
        other.seal_tail();
        if let Some(front) = other.chunks.front_mut() {
            front.advance(other.front_written);
        }
        self.seal_tail();
        self.len += other.len;
        // Drained, not replaced: `other` keeps its buffers' capacity for the next frames.
        self.chunks.append(&mut other.chunks);
        other.len = 0;
        other.front_written = 0;
    }

    /// Up to `max` chunks of what is to be written next, in order (fewer if less is
    /// queued). Write them with one vectored write.
    pub fn chunks(&self, max: usize) -> impl Iterator<Item = &[u8]> {
        let mut chunks = self.chunks.iter().map(|c| &c[..]);
        let first = chunks.next().map(|c| &c[self.front_written..]);
        let tail = (!self.tail.is_empty()).then_some(&self.tail[..]);
        first.into_iter().chain(chunks).chain(tail).filter(|c| !c.is_empty()).take(max)
    }

    /// `n` bytes were written from the front.
    pub fn advance(&mut self, mut n: usize) {
        debug_assert!(n <= self.len, "advanced past what is queued");
        self.len -= n.min(self.len);
        while n > 0 {
            let Some(front) = self.chunks.front() else {
                self.tail.advance(n.min(self.tail.len()));
                return;
            };
            let left = front.len() - self.front_written;
            if n < left {
                self.front_written += n;
                return;
            }
            n -= left;
            self.chunks.pop_front();
            self.front_written = 0;
        }
    }

    /// Drops everything queued.
    pub fn clear(&mut self) {
        *self = Transmit::default();
    }

    /// Copies everything queued to the end of `out` and empties the queue.
    pub fn drain_into(&mut self, out: &mut Vec<u8>) {
        out.reserve(self.len);
        for chunk in self.chunks(usize::MAX) {
            out.extend_from_slice(chunk);
        }
        self.clear();
    }

    fn push_small(&mut self, bytes: &[u8]) {
        self.tail.extend_from_slice(bytes);
        self.len += bytes.len();
    }

    fn seal_tail(&mut self) {
        if !self.tail.is_empty() {
            self.chunks.push_back(self.tail.split().freeze());
        }
    }
}

/// A machine's `poll_transmit` into a flat buffer: moves `outgoing` to the end of `out`
/// (a copy); false if there was nothing.
pub(super) fn take_outgoing(outgoing: &mut Transmit, out: &mut Vec<u8>) -> bool {
    if outgoing.is_empty() {
        return false;
    }
    outgoing.drain_into(out);
    true
}

/// A machine's `poll_transmit_chunks`: moves `outgoing` behind what `out` holds, without
/// copying; false if there was nothing.
pub(super) fn take_outgoing_chunks(outgoing: &mut Transmit, out: &mut Transmit) -> bool {
    if outgoing.is_empty() {
        return false;
    }
    out.append(outgoing);
    true
}

/// A whole received frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Its header.
    pub header: FrameHeader,
    /// Its body: a large one is a view of the bytes as they were received, not a copy.
    pub body: Bytes,
}

/// Room a receive buffer offers at least, for frames of unknown or small length.
const RECEIVE_CHUNK: usize = 64 << 10;

/// Bytes of a frame read before the rest of it, when reads follow
/// [`Deframer::receive_limit`]: its header and the head of its body (a write's fields
/// and key), so that the owner of the connection can tell what a large frame is before
/// the rest of it arrives, and read that rest straight into its own memory.
pub const FRAME_PROBE: usize = 16 << 10;

/// A frame body up to this long gets its whole room at once when its header arrives;
/// a longer one grows by doubling, so a peer must send half of what it announced
/// before that much is held for it.
const RESERVE_AT_ONCE: usize = 4 << 20;

/// Cuts a byte stream into frames.
///
/// Either read the socket straight into [`Deframer::receive_buffer`] (a large frame's
/// body then lands where it is handed out: no copy), or feed it bytes with
/// [`Deframer::push`]; then take frames out ([`Deframer::next_frame`]) until it returns
/// `Ok(None)`. A header announcing a body over the maximum is an error before any room
/// is made for that body.
#[derive(Debug)]
pub struct Deframer {
    /// Received bytes not yet taken out as frames.
    buf: BytesMut,
    /// How many bytes at the front of `buf` are known to be whole frames: the search
    /// for the frame being received starts there, so that a buffer of many pipelined
    /// frames is walked once, not once per read.
    whole: usize,
    max_body: u32,
    failed: Option<FrameError>,
}

impl Deframer {
    /// A deframer accepting bodies of up to `max_body` bytes.
    pub fn new(max_body: u32) -> Self {
        Self { buf: BytesMut::new(), whole: 0, max_body, failed: None }
    }

    /// Appends received bytes (a copy).
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_none() {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// The buffer to read the socket into, with room for at least the rest of the
    /// frame being received (up to the growth limit) or a chunk. Append only received
    /// bytes to it; then call [`Deframer::next_frame`].
    pub fn receive_buffer(&mut self) -> &mut BytesMut {
        if self.failed.is_some() {
            // Whatever arrives now is dropped by the next call.
            self.buf.clear();
            self.whole = 0;
        }
        if self.buf.is_empty() && self.buf.capacity() > RESERVE_AT_ONCE {
            // Whatever a large frame left behind: not kept for the connection's life.
            self.buf = BytesMut::new();
        }
        let missing = self.missing_of_first_partial_frame();
        let room = missing.min(RESERVE_AT_ONCE.max(self.buf.len())).max(RECEIVE_CHUNK);
        self.buf.reserve(room);
        &mut self.buf
    }

    /// Bytes still to come of the first frame not wholly buffered (whole frames not
    /// yet taken out may come first); 0 if its header is not in yet or is invalid.
    /// Walks only the frames it has not walked before.
    fn missing_of_first_partial_frame(&mut self) -> usize {
        let mut at = self.whole;
        while let Some(bytes) = self.buf.get(at..).and_then(|b| b.first_chunk::<FRAME_HEADER_LEN>()) {
            let Ok(header) = FrameHeader::decode(bytes, self.max_body) else { return 0 };
            let end = at + FRAME_HEADER_LEN + header.body_len as usize;
            if end > self.buf.len() {
                return end - self.buf.len();
            }
            at = end;
            self.whole = at;
        }
        0
    }

    /// Changes the largest body accepted from the next header on (a connection allows
    /// only a small handshake before it is established).
    pub fn set_max_body(&mut self, max_body: u32) {
        self.max_body = max_body;
    }

    /// Bytes received but not yet taken out as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The most bytes to read into [`Deframer::receive_buffer`] next (through a
    /// limited view of it) for a large frame's head to arrive before the rest of it:
    /// up to [`FRAME_PROBE`] bytes of a frame while fewer are in, then no limit.
    pub fn receive_limit(&self) -> usize {
        match self.partial_frame() {
            Some((_, body)) if FRAME_HEADER_LEN + body.len() < FRAME_PROBE => {
                FRAME_PROBE - FRAME_HEADER_LEN - body.len()
            }
            Some(_) => usize::MAX,
            // A frame's header not in yet, or whole frames ahead of the next one
            // (taken out before it, so it is still probed).
            None => FRAME_PROBE,
        }
    }

    /// The frame being received, if every frame before it was taken out and its body
    /// is not all in yet: its header and the body bytes received so far.
    pub fn partial_frame(&self) -> Option<(FrameHeader, &[u8])> {
        if self.failed.is_some() {
            return None;
        }
        let header = FrameHeader::decode(self.buf.first_chunk::<FRAME_HEADER_LEN>()?, self.max_body).ok()?;
        let total = FRAME_HEADER_LEN + header.body_len as usize;
        (self.buf.len() < total).then(|| (header, &self.buf[FRAME_HEADER_LEN..]))
    }

    /// Takes [`Deframer::partial_frame`] out: its header, the body bytes received so
    /// far, and how many are still to come. The caller reads exactly that many bytes
    /// of the stream itself (they are the rest of the body) before it gives this
    /// deframer anything more.
    pub fn take_partial_frame(&mut self) -> Option<(FrameHeader, Bytes, usize)> {
        let (header, received) = self.partial_frame().map(|(h, body)| (h, body.len()))?;
        let mut frame = self.buf.split_to(FRAME_HEADER_LEN + received);
        frame.advance(FRAME_HEADER_LEN);
        self.whole = 0;
        Some((header, frame.freeze(), header.body_len as usize - received))
    }

    /// The next whole frame, `Ok(None)` if more bytes are needed, or the error that
    /// ends the stream (returned again on every later call).
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if let Some(e) = self.failed {
            self.buf = BytesMut::new();
            self.whole = 0;
            return Err(e);
        }
        let Some(header_bytes) = self.buf.first_chunk::<FRAME_HEADER_LEN>() else {
            return Ok(None);
        };
        let header = match FrameHeader::decode(header_bytes, self.max_body) {
            Ok(h) => h,
            Err(e) => {
                self.failed = Some(e);
                self.buf = BytesMut::new();
                self.whole = 0;
                return Err(e);
            }
        };
        let total = FRAME_HEADER_LEN + header.body_len as usize;
        if self.buf.len() < total {
            return Ok(None);
        }
        self.whole = self.whole.saturating_sub(total);
        let body = if header.body_len as usize >= CHAIN_AT_LEAST {
            let mut frame = self.buf.split_to(total);
            frame.advance(FRAME_HEADER_LEN);
            frame.freeze()
        } else {
            // A small body is copied out: a view would keep the whole receive buffer
            // alive for as long as its holder keeps it.
            let body = Bytes::copy_from_slice(&self.buf[FRAME_HEADER_LEN..total]);
            self.buf.advance(total);
            body
        };
        Ok(Some(Frame { header, body }))
    }
}
