//! The byte budget (`proxy.maxsize`) end to end: the real binary in front
//! of Debian's `docker-registry`, 300 MiB of images pulled through a
//! 100 MiB budget. Skipped with the reason when `docker-registry` is
//! missing, unless `REQUIRE_E2E=1`.

// Shared by the test binaries and the side-by-side benchmark; each uses a part.
use registry_proxy_testkit as support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use registry_proxy::oci::Digest;
use support::{
    Image, debug_text, docker_registry, have, pull_image, push_image, registry_proxy_with,
};

const MIB: u64 = 1 << 20;
const BUDGET: u64 = 100 * MIB;
/// One image: three layers of this size (and a small config).
const LAYER: usize = 10 << 20;

/// The blob bytes stored under `root` (the sum of the `data` files).
fn stored_on_disk(root: &Path) -> u64 {
    fn walk(dir: &Path, total: &mut u64) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => walk(&path, total),
                Ok(_) if path.file_name().is_some_and(|n| n == "data") => {
                    *total += entry.metadata().map(|m| m.len()).unwrap_or(0);
                }
                _ => {}
            }
        }
    }
    let mut total = 0;
    walk(&root.join("docker/registry/v2/blobs"), &mut total);
    total
}

/// A gauge or counter of the proxy's metrics.
async fn metric(proxy: &support::Server, name: &str) -> u64 {
    let text = debug_text(proxy, "/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("registry_proxy_{name} ")))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Waits until the accounted bytes are within the budget (eviction runs
/// in the background after a fill commits).
async fn within_budget(proxy: &support::Server) -> u64 {
    for _ in 0..600 {
        let stored = metric(proxy, "stored_bytes").await;
        if stored <= BUDGET {
            return stored;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let text = debug_text(proxy, "/metrics").await;
    let figures: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("stored_bytes") || l.contains("evict") || l.contains("budget"))
        .collect();
    panic!("stored bytes never came back within the budget: {figures:?}");
}

fn blob_dir(root: &Path, digest: &Digest) -> PathBuf {
    root.join(format!(
        "docker/registry/v2/blobs/sha256/{}/{}",
        &digest.hex()[..2],
        digest.hex()
    ))
}

fn layers_on_disk(root: &Path, image: &Image) -> usize {
    image
        .blobs
        .iter()
        .filter(|d| blob_dir(root, d).join("data").exists())
        .count()
}

/// 300 MiB of images through a 100 MiB budget: stored bytes, sampled all
/// along, never exceed the budget plus the image being pulled; an image
/// pulled between every other one stays whole; every image evicted pulls
/// again; evictions are counted. After a `kill -9` and a restart the
/// account is what storage holds, a blob deleted behind the cache's back
/// included. A blob larger than the budget is served, not stored. `du`
/// reports what storage holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_byte_budget_keeps_the_hot_image_and_stays_within_bounds() {
    if !have("docker-registry") {
        conformance::skip(
            "a_byte_budget_keeps_the_hot_image",
            "REQUIRE_E2E",
            "docker-registry is not installed",
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let upstream = tokio::task::block_in_place(|| {
        docker_registry(d, "upstream", &d.join("upstream-root"), "")
    });
    let client = reqwest::Client::new();
    let mut images = Vec::new();
    for i in 0..10u64 {
        let repo = format!("team/app{i}");
        images.push(push_image(&client, &upstream.addr, &repo, 100 + i, &[LAYER; 3]).await);
    }
    let root: PathBuf = d.join("root");
    let storage = format!("  filesystem:\n    rootdirectory: {}\n", root.display());
    let sections = format!(
        "storage:\n{storage}proxy:\n  remoteurl: http://{}\n  maxsize: 100MiB\n",
        upstream.addr
    );
    let start = || tokio::task::block_in_place(|| registry_proxy_with(d, &sections));
    let mut proxy = start();

    // Sample the bytes on disk throughout.
    let (stop, most) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let sampler = {
        let (stop, most, root) = (Arc::clone(&stop), Arc::clone(&most), root.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                most.fetch_max(stored_on_disk(&root), Ordering::Relaxed);
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        })
    };
    let hot = &images[0];
    for image in &images[1..] {
        pull_image(&client, &proxy.addr, image).await.expect("pull");
        pull_image(&client, &proxy.addr, hot)
            .await
            .expect("hot pull");
        within_budget(&proxy).await;
    }
    stop.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");
    let image_bytes = 3 * LAYER as u64 + MIB;
    let most = most.load(Ordering::Relaxed);
    assert!(
        most <= BUDGET + image_bytes,
        "{most} bytes on disk at most; the budget is {BUDGET}, an image {image_bytes}"
    );
    assert_eq!(
        layers_on_disk(&root, hot),
        hot.blobs.len(),
        "the hot image lost a layer"
    );
    let evictions = metric(&proxy, "evictions_total").await;
    assert!(
        evictions >= 10,
        "{evictions} evictions for 300 MiB in 100 MiB"
    );
    assert!(stored_on_disk(&root) <= BUDGET);
    for image in &images {
        pull_image(&client, &proxy.addr, image)
            .await
            .expect("an evicted image pulls again");
        within_budget(&proxy).await;
    }

    // A crash, a blob deleted behind the cache's back, a restart: the
    // account is what storage holds.
    proxy.kill();
    let victim = hot
        .blobs
        .iter()
        .find(|d| blob_dir(&root, d).join("data").exists())
        .expect("a stored layer");
    std::fs::remove_dir_all(blob_dir(&root, victim)).expect("deleted behind its back");
    let proxy = start();
    let on_disk = stored_on_disk(&root);
    let mut accounted = 0;
    for _ in 0..600 {
        accounted = metric(&proxy, "stored_bytes").await;
        if accounted == on_disk {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(accounted, on_disk, "the account after a restart");
    pull_image(&client, &proxy.addr, hot)
        .await
        .expect("the deleted layer fills again");

    // A blob larger than the whole budget is served, not stored.
    let giant = conformance::random_bytes(7, (BUDGET + MIB) as usize);
    let digest = support::push_blob(&client, &upstream.addr, "team/giant", giant).await;
    let got = client
        .get(format!(
            "http://{}/v2/team/giant/blobs/{digest}",
            proxy.addr
        ))
        .send()
        .await
        .expect("GET")
        .bytes()
        .await
        .expect("body");
    assert_eq!(Digest::of(&got), digest, "the giant blob's bytes");
    support::fills_settled(&proxy).await;
    assert!(!blob_dir(&root, &digest).join("data").exists(), "stored");
    assert_eq!(metric(&proxy, "unstored_total").await, 1);

    // `du` reads the same total from storage, and names the repositories.
    let du = std::process::Command::new(support::registry_proxy_binary())
        .args(["du", d.join("proxy.yml").to_str().expect("utf-8")])
        .output()
        .expect("du");
    assert!(
        du.status.success(),
        "du: {}",
        String::from_utf8_lossy(&du.stderr)
    );
    let text = String::from_utf8_lossy(&du.stdout);
    let total: u64 = text
        .lines()
        .find(|l| l.starts_with("stored: "))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|b| b.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no total in: {text}"));
    assert_eq!(total, stored_on_disk(&root), "{text}");
    assert!(text.contains("% of the 100.0 MiB budget"), "{text}");
    assert!(text.contains(&format!("  {}\n", hot.repo)), "{text}");
}
