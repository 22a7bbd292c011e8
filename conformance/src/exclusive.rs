//! Checks that act on a whole driver rather than on one prefix, so they
//! need a driver (an S3 root directory, a filesystem root) that no other
//! test uses at the same time. A driver crate calls each from a test of
//! its own with such a driver.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use driver_core::{ErrorKind, StorageDriver, StoragePath};

use crate::support::{expect_kind, random_bytes};

fn path(name: &str) -> StoragePath {
    StoragePath::parse(&format!("/purge/{name}")).expect("valid path")
}

/// [`StorageDriver::purge_writers`]: writers closed or abandoned before the
/// cut-off vanish (append finds nothing to resume), later ones stay
/// resumable, committed files are untouched, and a second purge finds
/// nothing. The abandoned writer wrote 6 MiB, more than one S3 part, so it
/// leaves a multipart upload behind.
pub async fn purge_writers(driver: &dyn StorageDriver) {
    let hour = Duration::from_secs(3600);
    driver
        .put_content(&path("kept"), Bytes::from_static(b"committed"))
        .await
        .expect("put");
    let mut closed = driver.writer(&path("closed"), false).await.expect("writer");
    closed
        .write(Bytes::from_static(b"abc"))
        .await
        .expect("write");
    closed.close().await.expect("close");
    let mut abandoned = driver
        .writer(&path("abandoned"), false)
        .await
        .expect("writer");
    abandoned
        .write(random_bytes(1, 6 << 20))
        .await
        .expect("write");
    // Dropped without close, commit or cancel, as a crashed process would.
    drop(abandoned);

    let purged = driver
        .purge_writers(SystemTime::now() - hour)
        .await
        .expect("purge");
    assert_eq!(purged, 0, "writers younger than the cut-off are kept");
    let mut resumed = driver.writer(&path("closed"), true).await.expect("resume");
    assert_eq!(resumed.size(), 3, "a kept writer still resumes");
    resumed.close().await.expect("close again");

    let purged = driver
        .purge_writers(SystemTime::now() + hour)
        .await
        .expect("purge");
    assert!(purged >= 2, "both writers count as purged, got {purged}");
    for name in ["closed", "abandoned"] {
        expect_kind(
            driver.writer(&path(name), true).await.map(|_| ()),
            ErrorKind::PathNotFound,
            &format!("append to the purged writer {name}"),
        );
    }
    assert_eq!(
        driver.get_content(&path("kept")).await.expect("get"),
        "committed",
        "committed files survive a purge"
    );
    let again = driver
        .purge_writers(SystemTime::now() + hour)
        .await
        .expect("purge");
    assert_eq!(again, 0, "nothing is left to purge");
    driver.delete(&path("kept")).await.expect("delete");
}
