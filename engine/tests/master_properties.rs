//! Property tests: random operation sequences against the master, checked by the
//! simulator's model (see `larder_engine::master::sim`).

use larder_engine::master::sim::{Cluster, Op};
use larder_engine::master::{MasterConfig, PersistPolicy};
use proptest::prelude::*;

fn op() -> impl Strategy<Value = Op> {
    let node = 0u8..4;
    let key = 0u8..12;
    prop_oneof![
        6 => (node.clone(), key.clone(), 0u16..200, 0u8..3)
            .prop_map(|(node, key, size_kib, replicas)| Op::PutStart { node, key, size_kib, replicas }),
        6 => (key.clone(), prop::bool::weighted(0.1)).prop_map(|(key, by_other_node)| Op::PutEnd { key, by_other_node }),
        1 => key.clone().prop_map(|key| Op::PutRevoke { key }),
        4 => key.clone().prop_map(|key| Op::Get { key }),
        2 => key.clone().prop_map(|key| Op::Exists { key }),
        2 => (key.clone(), any::<bool>()).prop_map(|(key, force)| Op::Remove { key, force }),
        1 => prop::bool::weighted(0.3).prop_map(|force| Op::RemoveAll { force }),
        1 => (node.clone(), 0u16..1024).prop_map(|(node, size_kib)| Op::Mount { node, size_kib }),
        1 => node.clone().prop_map(|node| Op::Unmount { node }),
        3 => node.clone().prop_map(|node| Op::Ping { node }),
        1 => node.clone().prop_map(|node| Op::Restart { node }),
        1 => node.clone().prop_map(|node| Op::Stop { node }),
        3 => (0u16..4000).prop_map(|millis| Op::Advance { millis }),
        5 => (node.clone(), prop::bool::weighted(0.1)).prop_map(|(node, fail_persists)| Op::Deliver { node, fail_persists }),
        1 => (key, any::<i8>(), any::<bool>())
            .prop_map(|(key, version_offset, recovered)| Op::ForgeDiskReplica { key, version_offset, recovered }),
        2 => Just(Op::Flush),
    ]
}

fn run(config: MasterConfig, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut cluster = Cluster::new(config, 4, 12, 1024).map_err(|v| TestCaseError::fail(v.0))?;
    for op in ops {
        cluster.apply(op).map_err(|v| TestCaseError::fail(v.0))?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn write_behind_keeps_every_invariant(ops in prop::collection::vec(op(), 1..400)) {
        run(MasterConfig::default(), ops)?;
    }

    #[test]
    fn offload_on_evict_keeps_every_invariant(ops in prop::collection::vec(op(), 1..400)) {
        run(MasterConfig { persist: PersistPolicy::OnEvict, ..MasterConfig::default() }, ops)?;
    }

    #[test]
    fn memory_only_keeps_every_invariant(ops in prop::collection::vec(op(), 1..400)) {
        let config = MasterConfig { persist: PersistPolicy::Off, high_watermark: 0.7, low_watermark: 0.5, ..MasterConfig::default() };
        run(config, ops)?;
    }
}
