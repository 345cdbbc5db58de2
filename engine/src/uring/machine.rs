//! The batch I/O machine: queueing, queue-depth limiting, short-I/O resubmission,
//! retries, end of file, per-operation errors and safe cancellation.
//!
//! # Call order
//!
//! 1. [`IoMachine::push`] operations (any number; they wait in a backlog).
//! 2. While the submission queue has room, take [`IoMachine::poll_submission`] and
//!    hand each to the kernel (or a worker thread) with its `user_data`.
//! 3. Feed every completion the kernel reports to [`IoMachine::handle_completion`].
//!    A short transfer or a retryable error puts the remainder back in the backlog, so
//!    go back to step 2 until the backlog is empty.
//! 4. Drain [`IoMachine::poll_completion`]: one completion per pushed operation, exactly
//!    once, including cancelled ones (so the buffer can be released).
//!
//! [`IoMachine::cancel`] may be called at any time. An operation still in the backlog
//! completes as cancelled at once; one the kernel holds completes as cancelled only
//! when the kernel's completion arrives, because until then the kernel may still write
//! into (or read from) its buffer, which therefore must not be freed or reused.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

/// A file known to the driver (an index in its file table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId(pub u32);

/// A buffer known to the driver (an index in its buffer table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BufId(pub u32);

/// An error number as the kernel reports it (positive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

impl Errno {
    /// Interrupted system call: retried.
    pub const EINTR: Errno = Errno(4);
    /// Input/output error; also reported when a write makes no progress.
    pub const EIO: Errno = Errno(5);
    /// Try again: retried.
    pub const EAGAIN: Errno = Errno(11);
    /// Operation cancelled.
    pub const ECANCELED: Errno = Errno(125);

    fn is_retryable(self) -> bool {
        self == Errno::EINTR || self == Errno::EAGAIN
    }
}

/// Identifies one operation; its `u64` form is the io_uring `user_data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OpId {
    index: u32,
    generation: u32,
}

impl OpId {
    /// The `user_data` value for this operation.
    pub const fn to_user_data(self) -> u64 {
        ((self.generation as u64) << 32) | self.index as u64
    }

    /// The operation a `user_data` value names.
    pub const fn from_user_data(user_data: u64) -> Self {
        Self { index: user_data as u32, generation: (user_data >> 32) as u32 }
    }
}

/// What to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoRequest {
    /// Read `len` bytes at `offset` into `buf[buf_offset..]`.
    Read {
        /// The file.
        file: FileId,
        /// Byte offset in the file.
        offset: u64,
        /// The destination buffer.
        buf: BufId,
        /// Byte offset in the buffer.
        buf_offset: usize,
        /// Bytes to read.
        len: usize,
    },
    /// Write `buf[buf_offset..buf_offset + len]` at `offset`.
    Write {
        /// The file.
        file: FileId,
        /// Byte offset in the file.
        offset: u64,
        /// The source buffer.
        buf: BufId,
        /// Byte offset in the buffer.
        buf_offset: usize,
        /// Bytes to write.
        len: usize,
    },
    /// Flush the file's data and metadata.
    Fsync {
        /// The file.
        file: FileId,
    },
    /// Flush the file's data (and the metadata needed to read it back).
    Fdatasync {
        /// The file.
        file: FileId,
    },
}

impl IoRequest {
    /// The file the operation is on.
    pub fn file(&self) -> FileId {
        match self {
            IoRequest::Read { file, .. }
            | IoRequest::Write { file, .. }
            | IoRequest::Fsync { file }
            | IoRequest::Fdatasync { file } => *file,
        }
    }

    /// The buffer the operation uses, if any.
    pub fn buf(&self) -> Option<BufId> {
        match self {
            IoRequest::Read { buf, .. } | IoRequest::Write { buf, .. } => Some(*buf),
            IoRequest::Fsync { .. } | IoRequest::Fdatasync { .. } => None,
        }
    }

    fn len(&self) -> usize {
        match self {
            IoRequest::Read { len, .. } | IoRequest::Write { len, .. } => *len,
            IoRequest::Fsync { .. } | IoRequest::Fdatasync { .. } => 0,
        }
    }

    /// The same request, `done` bytes further along.
    fn advanced(&self, done: usize) -> IoRequest {
        match *self {
            IoRequest::Read { file, offset, buf, buf_offset, len } => IoRequest::Read {
                file,
                offset: offset + done as u64,
                buf,
                buf_offset: buf_offset + done,
                len: len - done,
            },
            IoRequest::Write { file, offset, buf, buf_offset, len } => IoRequest::Write {
                file,
                offset: offset + done as u64,
                buf,
                buf_offset: buf_offset + done,
                len: len - done,
            },
            sync => sync,
        }
    }
}

/// One operation to hand to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Submission {
    /// Tag the kernel echoes in the completion.
    pub user_data: u64,
    /// What to do (for a resubmission, only the remainder).
    pub request: IoRequest,
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Finished. A read that met end of file reports the bytes read before it.
    Done {
        /// Bytes transferred (0 for syncs).
        bytes: usize,
        /// A read stopped at end of file.
        eof: bool,
    },
    /// Failed with `errno` after transferring `bytes`.
    Failed {
        /// The error.
        errno: Errno,
        /// Bytes transferred before it.
        bytes: usize,
    },
    /// Cancelled by the caller; the buffer is no longer in use.
    Cancelled,
}

/// The end of one operation, reported exactly once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// The operation.
    pub id: OpId,
    /// Its file.
    pub file: FileId,
    /// Its buffer, which the kernel no longer touches.
    pub buf: Option<BufId>,
    /// How it ended.
    pub outcome: Outcome,
}

/// A call the machine cannot honour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MachineError {
    /// No live operation has this id (it completed already, or never existed).
    #[error("no live operation {0:?}")]
    UnknownOp(OpId),
    /// A completion for an operation the kernel was not holding.
    #[error("completion for {0:?}, which was not submitted")]
    NotSubmitted(OpId),
}

/// Where an operation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpState {
    /// In the backlog, not yet handed to the kernel.
    Queued,
    /// Held by the kernel.
    InFlight,
    /// Held by the kernel, but its caller went away.
    InFlightCancelled,
}

/// What happens to an operation's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpEvent {
    /// Handed to the kernel.
    Submit,
    /// The kernel reported a partial transfer or a retryable error.
    Resubmit,
    /// The kernel reported the end.
    Complete,
    /// The caller cancelled.
    Cancel,
}

/// The state after `event`, `None` when the operation is finished (its slot is freed),
/// or `Err` if the event is impossible in that state.
pub const fn transition(state: OpState, event: OpEvent) -> Result<Option<OpState>, (OpState, OpEvent)> {
    match (state, event) {
        (OpState::Queued, OpEvent::Submit) => Ok(Some(OpState::InFlight)),
        (OpState::Queued, OpEvent::Cancel) => Ok(None),
        (OpState::InFlight, OpEvent::Resubmit) => Ok(Some(OpState::Queued)),
        (OpState::InFlight, OpEvent::Complete) => Ok(None),
        (OpState::InFlight, OpEvent::Cancel) => Ok(Some(OpState::InFlightCancelled)),
        (OpState::InFlightCancelled, OpEvent::Complete | OpEvent::Resubmit) => Ok(None),
        (OpState::InFlightCancelled, OpEvent::Cancel) => Ok(Some(OpState::InFlightCancelled)),
        (state, event) => Err((state, event)),
    }
}

#[derive(Debug)]
struct Op {
    request: IoRequest,
    state: OpState,
    /// Bytes transferred so far.
    done: usize,
    retries: u32,
}

#[derive(Debug)]
struct Slot {
    generation: u32,
    op: Option<Op>,
}

/// The batch I/O machine. See the module documentation for the call order.
#[derive(Debug)]
pub struct IoMachine {
    slots: Vec<Slot>,
    vacant: Vec<u32>,
    backlog: VecDeque<u32>,
    in_flight: u32,
    queue_depth: u32,
    max_retries: u32,
    completions: VecDeque<Completion>,
}

impl IoMachine {
    /// A machine that keeps at most `queue_depth` operations in the kernel and retries
    /// an `EINTR`/`EAGAIN` at most `max_retries` times in a row before failing it.
    pub fn new(queue_depth: u32, max_retries: u32) -> Self {
        Self {
            slots: Vec::new(),
            vacant: Vec::new(),
            backlog: VecDeque::new(),
            in_flight: 0,
            queue_depth: queue_depth.max(1),
            max_retries,
            completions: VecDeque::new(),
        }
    }

    /// Operations held by the kernel.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// Operations waiting in the backlog.
    pub fn backlog_len(&self) -> usize {
        self.backlog.len()
    }

    /// No operation is queued, in flight, or waiting to be reported.
    pub fn is_idle(&self) -> bool {
        self.in_flight == 0 && self.backlog.is_empty() && self.completions.is_empty()
    }

    /// Queues an operation. A zero-length read or write completes at once.
    pub fn push(&mut self, request: IoRequest) -> OpId {
        let index = match self.vacant.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot { generation: 0, op: None });
                (self.slots.len() - 1) as u32
            }
        };
        let slot = &mut self.slots[index as usize];
        let id = OpId { index, generation: slot.generation };
        slot.op = Some(Op { request, state: OpState::Queued, done: 0, retries: 0 });
        if matches!(request, IoRequest::Read { len: 0, .. } | IoRequest::Write { len: 0, .. }) {
            self.finish(index, Outcome::Done { bytes: 0, eof: false });
        } else {
            self.backlog.push_back(index);
        }
        id
    }

    /// The next operation to hand to the kernel, if the queue depth allows one.
    #[must_use]
    pub fn poll_submission(&mut self) -> Option<Submission> {
        if self.in_flight >= self.queue_depth {
            return None;
        }
        let index = self.backlog.pop_front()?;
        let slot = &mut self.slots[index as usize];
        let op = slot.op.as_mut().expect("backlog holds live operations");
        op.state = match transition(op.state, OpEvent::Submit) {
            Ok(Some(state)) => state,
            _ => unreachable!("a backlog operation is queued"),
        };
        self.in_flight += 1;
        let id = OpId { index, generation: slot.generation };
        Some(Submission { user_data: id.to_user_data(), request: op.request.advanced(op.done) })
    }

    /// Cancels an operation. See the module documentation for when its buffer is free.
    pub fn cancel(&mut self, id: OpId) -> Result<(), MachineError> {
        let op = self.op_mut(id)?;
        let state = op.state;
        match transition(state, OpEvent::Cancel) {
            Ok(None) => {
                self.backlog.retain(|&i| i != id.index);
                self.finish(id.index, Outcome::Cancelled);
            }
            Ok(Some(next)) => op.state = next,
            Err(_) => unreachable!("cancel is allowed in every state"),
        }
        Ok(())
    }

    /// Takes in the kernel's result for `user_data`: bytes transferred, or a negated
    /// errno.
    pub fn handle_completion(&mut self, user_data: u64, result: i32) -> Result<(), MachineError> {
        let id = OpId::from_user_data(user_data);
        match self.op_mut(id)?.state {
            OpState::Queued => return Err(MachineError::NotSubmitted(id)),
            OpState::InFlightCancelled => {
                self.in_flight -= 1;
                self.finish(id.index, Outcome::Cancelled);
                return Ok(());
            }
            OpState::InFlight => self.in_flight -= 1,
        }
        let max_retries = self.max_retries;
        let op = self.op_mut(id)?;
        let remaining = op.request.len() - op.done;
        let verdict = if result < 0 {
            let errno = Errno(-result);
            if errno.is_retryable() && op.retries < max_retries {
                op.retries += 1;
                None
            } else {
                Some(Outcome::Failed { errno, bytes: op.done })
            }
        } else {
            let n = (result as usize).min(remaining);
            op.retries = 0;
            op.done += n;
            match op.request {
                IoRequest::Fsync { .. } | IoRequest::Fdatasync { .. } => {
                    Some(Outcome::Done { bytes: 0, eof: false })
                }
                IoRequest::Read { .. } if n == 0 => Some(Outcome::Done { bytes: op.done, eof: true }),
                IoRequest::Write { .. } if n == 0 => {
                    Some(Outcome::Failed { errno: Errno::EIO, bytes: op.done })
                }
                _ if n == remaining => Some(Outcome::Done { bytes: op.done, eof: false }),
                _ => None,
            }
        };
        match verdict {
            Some(outcome) => self.finish(id.index, outcome),
            None => {
                // Short transfer or retryable error: the remainder goes first, so that
                // an operation's pieces stay in order.
                op.state = OpState::Queued;
                self.backlog.push_front(id.index);
            }
        }
        Ok(())
    }

    /// The next finished operation, if any.
    #[must_use]
    pub fn poll_completion(&mut self) -> Option<Completion> {
        self.completions.pop_front()
    }

    fn op_mut(&mut self, id: OpId) -> Result<&mut Op, MachineError> {
        self.slots
            .get_mut(id.index as usize)
            .filter(|s| s.generation == id.generation)
            .and_then(|s| s.op.as_mut())
            .ok_or(MachineError::UnknownOp(id))
    }

    fn finish(&mut self, index: u32, outcome: Outcome) {
        let slot = &mut self.slots[index as usize];
        let op = slot.op.take().expect("finishing a live operation");
        let id = OpId { index, generation: slot.generation };
        slot.generation = slot.generation.wrapping_add(1);
        self.vacant.push(index);
        self.completions.push_back(Completion {
            id,
            file: op.request.file(),
            buf: op.request.buf(),
            outcome,
        });
    }
}
