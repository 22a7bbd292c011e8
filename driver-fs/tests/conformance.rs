//! The whole conformance suite against the filesystem driver, in a fresh
//! temporary root per case, or under `FS_ROOT_DIRECTORY` when it is set.

use std::sync::Arc;

use driver_core::StorageDriver;
use driver_fs::{FsConfig, FsDriver};
use tempfile::TempDir;

async fn driver() -> Option<(Arc<dyn StorageDriver>, Option<TempDir>)> {
    let (config, guard) = match FsConfig::from_env().expect("FS_* variables") {
        Some(config) => (config, None),
        None => {
            let dir = TempDir::new().expect("temporary directory");
            let config = FsConfig::at(dir.path());
            (config, Some(dir))
        }
    };
    let driver = FsDriver::open(&config).expect("open the filesystem driver");
    Some((Arc::new(driver), guard))
}

conformance::conformance_tests!(driver);

/// On a root of its own; the staging directories are gone afterwards.
#[tokio::test]
async fn purge_writers() {
    let dir = TempDir::new().expect("temporary directory");
    let driver = FsDriver::open(&FsConfig::at(dir.path())).expect("open the filesystem driver");
    conformance::exclusive::purge_writers(&driver).await;
    let staged = std::fs::read_dir(dir.path().join("@writers")).expect("@writers");
    assert_eq!(staged.count(), 0, "no staging directory is left");
}
