//! Storage that fails under the `registry-proxy` binary: a filesystem that
//! fills up (a small tmpfs) while what it holds is in use, so eviction
//! cannot make room, and an S3 server stopped in the middle of a fill,
//! then brought back. Errors are clear (logged, OCI JSON for the
//! client), nothing half-written becomes visible, cached content keeps
//! being served (from storage while it reads, from the upstream while it
//! does not), and fills succeed again once the storage recovers. Real parts: Debian's
//! `docker-registry` upstream and, for S3, a private Garage. Skipped (with
//! the reason printed) when they are missing, unless `REQUIRE_E2E=1`
//! (`REQUIRE_S3=1` for the S3 case).

// Shared by the test binaries and the side-by-side benchmark; each uses a part.
use registry_proxy_testkit as support;

use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use driver_core::StorageDriver;
use registry_proxy::layout;
use registry_proxy::oci::Digest;
use support::{
    Relay, Server, docker_registry, fills_settled, have, push_blob, registry_proxy,
    registry_proxy_with,
};

/// GETs a blob through the proxy: `Ok` with the bytes of a complete 200,
/// or `Err` with the status and body of an error answer (a 200 whose body
/// breaks off is `Err` too).
async fn get_blob(proxy: &Server, repo: &str, digest: &Digest) -> Result<Bytes, (u16, String)> {
    get_blob_at(&proxy.addr, repo, digest).await
}

async fn get_blob_at(addr: &str, repo: &str, digest: &Digest) -> Result<Bytes, (u16, String)> {
    let url = format!("http://{addr}/v2/{repo}/blobs/{digest}");
    let response = reqwest::get(&url).await.map_err(|e| (0, e.to_string()))?;
    let status = response.status().as_u16();
    match response.bytes().await {
        Ok(body) if status == 200 => Ok(body),
        Ok(body) => Err((status, String::from_utf8_lossy(&body).into_owned())),
        Err(e) => Err((status, e.to_string())),
    }
}

/// A complete answer must be the blob; an error must be OCI JSON.
fn check_answer(what: &str, digest: &Digest, answer: &Result<Bytes, (u16, String)>) {
    match answer {
        Ok(body) => assert_eq!(&Digest::of(body), digest, "{what}: wrong bytes"),
        Err((200, _)) => {}
        Err((status, body)) => {
            let json: serde_json::Value = serde_json::from_str(body)
                .unwrap_or_else(|_| panic!("{what}: {status} without an OCI body: {body}"));
            assert!(json["errors"][0]["code"].is_string(), "{what}: {body}");
        }
    }
}

/// Unmounts the tmpfs when the test ends, however it ends.
struct Mounted(PathBuf);

impl Mounted {
    fn tmpfs(path: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(path).expect("mount point");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .is_ok_and(|s| s.success());
        mounted.then(|| Self(path.to_owned()))
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_filesystem_refuses_new_blobs_keeps_serving_and_recovers() {
    const TEST: &str = "full_filesystem";
    if !have("docker-registry") {
        conformance::skip(TEST, "REQUIRE_E2E", "docker-registry is not installed");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let Some(mounted) = Mounted::tmpfs(&d.join("small"), "24m") else {
        conformance::skip(TEST, "REQUIRE_E2E", "cannot mount a tmpfs (needs root)");
        return;
    };
    let upstream = docker_registry(d, "upstream", &d.join("upstream-root"), "");
    let client = reqwest::Client::new();
    let mut blobs = Vec::new();
    for seed in 0..3 {
        let data = conformance::random_bytes(seed, 6 << 20);
        blobs.push(push_blob(&client, &upstream.addr, "full/app", data).await);
    }
    // 8 MiB of the 24 taken by something else: room for two blobs, not three.
    let filler = mounted.0.join("filler");
    std::fs::write(&filler, vec![0u8; 8 << 20]).expect("filler");
    let root = mounted.0.join("root");
    let storage = format!("  filesystem:\n    rootdirectory: {}\n", root.display());
    // The spool on the machine's disk, not the small volume (by default it
    // would sit beside the root, and need room for a blob beside its
    // stored copy): this test fills the storage volume.
    let proxy = registry_proxy_with(
        d,
        &format!(
            "storage:\n{storage}proxy:\n  remoteurl: http://{}\n  spooldirectory: {}\n",
            upstream.addr,
            d.display()
        ),
    );
    let fs = driver_fs::FsDriver::open(&driver_fs::FsConfig::at(&root)).expect("fs driver");

    for digest in &blobs[..2] {
        let answer = get_blob(&proxy, "full/app", digest).await;
        assert_eq!(Digest::of(&answer.expect("a blob that fits")), *digest);
    }
    fills_settled(&proxy).await;
    // Both stored blobs in use (their responses not read yet): a full disk
    // makes the fill evict, and here nothing may go.
    let mut in_use = Vec::new();
    for digest in &blobs[..2] {
        let url = format!("http://{}/v2/full/app/blobs/{digest}", proxy.addr);
        in_use.push(client.get(url).send().await.expect("GET"));
    }
    let full = &blobs[2];
    let answer = get_blob(&proxy, "full/app", full).await;
    check_answer("the blob that does not fit", full, &answer);
    fills_settled(&proxy).await;
    drop(in_use);
    assert!(
        fs.stat(&layout::blob_data(full)).await.is_err(),
        "a blob that did not fit is visible"
    );
    let staged = std::fs::read_dir(root.join("@writers"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(staged, 0, "the failed store left staged bytes");
    let log = std::fs::read_to_string(d.join("proxy.log")).expect("log");
    assert!(
        log.contains("No space left on device"),
        "the log does not say the disk is full"
    );
    for digest in &blobs[..2] {
        let answer = get_blob(&proxy, "full/app", digest).await;
        assert_eq!(
            Digest::of(&answer.expect("cached while full")),
            *digest,
            "cached content is served while the disk is full"
        );
    }

    std::fs::remove_file(&filler).expect("free space");
    let answer = get_blob(&proxy, "full/app", full).await;
    assert_eq!(Digest::of(&answer.expect("after space returned")), *full);
    fills_settled(&proxy).await;
    let stored = fs
        .get_content(&layout::blob_data(full))
        .await
        .expect("stored");
    assert_eq!(
        Digest::of(&stored),
        *full,
        "stored whole once space returned"
    );
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_s3_server_stopped_mid_fill_then_restarted() {
    const TEST: &str = "s3_stopped_mid_fill";
    if !have("docker-registry") {
        conformance::skip(TEST, "REQUIRE_E2E", "docker-registry is not installed");
        return;
    }
    // The shared server's presence says an S3 server can run here; this
    // test starts one of its own, to stop it.
    if !matches!(driver_s3::S3Config::from_env(), Ok(Some(_))) {
        conformance::skip(
            TEST,
            "REQUIRE_S3",
            "S3_BUCKET is not set (scripts/test.sh starts Garage)",
        );
        return;
    }
    let s3 = conformance::PrivateS3::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let upstream = docker_registry(d, "upstream", &d.join("upstream-root"), "");
    let client = reqwest::Client::new();
    let cached = push_blob(
        &client,
        &upstream.addr,
        "s3/app",
        conformance::random_bytes(1, 2 << 20),
    )
    .await;
    let filled = push_blob(
        &client,
        &upstream.addr,
        "s3/app",
        conformance::random_bytes(2, 12 << 20),
    )
    .await;
    let config = driver_s3::S3Config::from_vars(|name| s3.var(name))
        .expect("server env")
        .expect("a bucket");
    let storage = support::s3_storage_yaml(&config, &["chunksize: 5242880", "maxattempts: 2"]);
    // Through a relay that can hold the upstream's bytes: the outage must
    // come after the fill started (a miss with S3 already down fails at
    // its first look into storage).
    let relay = Relay::start(&upstream.addr).await;
    let proxy = registry_proxy(d, &storage, &relay.addr, None);
    let answer = get_blob(&proxy, "s3/app", &cached).await;
    assert_eq!(Digest::of(&answer.expect("a fill with S3 up")), cached);
    fills_settled(&proxy).await;

    relay.hold(true);
    let pending = tokio::spawn({
        let (proxy, filled) = (proxy.addr.clone(), filled);
        async move { get_blob_at(&proxy, "s3/app", &filled).await }
    });
    support::wait_for_fills(&proxy, |running| running > 0, "a fill started").await;
    s3.run("stop");
    relay.hold(false);
    let answer = pending.await.expect("task");
    check_answer("a fill cut off by the outage", &filled, &answer);
    fills_settled(&proxy).await;
    // Storage is down: a blob it held is served from the upstream.
    let answer = get_blob(&proxy, "s3/app", &cached).await;
    assert_eq!(
        Digest::of(&answer.expect("served with S3 down")),
        cached,
        "served from the upstream while S3 is down"
    );
    fills_settled(&proxy).await;
    let log = std::fs::read_to_string(d.join("proxy.log")).expect("log");
    assert!(
        log.contains("blob fill failed"),
        "the failed store is not logged: {log}"
    );

    s3.run("start");
    let driver = driver_s3::S3Driver::new(config).await.expect("s3 driver");
    assert!(
        driver.stat(&layout::blob_data(&filled)).await.is_err(),
        "the fill cut off by the outage is visible"
    );
    for digest in [&filled, &cached] {
        let answer = get_blob(&proxy, "s3/app", digest).await;
        assert_eq!(Digest::of(&answer.expect("after the restart")), *digest);
    }
    fills_settled(&proxy).await;
    assert_eq!(
        support::verify_stored_blobs(&driver).await,
        2,
        "both blobs stored whole"
    );
}
