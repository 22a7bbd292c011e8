//! The one access decision (`cache::access`) on the surfaces that decided
//! for themselves before: what the debug listener names, what an admin warm
//! counts, what `_catalog` lists, who proves before joining a fill, and how
//! a HEAD that misses answers. Each test but the last failed before the
//! decision was moved; the last pins that the HEAD miss path (answered by
//! the asking namespace's upstream) tells nothing of private content.

use registry_proxy_testkit as support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use bytes::Bytes;
use futures::StreamExt;
use registry_proxy::namespace::{NamespaceSpec, RepoFilter, Sharing};
use registry_proxy::oci::{Digest, Kind, OCI_MANIFEST, RepoName};
use support::InProcess;
use tower::ServiceExt;

/// An upstream holding blobs and tagged manifests (for every repository),
/// noting each request; blob bodies stop halfway while the gate is shut.
struct Fake {
    blobs: Mutex<HashMap<String, Bytes>>,
    manifests: Mutex<HashMap<String, Bytes>>,
    requests: Mutex<Vec<String>>,
    gate: tokio::sync::watch::Sender<bool>,
}

impl Fake {
    /// A fake on 127.0.0.1, its gate open, and its base URL.
    async fn start() -> (Arc<Self>, String) {
        let fake = Arc::new(Self {
            blobs: Mutex::default(),
            manifests: Mutex::default(),
            requests: Mutex::default(),
            gate: tokio::sync::watch::channel(true).0,
        });
        let router = axum::Router::new()
            .route("/v2/{*rest}", any(serve))
            .with_state(Arc::clone(&fake));
        let base = support::fakes::serve(router).await;
        (fake, base)
    }

    /// Requests whose method and path contain `what`.
    fn count(&self, what: &str) -> usize {
        let requests = self.requests.lock().expect("lock");
        requests.iter().filter(|r| r.contains(what)).count()
    }

    fn add_blob(&self, data: &[u8]) -> Digest {
        let digest = Digest::of(data);
        let data = Bytes::copy_from_slice(data);
        self.blobs
            .lock()
            .expect("lock")
            .insert(digest.to_string(), data);
        digest
    }

    fn tag(&self, tag: &str, manifest: &[u8]) -> Digest {
        let digest = Digest::of(manifest);
        let mut manifests = self.manifests.lock().expect("lock");
        manifests.insert(tag.to_owned(), Bytes::copy_from_slice(manifest));
        manifests.insert(digest.to_string(), Bytes::copy_from_slice(manifest));
        digest
    }
}

async fn serve(
    State(fake): State<Arc<Fake>>,
    method: Method,
    Path(rest): Path<String>,
) -> Response {
    fake.requests
        .lock()
        .expect("lock")
        .push(format!("{method} {rest}"));
    let (bytes, content_type) = if let Some((_, reference)) = rest.split_once("/manifests/") {
        let found = fake.manifests.lock().expect("lock").get(reference).cloned();
        (found, OCI_MANIFEST)
    } else if let Some((_, digest)) = rest.split_once("/blobs/") {
        let found = fake.blobs.lock().expect("lock").get(digest).cloned();
        (found, "application/octet-stream")
    } else {
        (None, "")
    };
    let Some(bytes) = bytes else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let len = bytes.len();
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        let (half, rest) = (bytes.slice(..len / 2), bytes.slice(len / 2..));
        let mut gate = fake.gate.subscribe();
        let gated = async move {
            let _ = gate.wait_for(|open| *open).await;
            Ok::<_, std::io::Error>(rest)
        };
        Body::from_stream(futures::stream::iter([Ok(half)]).chain(futures::stream::once(gated)))
    };
    let digest = Digest::of(&bytes).to_string();
    let mut response = (
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (
                header::HeaderName::from_static("docker-content-digest"),
                digest,
            ),
        ],
        body,
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, len.into());
    response
}

/// A namespace `name` in front of `base`, with `sharing`.
fn spec(name: &str, base: &str, sharing: Sharing, default: bool) -> NamespaceSpec {
    NamespaceSpec {
        name: name.to_owned(),
        sharing,
        registry2_dir: false,
        default,
        ..NamespaceSpec::single(base.parse().expect("url"), None)
    }
}

/// A proxy with a shared default namespace `open.test` and an isolated
/// `iso.test`, each in front of a fake of its own: the proxy, iso.test's
/// fake and open.test's.
async fn open_beside_isolated() -> (InProcess, Arc<Fake>, Arc<Fake>) {
    let (open, open_base) = Fake::start().await;
    let (iso, iso_base) = Fake::start().await;
    let proxy = InProcess::with_namespaces(
        &[
            spec("open.test", &open_base, Sharing::Shared, true),
            spec("iso.test", &iso_base, Sharing::Isolated, false),
        ],
        Duration::from_secs(60),
    )
    .await;
    (proxy, iso, open)
}

/// The whole body of a GET of `uri` through `proxy`, which must be 200.
async fn pulled(proxy: &InProcess, uri: &str) -> Bytes {
    let (status, _, body) = proxy.get(uri).await;
    assert_eq!(status, StatusCode::OK, "{uri}");
    body.expect("body")
}

/// `/debug/budget` lists what eviction would choose next; the debug
/// listener asks for no credentials, so a blob that came in through an
/// isolated namespace is listed as `withheld` (its size kept), a shared
/// one by its digest. It named both.
#[tokio::test]
async fn the_debug_budget_names_no_digest_of_private_content() {
    use registry_proxy::scheduler::{Bounds, Options};
    let (fake, base) = Fake::start().await;
    let options = Options {
        bounds: Bounds {
            max_size: Some(1 << 30),
            ..Bounds::default()
        },
        ..Options::default()
    };
    let proxy = InProcess::with_scheduler(
        &[
            spec("open.test", &base, Sharing::Shared, true),
            spec("iso.test", &base, Sharing::Isolated, false),
        ],
        Duration::from_secs(60),
        options,
    )
    .await;
    let open = fake.add_blob(&conformance::random_bytes(31, 100_000));
    let secret = fake.add_blob(&conformance::random_bytes(32, 100_000));
    pulled(&proxy, &format!("/v2/open.test/team/app/blobs/{open}")).await;
    pulled(&proxy, &format!("/v2/iso.test/corp/app/blobs/{secret}")).await;
    proxy.state.blobs.fills_done().await;
    // The account as storage holds it, whatever the first walk saw.
    proxy.state.scheduler.reconcile().await.expect("reconcile");

    let router = registry_proxy::debug_app(proxy.state.clone(), &Default::default());
    let request = Request::get("/debug/budget")
        .body(Body::empty())
        .expect("request");
    let response = router.oneshot(request).await.expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    let text = String::from_utf8_lossy(&body);
    assert!(!text.contains(&secret.hex()), "a private digest: {text}");
    let view: serde_json::Value = serde_json::from_slice(&body).expect("json");
    let named: Vec<&str> = view["next"]
        .as_array()
        .expect("next")
        .iter()
        .filter_map(|out| out["digest"].as_str())
        .collect();
    assert!(named.contains(&open.to_string().as_str()), "{text}");
    assert!(named.contains(&"withheld"), "{text}");
}

/// A warm through an isolated namespace counts as missing the blobs it
/// may not read yet, whoever stored them (it answered "nothing missing"
/// for blobs another namespace brought in: an existence oracle, and a
/// warm that warmed nothing); the warm then proves them (HEADs, no blob
/// GET) and nothing is missing after.
#[tokio::test]
async fn a_warm_through_an_isolated_namespace_counts_what_it_may_not_read() {
    use registry_proxy::admin::{AdminAccess, AdminToken, WarmReport, admin_app};
    let (open, open_base) = Fake::start().await;
    let (iso, iso_base) = Fake::start().await;
    let config = conformance::random_bytes(33, 1000);
    let layer = conformance::random_bytes(34, 100_000);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": Digest::of(&config).to_string(),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": Digest::of(&layer).to_string(),
            "size": layer.len(),
        }],
    })
    .to_string();
    for fake in [&open, &iso] {
        fake.add_blob(&config);
        fake.add_blob(&layer);
        fake.tag("v1", manifest.as_bytes());
    }
    let proxy = InProcess::with_namespaces(
        &[
            spec("open.test", &open_base, Sharing::Shared, true),
            spec("iso.test", &iso_base, Sharing::Isolated, false),
        ],
        Duration::from_secs(60),
    )
    .await;
    pulled(&proxy, "/v2/open.test/team/app/manifests/v1").await;
    for blob in [&config, &layer] {
        let digest = Digest::of(blob);
        pulled(&proxy, &format!("/v2/open.test/team/app/blobs/{digest}")).await;
    }
    proxy.state.blobs.fills_done().await;

    let admin = admin_app(
        proxy.state.clone(),
        AdminAccess {
            token: AdminToken::new("warm-token"),
            ..AdminAccess::default()
        },
    );
    let warm = |namespace: &'static str, dry_run: bool| {
        let admin = admin.clone();
        async move {
            let uri =
                format!("/admin/warm?namespace={namespace}&image=team/app:v1&dry_run={dry_run}");
            let request = Request::post(uri)
                .header(header::AUTHORIZATION, "Bearer warm-token")
                .body(Body::empty())
                .expect("request");
            let response = admin.oneshot(request).await.expect("response");
            assert_eq!(response.status(), StatusCode::OK);
            let body = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .expect("body");
            serde_json::from_slice::<WarmReport>(&body).expect("report")
        }
    };
    assert_eq!(warm("open.test", true).await.missing, 0);
    let before = warm("iso.test", true).await;
    assert_eq!(
        (before.blobs, before.missing, before.missing_bytes),
        (2, 2, (config.len() + layer.len()) as u64),
        "an isolated namespace's warm counted what others hold"
    );
    let blob_gets = |fake: &Fake| fake.count("GET team/app/blobs/");
    assert_eq!(blob_gets(&iso), 0);
    warm("iso.test", false).await;
    proxy.state.blobs.fills_done().await;
    assert_eq!(
        (iso.count("HEAD team/app/blobs/"), blob_gets(&iso)),
        (2, 0),
        "proved, not fetched again"
    );
    assert_eq!(warm("iso.test", true).await.missing, 0);
}

/// `_catalog` through a namespace lists only repositories its lists
/// admit: one stored before a deny list named it is no longer listed (it
/// was, though it is refused).
#[tokio::test]
async fn the_catalog_lists_no_repository_the_namespace_refuses() {
    let (_fake, base) = Fake::start().await;
    let deny = RepoFilter::new(&[], &["secret/*".to_owned()]).expect("globs");
    let proxy = InProcess::with_namespaces(
        &[NamespaceSpec {
            repositories: deny,
            ..spec("open.test", &base, Sharing::Shared, true)
        }],
        Duration::from_secs(60),
    )
    .await;
    let dir = driver_core::Segment::parse("open.test").expect("dir");
    let digest = Digest::of(b"{}");
    for name in ["secret/app", "team/app"] {
        let key =
            registry_proxy::layout::RepoKey::new(Some(&dir), &RepoName::parse(name).expect("name"));
        let link = registry_proxy::layout::link(&key, &digest, Kind::Manifest);
        proxy
            .driver
            .put_content(&link, registry_proxy::layout::link_content(&digest))
            .await
            .expect("link");
    }
    let body = pulled(&proxy, "/v2/open.test/_catalog").await;
    let json: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(json["repositories"], serde_json::json!(["team/app"]));
    let (status, _, _) = proxy.get("/v2/open.test/secret/app/tags/list").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

/// An isolated namespace's own cold miss asks its upstream once (the
/// fill's GET): no proof before it (it also sent a HEAD). Another
/// repository of a namespace with `users` joining that namespace's running
/// fill proves access first, as it would for the stored blob (it did not).
#[tokio::test]
async fn only_a_fills_own_repository_joins_it_without_a_proof() {
    let (fake, base) = Fake::start().await;
    let private = NamespaceSpec {
        users: Some(vec!["alice".to_owned()]),
        ..spec("team.test", &base, Sharing::Shared, false)
    };
    let proxy = InProcess::with_settings(
        &[spec("iso.test", &base, Sharing::Isolated, true), private],
        Duration::from_secs(60),
        |settings| settings.fill_timeout = Duration::from_secs(10),
    )
    .await;
    let cold = fake.add_blob(&conformance::random_bytes(35, 100_000));
    pulled(&proxy, &format!("/v2/iso.test/corp/app/blobs/{cold}")).await;
    assert_eq!(
        (
            fake.count("HEAD corp/app/blobs/"),
            fake.count("GET corp/app/blobs/")
        ),
        (0, 1),
        "an isolated namespace proved access to its own fill"
    );

    // Through the private namespace's store itself (no client to log in).
    let data = conformance::random_bytes(36, 1 << 20);
    let digest = fake.add_blob(&data);
    let ns = Arc::clone(proxy.state.namespaces.get("team.test").expect("ns"));
    let read = |repo: &'static str| {
        let (blobs, ns) = (Arc::clone(&proxy.state.blobs), Arc::clone(&ns));
        async move {
            let repo = RepoName::parse(repo).expect("repo");
            let reply = blobs.get(&ns, &repo, &digest, None, false).await;
            let body = reply.expect("served").body.expect("a body");
            let chunks: Vec<_> = body.collect().await;
            let bytes: Result<Vec<Bytes>, _> = chunks.into_iter().collect();
            bytes.expect("bytes").concat()
        }
    };
    fake.gate.send_replace(false);
    let first = tokio::spawn(read("team/a"));
    while proxy.state.blobs.fills_running().is_empty() {
        tokio::task::yield_now().await;
    }
    let second = tokio::spawn(read("team/b"));
    // A proof, while the fill waits (before the fix: none, ever).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while fake.count("HEAD team/b/blobs/") == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    fake.gate.send_replace(true);
    for read in [first, second] {
        assert!(read.await.expect("task") == data, "not the blob's bytes");
    }
    assert_eq!(
        (fake.count("HEAD team/b/blobs/"), fake.count("GET team/b/")),
        (1, 0),
        "another repository joined a private fill without a proof"
    );
}

/// A HEAD (or GET) through a shared namespace of a blob stored privately
/// (through an isolated one) answers exactly as for a digest never stored
/// when the shared namespace's upstream lacks it, the HEAD miss path (the
/// asking namespace's own upstream) included.
#[tokio::test]
async fn private_content_answers_as_never_stored_through_another_namespace() {
    let (proxy, iso, _open) = open_beside_isolated().await;
    let secret = iso.add_blob(&conformance::random_bytes(37, 100_000));
    pulled(&proxy, &format!("/v2/iso.test/corp/app/blobs/{secret}")).await;
    proxy.state.blobs.fills_done().await;
    let never = Digest::of(b"never stored anywhere");
    for method in [Method::HEAD, Method::GET] {
        let answer = |digest: Digest| {
            let (proxy, method) = (&proxy, method.clone());
            async move {
                let uri = format!("/v2/open.test/corp/app/blobs/{digest}");
                let response = proxy.send(method, &uri, &[]).await;
                let status = response.status();
                let length = response.headers().get(header::CONTENT_LENGTH).cloned();
                let body = axum::body::to_bytes(response.into_body(), 1 << 20)
                    .await
                    .expect("body");
                let text = String::from_utf8_lossy(&body).replace(&digest.to_string(), "D");
                (status, length, text)
            }
        };
        let stored = answer(secret).await;
        assert_eq!(stored.0, StatusCode::NOT_FOUND, "{method}: {stored:?}");
        assert_eq!(stored, answer(never).await, "{method}");
    }
}

/// Manifests stored before manifests were marked (here: a marker deleted)
/// are served by a shared namespace's blobs endpoint until marked; the
/// pass run at start marks them, and then they answer as never stored.
#[tokio::test]
async fn manifests_stored_unmarked_are_marked_at_start() {
    let (proxy, iso, _open) = open_beside_isolated().await;
    let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":2},"layers":[]}"#;
    let digest = iso.tag("v1", manifest);
    let fetched = proxy
        .send(
            Method::GET,
            "/v2/iso.test/corp/app/manifests/v1",
            &[("accept", registry_proxy::oci::MANIFEST_ACCEPT)],
        )
        .await;
    assert_eq!(fetched.status(), StatusCode::OK);
    let marker = registry_proxy::layout::blob_private_marker(&digest);
    proxy.driver.delete(&marker).await.expect("unmark");
    let through_open = format!("/v2/open.test/corp/app/blobs/{digest}");
    let (status, _, _) = proxy.get(&through_open).await;
    assert_eq!(status, StatusCode::OK, "unmarked: served by digest");
    let digests = proxy.state.scheduler.manifest_digests();
    assert_eq!(
        proxy.state.access.mark_stored_manifests(digests).await,
        1,
        "the manifest marked"
    );
    let other = format!("/v2/open.test/other/app/blobs/{digest}");
    let (status, _, _) = proxy.get(&other).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "marked: answered as never stored"
    );
}
