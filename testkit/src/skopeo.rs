//! Images made here, pushed and pulled with `skopeo`, checked against
//! what the upstream itself serves.

use std::path::{Path, PathBuf};
use std::process::Command;

use registry_proxy::oci::Digest;
use serde_json::json;

use super::tools_available;

/// Whether the real parts are here; prints why not (fails under REQUIRE_E2E=1).
pub fn parts_available(test: &str) -> bool {
    tools_available(test, &["docker-registry", "skopeo"])
}

/// Runs skopeo with `args`; it must succeed.
pub fn skopeo(args: &[&str]) {
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
pub fn make_image(dir: &Path, name: &str, seed: u64, platforms: &[&str]) -> PathBuf {
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

/// Pushes the OCI layout's `v1` (every platform) to `registry` as `repo:v1`.
pub fn push(layout: &Path, registry: &str, repo: &str, creds: Option<&str>) {
    let src = format!("oci:{}:v1", layout.display());
    let dst = format!("docker://{registry}/{repo}:v1");
    let mut args = vec!["copy", "--all", "--dest-tls-verify=false", &src, &dst];
    if let Some(c) = creds {
        args.extend(["--dest-creds", c]);
    }
    skopeo(&args);
}

/// Pulls `reference` (every platform) from `registry` into `dir:out`.
pub fn pull(registry: &str, reference: &str, out: &Path, creds: Option<&str>) {
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
pub fn contents(out: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
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
pub fn pull_and_check(
    expected: &std::collections::BTreeMap<String, Vec<u8>>,
    registry: &str,
    reference: &str,
    out: &Path,
    creds: Option<&str>,
) {
    pull(registry, reference, out, creds);
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
pub fn upstream_truth(
    dir: &Path,
    registry: &str,
    reference: &str,
    creds: Option<&str>,
) -> std::collections::BTreeMap<String, Vec<u8>> {
    let out = dir.join(format!("truth-{}", reference.replace(['/', ':', '@'], "_")));
    pull(registry, reference, &out, creds);
    contents(&out)
}
