//! End to end with real parts: Debian's `docker-registry` as the upstream
//! (anonymous, then behind htpasswd Basic auth), images generated here and
//! pushed with `skopeo`, pulled with `skopeo` through the `registry-proxy`
//! binary. Skipped (with the reason printed) when `docker-registry` or
//! `skopeo` is missing, unless `REQUIRE_E2E=1` (set by CI).

// Shared by the test binaries and the side-by-side benchmark; each uses a part.
#[allow(dead_code)]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::{docker_registry, have, push_blob, registry_proxy};

use registry_proxy::oci::Digest;
use serde_json::json;

/// Whether the real parts are here; prints why not (fails under REQUIRE_E2E=1).
fn parts_available(test: &str) -> bool {
    let missing: Vec<&str> = ["docker-registry", "skopeo"]
        .into_iter()
        .filter(|t| !have(t))
        .collect();
    if missing.is_empty() {
        return true;
    }
    conformance::skip(
        test,
        "REQUIRE_E2E",
        &format!("{missing:?} not installed (scripts/test.sh installs them)"),
    );
    false
}

fn skopeo(args: &[&str]) {
    let out = Command::new("skopeo")
        .args(args)
        .output()
        .expect("run skopeo");
    assert!(
        out.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An OCI layout with one tag `v1`: a single image, or an index of
/// several platforms; two layers of about 1 MiB per platform.
fn make_image(dir: &Path, name: &str, seed: u64, platforms: &[&str]) -> PathBuf {
    let layout = dir.join(name);
    std::fs::create_dir_all(layout.join("blobs/sha256")).expect("layout");
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .expect("oci-layout");
    let write_blob = |bytes: &[u8]| {
        let digest = Digest::of(bytes);
        std::fs::write(layout.join("blobs/sha256").join(digest.hex()), bytes).expect("blob");
        json!({"digest": digest.to_string(), "size": bytes.len()})
    };
    let mut descriptors = Vec::new();
    for (i, platform) in platforms.iter().enumerate() {
        let layers: Vec<_> = (0..2u64)
            .map(|l| {
                let data = conformance::random_bytes(
                    seed * 100 + i as u64 * 10 + l,
                    (1 << 20) + l as usize * 4097,
                );
                let mut d = write_blob(&data);
                d["mediaType"] = "application/vnd.oci.image.layer.v1.tar".into();
                d
            })
            .collect();
        let config = json!({"architecture": platform, "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}});
        let mut c = write_blob(config.to_string().as_bytes());
        c["mediaType"] = "application/vnd.oci.image.config.v1+json".into();
        let manifest = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": c, "layers": layers});
        let mut m = write_blob(manifest.to_string().as_bytes());
        m["mediaType"] = "application/vnd.oci.image.manifest.v1+json".into();
        m["platform"] = json!({"architecture": platform, "os": "linux"});
        descriptors.push(m);
    }
    let mut top = if platforms.len() == 1 {
        let mut single = descriptors.remove(0);
        single.as_object_mut().map(|o| o.remove("platform"));
        single
    } else {
        let index = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": descriptors});
        let mut i = write_blob(index.to_string().as_bytes());
        i["mediaType"] = "application/vnd.oci.image.index.v1+json".into();
        i
    };
    top["annotations"] = json!({"org.opencontainers.image.ref.name": "v1"});
    std::fs::write(
        layout.join("index.json"),
        json!({"schemaVersion": 2, "manifests": [top]}).to_string(),
    )
    .expect("index.json");
    layout
}

fn push(layout: &Path, registry: &str, repo: &str, creds: Option<&str>) {
    let src = format!("oci:{}:v1", layout.display());
    let dst = format!("docker://{registry}/{repo}:v1");
    let mut args = vec!["copy", "--all", "--dest-tls-verify=false", &src, &dst];
    if let Some(c) = creds {
        args.extend(["--dest-creds", c]);
    }
    skopeo(&args);
}

/// Pulls `reference` (every platform) from `registry` into `dir:out`.
fn pull(registry: &str, reference: &str, out: &Path, creds: Option<&str>) {
    let _ = std::fs::remove_dir_all(out);
    let src = format!("docker://{registry}/{reference}");
    let dst = format!("dir:{}", out.display());
    let mut args = vec!["copy", "--all", "--src-tls-verify=false", &src, &dst];
    if let Some(c) = creds {
        args.extend(["--src-creds", c]);
    }
    skopeo(&args);
}

/// The files of a `dir:` pull, by name. Checks that every blob file's bytes
/// match the digest it is named by.
fn contents(out: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut files = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(out).expect("pulled dir") {
        let entry = entry.expect("entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        let bytes = std::fs::read(entry.path()).expect("read");
        if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
            assert_eq!(
                Digest::of(&bytes).hex(),
                name,
                "blob {name} in {} has other bytes",
                out.display()
            );
        }
        files.insert(name, bytes);
    }
    files
}

/// Pulls `reference` from `registry` and requires exactly the `expected` files.
fn pull_and_check(
    expected: &std::collections::BTreeMap<String, Vec<u8>>,
    registry: &str,
    reference: &str,
    out: &Path,
) {
    pull(registry, reference, out, None);
    let got = contents(out);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "{reference}: other files"
    );
    for (name, bytes) in expected {
        assert!(
            got[name] == *bytes,
            "{reference}: {name} differs from the upstream's"
        );
    }
}

/// What the upstream itself serves for `reference`: the reference for every pull.
fn upstream_truth(
    dir: &Path,
    registry: &str,
    reference: &str,
    creds: Option<&str>,
) -> std::collections::BTreeMap<String, Vec<u8>> {
    let out = dir.join(format!("truth-{}", reference.replace(['/', ':', '@'], "_")));
    pull(registry, reference, &out, creds);
    contents(&out)
}

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
    pull_and_check(&single, &proxy.addr, "team/app:v1", &d.join("out1"));
    pull_and_check(&multi, &proxy.addr, "team/multi:v1", &d.join("out2"));

    // With the upstream gone, the cache still serves by tag and by digest.
    drop(upstream);
    pull_and_check(&single, &proxy.addr, "team/app:v1", &d.join("out3"));
    let by_digest = format!("team/app@{}", Digest::of(&single["manifest.json"]));
    pull_and_check(&single, &proxy.addr, &by_digest, &d.join("out4"));
    pull_and_check(&multi, &proxy.addr, "team/multi:v1", &d.join("out5"));

    // registry:2 reads what registry-proxy cached: same layout.
    drop(proxy);
    let reader = docker_registry(d, "reader", &cache, "");
    pull_and_check(&single, &reader.addr, "team/app:v1", &d.join("out6"));
    pull_and_check(&multi, &reader.addr, "team/multi:v1", &d.join("out7"));
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
    pull_and_check(&image, &proxy.addr, "private/app:v1", &d.join("out"));
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

#[test]
fn pull_through_s3_cache_on_garage() {
    if !parts_available("pull_through_s3_cache") {
        return;
    }
    let Ok(Some(s3)) = driver_s3::S3Config::from_env() else {
        conformance::skip(
            "pull_through_s3_cache",
            "REQUIRE_S3",
            "S3_BUCKET is not set (scripts/test.sh starts Garage)",
        );
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
    let s3 = driver_s3::S3Config {
        root_directory: format!("e2e-{:016x}", rand::random::<u64>()),
        ..s3
    };
    let storage = support::s3_storage_yaml(&s3, &[]);
    let proxy = registry_proxy(d, &storage, &upstream.addr, None);
    pull_and_check(&image, &proxy.addr, "team/s3app:v1", &d.join("out1"));
    drop(upstream);
    pull_and_check(&image, &proxy.addr, "team/s3app:v1", &d.join("out2"));
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
