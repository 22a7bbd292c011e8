//! Clients that cannot log in next to clients that can, end to end with
//! the real binary in front of Debian's `docker-registry`: a namespace
//! open to anyone (`users: ["*"]`, since Docker cannot authenticate to a
//! mirror) beside htpasswd-protected ones; and distribution's token
//! scheme with a JSON Web Key Set made here (an ES256 key from rcgen):
//! the challenge, a good token, and tokens that must not pass (another
//! repository, expired, another issuer, another key, a user the namespace
//! does not list). Skipped without `docker-registry` unless
//! `REQUIRE_E2E=1`. In process, without them: the claims a token must
//! carry, scopes that name the namespace, the `/v2/` challenge, and
//! failed logins counted by the client a trusted proxy names.

// Shared by the test binaries and the side-by-side benchmark; each uses a part.
use registry_proxy_testkit as support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Method, StatusCode};
use base64::Engine as _;
use registry_proxy::namespace::NamespaceSpec;
use registry_proxy::oci::OCI_MANIFEST;
use registry_proxy::token::{Refused, TokenAuth};
use support::{Image, InProcess, push_image, registry_proxy_with};
use tower::ServiceExt as _;

/// GETs `url` with `authorization` (if any): status and headers.
async fn get(url: &str, authorization: Option<&str>) -> (u16, reqwest::header::HeaderMap) {
    let mut request = reqwest::Client::new()
        .get(url)
        .header("accept", OCI_MANIFEST);
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    let answer = request.send().await.expect("request");
    (answer.status().as_u16(), answer.headers().clone())
}

/// The manifest of `image` through the cache at `proxy` in namespace `ns`.
fn manifest_url(proxy: &str, image: &Image, ns: &str) -> String {
    format!("http://{proxy}/v2/{}/manifests/v1?ns={ns}", image.repo)
}

fn basic(user: &str, password: &str) -> String {
    let pair = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {pair}")
}

/// The cache in `d`, both namespaces in front of `upstream`, with `auth`
/// (a YAML `auth` section).
fn cache(d: &Path, upstream: &str, auth: &str, private_users: &str) -> support::Server {
    tokio::task::block_in_place(|| {
        registry_proxy_with(
            d,
            &format!(
                "storage:\n  filesystem:\n    rootdirectory: {}\n{auth}proxy:\n  upstreams:\n    - namespace: public.test\n      remoteurl: http://{upstream}\n      users: [\"*\"]\n      default: true\n    - namespace: private.test\n      remoteurl: http://{upstream}\n      users: [{private_users}]\n",
                d.join("root").display()
            ),
        )
    })
}

/// A docker-registry upstream holding `team/app:v1` (seeded by `seed`),
/// or `None` when `test` is skipped.
async fn upstream_with_image(
    test: &str,
    seed: u64,
) -> Option<(tempfile::TempDir, support::Server, Image)> {
    let (dir, upstream) = support::registry_upstream(test)?;
    let image = push_image(
        &reqwest::Client::new(),
        &upstream.addr,
        "team/app",
        seed,
        &[4096],
    )
    .await;
    Some((dir, upstream, image))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_and_authenticated_namespaces_side_by_side() {
    let Some((dir, upstream, image)) = upstream_with_image("anonymous namespaces", 120).await
    else {
        return;
    };
    let d = dir.path();
    let hash = bcrypt::hash("alice-secret", 4).expect("bcrypt");
    std::fs::write(d.join("htpasswd"), format!("alice:{hash}\n")).expect("htpasswd");
    let auth = format!(
        "auth:\n  htpasswd:\n    realm: cache\n    path: {}\n",
        d.join("htpasswd").display()
    );
    let proxy = cache(d, &upstream.addr, &auth, "alice");
    let base = format!("http://{}/v2/", proxy.addr);
    let (status, headers) = get(&base, None).await;
    assert_eq!(
        status, 401,
        "the base challenges: a namespace needs credentials"
    );
    assert_eq!(headers["www-authenticate"], "Basic realm=\"cache\"");
    let alice = basic("alice", "alice-secret");
    assert_eq!(get(&base, Some(&alice)).await.0, 200);
    // Anyone through the open namespace; nobody anonymous through the other.
    assert_eq!(
        get(&manifest_url(&proxy.addr, &image, "public.test"), None)
            .await
            .0,
        200
    );
    let (status, headers) = get(&manifest_url(&proxy.addr, &image, "private.test"), None).await;
    assert_eq!(status, 401);
    assert!(
        headers["www-authenticate"]
            .to_str()
            .expect("challenge")
            .starts_with("Basic")
    );
    assert_eq!(
        get(
            &manifest_url(&proxy.addr, &image, "private.test"),
            Some(&alice)
        )
        .await
        .0,
        200
    );
    let wrong = basic("alice", "not-her-secret");
    assert_eq!(
        get(
            &manifest_url(&proxy.addr, &image, "public.test"),
            Some(&wrong)
        )
        .await
        .0,
        401,
        "wrong credentials are refused, not taken for anonymous"
    );
}

/// An ES256 key: its PKCS#8 DER and its public JWK with `kid`.
fn key(kid: &str) -> (Vec<u8>, serde_json::Value) {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let raw = pair.public_key_raw();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwk = serde_json::json!({
        "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
        "x": b64(&raw[1..33]), "y": b64(&raw[33..65]),
    });
    (pair.serialize_der(), jwk)
}

/// Seconds since the epoch.
fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// An `Authorization` value with a token signed with `der` as `kid`,
/// claiming `claims`.
fn signed(der: &[u8], kid: &str, claims: &serde_json::Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(kid.to_owned());
    let key = jsonwebtoken::EncodingKey::from_ec_der(der);
    format!(
        "Bearer {}",
        jsonwebtoken::encode(&header, claims, &key).expect("token")
    )
}

/// The claims of a token for `sub` from `issuer` to `cache.test`, granting
/// `access`, expiring `expires_in` seconds from now.
fn claims(
    issuer: &str,
    sub: &str,
    access: serde_json::Value,
    expires_in: i64,
) -> serde_json::Value {
    let now = now();
    serde_json::json!({
        "iss": issuer, "sub": sub, "aud": "cache.test",
        "iat": now, "nbf": now - 1, "exp": now + expires_in,
        "access": access,
    })
}

/// A token signed with `der` as `kid`, for `sub` from `issuer`, granting
/// `pull` on repository `name`, expiring `expires_in` seconds from now.
fn token(der: &[u8], kid: &str, issuer: &str, sub: &str, name: &str, expires_in: i64) -> String {
    let access = serde_json::json!([{"type": "repository", "name": name, "actions": ["pull"]}]);
    signed(der, kid, &claims(issuer, sub, access, expires_in))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_from_a_token_service_are_verified_with_its_key_set() {
    let Some((dir, upstream, image)) = upstream_with_image("token auth", 121).await else {
        return;
    };
    let d = dir.path();
    let (pem, jwk) = key("k1");
    let (other_pem, _) = key("k2");
    std::fs::write(
        d.join("jwks.json"),
        serde_json::json!({"keys": [jwk]}).to_string(),
    )
    .expect("jwks");
    let auth = format!(
        "auth:\n  token:\n    realm: https://auth.test/token\n    service: cache.test\n    issuer: test-issuer\n    jwks: {}\n",
        d.join("jwks.json").display()
    );
    let proxy = cache(d, &upstream.addr, &auth, "bob");
    let url = manifest_url(&proxy.addr, &image, "private.test");
    let (status, headers) = get(&url, None).await;
    assert_eq!(status, 401);
    assert_eq!(
        headers["www-authenticate"],
        "Bearer realm=\"https://auth.test/token\",service=\"cache.test\",scope=\"repository:private.test/team/app:pull\""
    );
    let repo = "private.test/team/app";
    let good = token(&pem, "k1", "test-issuer", "bob", repo, 300);
    assert_eq!(get(&url, Some(&good)).await.0, 200, "a good token");
    for (why, bad) in [
        (
            "another repository",
            token(
                &pem,
                "k1",
                "test-issuer",
                "bob",
                "private.test/team/other",
                300,
            ),
        ),
        (
            "the name in another namespace",
            token(&pem, "k1", "test-issuer", "bob", "team/app", 300),
        ),
        (
            "expired",
            token(&pem, "k1", "test-issuer", "bob", repo, -60),
        ),
        (
            "another issuer",
            token(&pem, "k1", "elsewhere", "bob", repo, 300),
        ),
        (
            "another key",
            token(&other_pem, "k1", "test-issuer", "bob", repo, 300),
        ),
        ("not a token", "Bearer not.a.token".to_owned()),
    ] {
        assert_eq!(get(&url, Some(&bad)).await.0, 401, "{why}");
    }
    let carol = token(&pem, "k1", "test-issuer", "carol", repo, 300);
    assert_eq!(
        get(&url, Some(&carol)).await.0,
        403,
        "a user the namespace does not list"
    );
    // The open namespace needs no token.
    assert_eq!(
        get(&manifest_url(&proxy.addr, &image, "public.test"), None)
            .await
            .0,
        200
    );
}

/// containers/image clients (skopeo and Podman here; Buildah and CRI-O
/// share the code) decide at their `/v2/` ping whether to send
/// credentials; containerd answers each challenge. Beside an open default
/// namespace, every one of them holding credentials pulls through the
/// authenticated namespace, holding none still pulls through the open one,
/// and holding none is refused by the authenticated one. Skipped without
/// `docker-registry`, `skopeo`, `podman` and `containerd`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_clients_log_in_beside_an_open_default_namespace() {
    use support::clients::{Containerd, available, podman_pull, rootfs_image};
    use support::skopeo::{parts_available, pull, push};
    let test = "real clients beside an open namespace";
    if !parts_available(test) || !available(test) {
        return;
    }
    let Some((dir, upstream, _)) = upstream_with_image(test, 122).await else {
        return;
    };
    let d = dir.path();
    let hash = bcrypt::hash("alice-secret", 4).expect("bcrypt");
    std::fs::write(d.join("htpasswd"), format!("alice:{hash}\n")).expect("htpasswd");
    let auth = format!(
        "auth:\n  htpasswd:\n    realm: cache\n    path: {}\n",
        d.join("htpasswd").display()
    );
    let proxy = cache(d, &upstream.addr, &auth, "alice");
    tokio::task::block_in_place(|| {
        let layout = rootfs_image(d, "layout", "hello from the cache");
        push(&layout, &upstream.addr, "team/rootfs", None);
        let alice = Some("alice:alice-secret");
        let private = format!("{}/private.test/team/rootfs:v1", proxy.addr);
        let open = format!("{}/team/rootfs:v1", proxy.addr);
        // skopeo
        pull(
            &proxy.addr,
            "private.test/team/rootfs:v1",
            &d.join("skopeo-alice"),
            alice,
        );
        pull(
            &proxy.addr,
            "team/rootfs:v1",
            &d.join("skopeo-anonymous"),
            None,
        );
        // Podman: a store of its own per identity.
        let podman = |who: &str, image: &str, creds| {
            let store = d.join(format!("podman-{who}"));
            std::fs::create_dir_all(&store).expect("podman dir");
            podman_pull(&store, image, creds)
        };
        podman("alice", &private, alice).expect("Podman with credentials");
        podman("anonymous", &open, None).expect("Podman without credentials");
        let refused = podman("nobody", &private, None);
        assert!(
            refused.as_ref().is_err_and(|e| e.contains("unauthorized")),
            "Podman without credentials, private namespace: {refused:?}"
        );
        // containerd
        let containerd = Containerd::start(&d.join("containerd"));
        containerd
            .pull(&private, alice)
            .expect("containerd with credentials");
        containerd
            .pull(&open, None)
            .expect("containerd without credentials");
        let refused = Containerd::start(&d.join("containerd-nobody")).pull(&private, None);
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.contains("401") || e.to_lowercase().contains("unauthorized")),
            "containerd without credentials, private namespace: {refused:?}"
        );
    });
}

/// The token service's key set, for `auth.token` with service
/// `cache.test` and issuer `test-issuer`: the key's DER and the scheme.
fn token_auth() -> (Vec<u8>, TokenAuth) {
    let (der, jwk) = key("k1");
    let jwks = serde_json::json!({"keys": [jwk]}).to_string();
    let auth = TokenAuth::new(
        "https://auth.test/token",
        "cache.test",
        "test-issuer",
        jwks.as_bytes(),
        &[],
    )
    .expect("token auth");
    (der, auth)
}

/// A token must name its issuer, audience and expiry (the library compares
/// `iss` and `aud` only when a token carries them, so tokens without them
/// passed); one for another audience does not pass either.
#[test]
fn tokens_must_name_their_issuer_audience_and_expiry() {
    let (der, auth) = token_auth();
    let full = claims("test-issuer", "bob", serde_json::json!([]), 300);
    let check = |claims: &serde_json::Value| {
        let value = HeaderValue::from_str(&signed(&der, "k1", claims)).expect("header");
        auth.check(Some(&value), None)
    };
    assert_eq!(check(&full), Ok("bob".to_owned()), "the whole token");
    let changed = |key: &str, value: Option<serde_json::Value>| {
        let mut claims = full.clone();
        match value {
            Some(value) => claims[key] = value,
            None => {
                if let Some(object) = claims.as_object_mut() {
                    object.remove(key);
                }
            }
        }
        claims
    };
    for (why, claims) in [
        ("no iss", changed("iss", None)),
        ("no aud", changed("aud", None)),
        ("no exp", changed("exp", None)),
        ("another aud", changed("aud", Some("elsewhere.test".into()))),
        (
            "other auds",
            changed("aud", Some(serde_json::json!(["elsewhere.test"]))),
        ),
    ] {
        let refused = check(&claims);
        assert!(
            matches!(refused, Err(Refused::Invalid(_))),
            "{why}: {refused:?}"
        );
    }
}

/// A namespace open to anyone (`docker.io`, the default) and one for
/// `bob` (`corp.test`), both in front of an upstream that never answers.
fn specs() -> [NamespaceSpec; 2] {
    let spec = |name: &str, default: bool, users: &[&str]| NamespaceSpec {
        name: name.to_owned(),
        registry2_dir: false,
        default,
        users: Some(users.iter().map(|u| (*u).to_owned()).collect()),
        ..NamespaceSpec::single("http://127.0.0.1:1".parse().expect("url"), None)
    };
    [
        spec("docker.io", true, &["*"]),
        spec("corp.test", false, &["bob"]),
    ]
}

/// The scope a token must grant names the namespace as the path form does,
/// whether the request chose it by `?ns=` or by path: a grant of `team/app`
/// (the default namespace's, as the challenge of a `?ns=` request asked)
/// does not pull `corp.test`'s `team/app`, nor the reverse. The catalog needs `registry:catalog:*`.
#[tokio::test]
async fn token_scopes_name_the_namespace() {
    let (der, auth) = token_auth();
    let proxy = InProcess::with_settings(&specs(), Duration::from_secs(60), |settings| {
        settings.token = Some(Arc::new(auth));
    })
    .await;
    let proxy = &proxy;
    let send = move |uri: &'static str, token: Option<String>| async move {
        let headers: Vec<(&str, &str)> = token
            .as_deref()
            .map(|t| ("authorization", t))
            .into_iter()
            .collect();
        proxy.send(Method::GET, uri, &headers).await
    };
    let grant = |kind: &str, name: &str, action: &str| {
        let access = serde_json::json!([{"type": kind, "name": name, "actions": [action]}]);
        signed(&der, "k1", &claims("test-issuer", "bob", access, 300))
    };
    let challenge = |scope: &str| {
        format!("Bearer realm=\"https://auth.test/token\",service=\"cache.test\",scope=\"{scope}\"")
    };
    for uri in [
        "/v2/team/app/manifests/v1?ns=corp.test",
        "/v2/corp.test/team/app/manifests/v1",
    ] {
        let refused = send(uri, None).await;
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED, "{uri}");
        assert_eq!(
            refused.headers()["www-authenticate"],
            challenge("repository:corp.test/team/app:pull"),
            "{uri}"
        );
        let other = send(uri, Some(grant("repository", "team/app", "pull"))).await;
        assert_eq!(
            other.status(),
            StatusCode::UNAUTHORIZED,
            "{uri}: another namespace's grant"
        );
        let own = send(uri, Some(grant("repository", "corp.test/team/app", "pull"))).await;
        assert!(
            !matches!(
                own.status(),
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
            ),
            "{uri}: {}",
            own.status()
        );
    }
    // The default namespace's path form has no prefix, nor has its scope
    // (as registry:2 spells it); corp.test's grant does not open it.
    let default = "/v2/team/app/manifests/v1";
    let refused = send(
        default,
        Some(grant("repository", "corp.test/team/app", "pull")),
    )
    .await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        refused.headers()["www-authenticate"],
        challenge("repository:team/app:pull")
    );
    let own = send(default, Some(grant("repository", "team/app", "pull"))).await;
    assert!(
        !matches!(
            own.status(),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
        ),
        "{}",
        own.status()
    );
    // A default-namespace repository named like another namespace's
    // (reachable only by `?ns=`) is spelt with its namespace: corp.test's
    // grant does not open it.
    let lookalike = "/v2/corp.test/team/app/manifests/v1?ns=docker.io";
    let refused = send(
        lookalike,
        Some(grant("repository", "corp.test/team/app", "pull")),
    )
    .await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        refused.headers()["www-authenticate"],
        challenge("repository:docker.io/corp.test/team/app:pull")
    );
    let catalog = "/v2/_catalog?ns=corp.test";
    let refused = send(catalog, None).await;
    assert_eq!(
        refused.headers()["www-authenticate"],
        challenge("registry:catalog:*")
    );
    let pull_only = send(
        catalog,
        Some(grant("repository", "corp.test/team/app", "pull")),
    )
    .await;
    assert_eq!(pull_only.status(), StatusCode::UNAUTHORIZED);
    let lister = send(catalog, Some(grant("registry", "catalog", "*"))).await;
    assert_eq!(lister.status(), StatusCode::OK);
    // The base challenges, without a scope: corp.test needs a token.
    let base = send("/v2/", None).await;
    assert_eq!(base.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        base.headers()["www-authenticate"],
        "Bearer realm=\"https://auth.test/token\",service=\"cache.test\""
    );
}

/// An htpasswd file holding `alice` (password `alice-secret`).
fn htpasswd() -> registry_proxy::auth::Htpasswd {
    let hash = bcrypt::hash("alice-secret", 4).expect("bcrypt");
    registry_proxy::auth::Htpasswd::parse("cache", &format!("alice:{hash}\n")).expect("htpasswd")
}

/// containers/image clients decide at `/v2/` whether to send credentials:
/// while some namespace needs them, the base challenges anonymous clients
/// (it answered 200 when the default namespace was open, and those clients
/// then never logged in), who are still served by the open namespace;
/// with every namespace open it answers them 200.
#[tokio::test]
async fn the_base_challenges_while_some_namespace_needs_credentials() {
    let auth = Arc::new(htpasswd());
    let [open, private] = specs();
    let private = NamespaceSpec {
        users: Some(vec!["alice".to_owned()]),
        ..private
    };
    let proxy = InProcess::with_settings(&[open.clone(), private], Duration::from_secs(60), |s| {
        s.auth = Some(Arc::clone(&auth));
    })
    .await;
    let (status, headers, _) = proxy.get("/v2/").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers["www-authenticate"], "Basic realm=\"cache\"");
    let alice = basic("alice", "alice-secret");
    let logged_in = proxy
        .send(Method::GET, "/v2/", &[("authorization", alice.as_str())])
        .await;
    assert_eq!(logged_in.status(), StatusCode::OK);
    let (status, _, _) = proxy.get("/v2/library/alpine/manifests/3").await;
    assert!(
        !matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN),
        "an anonymous client was refused by the open namespace: {status}"
    );
    let all_open = InProcess::with_settings(&[open], Duration::from_secs(60), |s| {
        s.auth = Some(Arc::clone(&auth));
    })
    .await;
    assert_eq!(all_open.get("/v2/").await.0, StatusCode::OK);
}

/// Behind a reverse proxy (`auth.htpasswd.clientheader` from
/// `trustedproxies`), failed logins are counted by the client its header
/// names: one client's guesses do not lock out another (every client
/// behind the proxy shared its address's counter).
#[tokio::test]
async fn failed_logins_are_counted_by_the_client_a_trusted_proxy_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hash = bcrypt::hash("alice-secret", 4).expect("bcrypt");
    std::fs::write(dir.path().join("htpasswd"), format!("alice:{hash}\n")).expect("htpasswd");
    let yaml = format!(
        "storage:\n  inmemory: {{}}\nauth:\n  htpasswd:\n    realm: cache\n    path: {}\n    clientheader: X-Forwarded-For\n    trustedproxies: [127.0.0.1]\nproxy:\n  upstreams:\n    - namespace: corp.test\n      remoteurl: http://127.0.0.1:1\n      users: [alice]\n",
        dir.path().join("htpasswd").display()
    );
    let plan = registry_proxy::config::Config::parse("test", &yaml, [])
        .expect("config")
        .plan()
        .expect("plan");
    let proxy = InProcess::with_settings(&plan.namespaces, Duration::from_secs(60), |s| {
        s.auth = plan.settings.auth.clone();
    })
    .await;
    let login = |client: &'static str, authorization: String| {
        let state = proxy.state.clone();
        async move {
            let request = axum::http::Request::builder()
                .uri("/v2/")
                .header("x-forwarded-for", client)
                .header("authorization", authorization)
                .extension(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40_000))))
                .body(axum::body::Body::empty())
                .expect("request");
            registry_proxy::app(state)
                .oneshot(request)
                .await
                .expect("infallible")
                .status()
        }
    };
    let mut guesses = Vec::new();
    for n in 0..6 {
        guesses.push(login("198.51.100.7", basic("mallory", &format!("guess-{n}"))).await);
    }
    assert_eq!(
        guesses.last(),
        Some(&StatusCode::TOO_MANY_REQUESTS),
        "{guesses:?}"
    );
    assert_eq!(
        login("198.51.100.8", basic("alice", "alice-secret")).await,
        StatusCode::OK,
        "another client behind the same proxy was locked out"
    );
}
