//! etcd at its limits, with a real etcd and two replicas' stores in this
//! process. A fill that outlasts etcd's request timeout (1 s here) keeps
//! its lock: the other replica's request for the same blob waits for it
//! instead of filling again, and the upstream (which holds the body until
//! the test lets it go) sends the blob once. Leases on tens of thousands
//! of digests are published whole. Skipped (with the reason printed)
//! without etcd unless `REQUIRE_E2E=1`.

// Shared by the test binaries and the side-by-side benchmark; each uses a part.
use registry_proxy_testkit as support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::response::IntoResponse;
use bytes::Bytes;
use registry_proxy::metadata::etcd::EtcdOptions;
use registry_proxy::namespace::NamespaceSpec;
use registry_proxy::oci::Digest;
use registry_proxy::scheduler::Clock;
use registry_proxy::{AppState, Settings};
use support::{etcd, have};
use tokio::sync::Notify;
use tower::ServiceExt;

/// The etcd request timeout of both replicas.
const ETCD_TIMEOUT: Duration = Duration::from_secs(1);

struct Upstream {
    blob: Bytes,
    gets: AtomicUsize,
    release: Notify,
}

async fn start_upstream(blob: Bytes) -> (Arc<Upstream>, String) {
    let upstream = Arc::new(Upstream {
        blob,
        gets: AtomicUsize::new(0),
        release: Notify::new(),
    });
    let serving = Arc::clone(&upstream);
    let router = axum::Router::new().fallback(move |method: Method| {
        let up = Arc::clone(&serving);
        async move {
            if method == Method::GET {
                up.gets.fetch_add(1, Ordering::SeqCst);
            }
            let half = up.blob.slice(..up.blob.len() / 2);
            let rest = up.blob.slice(up.blob.len() / 2..);
            let held = async move {
                up.release.notified().await;
                Ok::<_, std::io::Error>(rest)
            };
            let body = futures::StreamExt::chain(
                futures::stream::iter([Ok::<_, std::io::Error>(half)]),
                futures::stream::once(held),
            );
            let mut response = Body::from_stream(body).into_response();
            response
                .headers_mut()
                .insert("content-length", BLOB_LEN.into());
            response
        }
    });
    let base = support::fakes::serve(router).await;
    (upstream, base)
}

const BLOB_LEN: usize = 1 << 20;

async fn replica(
    driver: &Arc<dyn driver_core::StorageDriver>,
    namespaces: &[NamespaceSpec],
    etcd_addr: &str,
    prefix: &str,
    spool: &std::path::Path,
) -> AppState {
    let settings = Settings {
        spool_dir: spool.to_owned(),
        // Longer than the test: the held body is not a stall here.
        fill_timeout: Duration::from_secs(60),
        fill_limits: Default::default(),
        verify_reads: Default::default(),
        tag_freshness: Duration::from_secs(60),
        request_timeout: Duration::from_secs(2),
        auth: None,
        scheduler: Default::default(),
        clock: Clock::system(),
        coordination: Some(EtcdOptions {
            endpoints: vec![format!("http://{etcd_addr}")],
            prefix: prefix.to_owned(),
            lease_ttl: Duration::from_secs(10),
            timeout: ETCD_TIMEOUT,
        }),
        urls: Default::default(),
    };
    AppState::open(Arc::clone(driver), namespaces, settings)
        .await
        .expect("replica")
}

/// The one namespace of a registry:2 config, in front of `upstream`.
fn single(upstream: &str) -> Vec<NamespaceSpec> {
    vec![NamespaceSpec::single(upstream.parse().expect("url"), None)]
}

/// GETs `uri` from `state`: status and whole body.
async fn get(state: AppState, uri: String) -> (StatusCode, Result<Bytes, axum::Error>) {
    let response = registry_proxy::app(state)
        .oneshot(
            axum::http::Request::get(uri)
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("response");
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 4 << 20).await;
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_longer_than_the_etcd_timeout_keeps_its_lock() {
    if !have("etcd") {
        conformance::skip(
            "a_fill_longer_than_the_etcd_timeout_keeps_its_lock",
            "REQUIRE_E2E",
            "etcd is not installed",
        );
        return;
    }
    let dir = tempfile::tempdir().expect("dir");
    let etcd = etcd(dir.path());
    let blob = conformance::random_bytes(21, BLOB_LEN);
    let digest = Digest::of(&blob);
    let (upstream, base) = start_upstream(blob.clone()).await;
    let driver: Arc<dyn driver_core::StorageDriver> = Arc::new(driver_memory::MemoryDriver::new());
    // Both replicas share one prefix: they coordinate.
    let prefix = format!("/fill-lock-{:x}", rand::random::<u64>());
    let a = replica(&driver, &single(&base), &etcd.addr, &prefix, dir.path()).await;
    let b = replica(&driver, &single(&base), &etcd.addr, &prefix, dir.path()).await;
    let uri = format!("/v2/team/app/blobs/{digest}");
    let first = tokio::spawn(get(a.clone(), uri.clone()));
    while upstream.gets.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    let second = tokio::spawn(get(b.clone(), uri.clone()));
    // The deadline under test is etcd's wall-clock request timeout: the
    // second replica's lock request must outlive it.
    tokio::time::sleep(ETCD_TIMEOUT * 3).await;
    assert_eq!(
        upstream.gets.load(Ordering::SeqCst),
        1,
        "the second replica filled again after the etcd timeout"
    );
    upstream.release.notify_waiters();
    for task in [first, second] {
        let (status, body) = task.await.expect("task");
        assert_eq!(status, StatusCode::OK);
        assert!(body.expect("body") == blob, "not the blob's bytes");
    }
    assert_eq!(upstream.gets.load(Ordering::SeqCst), 1);
    drop(etcd);
}

/// In a cluster, an isolated namespace whose fill finds the blob stored by
/// another replica meanwhile (it waited for that replica's fill lock) is
/// served it only once its own upstream proves access: here that upstream
/// has nothing, so the answer is `BLOB_UNKNOWN` (it was the stored bytes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_fill_finding_the_blob_stored_elsewhere_proves_access_first() {
    use registry_proxy::namespace::Sharing;
    if !have("etcd") {
        conformance::skip(
            "an_isolated_fill_finding_the_blob_stored_elsewhere_proves_access_first",
            "REQUIRE_E2E",
            "etcd is not installed",
        );
        return;
    }
    let dir = tempfile::tempdir().expect("dir");
    let etcd = etcd(dir.path());
    let blob = conformance::random_bytes(22, BLOB_LEN);
    let digest = Digest::of(&blob);
    let (upstream, base) = start_upstream(blob.clone()).await;
    // An upstream that has nothing.
    let router = axum::Router::new().fallback(|| async { StatusCode::NOT_FOUND });
    let empty = support::fakes::serve(router).await;
    let mut namespaces = single(&base);
    namespaces.push(NamespaceSpec {
        name: "iso.test".to_owned(),
        sharing: Sharing::Isolated,
        registry2_dir: false,
        default: false,
        ..NamespaceSpec::single(empty.parse().expect("url"), None)
    });
    let driver: Arc<dyn driver_core::StorageDriver> = Arc::new(driver_memory::MemoryDriver::new());
    let prefix = format!("/isolated-{:x}", rand::random::<u64>());
    let a = replica(&driver, &namespaces, &etcd.addr, &prefix, dir.path()).await;
    let b = replica(&driver, &namespaces, &etcd.addr, &prefix, dir.path()).await;
    let first = tokio::spawn(get(a.clone(), format!("/v2/team/app/blobs/{digest}")));
    while upstream.gets.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    // B's isolated namespace misses (A has not stored the blob yet) and
    // starts its fill, which waits for A's lock.
    let second = tokio::spawn(get(
        b.clone(),
        format!("/v2/iso.test/team/app/blobs/{digest}"),
    ));
    while b.metrics.debug_vars()["registry_proxy"]["FillsInFlight"] != 1 {
        tokio::task::yield_now().await;
    }
    upstream.release.notify_waiters();
    let (status, body) = first.await.expect("task");
    assert_eq!(status, StatusCode::OK);
    assert!(body.expect("body") == blob, "not the blob's bytes");
    let (status, body) = second.await.expect("task");
    let body = body.expect("body");
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "served without a proof: {} bytes",
        body.len()
    );
    assert_eq!(upstream.gets.load(Ordering::SeqCst), 1);
    drop(etcd);
}

/// Leases on 60,000 digests (a busy replica) are published and read back
/// whole by another replica: one key of all of them passed etcd's 1.5 MiB
/// request limit at about 23,000, and leases stopped being published.
/// Publishing fewer afterwards leaves none of the old ones behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_on_many_digests_are_published_whole() {
    use registry_proxy::metadata::Coordination;
    use registry_proxy::metadata::etcd::Etcd;
    if !have("etcd") {
        conformance::skip(
            "leases_on_many_digests_are_published_whole",
            "REQUIRE_E2E",
            "etcd is not installed",
        );
        return;
    }
    let dir = tempfile::tempdir().expect("dir");
    let etcd = etcd(dir.path());
    let driver: Arc<dyn driver_core::StorageDriver> = Arc::new(driver_memory::MemoryDriver::new());
    let options = EtcdOptions {
        endpoints: vec![format!("http://{}", etcd.addr)],
        prefix: "/leases-test".to_owned(),
        lease_ttl: Duration::from_secs(10),
        timeout: Duration::from_secs(5),
    };
    let connect = || Etcd::connect(options.clone(), &[None], Arc::clone(&driver), 3600, false);
    let (holder, reader) = (
        connect().await.expect("etcd"),
        connect().await.expect("etcd"),
    );
    let digest = |i: u32| {
        let mut raw = [0u8; 32];
        raw[..4].copy_from_slice(&i.to_le_bytes());
        raw[31] = 1;
        Digest::from_raw(raw)
    };
    let many: std::collections::HashSet<Digest> = (0..60_000).map(digest).collect();
    holder.publish_leases(&many).await.expect("published");
    assert_eq!(reader.remote_leases().await.expect("read"), many);
    let few: std::collections::HashSet<Digest> = (0..5).map(digest).collect();
    holder.publish_leases(&few).await.expect("published");
    assert_eq!(reader.remote_leases().await.expect("read"), few);
    holder.close().await;
    reader.close().await;
    drop(etcd);
}

/// Readiness follows storage and etcd, not the upstream: with the upstream
/// unreachable a replica is ready; with etcd gone it is not, while it
/// stays live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_etcd_not_the_upstream() {
    if !have("etcd") {
        conformance::skip(
            "readiness_follows_etcd_not_the_upstream",
            "REQUIRE_E2E",
            "etcd is not installed",
        );
        return;
    }
    let dir = tempfile::tempdir().expect("dir");
    let mut etcd = etcd(dir.path());
    let driver: Arc<dyn driver_core::StorageDriver> = Arc::new(driver_memory::MemoryDriver::new());
    let prefix = format!("/ready-{:x}", rand::random::<u64>());
    let unreachable = single("http://127.0.0.1:1");
    let state = replica(&driver, &unreachable, &etcd.addr, &prefix, dir.path()).await;
    let probe = |path: &'static str| {
        let router = registry_proxy::debug_app(state.clone(), &Default::default());
        async move {
            let request = Request::get(path).body(Body::empty()).expect("request");
            router.oneshot(request).await.expect("response").status()
        }
    };
    assert_eq!(probe("/readyz").await, StatusCode::OK);
    assert_eq!(probe("/livez").await, StatusCode::OK);
    etcd.kill();
    assert_eq!(probe("/readyz").await, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(probe("/livez").await, StatusCode::OK);
}
