//! Store settings by name, as text: what a foreign caller has (a C string, a Python
//! keyword argument, an environment variable). One parser for every face.

use std::path::PathBuf;

use larder_engine::disk::DirectIo;
use larder_tokio::{ConfigError, StoreConfig, parse_size};

/// The names [`apply_setting`] knows, for error messages and help.
pub const SETTINGS: &[&str] = &[
    "memory",
    "storage_root",
    "master",
    "cluster",
    "lease_ttl",
    "max_disk_bytes",
    "write_behind_bytes",
    "high_watermark",
    "low_watermark",
    "direct_io",
];

/// The reason given for a name that is not one of [`SETTINGS`].
static UNKNOWN_SETTING: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("unknown setting (known: {})", SETTINGS.join(", ")));

/// The defaults with every `LARDER_*` variable [`StoreConfig::from_env`] reads applied,
/// and `LARDER_LEASE_TTL` (a duration such as `500ms`, as Mooncake's
/// `--default_kv_lease_ttl`).
pub fn config_from_env() -> Result<StoreConfig, ConfigError> {
    let mut config = StoreConfig::from_env()?;
    if let Some(ttl) = std::env::var("LARDER_LEASE_TTL").ok().filter(|v| !v.trim().is_empty()) {
        config.lease_ttl = parse_duration("LARDER_LEASE_TTL", &ttl)?;
    }
    Ok(config)
}

/// Sets the setting `name` of `config` from its text: sizes as `512MiB`, durations as
/// `500ms` or `10s`, `storage_root` and `master` empty for none.
///
/// Errors: `Invalid` for an unknown name or a value out of range, `BadSize` for a size
/// that does not parse. The configuration as a whole is checked when it is opened.
pub fn apply_setting(config: &mut StoreConfig, name: &str, value: &str) -> Result<(), ConfigError> {
    let invalid = |reason| ConfigError::Invalid { name: name.into(), reason };
    match name {
        "memory" | "memory_bytes" => config.memory_bytes = parse_size(name, value)?,
        "storage_root" => {
            config.storage_root = (!value.trim().is_empty()).then(|| PathBuf::from(value));
        }
        "master" => {
            let v = value.trim();
            config.master = (!v.is_empty() && v != "embedded").then(|| v.into());
        }
        "cluster" => config.cluster = value.into(),
        "lease_ttl" => config.lease_ttl = parse_duration(name, value)?,
        "max_disk_bytes" => {
            let bytes = parse_size(name, value)?;
            config.max_disk_bytes = (bytes > 0).then_some(bytes);
        }
        "write_behind_bytes" => config.write_behind_bytes = parse_size(name, value)?,
        "high_watermark" => {
            config.high_watermark = parse_fraction(value).ok_or(invalid("must be a number"))?
        }
        "low_watermark" => config.low_watermark = parse_fraction(value).ok_or(invalid("must be a number"))?,
        "direct_io" => {
            config.direct_io = match value.trim() {
                "auto" | "on" | "true" | "1" => DirectIo::Auto,
                "never" | "off" | "false" | "0" => DirectIo::Never,
                _ => return Err(invalid("must be auto or never")),
            }
        }
        _ => return Err(invalid(UNKNOWN_SETTING.as_str())),
    }
    Ok(())
}

fn parse_fraction(value: &str) -> Option<f64> {
    value.trim().parse().ok()
}

/// A duration such as `500ms`, `10s`, `1m 30s`.
pub fn parse_duration(name: &str, value: &str) -> Result<core::time::Duration, ConfigError> {
    humantime::parse_duration(value.trim()).map_err(|_| ConfigError::Invalid {
        name: name.into(),
        reason: "must be a duration, e.g. 500ms or 10s",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_setting_is_applied() {
        let mut c = StoreConfig::default();
        for (name, value) in [
            ("memory", "64MiB"),
            ("storage_root", "/srv/larder"),
            ("master", "10.0.0.1:50051"),
            ("cluster", "prod"),
            ("lease_ttl", "500ms"),
            ("max_disk_bytes", "1GiB"),
            ("write_behind_bytes", "32MiB"),
            ("high_watermark", "0.95"),
            ("low_watermark", "0.5"),
            ("direct_io", "never"),
        ] {
            assert!(SETTINGS.contains(&name), "{name} is listed");
            apply_setting(&mut c, name, value).unwrap();
        }
        assert_eq!(c.memory_bytes, 64 << 20);
        assert_eq!(c.storage_root, Some(PathBuf::from("/srv/larder")));
        assert_eq!(c.master.as_deref(), Some("10.0.0.1:50051"));
        assert_eq!(c.cluster, "prod");
        assert_eq!(c.lease_ttl, core::time::Duration::from_millis(500));
        assert_eq!(c.max_disk_bytes, Some(1 << 30));
        assert_eq!(c.write_behind_bytes, 32 << 20);
        assert_eq!((c.high_watermark, c.low_watermark), (0.95, 0.5));
        assert_eq!(c.direct_io, DirectIo::Never);
        for (name, none) in [("master", "embedded"), ("master", ""), ("storage_root", "")] {
            apply_setting(&mut c, name, none).unwrap();
        }
        assert_eq!((c.master, c.storage_root), (None, None));
    }

    #[test]
    fn unknown_names_and_bad_values_are_typed_errors() {
        let mut c = StoreConfig::default();
        match apply_setting(&mut c, "memroy", "1GiB") {
            Err(ConfigError::Invalid { reason, .. }) => {
                assert!(SETTINGS.iter().all(|name| reason.contains(name)), "{reason} names every setting")
            }
            other => panic!("an unknown name is Invalid, not {other:?}"),
        }
        assert!(matches!(apply_setting(&mut c, "memory", "lots"), Err(ConfigError::BadSize { .. })));
        assert!(matches!(apply_setting(&mut c, "lease_ttl", "soon"), Err(ConfigError::Invalid { .. })));
        assert!(matches!(apply_setting(&mut c, "low_watermark", "x"), Err(ConfigError::Invalid { .. })));
        assert_eq!(c.memory_bytes, StoreConfig::default().memory_bytes, "a failed setting changes nothing");
    }
}
