//! What namespaces cost: warm manifest (by tag) and blob requests through
//! a registry:2-style single-namespace config, against the same requests
//! routed to an isolated namespace among four, by path prefix and by
//! containerd's `?ns=`, and with client authentication on top. Both
//! proxies front one Debian `docker-registry`; runs alternate between the
//! configs and the medians are compared, since the machine is shared.
//! Run with `scripts/bench-namespaces.sh`.

// Shared with the test binaries; the benchmark uses a part.
#[allow(dead_code)]
#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;

use base64::Engine as _;
use support::{Server, docker_registry, have, median, push_image, registry_proxy_with, wrk};

/// The namespace the routed requests go to (isolated: every request
/// checks its proof of access).
const ROUTED: &str = "registry.test";

fn proxy(dir: &Path, name: &str, proxy_section: &str) -> Server {
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir).expect("dir");
    let storage = format!(
        "storage:\n  filesystem:\n    rootdirectory: {}\n",
        dir.join("root").display()
    );
    registry_proxy_with(&dir, &format!("{storage}{proxy_section}"))
}

/// Four namespaces; requests go to the isolated one in front of `upstream`.
fn namespaces(upstream: &str) -> String {
    format!(
        "proxy:\n  upstreams:\n    - namespace: docker.io\n      remoteurl: https://registry-1.docker.io\n    - namespace: ghcr.io\n      remoteurl: https://ghcr.io\n    - namespace: quay.io\n      remoteurl: https://quay.io\n    - namespace: {ROUTED}\n      remoteurl: http://{upstream}\n      sharing: isolated\n"
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    for tool in ["docker-registry", "wrk"] {
        assert!(
            have(tool),
            "{tool} is not installed: run scripts/bench-namespaces.sh, which installs it"
        );
    }
    let seconds = conformance::env_or("BENCH_WRK_SECONDS", 5);
    let rounds = conformance::env_or("BENCH_ROUNDS", 3);
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let upstream = docker_registry(d, "upstream", &d.join("upstream-root"), "");
    let client = reqwest::Client::new();
    let image = push_image(&client, &upstream.addr, "bench/app", 7, &[16 << 10]).await;
    let layer = image.blobs.last().expect("a layer").to_string();

    let hash = bcrypt::hash("bench-password", 4).expect("bcrypt");
    std::fs::write(d.join("htpasswd"), format!("bench:{hash}\n")).expect("htpasswd");
    let auth = format!(
        "auth:\n  htpasswd:\n    realm: bench\n    path: {}\n",
        d.join("htpasswd").display()
    );
    let users = format!("{}      users: [bench]\n", namespaces(&upstream.addr));
    let basic = format!(
        "Authorization: Basic {}",
        base64::engine::general_purpose::STANDARD.encode("bench:bench-password")
    );
    let single = proxy(
        d,
        "single",
        &format!("proxy:\n  remoteurl: http://{}\n", upstream.addr),
    );
    let multi = proxy(d, "multi", &namespaces(&upstream.addr));
    let authed = proxy(d, "authed", &format!("{auth}{users}"));

    // (label, proxy, path prefix, query, headers) per configuration.
    let prefixed = format!("/{ROUTED}");
    let ns_query = format!("?ns={ROUTED}");
    let configs: [(&str, &Server, &str, &str, Vec<&str>); 4] = [
        (
            "single namespace (registry:2 config)",
            &single,
            "",
            "",
            vec![],
        ),
        (
            "isolated namespace of 4, path prefix",
            &multi,
            &prefixed,
            "",
            vec![],
        ),
        (
            "isolated namespace of 4, ?ns=",
            &multi,
            "",
            &ns_query,
            vec![],
        ),
        (
            "same, path prefix + client auth",
            &authed,
            &prefixed,
            "",
            vec![basic.as_str()],
        ),
    ];
    let url = |(_, server, prefix, query, _): &(&str, &Server, &str, &str, Vec<&str>),
               what: &str| {
        format!("http://{}/v2{prefix}/bench/app/{what}{query}", server.addr)
    };
    // Warm: fills, proofs of access, tags resolved.
    for config in &configs {
        for what in ["manifests/v1".to_owned(), format!("blobs/{layer}")] {
            let mut request = client
                .get(url(config, &what))
                .header("accept", registry_proxy::oci::MANIFEST_ACCEPT);
            if !config.4.is_empty() {
                request = request.basic_auth("bench", Some("bench-password"));
            }
            let status = request.send().await.expect("warm").status();
            assert!(status.is_success(), "{}: {what}: {status}", config.0);
        }
    }
    let mut figures = vec![[Vec::new(), Vec::new()]; configs.len()];
    for round in 0..rounds {
        println!("round {} of {rounds} ...", round + 1);
        for (i, config) in configs.iter().enumerate() {
            for (j, what) in ["manifests/v1".to_owned(), format!("blobs/{layer}")]
                .iter()
                .enumerate()
            {
                let target = url(config, what);
                let (rps, _) = tokio::task::block_in_place(|| wrk(&target, seconds, &config.4));
                figures[i][j].push(rps);
            }
        }
    }
    let medians: Vec<[f64; 2]> = figures
        .into_iter()
        .map(|[m, b]| [median(m), median(b)])
        .collect();
    println!(
        "\nwarm requests per second, wrk -c64, median of {rounds} alternating runs of {seconds} s"
    );
    println!(
        "{:<40} {:>16} {:>8} {:>16} {:>8}",
        "configuration", "manifest by tag", "ratio", "16 KiB blob", "ratio"
    );
    let mut worst = f64::MAX;
    for (i, config) in configs.iter().enumerate() {
        let ratio = |j: usize| medians[i][j] / medians[0][j];
        println!(
            "{:<40} {:>16.0} {:>8.3} {:>16.0} {:>8.3}",
            config.0,
            medians[i][0],
            ratio(0),
            medians[i][1],
            ratio(1)
        );
        // The target is about routing and policy checks; auth is extra.
        if (1..3).contains(&i) {
            worst = worst.min(ratio(0)).min(ratio(1));
        }
    }
    println!(
        "\nrouting and policy checks: worst ratio {worst:.3} (target >= 0.95): {}",
        if worst >= 0.95 { "met" } else { "MISSED" }
    );
}
