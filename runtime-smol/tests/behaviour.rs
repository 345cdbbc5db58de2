//! The Store behaviour suite (../../behaviour/store.rs) on smol.

#[macro_use]
#[path = "../../behaviour/store.rs"]
mod suite;

use larder_engine::embedded::{StoreConfig, StoreError};

#[derive(Clone)]
struct Smol;

impl suite::Harness for Smol {
    type R = larder_smol::SmolRuntime;
    fn open(
        &self,
        config: StoreConfig,
    ) -> impl Future<Output = Result<larder_smol::Store, StoreError>> + Send {
        larder_smol::open(config)
    }
}

store_behaviour_tests!(Smol, smol::block_on);
