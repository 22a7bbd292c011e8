//! 500 concurrent clients against the `registry-proxy` binary for
//! `LOAD_SECONDS` (60 by default; CI shortens it): each loops over pulls of
//! cached images (manifest by tag, then its blobs) and cold misses of
//! blobs nobody asked for yet. Every response is checked against its
//! digest; no request may fail; the proxy's peak RSS must stay bounded.
//! Real parts: Debian's `docker-registry` upstream (skipped, with the
//! reason printed, without it unless `REQUIRE_E2E=1`).

// Shared by the test binaries and the side-by-side benchmark; each uses a part.
use registry_proxy_testkit as support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use registry_proxy::oci::Digest;
use support::{
    docker_registry, have, pull_image, push_blob, push_image, registry_proxy, status_mib,
};

const CLIENTS: usize = 500;
const IMAGES: usize = 20;
const COLD_BLOBS: usize = 3000;
/// Peak RSS the proxy may reach.
const RSS_LIMIT_MIB: f64 = 512.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_clients_mixed_hits_and_misses() {
    if !have("docker-registry") {
        conformance::skip("load", "REQUIRE_E2E", "docker-registry is not installed");
        return;
    }
    let seconds = conformance::env_or("LOAD_SECONDS", 60u64);
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let upstream = docker_registry(d, "upstream", &d.join("upstream-root"), "");
    let client = reqwest::Client::new();
    let mut images = Vec::new();
    for i in 0..IMAGES {
        let repo = format!("load/app{i}");
        images.push(
            push_image(
                &client,
                &upstream.addr,
                &repo,
                i as u64,
                &[256 << 10, 512 << 10],
            )
            .await,
        );
    }
    let mut cold = Vec::new();
    for i in 0..COLD_BLOBS {
        let data = conformance::random_bytes(10_000 + i as u64, 64 << 10);
        cold.push(push_blob(&client, &upstream.addr, "load/cold", data).await);
    }
    let storage = format!(
        "  filesystem:\n    rootdirectory: {}\n",
        d.join("cache").display()
    );
    let proxy = registry_proxy(d, &storage, &upstream.addr, None);
    for image in &images {
        pull_image(&client, &proxy.addr, image)
            .await
            .expect("warm-up pull");
    }

    let (images, cold) = (Arc::new(images), Arc::new(cold));
    let (next_cold, requests, bytes) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut clients = tokio::task::JoinSet::new();
    for n in 0..CLIENTS {
        let (images, cold, next_cold) = (
            Arc::clone(&images),
            Arc::clone(&cold),
            Arc::clone(&next_cold),
        );
        let (requests, bytes, addr) = (
            Arc::clone(&requests),
            Arc::clone(&bytes),
            proxy.addr.clone(),
        );
        clients.spawn(async move {
            let client = reqwest::Client::new();
            let mut round = n;
            while Instant::now() < deadline {
                round += 1;
                // One request in ten is a cold miss while cold blobs remain.
                let cold_one = (round % 10 == 0)
                    .then(|| next_cold.fetch_add(1, Ordering::SeqCst))
                    .and_then(|i| cold.get(i));
                if let Some(digest) = cold_one {
                    let url = format!("http://{addr}/v2/load/cold/blobs/{digest}");
                    let response = client
                        .get(&url)
                        .send()
                        .await
                        .map_err(|e| format!("{url}: {e}"))?;
                    if !response.status().is_success() {
                        return Err(format!("{url}: {}", response.status()));
                    }
                    let body = response.bytes().await.map_err(|e| format!("{url}: {e}"))?;
                    if Digest::of(&body) != *digest {
                        return Err(format!("{url}: wrong bytes"));
                    }
                    requests.fetch_add(1, Ordering::Relaxed);
                    bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
                } else {
                    let image = &images[round % images.len()];
                    bytes.fetch_add(pull_image(&client, &addr, image).await?, Ordering::Relaxed);
                    requests.fetch_add(1 + image.blobs.len() as u64, Ordering::Relaxed);
                }
            }
            Ok::<(), String>(())
        });
    }
    let mut failures = Vec::new();
    while let Some(result) = clients.join_next().await {
        if let Err(e) = result.expect("client task") {
            failures.push(e);
        }
    }
    let peak = status_mib(proxy.pid(), "VmHWM:");
    let (requests, bytes) = (
        requests.load(Ordering::Relaxed),
        bytes.load(Ordering::Relaxed),
    );
    let cold_done = next_cold.load(Ordering::Relaxed).min(COLD_BLOBS);
    println!(
        "load: {CLIENTS} clients, {seconds} s: {requests} requests ({:.0}/s), {:.0} MiB verified, {cold_done} cold misses, {} failed, proxy peak RSS {peak:.0} MiB",
        requests as f64 / seconds as f64,
        bytes as f64 / (1 << 20) as f64,
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} clients failed, first: {}",
        failures.len(),
        failures[0]
    );
    assert!(
        cold_done > 0 && requests > CLIENTS as u64,
        "the load did not run"
    );
    assert!(peak > 0.0 && peak < RSS_LIMIT_MIB, "peak RSS {peak:.0} MiB");
}
