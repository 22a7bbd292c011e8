//! kill -9 of the `registry-proxy` binary while 50 cold pulls are in
//! flight, then a restart on the same storage, on the filesystem and on S3
//! (Garage): no blob in storage ever holds bytes other than its digest's,
//! the leftovers of the interrupted fills (staged writers, S3 multipart
//! uploads) are gone after the restart, and every image pulls again.
//! Real parts: Debian's `docker-registry` upstream. Skipped (with the
//! reason printed) without it unless `REQUIRE_E2E=1`; the S3 case needs
//! the S3 variables unless skipped the same way (`REQUIRE_S3=1` in CI).

// Shared by the test binaries and the side-by-side benchmark; each uses a part.
use registry_proxy_testkit as support;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use driver_core::StorageDriver;
use driver_s3::{S3Config, S3Driver};
use registry_proxy::oci::Digest;
use support::{
    Image, docker_registry, fills_settled, have, pull_image, push_image, registry_proxy,
    verify_stored_blobs,
};

const IMAGES: usize = 50;
/// Layer sizes: one below and one above the S3 part size (5 MiB), so that
/// fills on S3 are caught both in a single put and in a multipart upload.
const LAYERS: [usize; 2] = [1 << 20, 6 << 20];

/// Where the cache keeps its content, seen from outside the proxy.
enum Backing {
    Fs(PathBuf),
    S3(Box<S3Config>),
}

impl Backing {
    /// The `storage` block of the proxy's configuration: purging at start
    /// of every writer staged before it.
    fn yaml(&self) -> String {
        let purge = "  maintenance:\n    uploadpurging:\n      age: 0s\n      interval: 24h\n";
        let backend = match self {
            Self::Fs(root) => format!("  filesystem:\n    rootdirectory: {}\n", root.display()),
            Self::S3(s3) => support::s3_storage_yaml(s3, &["chunksize: 5242880"]),
        };
        backend + purge
    }

    async fn driver(&self) -> Arc<dyn StorageDriver> {
        match self {
            Self::Fs(root) => Arc::new(
                driver_fs::FsDriver::open(&driver_fs::FsConfig::at(root)).expect("fs driver"),
            ),
            Self::S3(s3) => Arc::new(S3Driver::new((**s3).clone()).await.expect("s3 driver")),
        }
    }

    /// Staged writers and (S3) multipart uploads in storage.
    async fn leftovers(&self) -> usize {
        match self {
            Self::Fs(root) => ["@writers", "@tmp"]
                .iter()
                .map(|d| count_files(&root.join(d)))
                .sum(),
            Self::S3(s3) => {
                let driver = S3Driver::new((**s3).clone()).await.expect("s3 driver");
                let client = driver.client();
                let prefix = format!("{}/", s3.root_directory);
                let uploads = client
                    .list_multipart_uploads()
                    .bucket(&s3.bucket)
                    .prefix(&prefix)
                    .send()
                    .await
                    .expect("list uploads");
                let records = client
                    .list_objects_v2()
                    .bucket(&s3.bucket)
                    .prefix(format!("{prefix}@writers/"))
                    .send()
                    .await
                    .expect("list records");
                uploads.uploads().len() + records.contents().len()
            }
        }
    }
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .map(|e| {
                if e.path().is_dir() {
                    count_files(&e.path())
                } else {
                    1
                }
            })
            .sum()
    })
}

async fn pull_all(proxy: &str, images: &[Image]) -> Vec<Result<u64, String>> {
    let client = reqwest::Client::new();
    let pulls = images.iter().map(|image| pull_image(&client, proxy, image));
    futures::future::join_all(pulls).await
}

async fn crash_during_cold_pulls(test: &str, backing: Backing) {
    if !have("docker-registry") {
        conformance::skip(test, "REQUIRE_E2E", "docker-registry is not installed");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let upstream = docker_registry(d, "upstream", &d.join("upstream-root"), "");
    let client = reqwest::Client::new();
    let pushes = (0..IMAGES).map(|i| {
        let (client, addr) = (&client, &upstream.addr);
        async move { push_image(client, addr, &format!("crash/app{i}"), i as u64, &LAYERS).await }
    });
    let images = futures::future::join_all(pushes).await;

    let mut proxy = registry_proxy(d, &backing.yaml(), &upstream.addr, None);
    // 50 cold pulls at once; the kill comes as soon as the first is done,
    // so the others are mid-fill (receiving, verifying or storing).
    let mut pulls = tokio::task::JoinSet::new();
    for image in images.clone() {
        let addr = proxy.addr.clone();
        pulls.spawn(async move { pull_image(&reqwest::Client::new(), &addr, &image).await });
    }
    let first = pulls.join_next().await.expect("a pull").expect("task");
    first.expect("the first pull succeeds");
    proxy.kill();
    let cut = pulls.join_all().await.iter().filter(|p| p.is_err()).count();
    println!("{test}: the kill cut {cut} of {IMAGES} pulls off");
    assert!(
        cut > 0,
        "every pull finished before the kill: nothing was in flight"
    );

    let driver = backing.driver().await;
    let stored = verify_stored_blobs(driver.as_ref()).await;
    let left = backing.leftovers().await;
    println!("{test}: after the kill: {stored} whole blobs stored, {left} leftovers");
    // Whether the kill caught a fill while it stored is luck; one store cut
    // off as the kill would (6 MiB, a multipart upload on S3) makes the
    // restart's purge certain to have work.
    let cut_off = registry_proxy::layout::blob_data(&Digest::of(b"cut off"));
    let mut writer = driver.writer(&cut_off, false).await.expect("writer");
    writer
        .write(conformance::random_bytes(3, 6 << 20))
        .await
        .expect("write");
    drop(writer);
    assert!(
        backing.leftovers().await > left,
        "the planted leftover is not seen"
    );

    let proxy = registry_proxy(d, &backing.yaml(), &upstream.addr, None);
    assert_eq!(
        backing.leftovers().await,
        0,
        "leftovers survived the restart's purge"
    );
    for pulled in pull_all(&proxy.addr, &images).await {
        pulled.expect("every image pulls after the restart");
    }
    fills_settled(&proxy).await;
    let stored = verify_stored_blobs(driver.as_ref()).await;
    // Manifests are blobs too in distribution's layout: 4 per image.
    assert_eq!(stored, IMAGES * 4, "every blob is stored once, whole");
    // The restarted proxy serves from storage: the upstream is no longer needed.
    drop(upstream);
    for pulled in pull_all(&proxy.addr, &images).await {
        pulled.expect("every image pulls from the cache alone");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_cold_pulls_on_the_filesystem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backing = Backing::Fs(dir.path().join("cache"));
    crash_during_cold_pulls("kill_9_filesystem", backing).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_cold_pulls_on_s3() {
    let Ok(Some(s3)) = S3Config::from_env() else {
        conformance::skip(
            "kill_9_s3",
            "REQUIRE_S3",
            "S3_BUCKET is not set (scripts/test.sh starts Garage)",
        );
        return;
    };
    let s3 = S3Config {
        root_directory: format!("crash-{:016x}", rand::random::<u64>()),
        chunk_size: 5 << 20,
        ..s3
    };
    crash_during_cold_pulls("kill_9_s3", Backing::S3(Box::new(s3))).await;
}
