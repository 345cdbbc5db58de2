//! The comparison harness: Larder against the raw device (fio) and simple baselines,
//! measured in one run on the same file, reported as medians and ratios.

pub mod disk;
pub mod fio;
pub mod io;
pub mod net;
pub mod rdma;
pub mod recovery;
pub mod report;
pub mod store;

use std::path::{Path, PathBuf};
use std::time::Duration;

/// A workload shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// Sequential writes.
    SeqWrite,
    /// Sequential reads.
    SeqRead,
    /// Random reads, each block once.
    RandRead,
}

impl Pattern {
    /// fio's `--rw` value.
    pub fn fio_rw(self) -> &'static str {
        match self {
            Pattern::SeqWrite => "write",
            Pattern::SeqRead => "read",
            Pattern::RandRead => "randread",
        }
    }

    /// Short name for tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Pattern::SeqWrite => "seq write",
            Pattern::SeqRead => "seq read",
            Pattern::RandRead => "rand read",
        }
    }
}

/// One measured case: a pattern at a block size and queue depth over a file size.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    /// The pattern.
    pub pattern: Pattern,
    /// Bytes per operation.
    pub block: usize,
    /// Operations in flight.
    pub depth: u32,
    /// Bytes covered.
    pub size: u64,
}

impl Case {
    /// A label such as `seq write 1 MiB qd32`.
    pub fn label(&self) -> String {
        format!("{} {} qd{}", self.pattern.name(), human_size(self.block as u64), self.depth)
    }
}

/// `1 MiB`, `256 KiB`, `2 GiB`.
pub fn human_size(bytes: u64) -> String {
    if bytes >= 1 << 30 && bytes % (1 << 30) == 0 {
        format!("{} GiB", bytes >> 30)
    } else if bytes >= 1 << 20 && bytes % (1 << 20) == 0 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{} KiB", bytes >> 10)
    }
}

/// Megabytes (10^6) per second.
pub fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / elapsed.as_secs_f64() / 1e6
}

/// The median of a non-empty list.
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 { xs[n / 2] } else { (xs[n / 2 - 1] + xs[n / 2]) / 2.0 }
}

/// Creates (if needed) the directory the harness works in.
pub fn work_dir(dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    dir.canonicalize()
}

/// Empties and recreates `dir`.
pub fn reset_dir(dir: &Path) -> Result<(), String> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| format!("clearing {}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))
}

/// Drops the page cache so reads come from the device; false if not permitted.
pub fn drop_caches() -> bool {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok()
}
