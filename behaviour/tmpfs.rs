#![allow(unreachable_pub)]

//! A small tmpfs mounted for a full-disk test (needs root; `None` where mounting is not
//! permitted, and the test says it skipped). Shared by the engine's tier tests and the
//! Store behaviour suite.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A mounted tmpfs, lazily unmounted when dropped.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`mount -o size=…`, e.g. `12m`) at `path`.
    pub fn mount(path: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(path).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(path.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily: the kernel releases an io_uring's registered files asynchronously after
        // the ring closes, so an immediate unmount may find the mount still busy.
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
