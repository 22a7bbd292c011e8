//! The byte budget (`proxy.maxsize`) end to end: the real binary in front
//! of Debian's `docker-registry`, 300 MiB of images pulled with skopeo
//! through a 100 MiB budget; reservations, namespace budgets, a full disk
//! and the watermarks. Skipped with the reason when `docker-registry` is
//! missing, unless `REQUIRE_E2E=1`.

// Shared by the test binaries and the side-by-side benchmark; each uses a part.
use registry_proxy_testkit as support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use registry_proxy::oci::Digest;
use support::{Image, debug_text, have, pull_image, push_image, registry_proxy_with};

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

/// A gauge or counter of the proxy's metrics, `name` with its labels
/// (`evictions_total{reason="budget"}`).
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
    let Some((dir, upstream)) = support::upstream_for(
        "a_byte_budget_keeps_the_hot_image",
        have("docker-registry") && have("skopeo"),
        "docker-registry and skopeo are needed (scripts/test.sh installs them)",
    ) else {
        return;
    };
    let d = dir.path();
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
    // skopeo checks every blob's digest as it copies.
    let skopeo_pull = |image: &Image| {
        tokio::task::block_in_place(|| {
            support::skopeo::pull(
                &proxy.addr,
                &format!("{}:v1", image.repo),
                &d.join("pulled"),
                None,
            );
        });
    };
    for image in &images[1..] {
        skopeo_pull(image);
        skopeo_pull(hot);
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
    let evictions = metric(&proxy, "evictions_total{reason=\"budget\"}").await;
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
    let (total, text) = support::du(&d.join("proxy.yml"));
    assert_eq!(total, stored_on_disk(&root), "{text}");
    assert!(text.contains("% of the 100.0 MiB budget"), "{text}");
    assert!(text.contains(&format!("  {}\n", hot.repo)), "{text}");
    // And, from the running cache, what eviction would choose next: blobs
    // it stores (manifests' digests are withheld: the debug listener names
    // no marked content).
    let next: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("next to evict (the running cache at"))
        .skip(1)
        .filter_map(|l| l.split_whitespace().last())
        .filter(|d| *d != registry_proxy::cache::access::REDACTED)
        .collect();
    assert!(!next.is_empty(), "{text}");
    for digest in next {
        let digest = Digest::parse(digest).expect("a digest");
        assert!(
            blob_dir(&root, &digest).join("data").exists(),
            "{digest} is not stored"
        );
    }
}

/// `GET` of `path` on the proxy: its status and `Retry-After`.
async fn status_of(
    client: &reqwest::Client,
    proxy: &support::Server,
    path: &str,
) -> (u16, Option<String>) {
    let response = client
        .get(format!("http://{}{path}", proxy.addr))
        .send()
        .await
        .expect("GET");
    let retry = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let status = response.status().as_u16();
    let _ = response.bytes().await;
    (status, retry)
}

/// A fill reserves its size before it starts: with everything stored in
/// use by a pull that has not fetched it yet, a miss that does not fit is
/// refused with 503 and `Retry-After`, storing nothing; once that pull
/// fetched its layers, the same miss evicts and fills. Each namespace's
/// `maxsize` bounds what it links, and leaves another namespace's content
/// alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fills_reserve_room_and_namespaces_keep_their_own_budget() {
    let Some((dir, upstream)) = support::registry_upstream("fills_reserve_room") else {
        return;
    };
    let d = dir.path();
    let client = reqwest::Client::new();
    let held = push_image(&client, &upstream.addr, "team/held", 1, &[LAYER; 2]).await;
    let next = push_image(&client, &upstream.addr, "team/next", 2, &[LAYER]).await;
    let root: PathBuf = d.join("root");
    // Phase one: a 25 MiB budget. Phase two: none, and 15 MiB for small.test.
    let sections = |budgets: [&str; 2]| {
        format!(
            "storage:\n  filesystem:\n    rootdirectory: {}\nproxy:\n{}  upstreams:\n    - namespace: small.test\n      remoteurl: http://{up}\n{}    - namespace: big.test\n      remoteurl: http://{up}\n      default: true\n",
            root.display(),
            budgets[0],
            budgets[1],
            up = upstream.addr
        )
    };
    let proxy = tokio::task::block_in_place(|| {
        registry_proxy_with(d, &sections(["  maxsize: 25MiB\n", ""]))
    });
    pull_image(&client, &proxy.addr, &held).await.expect("pull");
    // Stored (clients read fills from the spool, before the commit).
    support::fills_settled(&proxy).await;
    // A pull begins: its manifest is served, its layers not yet fetched.
    let (status, _) = status_of(&client, &proxy, &format!("/v2/{}/manifests/v1", held.repo)).await;
    assert_eq!(status, 200);
    let layer = next.blobs[1];
    let path = format!("/v2/{}/blobs/{layer}", next.repo);
    let (status, retry) = status_of(&client, &proxy, &path).await;
    assert_eq!(
        status,
        503,
        "a fill with no room to make: {}",
        std::fs::read_to_string(d.join("proxy.log")).unwrap_or_default()
    );
    assert_eq!(retry.as_deref(), Some("30"));
    assert!(!blob_dir(&root, &layer).join("data").exists());
    assert_eq!(
        metric(&proxy, "reserved_bytes").await,
        0,
        "reservation returned"
    );
    // The pull fetches its layers: now they may go.
    for blob in &held.blobs {
        let (status, _) =
            status_of(&client, &proxy, &format!("/v2/{}/blobs/{blob}", held.repo)).await;
        assert_eq!(status, 200);
    }
    let (status, _) = status_of(&client, &proxy, &path).await;
    assert_eq!(status, 200, "the fill makes room now");
    support::fills_settled(&proxy).await;
    within_budget_of(&proxy, 25 * MIB).await;
    assert!(blob_dir(&root, &layer).join("data").exists());

    // Namespace budgets: five 10 MiB images through small.test stay within
    // its 15 MiB, and what big.test holds is not touched for it.
    drop(proxy);
    let proxy = tokio::task::block_in_place(|| {
        registry_proxy_with(d, &sections(["", "      maxsize: 15MiB\n"]))
    });
    let big = push_image(&client, &upstream.addr, "team/big", 3, &[MIB as usize]).await;
    let big = Image {
        repo: format!("big.test/{}", big.repo),
        ..big
    };
    pull_image(&client, &proxy.addr, &big)
        .await
        .expect("big pull");
    for i in 0..5u64 {
        let image = push_image(
            &client,
            &upstream.addr,
            &format!("team/s{i}"),
            10 + i,
            &[LAYER],
        )
        .await;
        let image = Image {
            repo: format!("small.test/{}", image.repo),
            ..image
        };
        pull_image(&client, &proxy.addr, &image)
            .await
            .expect("small pull");
        support::fills_settled(&proxy).await;
    }
    let mut namespace_evictions = 0;
    for _ in 0..600 {
        namespace_evictions = metric(&proxy, "evictions_total{reason=\"namespace\"}").await;
        if namespace_evictions >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        namespace_evictions >= 2,
        "{namespace_evictions} namespace evictions"
    );
    assert_eq!(
        layers_on_disk(&root, &big),
        big.blobs.len(),
        "big.test lost content"
    );
}

/// A namespace's budget evicts that namespace's use of blobs, never what
/// another namespace holds. Reading (a HEAD) through small.test
/// (`maxsize: 15MiB`) the layers big.test brought in is not charged to
/// small.test, so its eviction leaves them alone; a blob small.test brought
/// in and big.test then pulled too loses small.test's link when small.test
/// goes over its budget, and its bytes stay for big.test; a blob only
/// small.test linked goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_budget_evicts_only_its_own_use_of_blobs() {
    let Some((dir, upstream)) =
        support::registry_upstream("a_namespace_budget_evicts_only_its_own_use_of_blobs")
    else {
        return;
    };
    let d = dir.path();
    let client = reqwest::Client::new();
    let root: PathBuf = d.join("root");
    let sections = format!(
        "storage:\n  filesystem:\n    rootdirectory: {}\nproxy:\n  upstreams:\n    - namespace: small.test\n      remoteurl: http://{up}\n      maxsize: 15MiB\n    - namespace: big.test\n      remoteurl: http://{up}\n      default: true\n",
        root.display(),
        up = upstream.addr
    );
    let proxy = tokio::task::block_in_place(|| registry_proxy_with(d, &sections));
    let through = |ns: &str, image: &Image| Image {
        repo: format!("{ns}/{}", image.repo),
        ..image.clone()
    };
    let other = push_image(&client, &upstream.addr, "team/other", 40, &[LAYER; 2]).await;
    let shared = push_image(&client, &upstream.addr, "team/shared", 41, &[LAYER]).await;
    let mut own = Vec::new();
    for i in 0..2u64 {
        let repo = format!("team/own{i}");
        own.push(push_image(&client, &upstream.addr, &repo, 42 + i, &[LAYER]).await);
    }
    // big.test brings in `other` (its blobs fetched, no pull left waiting
    // for them); small.test brings in `shared`, which big.test pulls too.
    for blob in &other.blobs {
        let path = format!("/v2/big.test/{}/blobs/{blob}", other.repo);
        assert_eq!(status_of(&client, &proxy, &path).await.0, 200);
    }
    pull_image(&client, &proxy.addr, &through("small.test", &shared))
        .await
        .expect("shared through small.test");
    support::fills_settled(&proxy).await;
    pull_image(&client, &proxy.addr, &through("big.test", &shared))
        .await
        .expect("shared through big.test");
    // Anyone allowed into small.test asks for big.test's blobs there: one
    // HEAD each.
    for blob in &other.blobs {
        let url = format!(
            "http://{}/v2/small.test/{}/blobs/{blob}",
            proxy.addr, other.repo
        );
        let head = client.head(url).send().await.expect("HEAD");
        assert_eq!(head.status(), 200);
    }
    // small.test's own pulls take it over its budget twice.
    for image in &own {
        pull_image(&client, &proxy.addr, &through("small.test", image))
            .await
            .expect("small.test pull");
        support::fills_settled(&proxy).await;
    }
    let mut evictions = 0;
    for _ in 0..600 {
        evictions = metric(&proxy, "evictions_total{reason=\"namespace\"}").await;
        if evictions >= 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(evictions >= 4, "{evictions} namespace evictions");
    assert_eq!(
        layers_on_disk(&root, &other),
        other.blobs.len(),
        "reading big.test's blobs through small.test deleted them"
    );
    assert_eq!(
        layers_on_disk(&root, &shared),
        shared.blobs.len(),
        "small.test's budget deleted blobs big.test uses"
    );
    let small_link = root.join(format!(
        "docker/registry/v2/repositories/_namespaces/small.test/{}/_layers/sha256/{}",
        shared.repo,
        shared.blobs[1].hex()
    ));
    assert!(
        !small_link.exists(),
        "small.test kept its link of an evicted blob"
    );
    assert_eq!(
        layers_on_disk(&root, &own[0]),
        0,
        "what only small.test linked was not evicted"
    );
    pull_image(&client, &proxy.addr, &through("big.test", &other))
        .await
        .expect("big.test still pulls other");
}

/// Waits until the accounted bytes are within `bound`.
async fn within_budget_of(proxy: &support::Server, bound: u64) {
    for _ in 0..600 {
        if metric(proxy, "stored_bytes").await <= bound {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("stored bytes never came within {bound}");
}

/// The upstream of a test that mounts a tmpfs: `None` (after printing
/// why) without `docker-registry` or without root.
fn upstream_and_tmpfs(test: &str) -> Option<(tempfile::TempDir, support::Server)> {
    let root_user = std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|s| s.lines().any(|l| l.starts_with("Uid:\t0\t")));
    support::upstream_for(
        test,
        have("docker-registry") && root_user,
        "needs docker-registry, and root to mount a tmpfs",
    )
}

/// A tmpfs of `size` mounted at `dir` until dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: PathBuf, size: &str) -> Self {
        std::fs::create_dir_all(&dir).expect("mount point");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .expect("mount");
        assert!(status.success(), "mount tmpfs at {}", dir.display());
        Self(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// A full disk is a signal: on a 48 MiB tmpfs holding three 14 MiB layers,
/// the fourth one's write finds it full, eviction makes room and the fill
/// succeeds, with no byte budget configured, whether fills spool on that
/// volume (the default) or elsewhere. On a 64 MiB tmpfs with
/// watermarks at 50% and 25%, eviction starts once the volume is more
/// than half full and stops at a quarter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_and_the_watermarks_evict() {
    let Some((dir, upstream)) = upstream_and_tmpfs("a_full_disk_and_the_watermarks_evict") else {
        return;
    };
    let d = dir.path();
    let client = reqwest::Client::new();
    let mut images = Vec::new();
    for i in 0..4u64 {
        images.push(
            push_image(
                &client,
                &upstream.addr,
                &format!("team/f{i}"),
                20 + i,
                &[14 << 20],
            )
            .await,
        );
    }
    // "full" twice: with the spool directory elsewhere, and where it is by
    // default, on the full volume itself (a fill must then evict, not be
    // refused for want of room to spool).
    for (phase, size, extra) in [
        ("full", "48m", ""),
        ("full-default-spool", "48m", ""),
        (
            "watermarks",
            "64m",
            "  highwatermark: 50\n  lowwatermark: 25\n",
        ),
    ] {
        let disk = Tmpfs::mount(d.join(phase), size);
        let root = disk.0.join("root");
        let spool = match phase {
            "full-default-spool" => String::new(),
            _ => format!(
                "  spooldirectory: {}\n",
                d.join(format!("spool-{phase}")).display()
            ),
        };
        let sections = format!(
            "storage:\n  filesystem:\n    rootdirectory: {}\nproxy:\n  remoteurl: http://{}\n{spool}{extra}",
            root.display(),
            upstream.addr,
        );
        let config_dir = d.join(format!("proxy-{phase}"));
        std::fs::create_dir_all(&config_dir).expect("config dir");
        std::fs::create_dir_all(d.join(format!("spool-{phase}"))).expect("spool dir");
        let proxy = tokio::task::block_in_place(|| registry_proxy_with(&config_dir, &sections));
        let full = phase.starts_with("full");
        let count = if full { 4 } else { 3 };
        for image in &images[..count] {
            pull_image(&client, &proxy.addr, image).await.expect(phase);
            support::fills_settled(&proxy).await;
        }
        let last = &images[count - 1];
        if full {
            assert_eq!(
                layers_on_disk(&root, last),
                last.blobs.len(),
                "the fill stored"
            );
            assert!(metric(&proxy, "evictions_total{reason=\"full\"}").await >= 1);
        } else {
            let mut on_disk = u64::MAX;
            for _ in 0..600 {
                on_disk = stored_on_disk(&root);
                if on_disk <= 16 * MIB {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            assert!(
                on_disk <= 16 * MIB,
                "{on_disk} bytes on a 64 MiB volume at a 25% low watermark"
            );
            assert!(metric(&proxy, "evictions_total{reason=\"watermark\"}").await >= 1);
        }
        drop(proxy);
    }
}

/// Storage without scratch files of its own (here in-memory) spools fills
/// in `spooldirectory`: a blob larger than that volume's free room is
/// refused before its first byte, with a 503 that says so and when to come
/// back, and a blob that fits is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_directory_without_room_refuses_the_fill_up_front() {
    let Some((dir, upstream)) =
        upstream_and_tmpfs("a_spool_directory_without_room_refuses_the_fill_up_front")
    else {
        return;
    };
    let d = dir.path();
    let client = reqwest::Client::new();
    let large = support::push_blob(
        &client,
        &upstream.addr,
        "team/big",
        conformance::random_bytes(5, 12 << 20),
    )
    .await;
    let small = conformance::random_bytes(6, 2 << 20);
    let fits = support::push_blob(&client, &upstream.addr, "team/big", small.clone()).await;
    let disk = Tmpfs::mount(d.join("spool"), "8m");
    let sections = format!(
        "storage:\n  inmemory: {{}}\nproxy:\n  remoteurl: http://{}\n  spooldirectory: {}\n",
        upstream.addr,
        disk.0.display(),
    );
    let config_dir = d.join("proxy");
    std::fs::create_dir_all(&config_dir).expect("config dir");
    let proxy = tokio::task::block_in_place(|| registry_proxy_with(&config_dir, &sections));
    let url = |digest: &Digest| format!("http://{}/v2/team/big/blobs/{digest}", proxy.addr);
    let refused = client.get(url(&large)).send().await.expect("GET");
    assert_eq!(refused.status(), 503);
    assert_eq!(
        refused
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("30")
    );
    let body = refused.text().await.expect("body");
    assert_eq!(
        support::error_code(body.as_bytes()),
        "UNAVAILABLE",
        "{body}"
    );
    assert!(body.contains("no room to spool"), "{body}");
    let served = client.get(url(&fits)).send().await.expect("GET");
    assert_eq!(served.status(), 200);
    assert!(served.bytes().await.expect("body") == small);
    drop(proxy);
}
