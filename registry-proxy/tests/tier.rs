//! The local tier in front of S3 (`proxy.localtier`), through the real
//! binary on Garage with Debian's `docker-registry` upstream:
//!
//! - a blob served from the bucket is copied to the tier, and its later
//!   hits reach the bucket no more (they go out with `sendfile`);
//! - a copy corrupted while the proxy was down is detected when first
//!   used, deleted and counted, and the request is served from the bucket;
//! - kill -9 while copies are being made leaves no partial copy visible,
//!   and the restarted proxy serves every blob whole.
//!
//! Skipped (with the reason printed) without `docker-registry` unless
//! `REQUIRE_E2E=1`, and without the S3 variables unless `REQUIRE_S3=1`.

use registry_proxy_testkit as support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use registry_proxy::oci::Digest;
use support::{Server, debug_text, fills_settled, push_blob};

const REPO: &str = "tier/app";
const MIB: usize = 1 << 20;

/// Garage's bucket under a fresh root, with an upstream, or `None`
/// (skipped).
fn s3(test: &str) -> Option<(driver_s3::S3Config, tempfile::TempDir, Server)> {
    let s3 = support::s3_bucket(test, "tier")?;
    let (dir, upstream) = support::registry_upstream(test)?;
    Some((s3, dir, upstream))
}

/// A proxy on `s3` with its tier at `tier`, its config in `dir`.
fn proxy(dir: &Path, s3: &driver_s3::S3Config, tier: &Path, upstream: &str) -> Server {
    let sections = format!(
        "storage:\n{}proxy:\n  remoteurl: http://{upstream}\n  localtier:\n    rootdirectory: {}\n    maxsize: 256MiB\n",
        support::s3_storage_yaml(s3, &[]),
        tier.display()
    );
    support::registry_proxy_with(dir, &sections)
}

/// The tier's copy of `digest`.
fn copy_of(tier: &Path, digest: &Digest) -> PathBuf {
    tier.join(
        registry_proxy::layout::blob_data(digest)
            .as_str()
            .trim_start_matches('/'),
    )
}

/// Waits (up to 60 s) until the tier holds a whole copy of `digest`.
async fn copied(tier: &Path, digest: &Digest, size: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::metadata(copy_of(tier, digest)).map_or(true, |m| m.len() != size as u64) {
        assert!(
            Instant::now() < deadline,
            "{digest} was never copied to the tier"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Requests to the bucket so far (reads of every kind).
async fn bucket_reads(proxy: &Server) -> u64 {
    let text = debug_text(proxy, "/metrics").await;
    ["open", "stat", "get_content", "reader"]
        .iter()
        .map(|op| support::storage_ops(&text, op))
        .sum()
}

/// A metric's value summed over its labels.
async fn metric(proxy: &Server, name: &str) -> u64 {
    debug_text(proxy, "/metrics")
        .await
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

async fn get(proxy: &Server, digest: &Digest) -> Result<Bytes, String> {
    let url = format!("http://{}/v2/{REPO}/blobs/{digest}", proxy.addr);
    let response = reqwest::get(url).await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(response.status().to_string());
    }
    response.bytes().await.map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn warm_hits_come_from_the_tier_and_a_corrupt_copy_is_not_served() {
    let Some((s3, dir, upstream)) = s3("tier_hits") else {
        return;
    };
    let d = dir.path();
    let client = reqwest::Client::new();
    let bytes = conformance::random_bytes(3, 4 * MIB + 5);
    let digest = push_blob(&client, &upstream.addr, REPO, bytes.clone()).await;
    let tier = d.join("tier");
    let mut cache = proxy(d, &s3, &tier, &upstream.addr);

    assert_eq!(get(&cache, &digest).await.expect("cold"), bytes);
    fills_settled(&cache).await;
    // The first hit reads the bucket, and copies the blob to the tier.
    assert_eq!(get(&cache, &digest).await.expect("first hit"), bytes);
    copied(&tier, &digest, bytes.len()).await;
    let reads = bucket_reads(&cache).await;
    let sent = metric(&cache, "registry_proxy_zero_copy_bytes_total{").await;
    for _ in 0..3 {
        assert_eq!(get(&cache, &digest).await.expect("hit"), bytes);
    }
    assert_eq!(
        bucket_reads(&cache).await,
        reads,
        "a tier hit read the bucket"
    );
    assert!(
        metric(&cache, "registry_proxy_zero_copy_bytes_total{").await > sent,
        "tier hits did not go out with sendfile"
    );

    // A bit flipped while the proxy is down.
    cache.kill();
    let copy = copy_of(&tier, &digest);
    let mut on_disk = std::fs::read(&copy).expect("the copy");
    on_disk[MIB] ^= 1;
    std::fs::write(&copy, &on_disk).expect("corrupt the copy");
    drop(upstream);
    let cache = proxy(d, &s3, &tier, "127.0.0.1:9");
    // The first hit after the restart finds the blob in the bucket (its
    // link confirmed); the next one is the tier's, whose copy is checked
    // before it is first served.
    for _ in 0..2 {
        assert_eq!(
            get(&cache, &digest).await.expect("after the corruption"),
            bytes,
            "the corrupt copy was served"
        );
    }
    assert_eq!(
        metric(&cache, "registry_proxy_corrupt_blobs_total").await,
        1
    );
    // Served from the bucket, then copied again.
    copied(&tier, &digest, bytes.len()).await;
    assert_eq!(std::fs::read(&copy).expect("the new copy"), bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_tier_copies_leaves_no_partial_copy() {
    let Some((s3, dir, upstream)) = s3("tier_kill") else {
        return;
    };
    let d = dir.path();
    let client = reqwest::Client::new();
    let mut blobs = Vec::new();
    for i in 0..6 {
        let bytes = conformance::random_bytes(20 + i, 24 * MIB);
        let digest = push_blob(&client, &upstream.addr, REPO, bytes.clone()).await;
        blobs.push((digest, bytes));
    }
    let tier = d.join("tier");
    let mut cache = proxy(d, &s3, &tier, &upstream.addr);
    for (digest, bytes) in &blobs {
        assert_eq!(&get(&cache, digest).await.expect("cold"), bytes);
    }
    fills_settled(&cache).await;
    // Six first hits start six copies (two at a time); the kill comes as
    // soon as the first hit's answer begins.
    let mut hits = tokio::task::JoinSet::new();
    for (digest, _) in &blobs {
        let url = format!("http://{}/v2/{REPO}/blobs/{digest}", cache.addr);
        hits.spawn(async move { reqwest::get(url).await.map(|r| r.status()) });
    }
    let first = hits.join_next().await.expect("a hit").expect("task");
    assert!(first.expect("first hit").is_success());
    cache.kill();
    hits.join_all().await;
    let whole = blobs
        .iter()
        .filter(|(digest, bytes)| std::fs::read(copy_of(&tier, digest)).is_ok_and(|b| b == *bytes))
        .count();
    println!(
        "tier_kill: {whole} of {} copies were whole at the kill",
        blobs.len()
    );
    assert!(whole < blobs.len(), "every copy was done before the kill");
    for (digest, bytes) in &blobs {
        if let Ok(on_disk) = std::fs::read(copy_of(&tier, digest)) {
            assert_eq!(&on_disk, bytes, "a partial copy is visible");
        }
    }

    let cache = proxy(d, &s3, &tier, &upstream.addr);
    let staged = std::fs::read_dir(tier.join("@writers")).map_or(0, |d| d.count());
    assert_eq!(staged, 0, "staged copies survived the restart");
    for (digest, bytes) in &blobs {
        assert_eq!(
            &get(&cache, digest).await.expect("after the restart"),
            bytes
        );
    }
}
