//! The comparison harness: `cargo run --release -p larder-benches --bin compare -- io`.
//!
//! Measures Larder beside baselines in one run, on the same file in the same
//! directory, and prints medians of several runs and ratios (`--json` for JSON).

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use larder_benches::compare::report::{Measured, Report, Row};
use larder_benches::compare::{Case, Pattern, fio, human_size, io, work_dir};
use larder_engine::uring::DriverChoice;

#[derive(Parser)]
#[command(about = "Larder against the raw device and baselines, measured in one run")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Directory for the test files (on the device to measure; not tmpfs).
    #[arg(long, global = true, env = "LARDER_BENCH_DIR", default_value = "target/compare")]
    dir: PathBuf,
    /// Runs per contender and case; the median is reported.
    #[arg(long, global = true, default_value_t = 3)]
    runs: usize,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// The I/O drivers (io_uring, thread pool) against fio: sequential write and read
    /// at 1 MiB and 256 KiB, random read at 256 KiB, O_DIRECT, 32 in flight.
    Io {
        /// Bytes covered per case.
        #[arg(long, default_value_t = 1 << 30)]
        size: u64,
        /// Operations in flight.
        #[arg(long, default_value_t = 32)]
        depth: u32,
    },
}

fn main() {
    let cli = Cli::parse();
    let report = match cli.command {
        Command::Io { size, depth } => compare_io(&cli.dir, cli.runs, size, depth),
    };
    match report {
        Ok(r) if cli.json => r.print_json(),
        Ok(r) => r.print_table(),
        Err(e) => {
            eprintln!("compare: {e}");
            std::process::exit(1);
        }
    }
}

fn compare_io(dir: &std::path::Path, runs: usize, size: u64, depth: u32) -> Result<Report, String> {
    let dir = work_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let file = dir.join("compare-io.dat");
    let have_fio = fio::available();
    let mut notes = Vec::new();
    if !have_fio {
        notes.push(fio::INSTALL_HINT.to_string());
    }
    let cases: Vec<Case> = [
        (Pattern::SeqWrite, 1 << 20),
        (Pattern::SeqRead, 1 << 20),
        (Pattern::SeqWrite, 256 << 10),
        (Pattern::SeqRead, 256 << 10),
        (Pattern::RandRead, 256 << 10),
    ]
    .into_iter()
    .map(|(pattern, block)| Case { pattern, block, depth, size })
    .collect();
    // Reads need a file of the full size: lay it down once.
    io::run_driver(
        DriverChoice::IoUring,
        &Case { pattern: Pattern::SeqWrite, block: 1 << 20, depth, size },
        &file,
    )?;
    let mut rows = Vec::new();
    for case in &cases {
        let fio_runs = if have_fio {
            Measured::from_runs(
                "fio io_uring",
                (0..runs).map(|_| fio::run(case, &file)).collect::<Result<_, _>>()?,
            )
        } else {
            Measured::missing("fio io_uring", "fio not installed")
        };
        let mut results = vec![fio_runs];
        for (name, choice) in
            [("larder io_uring", DriverChoice::IoUring), ("larder fallback", DriverChoice::ThreadPool)]
        {
            let r = (0..runs).map(|_| io::run_driver(choice, case, &file)).collect::<Result<Vec<_>, _>>()?;
            results.push(Measured::from_runs(name, r));
        }
        rows.push(Row::new(case.label(), results));
        eprintln!("  measured {}", case.label());
    }
    let _ = std::fs::remove_file(&file);
    Ok(Report {
        title: String::from("I/O drivers against fio (same file, O_DIRECT)"),
        setup: vec![
            format!("file: {} ({} per case)", file.display(), human_size(size)),
            format!(
                "{depth} operations in flight, median of {runs} runs; writes end with fdatasync (fio: end_fsync)"
            ),
            String::from("larder fallback = the thread-pool driver with its default 4 workers"),
        ],
        rows,
        notes,
    })
}
