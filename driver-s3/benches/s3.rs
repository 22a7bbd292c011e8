//! driver-s3 throughput on a real S3 server, next to two reference clients
//! doing the same transfers in the same run: the `object_store` crate and
//! boto3 (same part size and parts in flight). Prints figures and ratios.
//!
//! Needs a server in the environment (`AWS_*`, `S3_BUCKET`): run it with
//! `scripts/bench.sh`, which starts Garage. Sizes: `BENCH_S3_MIB` (256),
//! `BENCH_S3_PART_MIB` (8), `BENCH_S3_SMALL_OPS` (2000).

#[path = "../tests/witness/mod.rs"]
mod witness;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use driver_core::{StorageDriver, StoragePath};
use driver_s3::{S3Config, S3Driver};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, WriteMultipart};

const MIB: usize = 1 << 20;
const IN_FLIGHT: usize = 64;
const RUNS: usize = 3;

fn mbps(bytes: usize, t: Duration) -> f64 {
    bytes as f64 / 1e6 / t.as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The lower quartile, median and upper quartile of `v` (not empty).
fn quartiles(mut v: Vec<f64>) -> [f64; 3] {
    v.sort_by(f64::total_cmp);
    let at = |q: usize| v[(v.len() - 1) * q / 4];
    [at(1), at(2), at(3)]
}

/// CPU time this process has used (every thread: the client's work).
fn process_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Throughput and the client's CPU time per operation of one pass.
#[derive(Clone, Copy)]
struct Measured {
    ops: f64,
    cpu_us: f64,
}

/// [`ops_per_sec`], with the process's CPU time per operation.
async fn measured<F, Fut>(ops: usize, op: F) -> Measured
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let cpu = process_cpu();
    let rate = ops_per_sec(ops, op).await;
    Measured {
        ops: rate,
        cpu_us: (process_cpu() - cpu).as_secs_f64() * 1e6 / ops as f64,
    }
}

/// Runs `ops` operations made by `op`, `IN_FLIGHT` at a time; returns ops/s.
async fn ops_per_sec<F, Fut>(ops: usize, op: F) -> f64
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let start = Instant::now();
    futures::stream::iter(0..ops)
        .map(op)
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<()>>()
        .await;
    ops as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let Some(base) = S3Config::from_env().expect("S3 environment") else {
        eprintln!("S3_BUCKET is not set: run scripts/bench.sh, which starts Garage");
        std::process::exit(2);
    };
    let size = conformance::env_or::<usize>("BENCH_S3_MIB", 256) * MIB;
    let part = conformance::env_or::<usize>("BENCH_S3_PART_MIB", 8) * MIB;
    let small_ops = conformance::env_or::<usize>("BENCH_S3_SMALL_OPS", 2000);
    let concurrency = S3Config::default().upload_concurrency;
    let root = format!("bench-{:016x}", rand::random::<u64>());
    let config = S3Config {
        root_directory: root.clone(),
        chunk_size: part as u64,
        ..base.clone()
    };
    let driver = Arc::new(S3Driver::new(config).await.expect("client"));
    let store = Arc::new(witness::object_store_client(&base));
    let data = conformance::random_bytes(9, size);
    let block = 256 << 10; // what a network stream hands over at a time
    println!(
        "S3 benchmark: {} MiB, {} MiB parts, {concurrency} in flight, median of {RUNS}",
        size / MIB,
        part / MIB
    );

    // Streaming: driver-s3.
    let (mut up, mut down) = (Vec::new(), Vec::new());
    let target = StoragePath::parse("/stream").expect("path");
    for _ in 0..RUNS {
        let start = Instant::now();
        let mut writer = driver.writer(&target, false).await.expect("writer");
        for piece in data.chunks(block) {
            writer.write(data.slice_ref(piece)).await.expect("write");
        }
        writer.commit().await.expect("commit");
        up.push(mbps(size, start.elapsed()));
        let start = Instant::now();
        let mut stream = driver.reader(&target, 0).await.expect("reader");
        let mut n = 0;
        while let Some(chunk) = stream.next().await {
            n += chunk.expect("chunk").len();
        }
        assert_eq!(n, size);
        down.push(mbps(size, start.elapsed()));
    }
    let ours = (median(up), median(down));

    // Streaming: object_store with the same part size and parts in flight.
    let (mut up, mut down) = (Vec::new(), Vec::new());
    let location = ObjectPath::from(format!("{root}/object_store"));
    for _ in 0..RUNS {
        let start = Instant::now();
        let upload = store.put_multipart(&location).await.expect("multipart");
        let mut writer = WriteMultipart::new_with_chunk_size(upload, part);
        for piece in data.chunks(block) {
            writer
                .wait_for_capacity(concurrency)
                .await
                .expect("capacity");
            writer.put(data.slice_ref(piece));
        }
        writer.finish().await.expect("finish");
        up.push(mbps(size, start.elapsed()));
        let start = Instant::now();
        let n: usize = store
            .get(&location)
            .await
            .expect("get")
            .into_stream()
            .map_ok(|b| b.len())
            .try_fold(0, |a, b| async move { Ok(a + b) })
            .await
            .expect("stream");
        assert_eq!(n, size);
        down.push(mbps(size, start.elapsed()));
    }
    store.delete(&location).await.expect("cleanup");
    let object_store = (median(up), median(down));

    // Streaming: boto3, in its own process.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/boto3_reference.py");
    let (mut up, mut down) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let out = Command::new("python3")
            .args([
                script,
                &format!("{root}/boto3"),
                &size.to_string(),
                &part.to_string(),
                &concurrency.to_string(),
            ])
            .output()
            .expect("run python3");
        assert!(
            out.status.success(),
            "boto3 reference failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = String::from_utf8_lossy(&out.stdout);
        let field = |name: &str| -> f64 {
            let rest = &line[line.find(name).expect("field") + name.len() + 3..];
            rest[..rest.find([',', '}']).expect("end")]
                .trim()
                .parse()
                .expect("number")
        };
        up.push(field("up_mbps"));
        down.push(field("down_mbps"));
    }
    let boto3 = (median(up), median(down));

    println!("{:<14} {:>12} {:>12}", "client", "up MB/s", "down MB/s");
    for (name, (u, d)) in [
        ("driver-s3", ours),
        ("object_store", object_store),
        ("boto3", boto3),
    ] {
        println!("{name:<14} {u:>12.1} {d:>12.1}");
    }
    let best_up = object_store.0.max(boto3.0);
    let best_down = object_store.1.max(boto3.1);
    println!(
        "ratio up   driver-s3 / faster reference: {:.2} (target >= 0.90)",
        ours.0 / best_up
    );
    println!(
        "ratio down driver-s3 / faster reference: {:.2} (target >= 0.90)",
        ours.1 / best_down
    );

    // Small objects, 64 in flight: put once, then get, stat and a stat of a
    // missing file in interleaved rounds (the order alternating), with the
    // client's CPU time per operation; ratios are paired within a round.
    let small = Bytes::from(vec![7u8; 1024]);
    let key = |i: usize| StoragePath::parse(&format!("/small/{}", i % 256)).expect("path");
    let location = |i: usize| ObjectPath::from(format!("{root}/os_small/{}", i % 256));
    let missing = |i: usize| format!("/absent/{}", i % 256);
    let root = &root;
    let d = &driver;
    let s = &store;
    let put = ops_per_sec(small_ops, |i| {
        let small = small.clone();
        async move { d.put_content(&key(i), small).await.expect("put") }
    })
    .await;
    let os_put = ops_per_sec(small_ops, |i| {
        let small = small.clone();
        async move {
            s.put(&location(i), small.into())
                .await
                .map(drop)
                .expect("put")
        }
    })
    .await;
    let rounds = conformance::env_or::<usize>("BENCH_S3_ROUNDS", 5);
    let mut table: Vec<(&str, Vec<[Measured; 2]>)> =
        vec![("get", vec![]), ("stat", vec![]), ("stat missing", vec![])];
    for round in 0..rounds {
        for (name, pairs) in &mut table {
            let ours = async || match *name {
                "get" => {
                    measured(small_ops, |i| async move {
                        d.get_content(&key(i)).await.expect("get");
                    })
                    .await
                }
                "stat" => {
                    measured(small_ops, |i| async move {
                        d.stat_file(&key(i)).await.expect("stat");
                    })
                    .await
                }
                _ => {
                    measured(small_ops, |i| async move {
                        let path = StoragePath::parse(&missing(i)).expect("path");
                        assert!(d.stat_file(&path).await.is_err());
                    })
                    .await
                }
            };
            let theirs = async || match *name {
                "get" => {
                    measured(small_ops, |i| async move {
                        s.get(&location(i))
                            .await
                            .expect("get")
                            .bytes()
                            .await
                            .expect("body");
                    })
                    .await
                }
                "stat" => {
                    measured(small_ops, |i| async move {
                        s.head(&location(i)).await.expect("head");
                    })
                    .await
                }
                _ => {
                    measured(small_ops, |i| async move {
                        let absent = ObjectPath::from(format!("{}{}", &*root, missing(i)));
                        assert!(s.head(&absent).await.is_err());
                    })
                    .await
                }
            };
            let pair = if round % 2 == 0 {
                let a = ours().await;
                [a, theirs().await]
            } else {
                let b = theirs().await;
                [ours().await, b]
            };
            pairs.push(pair);
        }
    }
    println!(
        "1 KiB ops ({IN_FLIGHT} in flight), driver-s3 / object_store alone; \
         median of {rounds} interleaved rounds [quartiles]"
    );
    println!(
        "  put   {put:>9.0} / {os_put:>9.0} ops/s = {:.2} (one pass; writes stay on the SDK)",
        put / os_put
    );
    for (name, pairs) in &table {
        let ops = |side: usize| median(pairs.iter().map(|p| p[side].ops).collect());
        let cpu = |side: usize| median(pairs.iter().map(|p| p[side].cpu_us).collect());
        let [low, mid, high] = quartiles(pairs.iter().map(|[a, b]| a.ops / b.ops).collect());
        println!(
            "  {name:<13} {:>9.0} / {:>9.0} ops/s = {mid:.2} [{low:.2}, {high:.2}] (target >= 1.00); \
             client CPU {:.1} / {:.1} us per op",
            ops(0),
            ops(1),
            cpu(0),
            cpu(1)
        );
    }
    driver
        .delete(&StoragePath::parse("/small").expect("path"))
        .await
        .expect("cleanup");
    let mut leftovers = store.list(Some(&ObjectPath::from(root.as_str())));
    while let Some(meta) = leftovers.next().await {
        let _ = store.delete(&meta.expect("list").location).await;
    }
}
