//! The Grafana dashboard (`grafana/registry-proxy.json`) against real
//! metrics: Debian's Prometheus scrapes the real binary every second while
//! the test pulls images through it (misses, hits, evictions under a small
//! byte budget, a denied repository, a missing tag, and stale answers once
//! the upstream is stopped). Every query of every panel must be valid
//! PromQL and every panel must show data. With
//! `DASHBOARD_SCREENSHOT=path.png` (and `DASHBOARD_SECONDS` of load, 8 by
//! default) the dashboard is also rendered from Prometheus by
//! `scripts/render-dashboard.py` and screenshot by headless Chromium (the
//! README's picture). Skipped without `docker-registry` and `prometheus`
//! unless `REQUIRE_E2E=1`.

// Shared by the test binaries and the side-by-side benchmark; each uses a part.
use registry_proxy_testkit as support;

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use support::{free_port, have, pull_image, push_image, registry_proxy_with, start_named};

/// The repository's root.
fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_owned()
}

/// `expr` with Grafana's variables as Grafana fills them for "All" and a
/// short range.
fn expand(expr: &str, range_secs: u64) -> String {
    expr.replace("$namespace", ".*")
        .replace("$__rate_interval", "5s")
        .replace("$__range", &format!("{range_secs}s"))
}

/// Prometheus's answer to the instant query `expr`: its result series.
async fn query(prometheus: &str, expr: &str) -> Vec<serde_json::Value> {
    let answer: serde_json::Value = reqwest::Client::new()
        .get(format!("http://{prometheus}/api/v1/query"))
        .query(&[("query", expr)])
        .send()
        .await
        .expect("query")
        .json()
        .await
        .expect("json");
    assert_eq!(answer["status"], "success", "{expr}: {answer}");
    answer["data"]["result"].as_array().expect("result").clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_of_the_dashboard_shows_real_metrics() {
    let test = "every_panel_of_the_dashboard_shows_real_metrics";
    let Some((dir, mut upstream)) = support::upstream_for(
        test,
        have("docker-registry") && have("prometheus"),
        "docker-registry or prometheus is not installed",
    ) else {
        return;
    };
    let d = dir.path();
    let client = reqwest::Client::new();
    let mut images = Vec::new();
    for seed in 0..4 {
        let repo = format!("team/app{seed}");
        images.push(push_image(&client, &upstream.addr, &repo, 80 + seed, &[256 << 10]).await);
    }
    let proxy = tokio::task::block_in_place(|| {
        registry_proxy_with(
            d,
            &format!(
                "storage:\n  filesystem:\n    rootdirectory: {}\nproxy:\n  maxsize: 800KiB\n  tagfreshness: 0s\n  upstreams:\n    - namespace: hub.test\n      remoteurl: http://{}\n      default: true\n      repositories:\n        deny: [\"secret/**\"]\n",
                d.join("root").display(),
                upstream.addr
            ),
        )
    });
    let debug = proxy.debug.clone().expect("debug listener");
    let prometheus_addr = format!("127.0.0.1:{}", free_port());
    std::fs::write(
        d.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: registry-proxy\n    static_configs:\n      - targets: ['{debug}']\n"
        ),
    )
    .expect("prometheus config");
    let _prometheus = tokio::task::block_in_place(|| {
        start_named(
            "prometheus",
            &[
                &format!("--config.file={}", d.join("prometheus.yml").display()),
                &format!("--storage.tsdb.path={}", d.join("tsdb").display()),
                &format!("--web.listen-address={prometheus_addr}"),
            ],
            "prometheus",
            prometheus_addr.clone(),
            d,
        )
    });
    let started = SystemTime::now();
    let seconds: u64 = std::env::var("DASHBOARD_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let until = Instant::now() + Duration::from_secs(seconds);
    let base = format!("http://{}/v2", proxy.addr);
    let (mut round, mut pulled) = (0usize, 0usize);
    while Instant::now() < until {
        // Three images fit the budget: a fourth evicts.
        let image = &images[(round / 3) % images.len()];
        // A pull may be refused with 503 while the images pulled just
        // before are still leased and the budget has no room: the
        // "Refusals" panel shows it.
        if pull_image(&client, &proxy.addr, image).await.is_ok() {
            pulled += 1;
        }
        for path in ["secret/thing/manifests/v1", "team/app0/manifests/missing"] {
            let status = client
                .get(format!("{base}/{path}"))
                .send()
                .await
                .expect("refused");
            assert!(status.status().is_client_error());
        }
        round += 1;
    }
    assert!(pulled * 2 > round, "{pulled} of {round} pulls");
    // The upstream stops: tags are served stale.
    upstream.kill();
    let stale = client
        .get(format!("{base}/team/app0/manifests/v1"))
        .header("accept", registry_proxy::oci::OCI_MANIFEST)
        .send()
        .await
        .expect("stale");
    assert_eq!(stale.status(), 200);

    // Scraped after the stale answer: every panel has data.
    let mut tries = 0;
    while query(
        &prometheus_addr,
        "sum(registry_proxy_stale_serves_total) > 0",
    )
    .await
    .is_empty()
    {
        tries += 1;
        assert!(tries < 100, "Prometheus never scraped the stale answer");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let range = started.elapsed().expect("clock").as_secs() + 1;
    let board: serde_json::Value = serde_json::from_slice(
        &std::fs::read(repo_root().join("grafana/registry-proxy.json")).expect("the dashboard"),
    )
    .expect("json");
    let panels = board["panels"].as_array().expect("panels");
    assert!(panels.len() >= 12);
    for panel in panels {
        let title = panel["title"].as_str().expect("title");
        let mut series = 0;
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            series += query(&prometheus_addr, &expand(expr, range)).await.len();
        }
        assert!(series > 0, "panel {title:?} shows no data");
    }

    if let Ok(keep) = std::env::var("DASHBOARD_SCREENSHOT") {
        let page = d.join("dashboard.html");
        let end = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let rendered = std::process::Command::new("python3")
            .arg(repo_root().join("scripts/render-dashboard.py"))
            .arg(repo_root().join("grafana/registry-proxy.json"))
            .arg(format!("http://{prometheus_addr}"))
            .arg((end - range).to_string())
            .arg(end.to_string())
            .arg(&page)
            .status()
            .expect("render");
        assert!(rendered.success());
        let shot = std::process::Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--window-size=1280,1740",
                &format!("--screenshot={keep}"),
            ])
            .arg(format!("file://{}", page.display()))
            .output()
            .expect("chromium");
        assert!(shot.status.success());
    }
}
