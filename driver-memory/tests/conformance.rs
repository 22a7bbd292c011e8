//! The whole conformance suite against the in-memory driver.

use std::sync::Arc;

use driver_core::StorageDriver;
use driver_memory::MemoryDriver;

async fn driver() -> Option<(Arc<dyn StorageDriver>, ())> {
    Some((Arc::new(MemoryDriver::new()), ()))
}

conformance::conformance_tests!(driver);

#[tokio::test]
async fn purge_writers() {
    conformance::exclusive::purge_writers(&MemoryDriver::new()).await;
}
