//! Upstreams as they are in production, end to end with the real binary:
//! a mirror chain whose primary dies and comes back (two Debian
//! `docker-registry` servers), caps on requests at once and bytes per
//! second (counted and timed at a test upstream), Docker Hub's pull budget
//! stretching tag freshness as it falls (a test upstream sending its
//! headers), and credentials from a helper command while the upstream's
//! htpasswd rotates; blob bodies and HEADs of uncached blobs leave
//! manifests their turns (a test upstream streaming slowly). The tests of
//! real registries are skipped without `docker-registry` unless
//! `REQUIRE_E2E=1`.

// Shared by the test binaries and the side-by-side benchmark; each uses a part.
use registry_proxy_testkit as support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use bytes::Bytes;
use registry_proxy::oci::{Digest, OCI_MANIFEST};
use support::{debug_text, free_port, have, pull_image, push_image, registry_proxy_with, start};

/// `docker-registry` on `addr` with its root and config in `dir/name`
/// (`extra` appended to its config), so that it can be started again on
/// the same address with the same content.
fn registry_at(dir: &Path, name: &str, addr: &str, extra: &str) -> support::Server {
    let config = dir.join(format!("{name}.yml"));
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n{extra}",
            dir.join(name).display()
        ),
    )
    .expect("config");
    start("docker-registry", &["serve"], &config, addr.to_owned(), dir)
}

/// The sum of the metric lines starting with `prefix` in `text`.
fn metric(text: &str, prefix: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_primary_falls_back_to_the_secondary_and_comes_back() {
    if !have("docker-registry") {
        conformance::skip(
            "fallback",
            "REQUIRE_E2E",
            "docker-registry is not installed",
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (a, b) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let mut primary = tokio::task::block_in_place(|| registry_at(d, "primary", &a, ""));
    let _secondary = tokio::task::block_in_place(|| registry_at(d, "secondary", &b, ""));
    let client = reqwest::Client::new();
    let mut images = Vec::new();
    for seed in 0..3 {
        let repo = format!("team/app{seed}");
        // The same image on both: same digests.
        for addr in [&a, &b] {
            push_image(&client, addr, &repo, 90 + seed, &[64 << 10]).await;
        }
        images.push(push_image(&client, &a, &repo, 90 + seed, &[64 << 10]).await);
    }
    let proxy = tokio::task::block_in_place(|| {
        registry_proxy_with(
            d,
            &format!(
                "storage:\n  filesystem:\n    rootdirectory: {}\nproxy:\n  upstreams:\n    - namespace: hub.test\n      remoteurls: [\"http://{a}\", \"http://{b}\"]\n      remoteretry: 1s\n      default: true\n",
                d.join("root").display()
            ),
        )
    });
    let answered = |text: &str, addr: &str| {
        metric(
            text,
            &format!(
                "registry_proxy_upstream_answers_total{{namespace=\"hub.test\",upstream=\"http://{addr}/\"}}"
            ),
        )
    };
    pull_image(&client, &proxy.addr, &images[0])
        .await
        .expect("pull from the primary");
    let text = debug_text(&proxy, "/metrics").await;
    assert!(answered(&text, &a) > 0, "{text}");
    assert_eq!(
        answered(&text, &b),
        0,
        "the secondary is not asked while the primary answers"
    );

    // The primary dies: the next pull comes from the secondary.
    primary.kill();
    pull_image(&client, &proxy.addr, &images[1])
        .await
        .expect("pull from the secondary");
    let text = debug_text(&proxy, "/metrics").await;
    let from_b = answered(&text, &b);
    assert!(from_b > 0, "{text}");

    // Back: within the retry interval, the primary serves again.
    let _primary = tokio::task::block_in_place(|| registry_at(d, "primary", &a, ""));
    let before = answered(&text, &a);
    let started = Instant::now();
    loop {
        let probe = client
            .get(format!("http://{}/v2/team/app2/tags/list", proxy.addr))
            .send()
            .await
            .expect("tags");
        assert_eq!(probe.status(), 200);
        if answered(&debug_text(&proxy, "/metrics").await, &a) > before {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the primary was never asked again"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    pull_image(&client, &proxy.addr, &images[2])
        .await
        .expect("pull once the primary is back");
    let log = std::fs::read_to_string(d.join("proxy.log")).expect("log");
    assert!(
        log.contains("now answered by"),
        "which upstream served is logged: {log}"
    );
}

/// A test upstream: one manifest (with Docker Hub's budget headers, the
/// remaining pulls falling by one per manifest GET) and blobs sent in
/// pieces 10 ms apart, counting manifest GETs and the requests at once.
struct Counting {
    manifest: Bytes,
    blobs: Vec<Bytes>,
    manifest_gets: AtomicUsize,
    remaining: AtomicUsize,
    now: AtomicUsize,
    most: AtomicUsize,
}

/// Lowers the upstream's count of requests at once when dropped (the
/// answer's body is sent, or the client went away).
struct InFlight(Arc<Counting>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn counting(
    State(up): State<Arc<Counting>>,
    method: Method,
    UrlPath(rest): UrlPath<String>,
) -> Response {
    let now = up.now.fetch_add(1, Ordering::SeqCst) + 1;
    up.most.fetch_max(now, Ordering::SeqCst);
    let guard = InFlight(Arc::clone(&up));
    if rest.contains("/manifests/") {
        if method == Method::GET {
            up.manifest_gets.fetch_add(1, Ordering::SeqCst);
        }
        let spend = |r: usize| {
            if method == Method::GET {
                r.saturating_sub(1)
            } else {
                r
            }
        };
        let before = up
            .remaining
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |r| Some(spend(r)))
            .unwrap_or_default();
        let left = spend(before);
        return (
            [
                (header::CONTENT_TYPE.as_str(), OCI_MANIFEST.to_owned()),
                (
                    "docker-content-digest",
                    Digest::of(&up.manifest).to_string(),
                ),
                ("ratelimit-limit", "100;w=21600".to_owned()),
                ("ratelimit-remaining", format!("{left};w=21600")),
            ],
            up.manifest.clone(),
        )
            .into_response();
    }
    let blob = up
        .blobs
        .iter()
        .find(|b| rest.ends_with(&Digest::of(b).to_string()))
        .cloned();
    let Some(blob) = blob else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let len = blob.len();
    let pieces: Vec<Bytes> = (0..len)
        .step_by(64 << 10)
        .map(|i| blob.slice(i..len.min(i + (64 << 10))))
        .collect();
    let body = futures::stream::unfold(
        (pieces.into_iter(), guard),
        |(mut rest, guard)| async move {
            let piece = rest.next()?;
            tokio::time::sleep(Duration::from_millis(10)).await;
            Some((Ok::<_, std::io::Error>(piece), (rest, guard)))
        },
    );
    Response::builder()
        .header(header::CONTENT_LENGTH, len)
        .body(Body::from_stream(body))
        .expect("response")
}

/// A manifest naming `blobs` as layers (a `{}` config among them).
fn manifest_of(blobs: &[Bytes]) -> Bytes {
    let layers: Vec<_> = blobs[1..]
        .iter()
        .map(|b| serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": Digest::of(b).to_string(), "size": b.len()}))
        .collect();
    Bytes::from(
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": Digest::of(&blobs[0]).to_string(), "size": blobs[0].len()},
            "layers": layers,
        })
        .to_string(),
    )
}

async fn counting_upstream(blobs: Vec<Bytes>, remaining: usize) -> (Arc<Counting>, String) {
    let up = Arc::new(Counting {
        manifest: manifest_of(&blobs),
        blobs,
        manifest_gets: AtomicUsize::new(0),
        remaining: AtomicUsize::new(remaining),
        now: AtomicUsize::new(0),
        most: AtomicUsize::new(0),
    });
    let base = support::fakes::serve(
        axum::Router::new()
            .route("/v2/{*rest}", any(counting))
            .with_state(Arc::clone(&up)),
    )
    .await;
    (up, base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_requests_and_bytes_stay_within_their_caps() {
    let mut blobs = vec![Bytes::from_static(b"{}")];
    for seed in 0..6 {
        blobs.push(conformance::random_bytes(100 + seed, 1 << 20));
    }
    let (up, base) = counting_upstream(blobs.clone(), 100).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let proxy = tokio::task::block_in_place(|| {
        registry_proxy_with(
            d,
            &format!(
                "storage:\n  filesystem:\n    rootdirectory: {}\nproxy:\n  upstreams:\n    - namespace: capped.test\n      remoteurl: {base}\n      maxconcurrent: 2\n      maxbandwidth: 2MiB\n      default: true\n",
                d.join("root").display()
            ),
        )
    });
    // Six 1 MiB blobs at once, through a cap of 2 requests and 2 MiB/s.
    let client = reqwest::Client::new();
    let started = Instant::now();
    let pulls: Vec<_> = blobs[1..]
        .iter()
        .map(|blob| {
            let url = format!(
                "http://{}/v2/team/capped/blobs/{}",
                proxy.addr,
                Digest::of(blob)
            );
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .get(url)
                    .send()
                    .await
                    .expect("blob")
                    .bytes()
                    .await
                    .expect("body")
            })
        })
        .collect();
    for (pull, blob) in pulls.into_iter().zip(&blobs[1..]) {
        assert_eq!(&pull.await.expect("task"), blob);
    }
    let took = started.elapsed().as_secs_f64();
    let rate = 6.0 * (1 << 20) as f64 / took / (2 << 20) as f64;
    assert!(
        (0.9..=1.1).contains(&rate),
        "{rate:.3} of the 2 MiB/s cap in {took:.2} s"
    );
    assert!(
        up.most.load(Ordering::SeqCst) <= 2,
        "{} requests at once",
        up.most.load(Ordering::SeqCst)
    );
    assert_eq!(
        up.most.load(Ordering::SeqCst),
        2,
        "the cap is reached, not undershot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_falling_pull_budget_stretches_tag_freshness() {
    let blobs = vec![Bytes::from_static(b"{}"), Bytes::from_static(b"layer")];
    let (up, base) = counting_upstream(blobs, 13).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let proxy = tokio::task::block_in_place(|| {
        registry_proxy_with(
            d,
            &format!(
                "storage:\n  filesystem:\n    rootdirectory: {}\nproxy:\n  tagfreshness: 0s\n  upstreams:\n    - namespace: hub.test\n      remoteurl: {base}\n      pullbudget:\n        reserve: 10\n        tagfreshness: 1h\n      default: true\n",
                d.join("root").display()
            ),
        )
    });
    let client = reqwest::Client::new();
    let get_tag = || async {
        let answer = client
            .get(format!("http://{}/v2/team/app/manifests/v1", proxy.addr))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .expect("manifest");
        assert_eq!(answer.status(), 200);
    };
    // Each tag request asks the upstream (freshness 0): the first GETs,
    // the next ones HEAD, which costs no pull.
    get_tag().await;
    get_tag().await;
    let text = debug_text(&proxy, "/metrics").await;
    assert_eq!(
        metric(
            &text,
            "registry_proxy_upstream_pull_limit{namespace=\"hub.test\"}"
        ),
        100,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "registry_proxy_upstream_pulls_remaining{namespace=\"hub.test\"}"
        ),
        12,
        "{text}"
    );
    // Other repositories' manifests (GETs) spend the budget down to the
    // reserve.
    for other in ["team/other1", "team/other2"] {
        let answer = client
            .get(format!("http://{}/v2/{other}/manifests/latest", proxy.addr))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .expect("other");
        assert_eq!(answer.status(), 200);
    }
    let text = debug_text(&proxy, "/metrics").await;
    assert_eq!(
        metric(
            &text,
            "registry_proxy_upstream_pulls_remaining{namespace=\"hub.test\"}"
        ),
        10,
        "{text}"
    );
    // At the reserve, the cached tag is served without asking.
    let asked = up.manifest_gets.load(Ordering::SeqCst);
    let heads_before = metric(
        &text,
        "registry_proxy_upstream_request_duration_seconds_count",
    );
    get_tag().await;
    let text = debug_text(&proxy, "/metrics").await;
    assert_eq!(up.manifest_gets.load(Ordering::SeqCst), asked);
    assert_eq!(
        metric(
            &text,
            "registry_proxy_upstream_request_duration_seconds_count"
        ),
        heads_before,
        "no upstream request at all for the cached tag"
    );
    let log = std::fs::read_to_string(d.join("proxy.log")).expect("log");
    assert!(
        log.contains("pull budget low"),
        "the stretch is logged: {log}"
    );
}

/// A credential helper printing the password in `dir/password`.
fn helper(dir: &Path) -> String {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join("docker-credential-test");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nread server\nprintf '{{\"ServerURL\":\"%s\",\"Username\":\"puller\",\"Secret\":\"%s\"}}' \"$server\" \"$(cat {})\"\n",
            dir.join("password").display()
        ),
    )
    .expect("helper");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_credentials_follow_a_rotating_password() {
    if !have("docker-registry") {
        conformance::skip("exec", "REQUIRE_E2E", "docker-registry is not installed");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let rotate = |password: &str| {
        let hash = bcrypt::hash(password, 4).expect("bcrypt");
        std::fs::write(d.join("htpasswd"), format!("puller:{hash}\n")).expect("htpasswd");
        std::fs::write(d.join("password"), password).expect("password");
    };
    rotate("first-secret");
    let addr = format!("127.0.0.1:{}", free_port());
    let auth = format!(
        "auth:\n  htpasswd:\n    realm: test-realm\n    path: {}\n",
        d.join("htpasswd").display()
    );
    let upstream = tokio::task::block_in_place(|| registry_at(d, "upstream", &addr, &auth));
    let client = reqwest::Client::new();
    let authed = |password: &'static str| {
        reqwest::Client::builder()
            .default_headers({
                let mut h = reqwest::header::HeaderMap::new();
                use base64::Engine as _;
                let basic =
                    base64::engine::general_purpose::STANDARD.encode(format!("puller:{password}"));
                h.insert(
                    header::AUTHORIZATION,
                    format!("Basic {basic}").parse().expect("header"),
                );
                h
            })
            .build()
            .expect("client")
    };
    let mut images = Vec::new();
    for seed in 0..3 {
        images.push(
            push_image(
                &authed("first-secret"),
                &upstream.addr,
                &format!("private/app{seed}"),
                110 + seed,
                &[32 << 10],
            )
            .await,
        );
    }
    let proxy = tokio::task::block_in_place(|| {
        registry_proxy_with(
            d,
            &format!(
                "storage:\n  filesystem:\n    rootdirectory: {}\nproxy:\n  remoteurl: http://{addr}\n  exec:\n    command: {}\n    lifetime: 1h\n",
                d.join("root").display(),
                helper(d)
            ),
        )
    });
    pull_image(&client, &proxy.addr, &images[0])
        .await
        .expect("pull with the first password");
    // The password rotates long before the lifetime ends: the refusal
    // makes the cache ask the helper again.
    rotate("second-secret");
    let mut tries = 0;
    loop {
        // docker-registry reads its htpasswd again when it changes; until it
        // has, the old password still works, and the pull succeeds either way.
        pull_image(&client, &proxy.addr, &images[1])
            .await
            .expect("pull across the rotation");
        let old = authed("first-secret")
            .get(format!("http://{}/v2/", upstream.addr))
            .send()
            .await
            .expect("old password");
        if old.status() == 401 {
            break;
        }
        tries += 1;
        assert!(tries < 50, "docker-registry never took the new htpasswd");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pull_image(&client, &proxy.addr, &images[2])
        .await
        .expect("pull with the second password");
    let log = std::fs::read_to_string(d.join("proxy.log")).expect("log");
    for secret in ["first-secret", "second-secret"] {
        assert!(!log.contains(secret), "{secret} in the log");
    }
}

/// A stand-in for ECR's API: `GetAuthorizationToken` answers `AWS` and
/// the password of the moment, base64, valid 12 hours; calls counted.
struct FakeEcr {
    password: std::sync::Mutex<String>,
    calls: AtomicUsize,
}

async fn ecr_api(State(ecr): State<Arc<FakeEcr>>, headers: axum::http::HeaderMap) -> Response {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !target.ends_with("GetAuthorizationToken") {
        return StatusCode::BAD_REQUEST.into_response();
    }
    ecr.calls.fetch_add(1, Ordering::SeqCst);
    use base64::Engine as _;
    let password = ecr.password.lock().expect("lock").clone();
    let token = base64::engine::general_purpose::STANDARD.encode(format!("AWS:{password}"));
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 12 * 3600;
    (
        [(header::CONTENT_TYPE.as_str(), "application/x-amz-json-1.1")],
        serde_json::json!({"authorizationData": [{"authorizationToken": token, "expiresAt": expires, "proxyEndpoint": "https://127.0.0.1"}]})
            .to_string(),
    )
        .into_response()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecr_tokens_come_from_the_aws_chain_and_follow_a_rotation() {
    if !have("docker-registry") {
        conformance::skip("ecr", "REQUIRE_E2E", "docker-registry is not installed");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let ecr = Arc::new(FakeEcr {
        password: std::sync::Mutex::new("first-token".into()),
        calls: AtomicUsize::new(0),
    });
    let api = support::fakes::serve(
        axum::Router::new()
            .route("/", axum::routing::post(ecr_api))
            .with_state(Arc::clone(&ecr)),
    )
    .await;
    let htpasswd = |password: &str| {
        let hash = bcrypt::hash(password, 4).expect("bcrypt");
        std::fs::write(d.join("htpasswd"), format!("AWS:{hash}\n")).expect("htpasswd");
    };
    htpasswd("first-token");
    let addr = format!("127.0.0.1:{}", free_port());
    let auth = format!(
        "auth:\n  htpasswd:\n    realm: ecr\n    path: {}\n",
        d.join("htpasswd").display()
    );
    let upstream = tokio::task::block_in_place(|| registry_at(d, "upstream", &addr, &auth));
    let pusher = |password: &str| {
        use base64::Engine as _;
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("AWS:{password}"));
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            format!("Basic {basic}").parse().expect("header"),
        );
        reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .expect("client")
    };
    let mut images = Vec::new();
    for seed in 0..2 {
        images.push(
            push_image(
                &pusher("first-token"),
                &upstream.addr,
                &format!("ecr/app{seed}"),
                130 + seed,
                &[16 << 10],
            )
            .await,
        );
    }
    let proxy = tokio::task::block_in_place(|| {
        support::registry_proxy_env(
            d,
            &format!(
                "storage:\n  filesystem:\n    rootdirectory: {}\nproxy:\n  remoteurl: http://{addr}\n  ecrregion: us-east-1\n",
                d.join("root").display()
            ),
            &[
                ("AWS_ENDPOINT_URL_ECR", api.as_str()),
                ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
                ("AWS_SECRET_ACCESS_KEY", "not-a-real-secret"),
                ("AWS_EC2_METADATA_DISABLED", "true"),
            ],
        )
    });
    let client = reqwest::Client::new();
    pull_image(&client, &proxy.addr, &images[0])
        .await
        .expect("pull with ECR's first token");
    let asked = ecr.calls.load(Ordering::SeqCst);
    assert!(asked >= 1, "the token came from the ECR API");
    // The token changes and the registry with it: the refusal fetches a new one.
    *ecr.password.lock().expect("lock") = "second-token".into();
    htpasswd("second-token");
    let mut tries = 0;
    while pusher("first-token")
        .get(format!("http://{}/v2/", upstream.addr))
        .send()
        .await
        .expect("old token")
        .status()
        != 401
    {
        tries += 1;
        assert!(tries < 50, "docker-registry never took the new htpasswd");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pull_image(&client, &proxy.addr, &images[1])
        .await
        .expect("pull with ECR's second token");
    assert!(
        ecr.calls.load(Ordering::SeqCst) > asked,
        "a new token was asked for"
    );
}

/// A test upstream with a manifest of `blobs` and slow blob bodies: pieces
/// of 64 KiB, 200 ms apart (within the fill timeout); blob GETs counted.
struct Slow {
    blobs: Vec<Bytes>,
    blob_gets: AtomicUsize,
}

async fn slow(
    State(up): State<Arc<Slow>>,
    method: Method,
    UrlPath(rest): UrlPath<String>,
) -> Response {
    if rest.contains("/manifests/") {
        let manifest = manifest_of(&up.blobs);
        return (
            [
                (header::CONTENT_TYPE.as_str(), OCI_MANIFEST.to_owned()),
                ("docker-content-digest", Digest::of(&manifest).to_string()),
            ],
            manifest,
        )
            .into_response();
    }
    let Some(blob) = up
        .blobs
        .iter()
        .find(|b| rest.ends_with(&Digest::of(b).to_string()))
        .cloned()
    else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if method == Method::GET {
        up.blob_gets.fetch_add(1, Ordering::SeqCst);
    }
    let len = blob.len();
    let pieces: Vec<Bytes> = (0..len)
        .step_by(64 << 10)
        .map(|i| blob.slice(i..len.min(i + (64 << 10))))
        .collect();
    let body = futures::StreamExt::then(futures::stream::iter(pieces), |piece| async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok::<_, std::io::Error>(piece)
    });
    Response::builder()
        .header(header::CONTENT_LENGTH, len)
        .body(Body::from_stream(body))
        .expect("response")
}

/// `maxconcurrent` turns of blob bodies are apart from those of small
/// requests, and a HEAD of an uncached blob is answered by the upstream's
/// HEAD without a fill: with one turn of each, HEADs of large layers and
/// a blob streaming for 4 s leave manifests a turn at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_bodies_and_heads_leave_manifests_their_turns() {
    let blobs: Vec<Bytes> = std::iter::once(Bytes::from_static(b"{}"))
        .chain((0..2).map(|seed| conformance::random_bytes(140 + seed, 20 << 16)))
        .collect();
    let up = Arc::new(Slow {
        blobs: blobs.clone(),
        blob_gets: AtomicUsize::new(0),
    });
    let base = support::fakes::serve(
        axum::Router::new()
            .route("/v2/{*rest}", any(slow))
            .with_state(Arc::clone(&up)),
    )
    .await;
    let mut spec =
        registry_proxy::namespace::NamespaceSpec::single(base.parse().expect("url"), None);
    spec.plan.max_concurrent = Some(1);
    let proxy = support::InProcess::with_namespaces(&[spec], Duration::ZERO).await;
    let blob_uri = |blob: &Bytes| format!("/v2/team/app/blobs/{}", Digest::of(blob));
    for blob in &blobs[1..] {
        let head = proxy.send(Method::HEAD, &blob_uri(blob), &[]).await;
        assert_eq!(head.status(), StatusCode::OK);
        assert_eq!(
            head.headers()[header::CONTENT_LENGTH],
            blob.len().to_string().as_str()
        );
    }
    assert_eq!(
        up.blob_gets.load(Ordering::SeqCst),
        0,
        "a HEAD started a fill"
    );
    let started = Instant::now();
    assert_eq!(
        proxy.get("/v2/team/app/manifests/v1").await.0,
        StatusCode::OK
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    // A blob body streams for 4 s on the one blob turn.
    let pull = proxy.send(Method::GET, &blob_uri(&blobs[1]), &[]).await;
    assert_eq!(pull.status(), StatusCode::OK);
    let pull = tokio::spawn(axum::body::to_bytes(pull.into_body(), 4 << 20));
    let started = Instant::now();
    assert_eq!(
        proxy.get("/v2/team/other/manifests/v1").await.0,
        StatusCode::OK
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a manifest waited {:?} for a blob body's turn",
        started.elapsed()
    );
    assert_eq!(pull.await.expect("task").expect("body"), blobs[1]);
}
