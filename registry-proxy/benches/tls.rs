//! What TLS costs on warm hits: the `registry-proxy` binary serving a
//! cached 1 MiB blob over https and over plain HTTP, against nginx
//! (`sendfile on`, one process per core) serving the same file with the
//! same certificate over https and over plain HTTP, with `wrk -c64`. Rounds
//! are interleaved (proxy https, nginx https, proxy http, nginx http, ...)
//! so that a slow moment of the machine hits all four; medians are
//! printed with the ratios.
//!
//! Run with `scripts/bench-tls.sh` (installs the tools). `BENCH_ROUNDS`
//! (default 3) and `BENCH_WRK_SECONDS` (default 5) tune it.

use registry_proxy_testkit as support;

use std::process::Command;

use support::{
    docker_registry, free_port, have, median, push_blob, registry_proxy_http, start, wrk,
};

const MIB: usize = 1 << 20;
const REPO: &str = "bench/tls";

#[tokio::main]
async fn main() {
    for tool in ["docker-registry", "wrk", "nginx"] {
        assert!(
            have(tool),
            "{tool} is not installed: run scripts/bench-tls.sh, which installs it"
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let upstream = docker_registry(d, "upstream", &d.join("upstream-root"), "");
    let blob = conformance::random_bytes(1, MIB);
    let digest = push_blob(&reqwest::Client::new(), &upstream.addr, REPO, blob.clone()).await;
    let path = format!("/v2/{REPO}/blobs/{digest}");
    let ca = support::tls::TestCa::new("bench CA");
    let cert = ca.issue(&["127.0.0.1"], d, "server");

    let proxy = |name: &str, http: String| {
        let dir = d.join(name);
        std::fs::create_dir_all(&dir).expect("dir");
        let sections = format!(
            "storage:\n  filesystem:\n    rootdirectory: {}\nproxy:\n  remoteurl: http://{}\n",
            dir.join("root").display(),
            upstream.addr
        );
        let addr = format!("127.0.0.1:{}", free_port());
        registry_proxy_http(&dir, &addr, &http, &sections, &[])
    };
    let tls = format!(
        "  tls:\n    certificate: {}\n    key: {}\n",
        cert.cert.display(),
        cert.key.display()
    );
    let ours_tls = proxy("ours-tls", tls);
    let ours_plain = proxy("ours-plain", String::new());
    // Warm both: one pull each fills and stores the blob.
    let insecure = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .expect("client");
    for url in [
        format!("https://{}{path}", ours_tls.addr),
        format!("http://{}{path}", ours_plain.addr),
    ] {
        let got = insecure
            .get(&url)
            .send()
            .await
            .expect("warm")
            .bytes()
            .await
            .expect("body");
        assert_eq!(got.len(), MIB, "{url}");
    }
    support::fills_settled(&ours_tls).await;
    support::fills_settled(&ours_plain).await;

    // nginx on the same file, the same certificate, https and http.
    let root = d.join("nginx");
    let file = root.join(path.trim_start_matches('/'));
    std::fs::create_dir_all(file.parent().expect("parent")).expect("nginx root");
    std::fs::write(&file, &blob).expect("blob file");
    let (nginx_tls, nginx_plain) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let config = d.join("nginx.conf");
    std::fs::write(
        &config,
        format!(
            "daemon off;\nuser root;\nworker_processes auto;\npid {0}/nginx.pid;\nerror_log {0}/nginx-error.log;\nevents {{}}\nhttp {{\n  access_log off;\n  sendfile on;\n  client_body_temp_path {0}/tmp;\n  proxy_temp_path {0}/tmp;\n  fastcgi_temp_path {0}/tmp;\n  uwsgi_temp_path {0}/tmp;\n  scgi_temp_path {0}/tmp;\n  server {{\n    listen {nginx_tls} ssl;\n    listen {nginx_plain};\n    ssl_certificate {2};\n    ssl_certificate_key {3};\n    ssl_protocols TLSv1.2 TLSv1.3;\n    root {1};\n  }}\n}}\n",
            d.display(),
            root.display(),
            cert.cert.display(),
            cert.key.display(),
        ),
    )
    .expect("nginx.conf");
    let nginx = start(
        "nginx",
        &["-e", "stderr", "-c"],
        &config,
        nginx_plain.clone(),
        d,
    );

    let targets = [
        (
            "registry-proxy https",
            format!("https://{}{path}", ours_tls.addr),
        ),
        ("nginx https", format!("https://{nginx_tls}{path}")),
        (
            "registry-proxy http",
            format!("http://{}{path}", ours_plain.addr),
        ),
        ("nginx http", format!("http://{nginx_plain}{path}")),
    ];
    let rounds = conformance::env_or("BENCH_ROUNDS", 3);
    let seconds = conformance::env_or("BENCH_WRK_SECONDS", 5);
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    for round in 1..=rounds {
        for (i, (name, url)) in targets.iter().enumerate() {
            let (rps, _) = wrk(url, seconds, &[]);
            println!("round {round}: {name}: {rps:.0} req/s");
            rates[i].push(rps);
        }
    }
    let medians: Vec<f64> = rates.into_iter().map(median).collect();
    println!();
    println!("warm 1 MiB blob GET, wrk -c64, median of {rounds} rounds of {seconds} s:");
    for ((name, _), rps) in targets.iter().zip(&medians) {
        println!("  {name:<22} {rps:>8.0} req/s");
    }
    println!(
        "  registry-proxy https / nginx https: {:.2} (target >= 0.70)",
        medians[0] / medians[1]
    );
    println!(
        "  registry-proxy http / nginx http:   {:.2}",
        medians[2] / medians[3]
    );
    println!(
        "  https / http, registry-proxy: {:.2}; nginx: {:.2}",
        medians[0] / medians[2],
        medians[1] / medians[3]
    );
    // SIGTERM, so that the master takes its workers along.
    let mut nginx = nginx;
    let _ = Command::new("kill")
        .args(["-TERM", &nginx.pid().to_string()])
        .status();
    nginx.wait_exit(std::time::Duration::from_secs(10));
}
