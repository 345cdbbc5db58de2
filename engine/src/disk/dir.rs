//! A node's directory, `<root>/<cluster>/<node>/`: the `LOCK` file one process holds,
//! bucket files named by id (never by key), transient `*.tmp` and `*.retired` files,
//! and damaged buckets moved aside as `*.damaged`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::string::{String, ToString};
use std::vec::Vec;

use super::error::TierError;
use crate::ids::{BucketId, NodeId};

/// Name of the lock file.
pub const LOCK_FILE: &str = "LOCK";
const BUCKET_SUFFIX: &str = ".bucket";
const TMP_SUFFIX: &str = ".tmp";
const RETIRED_SUFFIX: &str = ".retired";
const DAMAGED_SUFFIX: &str = ".damaged";

/// The file name of published bucket `id` in its node directory (names come from
/// bucket ids only, never from keys).
pub fn bucket_file_name(id: BucketId) -> String {
    std::format!("{:016x}{BUCKET_SUFFIX}", id.0)
}

/// Where node `node`'s directory is under `root`: `<root>/<cluster>/<node>/`.
pub(super) fn node_dir_path(root: &Path, cluster: &str, node: NodeId) -> PathBuf {
    root.join(cluster).join(node.0.to_string())
}

/// The names of one bucket's file: while it is written, once published, and once
/// retired while readers still hold it (recovery deletes retired files).
#[derive(Debug, Clone)]
pub(super) struct BucketPaths {
    pub(super) tmp: PathBuf,
    pub(super) published: PathBuf,
    pub(super) retired: PathBuf,
}

/// An open, locked node directory. The lock is released when this is dropped, or when
/// the process dies.
#[derive(Debug)]
pub(super) struct NodeDir {
    path: PathBuf,
    _lock: DirLock,
}

impl NodeDir {
    /// Opens (creating if needed) `<root>/<cluster>/<node>/` and takes its lock.
    ///
    /// Errors: the root does not exist or is not a writable directory; another process
    /// holds the lock (the error names the path and, when it can, the holder).
    pub(super) fn open(root: &Path, cluster: &str, node: NodeId) -> Result<Self, TierError> {
        match fs::metadata(root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(TierError::BadRoot { path: root.to_path_buf(), reason: "not a directory" }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(TierError::BadRoot { path: root.to_path_buf(), reason: "does not exist" });
            }
            Err(e) => return Err(TierError::io("inspect storage root", root, e)),
        }
        if cluster.is_empty() || cluster.contains('/') || cluster == "." || cluster == ".." {
            return Err(TierError::BadRoot {
                path: root.join(cluster),
                reason: "cluster name must be one path component",
            });
        }
        let path = node_dir_path(root, cluster, node);
        fs::create_dir_all(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::PermissionDenied {
                TierError::BadRoot { path: root.to_path_buf(), reason: "not writable" }
            } else {
                TierError::io("create node directory", &path, e)
            }
        })?;
        let lock = DirLock::take(&path)?;
        Ok(Self { path, _lock: lock })
    }

    /// The directory.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Path of a published bucket.
    pub(super) fn bucket_path(&self, id: BucketId) -> PathBuf {
        self.path.join(bucket_file_name(id))
    }

    /// Path of a bucket being written.
    pub(super) fn tmp_path(&self, id: BucketId) -> PathBuf {
        self.path.join(std::format!("{}{TMP_SUFFIX}", bucket_file_name(id)))
    }

    /// Makes renames and unlinks in the directory durable.
    pub(super) fn sync(&self) -> Result<(), TierError> {
        File::open(&self.path)
            .and_then(|d| d.sync_all())
            .map_err(|e| TierError::io("fsync node directory", &self.path, e))
    }

    /// Every name bucket `id`'s file has in its life.
    pub(super) fn bucket_paths(&self, id: BucketId) -> BucketPaths {
        let published = self.bucket_path(id);
        let with = |suffix: &str| {
            let mut p = published.clone().into_os_string();
            p.push(suffix);
            PathBuf::from(p)
        };
        BucketPaths { tmp: self.tmp_path(id), retired: with(RETIRED_SUFFIX), published }
    }

    /// Deletes every `*.tmp` file (a bucket a crash interrupted) and `*.retired` file (a
    /// bucket retired while a reader held it); returns how many.
    pub(super) fn remove_leftovers(&self) -> Result<usize, TierError> {
        let mut removed = 0;
        for (path, name) in self.entries()? {
            if name.ends_with(TMP_SUFFIX) || name.ends_with(RETIRED_SUFFIX) {
                fs::remove_file(&path).map_err(|e| TierError::io("remove leftover file", &path, e))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Moves a damaged bucket aside as `*.damaged` (never deleted: an operator may want
    /// what is left of it), logging why. A failed rename is logged too; the bucket is
    /// then simply not used.
    pub(super) fn move_aside(&self, path: &Path, why: &str) {
        // Never over an earlier damaged copy of the same bucket: `.damaged`, then
        // `.damaged.1`, `.damaged.2`, …
        let named = |n: u32| {
            let mut aside = std::ffi::OsString::from(path.as_os_str());
            aside.push(DAMAGED_SUFFIX);
            if n > 0 {
                aside.push(std::format!(".{n}"));
            }
            PathBuf::from(aside)
        };
        let aside = (0..).map(named).find(|p| !p.exists()).expect("a free name");
        match fs::rename(path, &aside) {
            Ok(()) => tracing::warn!(
                path = %path.display(),
                moved_to = %Path::new(&aside).display(),
                reason = why,
                "damaged bucket moved aside; its records are not used"
            ),
            Err(e) => tracing::warn!(
                path = %path.display(),
                reason = why,
                error = %e,
                "damaged bucket could not be moved aside; its records are not used"
            ),
        }
    }

    /// Every published bucket in the directory, by id.
    pub(super) fn buckets(&self) -> Result<Vec<(BucketId, PathBuf)>, TierError> {
        let mut out: Vec<(BucketId, PathBuf)> = self
            .entries()?
            .into_iter()
            .filter_map(|(path, name)| {
                let hex = name.strip_suffix(BUCKET_SUFFIX)?;
                (hex.len() == 16)
                    .then(|| u64::from_str_radix(hex, 16).ok())
                    .flatten()
                    .map(|id| (BucketId(id), path))
            })
            .collect();
        out.sort_by_key(|(id, _)| *id);
        Ok(out)
    }

    /// Deletes everything in the directory except the lock, the temporary files (those
    /// of a crashed run were deleted at open; the rest belong to the writer) and the
    /// removal log (the caller's to delete last). Buckets that readers still hold go
    /// too: their readers keep reading through their descriptors, and the bucket
    /// protocol's later unlink finds nothing to do.
    pub(super) fn wipe(&self) -> Result<usize, TierError> {
        let mut removed = 0;
        for (path, name) in self.entries()? {
            if name == LOCK_FILE || name.ends_with(TMP_SUFFIX) || name == super::removals::REMOVAL_LOG {
                continue;
            }
            match fs::remove_file(&path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(TierError::io("wipe node directory", &path, e)),
            }
        }
        self.sync()?;
        Ok(removed)
    }

    fn entries(&self) -> Result<Vec<(PathBuf, String)>, TierError> {
        let read =
            fs::read_dir(&self.path).map_err(|e| TierError::io("list node directory", &self.path, e))?;
        let mut out = Vec::new();
        for entry in read {
            let entry = entry.map_err(|e| TierError::io("list node directory", &self.path, e))?;
            if let Some(name) = entry.file_name().to_str() {
                out.push((entry.path(), name.to_string()));
            }
        }
        Ok(out)
    }
}

/// Node directories this process holds, by canonical path.
static HELD: std::sync::Mutex<std::collections::BTreeSet<PathBuf>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// The lock on a node directory: a POSIX record lock (`fcntl(F_SETLK)`) on its `LOCK`
/// file against other processes, and a process-wide registry against this one.
///
/// Not `flock`: a `flock` lock belongs to the open file description, which a forked
/// child shares until it execs (or for good, if it never does), so a process that
/// forks (a test spawning a child, Python's multiprocessing) keeps the directory
/// locked after the store that owned it closed. Record locks belong to the process and
/// are not inherited by `fork`. They are also dropped by closing *any* descriptor of
/// the file in the process, which is why this process never opens a `LOCK` it holds:
/// the registry refuses first.
#[derive(Debug)]
struct DirLock {
    /// The locked file; `None` only while dropping.
    file: Option<File>,
    dir: PathBuf,
}

impl DirLock {
    /// Takes the lock of `dir`, recording who holds it in the file.
    fn take(dir: &Path) -> Result<Self, TierError> {
        let path = dir.join(LOCK_FILE);
        let canonical = fs::canonicalize(dir).map_err(|e| TierError::io("resolve node directory", dir, e))?;
        if !HELD.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(canonical.clone()) {
            let holder = std::format!("this process, pid {}", std::process::id());
            return Err(TierError::Locked { path, holder: Some(holder) });
        }
        // From here on, dropping `lock` releases the registry entry.
        let mut lock = DirLock { file: None, dir: canonical };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&path)
            .map_err(|e| TierError::io("open lock file", &path, e))?;
        if let Err(err) = set_write_lock(&file) {
            if matches!(err.raw_os_error(), Some(libc::EACCES | libc::EAGAIN)) {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(TierError::Locked {
                    path,
                    holder: (!holder.is_empty()).then(|| holder.to_string()),
                });
            }
            return Err(TierError::io("lock node directory", &path, err));
        }
        let holder = std::format!("pid {} on {}\n", std::process::id(), hostname());
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(holder.as_bytes()))
            .map_err(|e| TierError::io("write lock file", &path, e))?;
        lock.file = Some(file);
        Ok(lock)
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // Close first (that releases the record lock), then let another opener in this
        // process try: the other order would let it lock, then lose its lock to this
        // close.
        drop(self.file.take());
        HELD.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&self.dir);
    }
}

/// A non-blocking write lock over the whole of `file`.
fn set_write_lock(file: &File) -> io::Result<()> {
    let lock = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0, // to the end, however long the file grows
        l_pid: 0,
    };
    // SAFETY: fcntl(F_SETLK) on a descriptor we own, reading the `flock` we pass for
    // the duration of the call only.
    let ret = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &lock) };
    if ret == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// Reserves `len` bytes of `file` as unwritten extents, so that the bucket's `O_DIRECT`
/// writes are overwrites inside the file: ext4 and xfs then run them in parallel under
/// a shared inode lock instead of serialising every size-extending write. Best effort:
/// a filesystem without `fallocate` just gets extending writes.
pub(super) fn preallocate(file: &File, len: u64) {
    let Ok(len) = libc::off_t::try_from(len) else { return };
    // SAFETY: fallocate on a descriptor we own; no pointers involved.
    let ret = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
    if ret != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "fallocate refused; writes will extend the bucket");
    }
}
