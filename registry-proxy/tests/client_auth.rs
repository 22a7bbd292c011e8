//! Clients that cannot log in next to clients that can, end to end with
//! the real binary in front of Debian's `docker-registry`: a namespace
//! open to anyone (`users: ["*"]`, since Docker cannot authenticate to a
//! mirror) beside htpasswd-protected ones; and distribution's token
//! scheme with a JSON Web Key Set made here (an ES256 key from rcgen):
//! the challenge, a good token, and tokens that must not pass (another
//! repository, expired, another issuer, another key, a user the namespace
//! does not list). Skipped without `docker-registry` unless
//! `REQUIRE_E2E=1`.

// Shared by the test binaries and the side-by-side benchmark; each uses a part.
use registry_proxy_testkit as support;

use std::path::Path;

use base64::Engine as _;
use registry_proxy::oci::OCI_MANIFEST;
use support::{Image, push_image, registry_proxy_with};

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
    assert_eq!(
        get(&base, None).await.0,
        200,
        "the base is open: the default namespace is"
    );
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
    let alice = basic("alice", "alice-secret");
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

/// A token signed with `der` as `kid`, for `sub` from `issuer`, granting
/// `actions` on repository `name`, expiring `expires_in` seconds from now.
fn token(der: &[u8], kid: &str, issuer: &str, sub: &str, name: &str, expires_in: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let claims = serde_json::json!({
        "iss": issuer, "sub": sub, "aud": "cache.test",
        "iat": now, "nbf": now - 1, "exp": now + expires_in,
        "access": [{"type": "repository", "name": name, "actions": ["pull"]}],
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(kid.to_owned());
    let key = jsonwebtoken::EncodingKey::from_ec_der(der);
    format!(
        "Bearer {}",
        jsonwebtoken::encode(&header, &claims, &key).expect("token")
    )
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
        "Bearer realm=\"https://auth.test/token\",service=\"cache.test\",scope=\"repository:team/app:pull\""
    );
    let good = token(&pem, "k1", "test-issuer", "bob", "team/app", 300);
    assert_eq!(get(&url, Some(&good)).await.0, 200, "a good token");
    for (why, bad) in [
        (
            "another repository",
            token(&pem, "k1", "test-issuer", "bob", "team/other", 300),
        ),
        (
            "expired",
            token(&pem, "k1", "test-issuer", "bob", "team/app", -60),
        ),
        (
            "another issuer",
            token(&pem, "k1", "elsewhere", "bob", "team/app", 300),
        ),
        (
            "another key",
            token(&other_pem, "k1", "test-issuer", "bob", "team/app", 300),
        ),
        ("not a token", "Bearer not.a.token".to_owned()),
    ] {
        assert_eq!(get(&url, Some(&bad)).await.0, 401, "{why}");
    }
    let carol = token(&pem, "k1", "test-issuer", "carol", "team/app", 300);
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
