//! The status page as a person sees it: the real binary with two
//! namespaces, one in front of Debian's `docker-registry`, one in front of
//! a small upstream that announces Docker Hub's pull budget and holds a
//! blob half sent; the page rendered by headless Chromium shows the same
//! figures as `/metrics`, the fill running with its progress, the most
//! asked repository, the upstreams' health and budget, and the hit ratio
//! chart. With `STATUS_SCREENSHOT=path.png` the test also keeps the
//! screenshot (the README's). Skipped without `docker-registry` and
//! `chromium` unless `REQUIRE_E2E=1`.
//!
//! In process: the page names no repository of a private namespace, and it
//! answers while the blocking pool storage calls use is full.

// Shared by the test binaries and the side-by-side benchmark; each uses a part.
use registry_proxy_testkit as support;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use registry_proxy::oci::{Digest, OCI_MANIFEST};
use support::{debug_text, have, pull_image, push_image, registry_proxy_with};
use tokio::sync::Notify;

/// The held upstream: one manifest, announcing a budget, and one blob
/// whose second half waits for `release`.
struct Held {
    manifest: Bytes,
    blob: Bytes,
    release: Notify,
}

async fn held(State(up): State<Arc<Held>>, Path(rest): Path<String>) -> Response {
    if rest.ends_with("/manifests/v1") || rest.ends_with(&Digest::of(&up.manifest).to_string()) {
        return (
            [
                (header::CONTENT_TYPE.as_str(), OCI_MANIFEST.to_owned()),
                ("ratelimit-limit", "100;w=21600".to_owned()),
                ("ratelimit-remaining", "76;w=21600".to_owned()),
            ],
            up.manifest.clone(),
        )
            .into_response();
    }
    if rest.ends_with(&Digest::of(&up.blob).to_string()) {
        let (len, half) = (up.blob.len(), up.blob.len() / 2);
        let (first, second) = (up.blob.slice(..half), up.blob.slice(half..));
        let body = futures::stream::unfold(0, move |step| {
            let (up, first, second) = (Arc::clone(&up), first.clone(), second.clone());
            async move {
                match step {
                    0 => Some((Ok::<_, std::io::Error>(first), 1)),
                    1 => {
                        up.release.notified().await;
                        Some((Ok(second), 2))
                    }
                    _ => None,
                }
            }
        });
        return Response::builder()
            .header(header::CONTENT_LENGTH, len)
            .body(Body::from_stream(body))
            .expect("response");
    }
    StatusCode::NOT_FOUND.into_response()
}

/// The sum of `family` (`registry_proxy_hits_total`) over the series of
/// the metrics `text` whose labels contain `labels`.
fn metric(text: &str, family: &str, labels: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// The text of the element `id` in `dom`.
fn by_id(dom: &str, id: &str) -> String {
    let at = dom
        .find(&format!("id=\"{id}\">"))
        .unwrap_or_else(|| panic!("no #{id} in {dom}"));
    let rest = &dom[at + id.len() + 6..];
    rest[..rest.find('<').expect("end")].to_owned()
}

/// The row of namespace `ns` in `dom`.
fn row<'a>(dom: &'a str, ns: &str) -> &'a str {
    let at = dom
        .find(&format!("data-namespace=\"{ns}\""))
        .unwrap_or_else(|| panic!("no row of {ns}"));
    &dom[at..at + dom[at..].find("</tr>").expect("row end")]
}

/// The text of the cell of class `class` in `row`.
fn cell(row: &str, class: &str) -> String {
    let at = row
        .find(&format!("class=\"n {class}\">"))
        .unwrap_or_else(|| panic!("no {class} in {row}"));
    let rest = &row[at + class.len() + 11..];
    rest[..rest.find('<').expect("end")].to_owned()
}

/// Headless Chromium on `url` with `args`: what it prints.
fn chromium(args: &[&str], url: &str) -> String {
    let out = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
        ])
        .args(args)
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_what_the_metrics_say() {
    let test = "the_status_page_shows_what_the_metrics_say";
    let Some((dir, upstream)) = support::upstream_for(
        test,
        have("docker-registry") && have("chromium"),
        "docker-registry or chromium is not installed",
    ) else {
        return;
    };
    let blob = conformance::random_bytes(71, 4 << 20);
    let config = Bytes::from_static(b"{}");
    let manifest = Bytes::from(
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": Digest::of(&config).to_string(), "size": 2},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": Digest::of(&blob).to_string(), "size": blob.len()}],
        })
        .to_string(),
    );
    let up = Arc::new(Held {
        manifest,
        blob: blob.clone(),
        release: Notify::new(),
    });
    let slow = support::fakes::serve(
        axum::Router::new()
            .route("/v2/{*rest}", get(held))
            .with_state(Arc::clone(&up)),
    )
    .await;
    let client = reqwest::Client::new();
    let image = push_image(&client, &upstream.addr, "team/app", 72, &[256 << 10]).await;
    let proxy = tokio::task::block_in_place(|| {
        registry_proxy_with(
            dir.path(),
            &format!(
                "storage:\n  filesystem:\n    rootdirectory: {}\nproxy:\n  upstreams:\n    - namespace: hub.test\n      remoteurl: http://{}\n      default: true\n    - namespace: slow.test\n      remoteurl: {slow}\n",
                dir.path().join("root").display(),
                upstream.addr
            ),
        )
    });
    // Misses, then hits.
    for _ in 0..3 {
        pull_image(&client, &proxy.addr, &image)
            .await
            .expect("pull");
    }
    // The held upstream: its manifest (and budget), then a fill left half done.
    let base = format!("http://{}/v2/team/slow", proxy.addr);
    let answer = client
        .get(format!("{base}/manifests/v1?ns=slow.test"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .expect("manifest");
    assert_eq!(answer.status(), 200);
    let digest = Digest::of(&blob);
    let waiting = tokio::spawn({
        let url = format!("{base}/blobs/{digest}?ns=slow.test");
        async move { reqwest::get(url).await.expect("blob").bytes().await }
    });
    let debug = proxy.debug.clone().expect("debug listener");
    let status = format!("http://{debug}/status");
    let half = blob.len() / 2;
    let mut tries = 0;
    while !reqwest::get(&status)
        .await
        .expect("status")
        .text()
        .await
        .expect("page")
        .contains(&format!("data-received=\"{half}\""))
    {
        tries += 1;
        assert!(tries < 200, "the fill never showed half its bytes");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let metrics = debug_text(&proxy, "/metrics").await;
    let dom = tokio::task::block_in_place(|| chromium(&["--dump-dom"], &status));
    let sum = |family: &str| metric(&metrics, family, "");
    assert_eq!(
        by_id(&dom, "total-requests"),
        sum("registry_proxy_requests_total").to_string()
    );
    let (hits, misses) = (
        sum("registry_proxy_hits_total"),
        sum("registry_proxy_misses_total"),
    );
    assert!(hits > 0 && misses > 0, "{metrics}");
    assert_eq!(by_id(&dom, "total-hits"), hits.to_string());
    assert_eq!(by_id(&dom, "total-misses"), misses.to_string());
    assert_eq!(
        by_id(&dom, "total-ratio"),
        format!("{:.1} %", 100.0 * hits as f64 / (hits + misses) as f64)
    );
    let hub = row(&dom, "hub.test");
    for (class, family) in [
        ("requests", "registry_proxy_requests_total"),
        ("hits", "registry_proxy_hits_total"),
        ("misses", "registry_proxy_misses_total"),
    ] {
        assert_eq!(
            cell(hub, class),
            metric(&metrics, family, "namespace=\"hub.test\"").to_string(),
            "{class} of hub.test"
        );
    }
    assert!(cell(hub, "stored").contains("(2 blobs)"), "{hub}");
    assert!(hub.contains("answering"), "{hub}");
    let held_row = row(&dom, "slow.test");
    assert!(held_row.contains("76 of 100 per 6h left"), "{held_row}");
    assert_eq!(by_id(&dom, "fills-running"), "1");
    assert!(
        dom.contains(&format!(
            "<progress max=\"{}\" value=\"{half}\"></progress>",
            blob.len()
        )),
        "the fill's progress: {dom}"
    );
    assert!(
        dom.contains("<td>team/app</td><td class=\"n\">3</td>"),
        "{dom}"
    );
    assert!(dom.contains("id=\"hit-chart\""), "{dom}");
    assert!(dom.contains("<circle"), "a point of the chart: {dom}");

    let shot = dir.path().join("status.png");
    tokio::task::block_in_place(|| {
        chromium(
            &[
                &format!("--screenshot={}", shot.display()),
                "--window-size=1100,1000",
            ],
            &status,
        )
    });
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000);
    if let Ok(keep) = std::env::var("STATUS_SCREENSHOT") {
        std::fs::write(keep, &png).expect("keep the screenshot");
    }

    up.release.notify_waiters();
    let received = waiting.await.expect("task").expect("the blob");
    assert_eq!(received, blob);
}

/// The debug router of `proxy`: its `/status` page, as text.
async fn status_page(router: &axum::Router) -> (StatusCode, String) {
    use tower::ServiceExt as _;
    let answer = router
        .clone()
        .oneshot(
            axum::http::Request::get("/status")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("infallible");
    let status = answer.status();
    let body = axum::body::to_bytes(answer.into_body(), 16 << 20)
        .await
        .expect("page");
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The most asked repositories of an isolated namespace and of one with
/// `users` are not on the page; a shared namespace's are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_names_no_repository_of_a_private_namespace() {
    use registry_proxy::namespace::{NamespaceSpec, Sharing};
    let spec = |name: &str, sharing, users: Option<Vec<String>>, default| NamespaceSpec {
        name: name.to_owned(),
        sharing,
        users,
        registry2_dir: default,
        default,
        ..NamespaceSpec::single("http://127.0.0.1:9".parse().expect("url"), None)
    };
    let proxy = support::InProcess::with_namespaces(
        &[
            spec("hub.test", Sharing::Shared, None, true),
            spec("iso.test", Sharing::Isolated, None, false),
            spec(
                "team.test",
                Sharing::Shared,
                Some(vec!["alice".to_owned()]),
                false,
            ),
        ],
        Duration::from_secs(60),
    )
    .await;
    // What a manifest GET through each namespace records.
    for (namespace, repo) in [
        ("hub.test", "open/app"),
        ("iso.test", "isolated/secret-app"),
        ("team.test", "private/secret-app"),
    ] {
        let ns = proxy.state.namespaces.get(namespace).expect("namespace");
        ns.metrics.manifest_sent(repo);
    }
    let router = registry_proxy::debug_app(proxy.state.clone(), &Default::default());
    let (status, page) = status_page(&router).await;
    assert_eq!(status, 200);
    assert!(page.contains("<td>open/app</td>"), "{page}");
    for secret in ["isolated/secret-app", "private/secret-app"] {
        assert!(!page.contains(secret), "{secret} is named: {page}");
    }
}

/// `/status` is rendered off the blocking pool that storage calls use:
/// with that pool's one thread held, the page still answers.
#[test]
fn the_status_page_answers_while_the_blocking_pool_is_full() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let proxy = support::InProcess::open("http://127.0.0.1:9", None, Duration::ZERO).await;
        let router = registry_proxy::debug_app(proxy.state.clone(), &Default::default());
        let (release, held) = std::sync::mpsc::channel::<()>();
        let busy = tokio::task::spawn_blocking(move || held.recv());
        let answer = tokio::time::timeout(Duration::from_secs(10), status_page(&router)).await;
        release.send(()).expect("release");
        busy.await.expect("the held thread").expect("released");
        let (status, page) = answer.expect("the page waited for the storage pool");
        assert_eq!(status, 200, "{page}");
    });
}
