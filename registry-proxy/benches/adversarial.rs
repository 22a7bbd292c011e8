//! Chosen digests against the scheduler's entry table: `BENCH_DIGESTS`
//! (default 100,000) upserts of digests that share their first 16 bytes
//! (what a client sending `/v2/x/blobs/sha256:0000000000000000<random>`
//! chooses), then as many of one digest in as many repositories, each
//! against the same count of random digests in a fresh table in the same
//! run. Prints each rate and its ratio (target ≤ 1.5: chosen keys cost
//! no more than random ones). Run with `scripts/bench-adversarial.sh`.

use std::time::Instant;

use conformance::env_or;
use registry_proxy::metadata::table::{Table, Ttls};
use registry_proxy::oci::{Digest, Kind};

/// A pseudo-random 64-bit value for `i` (splitmix64).
fn mix(i: u64) -> u64 {
    let mut x = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn random_digest(i: u64) -> Digest {
    let mut raw = [0; 32];
    for (n, chunk) in raw.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&mix(i * 4 + n as u64).to_le_bytes());
    }
    Digest::from_raw(raw)
}

/// Zero in the first 16 bytes, random after.
fn chosen_digest(i: u64) -> Digest {
    let mut raw = *random_digest(i).as_bytes();
    raw[..16].fill(0);
    Digest::from_raw(raw)
}

/// Upserts per second of `keys` (repository, digest) into a fresh table.
fn rate(keys: &[(String, Digest)]) -> f64 {
    let mut table = Table::new(Ttls::uniform(3600));
    let started = Instant::now();
    for (at, (repo, digest)) in keys.iter().enumerate() {
        table.upsert(repo, digest, Kind::Blob, at as u32);
    }
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(table.len(), keys.len());
    keys.len() as f64 / elapsed
}

fn main() {
    let n: u64 = env_or("BENCH_DIGESTS", 100_000);
    let repo = "library/x".to_owned();
    let random: Vec<_> = (0..n).map(|i| (repo.clone(), random_digest(i))).collect();
    let chosen: Vec<_> = (0..n).map(|i| (repo.clone(), chosen_digest(i))).collect();
    let one = random_digest(u64::MAX);
    let spread: Vec<_> = (0..n)
        .map(|i| (format!("r/{i}"), random_digest(i)))
        .collect();
    let shared: Vec<_> = (0..n).map(|i| (format!("r/{i}"), one)).collect();
    println!("{n} upserts each, fresh tables, medians of 3 (target: ratio <= 1.5)");
    for (name, adversarial, baseline) in [
        ("digests sharing 16 leading bytes", &chosen, &random),
        ("one digest in every repository", &shared, &spread),
    ] {
        let median = |keys: &[(String, Digest)]| {
            let mut rates: Vec<f64> = (0..3).map(|_| rate(keys)).collect();
            rates.sort_by(f64::total_cmp);
            rates[1]
        };
        let (base, bad) = (median(baseline), median(adversarial));
        println!(
            "{name}: {bad:.0}/s against random {base:.0}/s: ratio {:.2}",
            base / bad
        );
    }
}
