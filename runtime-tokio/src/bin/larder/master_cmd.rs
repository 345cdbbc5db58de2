//! `larder master`: settings (defaults, then a TOML file, then `LARDER_*` variables,
//! then flags) and the run.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use larder_engine::net::ClusterName;
use larder_tokio::cluster::MasterServerConfig;
use serde::Deserialize;

/// Flags of `larder master` (each also readable from the environment).
#[derive(Args, Debug)]
pub(crate) struct MasterArgs {
    /// A TOML file with any of: listen, metrics, cluster, lease_ttl, node_ttl,
    /// high_watermark, low_watermark, shared_root.
    #[arg(long, env = "LARDER_CONFIG")]
    config: Option<PathBuf>,
    /// Where nodes and clients connect [default: 127.0.0.1:50051].
    #[arg(long, env = "LARDER_LISTEN")]
    listen: Option<SocketAddr>,
    /// Where to serve Prometheus `/metrics` and `/health` (off unless given).
    #[arg(long, env = "LARDER_METRICS")]
    metrics: Option<SocketAddr>,
    /// The cluster's name; peers of another cluster are refused [default: default, as the embedded store's directory].
    #[arg(long, env = "LARDER_CLUSTER")]
    cluster: Option<String>,
    /// How long a read keeps an object from eviction and plain removal [default: 10s].
    #[arg(long, env = "LARDER_LEASE_TTL")]
    lease_ttl: Option<String>,
    /// A node silent this long is expired, its memory replicas dropped [default: 10s].
    #[arg(long, env = "LARDER_NODE_TTL")]
    node_ttl: Option<String>,
    /// Segment use (0–1] at which eviction starts [default: 0.9].
    #[arg(long, env = "LARDER_HIGH_WATERMARK")]
    high_watermark: Option<f64>,
    /// Segment use eviction brings it down to [default: 0.8].
    #[arg(long, env = "LARDER_LOW_WATERMARK")]
    low_watermark: Option<f64>,
    /// The nodes' storage roots are one shared filesystem (each node under its own
    /// `--node-id`): a lost node's disk replicas stay listed, and readers that see the
    /// root read them straight from its bucket files.
    #[arg(long, env = "LARDER_SHARED_ROOT")]
    shared_root: bool,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct MasterFile {
    listen: Option<SocketAddr>,
    metrics: Option<SocketAddr>,
    cluster: Option<String>,
    lease_ttl: Option<String>,
    node_ttl: Option<String>,
    high_watermark: Option<f64>,
    low_watermark: Option<f64>,
    shared_root: Option<bool>,
}

const DEFAULT_LISTEN: &str = "127.0.0.1:50051";

/// A duration such as `10s`, `500ms` or `2m`.
pub(crate) fn parse_duration(name: &str, text: &str) -> Result<larder_engine::Duration, String> {
    humantime::parse_duration(text)
        .map(larder_engine::Duration::from)
        .map_err(|e| format!("{name}: {text:?} is not a duration such as 10s or 500ms ({e})"))
}

pub(crate) fn resolve(args: MasterArgs) -> Result<MasterServerConfig, String> {
    let file: MasterFile = crate::config::read_file(args.config.as_deref())?;
    let listen =
        args.listen.or(file.listen).unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("a valid address"));
    let cluster_name = args.cluster.or(file.cluster).unwrap_or_else(|| String::from("default"));
    let cluster =
        ClusterName::new(cluster_name.as_bytes()).map_err(|e| format!("cluster {cluster_name:?}: {e}"))?;
    let mut config = MasterServerConfig::new(listen, cluster);
    let mut master = config.master.clone();
    if let Some(t) = args.lease_ttl.or(file.lease_ttl) {
        master.lease_ttl = parse_duration("lease_ttl", &t)?;
    }
    if let Some(t) = args.node_ttl.or(file.node_ttl) {
        master.node_ttl = parse_duration("node_ttl", &t)?;
    }
    if let Some(h) = args.high_watermark.or(file.high_watermark) {
        master.high_watermark = h;
    }
    if let Some(l) = args.low_watermark.or(file.low_watermark) {
        master.low_watermark = l;
    }
    master.shared_storage = args.shared_root || file.shared_root.unwrap_or(false);
    larder_engine::master::Master::new(master.clone()).map_err(|e| format!("master settings: {e}"))?;
    config.master = master;
    config.metrics = args.metrics.or(file.metrics);
    Ok(config)
}

/// Resolves at ctrl-c or SIGTERM.
pub(crate) async fn stopped() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let terminated = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminated => {}
    }
}

/// Runs until ctrl-c or SIGTERM.
pub(crate) async fn run(config: MasterServerConfig) -> Result<(), String> {
    larder_tokio::cluster::master::run_until(config, stopped()).await.map_err(|e| format!("master: {e}"))
}
