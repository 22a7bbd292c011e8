//! The admin surface end to end: the real binary with `admin.addr` and a
//! token file, in front of Debian's `docker-registry`. Unauthenticated and
//! wrong-token calls are refused, the surface is absent from the public
//! listener, and purges of a tag, a repository and a digest (through the
//! HTTP API and `registry-proxy purge`) drop what they name and keep bytes
//! another repository still uses. Skipped without `docker-registry`
//! unless `REQUIRE_E2E=1`. The admin and debug listeners close idle and
//! slow connections as the public one does (no upstream needed). Failed
//! admin logins are throttled (in process, and on the real listener).

// Shared by the test binaries and the side-by-side benchmark; each uses a part.
use registry_proxy_testkit as support;

use std::path::Path;

use registry_proxy::admin::{PurgeReport, WarmReport};
use registry_proxy::oci::Digest;
use support::{Image, free_port, pull_image, push_image, registry_proxy_http, registry_proxy_with};

const TOKEN: &str = "s3cret-admin-token";

fn blob_stored(root: &Path, digest: &Digest) -> bool {
    root.join(format!(
        "docker/registry/v2/blobs/sha256/{}/{}/data",
        &digest.hex()[..2],
        digest.hex()
    ))
    .exists()
}

/// `POST /admin/purge?query` on `admin` with `token`: the status and body.
async fn purge(admin: &str, query: &str, token: Option<&str>) -> (u16, String) {
    let mut request = reqwest::Client::new().post(format!("http://{admin}/admin/purge?{query}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("purge");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

fn report(body: &str) -> PurgeReport {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// The cache in `d` on filesystem storage in `d/root`, with `proxy` (the
/// lines of its `proxy` section) and the admin surface behind [`TOKEN`]:
/// the server and the admin address.
fn cache(d: &Path, proxy: &str) -> (support::Server, String) {
    cache_with(d, "", proxy)
}

/// [`cache`], with the lines `http` added to its `http` section.
fn cache_with(d: &Path, http: &str, proxy: &str) -> (support::Server, String) {
    std::fs::write(d.join("token"), format!("{TOKEN}\n")).expect("token file");
    let admin = format!("127.0.0.1:{}", free_port());
    let addr = format!("127.0.0.1:{}", free_port());
    let server = tokio::task::block_in_place(|| {
        registry_proxy_http(
            d,
            &addr,
            http,
            &format!(
                "storage:\n  filesystem:\n    rootdirectory: {}\nproxy:\n{proxy}admin:\n  addr: {admin}\n  tokenfile: {}\n",
                d.join("root").display(),
                d.join("token").display()
            ),
            &[],
        )
    });
    (server, admin)
}

/// Reads from `socket` until the server closes it (within 15 s, else
/// panics naming `what`); what came.
async fn until_closed(socket: &mut tokio::net::TcpStream, what: &str) -> Vec<u8> {
    use tokio::io::AsyncReadExt as _;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        match tokio::time::timeout_at(deadline, socket.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("{what}: still open 15 s past a 1 s limit"),
        }
    }
}

/// The admin and debug listeners are served within the public listener's
/// time limits (here 1 s each): headers that never end, and a kept-alive
/// connection left idle after its answer, are closed, so idle clients
/// cannot hold the descriptors that public accepts and storage need.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_and_debug_listeners_close_idle_and_slow_connections() {
    use tokio::io::AsyncWriteExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let (proxy, admin) = cache_with(
        dir.path(),
        "  readheadertimeout: 1s\n  idletimeout: 1s\n",
        "  remoteurl: http://127.0.0.1:9\n",
    );
    let debug = proxy.debug.clone().expect("a debug listener");
    for (listener, path) in [
        (debug.as_str(), "/livez"),
        (admin.as_str(), "/admin/leases"),
    ] {
        let mut slow = tokio::net::TcpStream::connect(listener)
            .await
            .expect("connect");
        slow.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nX-Slow: ").as_bytes())
            .await
            .expect("write");
        let mut idle = tokio::net::TcpStream::connect(listener)
            .await
            .expect("connect");
        idle.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .expect("write");
        until_closed(&mut slow, &format!("headers that never end on {listener}")).await;
        let answer = until_closed(&mut idle, &format!("an idle keep-alive on {listener}")).await;
        assert!(
            answer.starts_with(b"HTTP/1.1 "),
            "no answer on {listener}: {}",
            String::from_utf8_lossy(&answer)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purges_drop_what_they_name_and_only_admins_may() {
    let Some((dir, upstream)) = support::registry_upstream("admin") else {
        return;
    };
    let d = dir.path();
    let client = reqwest::Client::new();
    // Two repositories holding the same image: every blob shared.
    let app = push_image(
        &client,
        &upstream.addr,
        "team/app",
        1,
        &[64 << 10, 32 << 10],
    )
    .await;
    let other = push_image(
        &client,
        &upstream.addr,
        "team/other",
        1,
        &[64 << 10, 32 << 10],
    )
    .await;
    assert_eq!(app.blobs, other.blobs, "the same blobs");
    let root = d.join("root");
    let (proxy, admin) = cache(d, &format!("  remoteurl: http://{}\n", upstream.addr));
    pull_image(&client, &proxy.addr, &app)
        .await
        .expect("pull app");
    pull_image(&client, &proxy.addr, &other)
        .await
        .expect("pull other");
    support::fills_settled(&proxy).await;

    // What storage holds, from the running cache.
    let du = |token: Option<&'static str>| {
        let mut request = reqwest::Client::new().get(format!("http://{admin}/admin/du"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move { request.send().await.expect("du") }
    };
    assert_eq!(du(None).await.status(), 401);
    let usage: serde_json::Value = du(Some(TOKEN)).await.json().await.expect("du json");
    let repositories = &usage["usage"]["repositories"];
    assert!(
        repositories["team/app"]["blobs"] == 3 && repositories["team/other"]["blobs"] == 3,
        "{usage}"
    );
    assert!(
        usage["usage"]["bytes"].as_u64().unwrap_or(0) > 96 << 10,
        "{usage}"
    );

    // Only with the token, and only on the admin listener.
    assert_eq!(purge(&admin, "repository=team/app", None).await.0, 401);
    assert_eq!(
        purge(&admin, "repository=team/app", Some("wrong")).await.0,
        401
    );
    let public = client
        .post(format!(
            "http://{}/admin/purge?repository=team/app",
            proxy.addr
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("public");
    assert!(public.status().is_client_error(), "{}", public.status());
    assert!(
        app.blobs.iter().all(|b| blob_stored(&root, b)),
        "nothing purged yet"
    );

    // A purged tag is asked upstream again at once (within the tag's
    // freshness window): a new image pushed under it is served.
    let newer = push_image(&client, &upstream.addr, "team/app", 2, &[16 << 10]).await;
    let (status, body) = purge(&admin, "repository=team/app&tag=v1", Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    assert!(report(&body).tag);
    pull_image(&client, &proxy.addr, &newer)
        .await
        .expect("the purged tag resolves to the new image");

    // The repository: its links go; blobs team/other still uses stay.
    let (status, body) = purge(&admin, "repository=team/app", Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    let purged = report(&body);
    assert!(purged.entries >= 3, "{purged:?}");
    assert!(
        other.blobs.iter().all(|b| blob_stored(&root, b)),
        "bytes another repository uses were deleted"
    );
    assert!(
        !newer
            .blobs
            .iter()
            .any(|b| !other.blobs.contains(b) && blob_stored(&root, b)),
        "bytes only the purged repository used are still stored"
    );

    // A digest everywhere, through the CLI: its bytes go, and it pulls again.
    let layer = *other.blobs.last().expect("a layer");
    let out = std::process::Command::new(support::registry_proxy_binary())
        .args(["purge", d.join("proxy.yml").to_str().expect("utf-8")])
        .args(["--digest", &layer.to_string()])
        .output()
        .expect("registry-proxy purge");
    assert!(
        out.status.success(),
        "purge: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let purged = report(&String::from_utf8_lossy(&out.stdout));
    assert!(purged.entries >= 1 && purged.bytes_freed > 0, "{purged:?}");
    assert!(!blob_stored(&root, &layer), "the purged digest's bytes");
    let again: &Image = &other;
    pull_image(&client, &proxy.addr, again)
        .await
        .expect("a purged digest fills again");
}

/// A digest purged in one namespace (`namespace=N&digest=D`) goes from
/// that namespace's repositories only: another namespace's link to it, and
/// the bytes it still uses, stay, and it is served them from storage
/// without asking its upstream. (The purge dropped D in every namespace.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_digest_purged_in_one_namespace_stays_in_the_others() {
    let Some((dir, upstream)) = support::registry_upstream("namespaced_purge") else {
        return;
    };
    let d = dir.path();
    let client = reqwest::Client::new();
    let image = push_image(&client, &upstream.addr, "team/app", 7, &[32 << 10]).await;
    let root = d.join("root");
    let (proxy, admin) = cache(
        d,
        &format!(
            "  upstreams:\n    - namespace: a.test\n      remoteurl: http://{0}\n      default: true\n    - namespace: b.test\n      remoteurl: http://{0}\n",
            upstream.addr
        ),
    );
    let through = |ns: &str| Image {
        repo: format!("{ns}/team/app"),
        ..image.clone()
    };
    for ns in ["a.test", "b.test"] {
        pull_image(&client, &proxy.addr, &through(ns))
            .await
            .expect("pull");
        support::fills_settled(&proxy).await;
    }
    let layer = *image.blobs.last().expect("a layer");
    let link = |ns: &str| {
        root.join(format!(
            "docker/registry/v2/repositories/_namespaces/{ns}/team/app/_layers/sha256/{}/link",
            layer.hex()
        ))
    };
    assert!(link("a.test").exists() && link("b.test").exists());
    let upstream_gets = || {
        std::fs::read_to_string(d.join("upstream.log"))
            .expect("upstream log")
            .matches(&format!("\"GET /v2/team/app/blobs/{layer}"))
            .count()
    };
    let gets = upstream_gets();

    let (status, body) = purge(
        &admin,
        &format!("namespace=b.test&digest={layer}"),
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let purged = report(&body);
    assert_eq!(
        (purged.entries, purged.bytes_freed),
        (1, 0),
        "not b.test's entry alone: {purged:?}"
    );
    assert!(!link("b.test").exists(), "b.test still links the digest");
    assert!(link("a.test").exists(), "a.test's link was purged");
    assert!(blob_stored(&root, &layer), "bytes a.test uses were deleted");
    pull_image(&client, &proxy.addr, &through("a.test"))
        .await
        .expect("a.test pulls");
    assert_eq!(upstream_gets(), gets, "a.test's layer was fetched again");
}

/// With `admin.users`, users of `auth.htpasswd` listed there are admitted
/// by their Basic credentials; another user gets 403, a wrong password or
/// none 401; the token still admits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_users_are_admitted_by_their_credentials() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let hash = |password: &str| bcrypt::hash(password, 4).expect("bcrypt");
    std::fs::write(
        d.join("htpasswd"),
        format!("alice:{}\nbob:{}\n", hash("alice-pw"), hash("bob-pw")),
    )
    .expect("htpasswd");
    std::fs::write(d.join("token"), TOKEN).expect("token file");
    let admin = format!("127.0.0.1:{}", free_port());
    let proxy = tokio::task::block_in_place(|| {
        registry_proxy_with(
            d,
            &format!(
                "storage:\n  inmemory: {{}}\nauth:\n  htpasswd:\n    realm: r\n    path: {}\nadmin:\n  addr: {admin}\n  tokenfile: {}\n  users: [alice]\n",
                d.join("htpasswd").display(),
                d.join("token").display()
            ),
        )
    });
    let leases = |user: Option<(&str, &str)>, token: Option<&str>| {
        let mut request = reqwest::Client::new().get(format!("http://{admin}/admin/leases"));
        if let Some((user, password)) = user {
            request = request.basic_auth(user, Some(password));
        }
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move { request.send().await.expect("leases").status().as_u16() }
    };
    assert_eq!(leases(Some(("alice", "alice-pw")), None).await, 200);
    assert_eq!(leases(Some(("bob", "bob-pw")), None).await, 403);
    assert_eq!(leases(Some(("alice", "wrong")), None).await, 401);
    assert_eq!(leases(None, None).await, 401);
    assert_eq!(leases(None, Some(TOKEN)).await, 200);
    // Failed logins are throttled by client here too (the listener gives
    // each request its client's address); verified credentials still pass.
    let mut guesses = Vec::new();
    for _ in 0..6 {
        guesses.push(leases(Some(("bob", "guess")), None).await);
    }
    assert_eq!(guesses.last(), Some(&429), "{guesses:?}");
    assert_eq!(leases(Some(("alice", "alice-pw")), None).await, 200);
    drop(proxy);
}

/// The admin listener throttles failed logins as the public one does: a
/// client past its free failures gets 429 without a bcrypt verification
/// (it got 401 for ever, each guess verified), while another client still
/// logs in.
#[tokio::test]
async fn failed_admin_logins_are_throttled() {
    use axum::extract::ConnectInfo;
    use base64::Engine as _;
    use tower::ServiceExt as _;
    let hash = bcrypt::hash("alice-pw", 4).expect("bcrypt");
    let auth = std::sync::Arc::new(
        registry_proxy::auth::Htpasswd::parse("r", &format!("alice:{hash}\n")).expect("htpasswd"),
    );
    let spec = registry_proxy::namespace::NamespaceSpec::single(
        "http://127.0.0.1:1".parse().expect("url"),
        None,
    );
    let proxy = support::InProcess::with_settings(
        &[spec],
        std::time::Duration::from_secs(60),
        |settings| settings.auth = Some(std::sync::Arc::clone(&auth)),
    )
    .await;
    let admin = registry_proxy::admin::admin_app(
        proxy.state.clone(),
        registry_proxy::admin::AdminAccess {
            token: None,
            users: ["alice".to_owned()].into(),
        },
    );
    let leases = |client: [u8; 4], password: &str| {
        let request = axum::http::Request::builder()
            .uri("/admin/leases")
            .header(
                "authorization",
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("alice:{password}"))
                ),
            )
            .extension(ConnectInfo(std::net::SocketAddr::from((client, 40_000))))
            .body(axum::body::Body::empty())
            .expect("request");
        let admin = admin.clone();
        async move {
            admin
                .oneshot(request)
                .await
                .expect("infallible")
                .status()
                .as_u16()
        }
    };
    let guesser = [192, 0, 2, 1];
    for _ in 0..5 {
        assert_eq!(leases(guesser, "guess").await, 401);
    }
    let verified = auth.verifications();
    assert_eq!(leases(guesser, "alice-pw").await, 429);
    assert_eq!(
        auth.verifications(),
        verified,
        "a throttled guess ran bcrypt"
    );
    assert_eq!(leases([192, 0, 2, 2], "alice-pw").await, 200);
}

/// `POST /admin/warm` with `dry_run` counts the blobs an image would fetch
/// and their bytes, storing nothing; `registry-proxy warm` then fills them,
/// and a second dry run finds nothing missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_fills_an_image_and_the_dry_run_counts_right() {
    let Some((dir, upstream)) = support::registry_upstream("warm") else {
        return;
    };
    let d = dir.path();
    let client = reqwest::Client::new();
    let sizes = [64 << 10, 32 << 10];
    let image = push_image(&client, &upstream.addr, "team/warm", 5, &sizes).await;
    let root = d.join("root");
    let (proxy, admin) = cache(d, &format!("  remoteurl: http://{}\n", upstream.addr));
    let dry_run = || async {
        let response = client
            .post(format!(
                "http://{admin}/admin/warm?image=team/warm:v1&dry_run=true"
            ))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("warm");
        assert_eq!(response.status(), 200);
        response.json::<WarmReport>().await.expect("report")
    };
    let config = std::fs::metadata(root.join(format!(
        "docker/registry/v2/blobs/sha256/{}/{}/data",
        &image.blobs[0].hex()[..2],
        image.blobs[0].hex()
    )));
    assert!(config.is_err(), "nothing stored yet");
    let before = dry_run().await;
    assert_eq!((before.manifests, before.blobs, before.missing), (1, 3, 3));
    let config_size = {
        let url = format!(
            "http://{}/v2/team/warm/blobs/{}",
            upstream.addr, image.blobs[0]
        );
        client
            .get(url)
            .send()
            .await
            .expect("config")
            .bytes()
            .await
            .expect("body")
            .len() as u64
    };
    assert_eq!(
        before.missing_bytes,
        config_size + sizes.iter().sum::<usize>() as u64,
        "the bytes a warm would fetch"
    );
    assert!(
        !image.blobs.iter().any(|b| blob_stored(&root, b)),
        "a dry run stored a blob"
    );
    let out = std::process::Command::new(support::registry_proxy_binary())
        .args([
            "warm",
            d.join("proxy.yml").to_str().expect("utf-8"),
            "team/warm:v1",
        ])
        .output()
        .expect("registry-proxy warm");
    assert!(
        out.status.success(),
        "warm: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    support::fills_settled(&proxy).await;
    assert!(image.blobs.iter().all(|b| blob_stored(&root, b)), "warmed");
    assert_eq!(dry_run().await.missing, 0);
}

/// `prefetch` with `tags: ["v*"]` every second: the matching tag pushed
/// before the start is warmed, one pushed later appears within an
/// interval, and a tag the globs do not match is never fetched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_warms_matching_tags_as_they_appear() {
    let Some((dir, upstream)) = support::registry_upstream("prefetch") else {
        return;
    };
    let d = dir.path();
    let client = reqwest::Client::new();
    let push = |tag: &'static str, seed: u64| {
        support::push_image_tagged(&client, &upstream.addr, "team/pre", tag, seed, &[8 << 10])
    };
    let first = push("v1", 31).await;
    let root = d.join("root");
    let (_proxy, _) = cache(
        d,
        &format!(
            "  upstreams:\n    - namespace: pre.test\n      remoteurl: http://{}\n      default: true\n      prefetch:\n        interval: 1s\n        images:\n          - repository: team/pre\n            tags: [\"v*\"]\n",
            upstream.addr
        ),
    );
    let stored = |image: &Image| image.blobs.iter().all(|b| blob_stored(&root, b));
    let within = |image: Image| {
        let root = root.clone();
        async move {
            for _ in 0..200 {
                if image.blobs.iter().all(|b| blob_stored(&root, b)) {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            panic!("{}: not prefetched within 10 s", image.repo);
        }
    };
    within(first.clone()).await;
    let dev = push("dev", 32).await;
    let second = push("v2", 33).await;
    within(second).await;
    // v2 was pushed after dev and is stored, so a pass saw dev too.
    assert!(!stored(&dev), "a tag the globs do not match was prefetched");
    assert!(stored(&first));
}

/// The blobs of each platform (by architecture) of the index
/// `repo:tag` as the registry at `addr` serves it (skopeo compresses
/// layers as it pushes).
async fn platform_blobs(
    addr: &str,
    repo: &str,
    tag: &str,
) -> std::collections::HashMap<String, Vec<Digest>> {
    let read = |reference: String| async move {
        let bytes = reqwest::Client::new()
            .get(format!("http://{addr}/v2/{repo}/manifests/{reference}"))
            .header("accept", registry_proxy::oci::MANIFEST_ACCEPT)
            .send()
            .await
            .expect("manifest")
            .bytes()
            .await
            .expect("bytes");
        serde_json::from_slice::<serde_json::Value>(&bytes)
            .map(|json| (bytes, json))
            .expect("json")
    };
    let (_, index) = read(tag.to_owned()).await;
    let mut blobs = std::collections::HashMap::new();
    for child in index["manifests"].as_array().expect("children") {
        let (bytes, _) = read(child["digest"].as_str().expect("digest").to_owned()).await;
        let digests = registry_proxy::oci::manifest_references(&bytes)
            .into_iter()
            .map(|(d, _)| d)
            .collect();
        let architecture = child["platform"]["architecture"].as_str();
        blobs.insert(architecture.expect("architecture").to_owned(), digests);
    }
    blobs
}

/// `prefetch` with a regex, a semver range and a platform: only the tags
/// they admit are warmed, and of the multi-platform one only arm64.
/// Repositories are warmed in their listed order and tags in sorted
/// order, so once the last admitted tag is stored every other tag was
/// judged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_follows_regex_semver_and_platforms() {
    let test = "prefetch_follows_regex_semver_and_platforms";
    if !support::skopeo::parts_available(test) {
        return;
    }
    let Some((dir, upstream)) = support::upstream_for(test, true, "") else {
        return;
    };
    let d = dir.path();
    let client = reqwest::Client::new();
    let push = |repo: &'static str, tag: &'static str, seed: u64| {
        support::push_image_tagged(&client, &upstream.addr, repo, tag, seed, &[4 << 10])
    };
    let release = push("team/rx", "release-7", 51).await;
    let release_a = push("team/rx", "release-7a", 52).await;
    let old = push("team/sv", "1.2.0", 53).await;
    let candidate = push("team/sv", "1.5.0-rc1", 54).await;
    let next = push("team/sv", "2.0.0", 55).await;
    let last = push("team/sv", "v1.4", 56).await;
    let layout = support::skopeo::make_image(d, "multi", 57, &["amd64", "arm64"]);
    tokio::task::block_in_place(|| {
        support::skopeo::skopeo(&[
            "copy",
            "--all",
            "--dest-tls-verify=false",
            &format!("oci:{}:v1", layout.display()),
            &format!("docker://{}/team/sv:1.3.0", upstream.addr),
        ]);
    });
    let platforms = platform_blobs(&upstream.addr, "team/sv", "1.3.0").await;
    let root = d.join("root");
    let (_proxy, _) = cache(
        d,
        &format!(
            "  upstreams:\n    - namespace: pre.test\n      remoteurl: http://{}\n      default: true\n      prefetch:\n        interval: 1s\n        images:\n          - repository: team/rx\n            regex: \"release-[0-9]+\"\n          - repository: team/sv\n            semver: \">=1.3, <2\"\n            platforms: [linux/arm64]\n",
            upstream.addr
        ),
    );
    let stored = |blobs: &[Digest]| blobs.iter().all(|b| blob_stored(&root, b));
    let mut waited = 0;
    // A warm has read every blob when it ends; their fills commit just
    // after.
    while !(stored(&last.blobs) && stored(&release.blobs) && stored(&platforms["arm64"])) {
        waited += 1;
        assert!(
            waited < 400,
            "release-7, 1.3.0 for arm64 and v1.4 not all prefetched within 20 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    for (what, blobs) in [
        ("release-7a (the regex is anchored)", &release_a.blobs),
        ("1.2.0 (below the range)", &old.blobs),
        ("1.5.0-rc1 (a pre-release)", &candidate.blobs),
        ("2.0.0 (above the range)", &next.blobs),
        ("1.3.0 for amd64 (another platform)", &platforms["amd64"]),
    ] {
        assert!(
            blobs.iter().all(|b| !blob_stored(&root, b)),
            "{what} was prefetched"
        );
    }
}
