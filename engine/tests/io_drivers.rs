//! Both I/O drivers against real files: the same suite runs on io_uring and on the
//! thread pool, buffered and with O_DIRECT, verifying contents byte for byte.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use larder_engine::uring::{
    BufId, Driver, DriverChoice, DriverConfig, DriverKind, Errno, FileId, IO_ALIGN, IoRequest, Outcome,
    ResourceError,
};

const BACKENDS: [DriverChoice; 2] = [DriverChoice::IoUring, DriverChoice::ThreadPool];

fn driver(choice: DriverChoice) -> Driver {
    let d =
        Driver::open(&DriverConfig { choice, queue_depth: 16, ..DriverConfig::default() }).expect("driver");
    let expected = if choice == DriverChoice::IoUring { DriverKind::IoUring } else { DriverKind::ThreadPool };
    assert_eq!(d.info().kind, expected);
    d
}

/// A scratch directory on the same filesystem as the build (not tmpfs, which refuses
/// O_DIRECT).
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("io_drivers").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn open(path: &Path, direct: bool) -> File {
    let mut o = OpenOptions::new();
    o.read(true).write(true).create(true).truncate(false);
    if direct {
        o.custom_flags(libc::O_DIRECT);
    }
    o.open(path).expect("open")
}

/// The byte at `pos` of the data written for op `i`.
fn pattern(i: usize, pos: usize) -> u8 {
    (i.wrapping_mul(31) ^ pos.wrapping_mul(7) ^ (pos >> 9)) as u8
}

/// 64 writes then 64 reads at scattered offsets, contents checked byte for byte.
fn batch_of_64(choice: DriverChoice, direct: bool) {
    let dir = scratch(&format!("batch-{choice:?}-{direct}"));
    let mut d = driver(choice);
    let file = d.add_file(open(&dir.join("data"), direct));
    // Scattered, non-overlapping 4 KiB-aligned slots in a 64 MiB file, sizes 4–64 KiB.
    let ops: Vec<(u64, usize)> = (0..64)
        .map(|i| {
            let slot = (i * 37) % 64;
            ((slot as u64) << 20, IO_ALIGN * (1 + (i * 5) % 16))
        })
        .collect();
    let mut writes = Vec::new();
    for (i, &(offset, len)) in ops.iter().enumerate() {
        let buf = d.alloc_buffer(len);
        for (pos, b) in d.buffer_mut(buf).unwrap().iter_mut().enumerate() {
            *b = pattern(i, pos);
        }
        writes.push(d.push(IoRequest::Write { file, offset, buf, buf_offset: 0, len }).unwrap());
    }
    let done = d.run_until_idle().unwrap();
    assert_eq!(done.len(), 64);
    for c in &done {
        assert!(matches!(c.outcome, Outcome::Done { eof: false, .. }), "{c:?}");
        d.remove_buffer(c.buf.unwrap()).unwrap();
    }
    d.push(IoRequest::Fdatasync { file }).unwrap();
    assert_eq!(d.run_until_idle().unwrap()[0].outcome, Outcome::Done { bytes: 0, eof: false });

    let mut reads = Vec::new();
    for &(offset, len) in &ops {
        let buf = d.alloc_buffer(len);
        reads.push((d.push(IoRequest::Read { file, offset, buf, buf_offset: 0, len }).unwrap(), buf, len));
    }
    let done = d.run_until_idle().unwrap();
    assert_eq!(done.len(), 64);
    for (i, (id, buf, len)) in reads.iter().enumerate() {
        let c = done.iter().find(|c| c.id == *id).unwrap();
        assert_eq!(c.outcome, Outcome::Done { bytes: *len, eof: false });
        let data = d.buffer(*buf).unwrap();
        assert!(data.iter().enumerate().all(|(pos, b)| *b == pattern(i, pos)), "read {i} differs");
    }
}

#[test]
fn batch_of_64_buffered() {
    for choice in BACKENDS {
        batch_of_64(choice, false);
    }
}

#[test]
fn batch_of_64_o_direct() {
    for choice in BACKENDS {
        batch_of_64(choice, true);
    }
}

#[test]
fn a_read_past_the_end_reports_eof_with_what_it_read() {
    for choice in BACKENDS {
        let dir = scratch(&format!("eof-{choice:?}"));
        std::fs::write(dir.join("short"), vec![9u8; 5000]).unwrap();
        let mut d = driver(choice);
        let file = d.add_file(open(&dir.join("short"), false));
        let buf = d.alloc_buffer(8192);
        d.push(IoRequest::Read { file, offset: 0, buf, buf_offset: 0, len: 8192 }).unwrap();
        let done = d.run_until_idle().unwrap();
        assert_eq!(done[0].outcome, Outcome::Done { bytes: 5000, eof: true });
        assert!(d.buffer(buf).unwrap()[..5000].iter().all(|b| *b == 9));
    }
}

#[test]
fn errors_arrive_per_operation() {
    for choice in BACKENDS {
        let dir = scratch(&format!("errors-{choice:?}"));
        std::fs::write(dir.join("ro"), b"data").unwrap();
        let mut d = driver(choice);
        let read_only = d.add_file(File::open(dir.join("ro")).unwrap());
        let writable = d.add_file(open(&dir.join("rw"), false));
        let a = d.alloc_buffer(4096);
        let b = d.alloc_buffer(4096);
        let bad = d
            .push(IoRequest::Write { file: read_only, offset: 0, buf: a, buf_offset: 0, len: 4096 })
            .unwrap();
        let good =
            d.push(IoRequest::Write { file: writable, offset: 0, buf: b, buf_offset: 0, len: 4096 }).unwrap();
        let done = d.run_until_idle().unwrap();
        let outcome = |id| done.iter().find(|c| c.id == id).unwrap().outcome;
        assert_eq!(outcome(bad), Outcome::Failed { errno: Errno(libc::EBADF), bytes: 0 });
        assert_eq!(outcome(good), Outcome::Done { bytes: 4096, eof: false });
    }
}

#[test]
fn busy_buffers_and_files_cannot_be_borrowed_or_removed() {
    for choice in BACKENDS {
        let dir = scratch(&format!("busy-{choice:?}"));
        let mut d = driver(choice);
        let file = d.add_file(open(&dir.join("f"), false));
        let buf = d.alloc_buffer(1 << 20);
        d.push(IoRequest::Write { file, offset: 0, buf, buf_offset: 0, len: 1 << 20 }).unwrap();
        assert_eq!(d.buffer(buf).err(), Some(ResourceError::BufferBusy(buf)));
        assert_eq!(d.buffer_mut(buf).err(), Some(ResourceError::BufferBusy(buf)));
        assert_eq!(d.remove_buffer(buf).err(), Some(ResourceError::BufferBusy(buf)));
        assert_eq!(d.remove_file(file).err(), Some(ResourceError::FileBusy(file)));
        d.run_until_idle().unwrap();
        d.remove_buffer(buf).unwrap();
        d.remove_file(file).unwrap();
    }
}

#[test]
fn bad_requests_are_refused_before_queueing() {
    let mut d = driver(DriverChoice::ThreadPool);
    let buf = d.alloc_buffer(4096);
    let nofile = FileId(99);
    assert_eq!(d.push(IoRequest::Fsync { file: nofile }).err(), Some(ResourceError::UnknownFile(nofile)));
    let dir = scratch("bad-requests");
    let file = d.add_file(open(&dir.join("f"), false));
    assert_eq!(
        d.push(IoRequest::Read { file, offset: 0, buf, buf_offset: 4000, len: 200 }).err(),
        Some(ResourceError::OutOfRange { buf, offset: 4000, len: 200, size: 4096 })
    );
    let nobuf = BufId(77);
    assert_eq!(
        d.push(IoRequest::Read { file, offset: 0, buf: nobuf, buf_offset: 0, len: 1 }).err(),
        Some(ResourceError::UnknownBuffer(nobuf))
    );
    assert!(d.is_idle(), "nothing was queued");
}

#[test]
fn cancellation_keeps_the_buffer_until_the_operation_is_done() {
    for choice in BACKENDS {
        let dir = scratch(&format!("cancel-{choice:?}"));
        let mut d = driver(choice);
        let file = d.add_file(open(&dir.join("f"), false));
        let mut ids = Vec::new();
        for i in 0..40u64 {
            let buf = d.alloc_buffer(1 << 20);
            ids.push((
                d.push(IoRequest::Write { file, offset: i << 20, buf, buf_offset: 0, len: 1 << 20 }).unwrap(),
                buf,
            ));
        }
        d.submit().unwrap(); // 16 are with the kernel, 24 wait in the backlog
        for (id, _) in &ids {
            d.cancel(*id).unwrap();
        }
        // Cancelled backlog operations are reported at once; the rest only when the
        // kernel is done with their buffers.
        let mut cancelled = 0;
        let mut completed = 0;
        let done = d.run_until_idle().unwrap();
        for c in &done {
            match c.outcome {
                Outcome::Cancelled => cancelled += 1,
                Outcome::Done { .. } => completed += 1,
                other => panic!("{other:?}"),
            }
            d.remove_buffer(c.buf.unwrap()).unwrap();
        }
        assert_eq!(done.len(), 40);
        assert!(cancelled >= 24, "{cancelled} cancelled, {completed} completed");
    }
}

/// Runs in a child process that has dropped CAP_IPC_LOCK, so that RLIMIT_MEMLOCK
/// (8 MiB here) applies to buffer registration as it does for an unprivileged service.
#[test]
#[ignore = "a child process of the memlock test; runs only when that test spawns it"]
fn memlock_child() {
    if std::env::var("LARDER_MEMLOCK_CHILD").is_err() {
        return;
    }
    caps::drop(None, caps::CapSet::Effective, caps::Capability::CAP_IPC_LOCK).expect("drop CAP_IPC_LOCK");
    let dir = scratch("memlock");
    let mut d = driver(DriverChoice::IoUring);
    let file = d.add_file(open(&dir.join("f"), true));
    // 12 MiB of buffers against an 8 MiB RLIMIT_MEMLOCK: some registrations must fail.
    let bufs: Vec<BufId> = (0..12).map(|_| d.alloc_buffer(1 << 20)).collect();
    let info = d.info();
    assert!(info.fixed_buffers > 0, "{info:?}");
    assert!(info.fixed_buffer_refusals > 0, "expected ENOMEM past 8 MiB: {info:?}");
    // Registered and unregistered buffers both work.
    for (i, buf) in bufs.iter().enumerate() {
        d.buffer_mut(*buf).unwrap().fill(i as u8 + 1);
        d.push(IoRequest::Write { file, offset: (i as u64) << 20, buf: *buf, buf_offset: 0, len: 1 << 20 })
            .unwrap();
    }
    assert!(d.run_until_idle().unwrap().iter().all(|c| matches!(c.outcome, Outcome::Done { .. })));
    for buf in &bufs {
        d.buffer_mut(*buf).unwrap().fill(0);
    }
    for (i, buf) in bufs.iter().enumerate() {
        d.push(IoRequest::Read { file, offset: (i as u64) << 20, buf: *buf, buf_offset: 0, len: 1 << 20 })
            .unwrap();
    }
    d.run_until_idle().unwrap();
    for (i, buf) in bufs.iter().enumerate() {
        assert!(d.buffer(*buf).unwrap().iter().all(|b| *b == i as u8 + 1), "buffer {i}");
    }
    println!("memlock child: {} registered, {} refused", info.fixed_buffers, info.fixed_buffer_refusals);
}

#[test]
fn registration_past_the_memlock_limit_falls_back_to_unregistered_buffers() {
    let stdout = run_child("memlock_child", &[("LARDER_MEMLOCK_CHILD", "1")]);
    assert!(stdout.contains("memlock child:"), "{stdout}");
}

/// Runs one test of this binary in a child process with extra environment.
fn run_child(test: &str, env: &[(&str, &str)]) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--ignored", "--nocapture", "--test-threads=1"])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

#[test]
fn choices_parse_and_unknown_ones_are_errors() {
    assert_eq!("fallback".parse::<DriverChoice>().unwrap(), DriverChoice::ThreadPool);
    assert_eq!("io_uring".parse::<DriverChoice>().unwrap(), DriverChoice::IoUring);
    assert_eq!("AUTO".parse::<DriverChoice>().unwrap(), DriverChoice::Auto);
    assert!("epoll".parse::<DriverChoice>().is_err());
}

/// Runs in a child process with `LARDER_IO=fallback`: the automatic choice must yield
/// the thread pool. The parent test below spawns it.
#[test]
#[ignore = "a child process of the LARDER_IO test; runs only when that test spawns it"]
fn env_forces_fallback_child() {
    if std::env::var("LARDER_IO_CHILD").is_err() {
        return;
    }
    let config = DriverConfig::default().with_env().expect("valid LARDER_IO");
    assert_eq!(Driver::open(&config).unwrap().info().kind, DriverKind::ThreadPool);
    println!("child saw the thread pool");
}

#[test]
fn larder_io_fallback_forces_the_thread_pool() {
    let stdout =
        run_child("env_forces_fallback_child", &[("LARDER_IO", "fallback"), ("LARDER_IO_CHILD", "1")]);
    assert!(stdout.contains("child saw the thread pool"), "{stdout}");
    // Without the variable, the automatic choice is io_uring on this kernel.
    assert_eq!(Driver::open(&DriverConfig::default()).unwrap().info().kind, DriverKind::IoUring);
}
