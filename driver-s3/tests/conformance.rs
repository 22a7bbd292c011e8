//! The whole conformance suite against driver-s3 on a real S3 server, found
//! through the environment (`scripts/test.sh` starts Garage and exports it).
//! Without a server the cases print why they skip; with `REQUIRE_S3=1` a
//! missing server fails them instead.

use std::sync::Arc;

use driver_core::StorageDriver;
use driver_s3::{S3Config, S3Driver};

mod common;

async fn driver() -> Option<(Arc<dyn StorageDriver>, ())> {
    let config = common::config_or_skip("conformance")?;
    let config = S3Config {
        // The smallest part size S3 allows, so that the suite's streams span many parts.
        chunk_size: 5 << 20,
        // A low copy threshold exercises multipart copies with the suite's sizes.
        copy_threshold: 6 << 20,
        copy_chunk_size: 5 << 20,
        redirect_expiry_secs: Some(300),
        ..config
    };
    Some((Arc::new(S3Driver::new(config).await.expect("client")), ()))
}

conformance::conformance_tests!(driver);

/// Under a root directory of its own: the purge covers the whole root.
#[tokio::test]
async fn purge_writers() {
    let Some(config) = common::config_or_skip("purge_writers") else {
        return;
    };
    let config = S3Config {
        root_directory: format!("purge-{:016x}", rand::random::<u64>()),
        chunk_size: 5 << 20,
        ..config
    };
    let (bucket, root) = (config.bucket.clone(), config.root_directory.clone());
    let driver = S3Driver::new(config).await.expect("client");
    conformance::exclusive::purge_writers(&driver).await;
    let uploads = driver
        .client()
        .list_multipart_uploads()
        .bucket(bucket)
        .prefix(format!("{root}/"))
        .send()
        .await
        .expect("list uploads");
    assert!(uploads.uploads().is_empty(), "uploads left: {uploads:?}");
}
