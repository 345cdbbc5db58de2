//! `larder node`: settings (defaults, then a TOML file, then `LARDER_*` variables, then
//! flags) and the run.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use larder_engine::net::ClusterName;
use larder_tokio::cluster::{NodeServerConfig, RemoteStore, TierSettings};
use larder_tokio::parse_size;
use serde::Deserialize;

/// Flags of `larder node` (each also readable from the environment).
#[derive(Args, Debug)]
pub(crate) struct NodeArgs {
    /// A TOML file with any of: master, listen, memory, root, cluster, node_id, max_disk.
    #[arg(long, env = "LARDER_CONFIG")]
    config: Option<PathBuf>,
    /// The master's address [default: 127.0.0.1:50051].
    #[arg(long, env = "LARDER_MASTER")]
    master: Option<SocketAddr>,
    /// Where to serve the segment to other nodes and clients; port 0 picks a free one,
    /// reported to the master. A wildcard IP (0.0.0.0) is reported as this host's
    /// address on the route to the master [default: 127.0.0.1:0].
    #[arg(long, env = "LARDER_NODE_LISTEN")]
    listen: Option<SocketAddr>,
    /// Memory contributed (e.g. 4GiB) [default: 512MiB].
    #[arg(long, env = "LARDER_MEMORY_BYTES")]
    memory: Option<String>,
    /// The storage root: the node's SSD tier (`<root>/<cluster>/<node>/`) and its
    /// stable id (`<root>/<cluster>/node-id`). Without it the node is memory only and
    /// gets a new id every run.
    #[arg(long, env = "LARDER_STORAGE_ROOT")]
    root: Option<PathBuf>,
    /// The cluster's name [default: default].
    #[arg(long, env = "LARDER_CLUSTER")]
    cluster: Option<String>,
    /// The node's id (a number above 0) instead of the one kept under the root: nodes
    /// sharing one storage root each need their own, the same at every restart.
    #[arg(long, env = "LARDER_NODE_ID")]
    node_id: Option<u64>,
    /// The most bytes its SSD tier keeps in bucket files (e.g. 100GiB); the oldest
    /// buckets are evicted past it [default: as the filesystem has room].
    #[arg(long, env = "LARDER_MAX_DISK_BYTES")]
    max_disk: Option<String>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct NodeFile {
    master: Option<SocketAddr>,
    listen: Option<SocketAddr>,
    memory: Option<String>,
    root: Option<PathBuf>,
    cluster: Option<String>,
    node_id: Option<u64>,
    max_disk: Option<String>,
}

pub(crate) fn resolve(args: NodeArgs) -> Result<NodeServerConfig, String> {
    let file: NodeFile = crate::config::read_file(args.config.as_deref())?;
    let master =
        args.master.or(file.master).unwrap_or_else(|| "127.0.0.1:50051".parse().expect("an address"));
    let listen = args.listen.or(file.listen).unwrap_or_else(|| "127.0.0.1:0".parse().expect("an address"));
    let memory_bytes = match args.memory.or(file.memory) {
        Some(m) => parse_size("memory", &m).map_err(|e| e.to_string())?,
        None => 512 << 20,
    };
    if memory_bytes == 0 {
        return Err(String::from("memory must be at least 1 byte"));
    }
    let cluster_name = args.cluster.or(file.cluster).unwrap_or_else(|| String::from("default"));
    let cluster =
        ClusterName::new(cluster_name.as_bytes()).map_err(|e| format!("cluster {cluster_name:?}: {e}"))?;
    let storage_root = args.root.or(file.root);
    if let Some(root) = &storage_root {
        if !root.is_dir() {
            return Err(format!("storage root {}: not a directory", root.display()));
        }
    }
    let node_id = match args.node_id.or(file.node_id) {
        Some(0) => return Err(String::from("node id must not be 0")),
        id => id.map(larder_engine::NodeId),
    };
    let max_disk_bytes = match args.max_disk.or(file.max_disk) {
        Some(m) => Some(parse_size("max_disk", &m).map_err(|e| e.to_string())?),
        None => None,
    };
    let tier = TierSettings { max_disk_bytes, ..TierSettings::default() };
    Ok(NodeServerConfig { master, listen, cluster, memory_bytes, storage_root, node_id, tier, rdma: None })
}

/// Runs until ctrl-c or SIGTERM; then withdraws the segment from the cluster (if the
/// master answers within a few seconds; else it expires by the node TTL) and stops,
/// writing out what the SSD tier accepted.
pub(crate) async fn run(config: NodeServerConfig) -> Result<(), String> {
    let (master, cluster) = (config.master, config.cluster);
    let node = larder_tokio::cluster::node::start(config).await.map_err(|e| format!("node: {e}"))?;
    println!(
        "larder node {} serving on {} ({} records recovered)",
        node.node, node.data_addr, node.recovered
    );
    crate::master_cmd::stopped().await;
    let timeout = std::time::Duration::from_secs(3);
    let withdrawn = match RemoteStore::connect_as(master, cluster, node.node, node.incarnation, timeout).await
    {
        Ok(link) => link.unmount(node.segment).await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = withdrawn {
        eprintln!(
            "larder node {}: the segment was not withdrawn ({e}); it expires by the node TTL",
            node.node
        );
    }
    node.stop().await.map_err(|e| format!("stopping the node: {e}"))
}
