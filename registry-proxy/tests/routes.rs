//! The proxy in process (its router, the in-memory driver) against a small
//! test upstream that can misbehave in ways a real registry will not: wrong
//! bytes, short bodies, stalls, error statuses, and each auth scheme.

// Shared by the test binaries and the side-by-side benchmark; each uses a part.
use registry_proxy_testkit as support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use bytes::Bytes;
use registry_proxy::layout;
use registry_proxy::oci::{Digest, OCI_MANIFEST, RepoName};
use support::{InProcess, error_code};
use tokio::sync::Notify;
use tower::ServiceExt;

const USER: &str = "puller";
const PASSWORD: &str = "s3cret-pa55";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    None,
    /// Right length, wrong bytes.
    Corrupt,
    /// Half the body, then the connection breaks.
    Truncate,
    /// Half the body, then nothing.
    Stall,
    /// Hold the body until the gate opens.
    Gate,
    /// Hold the body until the gate opens, then send wrong bytes.
    GateCorrupt,
    /// Answer every request with this status.
    Status(u16),
    /// The right bytes in chunks, without a Content-Length.
    Chunked,
    /// Wrong bytes in chunks, without a Content-Length.
    ChunkedCorrupt,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Auth {
    Anonymous,
    Basic,
    Bearer,
}

/// A registry holding blobs and tagged manifests, counting what it serves.
struct Fake {
    blobs: Mutex<HashMap<String, Bytes>>,
    manifests: Mutex<HashMap<String, Bytes>>,
    requests: Mutex<Vec<String>>,
    tokens_issued: AtomicUsize,
    fault: Mutex<Fault>,
    auth: Auth,
    gate: Notify,
    base: Mutex<String>,
    /// The token realm its challenges name, when not `<base>/token`.
    realm: Mutex<Option<String>>,
    /// Blob digests answered with a redirect to this location.
    redirects: Mutex<HashMap<String, String>>,
    /// Whether each request to the token service (`token`) or the CDN
    /// (`cdn`) carried an Authorization header.
    authorization_seen: Mutex<Vec<(&'static str, bool)>>,
    /// A repository whose blob requests wait for the gate, then get 404.
    held: Mutex<Option<String>>,
}

impl Fake {
    fn count(&self, what: &str) -> usize {
        self.requests
            .lock()
            .expect("lock")
            .iter()
            .filter(|r| r.contains(what))
            .count()
    }

    fn set_fault(&self, fault: Fault) {
        *self.fault.lock().expect("lock") = fault;
    }

    fn add_blob(&self, data: &[u8]) -> Digest {
        let digest = Digest::of(data);
        self.blobs
            .lock()
            .expect("lock")
            .insert(digest.to_string(), Bytes::copy_from_slice(data));
        digest
    }

    fn tag(&self, tag: &str, manifest: &[u8]) -> Digest {
        let digest = Digest::of(manifest);
        let mut manifests = self.manifests.lock().expect("lock");
        manifests.insert(tag.to_owned(), Bytes::copy_from_slice(manifest));
        manifests.insert(digest.to_string(), Bytes::copy_from_slice(manifest));
        digest
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let auth = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let basic = format!("Basic {}", base64(&format!("{USER}:{PASSWORD}")));
        match self.auth {
            Auth::Anonymous => true,
            Auth::Basic => auth == basic,
            Auth::Bearer => auth.starts_with("Bearer token-for-"),
        }
    }
}

fn base64(s: &str) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = s.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

async fn token(
    State(fake): State<Arc<Fake>>,
    headers: HeaderMap,
    query: axum::extract::Query<HashMap<String, String>>,
) -> Response {
    fake.authorization_seen
        .lock()
        .expect("lock")
        .push(("token", headers.contains_key(header::AUTHORIZATION)));
    let basic = format!("Basic {}", base64(&format!("{USER}:{PASSWORD}")));
    if headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        != Some(basic.as_str())
    {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    fake.tokens_issued.fetch_add(1, Ordering::SeqCst);
    let scope = query.get("scope").cloned().unwrap_or_default();
    axum::Json(serde_json::json!({ "token": format!("token-for-{scope}"), "expires_in": 300 }))
        .into_response()
}

/// The upstream's tag list: every tag (they are shared by all repositories
/// but `nobody`), two per page, after `last=`, with a `Link` to the next.
fn tag_page(fake: &Fake, repo: &str, query: &str) -> Response {
    if repo == "nobody" {
        return StatusCode::NOT_FOUND.into_response();
    }
    let last = query
        .split('&')
        .find_map(|p| p.strip_prefix("last="))
        .unwrap_or_default();
    let mut tags: Vec<String> = fake
        .manifests
        .lock()
        .expect("lock")
        .keys()
        .filter(|k| !k.starts_with("sha256:") && k.as_str() > last)
        .cloned()
        .collect();
    tags.sort();
    let more = tags.len() > 2;
    tags.truncate(2);
    let body = serde_json::json!({"name": repo, "tags": tags}).to_string();
    let mut response = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    if more {
        let link = format!("</v2/{repo}/tags/list?n=2&last={}>; rel=\"next\"", tags[1]);
        response
            .headers_mut()
            .insert(header::LINK, link.parse().expect("link"));
    }
    response
}

async fn serve(
    State(fake): State<Arc<Fake>>,
    method: Method,
    Path(rest): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    fake.requests
        .lock()
        .expect("lock")
        .push(format!("{method} {rest}"));
    if !fake.authorized(&headers) {
        let challenge = match fake.auth {
            Auth::Bearer => format!(
                r#"Bearer realm="{}",service="fake""#,
                fake.realm
                    .lock()
                    .expect("lock")
                    .clone()
                    .unwrap_or_else(|| format!("{}/token", fake.base.lock().expect("lock")))
            ),
            _ => r#"Basic realm="fake""#.to_owned(),
        };
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, challenge)],
        )
            .into_response();
    }
    let fault = *fake.fault.lock().expect("lock");
    if let Fault::Status(code) = fault {
        return StatusCode::from_u16(code)
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            .into_response();
    }
    if rest == "huge/tags/list" {
        // 5 MiB of valid tags, without a Content-Length.
        let tags: Vec<String> = (0..400_000).map(|i| format!("tag-{i:07}")).collect();
        let body = serde_json::json!({"name": "huge", "tags": tags}).to_string();
        let chunks: Vec<_> = body
            .into_bytes()
            .chunks(64 << 10)
            .map(|c| Ok::<_, std::io::Error>(Bytes::copy_from_slice(c)))
            .collect();
        return Body::from_stream(futures::stream::iter(chunks)).into_response();
    }
    if let Some(repo) = rest.strip_suffix("/tags/list") {
        return tag_page(&fake, repo, query.as_deref().unwrap_or_default());
    }
    if let Some((_, reference)) = rest.split_once("/manifests/") {
        let Some(bytes) = fake.manifests.lock().expect("lock").get(reference).cloned() else {
            return StatusCode::NOT_FOUND.into_response();
        };
        let digest = Digest::of(&bytes).to_string();
        let headers = [
            (
                header::CONTENT_TYPE,
                "application/vnd.oci.image.manifest.v1+json".to_owned(),
            ),
            (
                header::HeaderName::from_static("docker-content-digest"),
                digest,
            ),
        ];
        let body = if method == Method::HEAD {
            Body::empty()
        } else {
            Body::from(bytes.clone())
        };
        let mut response = (headers, body).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, bytes.len().into());
        return response;
    }
    let Some((repo, digest)) = rest.split_once("/blobs/") else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let held = fake.held.lock().expect("lock").clone();
    if held.as_deref() == Some(repo) {
        fake.gate.notified().await;
        return StatusCode::NOT_FOUND.into_response();
    }
    if let Some(location) = fake.redirects.lock().expect("lock").get(digest) {
        return (
            StatusCode::TEMPORARY_REDIRECT,
            [(header::LOCATION, location.clone())],
        )
            .into_response();
    }
    let Some(data) = fake.blobs.lock().expect("lock").get(digest).cloned() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let len = data.len();
    let half = data.slice(..len / 2);
    let body = match fault {
        Fault::Corrupt => Body::from(vec![0u8; len]),
        Fault::Truncate => Body::from_stream(futures::stream::iter([
            Ok(half),
            Err(std::io::Error::other("cut")),
        ])),
        Fault::Stall => Body::from_stream(futures::StreamExt::chain(
            futures::stream::iter([Ok::<_, std::io::Error>(half)]),
            futures::stream::pending(),
        )),
        Fault::Gate | Fault::GateCorrupt => {
            let rest = if fault == Fault::Gate {
                data.slice(len / 2..)
            } else {
                Bytes::from(vec![0u8; len - len / 2])
            };
            let gated = async move {
                fake.gate.notified().await;
                Ok::<_, std::io::Error>(rest)
            };
            Body::from_stream(futures::StreamExt::chain(
                futures::stream::iter([Ok(half)]),
                futures::stream::once(gated),
            ))
        }
        Fault::Chunked | Fault::ChunkedCorrupt => {
            let data = if fault == Fault::Chunked {
                data
            } else {
                Bytes::from(vec![1u8; len])
            };
            let chunks: Vec<_> = data
                .chunks(64 << 10)
                .map(|c| Ok::<_, std::io::Error>(Bytes::copy_from_slice(c)))
                .collect();
            return Body::from_stream(futures::stream::iter(chunks)).into_response();
        }
        _ => Body::from(data),
    };
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, len.into());
    response
}

/// A CDN the upstream redirects blobs to: serves them to anyone, noting
/// whether the request carried credentials.
async fn cdn(
    State(fake): State<Arc<Fake>>,
    Path(digest): Path<String>,
    headers: HeaderMap,
) -> Response {
    fake.authorization_seen
        .lock()
        .expect("lock")
        .push(("cdn", headers.contains_key(header::AUTHORIZATION)));
    match fake.blobs.lock().expect("lock").get(&digest).cloned() {
        Some(data) => Body::from(data).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// A fake upstream on 127.0.0.1 and a proxy (in-memory storage) in front of it.
/// Derefs to the proxy (`state`, `driver`, `send`, `get`).
struct Setup {
    fake: Arc<Fake>,
    proxy: InProcess,
}

impl std::ops::Deref for Setup {
    type Target = InProcess;

    fn deref(&self) -> &InProcess {
        &self.proxy
    }
}

async fn setup_with(auth: Auth, credentials: bool, freshness: Duration) -> Setup {
    let (fake, base) = start_fake(auth).await;
    let credentials = credentials.then(|| (USER.to_owned(), PASSWORD.into()));
    let proxy = InProcess::open(&base, credentials, freshness).await;
    Setup { fake, proxy }
}

/// A fake upstream on 127.0.0.1, and its base URL.
async fn start_fake(auth: Auth) -> (Arc<Fake>, String) {
    let fake = Arc::new(Fake {
        blobs: Mutex::default(),
        manifests: Mutex::default(),
        requests: Mutex::default(),
        tokens_issued: AtomicUsize::new(0),
        fault: Mutex::new(Fault::None),
        auth,
        gate: Notify::new(),
        base: Mutex::default(),
        realm: Mutex::default(),
        redirects: Mutex::default(),
        authorization_seen: Mutex::default(),
        held: Mutex::default(),
    });
    let router = axum::Router::new()
        .route("/token", get(token))
        .route("/cdn/{digest}", get(cdn))
        .route("/v2/{*rest}", any(serve))
        .with_state(Arc::clone(&fake));
    let base = support::fakes::serve(router).await;
    *fake.base.lock().expect("lock") = base.clone();
    (fake, base)
}

async fn setup() -> Setup {
    setup_with(Auth::Anonymous, false, Duration::from_secs(60)).await
}

fn blob_uri(repo: &str, digest: &Digest) -> String {
    format!("/v2/{repo}/blobs/{digest}")
}

#[tokio::test]
async fn a_miss_is_fetched_once_then_served_from_storage() {
    let s = setup().await;
    let data = conformance::random_bytes(1, 3 << 20);
    let digest = s.fake.add_blob(&data);
    for _ in 0..2 {
        let (status, headers, body) = s.get(&blob_uri("team/app", &digest)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            headers["docker-content-digest"],
            digest.to_string().as_str()
        );
        assert!(body.expect("body") == data);
    }
    assert_eq!(s.fake.count("blobs/"), 1, "the second pull went upstream");
    // The commit may run after the client got its last (verified) byte.
    s.state.blobs.fills_done().await;
    assert!(
        s.driver.stat(&layout::blob_data(&digest)).await.is_ok(),
        "not stored"
    );
    assert!(
        s.driver
            .stat(&layout::layer_link(
                &layout::RepoKey::new(None, &RepoName::parse("team/app").expect("name")),
                &digest
            ))
            .await
            .is_ok(),
        "not linked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_share_one_upstream_fetch() {
    let s = Arc::new(setup().await);
    let data = conformance::random_bytes(2, 2 << 20);
    let digest = s.fake.add_blob(&data);
    s.fake.set_fault(Fault::Gate);
    // Every client gets its response head while the upstream still holds the
    // body back: streaming, not store-then-serve, and all from one fill.
    let mut bodies = Vec::new();
    for _ in 0..8 {
        let response = tokio::time::timeout(
            Duration::from_secs(10),
            s.send(Method::GET, &blob_uri("team/app", &digest), &[]),
        )
        .await
        .expect("a client waited for the whole body before getting headers");
        assert_eq!(response.status(), StatusCode::OK);
        bodies.push(tokio::spawn(axum::body::to_bytes(
            response.into_body(),
            64 << 20,
        )));
    }
    let fill_clients = |vars: serde_json::Value| vars["registry_proxy"]["FillClients"].clone();
    assert_eq!(fill_clients(debug_vars(&s).await), 8);
    s.fake.gate.notify_waiters();
    s.fake.gate.notify_one();
    for body in bodies {
        assert!(body.await.expect("task").expect("body") == data);
    }
    assert_eq!(
        s.fake.count("GET team/app/blobs/"),
        1,
        "the upstream sent the blob more than once"
    );
    assert_eq!(fill_clients(debug_vars(&s).await), 0);
}

#[tokio::test]
async fn wrong_bytes_abort_the_response_and_store_nothing() {
    let s = setup().await;
    let data = conformance::random_bytes(3, 1 << 20);
    let digest = s.fake.add_blob(&data);
    for fault in [Fault::Corrupt, Fault::Truncate, Fault::Stall] {
        s.fake.set_fault(fault);
        // Either an error answer, or a 200 whose body breaks off: never a
        // complete response with bytes that failed verification.
        let (status, _, body) = s.get(&blob_uri("team/app", &digest)).await;
        assert!(
            status != StatusCode::OK || body.is_err(),
            "{fault:?}: the client got a complete response"
        );
        s.state.blobs.fills_done().await;
        assert!(
            s.driver.stat(&layout::blob_data(&digest)).await.is_err(),
            "{fault:?}: a bad blob was stored"
        );
    }
    s.fake.set_fault(Fault::None);
    let (status, _, body) = s.get(&blob_uri("team/app", &digest)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.expect("body") == data, "a good fetch after failures");
}

#[tokio::test]
async fn a_chunked_upstream_blob_is_served_once_verified() {
    let s = setup().await;
    let data = conformance::random_bytes(6, 300_000);
    let digest = s.fake.add_blob(&data);
    s.fake.set_fault(Fault::ChunkedCorrupt);
    let (status, _, _) = s.get(&blob_uri("team/app", &digest)).await;
    assert_ne!(
        status,
        StatusCode::OK,
        "unverified chunked bytes were served"
    );
    s.state.blobs.fills_done().await;
    assert!(s.driver.stat(&layout::blob_data(&digest)).await.is_err());
    s.fake.set_fault(Fault::Chunked);
    let (status, headers, body) = s.get(&blob_uri("team/app", &digest)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_LENGTH], "300000");
    assert!(body.expect("body") == data);
    s.state.blobs.fills_done().await;
    assert_eq!(
        s.driver
            .stat(&layout::blob_data(&digest))
            .await
            .expect("stored")
            .size,
        300_000
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_client_is_cut_off_when_verification_fails() {
    let s = setup().await;
    let data = conformance::random_bytes(5, 1 << 20);
    let digest = s.fake.add_blob(&data);
    s.fake.set_fault(Fault::GateCorrupt);
    let response = s
        .send(Method::GET, &blob_uri("team/app", &digest), &[])
        .await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "headers come before the body is complete"
    );
    let body = tokio::spawn(axum::body::to_bytes(response.into_body(), 64 << 20));
    s.fake.gate.notify_one();
    assert!(
        body.await.expect("task").is_err(),
        "the client received a complete, unverified body"
    );
    s.state.blobs.fills_done().await;
    assert!(
        s.driver.stat(&layout::blob_data(&digest)).await.is_err(),
        "a bad blob was stored"
    );
}

#[tokio::test]
async fn ranges_are_served_with_206() {
    let s = setup().await;
    let data = conformance::random_bytes(4, 100_000);
    let digest = s.fake.add_blob(&data);
    for _ in 0..2 {
        // First from the fill, then from storage.
        let response = s
            .send(
                Method::GET,
                &blob_uri("a", &digest),
                &[("range", "bytes=10-19")],
            )
            .await;
        assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(
            response.headers()[header::CONTENT_RANGE],
            "bytes 10-19/100000"
        );
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        assert_eq!(body, data.slice(10..20));
        s.state.blobs.fills_done().await;
    }
    let response = s
        .send(
            Method::GET,
            &blob_uri("a", &digest),
            &[("range", "bytes=200000-")],
        )
        .await;
    assert_eq!(response.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    // The largest end a u64 holds means "to the end" (it overflowed).
    let response = s
        .send(
            Method::GET,
            &blob_uri("a", &digest),
            &[("range", "bytes=99990-18446744073709551615")],
        )
        .await;
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    assert_eq!(body, data.slice(99_990..));
    // A Range it does not understand is ignored (RFC 9110): 200, whole.
    for garbage in ["bytes=x-y", "items=0-1", "bytes=0-1,5-6"] {
        let response = s
            .send(Method::GET, &blob_uri("a", &digest), &[("range", garbage)])
            .await;
        assert_eq!(response.status(), StatusCode::OK, "{garbage}");
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        assert_eq!(body, data, "{garbage}");
    }
}

#[tokio::test]
async fn tags_are_resolved_once_per_freshness_window() {
    let s = setup().await;
    let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}"#;
    let digest = s.fake.tag("v1", manifest);
    for _ in 0..3 {
        let (status, headers, body) = s.get("/v2/team/app/manifests/v1").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body.expect("body"),
            &manifest[..],
            "not the upstream's bytes"
        );
        assert_eq!(
            headers[header::CONTENT_TYPE],
            "application/vnd.oci.image.manifest.v1+json"
        );
        assert_eq!(
            headers["docker-content-digest"],
            digest.to_string().as_str()
        );
    }
    assert_eq!(
        s.fake.count("manifests/"),
        1,
        "a fresh tag went upstream again"
    );
    let (status, _, _) = s.get(&format!("/v2/team/app/manifests/{digest}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        s.fake.count("manifests/"),
        1,
        "a manifest by digest went upstream"
    );
}

/// Concurrent requests for a tag that needs resolving share one upstream
/// resolution (a `wrk -c64` on a tag sent 64 HEADs per freshness window
/// before).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_for_a_tag_resolve_it_once() {
    let s = Arc::new(setup().await);
    let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}"#;
    s.fake.tag("v1", manifest);
    let requests: Vec<_> = (0..32)
        .map(|_| {
            let s = Arc::clone(&s);
            tokio::spawn(async move { s.get("/v2/team/app/manifests/v1").await })
        })
        .collect();
    for request in requests {
        let (status, _, body) = request.await.expect("task");
        assert_eq!(
            (status, body.expect("body")),
            (StatusCode::OK, Bytes::from_static(manifest))
        );
    }
    assert_eq!(
        s.fake.count("manifests/v1"),
        1,
        "the tag was resolved more than once"
    );
}

#[tokio::test]
async fn stale_tags_are_served_when_the_upstream_fails_and_404_is_404() {
    let s = setup_with(Auth::Anonymous, false, Duration::ZERO).await;
    let manifest = br#"{"schemaVersion":2,"manifests":[]}"#;
    s.fake.tag("v1", manifest);
    assert_eq!(s.get("/v2/team/app/manifests/v1").await.0, StatusCode::OK);
    for code in [500, 503, 429] {
        s.fake.set_fault(Fault::Status(code));
        let (status, _, body) = s.get("/v2/team/app/manifests/v1").await;
        assert_eq!(
            status,
            StatusCode::OK,
            "upstream {code}: the cached tag was not served"
        );
        assert_eq!(body.expect("body"), &manifest[..]);
    }
    s.fake.set_fault(Fault::Status(404));
    let (status, _, body) = s.get("/v2/team/app/manifests/v1").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body.expect("body")), "MANIFEST_UNKNOWN");
    s.fake.set_fault(Fault::Status(503));
    let (status, _, _) = s.get("/v2/team/app/manifests/never-cached").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn bearer_tokens_are_fetched_once_per_repository() {
    let s = setup_with(Auth::Bearer, true, Duration::from_secs(60)).await;
    let a = s.fake.add_blob(b"first");
    let b = s.fake.add_blob(b"second");
    for digest in [&a, &b] {
        let (status, _, body) = s.get(&blob_uri("team/app", digest)).await;
        assert_eq!(status, StatusCode::OK, "{:?}", body);
    }
    assert_eq!(
        s.fake.tokens_issued.load(Ordering::SeqCst),
        1,
        "the token was not reused"
    );
    let c = s.fake.add_blob(b"third");
    let (status, _, _) = s.get(&blob_uri("team/other", &c)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        s.fake.tokens_issued.load(Ordering::SeqCst),
        2,
        "tokens are per repository"
    );
}

#[tokio::test]
async fn basic_auth_upstreams_work_with_credentials_and_refuse_without() {
    let s = setup_with(Auth::Basic, true, Duration::from_secs(60)).await;
    s.fake.tag("v1", br#"{"schemaVersion":2,"layers":[]}"#);
    assert_eq!(s.get("/v2/team/app/manifests/v1").await.0, StatusCode::OK);

    let anonymous = setup_with(Auth::Basic, false, Duration::from_secs(60)).await;
    anonymous
        .fake
        .tag("v1", br#"{"schemaVersion":2,"layers":[]}"#);
    let (status, _, body) = anonymous.get("/v2/team/app/manifests/v1").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&body.expect("body")), "UNAUTHORIZED");

    let wrong = setup_with(Auth::Bearer, true, Duration::from_secs(60)).await;
    let (status, _, body) = wrong.get("/v2/team/app/manifests/missing").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let body = body.expect("body");
    assert!(
        !String::from_utf8_lossy(&body).contains(PASSWORD),
        "a response carried the password"
    );
}

#[tokio::test]
async fn push_delete_and_bad_names_get_oci_errors() {
    let s = setup().await;
    let digest = Digest::of(b"x");
    for (method, uri, status, code) in [
        (
            Method::PUT,
            "/v2/team/app/manifests/v1".to_owned(),
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
        ),
        (
            Method::POST,
            "/v2/team/app/blobs/uploads/".to_owned(),
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
        ),
        (
            Method::DELETE,
            blob_uri("team/app", &digest),
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
        ),
        (
            Method::GET,
            "/v2/Team/App/manifests/v1".to_owned(),
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
        ),
        (
            Method::GET,
            "/v2/a/../b/manifests/v1".to_owned(),
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
        ),
        (
            Method::GET,
            "/v2/team/app/blobs/sha256:abc".to_owned(),
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
        ),
    ] {
        let response = s.send(method.clone(), &uri, &[]).await;
        assert_eq!(response.status(), status, "{method} {uri}");
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .expect("body");
        assert_eq!(error_code(&body), code, "{method} {uri}");
    }
    let response = s.send(Method::GET, "/v2/", &[]).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );
    // containerd's ?ns= names the namespace: the upstream's host here.
    let uri = blob_uri("team/app", &s.fake.add_blob(b"ns"));
    let ns = s.state.namespaces.default_namespace().name.clone();
    let response = s.send(Method::GET, &format!("{uri}?ns={ns}"), &[]).await;
    assert_eq!(response.status(), StatusCode::OK, "?ns={ns}");
    let response = s.send(Method::GET, &format!("{uri}?ns=quay.io"), &[]).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    assert_eq!(error_code(&body), "NAME_UNKNOWN");
}

/// Names that try to leave their directory (plain or percent-encoded),
/// giant headers and manifests over 4 MiB get OCI errors; nothing reaches
/// storage or the upstream.
#[tokio::test]
async fn hostile_input_gets_oci_errors() {
    let s = setup().await;
    let digest = Digest::of(b"x");
    for (uri, status, code) in [
        ("/v2/a%2F..%2Fb/manifests/v1", 400, "NAME_INVALID"),
        ("/v2/%2e%2e/manifests/v1", 400, "NAME_INVALID"),
        ("/v2/team/%2E%2E/app/manifests/v1", 400, "NAME_INVALID"),
        ("/v2/team%5C..%5Capp/manifests/v1", 400, "NAME_INVALID"),
        ("/v2/team%00/app/manifests/v1", 400, "NAME_INVALID"),
        ("/v2//etc/manifests/v1", 400, "NAME_INVALID"),
        (
            "/v2/team/app/manifests/..%2F..%2Fetc",
            400,
            "MANIFEST_INVALID",
        ),
        ("/v2/team/app/manifests/v1%2F..", 400, "MANIFEST_INVALID"),
        (
            "/v2/team/app/blobs/sha256:..%2F..%2Fdata",
            400,
            "DIGEST_INVALID",
        ),
        ("/v2/team/app/blobs/sha256%3A..", 400, "DIGEST_INVALID"),
    ] {
        let response = s.send(Method::GET, uri, &[]).await;
        assert_eq!(response.status().as_u16(), status, "{uri}");
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .expect("body");
        assert_eq!(error_code(&body), code, "{uri}");
    }
    let filler = "x".repeat(20 << 10);
    let response = s
        .send(
            Method::GET,
            &blob_uri("team/app", &digest),
            &[("x-filler", &filler)],
        )
        .await;
    assert_eq!(
        response.status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    let body = axum::body::to_bytes(response.into_body(), 1 << 16)
        .await
        .expect("body");
    assert_eq!(error_code(&body), "SIZE_INVALID");

    let giant = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": registry_proxy::oci::OCI_MANIFEST,
        "annotations": {"padding": "p".repeat(5 << 20)},
    })
    .to_string();
    s.fake.tag("giant", giant.as_bytes());
    let (status, _, body) = s.get("/v2/team/app/manifests/giant").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&body.expect("body")), "MANIFEST_INVALID");
    assert_eq!(
        s.fake.count("GET "),
        1,
        "only the giant manifest's GET reached the upstream"
    );
    let mut stored = Vec::new();
    s.driver
        .walk(
            &driver_core::StoragePath::root(),
            &driver_core::WalkOptions::default(),
            &mut |info| {
                if !info.path.as_str().starts_with("/registry-proxy") {
                    stored.push(info.path.to_string());
                }
                driver_core::WalkControl::Continue
            },
        )
        .await
        .expect("walk the storage");
    assert_eq!(stored, Vec::<String>::new(), "nothing was stored");
}

#[tokio::test]
async fn tags_list_and_catalog_paginate() {
    let s = setup().await;
    for tag in ["a", "b", "c"] {
        s.fake.tag(
            tag,
            format!(r#"{{"schemaVersion":2,"layers":[],"t":"{tag}"}}"#).as_bytes(),
        );
        assert_eq!(
            s.get(&format!("/v2/team/app/manifests/{tag}")).await.0,
            StatusCode::OK
        );
        assert_eq!(
            s.get(&format!("/v2/team/other/manifests/{tag}")).await.0,
            StatusCode::OK
        );
    }
    let (status, headers, body) = s.get("/v2/team/app/tags/list?n=2").await;
    assert_eq!(status, StatusCode::OK);
    let json: serde_json::Value = serde_json::from_slice(&body.expect("body")).expect("json");
    assert_eq!(
        json,
        serde_json::json!({"name": "team/app", "tags": ["a", "b"]})
    );
    assert_eq!(
        headers[header::LINK],
        r#"</v2/team/app/tags/list?n=2&last=b>; rel="next""#
    );
    let (_, _, body) = s.get("/v2/team/app/tags/list?n=2&last=b").await;
    let json: serde_json::Value = serde_json::from_slice(&body.expect("body")).expect("json");
    assert_eq!(json["tags"], serde_json::json!(["c"]));
    let (_, _, body) = s.get("/v2/_catalog").await;
    let json: serde_json::Value = serde_json::from_slice(&body.expect("body")).expect("json");
    assert_eq!(
        json,
        serde_json::json!({"repositories": ["team/app", "team/other"]})
    );
    let (status, _, body) = s.get("/v2/team/app/tags/list?n=many").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        error_code(&body.expect("body")),
        "PAGINATION_NUMBER_INVALID"
    );
    let (status, _, body) = s.get("/v2/nobody/tags/list").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body.expect("body")), "NAME_UNKNOWN");

    // The list is the upstream's (all its pages), not only what was pulled;
    // when the upstream fails, it is what the cache holds.
    s.fake
        .tag("d", br#"{"schemaVersion":2,"layers":[],"t":"d"}"#);
    let tags = |body: Result<Bytes, _>| {
        let json: serde_json::Value = serde_json::from_slice(&body.expect("body")).expect("json");
        json["tags"].clone()
    };
    let (_, _, body) = s.get("/v2/team/app/tags/list").await;
    assert_eq!(tags(body), serde_json::json!(["a", "b", "c", "d"]));
    s.fake.set_fault(Fault::Status(503));
    let (status, _, body) = s.get("/v2/team/app/tags/list").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(tags(body), serde_json::json!(["a", "b", "c"]));
}

/// GETs `uri` from the debug listener's router.
async fn debug_get(s: &Setup, uri: &str) -> Bytes {
    let response = registry_proxy::debug_app(s.state.clone(), &Default::default())
        .oneshot(Request::get(uri).body(Body::empty()).expect("request"))
        .await
        .expect("debug response");
    assert_eq!(response.status(), StatusCode::OK, "{uri}");
    axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("debug body")
}

async fn debug_vars(s: &Setup) -> serde_json::Value {
    serde_json::from_slice(&debug_get(s, "/debug/vars").await).expect("json")
}

#[tokio::test]
async fn counters_match_a_scripted_sequence_of_hits_and_misses() {
    let s = setup().await;
    let blob = conformance::random_bytes(8, 200_000);
    let blob_digest = s.fake.add_blob(&blob);
    let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}"#;
    let manifest_digest = s.fake.tag("v1", manifest);
    let blob_uri = blob_uri("team/app", &blob_digest);
    // Blobs: a miss, a hit, a HEAD hit, an unknown digest.
    assert_eq!(s.get(&blob_uri).await.0, StatusCode::OK);
    s.state.blobs.fills_done().await;
    assert_eq!(s.get(&blob_uri).await.0, StatusCode::OK);
    assert_eq!(
        s.send(Method::HEAD, &blob_uri, &[]).await.status(),
        StatusCode::OK
    );
    let unknown = Digest::of(b"nowhere");
    assert_eq!(
        s.get(&format!("/v2/team/app/blobs/{unknown}")).await.0,
        StatusCode::NOT_FOUND
    );
    // Manifests: a miss by tag, a hit by digest, a HEAD hit by digest.
    assert_eq!(s.get("/v2/team/app/manifests/v1").await.0, StatusCode::OK);
    let by_digest = format!("/v2/team/app/manifests/{manifest_digest}");
    assert_eq!(s.get(&by_digest).await.0, StatusCode::OK);
    assert_eq!(
        s.send(Method::HEAD, &by_digest, &[]).await.status(),
        StatusCode::OK
    );

    let vars = debug_vars(&s).await;
    let (b, m) = (blob.len() as u64, manifest.len() as u64);
    assert_eq!(
        vars["registry.proxy.blobs"],
        serde_json::json!({"Requests": 4, "Hits": 2, "Misses": 1, "BytesPulled": b, "BytesPushed": 2 * b})
    );
    assert_eq!(
        vars["registry.proxy.manifests"],
        serde_json::json!({"Requests": 3, "Hits": 2, "Misses": 1, "BytesPulled": m, "BytesPushed": 2 * m})
    );
    assert_eq!(vars["registry_proxy"]["FillsInFlight"], 0);
    assert_eq!(vars["registry_proxy"]["FillClients"], 0);
    // The blob and the manifest: the unknown digest has no entry (it had
    // one, made before anyone knew whether it existed).
    assert_eq!(vars["registry_proxy"]["SchedulerEntries"], 2);
    let text = String::from_utf8(debug_get(&s, "/metrics").await.to_vec()).expect("utf-8");
    // Every upstream request is timed; the unknown digest's 404 is an error.
    let upstream_requests = s.fake.count("GET ") + s.fake.count("HEAD ");
    let ns = s.state.namespaces.default_namespace().name.clone();
    for line in [
        &format!(r#"registry_proxy_requests_total{{namespace="{ns}",kind="blob"}} 4"#),
        &format!(r#"registry_proxy_hits_total{{namespace="{ns}",kind="manifest"}} 2"#),
        &format!(
            r#"registry_proxy_bytes_pushed_total{{namespace="{ns}",kind="blob"}} {}"#,
            2 * b
        ),
        r#"registry_proxy_upstream_errors_total{status="404"} 1"#,
        &format!("registry_proxy_upstream_request_duration_seconds_count {upstream_requests}"),
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
    }
    // Each blob GET opens storage once (size and bytes in one request, no
    // stat before it); the manifest hits by digest read nothing but the
    // link check (the manifest, verified when fetched, is in memory). The
    // stats are the blob HEAD's, the two manifest hits' by digest, and two
    // of the private-content marker (the miss and the unknown digest:
    // requests knowing no link to the blob).
    assert_eq!(support::storage_ops(&text, "open"), 3);
    assert_eq!(support::storage_ops(&text, "stat"), 5);
}

#[tokio::test]
async fn a_fresh_tag_is_served_without_reading_storage() {
    let s = setup().await;
    let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}"#;
    s.fake.tag("v1", manifest);
    let ops = |text: &str| ["get_content", "open", "stat"].map(|op| support::storage_ops(text, op));
    let (status, _, body) = s.get("/v2/team/app/manifests/v1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body.expect("body")[..], manifest);
    let text = String::from_utf8(debug_get(&s, "/metrics").await.to_vec()).expect("utf-8");
    let before = ops(&text);
    // Within the tag's freshness the tag resolves in memory, and the
    // manifest (verified when fetched) is in memory too.
    for _ in 0..5 {
        let (status, _, body) = s.get("/v2/team/app/manifests/v1").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(&body.expect("body")[..], manifest);
    }
    let text = String::from_utf8(debug_get(&s, "/metrics").await.to_vec()).expect("utf-8");
    assert_eq!(ops(&text), before, "hits by a fresh tag read storage");
    assert_eq!(
        s.fake.count("/manifests/v1"),
        1,
        "the upstream was asked again"
    );
}

/// Moves tokio's clock (and so the scheduler's) forward by `by`.
async fn travel(by: Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
}

#[tokio::test]
async fn expiry_keeps_what_a_live_manifest_uses_then_frees_it_and_refills() {
    let s = setup().await;
    let half = Duration::from_secs(84 * 3600);
    let layer = conformance::random_bytes(9, 100_000);
    let layer_digest = s.fake.add_blob(&layer);
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[{{"digest":"{layer_digest}","size":100000}}]}}"#
    );
    let manifest_digest = s.fake.tag("v1", manifest.as_bytes());
    let layer_uri = blob_uri("team/app", &layer_digest);
    assert_eq!(s.get("/v2/team/app/manifests/v1").await.0, StatusCode::OK);
    assert_eq!(s.get(&layer_uri).await.0, StatusCode::OK);
    s.state.blobs.fills_done().await;
    assert_eq!(s.state.scheduler.len(), 2);

    // A client that has the layer pulls only the manifest: that keeps the
    // layer alive too.
    travel(half).await;
    let by_digest = format!("/v2/team/app/manifests/{manifest_digest}");
    assert_eq!(s.get(&by_digest).await.0, StatusCode::OK);
    travel(half + Duration::from_secs(1)).await;
    assert_eq!(s.state.scheduler.expire_due().await.entries, 0);
    assert!(
        s.driver
            .stat(&layout::blob_data(&layer_digest))
            .await
            .is_ok()
    );

    // The background expirer may get there first: expire_due also waits
    // for its deletions, and the counters tell what was done.
    travel(half).await;
    s.state.scheduler.expire_due().await;
    for gone in [
        layout::blob_data(&layer_digest),
        layout::blob_data(&manifest_digest),
        layout::tag_current_link(
            &layout::RepoKey::new(None, &RepoName::parse("team/app").expect("name")),
            &driver_core::Segment::parse("v1").expect("tag"),
        ),
    ] {
        assert!(
            s.driver.stat(&gone).await.is_err(),
            "{gone} survived expiry"
        );
    }
    let vars = debug_vars(&s).await;
    assert_eq!(vars["registry_proxy"]["SchedulerEntries"], 0);
    assert_eq!(vars["registry_proxy"]["Expirations"], 2);
    assert_eq!(
        vars["registry_proxy"]["BytesFreed"],
        100_000 + manifest.len() as u64
    );

    // Pulled again: fetched once more from the upstream and served whole.
    let fetched = s.fake.count(&format!("blobs/{layer_digest}"));
    let (status, _, body) = s.get(&layer_uri).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.expect("body"), layer);
    s.state.blobs.fills_done().await;
    assert_eq!(s.fake.count(&format!("blobs/{layer_digest}")), fetched + 1);
    assert_eq!(s.get("/v2/team/app/manifests/v1").await.0, StatusCode::OK);
    assert!(
        s.driver
            .stat(&layout::blob_data(&layer_digest))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn every_response_carries_its_request_id() {
    let s = setup().await;
    let response = s.send(Method::GET, "/v2/", &[]).await;
    let id = response.headers()["x-request-id"].to_str().expect("ascii");
    assert!(
        id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    let other = s.send(Method::GET, "/v2/", &[]).await;
    assert_ne!(other.headers()["x-request-id"], id, "ids repeat");
    let echoed = s
        .send(
            Method::GET,
            "/v2/x/manifests/v1",
            &[("x-request-id", "ci-run-42.a")],
        )
        .await;
    assert_eq!(echoed.headers()["x-request-id"], "ci-run-42.a");
    let refused = s
        .send(
            Method::GET,
            "/v2/",
            &[("x-request-id", "bad id; drop table")],
        )
        .await;
    assert_ne!(refused.headers()["x-request-id"], "bad id; drop table");
}

/// An isolated namespace joins another namespace's running fill only once
/// its own upstream proved access: refused (the blob is not there) it gets
/// `BLOB_UNKNOWN` while the fill runs on; proved, it streams from the same
/// fill, its upstream asked one HEAD and no GET.
#[tokio::test]
async fn an_isolated_namespace_joins_a_running_fill_only_after_proof() {
    use registry_proxy::namespace::{NamespaceSpec, Sharing};
    let (a, a_base) = start_fake(Auth::Anonymous).await;
    let (b, b_base) = start_fake(Auth::Anonymous).await;
    let spec = |name: &str, base: &str, sharing| NamespaceSpec {
        name: name.to_owned(),
        sharing,
        registry2_dir: false,
        default: false,
        ..NamespaceSpec::single(base.parse().expect("url"), None)
    };
    let proxy = InProcess::with_namespaces(
        &[
            spec("a.test", &a_base, Sharing::Shared),
            spec("b.test", &b_base, Sharing::Isolated),
        ],
        Duration::from_secs(60),
    )
    .await;
    let data = conformance::random_bytes(9, 2 << 20);
    let digest = a.add_blob(&data);
    a.set_fault(Fault::Gate);
    let first = proxy
        .send(
            Method::GET,
            &format!("/v2/a.test/team/app/blobs/{digest}"),
            &[],
        )
        .await;
    assert_eq!(first.status(), StatusCode::OK);
    let first = tokio::spawn(axum::body::to_bytes(first.into_body(), 4 << 20));

    let uri = format!("/v2/b.test/team/app/blobs/{digest}");
    let (status, _, body) = proxy.get(&uri).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body.expect("body")), "BLOB_UNKNOWN");
    assert_eq!((b.count("HEAD "), b.count("GET ")), (1, 0));

    b.add_blob(&data);
    let joined = proxy.send(Method::GET, &uri, &[]).await;
    assert_eq!(joined.status(), StatusCode::OK);
    let joined = tokio::spawn(axum::body::to_bytes(joined.into_body(), 4 << 20));
    assert_eq!(
        (b.count("HEAD "), b.count("GET ")),
        (2, 0),
        "b did not join the fill"
    );
    assert_eq!(a.count("GET "), 1);
    a.gate.notify_waiters();
    for body in [first, joined] {
        let body = body.await.expect("task").expect("body");
        assert_eq!(Digest::of(&body), digest);
    }
    // Proved once: served from storage now, without asking b again.
    let (status, _, body) = proxy.get(&uri).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(Digest::of(&body.expect("body")), digest);
    assert_eq!(
        (b.count("HEAD "), b.count("GET "), a.count("GET ")),
        (2, 0, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_never_break_while_expiry_and_collection_run_in_a_loop() {
    use registry_proxy::scheduler::{GcOptions, Options};
    let (fake, base) = start_fake(Auth::Anonymous).await;
    let options = Options {
        // Everything expires a second after its last use, and the collector
        // takes anything unreferenced at once.
        ttl: Duration::from_secs(1),
        gc: GcOptions {
            grace: Duration::ZERO,
            ..GcOptions::default()
        },
        ..Options::default()
    };
    let spec = registry_proxy::namespace::NamespaceSpec::single(base.parse().expect("url"), None);
    let proxy =
        Arc::new(InProcess::with_scheduler(&[spec], Duration::from_secs(60), options).await);
    let blobs: Arc<Vec<(Vec<u8>, Digest)>> = Arc::new(
        (0..12)
            .map(|i| {
                let data = conformance::random_bytes(i, (64 << 10) + i as usize * 1000).to_vec();
                let digest = fake.add_blob(&data);
                (data, digest)
            })
            .collect(),
    );
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let collections = Arc::new(AtomicUsize::new(0));
    let collector = {
        let (proxy, blobs, stop) = (Arc::clone(&proxy), Arc::clone(&blobs), Arc::clone(&stop));
        let collections = Arc::clone(&collections);
        tokio::spawn(async move {
            let (mut runs, mut removed, mut expired) = (0, 0, 0);
            let scheduler = &proxy.state.scheduler;
            while !stop.load(Ordering::SeqCst) {
                // Leftover bytes of a blob clients pull (no entry keeps them
                // unless a pull made one), racing the pulls.
                let (data, digest) = &blobs[runs % blobs.len()];
                let _ = proxy
                    .driver
                    .put_content(&layout::blob_data(digest), Bytes::copy_from_slice(data))
                    .await;
                let collected = scheduler.gc(false).await.expect("collect");
                removed += collected.blobs + collected.links;
                expired += scheduler.expire_due().await.entries;
                runs += 1;
                collections.store(runs, Ordering::SeqCst);
                tokio::task::yield_now().await;
            }
            (runs, removed, expired)
        })
    };
    // The first collection runs before any pull, so it has a leftover to
    // remove whatever the scheduling of the rest.
    while collections.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    let pullers = (0..6).map(|worker| {
        let (proxy, blobs) = (Arc::clone(&proxy), Arc::clone(&blobs));
        let collections = Arc::clone(&collections);
        tokio::spawn(async move {
            // At least 60 pulls each, and until 30 collections ran.
            let mut round = 0;
            while round < 60 || collections.load(Ordering::SeqCst) < 30 {
                round += 1;
                // Hits on memory storage never wait: let the collector run.
                tokio::task::yield_now().await;
                let (data, digest) = &blobs[(worker * 7 + round) % blobs.len()];
                let repo = ["a/one", "b/two", "c/three"][(worker + round) % 3];
                let (status, _, body) = proxy.get(&blob_uri(repo, digest)).await;
                assert_eq!(status, StatusCode::OK, "pull {round} of worker {worker}");
                assert!(
                    body.expect("body") == *data,
                    "pull {round} of worker {worker}: bytes differ"
                );
            }
        })
    });
    for puller in futures::future::join_all(pullers).await {
        puller.expect("puller");
    }
    stop.store(true, Ordering::SeqCst);
    let (runs, removed, expired) = collector.await.expect("collector");
    assert!(runs >= 30, "the collector ran {runs} times");
    assert!(removed > 0, "the collector removed nothing while pulls ran");
    // Entries live a second: how many fell due during the run varies.
    let _ = expired;
    proxy.state.blobs.fills_done().await;
    support::verify_stored_blobs(&*proxy.driver).await;
}

/// The manifests endpoint serves by digest only what is a manifest of that
/// repository: a cached layer asked for as a manifest is not read from
/// storage (it could be gigabytes) nor served with a type its own bytes
/// choose; the upstream answers (here: no such manifest). A manifest whose
/// `mediaType` names no manifest type is served as one, and every answer
/// tells browsers not to sniff.
#[tokio::test]
async fn only_manifests_are_served_through_the_manifests_endpoint() {
    let s = setup().await;
    let page = br#"{"mediaType":"text/html","layers":[],"x":"<script>alert(1)</script>"}"#;
    let digest = s.fake.add_blob(page);
    let (status, _, body) = s.get(&blob_uri("team/app", &digest)).await;
    assert_eq!(
        (status, body.expect("body")),
        (StatusCode::OK, Bytes::from_static(page))
    );
    s.state.blobs.fills_done().await;
    for repo in ["team/app", "other/repo"] {
        let (status, headers, body) = s.get(&format!("/v2/{repo}/manifests/{digest}")).await;
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "{repo}: a stored blob was served as a manifest"
        );
        assert_eq!(error_code(&body.expect("body")), "MANIFEST_UNKNOWN");
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    }
    assert_eq!(
        s.fake.count(&format!("manifests/{digest}")),
        2,
        "the upstream was not asked"
    );
    // A real manifest saying it is HTML is served as an OCI manifest.
    let digest = s.fake.tag("html", page);
    for uri in [
        "/v2/team/app/manifests/html".to_owned(),
        format!("/v2/team/app/manifests/{digest}"),
    ] {
        let (status, headers, body) = s.get(&uri).await;
        assert_eq!(
            (status, body.expect("body")),
            (StatusCode::OK, Bytes::from_static(page))
        );
        assert_eq!(headers[header::CONTENT_TYPE], OCI_MANIFEST, "{uri}");
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    }
    let (_, headers, _) = s.get(&blob_uri("team/app", &digest)).await;
    assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
}

/// The upstream's credentials go to a token realm only over https or on
/// the upstream's own host: a plain-http realm elsewhere (`localhost` is
/// another host than `127.0.0.1`) is asked without them, so the pull fails
/// instead of handing the password over.
#[tokio::test]
async fn credentials_never_go_to_a_plain_http_realm_on_another_host() {
    let s = setup_with(Auth::Bearer, true, Duration::from_secs(60)).await;
    let blob = s.fake.add_blob(b"behind a token");
    let base = s.fake.base.lock().expect("lock").clone();
    let elsewhere = base.replace("127.0.0.1", "localhost");
    *s.fake.realm.lock().expect("lock") = Some(format!("{elsewhere}/token"));
    let (status, _, _) = s.get(&blob_uri("team/app", &blob)).await;
    assert_ne!(status, StatusCode::OK);
    let seen = s.fake.authorization_seen.lock().expect("lock").clone();
    assert_eq!(seen, [("token", false)], "credentials sent to {elsewhere}");
    // The upstream's own host over plain http still gets them.
    *s.fake.realm.lock().expect("lock") = None;
    let (status, _, _) = s.get(&blob_uri("team/app", &blob)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        s.fake.authorization_seen.lock().expect("lock").last(),
        Some(&("token", true))
    );
}

/// Blob redirects (Docker Hub's CDN) are followed without the upstream's
/// credentials, and never to a link-local address (a cloud metadata
/// service) from an upstream that is not one.
#[tokio::test]
async fn redirects_carry_no_credentials_and_never_reach_link_local_addresses() {
    let s = setup_with(Auth::Basic, true, Duration::from_secs(60)).await;
    let data = conformance::random_bytes(11, 300_000);
    let digest = s.fake.add_blob(&data);
    let base = s.fake.base.lock().expect("lock").clone();
    let cdn = base.replace("127.0.0.1", "localhost");
    s.fake
        .redirects
        .lock()
        .expect("lock")
        .insert(digest.to_string(), format!("{cdn}/cdn/{digest}"));
    let (status, _, body) = s.get(&blob_uri("team/app", &digest)).await;
    assert_eq!((status, body.expect("body")), (StatusCode::OK, data));
    let seen = s.fake.authorization_seen.lock().expect("lock").clone();
    assert_eq!(seen, [("cdn", false)], "credentials followed the redirect");

    let other = s.fake.add_blob(b"redirected to a metadata service");
    s.fake.redirects.lock().expect("lock").insert(
        other.to_string(),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
    );
    let (status, _, body) = s.get(&blob_uri("team/app", &other)).await;
    let body = String::from_utf8_lossy(&body.expect("body")).into_owned();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("link-local"), "{body}");
}

/// Polls the proxy's debug variables until `FillClients` reaches `n`.
async fn wait_for_fill_clients(s: &InProcess, n: u64) {
    for _ in 0..10_000 {
        let response = registry_proxy::debug_app(s.state.clone(), &Default::default())
            .oneshot(
                Request::get("/debug/vars")
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("debug response");
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        let vars: serde_json::Value = serde_json::from_slice(&body).expect("json");
        if vars["registry_proxy"]["FillClients"] == n {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("never {n} fill clients");
}

/// A fill started by a request for a repository that does not have the
/// blob (`GET /v2/no/such/blobs/<D>`, here held until the legitimate pull
/// joined it) fails for that request only: the pull that joined it fills
/// again through its own repository and gets the blob whole. (A HEAD
/// starts no fill: the upstream's HEAD answers it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_failing_for_another_repository_does_not_fail_the_one_that_joined_it() {
    let s = setup().await;
    let data = conformance::random_bytes(12, 500_000);
    let digest = s.fake.add_blob(&data);
    *s.fake.held.lock().expect("lock") = Some("no/such".to_owned());
    let state = s.state.clone();
    let spoiler_uri = blob_uri("no/such", &digest);
    let spoiler = tokio::spawn(async move {
        use tower::ServiceExt as _;
        registry_proxy::app(state)
            .oneshot(
                Request::get(spoiler_uri)
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("response")
            .status()
    });
    wait_for_fill_clients(&s, 1).await;
    let state = s.state.clone();
    let uri = blob_uri("team/app", &digest);
    let pull = tokio::spawn(async move {
        use tower::ServiceExt as _;
        let response = registry_proxy::app(state)
            .oneshot(Request::get(uri).body(Body::empty()).expect("request"))
            .await
            .expect("response");
        let status = response.status();
        (
            status,
            axum::body::to_bytes(response.into_body(), 1 << 20).await,
        )
    });
    wait_for_fill_clients(&s, 2).await;
    s.fake.gate.notify_waiters();
    // Its fill fails (404, or 503 if the held answer outlasted the fill
    // timeout): either way, not the pull's answer.
    assert_ne!(spoiler.await.expect("task"), StatusCode::OK);
    let (status, body) = pull.await.expect("task");
    let body = body.expect("body");
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&body[..body.len().min(300)])
    );
    assert!(body == data, "not the blob's bytes");
}

/// A blob that came in through an isolated namespace is private to it:
/// a shared namespace (the default) is served it from storage, or from
/// the running fill, only when its own upstream has it. Its upstream lacks
/// it here, so both answer `BLOB_UNKNOWN` after one HEAD each; content that
/// came through the shared namespace is still served without asking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_of_an_isolated_namespace_does_not_leak_through_a_shared_one() {
    use registry_proxy::namespace::{NamespaceSpec, Sharing};
    let (private, private_base) = start_fake(Auth::Anonymous).await;
    let (public, public_base) = start_fake(Auth::Anonymous).await;
    let spec = |name: &str, base: &str, sharing, default| NamespaceSpec {
        name: name.to_owned(),
        sharing,
        registry2_dir: false,
        default,
        ..NamespaceSpec::single(base.parse().expect("url"), None)
    };
    let proxy = InProcess::with_namespaces(
        &[
            spec("private.test", &private_base, Sharing::Isolated, false),
            spec("public.test", &public_base, Sharing::Shared, true),
        ],
        Duration::from_secs(60),
    )
    .await;
    // Joining the private namespace's running fill.
    let secret = conformance::random_bytes(13, 2 << 20);
    let digest = private.add_blob(&secret);
    private.set_fault(Fault::Gate);
    let first = proxy
        .send(
            Method::GET,
            &format!("/v2/private.test/corp/app/blobs/{digest}"),
            &[],
        )
        .await;
    assert_eq!(first.status(), StatusCode::OK);
    let first = tokio::spawn(axum::body::to_bytes(first.into_body(), 4 << 20));
    let leak_uri = format!("/v2/library/anything/blobs/{digest}");
    let (status, _, body) = proxy.get(&leak_uri).await;
    assert_eq!(
        (status, error_code(&body.expect("body")).as_str()),
        (StatusCode::NOT_FOUND, "BLOB_UNKNOWN"),
        "a running private fill was joined without proof"
    );
    private.gate.notify_one();
    assert_eq!(first.await.expect("task").expect("body"), secret);
    proxy.state.blobs.fills_done().await;
    // From storage.
    let (status, _, body) = proxy.get(&leak_uri).await;
    assert_eq!(
        (status, error_code(&body.expect("body")).as_str()),
        (StatusCode::NOT_FOUND, "BLOB_UNKNOWN"),
        "a stored private blob was served without proof"
    );
    assert_eq!((public.count("HEAD "), public.count("GET ")), (2, 0));
    // Once the shared namespace's upstream has it, it is served.
    public.add_blob(&secret);
    let (status, _, body) = proxy.get(&leak_uri).await;
    assert_eq!((status, body.expect("body")), (StatusCode::OK, secret));
    // What came in through the shared namespace is shared as before.
    let open = conformance::random_bytes(14, 100_000);
    let open_digest = public.add_blob(&open);
    let (status, _, _) = proxy
        .get(&format!("/v2/library/a/blobs/{open_digest}"))
        .await;
    assert_eq!(status, StatusCode::OK);
    proxy.state.blobs.fills_done().await;
    let heads = public.count("HEAD ");
    let (status, _, body) = proxy
        .get(&format!("/v2/library/b/blobs/{open_digest}"))
        .await;
    assert_eq!((status, body.expect("body")), (StatusCode::OK, open));
    assert_eq!(public.count("HEAD "), heads, "a shared blob needed a proof");
}

/// Manifests and referrers indexes are marked as private blobs are: those
/// that came in through an isolated namespace are not served through a
/// shared namespace's blobs endpoint (GET or HEAD), which answers for them
/// exactly as for a digest never stored; and a manifest is served through
/// a blobs endpoint only once the asking repository's upstream has it as a
/// blob (one HEAD, then the stored bytes). All were served from storage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_reach_a_blobs_endpoint_only_with_a_proof_of_access() {
    use registry_proxy::namespace::{NamespaceSpec, Sharing};
    let (private, private_base) = start_fake(Auth::Anonymous).await;
    let (public, public_base) = start_fake(Auth::Anonymous).await;
    let spec = |name: &str, base: &str, sharing, default| NamespaceSpec {
        name: name.to_owned(),
        sharing,
        registry2_dir: false,
        default,
        ..NamespaceSpec::single(base.parse().expect("url"), None)
    };
    let proxy = InProcess::with_namespaces(
        &[
            spec("private.test", &private_base, Sharing::Isolated, false),
            spec("public.test", &public_base, Sharing::Shared, true),
        ],
        Duration::from_secs(60),
    )
    .await;
    // A private manifest, and its referrers (by the tag schema).
    let manifest =
        format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","layers":[],"team":"corp"}}"#);
    let manifest_digest = private.tag("v1", manifest.as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": OCI_MANIFEST,
            "digest": Digest::of(b"a signature").to_string(),
            "size": 11,
            "artifactType": "application/vnd.example.signature",
        }],
    })
    .to_string();
    private.tag(
        &format!("sha256-{}", manifest_digest.hex()),
        index.as_bytes(),
    );
    let (status, _, _) = proxy.get("/v2/private.test/corp/app/manifests/v1").await;
    assert_eq!(status, StatusCode::OK);
    let referrers = format!("/v2/private.test/corp/app/referrers/{manifest_digest}");
    assert_eq!(proxy.get(&referrers).await.0, StatusCode::OK);
    let key = layout::RepoKey::new(
        Some(&driver_core::Segment::parse("private.test").expect("dir")),
        &RepoName::parse("corp/app").expect("name"),
    );
    let link = proxy
        .driver
        .get_content(&layout::referrers_link(&key, &manifest_digest))
        .await
        .expect("the referrers index is stored");
    let index_digest =
        Digest::parse(String::from_utf8_lossy(&link).trim()).expect("the index's digest");

    // Through the shared namespace: the answer for a digest never stored,
    // the digest written `D` so that answers compare.
    let through_public = |method: Method, digest: Digest| {
        let proxy = &proxy;
        async move {
            let uri = format!("/v2/library/anything/blobs/{digest}");
            let response = proxy.send(method, &uri, &[]).await;
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .expect("body");
            let text = String::from_utf8_lossy(&body).replace(&digest.to_string(), "D");
            (status, text)
        }
    };
    let never = through_public(Method::GET, Digest::of(b"never stored anywhere")).await;
    assert_eq!(never.0, StatusCode::NOT_FOUND, "{}", never.1);
    for (what, digest) in [
        ("manifest", manifest_digest),
        ("referrers index", index_digest),
    ] {
        assert_eq!(
            through_public(Method::GET, digest).await,
            never,
            "a private {what} was served through another namespace's blobs endpoint"
        );
        assert_eq!(
            through_public(Method::HEAD, digest).await.0,
            StatusCode::NOT_FOUND,
            "a private {what} was found through another namespace's blobs endpoint"
        );
    }

    // The shared namespace's own manifest is no blob either, until its
    // upstream has it as one.
    let own = format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","layers":[],"open":1}}"#);
    let own_digest = public.tag("v1", own.as_bytes());
    assert_eq!(
        proxy.get("/v2/library/app/manifests/v1").await.0,
        StatusCode::OK
    );
    let uri = blob_uri("library/app", &own_digest);
    let (status, _, body) = proxy.get(&uri).await;
    assert_eq!(
        (status, error_code(&body.expect("body")).as_str()),
        (StatusCode::NOT_FOUND, "BLOB_UNKNOWN"),
        "a manifest was served as a blob its upstream does not have"
    );
    public.add_blob(own.as_bytes());
    let (status, _, body) = proxy.get(&uri).await;
    assert_eq!(
        (status, body.expect("body")),
        (StatusCode::OK, Bytes::from(own))
    );
    assert_eq!(
        public.count(&format!("GET library/app/blobs/{own_digest}")),
        0,
        "proved, the stored bytes are served"
    );
}

/// A proxy in front of `fake` with fill limits `limits`.
async fn limited(base: &str, limits: registry_proxy::cache::fill::FillLimits) -> InProcess {
    let spec = registry_proxy::namespace::NamespaceSpec::single(base.parse().expect("url"), None);
    InProcess::with_settings(&[spec], Duration::from_secs(60), |settings| {
        settings.fill_limits = limits;
    })
    .await
}

/// A miss beyond `proxy.maxfills` running fills waits for a free slot (up
/// to 100 ms here, less than the held fill's 500 ms stall limit), then is
/// answered 503 with `Retry-After` (joining a running fill is not another
/// fill); a blob larger than
/// `proxy.maxblobsize` is refused and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fills_are_bounded_in_number_and_size() {
    use registry_proxy::cache::fill::FillLimits;
    let (fake, base) = start_fake(Auth::Anonymous).await;
    let proxy = limited(
        &base,
        FillLimits {
            max_fills: 1,
            max_blob_size: 1 << 20,
            slot_wait: Duration::from_millis(100),
        },
    )
    .await;
    let held = conformance::random_bytes(15, 200_000);
    let held_digest = fake.add_blob(&held);
    let other = fake.add_blob(b"another blob");
    fake.set_fault(Fault::Gate);
    let first = proxy
        .send(Method::GET, &blob_uri("a", &held_digest), &[])
        .await;
    assert_eq!(first.status(), StatusCode::OK);
    let (status, headers, body) = proxy.get(&blob_uri("a", &other)).await;
    assert_eq!(
        (status, error_code(&body.expect("body")).as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE")
    );
    assert_eq!(headers[header::RETRY_AFTER], "1");
    // The same blob joins the running fill.
    let joined = proxy
        .send(Method::GET, &blob_uri("b", &held_digest), &[])
        .await;
    assert_eq!(joined.status(), StatusCode::OK);
    fake.gate.notify_waiters();
    for response in [first, joined] {
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await;
        assert!(body.expect("body") == held);
    }
    proxy.state.blobs.fills_done().await;
    fake.set_fault(Fault::None);
    let big = conformance::random_bytes(16, (1 << 20) + 1);
    let big_digest = fake.add_blob(&big);
    let (status, _, body) = proxy.get(&blob_uri("a", &big_digest)).await;
    assert_eq!(
        (status, error_code(&body.expect("body")).as_str()),
        (StatusCode::BAD_REQUEST, "SIZE_INVALID")
    );
    proxy.state.blobs.fills_done().await;
    assert!(
        proxy
            .driver
            .stat(&layout::blob_data(&big_digest))
            .await
            .is_err()
    );
}

/// `_catalog` answers 100 repositories when the request names no `n`,
/// with a `Link` to the rest, and walks no further than a page needs.
#[tokio::test]
async fn the_catalog_is_paged_by_default() {
    let s = setup().await;
    let digest = Digest::of(b"m");
    for i in 0..150 {
        let key = registry_proxy::layout::RepoKey::new(
            None,
            &RepoName::parse(&format!("team/app{i:03}")).expect("name"),
        );
        s.driver
            .put_content(
                &layout::revision_link(&key, &digest),
                Bytes::from_static(b"x"),
            )
            .await
            .expect("link");
    }
    let (status, headers, body) = s.get("/v2/_catalog").await;
    assert_eq!(status, StatusCode::OK);
    let page: serde_json::Value = serde_json::from_slice(&body.expect("body")).expect("json");
    let repos = page["repositories"].as_array().expect("list");
    assert_eq!(repos.len(), 100);
    assert_eq!(repos[99], "team/app099");
    assert_eq!(
        headers[header::LINK],
        "</v2/_catalog?n=100&last=team/app099>; rel=\"next\""
    );
    let (_, _, body) = s.get("/v2/_catalog?n=100&last=team/app099").await;
    let page: serde_json::Value = serde_json::from_slice(&body.expect("body")).expect("json");
    assert_eq!(page["repositories"].as_array().expect("list").len(), 50);
}

/// `_catalog` of the namespace stored where registry:2 keeps repositories
/// never lists another namespace's (`_namespaces/<ns>/...`, an isolated
/// one's here): `last` must be a repository name (400 `NAME_INVALID`), so
/// it cannot start the walk of storage inside their directory, as
/// `last=_namespaces/-` did, listing them all.
#[tokio::test]
async fn the_catalog_never_lists_another_namespaces_repositories() {
    use registry_proxy::namespace::{NamespaceSpec, Sharing};
    let (fake, base) = start_fake(Auth::Anonymous).await;
    let spec = |name: &str, sharing, plain| NamespaceSpec {
        name: name.to_owned(),
        sharing,
        registry2_dir: plain,
        default: plain,
        ..NamespaceSpec::single(base.parse().expect("url"), None)
    };
    let proxy = InProcess::with_namespaces(
        &[
            spec("open.test", Sharing::Shared, true),
            spec("private.test", Sharing::Isolated, false),
        ],
        Duration::from_secs(60),
    )
    .await;
    fake.tag("v1", br#"{"schemaVersion":2,"layers":[]}"#);
    for uri in [
        "/v2/team/app/manifests/v1",
        "/v2/private.test/corp/secret/manifests/v1",
    ] {
        assert_eq!(proxy.get(uri).await.0, StatusCode::OK, "{uri}");
    }
    let listed = |body: Result<Bytes, axum::Error>| {
        let json: serde_json::Value = serde_json::from_slice(&body.expect("body")).expect("json");
        json["repositories"].clone()
    };
    for uri in ["/v2/_catalog", "/v2/_catalog?n=1000&last=0"] {
        let (status, _, body) = proxy.get(uri).await;
        assert_eq!(status, StatusCode::OK, "{uri}");
        assert_eq!(listed(body), serde_json::json!(["team/app"]), "{uri}");
    }
    let (_, _, body) = proxy.get("/v2/private.test/_catalog").await;
    assert_eq!(listed(body), serde_json::json!(["corp/secret"]));
    for last in [
        "_namespaces/-",
        "_namespaces/private.test/corp/a",
        "_namespaces",
        "Team/App",
    ] {
        let (status, _, body) = proxy.get(&format!("/v2/_catalog?n=1000&last={last}")).await;
        let body = body.expect("body");
        assert!(
            !String::from_utf8_lossy(&body).contains("corp/secret"),
            "last={last} listed another namespace's repository"
        );
        assert_eq!(
            (status, error_code(&body).as_str()),
            (StatusCode::BAD_REQUEST, "NAME_INVALID"),
            "last={last}"
        );
    }
}

/// An upstream tag list page larger than 4 MiB is not read whole: the
/// cached tags are listed instead of 400,000 tags (none are cached here:
/// `NAME_UNKNOWN`).
#[tokio::test]
async fn an_oversized_tag_list_page_is_refused() {
    let s = setup().await;
    let (status, _, body) = s.get("/v2/huge/tags/list").await;
    let body = body.expect("body");
    assert_eq!(
        (status, error_code(&body).as_str()),
        (StatusCode::NOT_FOUND, "NAME_UNKNOWN")
    );
    assert!(body.len() < 1 << 10, "{} bytes of tags listed", body.len());
}

/// A stored blob whose bytes rotted is caught as it is served: the body
/// breaks off before its last byte, the blob is deleted and counted, and
/// the next request fetches it again, whole.
#[tokio::test]
async fn a_corrupt_stored_blob_is_caught_deleted_and_fetched_again() {
    let s = setup().await;
    let data = conformance::random_bytes(17, 300_000);
    let digest = s.fake.add_blob(&data);
    let mut rotten = data.to_vec();
    rotten[150_000] ^= 1;
    s.driver
        .put_content(&layout::blob_data(&digest), Bytes::from(rotten))
        .await
        .expect("stored");
    let (status, _, body) = s.get(&blob_uri("team/app", &digest)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.is_err(), "a corrupt body was served whole");
    assert!(
        s.driver.stat(&layout::blob_data(&digest)).await.is_err(),
        "the corrupt blob was kept"
    );
    let text = String::from_utf8(debug_get(&s, "/metrics").await.to_vec()).expect("utf-8");
    assert!(
        text.lines()
            .any(|l| l == "registry_proxy_corrupt_blobs_total 1"),
        "{text}"
    );
    for _ in 0..2 {
        let (status, _, body) = s.get(&blob_uri("team/app", &digest)).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.expect("body") == data, "not the blob's bytes");
        s.state.blobs.fills_done().await;
    }
}

/// `scrub` reads every stored blob: the corrupt one is deleted (a dry run
/// only reports it), the good one stays, and the rate limit paces the
/// reads (virtual time: 600,000 bytes at 100,000 bytes/s take 6 s).
#[tokio::test(start_paused = true)]
async fn scrub_deletes_corrupt_blobs_at_a_limited_rate() {
    use driver_core::StorageDriver as _;
    use registry_proxy::cache::verify::scrub;
    let driver = driver_memory::MemoryDriver::new();
    let good = conformance::random_bytes(18, 300_000);
    let good_digest = Digest::of(&good);
    let bad_digest = Digest::of(b"what it was");
    driver
        .put_content(&layout::blob_data(&good_digest), good)
        .await
        .expect("stored");
    driver
        .put_content(
            &layout::blob_data(&bad_digest),
            Bytes::from(vec![1u8; 300_000]),
        )
        .await
        .expect("stored");
    let metrics = registry_proxy::metrics::Metrics::default();
    let dry = scrub(&driver, None, true, &metrics).await.expect("scrub");
    assert_eq!((dry.blobs, dry.corrupt), (2, 1));
    assert!(driver.stat(&layout::blob_data(&bad_digest)).await.is_ok());
    let started = tokio::time::Instant::now();
    let found = scrub(&driver, Some(100_000), false, &metrics)
        .await
        .expect("scrub");
    assert_eq!((found.blobs, found.bytes, found.corrupt), (2, 600_000, 1));
    assert!(
        started.elapsed() >= Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    assert!(driver.stat(&layout::blob_data(&bad_digest)).await.is_err());
    assert!(driver.stat(&layout::blob_data(&good_digest)).await.is_ok());
}

/// In a namespace for Docker Hub, a one-component name is an official
/// image: `alpine` and `docker.io/alpine` both pull `library/alpine` (the
/// second from the cache the first filled); a namespace for another
/// registry keeps the name as it is.
#[tokio::test]
async fn one_component_names_are_official_images_on_docker_hub() {
    use registry_proxy::namespace::NamespaceSpec;
    let (fake, base) = start_fake(Auth::Anonymous).await;
    let spec = |name: &str, default: bool| NamespaceSpec {
        name: name.to_owned(),
        registry2_dir: default,
        default,
        ..NamespaceSpec::single(base.parse().expect("url"), None)
    };
    let proxy = InProcess::with_namespaces(
        &[spec("docker.io", true), spec("lab.test", false)],
        Duration::from_secs(60),
    )
    .await;
    let layer = fake.add_blob(b"an official layer");
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": layer.to_string(), "size": 17},
        "layers": []
    })
    .to_string();
    let digest = fake.tag("3", manifest.as_bytes());

    for uri in ["/v2/alpine/manifests/3", "/v2/docker.io/alpine/manifests/3"] {
        let (status, headers, _) = proxy.get(uri).await;
        assert_eq!(status, StatusCode::OK, "{uri}");
        assert_eq!(headers["docker-content-digest"], digest.to_string());
    }
    assert_eq!(fake.count("GET library/alpine/manifests/3"), 1);
    assert_eq!(fake.count(" alpine/manifests/3"), 0);
    let (status, _, body) = proxy
        .get(&format!("/v2/docker.io/alpine/blobs/{layer}"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(Digest::of(&body.expect("body")), layer);
    assert_eq!(fake.count(&format!("GET library/alpine/blobs/{layer}")), 1);

    let (status, _, _) = proxy.get("/v2/lab.test/alpine/manifests/3").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fake.count("GET alpine/manifests/3"), 1);
}
