//! The Store behaviour suite (../../behaviour/store.rs) on tokio.

#[macro_use]
#[path = "../../behaviour/store.rs"]
mod suite;

use larder_engine::embedded::{StoreConfig, StoreError};

#[derive(Clone)]
struct Tokio;

impl suite::Harness for Tokio {
    type R = larder_tokio::TokioRuntime;
    fn open(
        &self,
        config: StoreConfig,
    ) -> impl Future<Output = Result<larder_tokio::EmbeddedStore, StoreError>> + Send {
        larder_tokio::open_embedded(config)
    }
}

fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap().block_on(f)
}

store_behaviour_tests!(Tokio, block_on);
