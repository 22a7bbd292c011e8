//! What namespaces cost: warm manifest (by tag) and blob requests through
//! a registry:2-style single-namespace config, against the same requests
//! routed to an isolated namespace among four, by path prefix and by
//! containerd's `?ns=`, with repository allow/deny lists, and with client
//! authentication on top. Both
//! proxies front one Debian `docker-registry`; runs alternate between the
//! configs and the medians are compared, since the machine is shared; the
//! proxies run on CPU 0 and wrk on CPU 1.
//! Run with `scripts/bench-namespaces.sh`.

use registry_proxy_testkit as support;

use std::path::Path;

use base64::Engine as _;
use support::{Server, docker_registry, have, median, pin, push_image, registry_proxy_with, wrk};

/// The namespace the routed requests go to (isolated: every request
/// checks its proof of access).
const ROUTED: &str = "registry.test";

/// A proxy with `proxy_section`, pinned to CPU 0 (wrk runs on CPU 1, so the
/// two do not compete and runs of different proxies compare).
fn proxy(dir: &Path, name: &str, proxy_section: &str) -> Server {
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir).expect("dir");
    let storage = format!(
        "storage:\n  filesystem:\n    rootdirectory: {}\n",
        dir.join("root").display()
    );
    let server = registry_proxy_with(&dir, &format!("{storage}{proxy_section}"));
    pin(server.pid(), "0");
    server
}

/// Three more namespaces.
const OTHERS: &str = "    - namespace: docker.io\n      remoteurl: https://registry-1.docker.io\n    - namespace: ghcr.io\n      remoteurl: https://ghcr.io\n    - namespace: quay.io\n      remoteurl: https://quay.io\n";

/// Four namespaces; requests go to the one in front of `upstream`, with
/// the `sharing` policy.
fn namespaces(upstream: &str, sharing: &str) -> String {
    format!(
        "proxy:\n  upstreams:\n{OTHERS}    - namespace: {ROUTED}\n      remoteurl: http://{upstream}\n      sharing: {sharing}\n"
    )
}

/// Caps on the upstream and a pull budget (they act on misses and tag
/// resolutions; a warm hit only reads whether the budget is low).
const LIMITS: &str = "      maxconcurrent: 4\n      maxbandwidth: 100MiB\n      pullbudget:\n        reserve: 10\n        tagfreshness: 1h\n";

/// Repository lists of ten globs each, the benchmark's repository allowed
/// by the last `allow` glob.
const LISTS: &str = "      repositories:\n        allow: [\"library/*\", \"bitnami/**\", \"team-?/*\", \"org/**/base\", \"[a-c]*/tools\", \"mirror/**\", \"ci/*/*\", \"infra/**\", \"data/*\", \"bench/**\"]\n        deny: [\"bench/secret*\", \"**/experimental\", \"library/evil*\", \"tmp/**\", \"*/scratch\", \"test/**\", \"dev/*\", \"old/**\", \"x/*/y\", \"z*\"]\n";

/// One configuration measured.
struct Setup<'a> {
    label: &'a str,
    server: &'a Server,
    /// Before the repository name in the path (`/registry.test`).
    prefix: &'a str,
    /// After the path (`?ns=registry.test`).
    query: &'a str,
    /// Request headers for wrk.
    headers: Vec<&'a str>,
    /// Whether it counts for the routing-and-policy target.
    target: bool,
}

impl Setup<'_> {
    fn url(&self, what: &str) -> String {
        let (addr, prefix, query) = (&self.server.addr, self.prefix, self.query);
        format!("http://{addr}/v2{prefix}/bench/app/{what}{query}")
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    for tool in ["docker-registry", "wrk", "taskset"] {
        assert!(
            have(tool),
            "{tool} is not installed: run scripts/bench-namespaces.sh, which installs it"
        );
    }
    // This process, and so the wrk processes it starts, on CPU 1.
    pin(std::process::id(), "1");
    let seconds = conformance::env_or("BENCH_WRK_SECONDS", 3);
    let rounds = conformance::env_or("BENCH_ROUNDS", 7);
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let upstream = docker_registry(d, "upstream", &d.join("upstream-root"), "");
    let client = reqwest::Client::new();
    let image = push_image(&client, &upstream.addr, "bench/app", 7, &[16 << 10]).await;
    let targets = [
        "manifests/v1".to_owned(),
        format!("blobs/{}", image.blobs.last().expect("a layer")),
    ];

    let hash = bcrypt::hash("bench-password", 4).expect("bcrypt");
    std::fs::write(d.join("htpasswd"), format!("bench:{hash}\n")).expect("htpasswd");
    let auth = format!(
        "auth:\n  htpasswd:\n    realm: bench\n    path: {}\n",
        d.join("htpasswd").display()
    );
    let basic = format!(
        "Authorization: Basic {}",
        base64::engine::general_purpose::STANDARD.encode("bench:bench-password")
    );
    let up = upstream.addr.as_str();
    let single = proxy(d, "single", &format!("proxy:\n  remoteurl: http://{up}\n"));
    let isolated = proxy(d, "isolated", &namespaces(up, "isolated"));
    let shared = proxy(d, "shared", &namespaces(up, "shared"));
    let default = proxy(
        d,
        "default",
        &format!("proxy:\n  remoteurl: http://{up}\n  upstreams:\n{OTHERS}"),
    );
    let listed = proxy(d, "listed", &format!("{}{LISTS}", namespaces(up, "shared")));
    let limited = proxy(
        d,
        "limited",
        &format!("{}{LIMITS}", namespaces(up, "shared")),
    );
    let users = format!("{auth}{}      users: [bench]\n", namespaces(up, "isolated"));
    let authed = proxy(d, "authed", &users);
    let prefix = format!("/{ROUTED}");
    let ns_query = format!("?ns={ROUTED}");
    let setup = |label, server, prefix, query, target| Setup {
        label,
        server,
        prefix,
        query,
        headers: Vec::new(),
        target,
    };
    let setups = [
        setup(
            "single namespace (registry:2 config)",
            &single,
            "",
            "",
            false,
        ),
        setup("isolated of 4, path prefix", &isolated, &prefix, "", true),
        setup("isolated of 4, ?ns=", &isolated, "", &ns_query, true),
        setup("shared of 4, path prefix", &shared, &prefix, "", true),
        setup(
            "shared of 4, prefix, allow/deny",
            &listed,
            &prefix,
            "",
            true,
        ),
        setup(
            "shared of 4, prefix, upstream limits",
            &limited,
            &prefix,
            "",
            true,
        ),
        setup("default (registry:2's) of 4", &default, "", "", true),
        Setup {
            headers: vec![basic.as_str()],
            ..setup(
                "isolated of 4, prefix, client auth",
                &authed,
                &prefix,
                "",
                false,
            )
        },
    ];
    // Warm: fills, proofs of access, tags resolved.
    for setup in &setups {
        for what in &targets {
            let mut request = client
                .get(setup.url(what))
                .header("accept", registry_proxy::oci::MANIFEST_ACCEPT);
            if !setup.headers.is_empty() {
                request = request.basic_auth("bench", Some("bench-password"));
            }
            let status = request.send().await.expect("warm").status();
            assert!(status.is_success(), "{}: {what}: {status}", setup.label);
        }
    }
    // Each round measures the single-namespace baseline before and after
    // the others (their order rotating from round to round), and each
    // setup's ratio is taken against the mean of the two: slow drift of a
    // shared machine cancels out. The figures are medians over rounds.
    let mut rates = vec![[Vec::new(), Vec::new()]; setups.len()];
    let mut ratios = vec![[Vec::new(), Vec::new()]; setups.len()];
    for round in 0..rounds {
        println!("round {} of {rounds} ...", round + 1);
        for (j, what) in targets.iter().enumerate() {
            let measure = |setup: &Setup| {
                let url = setup.url(what);
                tokio::task::block_in_place(|| wrk(&url, seconds, &setup.headers)).0
            };
            let before = measure(&setups[0]);
            let mut others: Vec<(usize, f64)> = (1..setups.len()).map(|i| (i, 0.0)).collect();
            let turn = round % others.len();
            others.rotate_left(turn);
            for (i, rate) in &mut others {
                *rate = measure(&setups[*i]);
            }
            let after = measure(&setups[0]);
            let baseline = (before + after) / 2.0;
            rates[0][j].push(baseline);
            ratios[0][j].push(1.0);
            for (i, rate) in others {
                rates[i][j].push(rate);
                ratios[i][j].push(rate / baseline);
            }
        }
    }
    println!(
        "\nwarm requests per second, wrk -c64, {rounds} rounds of {seconds} s runs; medians; \
         ratio: median over rounds of the setup's rate to the baseline's in the same round"
    );
    println!(
        "{:<38} {:>15} {:>7} {:>12} {:>7}",
        "configuration", "manifest by tag", "ratio", "16 KiB blob", "ratio"
    );
    let mut worst = f64::MAX;
    let mut lists_ratios = Vec::new();
    for ((setup, rates), ratios) in setups.iter().zip(rates).zip(ratios) {
        let [manifest, blob] = rates.map(median);
        let [manifest_ratio, blob_ratio] = ratios.map(median);
        lists_ratios.push([manifest_ratio, blob_ratio]);
        println!(
            "{:<38} {manifest:>15.0} {manifest_ratio:>7.3} {blob:>12.0} {blob_ratio:>7.3}",
            setup.label
        );
        if setup.target {
            worst = worst.min(manifest_ratio).min(blob_ratio);
        }
    }
    let of = |label: &str| {
        let i = setups.iter().position(|s| s.label == label).expect("setup");
        lists_ratios[i]
    };
    let (with, without) = (
        of("shared of 4, prefix, allow/deny"),
        of("shared of 4, path prefix"),
    );
    let lists = (with[0] / without[0]).min(with[1] / without[1]);
    println!(
        "allow/deny lists (10 globs each) against the same namespaces without: worst {lists:.3} (target >= 0.95): {}",
        if lists >= 0.95 { "met" } else { "MISSED" }
    );
    let limits = of("shared of 4, prefix, upstream limits");
    let limits = (limits[0] / without[0]).min(limits[1] / without[1]);
    println!(
        "upstream limits (maxconcurrent, maxbandwidth, pullbudget) against the same namespaces without: worst {limits:.3} (target >= 0.95): {}",
        if limits >= 0.95 { "met" } else { "MISSED" }
    );
    println!(
        "\nrouting and policy checks: worst ratio {worst:.3} (target >= 0.95): {}",
        if worst >= 0.95 { "met" } else { "MISSED" }
    );
}
