//! `larder bench` settings: built-in defaults, then a TOML file (`--config`), then
//! `LARDER_*` environment variables, then flags.

use std::path::PathBuf;

use clap::Args;
use larder_tokio::{StoreConfig, parse_size};
use serde::Deserialize;

/// Flags of `larder bench` (each also readable from the environment).
#[derive(Args, Debug)]
pub(crate) struct BenchArgs {
    /// A TOML file with any of: value_size, count, memory, root, tasks, keep.
    #[arg(long, env = "LARDER_CONFIG")]
    config: Option<PathBuf>,
    /// Bytes per value (e.g. 1MiB, 256KiB).
    #[arg(long, env = "LARDER_BENCH_VALUE_SIZE")]
    value_size: Option<String>,
    /// Values to write.
    #[arg(long, env = "LARDER_BENCH_COUNT")]
    count: Option<u64>,
    /// The memory segment (e.g. 512MiB).
    #[arg(long, env = "LARDER_MEMORY_BYTES")]
    memory: Option<String>,
    /// Storage root for the SSD tier; default: a fresh directory under the system's
    /// temporary directory, deleted afterwards.
    #[arg(long, env = "LARDER_STORAGE_ROOT")]
    root: Option<PathBuf>,
    /// Concurrent tasks issuing puts and gets.
    #[arg(long, env = "LARDER_BENCH_TASKS")]
    tasks: Option<usize>,
    /// Keep the data directory afterwards.
    #[arg(long)]
    keep: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// Run as a client of the cluster whose master is here, instead of the embedded
    /// store. The bench then contributes no memory unless `--memory` is given, so its
    /// puts and gets cross the network.
    #[arg(long, env = "LARDER_MASTER")]
    master: Option<std::net::SocketAddr>,
    /// The cluster's name (with `--master`) [default: default].
    #[arg(long, env = "LARDER_CLUSTER")]
    cluster: Option<String>,
}

/// The settings in a TOML file (`--config`), or the defaults with none.
pub(crate) fn read_file<T: serde::de::DeserializeOwned + Default>(
    path: Option<&std::path::Path>,
) -> Result<T, String> {
    let Some(path) = path else { return Ok(T::default()) };
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The file form.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct BenchFile {
    value_size: Option<String>,
    count: Option<u64>,
    memory: Option<String>,
    root: Option<PathBuf>,
    tasks: Option<usize>,
    keep: Option<bool>,
}

/// What `larder bench` runs with.
#[derive(Debug, Clone)]
pub(crate) struct BenchConfig {
    pub(crate) value_size: usize,
    pub(crate) count: u64,
    pub(crate) tasks: usize,
    pub(crate) store: StoreConfig,
    /// The root was made for this run and is deleted afterwards.
    pub(crate) temporary_root: bool,
    /// Leave the data in place afterwards (`--keep`).
    pub(crate) keep: bool,
    pub(crate) json: bool,
    /// `--master`: the cluster to run against, and what the bench contributes to it.
    pub(crate) cluster: Option<ClusterBench>,
}

/// `larder bench --master`: the cluster, and the memory (and storage root) the bench
/// contributes as a node of its own, if any.
#[derive(Debug, Clone)]
pub(crate) struct ClusterBench {
    pub(crate) master: std::net::SocketAddr,
    pub(crate) cluster: larder_engine::net::ClusterName,
    pub(crate) memory_bytes: Option<u64>,
    pub(crate) storage_root: Option<PathBuf>,
}

/// Defaults: 4096 values of 1 MiB (4 GiB) through the default 512 MiB segment.
const DEFAULT_VALUE_SIZE: usize = 1 << 20;
const DEFAULT_COUNT: u64 = 4096;
const DEFAULT_TASKS: usize = 8;

impl BenchConfig {
    pub(crate) fn resolve(args: BenchArgs) -> Result<Self, String> {
        let file: BenchFile = read_file(args.config.as_deref())?;
        let size = |name: &str, v: Option<String>| -> Result<Option<u64>, String> {
            v.map(|v| parse_size(name, &v).map_err(|e| e.to_string())).transpose()
        };
        let value_size = size("value_size", args.value_size.or(file.value_size))?
            .map_or(DEFAULT_VALUE_SIZE, |v| v as usize);
        let count = args.count.or(file.count).unwrap_or(DEFAULT_COUNT);
        let tasks = args.tasks.or(file.tasks).unwrap_or(DEFAULT_TASKS).max(1);
        if value_size == 0 || count == 0 {
            return Err(String::from("value_size and count must be at least 1"));
        }
        let memory = size("memory", args.memory.or(file.memory))?;
        if let Some(master) = args.master {
            let name = args.cluster.unwrap_or_else(|| String::from("default"));
            let cluster = larder_engine::net::ClusterName::new(name.as_bytes())
                .map_err(|e| format!("cluster {name:?}: {e}"))?;
            let storage_root = args.root.or(file.root);
            let bench = ClusterBench { master, cluster, memory_bytes: memory, storage_root };
            let keep = args.keep || file.keep.unwrap_or(false);
            let store = StoreConfig { memory_bytes: memory.unwrap_or(0), ..StoreConfig::default() };
            return Ok(Self {
                value_size,
                count,
                tasks,
                store,
                temporary_root: false,
                keep,
                json: args.json,
                cluster: Some(bench),
            });
        }
        let mut store = StoreConfig::default();
        if let Some(m) = memory {
            store.memory_bytes = m;
        }
        let (root, temporary_root) = match args.root.or(file.root) {
            Some(r) => (r, false),
            None => {
                let dir = std::env::temp_dir().join(format!("larder-bench-{}", std::process::id()));
                std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
                (dir, true)
            }
        };
        store.storage_root = Some(root);
        store.validate().map_err(|e| e.to_string())?;
        let keep = args.keep || file.keep.unwrap_or(false);
        Ok(Self {
            value_size,
            count,
            tasks,
            store,
            temporary_root: temporary_root && !keep,
            keep,
            json: args.json,
            cluster: None,
        })
    }
}
