//! Caps on what one namespace asks of its upstream: requests at once (a
//! semaphore whose permit lives as long as the answer is read) and bytes
//! per second of blob bodies (a token bucket shared by every fill of the
//! namespace). Blob bodies, which hold their turn for minutes, take turns
//! of their own: manifests, tag lists, referrers, proofs and tokens are
//! never queued behind them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::sync::lock;

/// The caps of one upstream.
#[derive(Debug, Default)]
pub struct Limits {
    /// Small requests at once, when capped.
    requests: Option<Arc<Semaphore>>,
    /// Blob bodies at once, when capped.
    bodies: Option<Arc<Semaphore>>,
    /// Blob bytes per second, when capped.
    bandwidth: Option<Bandwidth>,
}

/// Which turns a request takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// An answer read at once: a manifest, a tag list or referrers page, a
    /// HEAD (a proof of access), a token.
    Small,
    /// A blob body, streamed for as long as it takes.
    Body,
}

/// A permit to ask the upstream, held until its answer is read.
#[derive(Debug)]
pub struct Permit {
    /// Returned to the semaphore when dropped.
    _held: Option<OwnedSemaphorePermit>,
}

impl Limits {
    /// At most `requests` small requests and `requests` blob bodies at
    /// once, and `bytes_per_second` of blob bodies (`None`: no cap).
    pub fn new(requests: Option<usize>, bytes_per_second: Option<u64>) -> Self {
        let turns = || requests.map(|n| Arc::new(Semaphore::new(n.max(1))));
        Self {
            requests: turns(),
            bodies: turns(),
            bandwidth: bytes_per_second.map(Bandwidth::new),
        }
    }

    /// Waits (at most `within`) for a `turn` to ask the upstream; `None`
    /// when none came in time.
    pub async fn permit(&self, turn: Turn, within: Duration) -> Option<Permit> {
        let turns = match turn {
            Turn::Small => &self.requests,
            Turn::Body => &self.bodies,
        };
        match turns {
            None => Some(Permit { _held: None }),
            Some(turns) => tokio::time::timeout(within, Arc::clone(turns).acquire_owned())
                .await
                .ok()?
                .ok()
                .map(|p| Permit { _held: Some(p) }),
        }
    }

    /// Waits until `n` more bytes of blob body may pass.
    pub async fn pass(&self, n: usize) {
        if let Some(bandwidth) = &self.bandwidth {
            bandwidth.pass(n as u64).await;
        }
    }

    /// Whether blob bodies are capped.
    pub fn caps_bandwidth(&self) -> bool {
        self.bandwidth.is_some()
    }
}

/// A token bucket: `rate` bytes a second, bursts of a tenth of a second.
#[derive(Debug)]
struct Bandwidth {
    rate: u64,
    /// Bytes that may pass now (negative: owed), and when that was so.
    state: Mutex<(f64, Instant)>,
}

impl Bandwidth {
    fn new(rate: u64) -> Self {
        Self {
            rate: rate.max(1),
            state: Mutex::new((0.0, Instant::now())),
        }
    }

    /// Takes `n` bytes from the bucket, waiting as long as the debt takes
    /// to pay back.
    async fn pass(&self, n: u64) {
        let rate = self.rate as f64;
        let wait = {
            let mut state = lock(&self.state);
            let now = Instant::now();
            let (tokens, at) = *state;
            let refilled = (tokens + now.duration_since(at).as_secs_f64() * rate).min(rate / 10.0);
            let left = refilled - n as f64;
            *state = (left, now);
            (left < 0.0).then(|| Duration::from_secs_f64(-left / rate))
        };
        if let Some(wait) = wait {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_bucket_lets_through_its_rate_and_the_semaphore_its_count() {
        let limits = Limits::new(Some(2), Some(1 << 20));
        let started = Instant::now();
        for _ in 0..40 {
            limits.pass(64 << 10).await;
        }
        // 2.5 MiB at 1 MiB/s, with no burst to start with.
        let took = started.elapsed().as_secs_f64();
        assert!((2.4..2.6).contains(&took), "{took}");
        let second = Duration::from_secs(1);
        let first = limits.permit(Turn::Small, second).await;
        let next = limits.permit(Turn::Small, second).await;
        assert!(first.is_some() && next.is_some());
        assert!(limits.permit(Turn::Small, second).await.is_none());
        drop(first);
        assert!(limits.permit(Turn::Small, second).await.is_some());
        assert!(
            Limits::default()
                .permit(Turn::Small, Duration::ZERO)
                .await
                .is_some()
        );
    }

    /// Blob bodies, which hold their turns for minutes, never take the
    /// turns of small requests (manifests, tags, proofs, tokens).
    #[tokio::test(start_paused = true)]
    async fn blob_bodies_leave_small_requests_their_turns() {
        let limits = Limits::new(Some(2), None);
        let second = Duration::from_secs(1);
        let bodies = [
            limits.permit(Turn::Body, second).await,
            limits.permit(Turn::Body, second).await,
        ];
        assert!(bodies.iter().all(Option::is_some));
        assert!(limits.permit(Turn::Body, second).await.is_none());
        assert!(
            limits.permit(Turn::Small, second).await.is_some(),
            "a manifest's turn while two blob bodies stream"
        );
    }
}
