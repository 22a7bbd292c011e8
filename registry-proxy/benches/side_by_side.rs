//! registry-proxy side by side with Debian's `docker-registry` configured as a
//! proxy of the same upstream, on this machine, in one run:
//!
//! - warm 1 MiB blob GETs with `wrk -c64`;
//! - one cold 256 MiB blob pull, against pulling it straight from the upstream
//!   (the client writes each blob to a file and checks its digest, as
//!   skopeo and containerd do);
//! - 8 concurrent cold pulls of one 256 MiB blob: how many times the upstream
//!   sent its bytes, and the proxy's peak RSS meanwhile;
//! - `skopeo copy` of a 5-layer image (5 x 8 MiB), cold then warm, against
//!   pulling it straight from the upstream;
//! - manifest GETs by tag with `wrk -c64`, and how many requests for the
//!   tag reached the upstream meanwhile (from the upstream's log);
//! - the warm blob served as a static file by nginx, the machine's limit.
//!
//! The upstream is a `docker-registry` behind a byte-counting TCP relay run
//! by this program. Run with `scripts/bench-proxy.sh` (installs the tools).
//! `BENCH_COLD_RUNS` (default 3) and `BENCH_WRK_SECONDS` (default 10) tune it;
//! `BENCH_STORAGE` replaces registry-proxy's `storage` block (YAML, indented
//! two spaces), e.g. to measure it on S3.

use registry_proxy_testkit as support;

use std::process::Command;
use std::time::Instant;

use futures::StreamExt;
use registry_proxy::oci::Digest;
use sha2::{Digest as _, Sha256};
use support::{
    Relay, Server, docker_registry, have, median, push_blob, push_image, registry_proxy, start,
    status_mib, wrk,
};
use tokio::io::AsyncWriteExt;

const MIB: usize = 1 << 20;
const COLD_SIZE: usize = 256 * MIB;
const REPO: &str = "bench/blobs";
/// The 5-layer image pulled with skopeo and asked for by tag.
const IMAGE: &str = "bench/five";

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

/// The figures of one proxy.
struct Figures {
    warm_rps: f64,
    warm_p99: String,
    manifest_rps: f64,
    manifest_upstream_requests: usize,
    skopeo_cold: f64,
    skopeo_warm: f64,
    peak_rss_mib: f64,
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

/// The URL path of the warm blob.
fn warm_path(blobs: &Blobs) -> String {
    format!("/v2/{REPO}/blobs/{}", blobs.warm)
}

/// `skopeo copy` of the 5-layer image from `addr` into a new directory,
/// in seconds.
fn skopeo_pull(addr: &str, out: &std::path::Path) -> f64 {
    let _ = std::fs::remove_dir_all(out);
    let started = Instant::now();
    let status = Command::new("skopeo")
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{addr}/{IMAGE}:v1"))
        .arg(format!("dir:{}", out.display()))
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run skopeo");
    assert!(status.success(), "skopeo copy from {addr} failed");
    started.elapsed().as_secs_f64()
}

/// Requests for the image's tag (GET or HEAD) in the upstream's access
/// log so far.
fn upstream_tag_requests(log: &std::path::Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches(&format!(" /v2/{IMAGE}/manifests/v1 HTTP/"))
        .count()
}

async fn measure(proxy: &Server, relay: &Relay, blobs: &Blobs, dir: &std::path::Path) -> Figures {
    let client = reqwest::Client::new();
    let seconds = conformance::env_or("BENCH_WRK_SECONDS", 10);
    pull(&client, &proxy.addr, &blobs.warm, MIB).await;
    relay.settled().await;
    let url = format!("http://{}{}", proxy.addr, warm_path(blobs));
    let (warm_rps, warm_p99) = tokio::task::block_in_place(|| wrk(&url, seconds, &[]));

    let mut cold = Vec::new();
    let mut cold_copies = Vec::new();
    for digest in &blobs.cold {
        let before = relay.sent();
        cold.push(pull(&client, &proxy.addr, digest, COLD_SIZE).await);
        cold_copies.push((relay.settled().await - before) as f64 / COLD_SIZE as f64);
    }

    let out = dir.join("skopeo-out");
    let skopeo_cold = tokio::task::block_in_place(|| skopeo_pull(&proxy.addr, &out));
    let runs = conformance::env_or("BENCH_COLD_RUNS", 3);
    let skopeo_warm = median(
        (0..runs)
            .map(|_| tokio::task::block_in_place(|| skopeo_pull(&proxy.addr, &out)))
            .collect(),
    );
    let log = dir.join("upstream.log");
    let tag_requests = upstream_tag_requests(&log);
    let url = format!("http://{}/v2/{IMAGE}/manifests/v1", proxy.addr);
    let accept = format!("Accept: {}", registry_proxy::oci::MANIFEST_ACCEPT);
    let (manifest_rps, _) = tokio::task::block_in_place(|| wrk(&url, seconds, &[&accept]));
    let manifest_upstream_requests = upstream_tag_requests(&log) - tag_requests;

    let pid = proxy.pid();
    let peak_rss_mib = status_mib(pid, "VmHWM:");
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset peak RSS");
    let before = relay.sent();
    let pulls: Vec<_> = (0..8)
        .map(|_| {
            let (client, addr, digest) = (client.clone(), proxy.addr.clone(), blobs.concurrent);
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
        manifest_rps,
        manifest_upstream_requests,
        skopeo_cold,
        skopeo_warm,
        peak_rss_mib,
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
    for tool in ["docker-registry", "wrk", "nginx", "skopeo"] {
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
    push_image(&client, &upstream.addr, IMAGE, 5, &[8 * MIB; 5]).await;
    let relay = Relay::start(&upstream.addr).await;

    let mut direct = Vec::new();
    for digest in &blobs.cold {
        direct.push(pull(&client, &relay.addr, digest, COLD_SIZE).await);
    }
    let direct = median(direct);
    let skopeo_direct = median(
        (0..runs)
            .map(|_| {
                tokio::task::block_in_place(|| skopeo_pull(&relay.addr, &d.join("skopeo-direct")))
            })
            .collect(),
    );
    let nginx = nginx_warm(d, &blobs).await;

    println!("measuring registry-proxy ...");
    let ours = {
        let storage = std::env::var("BENCH_STORAGE").unwrap_or_else(|_| {
            format!(
                "  filesystem:\n    rootdirectory: {}\n",
                d.join("ours-root").display()
            )
        });
        let proxy = registry_proxy(d, &storage, &relay.addr, None);
        measure(&proxy, &relay, &blobs, d).await
    };
    println!("measuring docker-registry as a proxy ...");
    let theirs = {
        let extra = format!("proxy:\n  remoteurl: http://{}\n", relay.addr);
        let proxy = docker_registry(d, "theirs", &d.join("theirs-root"), &extra);
        measure(&proxy, &relay, &blobs, d).await
    };
    print_figures(&ours, &theirs, direct, nginx, skopeo_direct);
}

/// nginx serving the warm blob as a static file at the same URL path: what
/// this machine can serve at all. Returns its `wrk` rate.
async fn nginx_warm(dir: &std::path::Path, blobs: &Blobs) -> f64 {
    println!("measuring nginx on the same blob file ...");
    let root = dir.join("nginx");
    let file = root.join(warm_path(blobs).trim_start_matches('/'));
    std::fs::create_dir_all(file.parent().expect("parent")).expect("nginx root");
    std::fs::write(&file, conformance::random_bytes(1, MIB)).expect("blob file");
    let addr = format!("127.0.0.1:{}", support::free_port());
    let config = dir.join("nginx.conf");
    std::fs::write(
        &config,
        format!(
            "daemon off;\nuser root;\nworker_processes auto;\npid {0}/nginx.pid;\nerror_log {0}/nginx-error.log;\nevents {{}}\nhttp {{\n  access_log off;\n  sendfile on;\n  client_body_temp_path {0}/tmp;\n  proxy_temp_path {0}/tmp;\n  fastcgi_temp_path {0}/tmp;\n  uwsgi_temp_path {0}/tmp;\n  scgi_temp_path {0}/tmp;\n  server {{\n    listen {addr};\n    root {1};\n  }}\n}}\n",
            dir.display(),
            root.display()
        ),
    )
    .expect("nginx.conf");
    let nginx = start("nginx", &["-e", "stderr", "-c"], &config, addr.clone(), dir);
    let url = format!("http://{addr}{}", warm_path(blobs));
    let seconds = conformance::env_or("BENCH_WRK_SECONDS", 10);
    let (rps, _) = tokio::task::block_in_place(|| wrk(&url, seconds, &[]));
    // SIGTERM, so that the master takes its workers along (a SIGKILL of
    // the master, as a drop does, leaves them running).
    let mut nginx = nginx;
    let _ = Command::new("kill")
        .args(["-TERM", &nginx.pid().to_string()])
        .status();
    nginx.wait_exit(std::time::Duration::from_secs(10));
    rps
}

fn print_figures(ours: &Figures, theirs: &Figures, direct: f64, nginx: f64, skopeo_direct: f64) {
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
        "  share of nginx on the same file",
        format!("{:.2}", ours.warm_rps / nginx),
        format!("{:.2}", theirs.warm_rps / nginx),
        format!("(nginx {nginx:.0} req/s)"),
    );
    row(
        "manifest by tag, wrk -c64 (req/s)",
        format!("{:.0}", ours.manifest_rps),
        format!("{:.0}", theirs.manifest_rps),
        format!("{:.2}x", ours.manifest_rps / theirs.manifest_rps),
    );
    row(
        "  upstream requests for the tag meanwhile",
        ours.manifest_upstream_requests.to_string(),
        theirs.manifest_upstream_requests.to_string(),
        String::new(),
    );
    row(
        "skopeo pull, 5 x 8 MiB layers, cold (s)",
        format!("{:.2}", ours.skopeo_cold),
        format!("{:.2}", theirs.skopeo_cold),
        format!(
            "{:.2}x (direct {skopeo_direct:.2} s, median)",
            ours.skopeo_cold / theirs.skopeo_cold
        ),
    );
    row(
        "  warm (s; median)",
        format!("{:.2}", ours.skopeo_warm),
        format!("{:.2}", theirs.skopeo_warm),
        format!("{:.2}x", ours.skopeo_warm / theirs.skopeo_warm),
    );
    row(
        "peak RSS up to here (MiB)",
        format!("{:.1}", ours.peak_rss_mib),
        format!("{:.1}", theirs.peak_rss_mib),
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
