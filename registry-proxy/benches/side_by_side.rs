//! registry-proxy side by side with the references that bound it, on this
//! machine, in one run, pinned so that the server under test does not
//! compete with its load:
//!
//! - CPU 0: the server under test, one at a time busy: registry-proxy (one
//!   runtime worker), Debian's `docker-registry` as a proxy of the same
//!   upstream, nginx (one worker, `sendfile on`) serving the same blob
//!   files, and a "null proxy" (this program in another mode: receive from
//!   the upstream, SHA-256, send; no storage), the floor of a cold pull;
//! - CPU 1: this program (the client, the byte-counting relay), `wrk`,
//!   `skopeo` and the upstream `docker-registry`.
//!
//! Warm figures (1 MiB and 16 KiB blobs, manifest by tag and by digest,
//! `wrk -c64`) run in `BENCH_ROUNDS` rounds, the servers' order rotating,
//! each ratio paired within its round; each prints the median with its
//! quartiles, and the server's CPU time, minor page faults and context
//! switches per request from `/proc`. Cold figures (a 256 MiB blob) rotate
//! the direct pull (the client as containerd pulls: hash, write, fsync),
//! the null proxy, registry-proxy and docker-registry over `BENCH_COLD_RUNS`
//! fresh blobs, each pull starting after a `sync` (no dirty pages left by
//! the one before), waiting for background fills to settle after each, and
//! print wall time and the server's CPU seconds per GiB. Then skopeo pulls
//! of a 5-layer image, manifests by tag against the upstream's log, and 8
//! concurrent cold pulls of one blob (upstream copies, peak RSS).
//!
//! Run with `scripts/bench-proxy.sh` (installs the tools).
//! `BENCH_ROUNDS` (5), `BENCH_WRK_SECONDS` (5) and `BENCH_COLD_RUNS` (3)
//! size it; `BENCH_STORAGE` replaces registry-proxy's `storage` block
//! (YAML, indented two spaces), e.g. to measure it on S3.

use registry_proxy_testkit as support;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use futures::StreamExt;
use registry_proxy::oci::Digest;
use sha2::{Digest as _, Sha256};
use support::{
    ProcStats, Relay, Server, docker_registry, fills_settled, free_port, have, median, pin,
    push_blob, push_image, quartiles, registry_proxy_env, start, start_env, status_mib, wrk_run,
};
use tokio::io::AsyncWriteExt;

const MIB: usize = 1 << 20;
const GIB: f64 = (1u64 << 30) as f64;
const COLD_SIZE: usize = 256 * MIB;
const SMALL_SIZE: usize = 16 << 10;
const REPO: &str = "bench/blobs";
/// The 5-layer image pulled with skopeo and asked for by tag.
const IMAGE: &str = "bench/five";
/// Set to the upstream's address, this program is the null proxy.
const NULL_PROXY_UPSTREAM: &str = "BENCH_NULL_PROXY_UPSTREAM";
/// Where the null proxy listens.
const NULL_PROXY_ADDR: &str = "BENCH_NULL_PROXY_ADDR";

/// GETs a blob through `addr` the way containerd pulls one: written to a
/// temporary file as it arrives, its digest checked, the file fsynced.
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
    file.sync_all().await.expect("client fsync");
    assert_eq!(got, size, "pull of {digest} from {addr} was short");
    assert_eq!(
        &Digest::from_hasher(hasher),
        digest,
        "pull of {digest} from {addr} has other bytes"
    );
    started.elapsed().as_secs_f64()
}

/// The null proxy: every GET is sent to the upstream and its answer
/// streamed back while hashed; a body whose digest is not the one in the
/// path ends in an error. Nothing is stored.
async fn null_proxy(upstream: String, addr: String) {
    let client = reqwest::Client::new();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let client = client.clone();
        let url = format!("http://{upstream}{uri}");
        async move {
            let expected = uri.path().rsplit('/').next().unwrap_or_default().to_owned();
            let answer = client.get(url).send().await.expect("upstream");
            let mut head = axum::http::Response::builder().status(answer.status().as_u16());
            if let Some(length) = answer.content_length() {
                head = head.header("content-length", length);
            }
            let body = futures::stream::unfold(
                (answer.bytes_stream(), Some(Sha256::new()), expected),
                |(mut body, mut hasher, expected)| async move {
                    match body.next().await {
                        Some(Ok(chunk)) => {
                            hasher.as_mut()?.update(&chunk);
                            Some((Ok(chunk), (body, hasher, expected)))
                        }
                        Some(Err(e)) => Some((Err(e.to_string()), (body, None, expected))),
                        None => {
                            let got = Digest::from_hasher(hasher.take()?).to_string();
                            (got != expected)
                                .then(|| (Err(format!("digest {got}")), (body, None, expected)))
                        }
                    }
                },
            );
            head.body(axum::body::Body::from_stream(body))
                .expect("response")
        }
    });
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    axum::serve(listener, app).await.expect("serve");
}

/// One server under test, on CPU 0.
struct Subject {
    label: &'static str,
    server: Server,
}

impl Subject {
    fn stats(&self) -> ProcStats {
        ProcStats::of(self.server.pid())
    }
}

/// One warm figure: a URL of a subject, measured with wrk each round.
struct Warm<'a> {
    label: String,
    subject: &'a Subject,
    url: String,
    headers: Vec<String>,
    samples: Vec<Sample>,
    /// The p99 latency of the last run, as wrk prints it.
    p99: String,
}

/// One wrk run of a warm figure, with the subject's counters.
#[derive(Clone, Copy)]
struct Sample {
    rps: f64,
    cpu_us: f64,
    faults: f64,
    switches: f64,
}

impl Warm<'_> {
    fn run(&mut self, seconds: u64) {
        let before = self.subject.stats();
        let headers: Vec<&str> = self.headers.iter().map(String::as_str).collect();
        let run = wrk_run(&self.url, seconds, &headers);
        let used = self.subject.stats().since(before);
        let n = run.requests.max(1) as f64;
        self.p99 = run.p99;
        self.samples.push(Sample {
            rps: run.rps,
            cpu_us: used.cpu_seconds * 1e6 / n,
            faults: used.minor_faults as f64 / n,
            switches: used.context_switches as f64 / n,
        });
    }

    fn field(&self, f: impl Fn(&Sample) -> f64) -> Vec<f64> {
        self.samples.iter().map(f).collect()
    }
}

/// A cold pull's figures: wall seconds, and the server's CPU seconds per
/// GiB (none for the direct pull).
#[derive(Default)]
struct Cold {
    wall: Vec<f64>,
    cpu_per_gib: Vec<f64>,
    upstream_copies: Vec<f64>,
}

fn spread(values: Vec<f64>, digits: usize) -> String {
    let [low, mid, high] = quartiles(values);
    format!("{mid:.digits$} [{low:.digits$}, {high:.digits$}]")
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

/// The per-round ratios of `a` to `b`'s rates.
fn paired(a: &Warm, b: &Warm) -> Vec<f64> {
    a.samples
        .iter()
        .zip(&b.samples)
        .map(|(a, b)| a.rps / b.rps)
        .collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if let Ok(upstream) = std::env::var(NULL_PROXY_UPSTREAM) {
        let addr = std::env::var(NULL_PROXY_ADDR).expect("BENCH_NULL_PROXY_ADDR");
        return null_proxy(upstream, addr).await;
    }
    for tool in ["docker-registry", "wrk", "nginx", "skopeo", "taskset"] {
        assert!(
            have(tool),
            "{tool} is not installed: run scripts/bench-proxy.sh, which installs it"
        );
    }
    // This process and all it starts (wrk, skopeo, the upstream) on CPU 1.
    pin(std::process::id(), "1");
    let rounds = conformance::env_or("BENCH_ROUNDS", 5) as usize;
    let seconds = conformance::env_or("BENCH_WRK_SECONDS", 5);
    let runs = conformance::env_or("BENCH_COLD_RUNS", 3) as usize;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let upstream = docker_registry(d, "upstream", &d.join("upstream-root"), "");
    let client = reqwest::Client::new();
    println!("pushing blobs to the upstream ...");
    let up = upstream.addr.as_str();
    let warm = push_blob(&client, up, REPO, conformance::random_bytes(1, MIB)).await;
    let small = push_blob(&client, up, REPO, conformance::random_bytes(3, SMALL_SIZE)).await;
    let mut cold = Vec::new();
    for i in 0..runs {
        let bytes = conformance::random_bytes(10 + i as u64, COLD_SIZE);
        cold.push(push_blob(&client, up, REPO, bytes).await);
    }
    let concurrent = push_blob(&client, up, REPO, conformance::random_bytes(2, COLD_SIZE)).await;
    let image = push_image(&client, up, IMAGE, 5, &[8 * MIB; 5]).await;
    let relay = Relay::start(up).await;

    let ours = Subject {
        label: "registry-proxy",
        server: ours(d, &relay.addr),
    };
    let theirs = Subject {
        label: "docker-registry",
        server: {
            let extra = format!("proxy:\n  remoteurl: http://{}\n", relay.addr);
            docker_registry(d, "theirs", &d.join("theirs-root"), &extra)
        },
    };
    pin(theirs.server.pid(), "0");
    let nginx = Subject {
        label: "nginx",
        server: nginx(d, &[(&warm, MIB, 1), (&small, SMALL_SIZE, 3)]),
    };
    let null = Subject {
        label: "null proxy",
        server: {
            let addr = format!("127.0.0.1:{}", free_port());
            let exe = std::env::current_exe().expect("this program");
            let env = [
                (NULL_PROXY_UPSTREAM, relay.addr.as_str()),
                (NULL_PROXY_ADDR, addr.as_str()),
                ("TOKIO_WORKER_THREADS", "1"),
            ];
            start_env(
                exe.to_str().expect("utf-8"),
                &[],
                "null-proxy",
                addr.clone(),
                d,
                &env,
            )
        },
    };
    pin(null.server.pid(), "0");

    // Warm both proxies.
    for subject in [&ours, &theirs] {
        pull(&client, &subject.server.addr, &warm, MIB).await;
        pull(&client, &subject.server.addr, &small, SMALL_SIZE).await;
        for reference in ["v1".to_owned(), image.manifest.to_string()] {
            let url = format!(
                "http://{}/v2/{IMAGE}/manifests/{reference}",
                subject.server.addr
            );
            let answer = client
                .get(url)
                .header("accept", registry_proxy::oci::MANIFEST_ACCEPT)
                .send()
                .await
                .expect("manifest");
            assert!(
                answer.status().is_success(),
                "manifest: {}",
                answer.status()
            );
        }
    }
    fills_settled(&ours.server).await;
    relay.settled().await;

    let accept = format!("Accept: {}", registry_proxy::oci::MANIFEST_ACCEPT);
    let blob_url =
        |s: &Subject, digest: &Digest| format!("http://{}/v2/{REPO}/blobs/{digest}", s.server.addr);
    let manifest_url = |s: &Subject, reference: &str| {
        format!("http://{}/v2/{IMAGE}/manifests/{reference}", s.server.addr)
    };
    let warm_figure = |label: &str, subject, url, headers: &[&str]| Warm {
        label: label.to_owned(),
        subject,
        url,
        headers: headers.iter().map(|h| (*h).to_owned()).collect(),
        samples: Vec::new(),
        p99: String::new(),
    };
    let by_digest = image.manifest.to_string();
    let mut figures = vec![
        warm_figure("1 MiB blob", &nginx, blob_url(&nginx, &warm), &[]),
        warm_figure("1 MiB blob", &ours, blob_url(&ours, &warm), &[]),
        warm_figure("1 MiB blob", &theirs, blob_url(&theirs, &warm), &[]),
        warm_figure("16 KiB blob", &nginx, blob_url(&nginx, &small), &[]),
        warm_figure("16 KiB blob", &ours, blob_url(&ours, &small), &[]),
        warm_figure(
            "manifest by tag",
            &ours,
            manifest_url(&ours, "v1"),
            &[&accept],
        ),
        warm_figure(
            "manifest by digest",
            &ours,
            manifest_url(&ours, &by_digest),
            &[&accept],
        ),
        warm_figure(
            "manifest by tag",
            &theirs,
            manifest_url(&theirs, "v1"),
            &[&accept],
        ),
    ];
    let log = d.join("upstream.log");
    let mut tag_requests = [0, 0];
    for round in 0..rounds {
        println!("warm round {} of {rounds} ...", round + 1);
        let n = figures.len();
        for i in 0..n {
            let figure = &mut figures[(i + round) % n];
            let before = upstream_tag_requests(&log);
            tokio::task::block_in_place(|| figure.run(seconds));
            if figure.label == "manifest by tag" {
                let slot = usize::from(figure.subject.label != ours.label);
                tag_requests[slot] += upstream_tag_requests(&log) - before;
            }
        }
    }

    // nginx is done: SIGTERM, so that its master takes the worker along
    // (a drop's SIGKILL of the master would leave the worker running).
    let _ = Command::new("kill")
        .args(["-TERM", &nginx.server.pid().to_string()])
        .status();

    let mut colds: Vec<(&str, Option<&Subject>, Cold)> = vec![
        ("direct (containerd-like)", None, Cold::default()),
        (null.label, Some(&null), Cold::default()),
        (ours.label, Some(&ours), Cold::default()),
        (theirs.label, Some(&theirs), Cold::default()),
    ];
    for round in 0..runs {
        println!("cold round {} of {runs} ...", round + 1);
        let n = colds.len();
        for i in 0..n {
            let (_, server, figures) = &mut colds[(i + round) % n];
            let addr = server.map_or(relay.addr.as_str(), |s| s.server.addr.as_str());
            // Every pull starts with no dirty pages: another pull's
            // writeback would otherwise land on whichever runs next.
            let synced = std::process::Command::new("sync").status();
            assert!(synced.is_ok_and(|s| s.success()), "sync failed");
            let before = (server.map(Subject::stats), relay.sent());
            figures
                .wall
                .push(pull(&client, addr, &cold[round], COLD_SIZE).await);
            // Wait for what the server still does (storing) to count it.
            if server.is_some_and(|s| s.label == ours.label) {
                fills_settled(&ours.server).await;
            }
            let sent = relay.settled().await - before.1;
            figures.upstream_copies.push(sent as f64 / COLD_SIZE as f64);
            if let (Some(s), Some(earlier)) = (server, before.0) {
                let used = s.stats().since(earlier);
                figures
                    .cpu_per_gib
                    .push(used.cpu_seconds * GIB / COLD_SIZE as f64);
            }
        }
    }

    let out = d.join("skopeo-out");
    let skopeo_direct = median((0..runs).map(|_| skopeo_pull(&relay.addr, &out)).collect());
    let skopeo = [&ours, &theirs].map(|s| {
        let cold = skopeo_pull(&s.server.addr, &out);
        let warm = median(
            (0..runs)
                .map(|_| skopeo_pull(&s.server.addr, &out))
                .collect(),
        );
        (cold, warm)
    });

    let mut concurrency = Vec::new();
    for subject in [&ours, &theirs] {
        let pid = subject.server.pid();
        let before_peak = status_mib(pid, "VmHWM:");
        std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset peak RSS");
        let before = relay.sent();
        let pulls: Vec<_> = (0..8)
            .map(|_| {
                let (client, addr) = (client.clone(), subject.server.addr.clone());
                tokio::spawn(async move { pull(&client, &addr, &concurrent, COLD_SIZE).await })
            })
            .collect();
        for p in pulls {
            p.await.expect("concurrent pull");
        }
        let copies = (relay.settled().await - before) as f64 / COLD_SIZE as f64;
        concurrency.push((before_peak, copies, status_mib(pid, "VmHWM:")));
    }

    print_warm(&figures, tag_requests, rounds, seconds);
    print_cold(&colds);
    println!();
    println!("skopeo copy of 5 x 8 MiB layers (s; direct {skopeo_direct:.2}, median)");
    for (subject, (cold, warm)) in [&ours, &theirs].iter().zip(skopeo) {
        println!(
            "  {:<16} cold {cold:.2}, warm {warm:.2} (median)",
            subject.label
        );
    }
    println!("8 concurrent cold pulls of one 256 MiB blob");
    for (subject, (peak, copies, during)) in [&ours, &theirs].iter().zip(concurrency) {
        println!(
            "  {:<16} upstream copies {copies:.2} (target 1: {}), peak RSS before {peak:.1} MiB, during {during:.1} MiB",
            subject.label,
            verdict((copies - 1.0).abs() < 0.01)
        );
    }
}

/// registry-proxy on fresh filesystem storage (or `BENCH_STORAGE`) in
/// front of `upstream`, one runtime worker, on CPU 0.
fn ours(dir: &Path, upstream: &str) -> Server {
    let dir = dir.join("ours");
    std::fs::create_dir_all(&dir).expect("dir");
    let storage = std::env::var("BENCH_STORAGE").unwrap_or_else(|_| {
        format!(
            "  filesystem:\n    rootdirectory: {}\n",
            dir.join("root").display()
        )
    });
    let sections = format!("storage:\n{storage}proxy:\n  remoteurl: http://{upstream}\n");
    let server = registry_proxy_env(&dir, &sections, &[("TOKIO_WORKER_THREADS", "1")]);
    pin(server.pid(), "0");
    server
}

/// nginx, one worker on CPU 0, `sendfile on`, serving `files` (digest,
/// size, seed of its bytes) at their blob URL paths.
fn nginx(dir: &Path, files: &[(&Digest, usize, u64)]) -> Server {
    let root = dir.join("nginx");
    for (digest, size, seed) in files {
        let file = root.join(format!("v2/{REPO}/blobs/{digest}"));
        std::fs::create_dir_all(file.parent().expect("parent")).expect("nginx root");
        std::fs::write(&file, conformance::random_bytes(*seed, *size)).expect("blob file");
    }
    let addr = format!("127.0.0.1:{}", free_port());
    let config = dir.join("nginx.conf");
    std::fs::write(
        &config,
        format!(
            "daemon off;\nuser root;\nworker_processes 1;\npid {0}/nginx.pid;\nerror_log {0}/nginx-error.log;\nevents {{}}\nhttp {{\n  access_log off;\n  sendfile on;\n  keepalive_requests 1000000;\n  client_body_temp_path {0}/tmp;\n  proxy_temp_path {0}/tmp;\n  fastcgi_temp_path {0}/tmp;\n  uwsgi_temp_path {0}/tmp;\n  scgi_temp_path {0}/tmp;\n  server {{\n    listen {addr};\n    root {1};\n  }}\n}}\n",
            dir.display(),
            root.display()
        ),
    )
    .expect("nginx.conf");
    // Started through taskset, so the worker it forks is on CPU 0 too.
    start(
        "taskset",
        &["-c", "0", "nginx", "-e", "stderr", "-c"],
        &config,
        addr,
        dir,
    )
}

/// `skopeo copy` of the 5-layer image from `addr` into a new directory,
/// in seconds.
fn skopeo_pull(addr: &str, out: &Path) -> f64 {
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
fn upstream_tag_requests(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches(&format!(" /v2/{IMAGE}/manifests/v1 HTTP/"))
        .count()
}

fn print_warm(figures: &[Warm], tag_requests: [usize; 2], rounds: usize, seconds: u64) {
    println!();
    println!(
        "warm, wrk -c64, {rounds} rounds of {seconds} s; median [quartiles]; the server's CPU, faults and switches per request"
    );
    println!(
        "{:<20} {:<16} {:>26} {:>22} {:>8} {:>9} {:>8}",
        "figure", "server", "req/s", "CPU us/req", "faults", "switches", "p99"
    );
    for f in figures {
        println!(
            "{:<20} {:<16} {:>26} {:>22} {:>8.3} {:>9.3} {:>8}",
            f.label,
            f.subject.label,
            spread(f.field(|s| s.rps), 0),
            spread(f.field(|s| s.cpu_us), 1),
            median(f.field(|s| s.faults)),
            median(f.field(|s| s.switches)),
            f.p99,
        );
    }
    let find = |label: &str, server: &str| {
        figures
            .iter()
            .find(|f| f.label == label && f.subject.label == server)
            .expect("figure")
    };
    let ratio = |what: &str, a: &Warm, b: &Warm, target: f64| {
        let ratios = paired(a, b);
        let [_, mid, _] = quartiles(ratios.clone());
        println!(
            "{what:<58} {} (target >= {target}: {})",
            spread(ratios, 3),
            verdict(mid >= target)
        );
    };
    println!();
    let (ours, theirs, nginx) = ("registry-proxy", "docker-registry", "nginx");
    ratio(
        "warm 1 MiB: registry-proxy / nginx",
        find("1 MiB blob", ours),
        find("1 MiB blob", nginx),
        0.9,
    );
    ratio(
        "warm 1 MiB: registry-proxy / docker-registry",
        find("1 MiB blob", ours),
        find("1 MiB blob", theirs),
        1.5,
    );
    ratio(
        "warm 16 KiB: registry-proxy / nginx",
        find("16 KiB blob", ours),
        find("16 KiB blob", nginx),
        0.8,
    );
    ratio(
        "manifest by tag / by digest (registry-proxy)",
        find("manifest by tag", ours),
        find("manifest by digest", ours),
        1.0,
    );
    println!(
        "upstream requests for the tag during the manifest runs: registry-proxy {}, docker-registry {}",
        tag_requests[0], tag_requests[1]
    );
}

fn print_cold(colds: &[(&str, Option<&Subject>, Cold)]) {
    println!();
    println!("cold 256 MiB pull (each a fresh blob); median [quartiles]");
    let direct = median(colds[0].2.wall.clone());
    let null_cpu = median(colds[1].2.cpu_per_gib.clone());
    for (label, _, cold) in colds {
        let cpu = if cold.cpu_per_gib.is_empty() {
            String::from("-")
        } else {
            spread(cold.cpu_per_gib.clone(), 2)
        };
        println!(
            "  {label:<26} wall {} s = {:.2}x direct; server CPU {cpu} s/GiB = {:.2}x null; upstream copies {:.2}",
            spread(cold.wall.clone(), 2),
            median(cold.wall.clone()) / direct,
            if cold.cpu_per_gib.is_empty() {
                0.0
            } else {
                median(cold.cpu_per_gib.clone()) / null_cpu
            },
            median(cold.upstream_copies.clone()),
        );
    }
    let ours = &colds[2].2;
    let wall = median(ours.wall.clone()) / direct;
    let cpu = median(ours.cpu_per_gib.clone()) / null_cpu;
    println!(
        "registry-proxy cold: wall {wall:.2}x direct (target <= 1.15: {}), CPU {cpu:.2}x the null proxy's (target <= 1.25: {})",
        verdict(wall <= 1.15),
        verdict(cpu <= 1.25)
    );
}
