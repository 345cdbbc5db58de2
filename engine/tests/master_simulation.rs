//! A deterministic multi-node simulation with virtual time.
//!
//! Four nodes (two with an SSD tier) ping once a second; readers take leases that
//! expire; now and then a node goes silent long enough to be expired and comes back
//! with a new incarnation, or unmounts and remounts a segment; persists are delivered
//! late or fail. The simulator checks every property after every step (see
//! `larder_engine::master::sim`); the run must also show that it exercised what it
//! claims to.

use larder_engine::master::sim::{Cluster, Op, SimStats};
use larder_engine::master::{MasterConfig, PersistPolicy};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const NODES: u8 = 4;
const KEYS: u8 = 48;
const STEPS: usize = 40_000;

fn simulate(seed: u64, config: MasterConfig) -> SimStats {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut cluster = Cluster::new(config, NODES, KEYS, 4096).expect("cluster");
    // Virtual milliseconds until each node's next ping, and until a silent node returns.
    let mut next_ping = [0i64; NODES as usize];
    let mut silent_until = [None::<i64>; NODES as usize];
    let mut now = 0i64;
    for _ in 0..STEPS {
        let step = rng.random_range(5..120);
        now += step;
        let mut ops = vec![Op::Advance { millis: step as u16 }];
        for n in 0..NODES {
            let i = usize::from(n);
            match silent_until[i] {
                Some(t) if now >= t => {
                    silent_until[i] = None;
                    ops.push(Op::Restart { node: n });
                }
                Some(_) => continue,
                None if rng.random_ratio(1, 6000) => {
                    // Silent for longer than the 10 s TTL.
                    silent_until[i] = Some(now + rng.random_range(11_000..20_000));
                    ops.push(Op::Stop { node: n });
                    continue;
                }
                None => {}
            }
            if now >= next_ping[i] {
                next_ping[i] = now + 1000;
                ops.push(Op::Ping { node: n });
            }
            if rng.random_ratio(1, 4) {
                ops.push(Op::Deliver { node: n, fail_persists: rng.random_ratio(1, 50) });
            }
        }
        let key = rng.random_range(0..KEYS);
        let node = rng.random_range(0..NODES);
        ops.push(match rng.random_range(0..100) {
            0..30 => Op::PutStart { node, key, size_kib: rng.random_range(64..512), replicas: 1 },
            30..35 => Op::PutStart { node, key, size_kib: rng.random_range(64..256), replicas: 2 },
            35..62 => Op::PutEnd { key, by_other_node: rng.random_ratio(1, 40) },
            62..64 => Op::PutRevoke { key },
            64..82 => Op::Get { key },
            82..86 => Op::Exists { key },
            86..93 => Op::Remove { key, force: rng.random_ratio(1, 5) },
            93 if rng.random_ratio(1, 20) => Op::RemoveAll { force: rng.random_ratio(1, 3) },
            94 if rng.random_ratio(1, 10) => Op::Unmount { node },
            95 if rng.random_ratio(1, 10) => Op::Mount { node, size_kib: 4096 },
            96..98 => Op::ForgeDiskReplica { key, version_offset: rng.random(), recovered: rng.random() },
            98 => Op::Flush,
            _ => Op::Exists { key },
        });
        for op in ops {
            if let Err(violation) = cluster.apply(op) {
                panic!("seed {seed}: {violation}\nstats: {:?}", cluster.stats());
            }
        }
    }
    cluster.stats()
}

#[test]
fn write_behind_cluster_with_expiring_leases_silent_nodes_and_unmounts() {
    let mut total = SimStats::default();
    for seed in 1..=3 {
        let s = simulate(seed, MasterConfig::default());
        total.nodes_expired += s.nodes_expired;
        total.unmounts += s.unmounts;
        total.recovered += s.recovered;
        total.recoveries_refused += s.recoveries_refused;
        total.refused_for_lease += s.refused_for_lease;
        total.gets_from_disk += s.gets_from_disk;
        total.persisted += s.persisted;
        total.forgeries += s.forgeries;
        total.puts_ended += s.puts_ended;
        total.flushes_durable += s.flushes_durable;
        total.flushes_not_durable += s.flushes_not_durable;
    }
    eprintln!("{total:?}");
    assert!(total.puts_ended > 1000, "{total:?}");
    assert!(total.nodes_expired > 0, "no node ever expired: {total:?}");
    assert!(total.unmounts > 0, "no segment was unmounted: {total:?}");
    assert!(total.persisted > 100 && total.recovered > 0, "{total:?}");
    assert!(total.recoveries_refused > 0, "no stale recovery was refused: {total:?}");
    assert!(total.refused_for_lease > 0, "no lease ever blocked a remove: {total:?}");
    assert!(total.gets_from_disk > 0, "no read was served from disk only: {total:?}");
    assert!(total.forgeries > 0, "{total:?}");
    assert!(total.flushes_durable > 0, "no flush was ever answered durable: {total:?}");
    assert!(total.flushes_not_durable > 0, "no flush ever met a failed persist: {total:?}");
}

#[test]
fn memory_only_cluster_evicts_under_pressure() {
    let config = MasterConfig { persist: PersistPolicy::Off, ..MasterConfig::default() };
    let s = simulate(7, config);
    assert!(s.evicted > 0, "{s:?}");
    assert!(s.nodes_expired > 0, "{s:?}");
}

#[test]
fn offload_on_evict_cluster() {
    let config = MasterConfig { persist: PersistPolicy::OnEvict, ..MasterConfig::default() };
    let s = simulate(11, config);
    assert!(s.persisted > 0, "{s:?}");
    assert!(s.gets_from_disk > 0, "{s:?}");
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let config = MasterConfig { persist: PersistPolicy::OnEvict, ..MasterConfig::default() };
    assert_eq!(simulate(5, config.clone()), simulate(5, config));
}
