//! Driver throughput, printed as figures and as ratios to a reference measured
//! in the same run (the machine is shared and noisy, so ratios are what count).
//!
//! Run with `cargo bench -p conformance --bench drivers`. Sizes:
//! `BENCH_STREAM_MIB` (default 256) and `BENCH_RSS_MIB` (default 1024).

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use conformance::random_bytes;
use driver_core::{StorageDriver, StoragePath};
use driver_fs::{FsConfig, FsDriver};
use driver_memory::MemoryDriver;
use futures::StreamExt;

const MIB: usize = 1 << 20;
const RUNS: usize = 3;

fn path(p: &str) -> StoragePath {
    StoragePath::parse(p).expect("valid path")
}

/// Median of `RUNS` timings of `f`.
async fn median<F, Fut>(mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut times = Vec::new();
    for _ in 0..RUNS {
        let start = Instant::now();
        f().await;
        times.push(start.elapsed());
    }
    times.sort();
    times[RUNS / 2]
}

fn mbps(bytes: usize, t: Duration) -> f64 {
    bytes as f64 / 1e6 / t.as_secs_f64()
}

async fn read_stream(driver: &dyn StorageDriver, p: &StoragePath) -> usize {
    let mut stream = driver.reader(p, 0).await.expect("reader");
    let mut n = 0;
    while let Some(chunk) = stream.next().await {
        n += chunk.expect("chunk").len();
    }
    n
}

async fn write_stream(driver: &dyn StorageDriver, p: &StoragePath, block: &Bytes, total: usize) {
    let mut writer = driver.writer(p, false).await.expect("writer");
    for _ in 0..total / block.len() {
        writer.write(block.clone()).await.expect("write");
    }
    writer.commit().await.expect("commit");
}

/// Prints the small-object and streaming figures of one driver; returns
/// the streaming read rate in MB/s.
async fn bench_driver(driver: Arc<dyn StorageDriver>, stream_bytes: usize) -> f64 {
    let name = driver.name();
    for (label, size, count) in [("1 KiB", 1 << 10, 2000), ("1 MiB", MIB, 200)] {
        let data = random_bytes(1, size);
        let put = median(|| async {
            for i in 0..count {
                driver
                    .put_content(&path(&format!("/bench/small/{}", i % 64)), data.clone())
                    .await
                    .expect("put");
            }
        })
        .await;
        let get = median(|| async {
            for i in 0..count {
                driver
                    .get_content(&path(&format!("/bench/small/{}", i % 64)))
                    .await
                    .expect("get");
            }
        })
        .await;
        println!(
            "{name:>10}  put {label}: {:>9.0} ops/s {:>8.1} MB/s   get {label}: {:>9.0} ops/s {:>8.1} MB/s",
            count as f64 / put.as_secs_f64(),
            mbps(size * count, put),
            count as f64 / get.as_secs_f64(),
            mbps(size * count, get),
        );
    }
    let block = random_bytes(2, MIB);
    let target = path("/bench/stream");
    let write = median(|| write_stream(&*driver, &target, &block, stream_bytes)).await;
    let read = median(|| async {
        assert_eq!(read_stream(&*driver, &target).await, stream_bytes);
    })
    .await;
    println!(
        "{name:>10}  stream write {} MiB: {:>8.1} MB/s   stream read: {:>8.1} MB/s",
        stream_bytes / MIB,
        mbps(stream_bytes, write),
        mbps(stream_bytes, read)
    );
    driver.delete(&path("/bench")).await.expect("cleanup");
    mbps(stream_bytes, read)
}

/// `dd bs=1M` reading `file` to /dev/null: the hardware reference.
async fn dd_rate(file: &std::path::Path, bytes: usize) -> f64 {
    let t = median(|| async {
        let status = Command::new("dd")
            .arg(format!("if={}", file.display()))
            .args(["of=/dev/null", "bs=1M"])
            .stderr(std::process::Stdio::null())
            .status()
            .expect("run dd");
        assert!(status.success());
    })
    .await;
    mbps(bytes, t)
}

/// Resident and peak resident set sizes of this process, in KiB.
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if let Ok(root) = std::env::var(RSS_CHILD) {
        return rss_child(&root).await;
    }
    let stream_bytes = conformance::env_or("BENCH_STREAM_MIB", 256) * MIB;
    let rss_bytes = conformance::env_or("BENCH_RSS_MIB", 1024) * MIB;
    let dir = tempfile::Builder::new()
        .prefix("driver-bench")
        .tempdir_in(".")
        .expect("tempdir");
    let fs = FsDriver::open(&FsConfig::at(dir.path())).expect("open");

    println!("driver benchmarks (median of {RUNS} runs)");
    let memory_read = bench_driver(Arc::new(MemoryDriver::new()), stream_bytes).await;
    bench_driver(Arc::new(fs.clone()), stream_bytes).await;

    // driver-fs against dd on the same file, both from the page cache.
    let block = random_bytes(3, MIB);
    let target = path("/bench/dd");
    write_stream(&fs, &target, &block, stream_bytes).await;
    let file = dir.path().join("bench/dd");
    let dd = dd_rate(&file, stream_bytes).await;
    let ours = mbps(
        stream_bytes,
        median(|| async {
            read_stream(&fs, &target).await;
        })
        .await,
    );
    println!("\nreference  dd bs=1M read of the same file: {dd:.1} MB/s");
    println!(
        "ratio      driver-fs read / dd: {:.2} (target >= 0.70)",
        ours / dd
    );
    println!(
        "memory     driver-memory stream read: {:.2} GB/s (zero-copy slices of stored buffers; target >= 2.0)",
        memory_read / 1000.0
    );

    // Peak RSS while streaming a large file, in a fresh process so that
    // memory retained from the runs above cannot hide growth.
    let big = path("/bench/rss");
    write_stream(&fs, &big, &block, rss_bytes).await;
    let out = Command::new(std::env::current_exe().expect("bench binary"))
        .env(RSS_CHILD, dir.path())
        .output()
        .expect("run the RSS child");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(
        out.status.success(),
        "RSS child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs.delete(&path("/bench")).await.expect("cleanup");
}

/// Set (to the driver root) when this process is the RSS measurement child.
const RSS_CHILD: &str = "BENCH_RSS_CHILD_ROOT";

/// Reads `/bench/rss` once and prints how far it raised the peak RSS.
async fn rss_child(root: &str) {
    let fs = FsDriver::open(&FsConfig::at(root)).expect("open");
    let big = path("/bench/rss");
    let (before, _) = rss_kib();
    let n = read_stream(&fs, &big).await;
    let (_, peak) = rss_kib();
    println!(
        "rss        reading {} MiB through driver-fs raised peak RSS by {:.1} MiB (from {:.1} MiB; target < 32)",
        n / MIB,
        peak.saturating_sub(before) as f64 / 1024.0,
        before as f64 / 1024.0
    );
}
