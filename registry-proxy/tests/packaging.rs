//! The ways the cache is installed (`packaging/`), each checked with the
//! tool its users would trust: the container image built with buildah
//! (`scripts/image.sh`) and run as its non-root user, pulling through; the
//! systemd unit through `systemd-analyze verify` and its exposure score;
//! the Kubernetes manifests against the API's schemas
//! (kubernetes-validate, strict) with their config accepted by
//! `check-config`, and the debug port published to no one but the peers a
//! NetworkPolicy names. Skipped with the reason when a tool is missing,
//! unless `REQUIRE_E2E=1` (the test command installs them).

// Shared by the test binaries and the side-by-side benchmark; each uses a part.
use registry_proxy_testkit as support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::skopeo::{make_image, parts_available, pull_and_check, push, upstream_truth};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `program args`; it must succeed.
fn run(program: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let out = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn tool_available(test: &str, tool: &str) -> bool {
    if support::have(tool) {
        return true;
    }
    conformance::skip(
        test,
        "REQUIRE_E2E",
        &format!("{tool} is not installed (scripts/test.sh installs it)"),
    );
    false
}

/// The image `scripts/image.sh` builds with buildah (from this machine's
/// packages: no base image can be pulled here) says user 65532, the volume
/// and the entrypoint; run as the image says (its user, its environment,
/// its root filesystem) with only the addresses and upstream given, it
/// pulls an image through byte for byte and stores it in the volume as
/// its user.
#[test]
fn the_container_image_serves_as_its_non_root_user() {
    if !parts_available("the_container_image_serves")
        || !tool_available("the_container_image_serves", "buildah")
    {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let upstream = support::docker_registry(d, "upstream", &d.join("upstream-root"), "");
    push(
        &make_image(d, "app", 5, &["amd64"]),
        &upstream.addr,
        "team/app",
        None,
    );
    let truth = upstream_truth(d, &upstream.addr, "team/app:v1", None);

    let storage = format!(
        "--root {} --runroot {} --storage-driver vfs",
        d.join("buildah-root").display(),
        d.join("buildah-run").display()
    );
    let buildah = |args: &[&str]| {
        let mut all: Vec<&str> = storage.split(' ').collect();
        all.extend(args);
        run("buildah", &all, &[])
    };
    let binary = support::registry_proxy_binary();
    let tag = "localhost/registry-proxy:test";
    run(
        repo().join("scripts/image.sh").to_str().expect("utf-8"),
        &["--binary", binary.to_str().expect("utf-8"), "--tag", tag],
        &[("BUILDAH_OPTS", &storage)],
    );
    let inspected = buildah(&["inspect", "--type", "image", tag]);
    let inspected: serde_json::Value = serde_json::from_slice(&inspected.stdout).expect("json");
    let config = &inspected["OCIv1"]["config"];
    assert_eq!(config["User"], "65532:65532", "{config}");
    assert!(
        config["Volumes"]["/var/lib/registry-proxy"].is_object(),
        "{config}"
    );
    assert_eq!(config["Entrypoint"][0], "/usr/local/bin/registry-proxy");
    assert_eq!(config["Cmd"][0], "serve");

    let container = buildah(&["from", tag]);
    let container = String::from_utf8_lossy(&container.stdout).trim().to_owned();
    let mounted = buildah(&["mount", &container]);
    let rootfs = PathBuf::from(String::from_utf8_lossy(&mounted.stdout).trim());
    // The image's environment, then the addresses and upstream of this test.
    let mut env: Vec<(String, String)> = config["Env"]
        .as_array()
        .expect("env")
        .iter()
        .filter_map(|v| v.as_str()?.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let addr = format!("127.0.0.1:{}", support::free_port());
    let debug = format!("127.0.0.1:{}", support::free_port());
    env.extend([
        ("REGISTRY_HTTP_ADDR".to_owned(), addr.clone()),
        ("REGISTRY_HTTP_DEBUG_ADDR".to_owned(), debug),
        (
            "REGISTRY_PROXY_REMOTEURL".to_owned(),
            format!("http://{}", upstream.addr),
        ),
    ]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let entrypoint = config["Entrypoint"][0].as_str().expect("entrypoint");
    let proxy = support::start_env(
        "chroot",
        &[
            "--userspec=65532:65532",
            rootfs.to_str().expect("utf-8"),
            entrypoint,
            "serve",
        ],
        "image",
        addr,
        d,
        &env,
    );
    pull_and_check(&truth, &proxy.addr, "team/app:v1", &d.join("out"), None);
    drop(proxy);
    let blobs = rootfs.join("var/lib/registry-proxy/docker/registry/v2/blobs");
    let owner =
        std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&blobs).expect("blobs stored"));
    assert_eq!(owner, 65532, "stored by the image's user");
    buildah(&["umount", &container]);
    buildah(&["rm", &container]);
}

/// The systemd unit passes `systemd-analyze verify` (its binary and man
/// page where the install steps put them) and its hardening scores "OK"
/// or better in `systemd-analyze security`.
#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    if !tool_available("the_systemd_unit_verifies", "systemd-analyze") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let binary = support::registry_proxy_binary();
    let unit =
        std::fs::read_to_string(repo().join("packaging/registry-proxy.service")).expect("unit");
    assert!(unit.contains("ExecStart=/usr/local/bin/registry-proxy serve"));
    let unit = unit.replace(
        "/usr/local/bin/registry-proxy",
        binary.to_str().expect("utf-8"),
    );
    let path = d.join("registry-proxy.service");
    std::fs::write(&path, unit).expect("unit");
    let man = d.join("man/man1");
    std::fs::create_dir_all(&man).expect("man dir");
    let page = run(binary.to_str().expect("utf-8"), &["man"], &[]);
    std::fs::write(man.join("registry-proxy.1"), page.stdout).expect("man page");
    let manpath = d.join("man");
    let path_text = path.to_str().expect("utf-8");
    run(
        "systemd-analyze",
        &["verify", path_text],
        &[("MANPATH", manpath.to_str().expect("utf-8"))],
    );
    let security = run(
        "systemd-analyze",
        &["security", "--offline=yes", path_text],
        &[],
    );
    let text = String::from_utf8_lossy(&security.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("registry-proxy.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {text}"));
    assert!(score <= 2.0, "exposure {score}: {text}");
}

/// The Kubernetes manifests validate strictly against the API's schemas (a
/// misspelt field is caught, so the checker checks), their ConfigMap's
/// config.yml passes `check-config`, and the probes ask the debug
/// listener's liveness and readiness paths.
#[test]
fn the_kubernetes_manifests_validate() {
    let validate =
        std::env::var("KUBERNETES_VALIDATE").unwrap_or_else(|_| "kubernetes-validate".into());
    if !tool_available("the_kubernetes_manifests_validate", &validate) {
        return;
    }
    let manifests = repo().join("packaging/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&manifests)
        .expect("manifests")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    let mut args = vec!["--strict".to_owned()];
    args.extend(files.iter().map(|f| f.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run(&validate, &args, &[]);

    let dir = tempfile::tempdir().expect("tempdir");
    let deployment =
        std::fs::read_to_string(manifests.join("deployment.yaml")).expect("deployment");
    let broken = dir.path().join("broken.yaml");
    std::fs::write(
        &broken,
        deployment.replace("readinessProbe", "readynessProbe"),
    )
    .expect("write");
    let caught = Command::new(&validate)
        .args(["--strict", broken.to_str().expect("utf-8")])
        .output()
        .expect("run");
    assert!(!caught.status.success(), "a misspelt field passed");

    let configmap: serde_norway::Value = serde_norway::from_str(
        &std::fs::read_to_string(manifests.join("configmap.yaml")).expect("configmap"),
    )
    .expect("yaml");
    let config = dir.path().join("config.yml");
    std::fs::write(
        &config,
        configmap["data"]["config.yml"]
            .as_str()
            .expect("config.yml"),
    )
    .expect("write");
    let binary = support::registry_proxy_binary();
    run(
        binary.to_str().expect("utf-8"),
        &["check-config", config.to_str().expect("utf-8")],
        &[],
    );
    for probe in ["path: /livez", "path: /readyz", "port: debug"] {
        assert!(deployment.contains(probe), "the deployment has no {probe}");
    }
}

/// The Kubernetes manifests publish the debug listener (metrics,
/// `/status`, `/debug/budget`) to no one but the peers they name: no
/// Service carries the debug port, and a NetworkPolicy selecting the
/// cache's pods admits the registry port from anywhere and the debug port
/// only from the peers of its rule.
#[test]
fn the_kubernetes_manifests_keep_the_debug_port_private() {
    let manifests = repo().join("packaging/kubernetes");
    let objects: Vec<serde_norway::Value> = std::fs::read_dir(&manifests)
        .expect("manifests")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| {
            serde_norway::from_str(&std::fs::read_to_string(&p).expect("manifest"))
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        })
        .collect();
    let of_kind = |kind: &str| -> Vec<&serde_norway::Value> {
        objects
            .iter()
            .filter(|o| o["kind"].as_str() == Some(kind))
            .collect()
    };
    let is_debug =
        |port: &serde_norway::Value| port.as_str() == Some("debug") || port.as_u64() == Some(5001);
    let services = of_kind("Service");
    assert!(!services.is_empty(), "no Service");
    for service in services {
        for port in service["spec"]["ports"].as_sequence().expect("ports") {
            assert!(
                !is_debug(&port["port"]) && !is_debug(&port["targetPort"]),
                "a Service publishes the debug port: {port:?}"
            );
        }
    }
    let policy = of_kind("NetworkPolicy")
        .into_iter()
        .find(|p| {
            p["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"].as_str()
                == Some("registry-proxy")
        })
        .expect("a NetworkPolicy selecting the cache's pods");
    let types = policy["spec"]["policyTypes"]
        .as_sequence()
        .expect("policyTypes");
    assert!(
        types.iter().any(|t| t.as_str() == Some("Ingress")),
        "{policy:?}"
    );
    let rules = policy["spec"]["ingress"].as_sequence().expect("ingress");
    // The rules that open the debug port (or the others): a rule without
    // ports, or a port entry without a port, opens every port.
    let admits = |debug: bool| {
        rules
            .iter()
            .filter(move |rule| match rule["ports"].as_sequence() {
                None => true,
                Some(ports) => ports
                    .iter()
                    .any(|p| p["port"].is_null() || is_debug(&p["port"]) == debug),
            })
    };
    assert!(
        admits(false).count() > 0,
        "the registry port is not admitted"
    );
    assert!(
        admits(true).count() > 0,
        "Prometheus cannot reach the debug port"
    );
    for rule in admits(true) {
        assert!(
            rule["from"]
                .as_sequence()
                .is_some_and(|from| !from.is_empty()),
            "the debug port is admitted from anywhere: {rule:?}"
        );
    }
}
