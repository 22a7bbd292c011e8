//! Blobs and images pushed to a registry and pulled back as a client
//! does, every byte checked against its digest.

use registry_proxy::oci::Digest;

/// Pushes `data` as a blob of `repo` to the registry at `addr` (monolithic
/// upload: POST, then PUT with the digest).
pub async fn push_blob(
    client: &reqwest::Client,
    addr: &str,
    repo: &str,
    data: bytes::Bytes,
) -> Digest {
    let digest = Digest::of(&data);
    let started = client
        .post(format!("http://{addr}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .expect("start upload");
    assert_eq!(started.status(), 202, "start upload");
    let location = started.headers()["location"].to_str().expect("location");
    let location = if location.starts_with('/') {
        format!("http://{addr}{location}")
    } else {
        location.to_owned()
    };
    let separator = if location.contains('?') { '&' } else { '?' };
    let done = client
        .put(format!("{location}{separator}digest={digest}"))
        .header("content-type", "application/octet-stream")
        .body(data)
        .send()
        .await
        .expect("finish upload");
    assert_eq!(done.status(), 201, "finish upload");
    digest
}

/// An image pushed by [`push_image`]: its manifest and the blobs it names.
#[derive(Debug, Clone)]
pub struct Image {
    /// The repository.
    pub repo: String,
    /// The manifest's digest (tagged `v1`).
    pub manifest: Digest,
    /// Config then layers.
    pub blobs: Vec<Digest>,
}

/// Pushes an OCI image with random layers of `layer_sizes` bytes (seeded
/// by `seed`) as `repo:v1` to the registry at `addr`.
pub async fn push_image(
    client: &reqwest::Client,
    addr: &str,
    repo: &str,
    seed: u64,
    layer_sizes: &[usize],
) -> Image {
    push_image_tagged(client, addr, repo, "v1", seed, layer_sizes).await
}

/// [`push_image`] as `repo:tag`.
pub async fn push_image_tagged(
    client: &reqwest::Client,
    addr: &str,
    repo: &str,
    tag: &str,
    seed: u64,
    layer_sizes: &[usize],
) -> Image {
    let config = bytes::Bytes::from(format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}},"seed":{seed}}}"#
    ));
    let mut blobs = vec![push_blob(client, addr, repo, config.clone()).await];
    let mut descriptors = Vec::new();
    for (i, &layer_bytes) in layer_sizes.iter().enumerate() {
        let data = conformance::random_bytes(seed * 1000 + i as u64, layer_bytes);
        let digest = push_blob(client, addr, repo, data).await;
        descriptors.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": digest.to_string(),
            "size": layer_bytes,
        }));
        blobs.push(digest);
    }
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": registry_proxy::oci::OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": blobs[0].to_string(),
            "size": config.len(),
        },
        "layers": descriptors,
    }))
    .expect("manifest");
    let put = client
        .put(format!("http://{addr}/v2/{repo}/manifests/{tag}"))
        .header("content-type", registry_proxy::oci::OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .await
        .expect("put manifest");
    assert_eq!(put.status(), 201, "put manifest");
    Image {
        repo: repo.to_owned(),
        manifest: Digest::of(&manifest),
        blobs,
    }
}

/// Pulls `image` by its tag from the registry at `addr` as a client does:
/// the manifest, then every blob it names, each checked against its digest.
/// Returns the bytes received, or what went wrong.
pub async fn pull_image(
    client: &reqwest::Client,
    addr: &str,
    image: &Image,
) -> Result<u64, String> {
    let get = |url: String| async move {
        let response = client
            .get(&url)
            .header("accept", registry_proxy::oci::MANIFEST_ACCEPT)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("GET {url}: {}", response.status()));
        }
        response
            .bytes()
            .await
            .map_err(|e| format!("GET {url}: body: {e}"))
    };
    let base = format!("http://{addr}/v2/{}", image.repo);
    let manifest = get(format!("{base}/manifests/v1")).await?;
    if Digest::of(&manifest) != image.manifest {
        return Err(format!("{}:v1: wrong manifest", image.repo));
    }
    let mut received = manifest.len() as u64;
    for (digest, _) in registry_proxy::oci::manifest_references(&manifest) {
        let blob = get(format!("{base}/blobs/{digest}")).await?;
        if Digest::of(&blob) != digest {
            return Err(format!(
                "{}: blob {digest}: wrong bytes ({} B)",
                image.repo,
                blob.len()
            ));
        }
        received += blob.len() as u64;
    }
    Ok(received)
}

/// Reads every blob in storage and checks it against the digest it is
/// stored under; returns how many there are.
pub async fn verify_stored_blobs(driver: &dyn driver_core::StorageDriver) -> usize {
    let blobs = driver_core::StoragePath::parse("/docker/registry/v2/blobs").expect("path");
    let mut data = Vec::new();
    let walked = driver
        .walk(&blobs, &driver_core::WalkOptions::default(), &mut |info| {
            if !info.is_dir && info.path.as_str().ends_with("/data") {
                data.push(info.path.clone());
            }
            driver_core::WalkControl::Continue
        })
        .await;
    if let Err(e) = walked {
        assert!(e.is_not_found(), "walk blobs: {e}");
    }
    for path in &data {
        let hex = path.as_str().rsplit('/').nth(1).expect("digest directory");
        let bytes = driver.get_content(path).await.expect("read a stored blob");
        assert_eq!(
            Digest::of(&bytes).hex(),
            hex,
            "{path} holds {} bytes that are not its digest's",
            bytes.len()
        );
    }
    data.len()
}

/// The `code` of the first error in an OCI error body.
pub fn error_code(body: &[u8]) -> String {
    let json: serde_json::Value = serde_json::from_slice(body).expect("an OCI error body");
    json["errors"][0]["code"].as_str().expect("code").to_owned()
}
