//! What coordination through etcd costs. On one S3 bucket (Garage) in
//! front of one Debian `docker-registry`:
//! - the etcd requests a burst of warm blob hits makes, counted from etcd's
//!   own metrics, against an idle window as long (the leader's own
//!   periodic reads);
//! - warm 256 KiB blob throughput (above the size kept in memory, so hits
//!   read storage) of three replicas (one wrk each, together) against one
//!   replica (one wrk); the target is at least 0.95x. Every replica keeps
//!   a local tier (`proxy.localtier`; `BENCH_TIER=0` runs without), filled
//!   before the rounds. A control runs three proxies without etcd, so what
//!   three processes sharing two cores cost shows apart from what
//!   coordination costs, and a proxy on filesystem storage gives the
//!   reference for one replica on S3 (target at least 0.9x). Rounds rotate
//!   the order of the four setups, and ratios pair each with the one
//!   replica of its own round;
//! - the median time to first byte of cold misses through a replica with
//!   etcd against a single node without it (target: at most 10 ms more).
//!
//! Every proxy runs one runtime worker (`TOKIO_WORKER_THREADS=1`; the
//! environment variable `BENCH_WORKERS` changes it): two cores are shared
//! by three replicas, Garage and wrk, so one worker is a replica's share,
//! as a CPU limit would size it.
//!
//! Run with `scripts/bench-cluster.sh`.

use registry_proxy_testkit as support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use driver_s3::S3Config;
use registry_proxy::oci::Digest;
use support::{Server, docker_registry, etcd, have, median, registry_proxy_env, s3_storage_yaml};

/// Paired rounds of the throughput comparison unless `BENCH_ROUNDS` says.
const ROUNDS: usize = 15;
const WRK_SECONDS: u64 = 3;
const COLD: usize = 15;
/// The warm blob's size: above the 64 KiB that blobs are kept in memory
/// up to.
const WARM_SIZE: usize = 256 << 10;

/// Whether the proxies keep a local tier (unless `BENCH_TIER=0`).
fn tiered() -> bool {
    std::env::var("BENCH_TIER").map_or(true, |v| v != "0")
}

/// Runtime workers of every proxy (`BENCH_WORKERS`, else one).
fn workers() -> String {
    std::env::var("BENCH_WORKERS").unwrap_or_else(|_| "1".to_owned())
}

/// Paired rounds of the throughput comparison (`BENCH_ROUNDS`, else
/// [`ROUNDS`]).
fn rounds() -> usize {
    std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(ROUNDS)
}

/// The median of `ratios` with its quartiles, as printed.
fn quartiles(ratios: Vec<f64>) -> String {
    let [low, median, high] = support::quartiles(ratios);
    format!("{median:.3} [{low:.3}, {high:.3}]")
}

/// A replica (or, without `etcd`, a single node) on bucket root `root`.
fn proxy(
    dir: &Path,
    name: &str,
    s3: &S3Config,
    root: &str,
    upstream: &str,
    etcd: Option<&str>,
) -> Server {
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir).expect("dir");
    let s3 = S3Config {
        root_directory: root.to_owned(),
        ..s3.clone()
    };
    let coordination = etcd.map_or_else(String::new, |addr| {
        format!(
            "coordination:\n  etcd:\n    endpoints: [http://{addr}]\n    prefix: /bench-{root}\n"
        )
    });
    let tier = if tiered() {
        format!(
            "  localtier:\n    rootdirectory: {}\n    maxsize: 1GiB\n",
            dir.join("tier").display()
        )
    } else {
        String::new()
    };
    registry_proxy_env(
        &dir,
        &format!(
            "log:\n  level: warn\nstorage:\n{}proxy:\n  remoteurl: http://{upstream}\n{tier}{coordination}",
            s3_storage_yaml(&s3, &[])
        ),
        &[("TOKIO_WORKER_THREADS", &workers())],
    )
}

/// A proxy on filesystem storage in `dir/name`: the reference for one
/// replica on S3.
fn filesystem_proxy(dir: &Path, name: &str, upstream: &str) -> Server {
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir).expect("dir");
    registry_proxy_env(
        &dir,
        &format!(
            "log:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nproxy:\n  remoteurl: http://{upstream}\n",
            dir.join("root").display()
        ),
        &[("TOKIO_WORKER_THREADS", &workers())],
    )
}

/// etcd requests so far (every gRPC message received but lease
/// keep-alives, which a session sends on a timer), and the keep-alives.
async fn etcd_requests(etcd: &Server) -> (f64, f64) {
    let text = reqwest::get(format!("http://{}/metrics", etcd.addr))
        .await
        .expect("etcd metrics")
        .text()
        .await
        .expect("metrics text");
    let (mut requests, mut keepalives) = (0.0, 0.0);
    for line in text
        .lines()
        .filter(|l| l.starts_with("grpc_server_msg_received_total{"))
    {
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        if line.contains("grpc_method=\"LeaseKeepAlive\"") {
            keepalives += value;
        } else {
            requests += value;
        }
    }
    (requests, keepalives)
}

/// Runs wrk against every URL at once (`connections` each, one thread
/// each) for `seconds`; the summed rate.
fn wrk_together(urls: &[String], connections: usize, seconds: u64) -> f64 {
    let children: Vec<_> = urls
        .iter()
        .map(|url| {
            Command::new("wrk")
                .args([
                    "-t1",
                    &format!("-c{connections}"),
                    &format!("-d{seconds}s"),
                    url,
                ])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("run wrk")
        })
        .collect();
    children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().expect("wrk output");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(!text.contains("Non-2xx"), "wrk saw failed requests: {text}");
            text.lines()
                .find_map(|l| l.strip_prefix("Requests/sec:"))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or_else(|| panic!("wrk printed no rate: {text}"))
        })
        .sum()
}

/// Time to the first body byte of GET `url`, in milliseconds.
async fn ttfb(client: &reqwest::Client, url: &str) -> f64 {
    let started = Instant::now();
    let mut response = client.get(url).send().await.expect("GET");
    assert!(
        response.status().is_success(),
        "{url}: {}",
        response.status()
    );
    let _ = response.chunk().await.expect("first chunk");
    let took = started.elapsed().as_secs_f64() * 1000.0;
    while response.chunk().await.expect("body").is_some() {}
    took
}

/// The URL of blob `warm` on each of `proxies`, each fetched until it is
/// a hit of the proxy's own (its local tier's, where it has one).
async fn warmed(client: &reqwest::Client, proxies: &[Server], warm: &Digest) -> Vec<String> {
    let urls: Vec<String> = proxies
        .iter()
        .map(|p| format!("http://{}/v2/bench/warm/blobs/{warm}", p.addr))
        .collect();
    for (url, proxy) in urls.iter().zip(proxies) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            ttfb(client, url).await;
            let copies = support::debug_text(proxy, "/metrics").await;
            // A tier hit goes out with sendfile; without a tier, the
            // second fetch is a hit of storage.
            let local = copies.lines().any(|l| {
                l.starts_with("registry_proxy_zero_copy_bytes_total{") && !l.ends_with(" 0")
            });
            if local || !tiered() || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    urls
}

#[tokio::main]
async fn main() {
    for tool in ["docker-registry", "etcd", "wrk"] {
        assert!(
            have(tool),
            "{tool} is needed (scripts/bench-cluster.sh installs it)"
        );
    }
    let s3 = S3Config::from_env()
        .expect("S3 variables")
        .expect("S3_BUCKET is needed (scripts/bench-cluster.sh starts Garage)");
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let upstream = docker_registry(
        dir,
        "upstream",
        &dir.join("upstream-data"),
        "log:\n  level: error\n  accesslog:\n    disabled: true\n",
    );
    let etcd = etcd(dir);
    let client = reqwest::Client::new();
    let run = format!("{:08x}", rand::random::<u32>());
    let warm = support::push_blob(
        &client,
        &upstream.addr,
        "bench/warm",
        conformance::random_bytes(1, WARM_SIZE),
    )
    .await;
    let mut cold: Vec<Digest> = Vec::new();
    for i in 0..2 * COLD {
        cold.push(
            support::push_blob(
                &client,
                &upstream.addr,
                "bench/cold",
                conformance::random_bytes(100 + i as u64, 256 << 10),
            )
            .await,
        );
    }

    // Cold misses: single node without etcd against a replica with it.
    let single = proxy(
        dir,
        "single",
        &s3,
        &format!("single-{run}"),
        &upstream.addr,
        None,
    );
    let coordinated = proxy(
        dir,
        "coordinated",
        &s3,
        &format!("coord-{run}"),
        &upstream.addr,
        Some(&etcd.addr),
    );
    let (mut plain_ms, mut etcd_ms) = (Vec::new(), Vec::new());
    for pair in cold.chunks(2) {
        plain_ms.push(
            ttfb(
                &client,
                &format!("http://{}/v2/bench/cold/blobs/{}", single.addr, pair[0]),
            )
            .await,
        );
        etcd_ms.push(
            ttfb(
                &client,
                &format!(
                    "http://{}/v2/bench/cold/blobs/{}",
                    coordinated.addr, pair[1]
                ),
            )
            .await,
        );
    }
    drop((single, coordinated));
    let (plain, with_etcd) = (median(plain_ms), median(etcd_ms));
    println!(
        "cold miss, 256 KiB, median time to first byte over {COLD}: single node {plain:.1} ms, with etcd {with_etcd:.1} ms: etcd adds {:.1} ms (target <= 10)",
        with_etcd - plain
    );

    // Three replicas on one bucket.
    let root = format!("replicas-{run}");
    let replicas: Vec<Server> = (0..3)
        .map(|i| {
            proxy(
                dir,
                &format!("replica-{i}"),
                &s3,
                &root,
                &upstream.addr,
                Some(&etcd.addr),
            )
        })
        .collect();
    let urls = warmed(&client, &replicas, &warm).await;
    // Let the first accesses' writes and flushes settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (before, keep_before) = etcd_requests(&etcd).await;
    let rate = wrk_together(&urls[1..2], 32, WRK_SECONDS);
    let (after, keep_after) = etcd_requests(&etcd).await;
    tokio::time::sleep(Duration::from_secs(WRK_SECONDS)).await;
    let (idle, _) = etcd_requests(&etcd).await;
    println!(
        "warm hits: {:.0} in {WRK_SECONDS} s; etcd requests meanwhile {} (idle window as long: {}; session keep-alives {}): {} attributable to warm hits",
        rate * WRK_SECONDS as f64,
        after - before,
        idle - after,
        keep_after - keep_before,
        (after - before) - (idle - after)
    );

    // The control: three proxies without coordination, each on its own
    // root, so what three processes sharing the cores cost shows apart
    // from what coordination costs.
    let solos: Vec<Server> = (0..3)
        .map(|i| {
            let name = format!("solo-{i}");
            let root = format!("{name}-{run}");
            proxy(dir, &name, &s3, &root, &upstream.addr, None)
        })
        .collect();
    let solo_urls = warmed(&client, &solos, &warm).await;
    let filesystem = [filesystem_proxy(dir, "filesystem", &upstream.addr)];
    let fs_urls = warmed(&client, &filesystem, &warm).await;
    // Rounds rotate the order of the four setups; each ratio is paired
    // with the baseline of its own round.
    let setups: [(&[String], usize); 4] = [
        (&urls[..1], 64),
        (&urls, 21),
        (&solo_urls, 21),
        (&fs_urls, 64),
    ];
    let mut rates = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    let (mut coordinated, mut uncoordinated, mut on_s3) = (Vec::new(), Vec::new(), Vec::new());
    let rounds = rounds();
    for round in 0..rounds {
        let mut rate = [0.0; 4];
        for k in 0..4 {
            let i = (round + k) % 4;
            rate[i] = wrk_together(setups[i].0, setups[i].1, WRK_SECONDS);
            rates[i].push(rate[i]);
        }
        coordinated.push(rate[1] / rate[0]);
        uncoordinated.push(rate[2] / rate[0]);
        on_s3.push(rate[0] / rate[3]);
    }
    let [one, three, solo, fs] = rates.map(median);
    println!(
        "runtime workers per proxy: {}; local tier: {}",
        workers(),
        if tiered() { "on" } else { "off" }
    );
    println!(
        "warm 256 KiB blob: one replica {one:.0} req/s, three replicas {three:.0} req/s; ratio {} (median [quartiles] of {rounds} paired rounds; target >= 0.95)",
        quartiles(coordinated)
    );
    println!(
        "control, three proxies without etcd on their own roots: {solo:.0} req/s; ratio {}",
        quartiles(uncoordinated)
    );
    println!(
        "one replica on S3 / one proxy on filesystem storage ({fs:.0} req/s): {} (target >= 0.9)",
        quartiles(on_s3)
    );
}
