//! The master's Prometheus metrics and the HTTP endpoint that serves them
//! (`/metrics` in the text format, `/health`).

use std::net::SocketAddr;
use std::sync::Arc;

use larder_engine::master::{DiskUsage, DropReason, MasterStats};
use larder_engine::net::{CloseReason, RefusalReason};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TierLabel {
    tier: &'static str,
}

/// Everything the master counts.
#[derive(Debug, Default)]
pub(crate) struct MasterMetrics {
    requests: Family<OpLabel, Counter>,
    failures: Family<OpLabel, Counter>,
    objects: Gauge,
    nodes: Gauge,
    segments: Gauge,
    segments_restoring: Gauge,
    capacity_bytes: Family<TierLabel, Gauge>,
    used_bytes: Family<TierLabel, Gauge>,
    evicted: Family<ReasonLabel, Counter>,
    dropped: Family<ReasonLabel, Counter>,
    persists_requested: Counter,
    disk_replicas: Gauge,
    crc_failures: Counter,
    persist_retries: Gauge,
    tombstones: Gauge,
    quarantined_bytes: Gauge,
    connections: Gauge,
    refused: Family<ReasonLabel, Counter>,
    commands_unacked: Gauge,
    last: std::sync::Mutex<MasterStats>,
}

impl MasterMetrics {
    /// The metrics, and a registry that names them.
    pub(crate) fn new() -> (Arc<Self>, Registry) {
        let metrics = Arc::new(Self::default());
        let mut r = Registry::with_prefix("larder_master");
        let m = &metrics;
        r.register("requests", "Requests handled, by operation", m.requests.clone());
        r.register("request_failures", "Requests refused, by operation", m.failures.clone());
        r.register("objects", "Objects in the table", m.objects.clone());
        r.register("nodes", "Registered nodes", m.nodes.clone());
        r.register("segments", "Mounted memory segments", m.segments.clone());
        r.register(
            "segments_restoring",
            "Segments whose node is naming what they held under an earlier master run",
            m.segments_restoring.clone(),
        );
        r.register("capacity_bytes", "Bytes of capacity, by tier", m.capacity_bytes.clone());
        r.register("used_bytes", "Bytes in use, by tier", m.used_bytes.clone());
        r.register("evicted_objects", "Objects evicted from memory, by outcome", m.evicted.clone());
        r.register("dropped_objects", "Objects dropped, by reason", m.dropped.clone());
        r.register("persists_requested", "Persist commands issued", m.persists_requested.clone());
        r.register("disk_replicas", "Readable disk replicas across nodes", m.disk_replicas.clone());
        r.register(
            "crc_failures",
            "Bytes found not matching their CRC32C, as nodes and clients reported (never returned)",
            m.crc_failures.clone(),
        );
        r.register(
            "persist_retries",
            "Objects whose failed persist is being retried",
            m.persist_retries.clone(),
        );
        r.register("tombstones", "Disk records awaiting their node's deletion", m.tombstones.clone());
        r.register(
            "quarantined_bytes",
            "Memory of removed objects held back from reuse until their leases pass",
            m.quarantined_bytes.clone(),
        );
        r.register("connections", "Open connections that passed the handshake", m.connections.clone());
        r.register(
            "refused_connections",
            "Connections refused or closed for bad frames, by reason",
            m.refused.clone(),
        );
        r.register(
            "commands_unacked",
            "Node commands sent and not yet acknowledged",
            m.commands_unacked.clone(),
        );
        (metrics, r)
    }

    pub(crate) fn request(&self, op: &'static str, failed: bool) {
        self.requests.get_or_create(&OpLabel { op }).inc();
        if failed {
            self.failures.get_or_create(&OpLabel { op }).inc();
        }
    }

    /// Counts a connection that closed because it was refused or sent bad frames.
    pub(crate) fn closed(&self, reason: CloseReason) {
        let reason = match reason {
            CloseReason::Refused(RefusalReason::VersionMismatch) => "version_mismatch",
            CloseReason::Refused(RefusalReason::WrongCluster) => "wrong_cluster",
            CloseReason::Refused(RefusalReason::StaleIncarnation) => "stale_incarnation",
            CloseReason::Refused(RefusalReason::RoleNotAccepted) => "role_not_accepted",
            CloseReason::Refused(RefusalReason::ProtocolViolation) => "protocol_violation",
            CloseReason::Refused(_) => "other",
            CloseReason::BadFrame(_) => "bad_frame",
            CloseReason::HandshakeTimeout => "handshake_timeout",
            _ => return,
        };
        self.refused.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub(crate) fn dropped(&self, reason: DropReason) {
        let reason = match reason {
            DropReason::Evicted => "evicted",
            DropReason::NodeLost => "node_lost",
            DropReason::SegmentUnmounted => "segment_unmounted",
            DropReason::DiskReplicaRemoved => "disk_replica_removed",
            DropReason::Preempted => "preempted",
            DropReason::Discarded => "discarded",
        };
        self.dropped.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub(crate) fn set_connections(&self, open: usize, unacked: usize) {
        self.connections.set(i64::try_from(open).unwrap_or(i64::MAX));
        self.commands_unacked.set(i64::try_from(unacked).unwrap_or(i64::MAX));
    }

    /// Takes in a count of the disk tier.
    pub(crate) fn observe_disk(&self, usage: DiskUsage) {
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.disk_replicas.set(gauge(usage.replicas));
        self.used_bytes.get_or_create(&TierLabel { tier: "disk" }).set(gauge(usage.bytes));
    }

    /// Takes in the master's statistics (gauges set, counters moved by the change).
    pub(crate) fn observe(&self, stats: MasterStats) {
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.objects.set(gauge(stats.objects));
        self.nodes.set(gauge(stats.nodes));
        self.segments.set(gauge(stats.segments));
        self.segments_restoring.set(gauge(stats.segments_restoring));
        self.capacity_bytes.get_or_create(&TierLabel { tier: "memory" }).set(gauge(stats.capacity_bytes));
        self.used_bytes.get_or_create(&TierLabel { tier: "memory" }).set(gauge(stats.used_bytes));
        self.persist_retries.set(gauge(stats.persist_retries));
        self.tombstones.set(gauge(stats.tombstones));
        self.quarantined_bytes.set(gauge(stats.quarantined_bytes));
        let mut last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let to_disk = stats.evicted_to_disk.saturating_sub(last.evicted_to_disk);
        self.evicted.get_or_create(&ReasonLabel { reason: "kept_on_disk" }).inc_by(to_disk);
        let dropped = stats.evicted_dropped.saturating_sub(last.evicted_dropped);
        self.evicted.get_or_create(&ReasonLabel { reason: "dropped" }).inc_by(dropped);
        self.persists_requested.inc_by(stats.persists_requested.saturating_sub(last.persists_requested));
        self.crc_failures.inc_by(stats.crc_failures_reported.saturating_sub(last.crc_failures_reported));
        *last = stats;
    }
}

/// Serves `/metrics` and `/health` on `addr` from a thread of its own; returns the
/// address bound (for a port 0).
pub(crate) fn serve_http(addr: SocketAddr, registry: Registry) -> std::io::Result<SocketAddr> {
    let server = tiny_http::Server::http(addr).map_err(std::io::Error::other)?;
    let bound = server.server_addr().to_ip().unwrap_or(addr);
    std::thread::Builder::new().name(String::from("larder-metrics")).spawn(move || {
        for request in server.incoming_requests() {
            let (status, content_type, body) = match request.url() {
                "/metrics" => {
                    let mut text = String::new();
                    match prometheus_client::encoding::text::encode(&mut text, &registry) {
                        Ok(()) => (200, "application/openmetrics-text; version=1.0.0; charset=utf-8", text),
                        Err(e) => (500, "text/plain", e.to_string()),
                    }
                }
                "/health" => (200, "text/plain", String::from("ok\n")),
                _ => (404, "text/plain", String::from("not found: try /metrics or /health\n")),
            };
            let header = tiny_http::Header::from_bytes("Content-Type", content_type).expect("a valid header");
            let response =
                tiny_http::Response::from_string(body).with_status_code(status).with_header(header);
            if let Err(e) = request.respond(response) {
                tracing::debug!("metrics response: {e}");
            }
        }
    })?;
    Ok(bound)
}
