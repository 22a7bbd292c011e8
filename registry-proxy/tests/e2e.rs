//! End to end with real parts: Debian's `docker-registry` as the upstream
//! (anonymous, then behind htpasswd Basic auth), images generated here and
//! pushed with `skopeo`, pulled with `skopeo` through the `registry-proxy`
//! binary. Skipped (with the reason printed) when `docker-registry` or
//! `skopeo` is missing, unless `REQUIRE_E2E=1` (set by CI).

// Shared by the test binaries and the side-by-side benchmark; each uses a part.
use registry_proxy_testkit as support;

use std::process::Command;

use support::skopeo::{make_image, parts_available, pull_and_check, push, upstream_truth};
use support::{docker_registry, push_blob, registry_proxy};

use registry_proxy::oci::Digest;

#[test]
fn pull_through_filesystem_cache_with_real_registry_and_skopeo() {
    if !parts_available("pull_through_filesystem_cache") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let upstream = docker_registry(d, "upstream", &d.join("upstream-root"), "");
    push(
        &make_image(d, "single", 1, &["amd64"]),
        &upstream.addr,
        "team/app",
        None,
    );
    push(
        &make_image(d, "multi", 2, &["amd64", "arm64"]),
        &upstream.addr,
        "team/multi",
        None,
    );
    let single = upstream_truth(d, &upstream.addr, "team/app:v1", None);
    let multi = upstream_truth(d, &upstream.addr, "team/multi:v1", None);
    assert!(
        multi
            .keys()
            .filter(|k| k.ends_with(".manifest.json"))
            .count()
            == 2,
        "the index lost a platform"
    );

    let cache = d.join("cache-root");
    let storage = format!("  filesystem:\n    rootdirectory: {}\n", cache.display());
    let proxy = registry_proxy(d, &storage, &upstream.addr, None);
    pull_and_check(&single, &proxy.addr, "team/app:v1", &d.join("out1"), None);
    pull_and_check(&multi, &proxy.addr, "team/multi:v1", &d.join("out2"), None);

    // With the upstream gone, the cache still serves by tag and by digest.
    drop(upstream);
    pull_and_check(&single, &proxy.addr, "team/app:v1", &d.join("out3"), None);
    let by_digest = format!("team/app@{}", Digest::of(&single["manifest.json"]));
    pull_and_check(&single, &proxy.addr, &by_digest, &d.join("out4"), None);
    pull_and_check(&multi, &proxy.addr, "team/multi:v1", &d.join("out5"), None);

    // registry:2 reads what registry-proxy cached: same layout.
    drop(proxy);
    let reader = docker_registry(d, "reader", &cache, "");
    pull_and_check(&single, &reader.addr, "team/app:v1", &d.join("out6"), None);
    pull_and_check(&multi, &reader.addr, "team/multi:v1", &d.join("out7"), None);
}

#[test]
fn pull_through_a_basic_auth_upstream() {
    if !parts_available("pull_through_a_basic_auth_upstream") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let hash = bcrypt::hash("pull-secret", 4).expect("bcrypt");
    std::fs::write(d.join("htpasswd"), format!("puller:{hash}\n")).expect("htpasswd");
    let auth = format!(
        "auth:\n  htpasswd:\n    realm: test-realm\n    path: {}\n",
        d.join("htpasswd").display()
    );
    let upstream = docker_registry(d, "upstream", &d.join("upstream-root"), &auth);
    push(
        &make_image(d, "image", 3, &["amd64"]),
        &upstream.addr,
        "private/app",
        Some("puller:pull-secret"),
    );
    let image = upstream_truth(
        d,
        &upstream.addr,
        "private/app:v1",
        Some("puller:pull-secret"),
    );

    // Debug logs: the most a log can say.
    let storage = format!(
        "  filesystem:\n    rootdirectory: {}\nlog:\n  level: debug\n",
        d.join("cache").display()
    );
    let proxy = registry_proxy(d, &storage, &upstream.addr, Some(("puller", "pull-secret")));
    pull_and_check(&image, &proxy.addr, "private/app:v1", &d.join("out"), None);
    // Every kind of answer: hits, misses of unknown content, a bad name, the
    // metrics; then a proxy with a wrong password (the upstream refuses it).
    let mut seen = answers(&proxy, "private/app");
    let log = std::fs::read_to_string(d.join("proxy.log")).expect("proxy log");
    drop(proxy);
    let wrong = registry_proxy(
        d,
        &storage,
        &upstream.addr,
        Some(("puller", "wrong-secret")),
    );
    seen.push_str(&answers(&wrong, "private/app"));
    let refused = seen.contains("UNAUTHORIZED") || seen.contains("DENIED");
    assert!(refused, "the wrong password was not refused: {seen}");
    drop(wrong);
    seen.push_str(&log);
    seen.push_str(&std::fs::read_to_string(d.join("proxy.log")).expect("proxy log"));
    // The passwords, and the Basic headers they make (base64 of user:password).
    for secret in [
        "pull-secret",
        "wrong-secret",
        "cHVsbGVyOnB1bGwtc2VjcmV0",
        "cHVsbGVyOndyb25nLXNlY3JldA",
    ] {
        assert!(
            !seen.contains(secret),
            "{secret} appeared in a response, a metric or the log"
        );
    }
}

/// Status lines, headers and bodies of a range of requests to `proxy`
/// about `repo`, and its `/metrics` and `/debug/vars`, as one text.
fn answers(proxy: &support::Server, repo: &str) -> String {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let missing = Digest::of(b"not there");
    let public = [
        format!("/v2/{repo}/manifests/v1"),
        format!("/v2/{repo}/manifests/nope"),
        format!("/v2/{repo}/blobs/{missing}"),
        format!("/v2/{repo}/tags/list"),
        "/v2/Bad..Name/manifests/v1".to_owned(),
        "/v2/_catalog".to_owned(),
    ];
    let debug = proxy.debug.clone().expect("debug listener");
    let urls = public
        .iter()
        .map(|p| format!("http://{}{p}", proxy.addr))
        .chain(["/metrics", "/debug/vars"].map(|p| format!("http://{debug}{p}")));
    runtime.block_on(async {
        let client = reqwest::Client::new();
        // The debug endpoints live on their own listener only.
        for path in ["/metrics", "/debug/vars", "/healthz"] {
            let url = format!("http://{}{path}", proxy.addr);
            let status = client.get(&url).send().await.expect("request").status();
            assert_eq!(status, 404, "{url} is served on the public listener");
        }
        let mut seen = String::new();
        for url in urls {
            let response = client.get(&url).send().await.expect("request");
            seen.push_str(&format!(
                "{url} {}\n{:?}\n",
                response.status(),
                response.headers()
            ));
            seen.push_str(&response.text().await.unwrap_or_default());
        }
        seen
    })
}

/// The S3 bucket (Garage in the tests) under a fresh root named after
/// `root`, when the end-to-end parts are there too; else `test` is
/// skipped.
fn bucket(test: &str, root: &str) -> Option<driver_s3::S3Config> {
    if !parts_available(test) {
        return None;
    }
    support::s3_bucket(test, root)
}

#[test]
fn pull_through_s3_cache_on_garage() {
    let Some(s3) = bucket("pull_through_s3_cache", "e2e") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let upstream = docker_registry(d, "upstream", &d.join("upstream-root"), "");
    push(
        &make_image(d, "image", 4, &["amd64", "arm64"]),
        &upstream.addr,
        "team/s3app",
        None,
    );
    let image = upstream_truth(d, &upstream.addr, "team/s3app:v1", None);
    let storage = support::s3_storage_yaml(&s3, &[]);
    let proxy = registry_proxy(d, &storage, &upstream.addr, None);
    pull_and_check(&image, &proxy.addr, "team/s3app:v1", &d.join("out1"), None);
    drop(upstream);
    pull_and_check(&image, &proxy.addr, "team/s3app:v1", &d.join("out2"), None);
}

/// `curl -s -o /dev/null -w FORMAT url` (no redirects followed).
fn curl_out(format: &str, url: &str) -> String {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", format, url])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Blob bytes the proxy sent itself and blob hits, from its `/metrics`.
fn blob_pushed_and_hits(proxy: &support::Server) -> (u64, u64) {
    let debug = proxy.debug.as_deref().expect("debug listener");
    let out = Command::new("curl")
        .args(["-sf", &format!("http://{debug}/metrics")])
        .output()
        .expect("curl metrics");
    let text = String::from_utf8_lossy(&out.stdout);
    let sum = |name: &str| -> u64 {
        text.lines()
            .filter(|l| l.starts_with(name) && l.contains(r#"kind="blob""#))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    (
        sum("registry_proxy_bytes_pushed_total{"),
        sum("registry_proxy_hits_total{"),
    )
}

#[test]
fn s3_hits_redirect_to_presigned_urls_that_skopeo_follows() {
    let Some(s3) = bucket("s3_redirects", "redirect") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let upstream = docker_registry(d, "upstream", &d.join("upstream-root"), "");
    // An upstream without the image, for an isolated namespace.
    let other = docker_registry(d, "other", &d.join("other-root"), "");
    push(
        &make_image(d, "image", 6, &["amd64"]),
        &upstream.addr,
        "team/redirected",
        None,
    );
    let image = upstream_truth(d, &upstream.addr, "team/redirected:v1", None);
    // The largest file pulled is a layer, named by its digest.
    let (name, layer_bytes) = image
        .iter()
        .max_by_key(|(_, bytes)| bytes.len())
        .expect("a layer");
    let layer = Digest::of(layer_bytes);
    assert_eq!(*name, layer.hex(), "the largest file is a blob");
    let storage = |disable: bool| {
        let block = support::s3_storage_yaml(&s3, &["redirectexpiry: 600"]);
        format!("storage:\n{block}  redirect:\n    disable: {disable}\n")
    };
    let namespaces = format!(
        "proxy:\n  remoteurl: http://{}\n  upstreams:\n    - namespace: private.test\n      remoteurl: http://{}\n      sharing: isolated\n",
        upstream.addr, other.addr
    );
    let proxy_dir = d.join("redirecting");
    std::fs::create_dir_all(&proxy_dir).expect("dir");
    let proxy = support::registry_proxy_with(&proxy_dir, &(storage(false) + &namespaces));
    pull_and_check(
        &image,
        &proxy.addr,
        "team/redirected:v1",
        &d.join("cold"),
        None,
    );
    let (pushed, hits) = blob_pushed_and_hits(&proxy);

    // Warm: skopeo follows each blob's redirect to Garage; the proxy sends
    // no blob byte itself, and counts the hits.
    pull_and_check(
        &image,
        &proxy.addr,
        "team/redirected:v1",
        &d.join("warm"),
        None,
    );
    let (pushed_warm, hits_warm) = blob_pushed_and_hits(&proxy);
    assert_eq!(
        pushed_warm, pushed,
        "warm blob bytes went through the proxy"
    );
    assert!(hits_warm >= hits + 2, "hits {hits} then {hits_warm}");
    let url = format!("http://{}/v2/team/redirected/blobs/{layer}", proxy.addr);
    let answer = curl_out("%{http_code} %{redirect_url}", &url);
    let endpoint = s3.endpoint.clone().expect("Garage's endpoint");
    assert!(
        answer.starts_with(&format!("307 {}", endpoint.trim_end_matches('/'))),
        "{answer}"
    );
    assert!(
        answer.contains("X-Amz-Signature="),
        "not presigned: {answer}"
    );

    // An isolated namespace whose upstream lacks the image gets no URL:
    // access is proven before one is given.
    let private = format!(
        "http://{}/v2/private.test/team/redirected/blobs/{layer}",
        proxy.addr
    );
    let answer = curl_out("%{http_code} %{redirect_url}", &private);
    assert!(
        answer.starts_with("404 ") || answer.starts_with("403 "),
        "{answer}"
    );
    assert!(!answer.contains("http"), "a URL was given: {answer}");

    // disable: true on the same bucket: the bytes come from the proxy.
    drop(proxy);
    let streaming_dir = d.join("streaming");
    std::fs::create_dir_all(&streaming_dir).expect("dir");
    let proxy = support::registry_proxy_with(&streaming_dir, &(storage(true) + &namespaces));
    let url = format!("http://{}/v2/team/redirected/blobs/{layer}", proxy.addr);
    assert_eq!(
        curl_out("%{http_code} %{size_download}", &url),
        format!("200 {}", layer_bytes.len())
    );
    pull_and_check(
        &image,
        &proxy.addr,
        "team/redirected:v1",
        &d.join("streamed"),
        None,
    );
    assert!(
        blob_pushed_and_hits(&proxy).0 > 0,
        "no blob bytes were streamed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_accepting_finishes_responses_and_keeps_what_it_filled() {
    if !parts_available("sigterm_drains") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let upstream = docker_registry(d, "upstream", &d.join("upstream-root"), "");
    let upstream_addr = upstream.addr.clone();
    let client = reqwest::Client::new();
    let data = conformance::random_bytes(7, 64 << 20);
    let digest = push_blob(&client, &upstream.addr, "team/big", data).await;
    let storage = format!(
        "  filesystem:\n    rootdirectory: {}\n",
        d.join("cache").display()
    );
    let mut proxy = registry_proxy(d, &storage, &upstream_addr, None);
    let url = format!("http://{}/v2/team/big/blobs/{digest}", proxy.addr);
    let mut response = client.get(&url).send().await.expect("GET");
    assert_eq!(response.status(), 200);
    let mut got = response
        .chunk()
        .await
        .expect("first chunk")
        .expect("a chunk")
        .to_vec();

    let killed = Command::new("kill")
        .args(["-TERM", &proxy.pid().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    // New connections are refused soon after the signal...
    let refused = (0..500).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::net::TcpStream::connect(&proxy.addr).is_err()
    });
    assert!(refused, "still accepting connections 5 s after SIGTERM");
    // ...while the response in flight runs to its last byte.
    while let Some(chunk) = response.chunk().await.expect("body after SIGTERM") {
        got.extend_from_slice(&chunk);
    }
    assert_eq!(
        Digest::of(&got),
        digest,
        "the drained response was not whole"
    );
    let status =
        tokio::task::block_in_place(|| proxy.wait_exit(std::time::Duration::from_secs(30)));
    assert!(
        status.is_some_and(|s| s.success()),
        "no clean exit after draining: {status:?}"
    );

    // The fill was committed whole: a restart serves it with the upstream gone.
    drop(upstream);
    let proxy = registry_proxy(d, &storage, &upstream_addr, None);
    let url = format!("http://{}/v2/team/big/blobs/{digest}", proxy.addr);
    let again = client.get(&url).send().await.expect("GET after restart");
    assert_eq!(again.status(), 200);
    assert_eq!(Digest::of(&again.bytes().await.expect("body")), digest);
}

/// A proxy storing in `d/name` in front of the https upstream at
/// `upstream`, with `trust` (a `tls` section of `proxy`, indented) and
/// `env`; the proxy and its directory.
fn https_proxy(
    d: &std::path::Path,
    name: &str,
    upstream: &str,
    trust: &str,
    env: &[(&str, &str)],
) -> (support::Server, std::path::PathBuf) {
    let dir = d.join(name);
    std::fs::create_dir_all(&dir).expect("dir");
    let sections = format!(
        "storage:\n  filesystem:\n    rootdirectory: {}\nproxy:\n  remoteurl: https://{upstream}\n{trust}",
        dir.join("root").display(),
    );
    (support::registry_proxy_env(&dir, &sections, env), dir)
}

/// What the proxy at `addr` answers for `team/tls:v1`'s manifest.
fn manifest_answer(addr: &str) -> String {
    let answer = Command::new("curl")
        .args(["-s", &format!("http://{addr}/v2/team/tls/manifests/v1")])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&answer.stdout).into_owned()
}

/// An https upstream signed by a private CA is trusted through the
/// namespace's `tls.ca` and through `SSL_CERT_FILE` (the platform's trust
/// store as OpenSSL-based tools read it); without either, the pull is
/// refused with an error that names the certificate, while what a cache
/// already holds is still served. An upstream that
/// requires client certificates is pulled from with the namespace's
/// `tls.certificate` and `tls.key`, and refuses the cache without them.
#[test]
fn an_upstream_signed_by_a_private_ca_is_trusted_when_configured() {
    if !parts_available("an_upstream_signed_by_a_private_ca") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let test_ca = support::tls::TestCa::new("registry-proxy test CA");
    let ca_file = test_ca.write(&d.join("ca.pem"));
    let server = test_ca.issue(&["127.0.0.1"], d, "server");
    let root = d.join("upstream-root");
    let image = make_image(d, "tls", 3, &["amd64"]);
    let plain = docker_registry(d, "plain", &root, "");
    push(&image, &plain.addr, "team/tls", None);
    let truth = upstream_truth(d, &plain.addr, "team/tls:v1", None);
    drop(plain);
    let tls = format!(
        "  tls:\n    certificate: {}\n    key: {}\n",
        server.cert.display(),
        server.key.display()
    );
    let upstream = docker_registry(d, "tls", &root, &tls);
    let proxy = |name: &str, trust: &str, env: &[(&str, &str)]| {
        https_proxy(d, name, &upstream.addr, trust, env)
    };
    let ca = ca_file.to_str().expect("utf-8");

    let (configured, out) = proxy("configured", &format!("  tls:\n    ca: {ca}\n"), &[]);
    pull_and_check(
        &truth,
        &configured.addr,
        "team/tls:v1",
        &out.join("out"),
        None,
    );

    let (system, out) = proxy("system", "", &[("SSL_CERT_FILE", ca)]);
    pull_and_check(&truth, &system.addr, "team/tls:v1", &out.join("out"), None);

    let (untrusted, _) = proxy("untrusted", "", &[]);
    let answer = manifest_answer(&untrusted.addr);
    assert!(answer.contains("UNAVAILABLE"), "{answer}");
    assert!(answer.to_lowercase().contains("certificate"), "{answer}");

    // The cache that pulled with the CA, restarted without it: what it
    // holds is still served (the refused upstream is an outage).
    drop(configured);
    let (stale, out) = proxy("configured", "", &[]);
    pull_and_check(&truth, &stale.addr, "team/tls:v1", &out.join("stale"), None);
    drop(stale);
    drop(upstream);

    // An upstream that requires client certificates from the same CA.
    let mutual = format!("{tls}    clientcas: [{ca}]\n");
    let upstream = docker_registry(d, "mtls", &root, &mutual);
    let client = test_ca.issue(&[], d, "client");
    let identity = format!(
        "  tls:\n    ca: {ca}\n    certificate: {}\n    key: {}\n",
        client.cert.display(),
        client.key.display()
    );
    let mtls_proxy = |name: &str, trust: &str| https_proxy(d, name, &upstream.addr, trust, &[]);
    let (with_certificate, out) = mtls_proxy("with-certificate", &identity);
    pull_and_check(
        &truth,
        &with_certificate.addr,
        "team/tls:v1",
        &out.join("out"),
        None,
    );
    let (without, _) = mtls_proxy("without-certificate", &format!("  tls:\n    ca: {ca}\n"));
    let answer = manifest_answer(&without.addr);
    assert!(
        answer.contains("UNAVAILABLE"),
        "a client without a certificate: {answer}"
    );
}
