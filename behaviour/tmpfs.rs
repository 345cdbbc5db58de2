#![allow(unreachable_pub)]

//! A small tmpfs (or ramfs) mounted for a full-disk test (needs root; `None` where
//! mounting is not permitted, and the test says it skipped). Shared by the engine's tier
//! tests and the Store behaviour suite.
//!
//! A mounted filesystem also keeps child processes from being forked while it exists.
//! From fork to exec a child holds a copy of every descriptor of this process, so a file
//! a test unlinks in that window keeps its blocks until the child execs: a full-disk
//! test would see space it freed still taken (seen: a put right after `remove_all`
//! failing with NoSpace while another test of the same binary spawned a child). So every
//! test that spawns a process does it under [`spawning`], and a mounted [`Tmpfs`] holds the
//! other side of the same lock for its life. A test holding a `Tmpfs` must not spawn
//! anything itself beyond the mount and unmount done here (it would wait for itself).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

static FORKS: RwLock<()> = RwLock::new(());

/// Held while spawning a child process (at least from `spawn` until it returns, which
/// is after the child's exec).
pub fn spawning() -> RwLockReadGuard<'static, ()> {
    FORKS.read().unwrap_or_else(PoisonError::into_inner)
}

/// A mounted tmpfs (or ramfs), lazily unmounted when dropped; no other test of this
/// process forks a child while it exists.
pub struct Tmpfs {
    pub path: PathBuf,
    _no_forks: RwLockWriteGuard<'static, ()>,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`mount -o size=…`, e.g. `12m`) at `path`.
    pub fn mount(path: &Path, size: &str) -> Option<Tmpfs> {
        mount(path, &["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
    }

    /// Mounts a ramfs (no size limit, no `O_DIRECT`) at `path`.
    pub fn mount_ramfs(path: &Path) -> Option<Tmpfs> {
        mount(path, &["-t", "ramfs", "ramfs"])
    }
}

fn mount(path: &Path, args: &[&str]) -> Option<Tmpfs> {
    std::fs::create_dir_all(path).unwrap();
    let no_forks = FORKS.write().unwrap_or_else(PoisonError::into_inner);
    let ok = Command::new("mount").args(args).arg(path).status().is_ok_and(|s| s.success());
    ok.then(|| Tmpfs { path: path.to_path_buf(), _no_forks: no_forks })
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily: the kernel releases an io_uring's registered files asynchronously after
        // the ring closes, so an immediate unmount may find the mount still busy.
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
