//! `compare io`: the I/O drivers against fio on one file.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Instant;

use larder_engine::uring::{BufId, Driver, DriverChoice, DriverConfig, IoRequest, Outcome};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use super::{Case, Pattern, mb_per_s};

/// Runs `case` with a Larder driver on `file`; returns MB/s.
pub fn run_driver(choice: DriverChoice, case: &Case, file: &Path) -> Result<f64, String> {
    let config = DriverConfig { choice, queue_depth: case.depth, ..DriverConfig::default() };
    let mut driver = Driver::open(&config).map_err(|e| e.to_string())?;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_DIRECT)
        .open(file)
        .map_err(|e| format!("open {}: {e}", file.display()))?;
    let fid = driver.add_file(f);
    let buffers: Vec<BufId> = (0..case.depth).map(|_| driver.alloc_buffer(case.block)).collect();
    for (i, b) in buffers.iter().enumerate() {
        driver.buffer_mut(*b).map_err(|e| e.to_string())?.fill(i as u8 | 1);
    }
    let blocks = case.size / case.block as u64;
    let order = block_order(case.pattern, blocks);
    let mut next = 0usize;
    let mut free = buffers.clone();
    let start = Instant::now();
    let mut bytes = 0u64;
    loop {
        while let (Some(buf), Some(block)) = (free.last().copied(), order.get(next)) {
            let offset = block * case.block as u64;
            let len = case.block;
            let request = match case.pattern {
                Pattern::SeqWrite => IoRequest::Write { file: fid, offset, buf, buf_offset: 0, len },
                Pattern::SeqRead | Pattern::RandRead => {
                    IoRequest::Read { file: fid, offset, buf, buf_offset: 0, len }
                }
            };
            driver.push(request).map_err(|e| e.to_string())?;
            free.pop();
            next += 1;
        }
        driver.submit().map_err(|e| e.to_string())?;
        while let Some(c) = driver.poll_completion() {
            match c.outcome {
                Outcome::Done { bytes: n, .. } => bytes += n as u64,
                other => return Err(format!("I/O failed: {other:?}")),
            }
            free.extend(c.buf);
        }
        if next == order.len() && driver.is_idle() {
            break;
        }
        driver.wait().map_err(|e| e.to_string())?;
        driver.reap().map_err(|e| e.to_string())?;
    }
    if case.pattern == Pattern::SeqWrite {
        driver.push(IoRequest::Fdatasync { file: fid }).map_err(|e| e.to_string())?;
        driver.run_until_idle().map_err(|e| e.to_string())?;
    }
    Ok(mb_per_s(bytes, start.elapsed()))
}

/// Block numbers in the order the pattern visits them; random reads visit every block
/// once, in an order fixed by a seed so that runs compare.
fn block_order(pattern: Pattern, blocks: u64) -> Vec<u64> {
    let mut order: Vec<u64> = (0..blocks).collect();
    if pattern == Pattern::RandRead {
        order.shuffle(&mut StdRng::seed_from_u64(0x5eed));
    }
    order
}
