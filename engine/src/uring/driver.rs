//! The driver: the batch machine running on a backend (io_uring, or the thread pool),
//! with the files and aligned buffers the operations name.
//!
//! # Use
//!
//! 1. [`Driver::open`] picks the backend: io_uring unless it is unavailable (setup
//!    fails with `EPERM` under a container's seccomp profile, `ENOSYS` on an old
//!    kernel, or it lacks an opcode) or the configuration or `LARDER_IO=fallback`
//!    asks for the thread pool. The choice is logged once per process.
//! 2. Add files ([`Driver::add_file`]) and buffers ([`Driver::alloc_buffer`]).
//! 3. [`Driver::push`] operations, then [`Driver::submit`]. When [`Driver::event_fd`]
//!    becomes readable (or after [`Driver::wait`]), [`Driver::reap`] and take
//!    [`Driver::poll_completion`]s; reaping resubmits short transfers by itself.
//!    [`Driver::run_until_idle`] does all of this blocking, for simple callers.
//!
//! A buffer or file named by an operation is busy from `push` until that operation's
//! completion is taken: it can be neither borrowed nor removed, so memory the kernel
//! may still write is never reused. Dropping the driver waits for every operation the
//! kernel holds before freeing anything.

#[cfg(feature = "io-uring")]
use std::boxed::Box;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::string::String;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::vec::Vec;

use super::buffers::{AlignedBuf, BufferTable, FileTable, ResourceError, aligned_zeroed};
use super::eventfd;
use super::machine::{BufId, Completion, FileId, IoMachine, IoRequest, MachineError, OpId, Submission};
use super::pool::Pool;
use super::prepared::{FileTarget, Prepared, PreparedOp};
#[cfg(feature = "io-uring")]
use super::ring::Ring;

/// Which backend runs the operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverKind {
    /// Linux io_uring.
    IoUring,
    /// A thread pool doing `pread`/`pwrite`/`fdatasync`.
    ThreadPool,
}

/// Which backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DriverChoice {
    /// io_uring if it works here, else the thread pool.
    #[default]
    Auto,
    /// io_uring, or fail.
    IoUring,
    /// The thread pool.
    ThreadPool,
}

impl core::str::FromStr for DriverChoice {
    type Err = DriverError;
    fn from_str(s: &str) -> Result<Self, DriverError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Ok(DriverChoice::Auto),
            "io_uring" | "io-uring" | "uring" => Ok(DriverChoice::IoUring),
            "fallback" | "threads" | "thread-pool" | "threadpool" => Ok(DriverChoice::ThreadPool),
            other => Err(DriverError::BadChoice(String::from(other))),
        }
    }
}

/// The environment variable that overrides [`DriverConfig::choice`].
pub const IO_ENV: &str = "LARDER_IO";

/// Driver configuration.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// Backend choice (overridden by `LARDER_IO` when [`DriverConfig::with_env`] is used).
    pub choice: DriverChoice,
    /// Most operations held by the kernel at once (default 64).
    pub queue_depth: u32,
    /// Worker threads of the fallback backend (default 4).
    pub threads: usize,
    /// Consecutive `EINTR`/`EAGAIN` retries before an operation fails (default 16).
    pub max_retries: u32,
    /// Try to register buffers with io_uring (default true). Registration counts
    /// against `RLIMIT_MEMLOCK`; buffers it refuses are used unregistered.
    pub register_buffers: bool,
    /// Register files with io_uring (default true). A registered file's last reference
    /// is dropped by the kernel some time after it is removed from the driver, so a
    /// caller that needs an unlinked file's blocks back as soon as it closes the file
    /// (the SSD tier) turns this off.
    pub register_files: bool,
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self {
            choice: DriverChoice::Auto,
            queue_depth: 64,
            threads: 4,
            max_retries: 16,
            register_buffers: true,
            register_files: true,
        }
    }
}

impl DriverConfig {
    /// This configuration with `LARDER_IO` applied, if set.
    pub fn with_env(mut self) -> Result<Self, DriverError> {
        if let Ok(value) = std::env::var(IO_ENV) {
            self.choice = value.parse()?;
        }
        Ok(self)
    }
}

/// Why a driver could not be opened or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DriverError {
    /// `LARDER_IO` (or a choice string) names no backend.
    #[error("unknown I/O driver {0:?} (expected auto, io_uring or fallback)")]
    BadChoice(String),
    /// io_uring was required but could not be set up.
    #[error("io_uring unavailable: {0}")]
    IoUringUnavailable(io::Error),
    /// The backend could not be started.
    #[error("I/O driver setup failed: {0}")]
    Setup(io::Error),
    /// A file or buffer could not be used.
    #[error(transparent)]
    Resource(#[from] ResourceError),
    /// The kernel refused to take submissions.
    #[error("submitting I/O failed: {0}")]
    Submit(io::Error),
}

/// What the driver managed to set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriverInfo {
    /// The backend.
    pub kind: DriverKind,
    /// Files are registered with the ring.
    pub fixed_files: bool,
    /// Buffers currently registered with the ring.
    pub fixed_buffers: u32,
    /// Buffer registrations the kernel refused (usually `RLIMIT_MEMLOCK`: ENOMEM).
    pub fixed_buffer_refusals: u32,
}

#[derive(Debug)]
enum Backend {
    #[cfg(feature = "io-uring")]
    Ring(Box<Ring>),
    Pool(Pool),
}

/// The I/O driver. See the module documentation.
#[derive(Debug)]
pub struct Driver {
    backend: Backend,
    machine: IoMachine,
    buffers: BufferTable,
    files: FileTable,
    wake: Arc<OwnedFd>,
    #[cfg_attr(not(feature = "io-uring"), allow(dead_code))] // read by the ring backend only
    config: DriverConfig,
    info: DriverInfo,
    /// Test hook: waiting at drop fails, as it may when the ring is broken.
    #[cfg(test)]
    fail_teardown_wait: bool,
}

static CHOICE_LOGGED: AtomicBool = AtomicBool::new(false);

impl Driver {
    /// Opens a driver. See the module documentation for how the backend is chosen.
    pub fn open(config: &DriverConfig) -> Result<Self, DriverError> {
        let wake = Arc::new(eventfd::new().map_err(DriverError::Setup)?);
        let (backend, why) = Self::backend(config, &wake)?;
        let kind = match backend {
            #[cfg(feature = "io-uring")]
            Backend::Ring(_) => DriverKind::IoUring,
            Backend::Pool(_) => DriverKind::ThreadPool,
        };
        if !CHOICE_LOGGED.swap(true, Ordering::Relaxed) {
            tracing::info!(driver = ?kind, reason = %why, "larder I/O driver chosen");
        }
        #[cfg(feature = "io-uring")]
        let fixed_files = matches!(&backend, Backend::Ring(r) if r.caps().fixed_files);
        #[cfg(not(feature = "io-uring"))]
        let fixed_files = false;
        Ok(Self {
            backend,
            machine: IoMachine::new(config.queue_depth, config.max_retries),
            buffers: BufferTable::default(),
            files: FileTable::default(),
            wake,
            config: config.clone(),
            info: DriverInfo { kind, fixed_files, fixed_buffers: 0, fixed_buffer_refusals: 0 },
            #[cfg(test)]
            fail_teardown_wait: false,
        })
    }

    fn backend(config: &DriverConfig, wake: &Arc<OwnedFd>) -> Result<(Backend, String), DriverError> {
        let pool = |why: String| -> Result<(Backend, String), DriverError> {
            let pool = Pool::new(config.threads, Arc::clone(wake)).map_err(DriverError::Setup)?;
            Ok((Backend::Pool(pool), why))
        };
        match config.choice {
            DriverChoice::ThreadPool => pool(String::from("configured (or LARDER_IO=fallback)")),
            #[cfg(feature = "io-uring")]
            DriverChoice::IoUring => Ring::new(config.queue_depth, wake)
                .map(|r| (Backend::Ring(Box::new(r)), String::from("configured")))
                .map_err(DriverError::IoUringUnavailable),
            #[cfg(feature = "io-uring")]
            DriverChoice::Auto => match Ring::new(config.queue_depth, wake) {
                Ok(r) => Ok((Backend::Ring(Box::new(r)), String::from("io_uring available"))),
                Err(e) => pool(std::format!("io_uring unavailable: {e}")),
            },
            #[cfg(not(feature = "io-uring"))]
            DriverChoice::IoUring => {
                Err(DriverError::IoUringUnavailable(io::Error::from(io::ErrorKind::Unsupported)))
            }
            #[cfg(not(feature = "io-uring"))]
            DriverChoice::Auto => pool(String::from("built without io-uring")),
        }
    }

    /// Which backend runs, and what it could register.
    pub fn info(&self) -> DriverInfo {
        self.info
    }

    /// A descriptor that becomes readable when completions may be ready.
    pub fn event_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }

    /// Adds a file (registering it with the ring when possible).
    pub fn add_file(&mut self, file: File) -> FileId {
        let fd = file.as_raw_fd();
        let id = self.files.insert(file);
        #[cfg(feature = "io-uring")]
        if let (Backend::Ring(ring), true) = (&mut self.backend, self.config.register_files) {
            if ring.register_file(id.0, fd) {
                self.files.set_fixed(id, Some(id.0));
            }
        }
        let _ = fd;
        id
    }

    /// The file behind an id.
    pub fn file(&self, id: FileId) -> Result<&File, ResourceError> {
        self.files.get(id)
    }

    /// Removes a file no operation is using, and gives it back.
    pub fn remove_file(&mut self, id: FileId) -> Result<File, ResourceError> {
        let (file, fixed) = self.files.remove(id)?;
        #[cfg(feature = "io-uring")]
        if let (Backend::Ring(ring), Some(slot)) = (&mut self.backend, fixed) {
            ring.unregister_file(slot);
        }
        let _ = fixed;
        Ok(file)
    }

    /// Allocates a zeroed, 4 KiB-aligned buffer of `len` bytes.
    pub fn alloc_buffer(&mut self, len: usize) -> BufId {
        self.add_buffer(aligned_zeroed(len))
    }

    /// Adds a buffer, registering it with the ring when possible (a refusal, such as
    /// ENOMEM past `RLIMIT_MEMLOCK`, leaves it unregistered and is counted in
    /// [`DriverInfo::fixed_buffer_refusals`]).
    pub fn add_buffer(&mut self, buf: AlignedBuf) -> BufId {
        let id = self.buffers.insert(buf);
        #[cfg(feature = "io-uring")]
        if let (Backend::Ring(ring), true) = (&mut self.backend, self.config.register_buffers) {
            if ring.caps().fixed_buffers && id.0 < super::ring::FIXED_BUFFERS {
                let (ptr, len) = self.buffers.region(id).expect("just inserted");
                // SAFETY: the buffer's memory is owned by the table and stays allocated
                // for as long as the registration: `remove_buffer` unregisters it before
                // freeing it (and refuses a buffer an operation holds), and dropping the
                // driver frees buffers only once no operation is in flight, leaking them
                // otherwise (see `Drop`). The kernel touches a registered buffer only
                // while an operation on it is in flight.
                match unsafe { ring.register_buffer(id.0, ptr, len) } {
                    Ok(()) => {
                        self.buffers.set_fixed(id, Some(id.0 as u16));
                        self.info.fixed_buffers += 1;
                    }
                    Err(e) => {
                        if self.info.fixed_buffer_refusals == 0 {
                            tracing::info!(error = %e, "buffer registration refused; using unregistered buffers");
                        }
                        self.info.fixed_buffer_refusals += 1;
                    }
                }
            }
        }
        id
    }

    /// Borrows a buffer no operation is using.
    pub fn buffer(&self, id: BufId) -> Result<&[u8], ResourceError> {
        self.buffers.get(id)
    }

    /// Borrows a buffer no operation is using, to fill it.
    pub fn buffer_mut(&mut self, id: BufId) -> Result<&mut [u8], ResourceError> {
        self.buffers.get_mut(id)
    }

    /// Removes a buffer no operation is using, and gives it back.
    pub fn remove_buffer(&mut self, id: BufId) -> Result<AlignedBuf, ResourceError> {
        let fixed = self.buffers.fixed(id);
        self.buffers.get(id)?; // refuses a busy or unknown buffer before unregistering
        #[cfg(feature = "io-uring")]
        if let (Backend::Ring(ring), Some(slot)) = (&mut self.backend, fixed) {
            ring.unregister_buffer(u32::from(slot));
            self.info.fixed_buffers -= 1;
        }
        let _ = fixed;
        self.buffers.remove(id)
    }

    /// Queues an operation; its file and buffer are busy until its completion is taken.
    pub fn push(&mut self, request: IoRequest) -> Result<OpId, ResourceError> {
        let file = request.file();
        self.files.get(file)?;
        if let IoRequest::Read { buf, buf_offset, len, .. } | IoRequest::Write { buf, buf_offset, len, .. } =
            request
        {
            self.buffers.acquire(buf, buf_offset, len)?;
        }
        self.files.acquire(file).expect("checked above");
        Ok(self.machine.push(request))
    }

    /// Cancels an operation (see [`IoMachine::cancel`]).
    pub fn cancel(&mut self, id: OpId) -> Result<(), MachineError> {
        self.machine.cancel(id)
    }

    /// Operations held by the kernel or the workers.
    pub fn in_flight(&self) -> u32 {
        self.machine.in_flight()
    }

    /// Nothing queued, in flight or waiting to be taken.
    pub fn is_idle(&self) -> bool {
        self.machine.is_idle()
    }

    /// Hands queued operations to the backend, up to the queue depth.
    pub fn submit(&mut self) -> Result<(), DriverError> {
        while self.backend_has_room() {
            let Some(sub) = self.machine.poll_submission() else { break };
            let prepared = self.prepare(sub);
            match &mut self.backend {
                #[cfg(feature = "io-uring")]
                Backend::Ring(ring) => ring.push(&prepared),
                Backend::Pool(pool) => pool.push(prepared),
            }
        }
        match &mut self.backend {
            #[cfg(feature = "io-uring")]
            Backend::Ring(ring) => ring.flush().map_err(DriverError::Submit),
            Backend::Pool(pool) => {
                pool.flush();
                Ok(())
            }
        }
    }

    /// Whether the backend takes another submission now (a full ring waits for the
    /// kernel; the pool's queue is bounded by the machine's queue depth).
    fn backend_has_room(&mut self) -> bool {
        match &mut self.backend {
            #[cfg(feature = "io-uring")]
            Backend::Ring(ring) => !ring.is_full(),
            Backend::Pool(_) => true,
        }
    }

    fn prepare(&mut self, sub: Submission) -> Prepared {
        let target = |files: &mut FileTable, id| {
            let (fd, fixed) = files.target(id);
            FileTarget { fd, fixed }
        };
        let op = match sub.request {
            IoRequest::Read { file, offset, buf, buf_offset, len } => PreparedOp::Read {
                file: target(&mut self.files, file),
                ptr: self.buffers.address(buf, buf_offset),
                len: len as u32,
                offset,
                fixed_buf: self.buffers.fixed(buf),
            },
            IoRequest::Write { file, offset, buf, buf_offset, len } => PreparedOp::Write {
                file: target(&mut self.files, file),
                ptr: self.buffers.address(buf, buf_offset),
                len: len as u32,
                offset,
                fixed_buf: self.buffers.fixed(buf),
            },
            IoRequest::Fsync { file } => {
                PreparedOp::Sync { file: target(&mut self.files, file), data_only: false }
            }
            IoRequest::Fdatasync { file } => {
                PreparedOp::Sync { file: target(&mut self.files, file), data_only: true }
            }
        };
        Prepared { user_data: sub.user_data, op }
    }

    /// Takes in what the backend completed (without blocking) and resubmits the
    /// remainders of short transfers. Returns how many kernel completions it saw.
    pub fn reap(&mut self) -> Result<usize, DriverError> {
        // Clear the eventfd before draining, so that it is readable again exactly when
        // a completion arrives after this drain.
        eventfd::reset(&self.wake);
        let machine = &mut self.machine;
        let on_completion = |user_data: u64, result: i32| {
            let handled = machine.handle_completion(user_data, result);
            debug_assert!(handled.is_ok(), "completion for an unknown operation: {handled:?}");
        };
        let n = match &mut self.backend {
            #[cfg(feature = "io-uring")]
            Backend::Ring(ring) => ring.drain(on_completion),
            Backend::Pool(pool) => pool.drain(on_completion),
        };
        if self.machine.backlog_len() > 0 {
            self.submit()?;
        }
        Ok(n)
    }

    /// Blocks until the backend has at least one completion ready (returns at once if
    /// nothing is in flight).
    pub fn wait(&mut self) -> Result<(), DriverError> {
        if self.machine.in_flight() == 0 {
            return Ok(());
        }
        match &mut self.backend {
            #[cfg(feature = "io-uring")]
            Backend::Ring(ring) => ring.wait().map_err(DriverError::Submit),
            Backend::Pool(pool) => pool.wait().map_err(DriverError::Submit),
        }
    }

    /// The next finished operation; its file and buffer are free again.
    #[must_use]
    pub fn poll_completion(&mut self) -> Option<Completion> {
        let c = self.machine.poll_completion()?;
        self.files.release(c.file);
        if let Some(buf) = c.buf {
            self.buffers.release(buf);
        }
        Some(c)
    }

    /// Submits, waits and reaps until every pushed operation has completed, and returns
    /// their completions.
    pub fn run_until_idle(&mut self) -> Result<Vec<Completion>, DriverError> {
        let mut done = Vec::new();
        self.submit()?;
        loop {
            done.extend(core::iter::from_fn(|| self.poll_completion()));
            if self.machine.is_idle() {
                return Ok(done);
            }
            self.wait()?;
            self.reap()?;
        }
    }
}

impl Drop for Driver {
    /// Frees the buffers only once no operation the kernel or a worker holds can still
    /// touch them. Closing a ring does not stop the kernel synchronously (its requests
    /// are cancelled later, from a kernel worker), so if waiting for the operations in
    /// flight fails, the buffers are leaked rather than freed under the kernel's writes.
    fn drop(&mut self) {
        while self.machine.in_flight() > 0 {
            if let Err(e) = self.wait_for_teardown() {
                self.leak_buffers(&e);
                return;
            }
            let machine = &mut self.machine;
            let on_completion = |user_data, result| {
                let _ = machine.handle_completion(user_data, result);
            };
            match &mut self.backend {
                #[cfg(feature = "io-uring")]
                Backend::Ring(ring) => ring.drain(on_completion),
                Backend::Pool(pool) => pool.drain(on_completion),
            };
        }
    }
}

/// Buffers leaked by drivers dropped while the kernel might still use them.
static LEAKED_BUFFERS: AtomicU64 = AtomicU64::new(0);

/// How many buffers dropped drivers have leaked in this process because an operation
/// was still in flight and waiting for it failed (normally zero).
pub fn leaked_buffers() -> u64 {
    LEAKED_BUFFERS.load(Ordering::Relaxed)
}

impl Driver {
    fn wait_for_teardown(&mut self) -> Result<(), DriverError> {
        #[cfg(test)]
        if self.fail_teardown_wait {
            return Err(DriverError::Submit(io::Error::from_raw_os_error(libc::EBADF)));
        }
        self.wait()
    }

    /// Gives up on the buffers: they stay allocated for as long as the process lives.
    fn leak_buffers(&mut self, why: &DriverError) {
        let buffers = core::mem::take(&mut self.buffers);
        let count = buffers.len() as u64;
        LEAKED_BUFFERS.fetch_add(count, Ordering::Relaxed);
        tracing::error!(
            error = %why,
            in_flight = self.machine.in_flight(),
            buffers = count,
            "cannot wait for I/O still in flight; leaking its buffers rather than freeing memory the kernel may write"
        );
        core::mem::forget(buffers);
    }
}

#[cfg(test)]
mod teardown_tests {
    use std::io::Write;
    use std::os::fd::FromRawFd;

    use super::*;

    /// A read that cannot complete (an empty pipe) is in flight when the driver is
    /// dropped and waiting fails: the drop returns and leaks the buffer; the kernel's
    /// late write lands in memory nobody else owns.
    #[test]
    #[cfg(feature = "io-uring")]
    fn a_failed_wait_at_drop_leaks_the_buffers_instead_of_freeing_them() {
        let mut fds = [0; 2];
        // SAFETY: pipe writes two descriptors into the array we pass.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: both descriptors were just created and are owned here alone.
        let (rx, mut tx) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
        let config = DriverConfig { choice: DriverChoice::IoUring, ..DriverConfig::default() };
        let mut d = Driver::open(&config).unwrap();
        let file = d.add_file(rx);
        let buf = d.alloc_buffer(4096);
        d.push(IoRequest::Read { file, offset: 0, buf, buf_offset: 0, len: 4096 }).unwrap();
        d.submit().unwrap();
        assert_eq!(d.in_flight(), 1);
        d.fail_teardown_wait = true;
        let before = leaked_buffers();
        drop(d);
        assert_eq!(leaked_buffers() - before, 1, "the buffer was freed under the kernel");
        // Whatever the kernel still does with the read lands in leaked memory.
        let _ = tx.write_all(&[7u8; 4096]);
    }
}
