//! The TTL scheduler at scale, persisting on driver-fs in a temporary
//! directory. Prints each figure next to its target:
//!
//! - adds, then refreshes, of `BENCH_ENTRIES` (default 1,000,000) entries
//!   per second, each phase ending with its changes written;
//! - memory per entry (the table's allocations, and the process's RSS
//!   growth);
//! - reload of the state after a restart;
//! - `BENCH_DUE` (default 100,000) entries, each with its blob and link
//!   files, due at the same moment: how long their expiry takes and the
//!   longest a request (lease, touch, read and account of live content)
//!   waited meanwhile;
//! - the byte budget over `BENCH_ENTRIES` stored blobs: memory per blob
//!   accounted, and `BENCH_DUE` of them (with their files) evicted at once
//!   while requests run: how long it takes, and how long requests waited.
//!
//! The reference in the same run: one rewrite of the whole state in
//! registry:2's format (`/scheduler-state.json`, JSON), which registry:2
//! repeats for every flush of changes. Run with `scripts/bench-scheduler.sh`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use conformance::env_or;
use driver_core::{StorageDriver, StoragePath};
use driver_fs::{FsConfig, FsDriver};
use registry_proxy::layout;
use registry_proxy::layout::RepoKey;
use registry_proxy::metrics::Metrics;
use registry_proxy::oci::Kind;
use registry_proxy::oci::{Digest, RepoName};
use registry_proxy::scheduler::{Bounds, Clock, Options, Scheduler};

const TTL: Duration = Duration::from_secs(3600);
const REPOS: usize = 1000;

/// A well-spread 32-byte digest for entry `i`.
fn digest(i: u64) -> Digest {
    let mut raw = [0; 32];
    let mut x = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    for chunk in raw.chunks_mut(8) {
        x ^= x >> 30;
        x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x ^= x >> 27;
        x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^= x >> 31;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    Digest::from_raw(raw)
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

async fn open(driver: &Arc<dyn StorageDriver>, clock: Clock) -> Arc<Scheduler> {
    let scheduler = Scheduler::open(
        Arc::clone(driver),
        Options {
            ttl: TTL,
            namespace_ttls: Default::default(),
            flush_interval: Duration::from_secs(1),
            purge: None,
            ..Options::default()
        },
        clock,
        Arc::new(Metrics::default()),
    )
    .await
    .expect("open");
    scheduler.start();
    scheduler
}

fn fs_driver(root: &std::path::Path) -> Arc<dyn StorageDriver> {
    Arc::new(FsDriver::open(&FsConfig::at(root)).expect("fs"))
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

async fn touch_all(scheduler: &Scheduler, repos: &[RepoKey], n: u64) -> f64 {
    let started = Instant::now();
    for i in 0..n {
        scheduler
            .access(&repos[i as usize % REPOS], &digest(i), Kind::Blob)
            .await;
    }
    scheduler.flush().await.expect("flush");
    n as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

async fn run() {
    let entries: u64 = env_or("BENCH_ENTRIES", 1_000_000);
    let due: u64 = env_or("BENCH_DUE", 100_000);
    let dir = tempfile::tempdir().expect("dir");
    let driver = fs_driver(dir.path());
    let repos: Vec<RepoKey> = (0..REPOS)
        .map(|r| RepoName::parse(&format!("bench/team-{}/app-{r}", r % 37)).expect("name"))
        .map(|name| RepoKey::new(None, &name))
        .collect();
    println!(
        "scheduler benchmark: {entries} entries on driver-fs ({})",
        dir.path().display()
    );

    // Adds, on a clock a minute behind, so the refreshes below change times.
    let earlier = Clock::starting_at(SystemTime::now() - Duration::from_secs(60));
    let scheduler = open(&driver, earlier).await;
    let adds = touch_all(&scheduler, &repos, entries).await;
    scheduler.shutdown().await.expect("shutdown");
    drop(scheduler);

    // Reload, as after a restart.
    let rss_before = rss_bytes();
    let started = Instant::now();
    let scheduler = open(&driver, Clock::system()).await;
    let reload = started.elapsed();
    assert_eq!(scheduler.len() as u64, entries, "entries lost on reload");

    let refreshes = touch_all(&scheduler, &repos, entries).await;
    let table = scheduler.allocated_bytes() as f64 / entries as f64;
    let rss = rss_bytes().saturating_sub(rss_before) as f64 / entries as f64;

    // The reference: registry:2 rewrites its whole state per flush.
    let started = Instant::now();
    let mut state = serde_json::Map::new();
    let expiry = humantime::format_rfc3339_nanos(SystemTime::now() + TTL).to_string();
    for i in 0..entries {
        let key = format!("{}@{}", repos[i as usize % REPOS], digest(i));
        state.insert(
            key.clone(),
            serde_json::json!({"Key": key, "ExpiryData": expiry, "EntryType": 0}),
        );
    }
    let json = serde_json::to_vec(&state).expect("json");
    drop(state);
    driver
        .put_content(
            &StoragePath::parse("/scheduler-state.json").expect("path"),
            json.into(),
        )
        .await
        .expect("put");
    let rewrite = started.elapsed();
    scheduler.shutdown().await.expect("shutdown");
    drop(scheduler);

    println!(
        "  adds:       {adds:>12.0}/s (target >= 200,000/s: {})",
        verdict(adds >= 200_000.0)
    );
    println!(
        "  refreshes:  {refreshes:>12.0}/s (target >= 200,000/s: {})",
        verdict(refreshes >= 200_000.0)
    );
    println!(
        "  memory:     {table:>12.0} B/entry in the table, {rss:.0} B/entry of RSS growth (target <= 200: {})",
        verdict(table.max(rss) <= 200.0)
    );
    println!(
        "  reload:     {:>12.2} s (target <= 2 s: {})",
        reload.as_secs_f64(),
        verdict(reload <= Duration::from_secs(2))
    );
    let ours = entries as f64 / refreshes;
    println!(
        "  reference:  one registry:2-style rewrite of the whole state (it does one per flush): \
         {:.2} s; our {entries} refreshes, written: {ours:.2} s ({:.1}x less)",
        rewrite.as_secs_f64(),
        rewrite.as_secs_f64() / ours
    );

    expire_at_once(due, &repos).await;
    evict_at_once(entries, due, &repos).await;
}

/// `due` entries with their files, all due now; a request loop measures
/// how long requests wait while they expire.
async fn expire_at_once(due: u64, repos: &[RepoKey]) {
    let dir = tempfile::tempdir().expect("dir");
    let driver = fs_driver(dir.path());
    let content = Bytes::from_static(&[7; 512]);
    let setup = Instant::now();
    futures::future::join_all((0..4).map(|part| {
        let driver = Arc::clone(&driver);
        let content = content.clone();
        async move {
            for i in (part..due).step_by(4) {
                let (repo, d) = (&repos[i as usize % REPOS], digest(i));
                driver
                    .put_content(&layout::blob_data(&d), content.clone())
                    .await
                    .expect("blob");
                driver
                    .put_content(&layout::layer_link(repo, &d), layout::link_content(&d))
                    .await
                    .expect("link");
            }
        }
    }))
    .await;
    // Accessed two TTLs ago (all in the same second or two), so all due now.
    let long_ago = Clock::starting_at(SystemTime::now() - 2 * TTL);
    let old = open(&driver, long_ago).await;
    for i in 0..due {
        old.access(&repos[i as usize % REPOS], &digest(i), Kind::Blob)
            .await;
    }
    old.shutdown().await.expect("shutdown");
    drop(old);
    // Live content the requests read meanwhile.
    let live = Digest::of(b"live");
    driver
        .put_content(&layout::blob_data(&live), content.clone())
        .await
        .expect("live");
    println!(
        "  ({due} due entries with their files set up in {:.1} s)",
        setup.elapsed().as_secs_f64()
    );

    let scheduler = open(&driver, Clock::system()).await;
    // The expirer started at open; this joins it and returns when nothing
    // due is left.
    let (_, took, waits) = while_requests(&scheduler, &driver, live, scheduler.expire_due()).await;
    assert_eq!(scheduler.len(), 1, "only the live entry is left");
    let (p99, worst) = p99_and_worst(&waits);
    let left = std::fs::read_dir(dir.path().join("docker/registry/v2/blobs/sha256"))
        .map(|d| {
            d.flat_map(|e| e.ok())
                .flat_map(|e| std::fs::read_dir(e.path()).into_iter().flatten())
                .count()
        })
        .unwrap_or(0);
    println!(
        "  expiry:     {due} due at once expired in {:.2} s ({:.0}/s), {} blobs left of {}",
        took.as_secs_f64(),
        due as f64 / took.as_secs_f64(),
        left,
        due + 1
    );
    println!(
        "  requests meanwhile: {} served, p99 {:.1} ms, worst {:.1} ms (target <= 50 ms: {})",
        waits.len(),
        p99.as_secs_f64() * 1e3,
        worst.as_secs_f64() * 1e3,
        verdict(worst <= Duration::from_millis(50))
    );
    scheduler.shutdown().await.expect("shutdown");
}

/// `entries` blobs accounted by the byte budget, the first `evict` of them
/// with their files and over the budget by exactly their bytes; a request
/// loop measures how long requests wait while they are evicted.
async fn evict_at_once(entries: u64, evict: u64, repos: &[RepoKey]) {
    const SIZE: u64 = 512;
    let dir = tempfile::tempdir().expect("dir");
    let driver = fs_driver(dir.path());
    let content = Bytes::from_static(&[7; SIZE as usize]);
    let live = Digest::of(b"live");
    driver
        .put_content(&layout::blob_data(&live), content.clone())
        .await
        .expect("live");
    let scheduler = Scheduler::open(
        Arc::clone(&driver),
        Options {
            ttl: TTL,
            bounds: Bounds {
                max_size: Some((entries - evict + 1) * SIZE),
                ..Bounds::default()
            },
            ..Options::default()
        },
        Clock::system(),
        Arc::new(Metrics::default()),
    )
    .await
    .expect("open");
    // The walk of storage first (the live blob), then every blob
    // accounted, before the background loops start: eviction is measured
    // below, all at once.
    // The blobs' entries exist, as in a cache that served them.
    scheduler.reconcile().await.expect("walk");
    for i in 0..entries {
        scheduler
            .access(&repos[i as usize % REPOS], &digest(i), Kind::Blob)
            .await;
    }
    let table_before = scheduler.allocated_bytes();
    for i in 0..entries {
        scheduler.stored(repos[i as usize % REPOS].as_str(), &digest(i), SIZE);
    }
    // The policy's records live in the digests' slots (16 bytes each,
    // there with or without a budget); its queues and ghost list are all
    // it adds.
    assert_eq!(scheduler.allocated_bytes(), table_before, "the table grew");
    // The live blob the requests read was asked for before.
    scheduler.stored("bench/live", &live, SIZE);
    // The files of the blobs to evict, after the walk: it would forget
    // the accounted blobs that have none.
    futures::future::join_all((0..4).map(|part| {
        let driver = Arc::clone(&driver);
        let content = content.clone();
        async move {
            for i in (part..evict).step_by(4) {
                driver
                    .put_content(&layout::blob_data(&digest(i)), content.clone())
                    .await
                    .expect("blob");
            }
        }
    }))
    .await;
    let per_blob = scheduler.budget_allocated_bytes() as f64 / entries as f64;
    println!(
        "  byte budget: {entries} blobs accounted, {per_blob:.0} bytes each (records in the digests' slots, and queue slots; target <= 32: {})",
        verdict(per_blob <= 32.0)
    );
    scheduler.start();
    // The background loop evicts too; this returns once nothing more is over.
    let evict_all = async { while scheduler.evict_over_bounds().await.blobs > 0 {} };
    let ((), took, waits) = while_requests(&scheduler, &driver, live, evict_all).await;
    let (p99, worst) = p99_and_worst(&waits);
    let left = (0..evict)
        .filter(|i| {
            dir.path()
                .join(format!(
                    "docker/registry/v2/blobs/sha256/{}",
                    &digest(*i).hex()[..2]
                ))
                .join(digest(*i).hex())
                .exists()
        })
        .count();
    println!(
        "  eviction:   {evict} over the budget evicted in {:.2} s ({:.0}/s), {left} of them left",
        took.as_secs_f64(),
        evict as f64 / took.as_secs_f64(),
    );
    println!(
        "  requests meanwhile: {} served, p99 {:.1} ms, worst {:.1} ms (target p99 <= 50 ms: {})",
        waits.len(),
        p99.as_secs_f64() * 1e3,
        worst.as_secs_f64() * 1e3,
        verdict(p99 <= Duration::from_millis(50))
    );
    scheduler.shutdown().await.expect("shutdown");
}

/// Requests for the live blob every 2 ms while `work` runs, as a hit makes
/// them (lease, touch, read, account): `work`'s output, its wall time, and
/// the requests' waits, sorted.
async fn while_requests<T>(
    scheduler: &Arc<Scheduler>,
    driver: &Arc<dyn StorageDriver>,
    live: Digest,
    work: impl std::future::Future<Output = T>,
) -> (T, Duration, Vec<Duration>) {
    let done = Arc::new(AtomicBool::new(false));
    let requests = tokio::spawn({
        let (scheduler, driver, done) =
            (Arc::clone(scheduler), Arc::clone(driver), Arc::clone(&done));
        let repo = RepoKey::new(None, &RepoName::parse("bench/live").expect("name"));
        async move {
            let mut waits = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(2));
            while !done.load(Ordering::Relaxed) {
                tick.tick().await;
                let began = Instant::now();
                let _lease = scheduler.leases().hold(&[live]);
                scheduler.access(&repo, &live, Kind::Blob).await;
                let data = driver
                    .get_content(&layout::blob_data(&live))
                    .await
                    .expect("read");
                scheduler.stored(repo.as_str(), &live, data.len() as u64);
                waits.push(began.elapsed());
            }
            waits
        }
    });
    let started = Instant::now();
    let out = work.await;
    let took = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let mut waits = requests.await.expect("requests");
    waits.sort();
    (out, took, waits)
}

/// The 99th percentile and the worst of sorted `waits`.
fn p99_and_worst(waits: &[Duration]) -> (Duration, Duration) {
    let worst = waits.last().copied().unwrap_or_default();
    let p99 = waits
        .get((waits.len() * 99 / 100).min(waits.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default();
    (p99, worst)
}
