//! registry-proxy side by side with Debian's `docker-registry` configured as a
//! proxy of the same upstream, on this machine, in one run:
//!
//! - warm 1 MiB blob GETs with `wrk -c64`;
//! - one cold 256 MiB blob pull, against pulling it straight from the upstream
//!   (the client writes each blob to a file and checks its digest, as
//!   skopeo and containerd do);
//! - 8 concurrent cold pulls of one 256 MiB blob: how many times the upstream
//!   sent its bytes, and the proxy's peak RSS meanwhile.
//!
//! The upstream is a `docker-registry` behind a byte-counting TCP relay run
//! by this program. Run with `scripts/bench-proxy.sh` (installs the tools).
//! `BENCH_COLD_RUNS` (default 3) and `BENCH_WRK_SECONDS` (default 10) tune it;
//! `BENCH_STORAGE` replaces registry-proxy's `storage` block (YAML, indented
//! two spaces), e.g. to measure it on S3.

// Shared by the test binaries and the side-by-side benchmark; each uses a part.
#[allow(dead_code)]
#[path = "../tests/support/mod.rs"]
mod support;

use std::process::Command;
use std::time::Instant;

use futures::StreamExt;
use registry_proxy::oci::Digest;
use sha2::{Digest as _, Sha256};
use support::{Relay, Server, docker_registry, have, push_blob, registry_proxy};
use tokio::io::AsyncWriteExt;

const MIB: usize = 1 << 20;
const COLD_SIZE: usize = 256 * MIB;
const REPO: &str = "bench/blobs";

/// GETs a blob through `addr` the way skopeo and containerd pull one:
/// written to a (temporary) file and its digest checked as it arrives.
/// Returns the seconds taken.
async fn pull(client: &reqwest::Client, addr: &str, digest: &Digest, size: usize) -> f64 {
    let started = Instant::now();
    let response = client
        .get(format!("http://{addr}/v2/{REPO}/blobs/{digest}"))
        .send()
        .await
        .expect("pull");
    assert!(
        response.status().is_success(),
        "pull: {}",
        response.status()
    );
    let mut body = response.bytes_stream();
    let mut got = 0;
    let mut hasher = Sha256::new();
    let mut file = tokio::fs::File::from_std(tempfile::tempfile().expect("client file"));
    while let Some(chunk) = body.next().await {
        let chunk = chunk.expect("body");
        got += chunk.len();
        hasher.update(&chunk);
        file.write_all(&chunk).await.expect("client write");
    }
    assert_eq!(got, size, "pull of {digest} from {addr} was short");
    assert_eq!(
        &Digest::from_hasher(hasher),
        digest,
        "pull of {digest} from {addr} has other bytes"
    );
    started.elapsed().as_secs_f64()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// `field` of /proc/PID/status, in MiB.
fn status_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("status field");
    kib / 1024.0
}

/// `wrk -c64` on one URL: requests per second and the p99 latency.
fn wrk(url: &str, seconds: u64) -> (f64, String) {
    let out = Command::new("wrk")
        .args(["-t2", "-c64", &format!("-d{seconds}s"), "--latency", url])
        .output()
        .expect("run wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("wrk printed no rate: {text}"));
    assert!(!text.contains("Non-2xx"), "wrk saw failed requests: {text}");
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map_or_else(|| "?".into(), |v| v.trim().to_owned());
    (rps, p99)
}

/// The figures of one proxy.
struct Figures {
    warm_rps: f64,
    warm_p99: String,
    cold_seconds: f64,
    cold_upstream_copies: f64,
    concurrent_upstream_copies: f64,
    concurrent_peak_rss_mib: f64,
}

struct Blobs {
    warm: Digest,
    cold: Vec<Digest>,
    concurrent: Digest,
}

async fn measure(proxy: &Server, relay: &Relay, blobs: &Blobs) -> Figures {
    let client = reqwest::Client::new();
    let seconds = conformance::env_or("BENCH_WRK_SECONDS", 10);
    pull(&client, &proxy.addr, &blobs.warm, MIB).await;
    relay.settled().await;
    let url = format!("http://{}/v2/{REPO}/blobs/{}", proxy.addr, blobs.warm);
    let (warm_rps, warm_p99) = tokio::task::block_in_place(|| wrk(&url, seconds));

    let mut cold = Vec::new();
    let mut cold_copies = Vec::new();
    for digest in &blobs.cold {
        let before = relay.sent();
        cold.push(pull(&client, &proxy.addr, digest, COLD_SIZE).await);
        cold_copies.push((relay.settled().await - before) as f64 / COLD_SIZE as f64);
    }

    let pid = proxy.pid();
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset peak RSS");
    let before = relay.sent();
    let pulls: Vec<_> = (0..8)
        .map(|_| {
            let (client, addr, digest) =
                (client.clone(), proxy.addr.clone(), blobs.concurrent.clone());
            tokio::spawn(async move { pull(&client, &addr, &digest, COLD_SIZE).await })
        })
        .collect();
    for p in pulls {
        p.await.expect("concurrent pull");
    }
    let concurrent_upstream_copies = (relay.settled().await - before) as f64 / COLD_SIZE as f64;
    Figures {
        warm_rps,
        warm_p99,
        cold_seconds: median(cold),
        cold_upstream_copies: median(cold_copies),
        concurrent_upstream_copies,
        concurrent_peak_rss_mib: status_mib(pid, "VmHWM:"),
    }
}

fn row(what: &str, ours: String, theirs: String, ratio: String) {
    println!("{what:<44} {ours:>16} {theirs:>16} {ratio:>22}");
}

fn verdict(ok: bool) -> &'static str {
    if ok { "ok" } else { "MISSED" }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    for tool in ["docker-registry", "wrk"] {
        assert!(
            have(tool),
            "{tool} is not installed: run scripts/bench-proxy.sh, which installs it"
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let upstream = docker_registry(d, "upstream", &d.join("upstream-root"), "");
    let client = reqwest::Client::new();
    let runs = conformance::env_or("BENCH_COLD_RUNS", 3);
    println!("pushing blobs to the upstream ...");
    let blobs = Blobs {
        warm: push_blob(
            &client,
            &upstream.addr,
            REPO,
            conformance::random_bytes(1, MIB),
        )
        .await,
        cold: futures::future::join_all((0..runs).map(|i| {
            push_blob(
                &client,
                &upstream.addr,
                REPO,
                conformance::random_bytes(10 + i, COLD_SIZE),
            )
        }))
        .await,
        concurrent: push_blob(
            &client,
            &upstream.addr,
            REPO,
            conformance::random_bytes(2, COLD_SIZE),
        )
        .await,
    };
    let relay = Relay::start(&upstream.addr).await;

    let mut direct = Vec::new();
    for digest in &blobs.cold {
        direct.push(pull(&client, &relay.addr, digest, COLD_SIZE).await);
    }
    let direct = median(direct);

    println!("measuring registry-proxy ...");
    let ours = {
        let storage = std::env::var("BENCH_STORAGE").unwrap_or_else(|_| {
            format!(
                "  filesystem:\n    rootdirectory: {}\n",
                d.join("ours-root").display()
            )
        });
        let proxy = registry_proxy(d, &storage, &relay.addr, None);
        measure(&proxy, &relay, &blobs).await
    };
    println!("measuring docker-registry as a proxy ...");
    let theirs = {
        let extra = format!("proxy:\n  remoteurl: http://{}\n", relay.addr);
        let proxy = docker_registry(d, "theirs", &d.join("theirs-root"), &extra);
        measure(&proxy, &relay, &blobs).await
    };
    print_figures(&ours, &theirs, direct);
}

fn print_figures(ours: &Figures, theirs: &Figures, direct: f64) {
    println!();
    row(
        "figure",
        "registry-proxy".into(),
        "docker-registry".into(),
        "ratio (target)".into(),
    );
    row(
        "warm 1 MiB blob GET, wrk -c64 (req/s)",
        format!("{:.0}", ours.warm_rps),
        format!("{:.0}", theirs.warm_rps),
        format!(
            "{:.2}x (>= 1.5) {}",
            ours.warm_rps / theirs.warm_rps,
            verdict(ours.warm_rps >= 1.5 * theirs.warm_rps)
        ),
    );
    row(
        "  p99 latency",
        ours.warm_p99.clone(),
        theirs.warm_p99.clone(),
        String::new(),
    );
    row(
        "cold 256 MiB blob pull (s; median)",
        format!("{:.2}", ours.cold_seconds),
        format!("{:.2}", theirs.cold_seconds),
        String::new(),
    );
    row(
        "  vs straight from the upstream",
        format!("{:.2}x", ours.cold_seconds / direct),
        format!("{:.2}x", theirs.cold_seconds / direct),
        format!(
            "(<= 1.1; direct {direct:.2} s) {}",
            verdict(ours.cold_seconds <= 1.1 * direct)
        ),
    );
    row(
        "  times the upstream sent the blob",
        format!("{:.2}", ours.cold_upstream_copies),
        format!("{:.2}", theirs.cold_upstream_copies),
        String::new(),
    );
    row(
        "8 concurrent cold pulls: upstream copies",
        format!("{:.2}", ours.concurrent_upstream_copies),
        format!("{:.2}", theirs.concurrent_upstream_copies),
        format!(
            "(== 1) {}",
            verdict((ours.concurrent_upstream_copies - 1.0).abs() < 0.01)
        ),
    );
    row(
        "  peak RSS during them (MiB)",
        format!("{:.1}", ours.concurrent_peak_rss_mib),
        format!("{:.1}", theirs.concurrent_peak_rss_mib),
        format!("(< 64) {}", verdict(ours.concurrent_peak_rss_mib < 64.0)),
    );
}
