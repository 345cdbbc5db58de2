//! `larder bench --master ADDR`: the bench's workload as a client of a cluster.
//!
//! Puts every value through the cluster, flushes (everything durable on the nodes'
//! SSD), reads everything back verified, and reads it all again; the same table and
//! JSON as the embedded bench. The bench contributes memory (an in-process node) only
//! with `--memory`, and is then a member whose puts go to its own segment first, in
//! memory; otherwise every byte crosses the network to the cluster's nodes.

use std::sync::Arc;
use std::time::Instant;

use indicatif::MultiProgress;
use larder_tokio::cluster::{NodeServerConfig, RemoteStore};

use super::bench::{Hits, Summary, bar, for_all, key, phase, print_table, value, verify};
use super::config::{BenchConfig, ClusterBench};

pub(crate) async fn run(config: BenchConfig) -> Result<(), String> {
    let cluster = config.cluster.clone().expect("a cluster bench has a master");
    let summary = phases(&config, &cluster).await?;
    if config.json {
        println!("{}", serde_json::to_string_pretty(&summary).expect("summary serializes"));
    } else {
        print_table(&summary);
    }
    Ok(())
}

async fn phases(c: &BenchConfig, cluster: &ClusterBench) -> Result<Summary, String> {
    let timeout = std::time::Duration::from_secs(10);
    let (connecting, own_node) = match cluster.memory_bytes {
        Some(memory) => {
            // A member: its own node, whose segment its puts go to first, in memory.
            let node = NodeServerConfig {
                master: cluster.master,
                listen: "127.0.0.1:0".parse().expect("an address"),
                cluster: cluster.cluster,
                memory_bytes: memory,
                storage_root: cluster.storage_root.clone(),
                node_id: None,
                tier: Default::default(),
                rdma: None,
            };
            let node = larder_tokio::cluster::node::start(node)
                .await
                .map_err(|e| format!("contributing memory: {e}"))?;
            if !node.wait_registered(timeout).await {
                return Err(format!("master {}: the bench's segment was not registered", cluster.master));
            }
            let store = RemoteStore::connect_as(
                cluster.master,
                cluster.cluster,
                node.node,
                node.incarnation,
                timeout,
            )
            .await
            .map(|r| r.with_local_segment(node.local_segment()));
            (store, Some(node))
        }
        None => (RemoteStore::connect(cluster.master, cluster.cluster, timeout).await, None),
    };
    let store = Arc::new(connecting.map_err(|e| format!("master {}: {e}", cluster.master))?);
    let total = c.count * c.value_size as u64;
    let bars = MultiProgress::new();
    let mut phases = Vec::new();
    let start = Instant::now();
    for_all(&store, c, bars.add(bar(c.count, "put")), |store, i, len| async move {
        store
            .put_bytes(&key(i), bytes::Bytes::from(value(i, len)), 1)
            .await
            .map_err(|e| format!("put {i}: {e}"))
    })
    .await?;
    phases.push(phase("put (memory; SSD behind)", start.elapsed(), total));
    let start = Instant::now();
    store.flush().await.map_err(|e| format!("flush: {e}"))?;
    phases.push(phase("flush (all durable on SSD)", start.elapsed(), 0));
    let (first_read, elapsed) = read_all(&store, c, &bars, "read + verify").await?;
    phases.push(phase("read back, verified", elapsed, total));
    let (second_read, elapsed) = read_all(&store, c, &bars, "read again").await?;
    phases.push(phase("read again, verified", elapsed, total));
    if !c.keep {
        let start = Instant::now();
        for_all(&store, c, bars.add(bar(c.count, "remove")), |store, i, _| async move {
            store.remove(&key(i), true).await.map_err(|e| format!("remove {i}: {e}"))
        })
        .await?;
        phases.push(phase("remove", start.elapsed(), 0));
    }
    if let Some(node) = own_node {
        // Leaves the cluster at once rather than by the node TTL, so that no later put is
        // placed in a segment that is gone.
        store.unmount(node.segment).await.map_err(|e| format!("withdrawing the bench's segment: {e}"))?;
        node.stop().await.map_err(|e| format!("stopping the bench's node: {e}"))?;
    }
    Ok(Summary {
        value_size: c.value_size,
        count: c.count,
        working_set_bytes: total,
        memory_bytes: cluster.memory_bytes.unwrap_or(0),
        storage_root: cluster.storage_root.as_ref().map(|r| r.display().to_string()).unwrap_or_default(),
        tasks: c.tasks,
        phases,
        first_read,
        read_after_reopen: second_read,
        evicted_to_ssd: 0,
        puts_waited_for_ssd: 0,
        recovered_objects: 0,
        bytes_verified: 2 * total,
        bytes_on_ssd: 0,
        buckets: 0,
        io_driver: String::new(),
        direct_io: false,
        master: Some(cluster.master.to_string()),
    })
}

/// Reads every object back with `tasks` in flight, comparing every byte.
async fn read_all(
    store: &Arc<RemoteStore>,
    c: &BenchConfig,
    bars: &MultiProgress,
    label: &'static str,
) -> Result<(Hits, std::time::Duration), String> {
    let before = store.stats();
    let start = Instant::now();
    for_all(store, c, bars.add(bar(c.count, label)), |store, i, len| async move {
        let got = store.get(&key(i)).await.map_err(|e| format!("get {i}: {e}"))?;
        verify(i, len, &got)
    })
    .await?;
    let elapsed = start.elapsed();
    let after = store.stats();
    let hits = Hits {
        memory: after.memory_reads - before.memory_reads,
        ssd: after.disk_reads - before.disk_reads,
        promoted_to_memory: 0,
    };
    Ok((hits, elapsed))
}
