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

use alloc::vec::Vec;

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
    let body_len =
        u32::try_from(body.len()).map_err(|_| FrameError::TooLong { len: u32::MAX, max: max_body })?;
    if body_len > max_body {
        return Err(FrameError::TooLong { len: body_len, max: max_body });
    }
    out.extend_from_slice(&FrameHeader { kind, id, body_len }.encode());
    out.extend_from_slice(body);
    Ok(())
}

/// Moves `outgoing` into `out` (appending to what `out` holds); false if there was
/// nothing. The connection machines' `poll_transmit`.
pub(super) fn take_outgoing(outgoing: &mut Vec<u8>, out: &mut Vec<u8>) -> bool {
    if outgoing.is_empty() {
        return false;
    }
    if out.is_empty() {
        core::mem::swap(out, outgoing);
    } else {
        out.append(outgoing);
    }
    true
}

/// A whole received frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Its header.
    pub header: FrameHeader,
    /// Its body.
    pub body: Vec<u8>,
}

/// Cuts a byte stream into frames.
///
/// Feed it whatever the socket gave ([`Deframer::push`]), then take frames out
/// ([`Deframer::next_frame`]) until it returns `Ok(None)`. It buffers at most one
/// partial frame beyond what it was given, and a header announcing a body over the
/// maximum is an error before any of that body is held.
#[derive(Debug)]
pub struct Deframer {
    buf: Vec<u8>,
    /// Where the unread bytes of `buf` start.
    start: usize,
    max_body: u32,
    failed: Option<FrameError>,
}

impl Deframer {
    /// A deframer accepting bodies of up to `max_body` bytes.
    pub fn new(max_body: u32) -> Self {
        Self { buf: Vec::new(), start: 0, max_body, failed: None }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Changes the largest body accepted from the next header on (a connection allows
    /// only a small handshake before it is established).
    pub fn set_max_body(&mut self, max_body: u32) {
        self.max_body = max_body;
    }

    /// Bytes received but not yet taken out as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next whole frame, `Ok(None)` if more bytes are needed, or the error that
    /// ends the stream (returned again on every later call).
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let unread = &self.buf[self.start..];
        let Some(header_bytes) = unread.first_chunk::<FRAME_HEADER_LEN>() else {
            self.compact();
            return Ok(None);
        };
        let header = match FrameHeader::decode(header_bytes, self.max_body) {
            Ok(h) => h,
            Err(e) => {
                self.failed = Some(e);
                self.buf = Vec::new();
                self.start = 0;
                return Err(e);
            }
        };
        let total = FRAME_HEADER_LEN + header.body_len as usize;
        if unread.len() < total {
            self.compact();
            return Ok(None);
        }
        let body = unread[FRAME_HEADER_LEN..total].to_vec();
        self.start += total;
        Ok(Some(Frame { header, body }))
    }

    /// Moves the unread tail to the front once the consumed part dominates, so the
    /// buffer does not grow with the stream.
    fn compact(&mut self) {
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }
}
