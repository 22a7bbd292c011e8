//! The configuration corpus (`tests/configs/`, and Debian's packaged
//! `/etc/docker/registry/config.yml`): each starts the real binary
//! unchanged but for what only fits the machine that wrote it (storage
//! path, listen ports, htpasswd file, certificate files, the upstream's
//! URL), and an image pulls through it with skopeo, byte for byte what the
//! upstream serves. Skipped with the reason when the parts are missing,
//! unless `REQUIRE_E2E=1`.

// Shared by the test binaries and the side-by-side benchmark; each uses a part.
use registry_proxy_testkit as support;

use std::path::Path;

use serde_norway::{Mapping, Value};
use support::skopeo::{make_image, parts_available, pull_and_check, push, upstream_truth};
use support::{docker_registry, free_port};

/// `tree[keys...]`, created as maps on the way.
fn at<'a>(tree: &'a mut Value, keys: &[&str]) -> &'a mut Value {
    let mut node = tree;
    for key in keys {
        if !node.is_mapping() {
            *node = Value::Mapping(Mapping::new());
        }
        let Value::Mapping(map) = node else {
            unreachable!("made a map above")
        };
        node = map
            .entry(Value::String((*key).to_owned()))
            .or_insert(Value::Null);
    }
    node
}

fn has(tree: &Value, keys: &[&str]) -> bool {
    let mut node = tree;
    for key in keys {
        match node.get(key) {
            Some(child) => node = child,
            None => return false,
        }
    }
    !node.is_null()
}

/// What a config needs from its client.
struct Started {
    proxy: support::Server,
    creds: Option<&'static str>,
    debug: Option<String>,
}

/// Starts the binary on `yaml` (named `name`) adapted to this machine, in
/// front of `upstream`.
fn start(d: &Path, name: &str, yaml: &str, upstream: &str, ca: &support::tls::TestCa) -> Started {
    let dir = d.join(name);
    std::fs::create_dir_all(&dir).expect("dir");
    let mut tree: Value = serde_norway::from_str(yaml).expect("yaml");
    *at(&mut tree, &["storage", "filesystem", "rootdirectory"]) =
        Value::String(dir.join("root").display().to_string());
    let addr = format!("127.0.0.1:{}", free_port());
    *at(&mut tree, &["http", "addr"]) = Value::String(addr.clone());
    let debug = has(&tree, &["http", "debug", "addr"]).then(|| {
        // A name stays a name (distribution's files say `localhost:5001`).
        let old = tree["http"]["debug"]["addr"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let host = if old.starts_with("localhost") {
            "localhost"
        } else {
            "127.0.0.1"
        };
        let new = format!("{host}:{}", free_port());
        *at(&mut tree, &["http", "debug", "addr"]) = Value::String(new.clone());
        new
    });
    let creds = has(&tree, &["auth", "htpasswd"]).then(|| {
        let file = dir.join("htpasswd");
        let hash = bcrypt::hash("pw", 4).expect("hash");
        std::fs::write(&file, format!("alice:{hash}\n")).expect("htpasswd");
        *at(&mut tree, &["auth", "htpasswd", "path"]) = Value::String(file.display().to_string());
        "alice:pw"
    });
    if has(&tree, &["http", "tls", "certificate"]) {
        let issued = ca.issue(&["127.0.0.1"], &dir, "server");
        *at(&mut tree, &["http", "tls", "certificate"]) =
            Value::String(issued.cert.display().to_string());
        *at(&mut tree, &["http", "tls", "key"]) = Value::String(issued.key.display().to_string());
    }
    *at(&mut tree, &["proxy", "remoteurl"]) = Value::String(format!("http://{upstream}"));
    let config = dir.join("config.yml");
    std::fs::write(&config, serde_norway::to_string(&tree).expect("yaml")).expect("config");
    let binary = support::registry_proxy_binary();
    let proxy = support::start_env(
        binary.to_str().expect("utf-8"),
        &["serve", config.to_str().expect("utf-8")],
        "proxy",
        addr,
        &dir,
        &[],
    );
    Started {
        proxy,
        creds,
        debug,
    }
}

/// Every configuration of the corpus starts the cache and pulls an image
/// through it; where it has a debug listener, that listener answers its
/// health and (where `prometheus` asks) its metrics path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_config_of_the_corpus_starts_and_pulls() {
    if !parts_available("every_config_of_the_corpus_starts_and_pulls") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (upstream, truth) = tokio::task::block_in_place(|| {
        let upstream = docker_registry(d, "upstream", &d.join("upstream-root"), "");
        push(
            &make_image(d, "app", 11, &["amd64"]),
            &upstream.addr,
            "team/app",
            None,
        );
        let truth = upstream_truth(d, &upstream.addr, "team/app:v1", None);
        (upstream, truth)
    });
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/configs");
    let mut configs: Vec<(String, String)> = std::fs::read_dir(&corpus)
        .expect("corpus")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "yml"))
        .map(|path| {
            let name = path
                .file_stem()
                .expect("stem")
                .to_string_lossy()
                .into_owned();
            (name, std::fs::read_to_string(&path).expect("read"))
        })
        .collect();
    configs.sort();
    assert!(
        configs.len() >= 6,
        "the corpus is missing files: {configs:?}"
    );
    let debian = Path::new("/etc/docker/registry/config.yml");
    configs.push((
        "debian".to_owned(),
        std::fs::read_to_string(debian).expect("Debian's docker-registry config"),
    ));
    let ca = support::tls::TestCa::new("corpus CA");
    let client = reqwest::Client::new();
    for (name, yaml) in &configs {
        let started = tokio::task::block_in_place(|| start(d, name, yaml, &upstream.addr, &ca));
        tokio::task::block_in_place(|| {
            pull_and_check(
                &truth,
                &started.proxy.addr,
                "team/app:v1",
                &d.join(name).join("out"),
                started.creds,
            );
        });
        if let Some(debug) = &started.debug {
            let health = client
                .get(format!("http://{debug}/debug/health"))
                .send()
                .await
                .unwrap_or_else(|e| panic!("{name}: health: {e}"));
            assert_eq!(health.status(), 200, "{name}: /debug/health");
            let metrics = client
                .get(format!("http://{debug}/metrics"))
                .send()
                .await
                .expect("metrics");
            assert_eq!(metrics.status(), 200, "{name}: /metrics");
            let text = metrics.text().await.expect("text");
            assert!(
                text.contains("registry_proxy_requests_total"),
                "{name}: {text}"
            );
        }
        drop(started.proxy);
    }
}
