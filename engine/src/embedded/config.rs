//! Store configuration: defaults, `LARDER_*` environment variables, sizes like `512MiB`.

use std::path::PathBuf;
use std::string::String;

use crate::disk::DirectIo;
use crate::ids::NodeId;

/// The default memory segment: 512 MiB, safe on a laptop (the pages are only touched
/// as values arrive).
pub const DEFAULT_MEMORY_BYTES: u64 = 512 << 20;

/// Where a store's time (leases, timeouts, retry backoff) comes from.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    /// The monotonic clock.
    #[default]
    System,
    /// A clock that moves only when told to: tests drive leases and timers with it
    /// instead of waiting for real time to pass.
    Manual(ManualClock),
}

/// A clock moved by hand ([`ManualClock::advance`]); clones share one time.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(std::sync::Arc<core::sync::atomic::AtomicU64>);

impl ManualClock {
    /// A clock at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: core::time::Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.0.fetch_add(nanos, core::sync::atomic::Ordering::SeqCst);
    }

    /// Nanoseconds since the clock started.
    pub fn nanos(&self) -> u64 {
        self.0.load(core::sync::atomic::Ordering::SeqCst)
    }
}

/// Store configuration. [`StoreConfig::default`] needs nothing: the embedded store,
/// memory only, 512 MiB. [`StoreConfig::from_env`] applies `LARDER_*` variables on top.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Bytes of the memory segment (`LARDER_MEMORY_BYTES`). With a master, the memory
    /// this process contributes to the cluster: 0 makes it a pure client.
    pub memory_bytes: u64,
    /// The storage root for persistence (`LARDER_STORAGE_ROOT`); `None`: memory only.
    /// When set it must be an existing, writable directory.
    pub storage_root: Option<PathBuf>,
    /// The cluster's directory name under the root (`LARDER_CLUSTER`, "default").
    pub cluster: String,
    /// This node's id (its directory is `<root>/<cluster>/<node>/`).
    pub node: NodeId,
    /// Physical bytes the SSD tier may use (`LARDER_MAX_DISK_BYTES`); `None`: no limit.
    pub max_disk_bytes: Option<u64>,
    /// How long a read keeps an object from being evicted, or removed without force.
    pub lease_ttl: core::time::Duration,
    /// Memory use at which eviction starts (fraction of the segment).
    pub high_watermark: f64,
    /// Memory use eviction brings the segment down to.
    pub low_watermark: f64,
    /// `O_DIRECT` for bucket files (probed) or always buffered.
    pub direct_io: DirectIo,
    /// Bytes of values waiting to be written to SSD before puts wait for the disk
    /// (`LARDER_WRITE_BEHIND_BYTES`, 256 MiB).
    pub write_behind_bytes: u64,
    /// Where time comes from (the monotonic clock; tests pass a [`ManualClock`]).
    pub clock: Clock,
    /// A `larder master` to join (`LARDER_MASTER`, `host:port`; empty or `embedded`:
    /// none). `None`, the default, is the embedded store: master and node in this
    /// process. With a master the process is a member of that cluster: it contributes
    /// `memory_bytes` and, with a storage root, its SSD; its puts and gets go through
    /// the cluster. Only a runtime crate that runs the distributed mode opens it
    /// (larder-tokio); the embedded [`Store`](super::Store) refuses it.
    pub master: Option<String>,
    /// Where a member serves its segment to the cluster (`LARDER_NODE_LISTEN`); `None`: any
    /// free port on every interface, advertised to the master as this host's address on
    /// the route to it.
    pub listen: Option<core::net::SocketAddr>,
    /// A member's node id (`LARDER_NODE_ID`, a number above 0), given rather than kept
    /// under its storage root: members sharing one root (a shared filesystem) each need
    /// their own, the same at every start. `None`: the id kept in
    /// `<root>/<cluster>/node-id` (a new one every run without a root). The embedded
    /// store's directory is `node`'s.
    pub node_id: Option<NodeId>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            memory_bytes: DEFAULT_MEMORY_BYTES,
            storage_root: None,
            cluster: String::from("default"),
            node: NodeId(1),
            max_disk_bytes: None,
            lease_ttl: core::time::Duration::from_secs(10),
            high_watermark: 0.9,
            low_watermark: 0.8,
            direct_io: DirectIo::Auto,
            write_behind_bytes: 256 << 20,
            clock: Clock::System,
            master: None,
            listen: None,
            node_id: None,
        }
    }
}

/// A configuration value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A size that does not parse.
    #[error("{name}: {value:?} is not a size (examples: 65536, 64KiB, 512MiB, 2GiB)")]
    BadSize {
        /// The setting.
        name: String,
        /// What it was set to.
        value: String,
    },
    /// A value outside what the store accepts.
    #[error("{name}: {reason}")]
    Invalid {
        /// The setting.
        name: String,
        /// Why.
        reason: &'static str,
    },
}

impl StoreConfig {
    /// The defaults with `LARDER_MEMORY_BYTES`, `LARDER_STORAGE_ROOT`, `LARDER_CLUSTER`,
    /// `LARDER_MAX_DISK_BYTES`, `LARDER_WRITE_BEHIND_BYTES`, `LARDER_MASTER`,
    /// `LARDER_NODE_LISTEN` and `LARDER_NODE_ID` applied.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::default().with_env(|name| std::env::var(name).ok())
    }

    /// Applies variables looked up by `var` (testable without touching the process
    /// environment).
    pub fn with_env(mut self, var: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        if let Some(v) = var("LARDER_MEMORY_BYTES") {
            self.memory_bytes = parse_size("LARDER_MEMORY_BYTES", &v)?;
        }
        if let Some(v) = var("LARDER_STORAGE_ROOT").filter(|v| !v.is_empty()) {
            self.storage_root = Some(PathBuf::from(v));
        }
        if let Some(v) = var("LARDER_CLUSTER") {
            self.cluster = v;
        }
        if let Some(v) = var("LARDER_MAX_DISK_BYTES") {
            self.max_disk_bytes = Some(parse_size("LARDER_MAX_DISK_BYTES", &v)?);
        }
        if let Some(v) = var("LARDER_WRITE_BEHIND_BYTES") {
            self.write_behind_bytes = parse_size("LARDER_WRITE_BEHIND_BYTES", &v)?;
        }
        if let Some(v) = var("LARDER_MASTER") {
            let v = v.trim();
            self.master = (!v.is_empty() && v != "embedded").then(|| v.into());
        }
        if let Some(v) = var("LARDER_NODE_LISTEN").filter(|v| !v.trim().is_empty()) {
            let listen = v.trim().parse().map_err(|_| ConfigError::Invalid {
                name: "LARDER_NODE_LISTEN".into(),
                reason: "must be an IP address and port, e.g. 0.0.0.0:50052",
            })?;
            self.listen = Some(listen);
        }
        if let Some(v) = var("LARDER_NODE_ID").filter(|v| !v.trim().is_empty()) {
            let id = v.trim().parse::<u64>().ok().filter(|id| *id > 0).ok_or_else(|| {
                ConfigError::Invalid { name: "LARDER_NODE_ID".into(), reason: "must be a number above 0" }
            })?;
            self.node_id = Some(NodeId(id));
        }
        self.validate()?;
        Ok(self)
    }

    /// Checks the values against each other.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |name: &str, reason| Err(ConfigError::Invalid { name: name.into(), reason });
        // A member of a cluster may contribute nothing (a pure client); a store of its
        // own needs room.
        let pure_client = self.master.is_some() && self.memory_bytes == 0;
        if self.memory_bytes < 1 << 20 && !pure_client {
            return invalid("memory_bytes", "must be at least 1 MiB (0 only with a master: a pure client)");
        }
        if let Some(master) = &self.master {
            if master
                .rsplit_once(':')
                .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
            {
                return invalid("master", "must be host:port, e.g. 127.0.0.1:50051");
            }
        }
        if usize::try_from(self.memory_bytes).is_err() {
            return invalid("memory_bytes", "does not fit in this machine's address space");
        }
        if usize::try_from(self.write_behind_bytes).is_err() {
            return invalid("write_behind_bytes", "does not fit in this machine's address space");
        }
        if !(0.0 < self.low_watermark
            && self.low_watermark < self.high_watermark
            && self.high_watermark <= 1.0)
        {
            return invalid("watermarks", "need 0 < low < high <= 1");
        }
        Ok(())
    }
}

/// Parses `65536`, `64KiB`, `64K`, `512MiB`, `2GiB`, `1TiB` (binary units; `KB`, `MB`,
/// `GB` are read as binary too, as `dd` and most storage tools do).
pub fn parse_size(name: &str, value: &str) -> Result<u64, ConfigError> {
    let bad = || ConfigError::BadSize { name: name.into(), value: value.into() };
    let v = value.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (digits, unit) = v.split_at(split);
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(bad()),
    };
    n.checked_mul(1 << shift).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use std::string::ToString;

    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("x", "65536"), Ok(65536));
        assert_eq!(parse_size("x", "64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("x", "512 MiB"), Ok(512 << 20));
        assert_eq!(parse_size("x", "2g"), Ok(2 << 30));
        for bad in ["", "MiB", "12XB", "-1", "99999999999999999999TiB"] {
            assert!(matches!(parse_size("x", bad), Err(ConfigError::BadSize { .. })), "{bad}");
        }
    }

    #[test]
    fn the_environment_overrides_the_defaults() {
        let env = |name: &str| match name {
            "LARDER_MEMORY_BYTES" => Some("64MiB".into()),
            "LARDER_STORAGE_ROOT" => Some("/srv/larder".into()),
            "LARDER_MAX_DISK_BYTES" => Some("10GiB".into()),
            _ => None,
        };
        let c = StoreConfig::default().with_env(env).unwrap();
        assert_eq!(c.memory_bytes, 64 << 20);
        assert_eq!(c.storage_root, Some(PathBuf::from("/srv/larder")));
        assert_eq!(c.max_disk_bytes, Some(10 << 30));
        assert_eq!(c.cluster, "default");
    }

    #[test]
    fn bad_values_are_named() {
        let err = StoreConfig::default().with_env(|n| (n == "LARDER_MEMORY_BYTES").then(|| "lots".into()));
        assert_eq!(
            err.unwrap_err().to_string(),
            "LARDER_MEMORY_BYTES: \"lots\" is not a size (examples: 65536, 64KiB, 512MiB, 2GiB)"
        );
        let tiny = StoreConfig { memory_bytes: 4096, ..StoreConfig::default() };
        assert!(matches!(tiny.validate(), Err(ConfigError::Invalid { .. })));
    }

    #[test]
    fn a_master_makes_a_member_and_only_a_member_may_contribute_no_memory() {
        let env = |master: &'static str| {
            move |name: &str| match name {
                "LARDER_MASTER" => Some(master.into()),
                "LARDER_MEMORY_BYTES" => Some("0".into()),
                "LARDER_NODE_LISTEN" => Some("0.0.0.0:50052".into()),
                "LARDER_NODE_ID" => Some("42".into()),
                _ => None,
            }
        };
        let member = StoreConfig::default().with_env(env("10.0.0.7:50051")).unwrap();
        assert_eq!(member.master.as_deref(), Some("10.0.0.7:50051"));
        assert_eq!(member.memory_bytes, 0);
        assert_eq!(member.listen, Some("0.0.0.0:50052".parse().unwrap()));
        assert_eq!(member.node_id, Some(NodeId(42)));
        let named = StoreConfig::default().with_env(env("master.local:50051")).unwrap();
        assert_eq!(named.master.as_deref(), Some("master.local:50051"));
        // "embedded" (Mooncake's word) and "" mean no master: then 0 bytes is refused.
        for embedded in ["embedded", ""] {
            let err = StoreConfig::default().with_env(env(embedded)).unwrap_err();
            assert!(matches!(&err, ConfigError::Invalid { name, .. } if name == "memory_bytes"), "{err}");
        }
        for bad in ["10.0.0.7", "10.0.0.7:port", ":50051", "10.0.0.7:70000"] {
            let err = StoreConfig::default().with_env(env(bad)).unwrap_err();
            assert!(matches!(&err, ConfigError::Invalid { name, .. } if name == "master"), "{bad}: {err}");
        }
        let bad_listen = StoreConfig::default()
            .with_env(|n: &str| (n == "LARDER_NODE_LISTEN").then(|| "anywhere".into()))
            .unwrap_err();
        assert!(matches!(&bad_listen, ConfigError::Invalid { name, .. } if name == "LARDER_NODE_LISTEN"));
        for bad in ["0", "-1", "node7"] {
            let err = StoreConfig::default().with_env(|n: &str| (n == "LARDER_NODE_ID").then(|| bad.into()));
            assert!(
                matches!(&err, Err(ConfigError::Invalid { name, .. }) if name == "LARDER_NODE_ID"),
                "{bad}: {err:?}"
            );
        }
    }
}
