//! etcd at its limits, with a real etcd and two replicas' stores in this
//! process. A fill that outlasts etcd's request timeout (1 s here) keeps
//! its lock: the other replica's request for the same blob waits for it
//! instead of filling again, and the upstream (which holds the body until
//! the test lets it go) sends the blob once. Leases on tens of thousands
//! of digests are published whole. A tag purged through one replica is
//! dropped by the other, which trusted it for another minute. Skipped
//! (with the reason printed) without etcd unless `REQUIRE_E2E=1`.

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
        token: None,
        scheduler: Default::default(),
        clock: Clock::system(),
        coordination: Some(EtcdOptions {
            endpoints: vec![format!("http://{etcd_addr}")],
            prefix: prefix.to_owned(),
            lease_ttl: Duration::from_secs(10),
            timeout: ETCD_TIMEOUT,
            user: None,
            tls: Default::default(),
        }),
        urls: Default::default(),
        local_tier: None,
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

/// A tag purged through one replica's admin surface is purged on every
/// replica: the other one, which confirmed the tag upstream and trusts it
/// for a minute, asks the upstream again within seconds and serves the
/// manifest the tag names now, not the one it confirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_purged_through_one_replica_is_dropped_by_every_replica() {
    use registry_proxy::admin::{AdminAccess, AdminToken, admin_app};
    let test = "a_tag_purged_through_one_replica_is_dropped_by_every_replica";
    if !have("etcd") {
        conformance::skip(test, "REQUIRE_E2E", "etcd is not installed");
        return;
    }
    let Some((dir, upstream)) = support::registry_upstream(test) else {
        return;
    };
    let etcd = tokio::task::block_in_place(|| etcd(dir.path()));
    let client = reqwest::Client::new();
    let old = support::push_image(&client, &upstream.addr, "team/app", 51, &[4096]).await;
    let driver: Arc<dyn driver_core::StorageDriver> = Arc::new(driver_memory::MemoryDriver::new());
    let prefix = format!("/untag-{:x}", rand::random::<u64>());
    let namespaces = single(&format!("http://{}", upstream.addr));
    let a = replica(&driver, &namespaces, &etcd.addr, &prefix, dir.path()).await;
    let b = replica(&driver, &namespaces, &etcd.addr, &prefix, dir.path()).await;
    let uri = "/v2/team/app/manifests/v1".to_owned();
    let manifest = |state: &AppState| {
        let (state, uri) = (state.clone(), uri.clone());
        async move {
            let (status, body) = get(state, uri).await;
            assert_eq!(status, StatusCode::OK);
            Digest::of(&body.expect("body"))
        }
    };
    // Both replicas confirm the tag upstream: trusted for a minute.
    assert_eq!(manifest(&a).await, old.manifest);
    assert_eq!(manifest(&b).await, old.manifest);
    // The tag moves upstream, and an operator purges it through A.
    let new = support::push_image(&client, &upstream.addr, "team/app", 52, &[4096]).await;
    let token = "purge-token";
    let access = AdminAccess {
        token: AdminToken::new(token),
        ..AdminAccess::default()
    };
    let purged = admin_app(a.clone(), access)
        .oneshot(
            Request::post("/admin/purge?repository=team/app&tag=v1")
                .header("authorization", format!("Bearer {token}"))
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(purged.status(), StatusCode::OK);
    assert_eq!(
        manifest(&a).await,
        new.manifest,
        "A asks the upstream again"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while manifest(&b).await != new.manifest {
        assert!(
            std::time::Instant::now() < deadline,
            "B still serves the manifest the purged tag named"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
        user: None,
        tls: Default::default(),
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

/// etcd over TLS with client certificates and its authentication on: the
/// store connects with the CA, a client certificate and the password, and
/// is refused with a wrong password or without a client certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_over_tls_with_a_client_certificate_and_a_password() {
    use registry_proxy::metadata::etcd::Etcd;
    use registry_proxy::upstream::UpstreamTls;
    if !have("etcd") {
        conformance::skip(
            "etcd_over_tls_with_a_client_certificate_and_a_password",
            "REQUIRE_E2E",
            "etcd is not installed",
        );
        return;
    }
    let dir = tempfile::tempdir().expect("dir");
    let d = dir.path();
    let ca = support::tls::TestCa::new("etcd CA");
    let ca_file = ca.write(&d.join("etcd-ca.pem"));
    let server = ca.issue(&["127.0.0.1"], d, "etcd-server");
    let etcd = tokio::task::block_in_place(|| support::etcd_tls(d, &server, &ca_file));
    let client = ca.issue(&[], d, "etcd-client");
    let mut identity = std::fs::read(&client.cert).expect("cert");
    identity.extend(std::fs::read(&client.key).expect("key"));
    let tls = UpstreamTls {
        ca_pem: Some(ca.pem.clone().into_bytes()),
        insecure: false,
        identity_pem: Some(identity.clone()),
    };
    // Authentication on, with a root user, through the certificate.
    registry_proxy::tls::install_default_provider();
    let root = etcd_client::ConnectOptions::new().with_tls(
        etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(&ca.pem))
            .identity(etcd_client::Identity::from_pem(&identity, &identity)),
    );
    let endpoint = format!("https://{}", etcd.addr);
    let mut admin = etcd_client::Client::connect([&endpoint], Some(root))
        .await
        .expect("etcd over TLS");
    admin.user_add("root", "s3cret", None).await.expect("user");
    let _ = admin.role_add("root").await;
    admin.user_grant_role("root", "root").await.expect("grant");
    admin.auth_enable().await.expect("auth on");

    let driver: Arc<dyn driver_core::StorageDriver> = Arc::new(driver_memory::MemoryDriver::new());
    let options = |password: &str, tls: UpstreamTls| EtcdOptions {
        endpoints: vec![endpoint.clone()],
        prefix: "/tls-test".to_owned(),
        lease_ttl: Duration::from_secs(10),
        timeout: Duration::from_secs(5),
        user: Some(("root".to_owned(), password.to_owned().into())),
        tls,
    };
    let connect =
        |options: EtcdOptions| Etcd::connect(options, &[None], Arc::clone(&driver), 3600, false);
    let store = connect(options("s3cret", tls.clone()))
        .await
        .expect("connected");
    use registry_proxy::metadata::Coordination as _;
    store.ready().await.expect("ready");
    store.close().await;
    assert!(
        connect(options("wrong", tls.clone())).await.is_err(),
        "a wrong password was accepted"
    );
    let anonymous = UpstreamTls {
        identity_pem: None,
        ..tls
    };
    assert!(
        connect(options("s3cret", anonymous)).await.is_err(),
        "a client without a certificate was accepted"
    );
    drop(etcd);
}
