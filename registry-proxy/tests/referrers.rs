//! Referrers (OCI distribution 1.1) through the cache: from an upstream
//! with the referrers API (a small server here, since Debian's registry
//! 2.8 has none), filtered by `artifactType`, cached within the freshness
//! window and served stale when the upstream fails; and from Debian's
//! `docker-registry` through the tag schema (`sha256-<hex>`). Signature
//! manifests, which name a `subject`, pass through byte for byte.

// Shared by the test binaries and the side-by-side benchmark; each uses a part.
use registry_proxy_testkit as support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use registry_proxy::oci::{Digest, OCI_INDEX, OCI_MANIFEST};
use support::{InProcess, error_code, push_blob, push_image, registry_proxy};

const SIGNATURE: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
const SBOM: &str = "application/spdx+json";

/// An artifact manifest of `artifact_type` naming `subject` (of `size`
/// bytes), its one layer `layer`.
fn artifact(artifact_type: &str, subject: &Digest, size: usize, layer: &Digest) -> Bytes {
    let empty = Digest::of(b"{}");
    Bytes::from(
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": {
                "mediaType": "application/vnd.oci.empty.v1+json",
                "digest": empty.to_string(),
                "size": 2,
            },
            "layers": [{
                "mediaType": "application/octet-stream",
                "digest": layer.to_string(),
                "size": 64,
            }],
            "subject": {"mediaType": OCI_MANIFEST, "digest": subject.to_string(), "size": size},
            "annotations": {"org.opencontainers.image.created": "2026-11-30T00:00:00Z"},
        })
        .to_string(),
    )
}

/// A descriptor of the artifact manifest `bytes`, as a referrers list
/// gives it.
fn descriptor(artifact_type: &str, bytes: &[u8]) -> serde_json::Value {
    serde_json::json!({
        "mediaType": OCI_MANIFEST,
        "digest": Digest::of(bytes).to_string(),
        "size": bytes.len(),
        "artifactType": artifact_type,
    })
}

/// The digests a referrers answer lists, after checking it is an index.
fn listed(body: &[u8]) -> Vec<String> {
    let index: serde_json::Value = serde_json::from_slice(body).expect("json");
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(index["mediaType"], OCI_INDEX);
    index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .map(|d| d["digest"].as_str().expect("digest").to_owned())
        .collect()
}

/// A registry with the referrers API: manifests by digest, referrers
/// lists by subject (an empty index for any other), counting referrers
/// requests; every answer 503 while `down`.
#[derive(Default)]
struct Upstream {
    manifests: Mutex<HashMap<String, Bytes>>,
    referrers: Mutex<HashMap<String, Bytes>>,
    asked: AtomicUsize,
    down: AtomicBool,
}

async fn upstream_answer(State(up): State<Arc<Upstream>>, Path(rest): Path<String>) -> Response {
    if up.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    if let Some((_, subject)) = rest.split_once("/referrers/") {
        up.asked.fetch_add(1, Ordering::SeqCst);
        let list = up.referrers.lock().expect("lock").get(subject).cloned();
        let body = list.unwrap_or_else(|| {
            Bytes::from(
                serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})
                    .to_string(),
            )
        });
        return ([("content-type", OCI_INDEX)], body).into_response();
    }
    if let Some((_, reference)) = rest.split_once("/manifests/") {
        if let Some(bytes) = up.manifests.lock().expect("lock").get(reference).cloned() {
            return (
                [
                    ("content-type", OCI_MANIFEST.to_owned()),
                    ("docker-content-digest", Digest::of(&bytes).to_string()),
                ],
                bytes,
            )
                .into_response();
        }
    }
    StatusCode::NOT_FOUND.into_response()
}

#[tokio::test]
async fn the_referrers_api_is_proxied_filtered_cached_and_served_stale() {
    let up = Arc::new(Upstream::default());
    let subject_bytes = Bytes::from_static(br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#);
    let subject = Digest::of(&subject_bytes);
    let layer = Digest::of(b"signature payload");
    let signature = artifact(SIGNATURE, &subject, subject_bytes.len(), &layer);
    let sbom = artifact(SBOM, &subject, subject_bytes.len(), &layer);
    {
        let mut manifests = up.manifests.lock().expect("lock");
        for bytes in [&subject_bytes, &signature, &sbom] {
            manifests.insert(Digest::of(bytes).to_string(), bytes.clone());
        }
        let list = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [descriptor(SIGNATURE, &signature), descriptor(SBOM, &sbom)],
        });
        up.referrers
            .lock()
            .expect("lock")
            .insert(subject.to_string(), Bytes::from(list.to_string()));
    }
    let base = support::fakes::serve(
        axum::Router::new()
            .route("/v2/{*rest}", get(upstream_answer))
            .with_state(Arc::clone(&up)),
    )
    .await;
    let uri = format!("/v2/app/referrers/{subject}");

    // Within an hour's freshness: asked upstream once, then from the cache.
    let proxy = InProcess::open(&base, None, Duration::from_secs(3600)).await;
    let (status, headers, body) = proxy.get(&uri).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], OCI_INDEX);
    assert!(!headers.contains_key("oci-filters-applied"));
    let all = listed(&body.expect("body"));
    assert_eq!(
        all,
        [
            Digest::of(&signature).to_string(),
            Digest::of(&sbom).to_string()
        ]
    );
    let (status, headers, body) = proxy
        .get(&format!("{uri}?artifactType={}", urlencode(SBOM)))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["oci-filters-applied"], "artifactType");
    assert_eq!(
        listed(&body.expect("body")),
        [Digest::of(&sbom).to_string()]
    );
    assert_eq!(
        up.asked.load(Ordering::SeqCst),
        1,
        "the second answer came from the cache"
    );

    // The signature, by digest: the upstream's bytes exactly, subject and all.
    let (status, headers, body) = proxy
        .get(&format!("/v2/app/manifests/{}", Digest::of(&signature)))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.expect("body"), signature);
    assert_eq!(
        headers["docker-content-digest"],
        Digest::of(&signature).to_string()
    );

    // A subject without referrers: an empty index.
    let other = Digest::of(b"no referrers");
    let (status, _, body) = proxy.get(&format!("/v2/app/referrers/{other}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(listed(&body.expect("body")).is_empty());

    // Without freshness every request asks; while the upstream is down the
    // stored list is served, and a subject never stored is unavailable.
    let eager = InProcess::open(&base, None, Duration::ZERO).await;
    let (status, _, _) = eager.get(&uri).await;
    assert_eq!(status, StatusCode::OK);
    let before = up.asked.load(Ordering::SeqCst);
    let (status, _, _) = eager.get(&uri).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(up.asked.load(Ordering::SeqCst), before + 1, "asked again");
    up.down.store(true, Ordering::SeqCst);
    let (status, headers, body) = eager
        .get(&format!("{uri}?artifactType={}", urlencode(SIGNATURE)))
        .await;
    assert_eq!(status, StatusCode::OK, "served stale");
    assert_eq!(headers["oci-filters-applied"], "artifactType");
    assert_eq!(
        listed(&body.expect("body")),
        [Digest::of(&signature).to_string()]
    );
    let (status, _, body) = eager.get(&format!("/v2/app/referrers/{other}")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_code(&body.expect("body")), "UNAVAILABLE");

    // Not a digest: refused before any upstream contact.
    up.down.store(false, Ordering::SeqCst);
    let before = up.asked.load(Ordering::SeqCst);
    let (status, _, body) = proxy.get("/v2/app/referrers/latest").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&body.expect("body")), "DIGEST_INVALID");
    assert_eq!(up.asked.load(Ordering::SeqCst), before);
}

/// `s` with `+` and `/` escaped for a query.
fn urlencode(s: &str) -> String {
    s.replace('+', "%2B").replace('/', "%2F")
}

/// PUTs manifest `bytes` as `reference` of `repo` on the registry at `addr`.
async fn put_manifest(
    client: &reqwest::Client,
    addr: &str,
    repo: &str,
    reference: &str,
    media_type: &str,
    bytes: &Bytes,
) {
    let put = client
        .put(format!("http://{addr}/v2/{repo}/manifests/{reference}"))
        .header("content-type", media_type)
        .body(bytes.clone())
        .send()
        .await
        .expect("put manifest");
    assert_eq!(put.status(), 201, "put {reference}: {:?}", put.text().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn referrers_follow_the_tag_schema_of_docker_registry() {
    let Some((dir, upstream)) =
        support::registry_upstream("referrers_follow_the_tag_schema_of_docker_registry")
    else {
        return;
    };
    let client = reqwest::Client::new();
    let image = push_image(&client, &upstream.addr, "app", 7, &[4096]).await;
    let layer = push_blob(&client, &upstream.addr, "app", Bytes::from(vec![b's'; 64])).await;
    push_blob(&client, &upstream.addr, "app", Bytes::from_static(b"{}")).await;
    let subject_size = reqwest::get(format!(
        "http://{}/v2/app/manifests/{}",
        upstream.addr, image.manifest
    ))
    .await
    .expect("subject")
    .bytes()
    .await
    .expect("subject bytes")
    .len();
    let signature = artifact(SIGNATURE, &image.manifest, subject_size, &layer);
    let sig_digest = Digest::of(&signature);
    put_manifest(
        &client,
        &upstream.addr,
        "app",
        &sig_digest.to_string(),
        OCI_MANIFEST,
        &signature,
    )
    .await;
    // What a client pushing to a registry without the API does: the
    // referrers index under the tag `sha256-<hex>` of the subject.
    let fallback = Bytes::from(
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [descriptor(SIGNATURE, &signature)],
        })
        .to_string(),
    );
    let tag = format!("sha256-{}", image.manifest.hex());
    put_manifest(&client, &upstream.addr, "app", &tag, OCI_INDEX, &fallback).await;

    let root = dir.path().join("root");
    let proxy = tokio::task::block_in_place(|| {
        registry_proxy(
            dir.path(),
            &format!("  filesystem:\n    rootdirectory: {}\n", root.display()),
            &upstream.addr,
            None,
        )
    });
    let base = format!("http://{}/v2/app", proxy.addr);
    let answer = client
        .get(format!("{base}/referrers/{}", image.manifest))
        .send()
        .await
        .expect("referrers");
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["content-type"], OCI_INDEX);
    let body = answer.bytes().await.expect("body");
    assert_eq!(listed(&body), [sig_digest.to_string()]);
    let index: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(index["manifests"][0]["artifactType"], SIGNATURE);

    let filtered = client
        .get(format!(
            "{base}/referrers/{}?artifactType={}",
            image.manifest,
            urlencode(SBOM)
        ))
        .send()
        .await
        .expect("filtered");
    assert_eq!(filtered.headers()["oci-filters-applied"], "artifactType");
    assert!(listed(&filtered.bytes().await.expect("body")).is_empty());

    // The signature has no referrers of its own: no tag, an empty index.
    let none = client
        .get(format!("{base}/referrers/{sig_digest}"))
        .send()
        .await
        .expect("none");
    assert_eq!(none.status(), 200);
    assert!(listed(&none.bytes().await.expect("body")).is_empty());

    // The signature pulled by digest through the cache: the upstream's bytes.
    let pulled = client
        .get(format!("{base}/manifests/{sig_digest}"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .expect("signature");
    assert_eq!(pulled.status(), 200);
    assert_eq!(pulled.bytes().await.expect("bytes"), signature);

    // The answer is stored, pointed to from the repository.
    let link = root.join(format!(
        "docker/registry/v2/repositories/app/_manifests/referrers/sha256/{}/link",
        image.manifest.hex()
    ));
    let stored = std::fs::read_to_string(&link).expect("the referrers link");
    assert!(stored.starts_with("sha256:"), "{stored}");
}
