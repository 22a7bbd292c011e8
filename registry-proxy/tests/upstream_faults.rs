//! An upstream that misbehaves at the HTTP and TCP level, written by hand
//! on a raw socket because a real server (or axum) will not: bodies shorter
//! or longer than their Content-Length, a stall mid-body, connection
//! resets, 429 with Retry-After, 500 and 503, a failing token service, a
//! token service answering too much or naming a link-local realm, and a
//! tag list whose tags would end a `Link` header.
//! For each fault the proxy answers the miss with an error (or a body that
//! breaks off), stores nothing, keeps serving what it had cached, and
//! fills the blob once the upstream behaves again.

// Shared by the test binaries and the side-by-side benchmark; each uses a part.
use registry_proxy_testkit as support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use bytes::Bytes;
use registry_proxy::layout;
use registry_proxy::oci::{Digest, OCI_MANIFEST};
use support::{InProcess, error_code};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    None,
    /// Content-Length is the blob's size; half of it comes, then the
    /// connection closes.
    Short,
    /// Content-Length is half the blob's size; the whole blob comes.
    Long,
    /// Half the body, then silence with the connection open.
    Stall,
    /// The connection is reset after the request arrives.
    Reset,
    /// This status, with `Retry-After: 7` on 429 and 503.
    Status(u16),
    /// Bearer auth whose token endpoint answers 500.
    TokenFails,
    /// Bearer auth whose token endpoint answers a token over 8 KiB (one
    /// the upstream would take).
    TokenTooLarge,
    /// Bearer auth whose token endpoint answers a good token padded to
    /// over 64 KiB.
    TokenAnswerTooLarge,
    /// Bearer auth whose realm is a cloud metadata service's address.
    RealmLinkLocal,
    /// The whole body, in 16 pieces 150 ms apart: bytes keep flowing, but
    /// the whole takes several fill timeouts.
    Steady,
}

/// The upstream: content by path, and the fault of the moment.
struct Upstream {
    content: Mutex<HashMap<String, (Bytes, &'static str)>>,
    fault: Mutex<Fault>,
    /// Good answers come chunked, without a Content-Length.
    chunked: AtomicBool,
    addr: String,
}

impl Fault {
    /// Whether the upstream asks for a bearer token.
    fn bearer(self) -> bool {
        matches!(
            self,
            Self::TokenFails
                | Self::TokenTooLarge
                | Self::TokenAnswerTooLarge
                | Self::RealmLinkLocal
        )
    }
}

impl Upstream {
    async fn start() -> Arc<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let upstream = Arc::new(Self {
            content: Mutex::default(),
            fault: Mutex::new(Fault::None),
            chunked: AtomicBool::new(false),
            addr: listener.local_addr().expect("addr").to_string(),
        });
        let serving = Arc::clone(&upstream);
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(Arc::clone(&serving).connection(socket));
            }
        });
        upstream
    }

    fn add(&self, path: &str, body: Bytes, content_type: &'static str) {
        self.content
            .lock()
            .expect("lock")
            .insert(path.to_owned(), (body, content_type));
    }

    fn set(&self, fault: Fault) {
        *self.fault.lock().expect("lock") = fault;
    }

    /// Answers requests on one connection until a fault ends it.
    async fn connection(self: Arc<Self>, mut socket: TcpStream) {
        loop {
            let Some(head) = read_head(&mut socket).await else {
                return;
            };
            let mut words = head.split_whitespace();
            let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
            let path = target.split('?').next().unwrap_or_default().to_owned();
            let authorized = head
                .to_ascii_lowercase()
                .contains("authorization: bearer good");
            let fault = *self.fault.lock().expect("lock");
            let found = self.content.lock().expect("lock").get(&path).cloned();
            if fault.bearer() && path == "/token" {
                let answer = match fault {
                    Fault::TokenTooLarge => {
                        let token = format!("good{}", "x".repeat(9 << 10));
                        response(
                            200,
                            &[],
                            serde_json::json!({"token": token}).to_string().as_bytes(),
                        )
                    }
                    Fault::TokenAnswerTooLarge => {
                        let padding = "p".repeat(100 << 10);
                        let answer = serde_json::json!({"token": "good", "padding": padding});
                        response(200, &[], answer.to_string().as_bytes())
                    }
                    _ => response(500, &[], b"token service down"),
                };
                let _ = socket.write_all(&answer).await;
                continue;
            }
            if fault.bearer() && !authorized {
                let realm = match fault {
                    Fault::RealmLinkLocal => "169.254.169.254".to_owned(),
                    _ => self.addr.clone(),
                };
                let challenge = format!("Bearer realm=\"http://{realm}/token\",service=\"faulty\"");
                let _ = socket
                    .write_all(&response(401, &[("www-authenticate", &challenge)], b""))
                    .await;
                continue;
            }
            let Some((body, content_type)) = found else {
                let _ = socket.write_all(&response(404, &[], b"")).await;
                continue;
            };
            let len = body.len();
            let headers = |length: usize| {
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {length}\r\ndocker-content-digest: {}\r\n\r\n",
                    Digest::of(&body)
                )
                .into_bytes()
            };
            let head_only = method == "HEAD";
            match fault {
                fault
                    if (fault == Fault::None || fault.bearer())
                        && self.chunked.load(Ordering::SeqCst) =>
                {
                    let mut answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ntransfer-encoding: chunked\r\n\r\n"
                    )
                    .into_bytes();
                    for chunk in body.chunks(64 << 10) {
                        answer.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                        answer.extend_from_slice(chunk);
                        answer.extend_from_slice(b"\r\n");
                    }
                    if path.ends_with("/endless") {
                        // The body never ends: only a reader that stops at
                        // a limit answers before the proxy's timeout.
                        let _ = socket.write_all(&answer).await;
                        let mut rest = [0u8; 1];
                        let _ = socket.read(&mut rest).await;
                        return;
                    }
                    answer.extend_from_slice(b"0\r\n\r\n");
                    if socket.write_all(&answer).await.is_err() {
                        return;
                    }
                }
                Fault::None
                | Fault::TokenFails
                | Fault::TokenTooLarge
                | Fault::TokenAnswerTooLarge
                | Fault::RealmLinkLocal => {
                    let mut answer = headers(len);
                    if !head_only {
                        answer.extend_from_slice(&body);
                    }
                    if socket.write_all(&answer).await.is_err() {
                        return;
                    }
                }
                Fault::Status(code) => {
                    let retry: &[(&str, &str)] = if matches!(code, 429 | 503) {
                        &[("retry-after", "7")]
                    } else {
                        &[]
                    };
                    let _ = socket.write_all(&response(code, retry, b"")).await;
                }
                Fault::Short | Fault::Long | Fault::Stall => {
                    let (announced, sent) = match fault {
                        Fault::Short | Fault::Stall => (len, &body[..len / 2]),
                        _ => (len / 2, &body[..]),
                    };
                    let mut answer = headers(announced);
                    answer.extend_from_slice(sent);
                    let _ = socket.write_all(&answer).await;
                    if fault == Fault::Stall {
                        // Silence, until the proxy gives up and closes.
                        let mut rest = [0u8; 1];
                        let _ = socket.read(&mut rest).await;
                    }
                    return;
                }
                Fault::Steady => {
                    let mut answer = headers(len);
                    if !head_only {
                        for piece in body.chunks(len.div_ceil(16)) {
                            answer.extend_from_slice(piece);
                            if socket.write_all(&answer).await.is_err() {
                                return;
                            }
                            answer.clear();
                            tokio::time::sleep(Duration::from_millis(150)).await;
                        }
                    }
                    if socket.write_all(&answer).await.is_err() {
                        return;
                    }
                }
                Fault::Reset => {
                    // A zero linger makes the close a reset; it never blocks.
                    #[allow(deprecated)]
                    let _ = socket.set_linger(Some(Duration::ZERO));
                    return;
                }
            }
        }
    }
}

/// Reads one request head (bodies are never sent to an upstream).
async fn read_head(socket: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if socket.read(&mut byte).await.ok()? == 0 || head.len() > 64 << 10 {
            return None;
        }
        head.push(byte[0]);
    }
    String::from_utf8(head).ok()
}

fn response(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} Fault\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

/// Runs one fault: caches an image, then asks for an uncached blob while
/// the upstream misbehaves.
async fn check(fault: Fault) {
    let upstream = Upstream::start().await;
    // Tags are checked upstream on every request, so the fault is met.
    let proxy = InProcess::open(&format!("http://{}", upstream.addr), None, Duration::ZERO).await;
    let cached = conformance::random_bytes(1, 1 << 20);
    let cached_digest = Digest::of(&cached);
    let manifest = Bytes::from(
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cached_digest.to_string(), "size": cached.len()},
            "layers": [],
        })
        .to_string(),
    );
    upstream.add(
        &format!("/v2/team/app/blobs/{cached_digest}"),
        cached.clone(),
        "application/octet-stream",
    );
    upstream.add("/v2/team/app/manifests/v1", manifest.clone(), OCI_MANIFEST);
    let missing = conformance::random_bytes(2, 2 << 20);
    let missing_digest = Digest::of(&missing);
    upstream.add(
        &format!("/v2/team/app/blobs/{missing_digest}"),
        missing.clone(),
        "application/octet-stream",
    );
    let cached_uri = format!("/v2/team/app/blobs/{cached_digest}");
    let missing_uri = format!("/v2/team/app/blobs/{missing_digest}");

    let (status, _, body) = proxy.get("/v2/team/app/manifests/v1").await;
    assert_eq!(
        (status, body.expect("body")),
        (StatusCode::OK, manifest.clone())
    );
    let (status, _, body) = proxy.get(&cached_uri).await;
    assert_eq!(
        (status, body.expect("body")),
        (StatusCode::OK, cached.clone())
    );

    upstream.set(fault);
    let (status, headers, body) = proxy.get(&missing_uri).await;
    if fault == Fault::RealmLinkLocal {
        // Refused before any connection: no request to a metadata service.
        let heard = proxy.state.namespaces.default_namespace().upstream.heard();
        let (_, why) = heard.last_failure.expect("a failure heard");
        assert!(why.contains("link-local"), "{why}");
    }
    match body {
        Ok(body) if status == StatusCode::OK => {
            panic!("{fault:?}: a complete 200 of {} bytes", body.len())
        }
        Ok(body) => {
            let code = error_code(&body);
            let expected = match fault {
                Fault::Status(429) => (StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS"),
                _ => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
            };
            assert_eq!((status, code.as_str()), expected, "{fault:?}");
            if matches!(fault, Fault::Status(429 | 503)) {
                assert_eq!(
                    headers["retry-after"], "7",
                    "{fault:?}: Retry-After passed on"
                );
            }
        }
        // A 200 whose body breaks off: the client never gets unverified bytes.
        Err(_) => assert_eq!(status, StatusCode::OK, "{fault:?}"),
    }
    proxy.state.blobs.fills_done().await;
    assert!(
        proxy
            .driver
            .stat(&layout::blob_data(&missing_digest))
            .await
            .is_err(),
        "{fault:?}: something was stored"
    );
    // What was cached is still served, the tag from its cached copy.
    let (status, _, body) = proxy.get("/v2/team/app/manifests/v1").await;
    assert_eq!(
        (status, body.expect("body")),
        (StatusCode::OK, manifest),
        "{fault:?}: cached tag"
    );
    let (status, _, body) = proxy.get(&cached_uri).await;
    assert_eq!(
        (status, body.expect("body")),
        (StatusCode::OK, cached),
        "{fault:?}: cached blob"
    );

    upstream.set(Fault::None);
    let (status, _, body) = proxy.get(&missing_uri).await;
    assert_eq!(
        (status, body.expect("body")),
        (StatusCode::OK, missing),
        "{fault:?}: recovery"
    );
    proxy.state.blobs.fills_done().await;
    assert!(
        proxy
            .driver
            .stat(&layout::blob_data(&missing_digest))
            .await
            .is_ok()
    );
}

/// One test per fault, each against an upstream and a proxy of its own.
macro_rules! fault_tests {
    ($($name:ident: $fault:expr;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            check($fault).await;
        }
    )*};
}

fault_tests! {
    a_body_shorter_than_its_content_length: Fault::Short;
    a_body_longer_than_its_content_length: Fault::Long;
    a_stall_mid_body_times_the_fill_out: Fault::Stall;
    connection_resets: Fault::Reset;
    too_many_requests_passes_retry_after_on: Fault::Status(429);
    internal_server_errors: Fault::Status(500);
    service_unavailable_passes_retry_after_on: Fault::Status(503);
    a_failing_token_service: Fault::TokenFails;
    a_token_over_8_kib_is_refused: Fault::TokenTooLarge;
    a_token_answer_over_64_kib_is_refused: Fault::TokenAnswerTooLarge;
    a_link_local_token_realm_is_not_asked: Fault::RealmLinkLocal;
}

/// `filltimeout` bounds the silence between bytes, not the whole body: a
/// blob that takes 2.4 s to arrive (16 pieces 150 ms apart, nearly five
/// times the test proxy's 500 ms fill timeout) with bytes flowing all along
/// is served whole and stored. A stall is still abandoned (the `Stall` test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_steady_blob_outlasting_the_fill_timeout_is_stored() {
    let upstream = Upstream::start().await;
    upstream.set(Fault::Steady);
    let proxy = InProcess::open(&format!("http://{}", upstream.addr), None, Duration::ZERO).await;
    let blob = conformance::random_bytes(3, 2 << 20);
    let digest = Digest::of(&blob);
    upstream.add(
        &format!("/v2/team/app/blobs/{digest}"),
        blob.clone(),
        "application/octet-stream",
    );
    let started = std::time::Instant::now();
    let (status, _, body) = proxy.get(&format!("/v2/team/app/blobs/{digest}")).await;
    assert_eq!((status, body.expect("body")), (StatusCode::OK, blob));
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "the upstream was not slow enough to test anything"
    );
    proxy.state.blobs.fills_done().await;
    assert!(
        proxy.driver.stat(&layout::blob_data(&digest)).await.is_ok(),
        "the slow blob was not stored"
    );
}

/// A manifest without a Content-Length is read up to 4 MiB and refused
/// beyond, never read whole: this one never ends, so reading it whole
/// would end in the proxy's timeout (503) instead. A small one passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_manifest_over_4_mib_is_refused() {
    let upstream = Upstream::start().await;
    upstream.chunked.store(true, Ordering::SeqCst);
    let proxy = InProcess::open(&format!("http://{}", upstream.addr), None, Duration::ZERO).await;
    let manifest = |padding: usize| {
        Bytes::from(
            serde_json::json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "annotations": {"padding": "p".repeat(padding)},
            })
            .to_string(),
        )
    };
    upstream.add(
        "/v2/team/app/manifests/endless",
        manifest(5 << 20),
        OCI_MANIFEST,
    );
    upstream.add("/v2/team/app/manifests/small", manifest(10), OCI_MANIFEST);
    let (status, _, body) = proxy.get("/v2/team/app/manifests/endless").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&body.expect("body")), "MANIFEST_INVALID");
    let (status, _, body) = proxy.get("/v2/team/app/manifests/small").await;
    assert_eq!(
        (status, body.expect("body")),
        (StatusCode::OK, manifest(10))
    );
}

/// An upstream's tag is escaped in the `Link` to the next page: a tag
/// that would end the link and add a target of its own (any client
/// following `rel="next"` would go there) stays one query value, and the
/// link leads to the next page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_tag_cannot_end_the_tags_link() {
    let upstream = Upstream::start().await;
    let hostile = "a>; rel=\"next\", <https://evil.test/v2/x/tags/list?n=1&last=";
    upstream.add(
        "/v2/team/app/tags/list",
        Bytes::from(serde_json::json!({"name": "team/app", "tags": [hostile, "b"]}).to_string()),
        "application/json",
    );
    let proxy = InProcess::open(&format!("http://{}", upstream.addr), None, Duration::ZERO).await;
    let (status, headers, body) = proxy.get("/v2/team/app/tags/list?n=1").await;
    assert_eq!(status, StatusCode::OK);
    let page: serde_json::Value = serde_json::from_slice(&body.expect("body")).expect("json");
    assert_eq!(page["tags"], serde_json::json!([hostile]));
    let link = headers["link"].to_str().expect("ascii");
    let target = link
        .strip_prefix('<')
        .and_then(|l| l.strip_suffix(">; rel=\"next\""))
        .unwrap_or_else(|| panic!("not one link: {link}"));
    assert!(!target.contains(['<', '>', ',', ';', ' ', '"']), "{link}");
    let (path, query) = target.split_once('?').expect("a query");
    assert_eq!(path, "/v2/team/app/tags/list");
    let last = query
        .split('&')
        .find_map(|p| p.strip_prefix("last="))
        .expect("last");
    assert_eq!(
        percent_encoding::percent_decode_str(last)
            .decode_utf8()
            .expect("utf-8"),
        hostile
    );
    let (status, _, body) = proxy.get(target).await;
    assert_eq!(status, StatusCode::OK);
    let page: serde_json::Value = serde_json::from_slice(&body.expect("body")).expect("json");
    assert_eq!(page["tags"], serde_json::json!(["b"]));
}
