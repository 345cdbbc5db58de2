//! `larder`: the command line.
//!
//! `larder bench` runs the embedded store through its main job: a working set larger
//! than memory is written (eviction pushes it to SSD), read back and verified byte for
//! byte, then the store is closed and reopened and everything is read back again.
//! `larder master` runs the distributed mode's master: metadata only, over TCP;
//! `larder node` contributes a memory segment to it and serves it.

mod bench;
mod cluster_bench;
mod config;
mod master_cmd;
mod node_cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "larder", version, about = "Larder: a tiered KV-cache store")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log more (-v: info, -vv: debug). `LARDER_LOG` takes a full filter instead.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(Subcommand)]
enum Command {
    /// Write a working set larger than memory, read it back verified, reopen, read again.
    Bench(config::BenchArgs),
    /// Run the cluster's master: object metadata, placement, leases, node liveness
    /// (no values pass through it), behind a TCP server, with Prometheus metrics.
    Master(master_cmd::MasterArgs),
    /// Contribute a memory segment to a cluster and serve it to the other nodes and
    /// clients (its id is kept in the node directory, so a restart is the same node).
    Node(node_cmd::NodeArgs),
}

fn main() {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let result = match cli.command {
        Command::Bench(args) => config::BenchConfig::resolve(args).and_then(|c| run_on_tokio(bench::run(c))),
        Command::Master(args) => master_cmd::resolve(args).and_then(|c| run_on_tokio(master_cmd::run(c))),
        Command::Node(args) => node_cmd::resolve(args).and_then(|c| run_on_tokio(node_cmd::run(c))),
    };
    if let Err(e) = result {
        eprintln!("larder: {e}");
        std::process::exit(1);
    }
}

/// Runs a command on a multi-threaded tokio runtime (with time and I/O).
fn run_on_tokio(command: impl std::future::Future<Output = Result<(), String>>) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    runtime.block_on(command)
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("LARDER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}
