//! Hit ratios of the eviction policy (S3-FIFO in bytes, as the scheduler
//! runs it) against LRU on a synthetic registry trace, at budgets of 5%,
//! 10%, 25% and 50% of the trace's working set, with what an offline
//! policy that knows the future reaches as the bound.
//!
//! The trace (seeded, parameterised): images chosen by Zipf popularity;
//! each pull asks for its manifest, its config and every layer. Layers:
//! one base layer from a small pool of OS bases (itself Zipf-popular), in
//! half the images a runtime layer from a larger shared pool, then one to
//! six layers of the image's own. Layer sizes are log-normal: the image's
//! own with a median of 1 MiB and 87% under 10 MiB (the shape Anwar et al.
//! report for a production registry, FAST '18: most layers under 10 MB,
//! a long tail to gigabytes), capped at 4 GiB; bases with a median of
//! 30 MiB, runtimes 50 MiB.
//!
//! `scripts/bench-eviction.sh`; `BENCH_IMAGES` (3000), `BENCH_PULLS`
//! (200000), `BENCH_ZIPF` (0.9), `BENCH_SEED` (1) tune the trace.

use std::collections::{BTreeMap, HashMap};

use rand::{Rng, SeedableRng};
use registry_proxy::evict::S3Fifo;

const KIB: f64 = 1024.0;
const MIB: f64 = 1024.0 * 1024.0;

/// One request of the trace: a blob and its size.
#[derive(Clone, Copy)]
struct Request {
    blob: u32,
    size: u64,
}

/// Zipf sampling over `n` ranks with exponent `s` (inverse CDF).
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Self {
        let mut total = 0.0;
        let cdf = (1..=n)
            .map(|rank| {
                total += 1.0 / (rank as f64).powf(s);
                total
            })
            .collect::<Vec<_>>();
        Self {
            cdf: cdf.into_iter().map(|c| c / total).collect(),
        }
    }

    fn sample(&self, rng: &mut impl Rng) -> usize {
        let u: f64 = rng.random();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
    }
}

/// A log-normal size with `median` bytes and shape `sigma`, within
/// [`min`, `max`].
fn lognormal(rng: &mut impl Rng, median: f64, sigma: f64, min: f64, max: f64) -> u64 {
    // Box-Muller.
    let (u1, u2): (f64, f64) = (rng.random::<f64>().max(f64::MIN_POSITIVE), rng.random());
    let normal = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
    (median * (sigma * normal).exp()).clamp(min, max) as u64
}

/// The trace's requests and its working set in bytes.
fn trace(images: usize, pulls: usize, zipf: f64, seed: u64) -> (Vec<Request>, u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut sizes: Vec<u64> = Vec::new();
    let mut blob = |size: u64| {
        sizes.push(size);
        (sizes.len() - 1) as u32
    };
    let bases: Vec<u32> = (0..20)
        .map(|_| blob(lognormal(&mut rng, 30.0 * MIB, 0.6, MIB, 1024.0 * MIB)))
        .collect();
    let runtimes: Vec<u32> = (0..300)
        .map(|_| blob(lognormal(&mut rng, 50.0 * MIB, 1.0, MIB, 2048.0 * MIB)))
        .collect();
    let (base_pick, runtime_pick) = (Zipf::new(bases.len(), 1.0), Zipf::new(runtimes.len(), 1.0));
    // Own layers: median 1 MiB; sigma = ln(10) / 1.13, so P(< 10 MiB) = 0.87.
    let sigma = 10f64.ln() / 1.13;
    let mut image_blobs: Vec<Vec<u32>> = Vec::with_capacity(images);
    for _ in 0..images {
        let mut blobs = vec![
            blob(lognormal(&mut rng, 2.0 * KIB, 0.5, 512.0, 64.0 * KIB)), // manifest
            blob(lognormal(&mut rng, 4.0 * KIB, 0.7, 512.0, 256.0 * KIB)), // config
            bases[base_pick.sample(&mut rng)],
        ];
        if rng.random_bool(0.5) {
            blobs.push(runtimes[runtime_pick.sample(&mut rng)]);
        }
        for _ in 0..rng.random_range(1..=6) {
            blobs.push(blob(lognormal(&mut rng, MIB, sigma, 100.0, 4096.0 * MIB)));
        }
        image_blobs.push(blobs);
    }
    let popularity = Zipf::new(images, zipf);
    // Popularity ranks are shuffled over images so that rank and layer
    // sizes are independent.
    let mut order: Vec<usize> = (0..images).collect();
    for i in (1..images).rev() {
        order.swap(i, rng.random_range(0..=i));
    }
    let mut requests = Vec::new();
    let mut seen = vec![false; sizes.len()];
    let mut working_set = 0;
    for _ in 0..pulls {
        for &b in &image_blobs[order[popularity.sample(&mut rng)]] {
            let size = sizes[b as usize];
            if !std::mem::replace(&mut seen[b as usize], true) {
                working_set += size;
            }
            requests.push(Request { blob: b, size });
        }
    }
    (requests, working_set)
}

/// Hits over a trace.
#[derive(Default, Clone, Copy)]
struct Ratios {
    requests: u64,
    hits: u64,
    bytes: u64,
    hit_bytes: u64,
}

impl Ratios {
    fn count(&mut self, request: &Request, hit: bool) {
        self.requests += 1;
        self.bytes += request.size;
        if hit {
            self.hits += 1;
            self.hit_bytes += request.size;
        }
    }

    fn byte_ratio(&self) -> f64 {
        self.hit_bytes as f64 / self.bytes as f64
    }

    fn request_ratio(&self) -> f64 {
        self.hits as f64 / self.requests as f64
    }
}

/// LRU in bytes, the reference.
fn lru(requests: &[Request], budget: u64) -> Ratios {
    let mut ratios = Ratios::default();
    let mut at: HashMap<u32, u64> = HashMap::new();
    let mut order: BTreeMap<u64, (u32, u64)> = BTreeMap::new();
    let mut stored = 0u64;
    for (tick, request) in requests.iter().enumerate() {
        let tick = tick as u64;
        let hit = match at.insert(request.blob, tick) {
            Some(old) => {
                order.remove(&old);
                true
            }
            None => false,
        };
        ratios.count(request, hit);
        if !hit && request.size > budget {
            at.remove(&request.blob);
            continue;
        }
        order.insert(tick, (request.blob, request.size));
        if !hit {
            stored += request.size;
        }
        while stored > budget {
            let Some((_, (blob, size))) = order.pop_first() else {
                break;
            };
            at.remove(&blob);
            stored -= size;
        }
    }
    ratios
}

/// Farthest next use first (Belady's rule, which knows the future): what
/// no online policy reaches, the headroom over LRU.
fn belady(requests: &[Request], budget: u64) -> Ratios {
    let mut next = vec![u64::MAX; requests.len()];
    let mut last: HashMap<u32, usize> = HashMap::new();
    for (i, r) in requests.iter().enumerate().rev() {
        if let Some(&j) = last.get(&r.blob) {
            next[i] = j as u64;
        }
        last.insert(r.blob, i);
    }
    let mut ratios = Ratios::default();
    let mut cached: HashMap<u32, (u64, u64)> = HashMap::new(); // blob -> (next, size)
    let mut order: BTreeMap<(u64, u32), u64> = BTreeMap::new();
    let mut stored = 0u64;
    for (i, r) in requests.iter().enumerate() {
        let hit = if let Some((n, size)) = cached.remove(&r.blob) {
            order.remove(&(n, r.blob));
            stored -= size;
            true
        } else {
            false
        };
        ratios.count(r, hit);
        if r.size > budget || next[i] == u64::MAX {
            continue;
        }
        cached.insert(r.blob, (next[i], r.size));
        order.insert((next[i], r.blob), r.size);
        stored += r.size;
        while stored > budget {
            let ((n, b), size) = order.pop_last().unwrap();
            let _ = n;
            cached.remove(&b);
            stored -= size;
        }
    }
    ratios
}

/// S3-FIFO in bytes, as the scheduler runs it.
fn s3fifo(requests: &[Request], budget: u64) -> Ratios {
    let mut ratios = Ratios::default();
    let mut policy = S3Fifo::new(budget);
    for request in requests {
        let hit = policy.access(&request.blob);
        ratios.count(request, hit);
        if hit || request.size > budget {
            continue;
        }
        policy.insert(request.blob, request.size);
        while policy.over() {
            if policy.evict(|_| false).is_none() {
                break;
            }
        }
    }
    ratios
}

fn main() {
    let images = conformance::env_or("BENCH_IMAGES", 3000);
    let pulls = conformance::env_or("BENCH_PULLS", 200_000);
    let zipf: f64 = conformance::env_or("BENCH_ZIPF", 0.9);
    let seed: u64 = conformance::env_or("BENCH_SEED", 1);
    let (requests, working_set) = trace(images, pulls, zipf, seed);
    println!(
        "trace: {images} images, {pulls} pulls (Zipf {zipf}, seed {seed}): {} requests, {} bytes asked, working set {:.1} GiB",
        requests.len(),
        requests.iter().map(|r| r.size).sum::<u64>(),
        working_set as f64 / (1024.0 * MIB)
    );
    println!();
    println!(
        "| budget | byte hit ratio: LRU | S3-FIFO | S3-FIFO / LRU | farthest next use (offline) / LRU | request hit ratio: LRU | S3-FIFO |"
    );
    println!("|---|---|---|---|---|---|---|");
    for percent in [5u64, 10, 25, 50] {
        let budget = working_set / 100 * percent;
        let reference = lru(&requests, budget);
        let ours = s3fifo(&requests, budget);
        let bound = belady(&requests, budget);
        println!(
            "| {percent}% | {:.3} | {:.3} | {:.2} | {:.3} = {:.2} | {:.3} | {:.3} |",
            reference.byte_ratio(),
            ours.byte_ratio(),
            ours.byte_ratio() / reference.byte_ratio(),
            bound.byte_ratio(),
            bound.byte_ratio() / reference.byte_ratio(),
            reference.request_ratio(),
            ours.request_ratio(),
        );
    }
}
