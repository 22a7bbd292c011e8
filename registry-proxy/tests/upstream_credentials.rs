//! Upstream credentials where they belong and ready in time, end to end
//! against test upstreams that ask for Basic credentials and record every
//! `Authorization` they get: each URL of a `remoteurls` chain is asked
//! with its own credentials or none (the first URL's never go to another);
//! a slow credential helper stalls no request and runs once for all of
//! them; a failing one is backed off; a helper never sees the cache's own
//! `REGISTRY_*` settings.

// Shared by the test binaries and the side-by-side benchmark; each uses a part.
use registry_proxy_testkit as support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use bytes::Bytes;
use registry_proxy::oci::{Digest, OCI_MANIFEST};
use support::registry_proxy_with;

/// A manifest with an empty config and no layers.
fn manifest() -> Bytes {
    Bytes::from(
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": Digest::of(b"{}").to_string(), "size": 2},
            "layers": [],
        })
        .to_string(),
    )
}

/// `Basic` credentials, as an `Authorization` header carries them.
fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    let pair = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// A test upstream that asks for Basic credentials (401 to a request
/// without them) and records every `Authorization` it gets; it answers
/// `status` to the others, with a manifest when that is 200.
struct Recording {
    seen: std::sync::Mutex<Vec<String>>,
    status: StatusCode,
}

async fn recording(State(up): State<Arc<Recording>>, headers: axum::http::HeaderMap) -> Response {
    let Some(authorization) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"test\"")],
        )
            .into_response();
    };
    up.seen.lock().expect("lock").push(authorization.to_owned());
    if up.status != StatusCode::OK {
        return up.status.into_response();
    }
    let manifest = manifest();
    (
        [
            (header::CONTENT_TYPE.as_str(), OCI_MANIFEST.to_owned()),
            ("docker-content-digest", Digest::of(&manifest).to_string()),
        ],
        manifest,
    )
        .into_response()
}

async fn recording_upstream(status: StatusCode) -> (Arc<Recording>, String) {
    let up = Arc::new(Recording {
        seen: std::sync::Mutex::default(),
        status,
    });
    let base = support::fakes::serve(
        axum::Router::new()
            .route("/v2/{*rest}", any(recording))
            .with_state(Arc::clone(&up)),
    )
    .await;
    (up, base)
}

/// The `Authorization` headers `up` got.
fn seen(up: &Recording) -> Vec<String> {
    up.seen.lock().expect("lock").clone()
}

/// GETs manifest `v1` of `team/app` through `proxy`: its status.
async fn get_manifest(proxy: &support::Server) -> StatusCode {
    reqwest::Client::new()
        .get(format!("http://{}/v2/team/app/manifests/v1", proxy.addr))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .expect("manifest")
        .status()
}

/// The first URL's credentials (`username`, `password`) never go to a
/// fallback URL: one without credentials of its own is asked anonymously
/// (it asks for credentials here, and gets none).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_urls_credentials_never_go_to_a_fallback() {
    let (primary, primary_base) = recording_upstream(StatusCode::SERVICE_UNAVAILABLE).await;
    let (mirror, mirror_base) = recording_upstream(StatusCode::OK).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let proxy = tokio::task::block_in_place(|| {
        registry_proxy_with(
            d,
            &format!(
                "storage:\n  filesystem:\n    rootdirectory: {}\nproxy:\n  upstreams:\n    - namespace: hub.test\n      remoteurls: [\"{primary_base}\", \"{mirror_base}\"]\n      username: hub-user\n      password: hub-secret\n      default: true\n",
                d.join("root").display()
            ),
        )
    });
    assert_ne!(
        get_manifest(&proxy).await,
        StatusCode::OK,
        "the mirror served what it keeps for credentialed clients"
    );
    assert_eq!(
        seen(&primary),
        [basic("hub-user", "hub-secret")],
        "the primary is asked with its credentials"
    );
    assert_eq!(
        seen(&mirror),
        Vec::<String>::new(),
        "the primary's credentials went to the mirror"
    );
}

/// Each URL of `remoteurls` is asked with its own credentials, given as
/// `{url, username, password}` or in the URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_remote_url_is_asked_with_its_own_credentials() {
    let (primary, primary_base) = recording_upstream(StatusCode::SERVICE_UNAVAILABLE).await;
    let (second, second_base) = recording_upstream(StatusCode::TOO_MANY_REQUESTS).await;
    let (third, third_base) = recording_upstream(StatusCode::OK).await;
    let third_with = third_base.replacen("http://", "http://third-user:third%40secret@", 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let proxy = tokio::task::block_in_place(|| {
        registry_proxy_with(
            d,
            &format!(
                "storage:\n  filesystem:\n    rootdirectory: {}\nproxy:\n  upstreams:\n    - namespace: hub.test\n      remoteurls:\n        - {primary_base}\n        - {{url: {second_base}, username: second-user, password: second-secret}}\n        - \"{third_with}\"\n      username: hub-user\n      password: hub-secret\n      default: true\n",
                d.join("root").display()
            ),
        )
    });
    assert_eq!(get_manifest(&proxy).await, StatusCode::OK);
    assert_eq!(seen(&primary), [basic("hub-user", "hub-secret")]);
    assert_eq!(seen(&second), [basic("second-user", "second-secret")]);
    assert_eq!(seen(&third), [basic("third-user", "third@secret")]);
}

/// A credential helper in `dir` answering `puller` and `helper-secret`
/// (or, when `fails`, exiting 1), its runs counted in `dir/runs`; once
/// `dir/slow` exists, each run takes 10 s.
fn counted_helper(dir: &Path, fails: bool) -> String {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join("docker-credential-counted");
    let answer = if fails {
        "echo 'no credentials here' >&2; exit 1"
    } else {
        r#"printf '{"Username":"puller","Secret":"helper-secret"}'"#
    };
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\necho run >> {d}/runs\nif [ -e {d}/slow ]; then sleep 10; fi\n{answer}\n",
            d = dir.display()
        ),
    )
    .expect("helper");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path.display().to_string()
}

/// How many times the helper in `dir` ran.
fn runs(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("runs"))
        .unwrap_or_default()
        .lines()
        .count()
}

/// An in-process proxy in front of `base` (tags checked upstream on every
/// request, 2 s for each) whose credentials come from `command`, reused
/// for `lifetime`.
async fn helped(base: &str, command: String, lifetime: Duration) -> support::InProcess {
    let mut spec =
        registry_proxy::namespace::NamespaceSpec::single(base.parse().expect("url"), None);
    spec.plan.exec = Some(registry_proxy::upstream::exec::Exec {
        command,
        lifetime: Some(lifetime),
        env: Vec::new(),
    });
    support::InProcess::with_namespaces(&[spec], Duration::ZERO).await
}

/// A slow credential helper stalls nothing: past their lifetime the last
/// good credentials serve (for as long again) while one run refreshes
/// them behind the requests; past that, a request waits for that run no
/// longer than its deadline (2 s) and the cached tag is served stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_credential_helper_neither_stalls_requests_nor_runs_twice() {
    let (up, base) = recording_upstream(StatusCode::OK).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let proxy = helped(&base, counted_helper(d, false), Duration::from_secs(1)).await;
    let tag = "/v2/team/app/manifests/v1";
    assert_eq!(proxy.get(tag).await.0, StatusCode::OK);
    assert_eq!(runs(d), 1);
    // Every run from now on takes 10 s.
    std::fs::write(d.join("slow"), "").expect("slow");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let started = Instant::now();
    assert_eq!(proxy.get(tag).await.0, StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "waited {:?} for the helper",
        started.elapsed()
    );
    // Past the grace: the run under way is waited for within the deadline.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let started = Instant::now();
    assert_eq!(
        proxy.get(tag).await.0,
        StatusCode::OK,
        "the cached tag, served stale"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "waited {:?} for the helper",
        started.elapsed()
    );
    assert_eq!(runs(d), 2, "one run refreshes for every request");
    assert!(
        seen(&up)
            .iter()
            .all(|a| *a == basic("puller", "helper-secret"))
    );
}

/// A failing credential helper is not run again for every request: one
/// run answers every request of its backoff (1 s after a first failure).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_credential_helper_is_backed_off() {
    let (_up, base) = recording_upstream(StatusCode::OK).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let proxy = Arc::new(helped(&base, counted_helper(d, true), Duration::from_secs(3600)).await);
    let requests: Vec<_> = (0..6)
        .map(|i| {
            let proxy = Arc::clone(&proxy);
            tokio::spawn(async move { proxy.get(&format!("/v2/team/app{i}/manifests/v1")).await.0 })
        })
        .collect();
    for request in requests {
        assert_ne!(request.await.expect("task"), StatusCode::OK);
    }
    assert_eq!(runs(d), 1, "the helper ran again within its backoff");
}

/// A credential helper's environment is cleared: the cache's own
/// `REGISTRY_*` settings (which hold its secrets) never reach it; `PATH`
/// does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_helper_never_sees_the_caches_settings() {
    use std::os::unix::fs::PermissionsExt as _;
    let (_up, base) = recording_upstream(StatusCode::OK).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let helper = d.join("docker-credential-env");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\nenv > {}/helper.env\nprintf '{{\"Username\":\"puller\",\"Secret\":\"helper-secret\"}}'\n",
            d.display()
        ),
    )
    .expect("helper");
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let proxy = tokio::task::block_in_place(|| {
        support::registry_proxy_env(
            d,
            &format!(
                "storage:\n  filesystem:\n    rootdirectory: {}\nproxy:\n  remoteurl: {base}\n  exec:\n    command: {}\n",
                d.join("root").display(),
                helper.display()
            ),
            &[("REGISTRY_HTTP_SECRET", "s3cret-of-the-cache")],
        )
    });
    assert_eq!(get_manifest(&proxy).await, StatusCode::OK);
    let env = std::fs::read_to_string(d.join("helper.env")).expect("the helper ran");
    assert!(
        !env.contains("s3cret-of-the-cache") && !env.contains("REGISTRY_"),
        "{env}"
    );
    assert!(env.lines().any(|l| l.starts_with("PATH=")), "{env}");
}
