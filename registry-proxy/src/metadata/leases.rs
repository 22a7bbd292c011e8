//! Leases: what a fill or a client pull in progress uses, kept from expiry
//! and collection while the lease lives.
//!
//! A [`Lease`] is held by a response body or a fill and ends when dropped;
//! a pull's lease ([`Leases::extend`]) covers a manifest and what it
//! references for a while after the manifest was served, since the client
//! fetches the blobs next. Every lease also ends at its deadline, so a
//! holder that hangs (or a replica that dies) cannot pin content forever.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clock::{Clock, Secs};
use crate::oci::Digest;
use crate::sync::lock;

#[derive(Debug, Default, Clone, Copy)]
struct Held {
    /// Leases held by a live [`Lease`] value.
    holders: u32,
    /// Until when the holders' leases last at most.
    holders_until: Secs,
    /// Until when a timed lease lasts.
    until: Secs,
    /// When the holders' leases began (the first of those still held).
    since: Secs,
    /// Whether a pull's timed lease was taken and no holder has let go
    /// since (the pull has not fetched it yet).
    awaited: bool,
}

impl Held {
    fn live(&self, now: Secs) -> bool {
        (self.holders > 0 && now < self.holders_until) || now < self.until
    }

    /// See [`Leases::in_use`]; `timeout` is a lease's longest life.
    fn in_use(&self, now: Secs) -> bool {
        (self.holders > 0 && now < self.holders_until) || (now < self.until && self.awaited)
    }
}

/// Every lease of this process.
pub struct Leases {
    clock: Clock,
    /// A lease's longest life.
    timeout: Secs,
    held: Mutex<HashMap<Digest, Held>>,
}

impl Leases {
    /// Leases timed by `clock` that end `timeout` after they were taken at
    /// the latest.
    pub fn new(clock: Clock, timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            clock,
            timeout: Secs::try_from(timeout.as_secs()).unwrap_or(Secs::MAX),
            held: Mutex::new(HashMap::new()),
        })
    }

    /// A lease on `digests` until the returned value is dropped (or the
    /// timeout passes).
    pub fn hold(self: &Arc<Self>, digests: &[Digest]) -> Lease {
        let now = self.clock.now_secs();
        let until = now.saturating_add(self.timeout);
        let mut held = lock(&self.held);
        for digest in digests {
            let h = held.entry(*digest).or_default();
            if h.holders == 0 {
                h.since = now;
            }
            h.holders += 1;
            h.holders_until = h.holders_until.max(until);
        }
        Lease {
            leases: Arc::clone(self),
            digests: digests.to_vec(),
        }
    }

    /// A lease on `digests` for the timeout from now: a client pull's,
    /// taken when its manifest is served.
    pub fn extend(&self, digests: impl IntoIterator<Item = Digest>) {
        let until = self.clock.now_secs().saturating_add(self.timeout);
        let mut held = lock(&self.held);
        for digest in digests {
            let h = held.entry(digest).or_default();
            h.until = h.until.max(until);
            h.awaited = true;
        }
    }

    /// Whether `digest` is in use in the sense eviction honours: held by a
    /// response or fill, or under a pull's timed lease that no fetch has
    /// ended yet (a pull whose manifest was served and that has not asked
    /// for this blob since). Once a pull fetched the blob, only expiry and
    /// collection keep honouring its timed lease.
    pub fn in_use(&self, digest: &Digest) -> bool {
        let now = self.clock.now_secs();
        lock(&self.held).get(digest).is_some_and(|h| h.in_use(now))
    }

    /// Every digest [`Self::in_use`].
    pub fn using(&self) -> Vec<Digest> {
        let now = self.clock.now_secs();
        lock(&self.held)
            .iter()
            .filter(|(_, h)| h.in_use(now))
            .map(|(d, _)| *d)
            .collect()
    }

    /// Whether a live lease covers `digest`.
    pub fn is_held(&self, digest: &Digest) -> bool {
        let now = self.clock.now_secs();
        lock(&self.held).get(digest).is_some_and(|h| h.live(now))
    }

    /// Every digest under a live lease (forgetting the ended ones).
    pub fn live(&self) -> HashSet<Digest> {
        let now = self.clock.now_secs();
        let mut held = lock(&self.held);
        held.retain(|_, h| h.holders > 0 || now < h.until);
        held.iter()
            .filter(|(_, h)| h.live(now))
            .map(|(d, _)| *d)
            .collect()
    }

    /// The digests other replicas must know about: under a timed lease, or
    /// held for at least `min_age` (a short response needs no lease beyond
    /// its fresh access time, so warm hits publish nothing).
    pub fn lasting(&self, min_age: Secs) -> HashSet<Digest> {
        let now = self.clock.now_secs();
        lock(&self.held)
            .iter()
            .filter(|(_, h)| {
                now < h.until
                    || (h.live(now) && h.holders > 0 && now.saturating_sub(h.since) >= min_age)
            })
            .map(|(d, _)| *d)
            .collect()
    }

    fn release(&self, digests: &[Digest]) {
        let now = self.clock.now_secs();
        let mut held = lock(&self.held);
        for digest in digests {
            if let Some(h) = held.get_mut(digest) {
                h.holders = h.holders.saturating_sub(1);
                h.awaited = false;
                if h.holders == 0 && now >= h.until {
                    held.remove(digest);
                }
            }
        }
    }
}

/// A lease held until dropped.
pub struct Lease {
    leases: Arc<Leases>,
    digests: Vec<Digest>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.leases.release(&self.digests);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn leases_end_when_dropped_or_timed_out() {
        let leases = Leases::new(Clock::system(), Duration::from_secs(60));
        let (a, b) = (Digest::from_raw([1; 32]), Digest::from_raw([2; 32]));
        let first = leases.hold(&[a]);
        let second = leases.hold(&[a, b]);
        drop(first);
        assert!(leases.is_held(&a) && leases.is_held(&b));
        assert!(leases.lasting(10).is_empty(), "too young to publish");
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(leases.lasting(10), HashSet::from([a, b]));
        drop(second);
        assert!(!leases.is_held(&a) && !leases.is_held(&b));
        assert!(leases.live().is_empty());

        leases.extend([a]);
        let hung = leases.hold(&[b]);
        assert_eq!(leases.live(), HashSet::from([a, b]));
        tokio::time::advance(Duration::from_secs(61)).await;
        // Both the timed lease and the one whose holder hangs are over.
        assert!(!leases.is_held(&a) && !leases.is_held(&b));
        assert!(leases.live().is_empty());
        drop(hung);
    }

    /// A pull's timed lease keeps content in use for eviction until a
    /// fetch of it ends after the lease was taken; a held lease keeps it
    /// in use while held.
    #[tokio::test(start_paused = true)]
    async fn eviction_honours_pulls_until_they_fetched() {
        let leases = Leases::new(Clock::system(), Duration::from_secs(600));
        let a = Digest::from_raw([1; 32]);
        leases.extend([a]);
        assert!(leases.in_use(&a), "the pull has not fetched it");
        let fetch = leases.hold(&[a]);
        assert!(leases.in_use(&a), "being fetched");
        drop(fetch);
        assert!(!leases.in_use(&a), "fetched");
        assert!(leases.is_held(&a), "expiry still honours the pull's lease");
        leases.extend([a]);
        assert!(leases.in_use(&a), "another pull within the same second");
        drop(leases.hold(&[a]));
        assert!(!leases.in_use(&a), "fetched within the same second");
        tokio::time::advance(Duration::from_secs(5)).await;
        leases.extend([a]);
        assert!(leases.in_use(&a), "another pull");
    }
}
