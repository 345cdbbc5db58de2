//! The comparison harness: `cargo run --release -p larder-benches --bin compare -- io`.
//!
//! Measures Larder beside baselines in one run, on the same file in the same
//! directory, and prints medians of several runs and ratios (`--json` for JSON).

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use larder_benches::compare::disk::{self, Workload, WriteRead};
use larder_benches::compare::report::{Measured, Report, Row};
use larder_benches::compare::{
    Case, Pattern, drop_caches, fio, human_size, io, median, recovery, store, work_dir,
};
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
        /// The tier's bucket size, in MiB.
        #[arg(long, default_value_t = 64)]
        bucket_mib: u64,
        /// The tier's read chunk, in KiB (a value is read as concurrent chunks).
        #[arg(long, default_value_t = 256)]
        read_chunk_kib: usize,
    },
    /// The store with persistence against the SSD tier alone: 1 MiB puts until flush
    /// returns, one task and eight, interleaved run by run.
    Store {
        /// Bytes written per run.
        #[arg(long, default_value_t = 4 << 30)]
        size: u64,
    },
    /// Transfers over loopback: Larder (master + 2 nodes, a client holding no memory)
    /// putting and getting values beside one raw TCP stream and Redis.
    Net {
        /// Value sizes of the transfer rows, in bytes.
        #[arg(long, value_delimiter = ',', default_values_t = [1 << 20, 256 << 10])]
        values: Vec<usize>,
        /// Bytes put (and got) per transfer run.
        #[arg(long, default_value_t = 512 << 20)]
        size: u64,
        /// Concurrent tasks (Larder), connections (Redis) and threads (Mooncake) of
        /// the transfer rows.
        #[arg(long, default_value_t = 4)]
        tasks: usize,
        /// A Python with `mooncake-transfer-engine-non-cuda` installed (a virtual
        /// environment's), to measure real Mooncake Store beside Larder; its rows are
        /// marked not measured if it has none.
        #[arg(long, env = "LARDER_MOONCAKE_PYTHON", default_value = "python3")]
        mooncake_python: String,
    },
    /// The master over TCP (one core, pipelined GetReplicaList on a few connections)
    /// against the same master called in-process on one thread.
    Master {
        /// Requests per connection per run.
        #[arg(long, default_value_t = 200_000)]
        requests: usize,
        /// Connections pipelining at once.
        #[arg(long, default_value_t = 4)]
        connections: usize,
    },
    /// RDMA transfers of 1 MiB over the simulated NIC (the work-request machine, the
    /// QP machines and the device model) against memcpy of the same bytes between the
    /// same buffers.
    Rdma {
        /// Bytes moved per run and contender.
        #[arg(long, default_value_t = 1 << 30)]
        size: u64,
        /// Bytes per transfer.
        #[arg(long, default_value_t = 1 << 20)]
        transfer: usize,
    },
    /// Reopening a node directory of many records (cold page cache) to a usable
    /// index, against only reading the same trailers and footers.
    Recovery {
        /// Records in the directory.
        #[arg(long, default_value_t = 1_000_000)]
        records: usize,
        /// Value size, in bytes.
        #[arg(long, default_value_t = 64 << 10)]
        value: u64,
    },
}

/// `compare recovery`'s figures.
#[derive(serde::Serialize)]
struct RecoveryReport {
    records: usize,
    buckets: usize,
    value_bytes: u64,
    logical_bytes: u64,
    /// Median seconds of `Tier::open` to a usable index, page cache dropped.
    reopen_seconds: f64,
    reopen_runs: Vec<f64>,
    /// Median seconds to only read every trailer and footer, page cache dropped.
    footer_read_seconds: f64,
    footer_read_runs: Vec<f64>,
    /// reopen / footer reads.
    ratio_to_footer_reads: f64,
    page_cache_dropped: bool,
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Command::Io { size, depth } => {
            emit(compare_io(&cli.dir, cli.runs, size, depth), cli.json, Report::print_table)
        }
        Command::Disk { size, depth, ref values, bucket_mib, read_chunk_kib } => emit(
            compare_disk(&cli.dir, cli.runs, size, depth, values, bucket_mib << 20, read_chunk_kib << 10),
            cli.json,
            Report::print_table,
        ),
        Command::Store { size } => {
            emit(compare_store(&cli.dir, cli.runs, size), cli.json, Report::print_table)
        }
        Command::Net { ref values, size, tasks, ref mooncake_python } => {
            let transfers = Transfers { runs: cli.runs, values, size, tasks, mooncake_python };
            emit(compare_transfers(&transfers), cli.json, Report::print_table)
        }
        Command::Master { requests, connections } => {
            emit(compare_master(cli.runs, requests, connections), cli.json, Report::print_table)
        }
        Command::Rdma { size, transfer } => {
            emit(Ok(compare_rdma(cli.runs, size, transfer)), cli.json, Report::print_table)
        }
        Command::Recovery { records, value } => {
            emit(compare_recovery(&cli.dir, cli.runs, records, value), cli.json, print_recovery)
        }
    }
}

/// Prints a report as JSON or as a table, or the error (exit status 1).
fn emit<T: serde::Serialize>(report: Result<T, String>, json: bool, table: fn(&T)) {
    match report {
        Ok(r) if json => println!("{}", serde_json::to_string_pretty(&r).expect("report serializes")),
        Ok(r) => table(&r),
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
        unit: String::from("MB/s"),
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

fn compare_master(runs: usize, requests: usize, connections: usize) -> Result<Report, String> {
    use larder_benches::compare::net;
    let mut tcp = net::OverTcp::start()?;
    let (mut in_process, mut over_tcp) = (vec![], vec![]);
    for _ in 0..runs {
        in_process.push(net::in_process(connections * requests));
        over_tcp.push(tcp.run(connections, requests)?);
    }
    let master = Row::new(
        format!("get_replica_list ({} objects)", net::OBJECTS),
        vec![
            Measured::from_runs("master in-process, 1 thread", in_process),
            Measured::from_runs(&format!("larder master TCP, {connections} conns"), over_tcp),
        ],
    );
    Ok(Report {
        title: String::from("The master over TCP against itself in-process"),
        setup: vec![
            format!(
                "{connections} connections x {requests} pipelined requests per run, median of {runs} runs"
            ),
            String::from("larder master: whole server on one current-thread runtime pinned to core 0"),
            String::from("load generator: raw pre-encoded frames, pinned to core 1"),
            String::from("in-process: decode + handle + encode of the same request bytes, one thread"),
        ],
        unit: String::from("k requests/s"),
        rows: vec![master],
        notes: vec![],
    })
}

fn compare_rdma(runs: usize, size: u64, transfer: usize) -> Report {
    use larder_benches::compare::rdma;
    use larder_engine::rdma::transfer::Opcode;
    let rows = [("write", Opcode::Write), ("read", Opcode::Read)]
        .into_iter()
        .map(|(name, opcode)| {
            let (mut memcpy, mut simulated) = (rdma::Memcpy::new(), rdma::Simulated::new());
            let (mut copy, mut sim) = (vec![], vec![]);
            for _ in 0..runs {
                copy.push(memcpy.run(size, transfer));
                sim.push(simulated.run(opcode, size, transfer));
            }
            Row::new(
                format!("RDMA {name} of {}", human_size(transfer as u64)),
                vec![Measured::from_runs("memcpy", copy), Measured::from_runs("simulated NIC", sim)],
            )
        })
        .collect();
    Report {
        title: String::from("RDMA transfers over the simulated NIC against memcpy of the same bytes"),
        setup: vec![
            format!("{} per run and contender, median of {runs} runs", human_size(size)),
            format!(
                "two registered regions of {}; transfers cycle through them",
                human_size(rdma::REGION as u64)
            ),
            format!(
                "simulated: WrMachine (2 QPs, 64 KiB slices) + QueuePair + SimNic, {} transfers in flight; both sides' buffers touched before timing",
                rdma::IN_FLIGHT
            ),
        ],
        unit: String::from("MB/s"),
        rows,
        notes: vec![String::from(
            "no RDMA device here: the simulated NIC copies with memcpy, so this measures the machines' overhead",
        )],
    }
}

/// What `compare net` measures.
struct Transfers<'a> {
    runs: usize,
    values: &'a [usize],
    size: u64,
    tasks: usize,
    mooncake_python: &'a str,
}

/// A contender's runs, or "not measured" with the reason if it has none.
fn measured_or(name: &str, runs: &[f64], why_not: &str) -> Measured {
    if runs.is_empty() { Measured::missing(name, why_not) } else { Measured::from_runs(name, runs.to_vec()) }
}

/// Puts and gets through a cluster beside a raw TCP stream, Redis and Mooncake Store.
fn compare_transfers(t: &Transfers<'_>) -> Result<Report, String> {
    use larder_benches::compare::net;
    let (runs, size, tasks) = (t.runs, t.size, t.tasks);
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let mut cluster = net::LarderCluster::start(size + (64 << 20))?;
    for &value in t.values {
        let count = (size / value as u64).max(1) as usize;
        let (mut raw, mut redis_set, mut redis_get, mut put, mut get) =
            (vec![], vec![], vec![], vec![], vec![]);
        let (mut mooncake_put, mut mooncake_get) = (vec![], vec![]);
        for _ in 0..runs {
            raw.push(net::raw_stream(size, value)?);
            match net::redis(value, count, tasks) {
                Ok((set, got)) => {
                    redis_set.push(set);
                    redis_get.push(got);
                }
                Err(e) => note_once(&mut notes, format!("redis not measured: {e}")),
            }
            match net::mooncake(t.mooncake_python, value, count, tasks) {
                Ok((p, g)) => {
                    mooncake_put.push(p);
                    mooncake_get.push(g);
                }
                Err(e) => note_once(&mut notes, format!("mooncake not measured: {e}")),
            }
            let (p, g) = cluster.run(value, count, tasks)?;
            put.push(p);
            get.push(g);
        }
        let label = human_size(value as u64);
        let no_redis = "redis-server not installed";
        let no_mooncake = "mooncake not installed (see the notes)";
        for (op, redis_name, redis_runs, mooncake_runs, larder_runs) in [
            ("put", "redis SET", &redis_set, &mooncake_put, &put),
            ("get", "redis GET", &redis_get, &mooncake_get, &get),
        ] {
            let larder = || Measured::from_runs(&format!("larder 2 nodes {op}"), larder_runs.clone());
            let redis = || measured_or(redis_name, redis_runs, no_redis);
            let mooncake = || measured_or(&format!("mooncake {op}"), mooncake_runs, no_mooncake);
            rows.push(Row::new(
                format!("{op} {label}"),
                vec![Measured::from_runs("raw TCP stream", raw.clone()), redis(), mooncake(), larder()],
            ));
            rows.push(Row::new(format!("{op} {label} vs redis"), vec![redis(), larder()]));
            rows.push(Row::new(format!("{op} {label} vs mooncake"), vec![mooncake(), larder()]));
        }
        eprintln!("  measured transfers of {label}");
    }
    Ok(Report {
        title: String::from("Transfers over loopback: a raw TCP stream, Redis, Larder (master + 2 nodes)"),
        setup: vec![
            format!(
                "{} per run and value size, {tasks} tasks (Larder) / connections (Redis), median of {runs} runs",
                human_size(size)
            ),
            String::from("raw TCP stream: one connection, the same bytes written in value-sized writes"),
            String::from("redis: redis-server with persistence off, redis-benchmark -t set,get"),
            String::from(
                "mooncake: mooncake_master + 2 holder processes, a client with no segment, protocol tcp, gets verified (benches/mooncake/transfers.py)",
            ),
            String::from(
                "larder: master and 2 nodes in-process; the client holds no memory, every byte crosses to a node; gets verified",
            ),
        ],
        unit: String::from("MB/s"),
        rows,
        notes,
    })
}

fn compare_store(dir: &std::path::Path, runs: usize, size: u64) -> Result<Report, String> {
    let dir = work_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let values = store::rotating_values();
    let count = (size / store::VALUE as u64) as usize;
    let mut rows = Vec::new();
    for tasks in [1, 8] {
        let (mut tier, mut with_store) = (vec![], vec![]);
        for _ in 0..runs {
            tier.push(store::run_tier(&dir.join("tier-alone"), &values, count, tasks)?);
            with_store.push(store::run_store(&dir.join("store"), &values, count, tasks)?);
        }
        let label = if tasks == 1 {
            String::from("puts until durable, 1 task")
        } else {
            format!("puts until durable, {tasks} tasks")
        };
        rows.push(Row::new(
            label,
            vec![
                Measured::from_runs("tier alone", tier),
                Measured::from_runs("store (persistent)", with_store),
            ],
        ));
        eprintln!("  measured {tasks} task(s)");
    }
    Ok(Report {
        unit: String::from("MB/s"),
        title: String::from("Store with persistence against the SSD tier alone"),
        setup: vec![
            format!(
                "directory: {} ({} of 1 MiB values per run), median of {runs} runs, interleaved",
                dir.display(),
                human_size(size)
            ),
            String::from(
                "both fed the same distinct values rotating over 1 GiB; the tier takes each without a copy (Bytes), the store copies it into its memory replica (1 GiB of memory)",
            ),
            String::from(
                "tasks: threads calling Tier::put; tasks on a tokio runtime (1 worker for 1 task, 2 for 8) calling Store::put",
            ),
        ],
        rows,
        notes: vec![],
    })
}

fn compare_disk(
    dir: &std::path::Path,
    runs: usize,
    size: u64,
    depth: u32,
    values: &[usize],
    bucket_bytes: u64,
    read_chunk: usize,
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
    let fio_run = |case: Case| -> Result<Option<f64>, String> {
        if have_fio { fio::run(&case, &fio_file).map(Some) } else { Ok(None) }
    };
    let mut rows = Vec::new();
    for &value_size in values {
        let workload = Workload::new(value_size, size);
        let v = human_size(value_size as u64);
        // The device drifts over minutes: interleave the contenders run by run so that
        // each median compares like with like.
        let (mut fio_write, mut fio_read, mut fio_qd1, mut tier, mut seed) =
            (vec![], vec![], vec![], vec![], vec![]);
        // The one-task rows read a quarter of the set (at most 512 MiB): enough for a
        // median, short at queue depth 1.
        let one_task_bytes = (size / 4).min(512 << 20);
        let one_task_count = (one_task_bytes / value_size as u64) as usize;
        for _ in 0..runs {
            // A fresh file each run: the tier writes new files too, and on a filesystem
            // mounted with `discard` overwriting blocks already allocated is cheaper
            // than allocating new ones.
            let _ = std::fs::remove_file(&fio_file);
            fio_write.extend(fio_run(Case { pattern: Pattern::SeqWrite, block: 1 << 20, depth, size })?);
            fio_read.extend(fio_run(Case { pattern: Pattern::RandRead, block: value_size, depth, size })?);
            if have_fio {
                drop_caches();
                let case = Case { pattern: Pattern::RandRead, block: value_size, depth: 1, size };
                fio_qd1.push(fio::run_limited(&case, &fio_file, Some(one_task_bytes))?);
            }
            tier.push(disk::run_tier(
                &workload,
                &dir.join("tier"),
                depth as usize,
                (bucket_bytes, read_chunk),
                one_task_count,
            )?);
            seed.push(disk::run_file_per_object(&workload, &dir.join("file-per-object"))?);
        }
        let _ = std::fs::remove_dir_all(dir.join("tier"));
        let fio = |name: String, runs: Vec<f64>| {
            if have_fio {
                Measured::from_runs(&name, runs)
            } else {
                Measured::missing(&name, "fio not installed")
            }
        };
        let larder =
            |f: fn(&WriteRead) -> f64| Measured::from_runs("larder tier", tier.iter().map(f).collect());
        let per_file =
            |f: fn(&WriteRead) -> f64| Measured::from_runs("file per object", seed.iter().map(f).collect());
        rows.push(Row::new(
            format!("write, {v} values"),
            vec![fio(String::from("fio seq write 1 MiB"), fio_write), larder(|r| r.write)],
        ));
        rows.push(Row::new(format!("write, {v} values"), vec![per_file(|r| r.write), larder(|r| r.write)]));
        rows.push(Row::new(
            format!("cold read, {v} values"),
            vec![fio(format!("fio rand read {v}"), fio_read), larder(|r| r.read)],
        ));
        rows.push(Row::new(format!("cold read, {v} values"), vec![per_file(|r| r.read), larder(|r| r.read)]));
        rows.push(Row::new(
            format!("cold read, {v} values, 1 task"),
            vec![fio(format!("fio rand read {v} qd1"), fio_qd1), larder(|r| r.read_one_task)],
        ));
        rows.push(Row::new(
            format!("cold read, {v} values, 1 task"),
            vec![
                Measured::from_runs(
                    "tier, value read whole",
                    tier.iter().map(|r| r.read_one_task_whole).collect(),
                ),
                larder(|r| r.read_one_task),
            ],
        ));
        eprintln!("  measured {v} values");
    }
    let _ = std::fs::remove_file(&fio_file);
    Ok(Report {
        unit: String::from("MB/s"),
        title: String::from("SSD tier against fio and the seed's one-file-per-object design"),
        setup: vec![
            format!(
                "directory: {} ({} per case), median of {runs} runs, contenders interleaved run by run",
                dir.display(),
                human_size(size)
            ),
            format!(
                "larder tier: {} buckets; puts until flush() returns (durable), then reads in random order with {depth} in flight; then one task reading one value at a time (a quarter of the set, at most 512 MiB; each value read as concurrent {} chunks)",
                human_size(bucket_bytes),
                human_size(read_chunk as u64)
            ),
            String::from(
                "file per object: 2 threads, create + write + fsync per object; reads one file per object on 2 threads",
            ),
            format!(
                "fio: io_uring, O_DIRECT, {depth} in flight (qd1: one; the same bytes as the one-task row); writes end with fsync; page cache dropped before reads"
            ),
        ],
        rows,
        notes,
    })
}

fn compare_recovery(
    dir: &std::path::Path,
    runs: usize,
    records: usize,
    value: u64,
) -> Result<RecoveryReport, String> {
    let root = work_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?.join("recovery");
    eprintln!("  laying out {records} records of {} ...", human_size(value));
    let layout = recovery::lay_out(&root, records, value, 64 << 20)?;
    let mut dropped = true;
    let mut floor = Vec::new();
    let mut reopen = Vec::new();
    for _ in 0..runs {
        dropped &= drop_caches();
        floor.push(recovery::read_footers(&root)?);
        dropped &= drop_caches();
        reopen.push(recovery::reopen(&root, records, value)?);
    }
    let _ = std::fs::remove_dir_all(&root);
    let (reopen_seconds, footer_read_seconds) = (median(reopen.clone()), median(floor.clone()));
    Ok(RecoveryReport {
        records,
        buckets: layout.buckets,
        value_bytes: value,
        logical_bytes: layout.logical_bytes,
        reopen_seconds,
        reopen_runs: reopen,
        footer_read_seconds,
        footer_read_runs: floor,
        ratio_to_footer_reads: reopen_seconds / footer_read_seconds,
        page_cache_dropped: dropped,
    })
}

fn print_recovery(r: &RecoveryReport) {
    println!("Reopening a node directory to a usable index (cold page cache)");
    println!(
        "  {} records of {} in {} buckets ({} of values), median of {} runs",
        r.records,
        human_size(r.value_bytes),
        r.buckets,
        human_size(r.logical_bytes),
        r.reopen_runs.len()
    );
    println!();
    println!("{:<40} {:>10}", "contender", "seconds");
    println!("{:<40} {:>10.3}", "read every trailer and footer (floor)", r.footer_read_seconds);
    println!(
        "{:<40} {:>10.3}  ({:.2}x the floor)",
        "larder Tier::open", r.reopen_seconds, r.ratio_to_footer_reads
    );
    if !r.page_cache_dropped {
        println!("\nnote: could not drop the page cache (needs root): figures are warm");
    }
}

/// Adds `note` unless a note with the same start (up to its colon) is there.
fn note_once(notes: &mut Vec<String>, note: String) {
    let what = note.split(':').next().unwrap_or_default().to_owned();
    if !notes.iter().any(|n| n.starts_with(&what)) {
        notes.push(note);
    }
}
