//! Buffers and files the kernel reads and writes, and the rules that keep them alive.
//!
//! Every buffer is 4 KiB-aligned (so it can serve `O_DIRECT` I/O) and has a busy count:
//! the driver raises it when it hands an operation on the buffer to the kernel or a
//! worker and lowers it when that operation's completion is reported. A busy buffer can
//! be neither borrowed nor freed, so memory the kernel may still touch is never reused.
//! Files follow the same rule.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::vec::Vec;

use aligned_vec::{AVec, ConstAlign};

use super::machine::{BufId, FileId};

/// Alignment of every I/O buffer: the largest logical block size `O_DIRECT` asks for.
pub const IO_ALIGN: usize = 4096;

/// A 4 KiB-aligned byte buffer.
pub type AlignedBuf = AVec<u8, ConstAlign<IO_ALIGN>>;

/// A zeroed aligned buffer of `len` bytes.
pub fn aligned_zeroed(len: usize) -> AlignedBuf {
    let mut buf = AlignedBuf::with_capacity(IO_ALIGN, len);
    buf.resize(len, 0);
    buf
}

/// Why a buffer or file could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResourceError {
    /// No buffer has this id.
    #[error("no buffer {0:?}")]
    UnknownBuffer(BufId),
    /// No file has this id.
    #[error("no file {0:?}")]
    UnknownFile(FileId),
    /// An operation on the buffer is queued or in flight.
    #[error("buffer {0:?} is in use by an operation")]
    BufferBusy(BufId),
    /// An operation on the file is queued or in flight.
    #[error("file {0:?} is in use by an operation")]
    FileBusy(FileId),
    /// The operation's range does not fit in its buffer.
    #[error("range {offset}+{len} is outside buffer {buf:?} of {size} bytes")]
    OutOfRange {
        /// The buffer.
        buf: BufId,
        /// Start in the buffer.
        offset: usize,
        /// Length.
        len: usize,
        /// The buffer's size.
        size: usize,
    },
    /// A single transfer may not exceed `u32::MAX` bytes.
    #[error("a single transfer of {0} bytes is too large")]
    TooLarge(usize),
}

#[derive(Debug)]
struct BufEntry {
    data: AlignedBuf,
    busy: u32,
    /// Index in the ring's registered-buffer table, if registration succeeded.
    fixed: Option<u16>,
}

/// The driver's buffers.
#[derive(Debug, Default)]
pub(super) struct BufferTable {
    entries: Vec<Option<BufEntry>>,
    vacant: Vec<u32>,
}

impl BufferTable {
    /// Buffers in the table.
    pub(super) fn len(&self) -> usize {
        self.entries.iter().filter(|e| e.is_some()).count()
    }

    pub(super) fn insert(&mut self, data: AlignedBuf) -> BufId {
        let entry = Some(BufEntry { data, busy: 0, fixed: None });
        match self.vacant.pop() {
            Some(i) => {
                self.entries[i as usize] = entry;
                BufId(i)
            }
            None => {
                self.entries.push(entry);
                BufId((self.entries.len() - 1) as u32)
            }
        }
    }

    fn entry(&self, id: BufId) -> Result<&BufEntry, ResourceError> {
        self.entries.get(id.0 as usize).and_then(Option::as_ref).ok_or(ResourceError::UnknownBuffer(id))
    }

    fn entry_mut(&mut self, id: BufId) -> Result<&mut BufEntry, ResourceError> {
        self.entries.get_mut(id.0 as usize).and_then(Option::as_mut).ok_or(ResourceError::UnknownBuffer(id))
    }

    pub(super) fn get(&self, id: BufId) -> Result<&[u8], ResourceError> {
        let e = self.entry(id)?;
        if e.busy > 0 {
            return Err(ResourceError::BufferBusy(id));
        }
        Ok(&e.data)
    }

    pub(super) fn get_mut(&mut self, id: BufId) -> Result<&mut [u8], ResourceError> {
        let e = self.entry_mut(id)?;
        if e.busy > 0 {
            return Err(ResourceError::BufferBusy(id));
        }
        Ok(e.data.as_mut_slice())
    }

    pub(super) fn remove(&mut self, id: BufId) -> Result<AlignedBuf, ResourceError> {
        if self.entry(id)?.busy > 0 {
            return Err(ResourceError::BufferBusy(id));
        }
        let e = self.entries[id.0 as usize].take().expect("checked above");
        self.vacant.push(id.0);
        Ok(e.data)
    }

    #[cfg_attr(not(feature = "io-uring"), allow(dead_code))] // registration is io_uring's
    pub(super) fn set_fixed(&mut self, id: BufId, fixed: Option<u16>) {
        if let Ok(e) = self.entry_mut(id) {
            e.fixed = fixed;
        }
    }

    pub(super) fn fixed(&self, id: BufId) -> Option<u16> {
        self.entry(id).ok().and_then(|e| e.fixed)
    }

    /// Address and length of a whole buffer (for registration).
    #[cfg_attr(not(feature = "io-uring"), allow(dead_code))]
    pub(super) fn region(&mut self, id: BufId) -> Result<(*mut u8, usize), ResourceError> {
        let e = self.entry_mut(id)?;
        Ok((e.data.as_mut_ptr(), e.data.len()))
    }

    /// Checks that `[offset, offset + len)` lies in the buffer and marks it busy.
    pub(super) fn acquire(&mut self, id: BufId, offset: usize, len: usize) -> Result<(), ResourceError> {
        if u32::try_from(len).is_err() {
            return Err(ResourceError::TooLarge(len));
        }
        let e = self.entry_mut(id)?;
        let size = e.data.len();
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(ResourceError::OutOfRange { buf: id, offset, len, size });
        }
        e.busy += 1;
        Ok(())
    }

    /// Address of `offset` in a busy buffer, for the kernel or a worker.
    pub(super) fn address(&mut self, id: BufId, offset: usize) -> *mut u8 {
        let e = self.entry_mut(id).expect("submitted operations name live buffers");
        debug_assert!(e.busy > 0 && offset <= e.data.len());
        e.data.as_mut_ptr().wrapping_add(offset)
    }

    pub(super) fn release(&mut self, id: BufId) {
        if let Ok(e) = self.entry_mut(id) {
            e.busy -= 1;
        }
    }
}

#[derive(Debug)]
struct FileEntry {
    file: File,
    busy: u32,
    /// Index in the ring's registered-file table, if registration succeeded.
    fixed: Option<u32>,
}

/// The driver's files.
#[derive(Debug, Default)]
pub(super) struct FileTable {
    entries: Vec<Option<FileEntry>>,
    vacant: Vec<u32>,
}

impl FileTable {
    pub(super) fn insert(&mut self, file: File) -> FileId {
        let entry = Some(FileEntry { file, busy: 0, fixed: None });
        match self.vacant.pop() {
            Some(i) => {
                self.entries[i as usize] = entry;
                FileId(i)
            }
            None => {
                self.entries.push(entry);
                FileId((self.entries.len() - 1) as u32)
            }
        }
    }

    fn entry_mut(&mut self, id: FileId) -> Result<&mut FileEntry, ResourceError> {
        self.entries.get_mut(id.0 as usize).and_then(Option::as_mut).ok_or(ResourceError::UnknownFile(id))
    }

    pub(super) fn get(&self, id: FileId) -> Result<&File, ResourceError> {
        self.entries
            .get(id.0 as usize)
            .and_then(Option::as_ref)
            .map(|e| &e.file)
            .ok_or(ResourceError::UnknownFile(id))
    }

    pub(super) fn remove(&mut self, id: FileId) -> Result<(File, Option<u32>), ResourceError> {
        let e = self.entry_mut(id)?;
        if e.busy > 0 {
            return Err(ResourceError::FileBusy(id));
        }
        let e = self.entries[id.0 as usize].take().expect("checked above");
        self.vacant.push(id.0);
        Ok((e.file, e.fixed))
    }

    #[cfg_attr(not(feature = "io-uring"), allow(dead_code))] // registration is io_uring's
    pub(super) fn set_fixed(&mut self, id: FileId, fixed: Option<u32>) {
        if let Ok(e) = self.entry_mut(id) {
            e.fixed = fixed;
        }
    }

    pub(super) fn acquire(&mut self, id: FileId) -> Result<(), ResourceError> {
        self.entry_mut(id)?.busy += 1;
        Ok(())
    }

    /// The raw descriptor and registered index of a busy file.
    pub(super) fn target(&mut self, id: FileId) -> (RawFd, Option<u32>) {
        let e = self.entry_mut(id).expect("submitted operations name live files");
        (e.file.as_raw_fd(), e.fixed)
    }

    pub(super) fn release(&mut self, id: FileId) {
        if let Ok(e) = self.entry_mut(id) {
            e.busy -= 1;
        }
    }
}
