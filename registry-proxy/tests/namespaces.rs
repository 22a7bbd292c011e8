//! Namespaces end to end with real parts: two Debian `docker-registry`
//! upstreams (A anonymous; B behind htpasswd Basic auth, holding a private
//! image), one `registry-proxy` binary with four namespaces and client
//! authentication, `skopeo` pulling by path prefix, and containerd-style
//! requests with `?ns=`. Upstream requests are counted in the upstreams'
//! access logs. Skipped (with the reason printed) when `docker-registry` or
//! `skopeo` is missing, unless `REQUIRE_E2E=1` (set by CI).

// Shared by the test binaries and the side-by-side benchmark; each uses a part.
use registry_proxy_testkit as support;

use std::path::Path;

use base64::Engine as _;
use registry_proxy::oci::Digest;
use support::skopeo::{make_image, parts_available, pull_and_check, push, upstream_truth};
use support::{docker_registry, registry_proxy_with};

const UPSTREAM_USER: &str = "puller";
const UPSTREAM_PASSWORD: &str = "pull-secret";
const WRONG_PASSWORD: &str = "wrong-secret";
const BOB: &str = "bob:bob-pa55word";
const ALICE: &str = "alice:alice-pa55word";

/// An answer of the proxy: status, headers as text, body.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: bytes::Bytes,
}

impl Answer {
    fn code(&self) -> String {
        support::error_code(&self.body)
    }
}

/// Runs `future` to completion on a runtime of its own.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(future)
}

/// GETs `path` from `addr` as client `creds` (`user:password`).
fn get(addr: &str, path: &str, creds: Option<&str>) -> Answer {
    block_on(async {
        let mut request = reqwest::Client::new()
            .get(format!("http://{addr}{path}"))
            .header("accept", registry_proxy::oci::MANIFEST_ACCEPT);
        if let Some((user, password)) = creds.and_then(|c| c.split_once(':')) {
            request = request.basic_auth(user, Some(password));
        }
        let response = request.send().await.expect("request");
        let (status, headers) = (response.status().as_u16(), response.headers().clone());
        let body = response.bytes().await.expect("body");
        Answer {
            status,
            headers,
            body,
        }
    })
}

/// Requests `method /v2/<repo>/blobs/` in a registry's access log so far.
fn blob_requests(log: &Path, method: &str, repo: &str) -> usize {
    std::fs::read_to_string(log)
        .expect("upstream log")
        .matches(&format!("\"{method} /v2/{repo}/blobs/"))
        .count()
}

/// How many times the proxy opened a stored file for reading (its storage
/// metrics).
fn storage_opens(proxy: &support::Server) -> u64 {
    support::storage_ops(&block_on(support::debug_text(proxy, "/metrics")), "open")
}

/// The blob digests (config and layers) of a pulled image's files.
fn blob_digests(files: &std::collections::BTreeMap<String, Vec<u8>>) -> Vec<String> {
    files
        .keys()
        .filter(|k| k.len() == 64)
        .map(|k| format!("sha256:{k}"))
        .collect()
}

#[test]
fn namespaces_route_share_isolate_and_authorize() {
    if !parts_available("namespaces_route_share_isolate_and_authorize") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let hash = |password: &str| bcrypt::hash(password, 4).expect("bcrypt");
    std::fs::write(
        d.join("upstream.htpasswd"),
        format!("{UPSTREAM_USER}:{}\n", hash(UPSTREAM_PASSWORD)),
    )
    .expect("htpasswd");
    let upstream_auth = format!(
        "auth:\n  htpasswd:\n    realm: upstream\n    path: {}\n",
        d.join("upstream.htpasswd").display()
    );
    let a = docker_registry(d, "a", &d.join("a-root"), "");
    let b = docker_registry(d, "b", &d.join("b-root"), &upstream_auth);
    let b_creds = format!("{UPSTREAM_USER}:{UPSTREAM_PASSWORD}");
    let b_creds = Some(b_creds.as_str());

    // The same image in both; a private image in B; one image only in A;
    // one name holding different images in A and B.
    let shared = make_image(d, "shared", 1, &["amd64"]);
    push(&shared, &a.addr, "shared/app", None);
    push(&shared, &b.addr, "shared/app", b_creds);
    push(
        &make_image(d, "private", 2, &["amd64"]),
        &b.addr,
        "private/app",
        b_creds,
    );
    push(
        &make_image(d, "only-a", 3, &["amd64"]),
        &a.addr,
        "only-a/app",
        None,
    );
    push(
        &make_image(d, "same-a", 4, &["amd64"]),
        &a.addr,
        "same/name",
        None,
    );
    push(
        &make_image(d, "same-b", 5, &["amd64"]),
        &b.addr,
        "same/name",
        b_creds,
    );
    let shared_truth = upstream_truth(d, &a.addr, "shared/app:v1", None);
    let private_truth = upstream_truth(d, &b.addr, "private/app:v1", b_creds);
    let only_a = upstream_truth(d, &a.addr, "only-a/app:v1", None);
    let same_a = upstream_truth(d, &a.addr, "same/name:v1", None);
    let same_b = upstream_truth(d, &b.addr, "same/name:v1", b_creds);

    std::fs::write(
        d.join("clients.htpasswd"),
        [ALICE, BOB]
            .map(|c| {
                let (user, password) = c.split_once(':').expect("creds");
                format!("{user}:{}\n", hash(password))
            })
            .concat(),
    )
    .expect("htpasswd");
    let upstream = |name: &str, addr: &str, extra: &str| {
        format!("    - namespace: {name}\n      remoteurl: http://{addr}\n{extra}")
    };
    let b_login =
        |password: &str| format!("      username: {UPSTREAM_USER}\n      password: {password}\n");
    let config = format!(
        "storage:\n  filesystem:\n    rootdirectory: {}\nlog:\n  level: debug\nauth:\n  htpasswd:\n    realm: proxy-realm\n    path: {}\nproxy:\n  upstreams:\n{}{}{}{}",
        d.join("cache").display(),
        d.join("clients.htpasswd").display(),
        upstream(
            "alpha.test",
            &a.addr,
            "      default: true\n      users: [alice, bob]\n"
        ),
        upstream(
            "beta.test",
            &b.addr,
            &format!("{}      users: [bob]\n", b_login(UPSTREAM_PASSWORD))
        ),
        upstream(
            "gamma.test",
            &b.addr,
            &format!(
                "{}      sharing: isolated\n      users: [bob]\n",
                b_login(UPSTREAM_PASSWORD)
            )
        ),
        upstream(
            "delta.test",
            &b.addr,
            &format!("{}      sharing: isolated\n", b_login(WRONG_PASSWORD))
        ),
    );
    let proxy = registry_proxy_with(d, &config);
    let p = proxy.addr.as_str();
    let b_log = d.join("b.log");
    let mut seen = String::new();

    // By path prefix through A, then through B with no blob fetched again.
    // A lets only some users pull, so what came through it is private to
    // it: B (shared) proves access with one HEAD per blob before it is
    // served the stored bytes.
    let blobs = blob_digests(&shared_truth);
    assert_eq!(blobs.len(), 3, "a config and two layers");
    pull_and_check(
        &shared_truth,
        p,
        "alpha.test/shared/app:v1",
        &d.join("o1"),
        Some(BOB),
    );
    let (gets, heads) = (
        blob_requests(&b_log, "GET", "shared/app"),
        blob_requests(&b_log, "HEAD", "shared/app"),
    );
    pull_and_check(
        &shared_truth,
        p,
        "beta.test/shared/app:v1",
        &d.join("o2"),
        Some(BOB),
    );
    assert_eq!(
        blob_requests(&b_log, "GET", "shared/app"),
        gets,
        "shared: B's upstream was asked for blobs the cache holds"
    );
    let heads = heads + blobs.len();
    assert_eq!(
        blob_requests(&b_log, "HEAD", "shared/app"),
        heads,
        "shared: A's private blobs served to B without one proof each"
    );

    // Isolated: one proof (HEAD) per blob to B, no blob GET; then none.
    pull_and_check(
        &shared_truth,
        p,
        "gamma.test/shared/app:v1",
        &d.join("o3"),
        Some(BOB),
    );
    assert_eq!(
        blob_requests(&b_log, "GET", "shared/app"),
        gets,
        "isolated: a blob GET"
    );
    assert_eq!(
        blob_requests(&b_log, "HEAD", "shared/app"),
        heads + blobs.len(),
        "isolated: one proof per blob"
    );
    pull_and_check(
        &shared_truth,
        p,
        "gamma.test/shared/app:v1",
        &d.join("o4"),
        Some(BOB),
    );
    assert_eq!(
        blob_requests(&b_log, "HEAD", "shared/app"),
        heads + blobs.len(),
        "isolated: a proof was not remembered"
    );

    // A stored blob B does not have, private to A: neither B's namespaces
    // is served it.
    let a_layer = blob_digests(&only_a)
        .into_iter()
        .max_by_key(|digest| only_a[&digest["sha256:".len()..]].len())
        .expect("a layer");
    pull_and_check(&only_a, p, "only-a/app:v1", &d.join("o5"), Some(BOB));
    let path = format!("/v2/gamma.test/shared/app/blobs/{a_layer}");
    let opens_before = storage_opens(&proxy);
    for _ in 0..2 {
        let refused = get(p, &path, Some(BOB));
        assert_eq!(
            (refused.status, refused.code().as_str()),
            (404, "BLOB_UNKNOWN")
        );
        assert!(
            refused.body.len() < 1024,
            "isolated: stored bytes were sent"
        );
        seen.push_str(&String::from_utf8_lossy(&refused.body));
    }
    assert_eq!(
        storage_opens(&proxy),
        opens_before,
        "isolated: a blob was opened before its proof of access"
    );
    let refused = get(
        p,
        &format!("/v2/beta.test/shared/app/blobs/{a_layer}"),
        Some(BOB),
    );
    assert_eq!(
        (refused.status, refused.code().as_str()),
        (404, "BLOB_UNKNOWN"),
        "shared: a blob private to A was served"
    );
    // A stored manifest by digest is served only where it is linked as a
    // revision of that repository: another namespace, isolated or shared,
    // asks its own upstream (which lacks it).
    let a_manifest = Digest::of(&only_a["manifest.json"]);
    let path = format!("/v2/gamma.test/only-a/app/manifests/{a_manifest}");
    let refused = get(p, &path, Some(BOB));
    assert_eq!(
        (refused.status, refused.code().as_str()),
        (404, "MANIFEST_UNKNOWN"),
        "isolated: a stored manifest served without its upstream"
    );
    let path = format!("/v2/beta.test/only-a/app/manifests/{a_manifest}");
    let refused = get(p, &path, Some(BOB));
    assert_eq!(
        (refused.status, refused.code().as_str()),
        (404, "MANIFEST_UNKNOWN"),
        "shared: a manifest of another namespace served without its upstream"
    );
    let path = format!("/v2/alpha.test/only-a/app/manifests/{a_manifest}");
    let served = get(p, &path, Some(BOB));
    assert_eq!(served.status, 200, "a stored manifest by digest");
    assert_eq!(served.body, only_a["manifest.json"]);
    // An upstream that denies (wrong credentials): its denial, no bytes.
    let denied = get(
        p,
        &format!("/v2/delta.test/shared/app/blobs/{}", blobs[0]),
        Some(BOB),
    );
    assert_eq!((denied.status, denied.code().as_str()), (403, "DENIED"));
    seen.push_str(&String::from_utf8_lossy(&denied.body));
    // The same answer for a digest that is not stored: no existence oracle
    // (it was 401 for a missing blob and 403 for a stored one).
    let never = Digest::of(b"never stored anywhere");
    let missing = get(
        p,
        &format!("/v2/delta.test/shared/app/blobs/{never}"),
        Some(BOB),
    );
    assert_eq!(
        (missing.status, missing.code().as_str()),
        (403, "DENIED"),
        "a missing blob answered unlike a stored one"
    );

    // B's private image through B's namespace only.
    pull_and_check(
        &private_truth,
        p,
        "beta.test/private/app:v1",
        &d.join("o6"),
        Some(BOB),
    );
    let through_a = get(p, "/v2/alpha.test/private/app/manifests/v1", Some(BOB));
    assert_eq!(through_a.status, 404, "A served B's private image");

    // containerd as a mirror: ?ns= on every request, the path as it is.
    let private_digest = Digest::of(&private_truth["manifest.json"]).to_string();
    let by_ns = get(p, "/v2/private/app/manifests/v1?ns=beta.test", Some(BOB));
    assert_eq!(by_ns.status, 200);
    assert_eq!(
        by_ns.headers["docker-content-digest"],
        private_digest.as_str()
    );
    assert_eq!(
        get(p, "/v2/private/app/manifests/v1?ns=alpha.test", Some(BOB)).status,
        404
    );
    let layer = blob_digests(&private_truth).pop().expect("layer");
    let blob = get(
        p,
        &format!("/v2/private/app/blobs/{layer}?ns=beta.test"),
        Some(BOB),
    );
    assert_eq!(Digest::of(&blob.body).to_string(), layer);
    let unknown = get(p, "/v2/private/app/manifests/v1?ns=quay.io", Some(BOB));
    assert_eq!(
        (unknown.status, unknown.code().as_str()),
        (404, "NAME_UNKNOWN")
    );

    // One name, one tag, two namespaces: each answers with its own image.
    for (path, truth) in [
        ("/v2/alpha.test/same/name/manifests/v1", &same_a),
        ("/v2/same/name/manifests/v1", &same_a),
        ("/v2/beta.test/same/name/manifests/v1", &same_b),
        ("/v2/same/name/manifests/v1?ns=beta.test", &same_b),
        ("/v2/alpha.test/same/name/manifests/v1", &same_a),
    ] {
        let answer = get(p, path, Some(BOB));
        assert_eq!(answer.status, 200, "{path}");
        assert_eq!(
            answer.body, truth["manifest.json"],
            "{path}: another namespace's tag"
        );
    }

    // Client authentication and per-namespace users.
    for (path, creds, status, code) in [
        ("/v2/", None, 401, "UNAUTHORIZED"),
        // Authentication comes first: an unknown namespace tells an
        // unauthenticated client nothing (it was 404 NAME_UNKNOWN).
        (
            "/v2/shared/app/manifests/v1?ns=quay.io",
            None,
            401,
            "UNAUTHORIZED",
        ),
        (
            "/v2/alpha.test/shared/app/manifests/v1",
            None,
            401,
            "UNAUTHORIZED",
        ),
        (
            "/v2/alpha.test/shared/app/manifests/v1",
            Some("bob:wrong"),
            401,
            "UNAUTHORIZED",
        ),
        (
            "/v2/alpha.test/shared/app/manifests/v1",
            Some("eve:bob-pa55word"),
            401,
            "UNAUTHORIZED",
        ),
        (
            "/v2/beta.test/shared/app/manifests/v1",
            Some(ALICE),
            403,
            "DENIED",
        ),
        (
            "/v2/shared/app/manifests/v1?ns=gamma.test",
            Some(ALICE),
            403,
            "DENIED",
        ),
    ] {
        let answer = get(p, path, creds);
        assert_eq!(
            (answer.status, answer.code().as_str()),
            (status, code),
            "{path} as {creds:?}"
        );
        if status == 401 {
            assert_eq!(
                answer.headers["www-authenticate"],
                "Basic realm=\"proxy-realm\""
            );
        }
        seen.push_str(&format!("{:?}", answer.headers));
        seen.push_str(&String::from_utf8_lossy(&answer.body));
    }
    assert_eq!(get(p, "/v2/", Some(ALICE)).status, 200);
    pull_and_check(
        &shared_truth,
        p,
        "alpha.test/shared/app:v1",
        &d.join("o7"),
        Some(ALICE),
    );
    assert!(
        std::process::Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false", "--creds", ALICE])
            .arg(format!("docker://{p}/beta.test/shared/app:v1"))
            .output()
            .is_ok_and(|o| !o.status.success()),
        "alice pulled through beta.test"
    );

    // Metrics by namespace.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let vars = runtime.block_on(support::debug_vars(&proxy));
    let ns = &vars["registry_proxy"]["Namespaces"];
    let count = |name: &str, key: &str| ns[name][key].as_u64().unwrap_or(0);
    assert_eq!(
        count("gamma.test", "Proofs"),
        3 + 2,
        "3 proofs, 2 refused: {ns}"
    );
    assert!(count("gamma.test", "Denials") >= 2, "{ns}");
    assert!(count("delta.test", "Denials") >= 1, "{ns}");
    assert!(count("beta.test", "Denials") >= 1, "{ns}");
    assert_eq!(
        ns["gamma.test"]["blobs"]["BytesPulled"], 0,
        "isolated pulled blobs: {ns}"
    );
    let metrics = runtime.block_on(support::debug_text(&proxy, "/metrics"));
    assert!(
        metrics.contains("registry_proxy_proofs_total{namespace=\"gamma.test\"} 5"),
        "{metrics}"
    );
    assert!(
        metrics.contains("registry_proxy_requests_total{namespace=\"beta.test\",kind=\"blob\"}")
    );
    seen.push_str(&metrics);
    seen.push_str(&vars.to_string());

    // Blob bytes once in storage, whatever the namespaces using them.
    let stored = walk_files(&d.join("cache/docker/registry/v2/blobs"));
    let mut unique = stored.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(stored.len(), unique.len());
    for digest in &blobs {
        let hex = &digest["sha256:".len()..];
        assert_eq!(
            // `data`, next to which a private blob has its marker.
            stored
                .iter()
                .filter(|p| p.contains(hex) && p.ends_with("/data"))
                .count(),
            1,
            "{digest} stored twice"
        );
    }
    let repos = d.join("cache/docker/registry/v2/repositories/_namespaces");
    for ns in ["alpha.test", "beta.test", "gamma.test"] {
        assert!(
            repos.join(ns).join("shared/app/_manifests").is_dir(),
            "{ns}"
        );
    }

    // No password, plain or in a Basic header, in any answer or the log.
    drop(proxy);
    let log = std::fs::read_to_string(d.join("proxy.log")).expect("proxy log");
    // Request lines carry their namespace; denials say why.
    for line in [
        "namespace=gamma.test",
        "access to a stored blob not proven",
        "user not allowed in the namespace",
        "wrong user name or password",
    ] {
        assert!(log.contains(line), "no {line:?} in the log");
    }
    seen.push_str(&log);
    let basic = |creds: &str| base64::engine::general_purpose::STANDARD.encode(creds);
    let mut secrets = vec![
        UPSTREAM_PASSWORD.to_owned(),
        WRONG_PASSWORD.to_owned(),
        basic(&format!("{UPSTREAM_USER}:{UPSTREAM_PASSWORD}")),
        basic(&format!("{UPSTREAM_USER}:{WRONG_PASSWORD}")),
    ];
    for creds in [ALICE, BOB] {
        secrets.push(creds.split_once(':').expect("creds").1.to_owned());
        secrets.push(basic(creds));
    }
    for secret in secrets {
        assert!(
            !seen.contains(&secret),
            "{secret} appeared in an answer, a metric or the log"
        );
    }
}

/// The files under `root`, as paths.
fn walk_files(root: &Path) -> Vec<String> {
    let mut files = Vec::new();
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path.display().to_string());
            }
        }
    }
    files
}

/// Repository allow and deny lists: in a namespace allowing `team/**` and
/// denying `team/secret*`, an allowed image pulls with skopeo; a denied
/// one, and one outside the allow list, get 403 `DENIED` for manifests,
/// blobs and tags without the upstream being asked; the refusals are
/// counted; Docker Hub's one-component names are matched as `library/...`.
#[test]
fn repository_lists_refuse_without_asking_the_upstream() {
    if !parts_available("repository_lists") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let upstream = docker_registry(d, "upstream", &d.join("upstream-root"), "");
    let layout = make_image(d, "app", 3, &["amd64"]);
    for repo in ["team/app", "team/secret-app", "other/app"] {
        push(&layout, &upstream.addr, repo, None);
    }
    let truth = upstream_truth(d, &upstream.addr, "team/app:v1", None);
    let layer = truth
        .keys()
        .find(|k| k.len() == 64)
        .map(|k| format!("sha256:{k}"))
        .expect("a blob");
    let log = d.join("upstream.log");
    let asked = |repo: &str| {
        std::fs::read_to_string(&log)
            .expect("upstream log")
            .matches(&format!(" /v2/{repo}/"))
            .count()
    };
    let before = ["team/secret-app", "other/app"].map(&asked);
    let proxy = registry_proxy_with(
        d,
        &format!(
            "storage:\n  filesystem:\n    rootdirectory: {}\nproxy:\n  upstreams:\n    - namespace: lists.test\n      remoteurl: http://{}\n      default: true\n      repositories:\n        allow: [\"team/**\", \"library/*\"]\n        deny: [\"team/secret*\"]\n",
            d.join("root").display(),
            upstream.addr
        ),
    );
    pull_and_check(&truth, &proxy.addr, "team/app:v1", &d.join("pulled"), None);
    for repo in ["team/secret-app", "other/app"] {
        for path in [
            format!("/v2/{repo}/manifests/v1"),
            format!("/v2/{repo}/blobs/{layer}"),
            format!("/v2/{repo}/tags/list"),
            format!("/v2/lists.test/{repo}/manifests/v1"),
        ] {
            let answer = get(&proxy.addr, &path, None);
            assert_eq!(
                (answer.status, answer.code().as_str()),
                (403, "DENIED"),
                "{path}"
            );
        }
    }
    assert_eq!(
        ["team/secret-app", "other/app"].map(&asked),
        before,
        "the upstream was asked for a denied repository"
    );
    let metrics = block_on(support::debug_text(&proxy, "/metrics"));
    assert!(
        metrics.contains("registry_proxy_repository_denials_total{namespace=\"lists.test\"} 8"),
        "{metrics}"
    );
}
