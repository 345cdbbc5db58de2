//! The comparison harness: `cargo run --release -p larder-benches --bin compare -- io`.
//!
//! Measures Larder beside baselines in one run, on the same file in the same
//! directory, and prints medians of several runs and ratios (`--json` for JSON).

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use larder_benches::compare::disk::{self, Workload, WriteRead};
use larder_benches::compare::report::{Measured, Report, Row};
use larder_benches::compare::{Case, Pattern, drop_caches, fio, human_size, io, work_dir};
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
    /// The SSD tier against fio and the seed's one-file-per-object design: writing
    /// until durable, then cold random reads, at value sizes of 256 KiB and 1 MiB.
    Disk {
        /// Bytes written per case.
        #[arg(long, default_value_t = 2 << 30)]
        size: u64,
        /// Reads in flight (fio's and the tier's).
        #[arg(long, default_value_t = 32)]
        depth: u32,
        /// Value sizes, in bytes.
        #[arg(long, value_delimiter = ',', default_values_t = [256 << 10, 1 << 20])]
        values: Vec<usize>,
    },
}

fn main() {
    let cli = Cli::parse();
    let report = match cli.command {
        Command::Io { size, depth } => compare_io(&cli.dir, cli.runs, size, depth),
        Command::Disk { size, depth, ref values } => compare_disk(&cli.dir, cli.runs, size, depth, values),
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

fn compare_disk(
    dir: &std::path::Path,
    runs: usize,
    size: u64,
    depth: u32,
    values: &[usize],
) -> Result<Report, String> {
    let dir = work_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let fio_file = dir.join("compare-disk-fio.dat");
    let mut notes = Vec::new();
    let have_fio = fio::available();
    if !have_fio {
        notes.push(fio::INSTALL_HINT.to_string());
    }
    if !drop_caches() {
        notes.push(String::from(
            "could not drop the page cache (needs root): the baseline's reads may come from memory",
        ));
    }
    let fio_median = |case: Case, name: &str| -> Result<Measured, String> {
        if !have_fio {
            return Ok(Measured::missing(name, "fio not installed"));
        }
        let r = (0..runs).map(|_| fio::run(&case, &fio_file)).collect::<Result<_, _>>()?;
        Ok(Measured::from_runs(name, r))
    };
    let fio_write =
        fio_median(Case { pattern: Pattern::SeqWrite, block: 1 << 20, depth, size }, "fio seq write 1 MiB")?;
    let mut rows = Vec::new();
    for &value_size in values {
        let workload = Workload::new(value_size, size);
        let v = human_size(value_size as u64);
        let fio_read = fio_median(
            Case { pattern: Pattern::RandRead, block: value_size, depth, size },
            &format!("fio rand read {v}"),
        )?;
        let tier: Vec<WriteRead> = (0..runs)
            .map(|_| disk::run_tier(&workload, &dir.join("tier"), depth as usize))
            .collect::<Result<_, _>>()?;
        let seed: Vec<WriteRead> = (0..runs)
            .map(|_| disk::run_file_per_object(&workload, &dir.join("file-per-object")))
            .collect::<Result<_, _>>()?;
        let _ = std::fs::remove_dir_all(dir.join("tier"));
        let larder =
            |f: fn(&WriteRead) -> f64| Measured::from_runs("larder tier", tier.iter().map(f).collect());
        let per_file =
            |f: fn(&WriteRead) -> f64| Measured::from_runs("file per object", seed.iter().map(f).collect());
        rows.push(Row::new(format!("write, {v} values"), vec![fio_write.clone(), larder(|r| r.write)]));
        rows.push(Row::new(format!("write, {v} values"), vec![per_file(|r| r.write), larder(|r| r.write)]));
        rows.push(Row::new(format!("cold read, {v} values"), vec![fio_read, larder(|r| r.read)]));
        rows.push(Row::new(format!("cold read, {v} values"), vec![per_file(|r| r.read), larder(|r| r.read)]));
        eprintln!("  measured {v} values");
    }
    let _ = std::fs::remove_file(&fio_file);
    Ok(Report {
        title: String::from("SSD tier against fio and the seed's one-file-per-object design"),
        setup: vec![
            format!("directory: {} ({} per case), median of {runs} runs", dir.display(), human_size(size)),
            format!(
                "larder tier: puts until flush() returns (durable), then reads in random order with {depth} in flight"
            ),
            String::from(
                "file per object: 2 threads, create + write + fsync per object; reads one file per object on 2 threads",
            ),
            format!(
                "fio: io_uring, O_DIRECT, {depth} in flight; writes end with fsync; page cache dropped before reads"
            ),
        ],
        rows,
        notes,
    })
}
