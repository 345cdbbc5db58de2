//! fio, the raw-device baseline.

use std::path::Path;
use std::process::Command;

use super::Case;

/// How to get fio when it is missing.
pub const INSTALL_HINT: &str =
    "fio is not installed: `apt-get install fio` (Debian/Ubuntu) or `dnf install fio`";

/// Whether fio can be run.
pub fn available() -> bool {
    Command::new("fio").arg("--version").output().is_ok_and(|o| o.status.success())
}

/// Runs one fio job with io_uring and O_DIRECT on `file`; returns MB/s.
pub fn run(case: &Case, file: &Path) -> Result<f64, String> {
    run_limited(case, file, None)
}

/// Like [`run`], transferring only `io_size` bytes (spread over the whole region) if
/// given.
pub fn run_limited(case: &Case, file: &Path, io_size: Option<u64>) -> Result<f64, String> {
    let mut command = Command::new("fio");
    if let Some(n) = io_size {
        command.arg(format!("--io_size={n}"));
    }
    let out = command
        .args([
            "--name=larder-compare",
            "--ioengine=io_uring",
            "--direct=1",
            "--numjobs=1",
            "--end_fsync=1",
            "--output-format=json",
            "--randrepeat=0",
        ])
        .arg(format!("--filename={}", file.display()))
        .arg(format!("--rw={}", case.pattern.fio_rw()))
        .arg(format!("--bs={}", case.block))
        .arg(format!("--iodepth={}", case.depth))
        .arg(format!("--size={}", case.size))
        .output()
        .map_err(|e| format!("running fio: {e}"))?;
    if !out.status.success() {
        return Err(format!("fio failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("fio output is not JSON: {e}"))?;
    let job = &json["jobs"][0];
    let side = if case.pattern == super::Pattern::SeqWrite { "write" } else { "read" };
    let bw = job[side]["bw_bytes"].as_f64().ok_or("fio output lacks bw_bytes")?;
    Ok(bw / 1e6)
}
