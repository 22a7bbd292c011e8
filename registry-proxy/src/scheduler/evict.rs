//! Which stored content goes first when the cache is over its byte budget:
//! S3-FIFO (Yang et al., "FIFO queues are all you need for cache eviction",
//! SOSP 2023), counted in bytes.
//!
//! New content enters a small FIFO queue (a tenth of the budget). Content
//! asked for again while there moves to the main queue when it leaves; the
//! rest is evicted and remembered in a ghost list, from which content that
//! comes back enters the main queue directly. The main queue is a FIFO
//! with a second chance per access (at most three). One-off pulls, giant
//! layers included, so leave within the small queue's tenth, while shared
//! base layers, asked for by many images, stay in the main one. Every
//! operation is O(1) amortised; an access only bumps a 2-bit counter.
//!
//! Content in use (leased) is never chosen: it goes back to its queue's
//! tail, and a pass that finds only content in use chooses nothing.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;

/// The most accesses counted per piece of content.
const MAX_FREQ: u8 = 3;

/// The share of the budget the small queue holds, in tenths.
const SMALL_TENTHS: u64 = 1;

/// Which queue content is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queue {
    Small,
    Main,
}

#[derive(Debug, Clone, Copy)]
struct Record {
    size: u64,
    freq: u8,
    queue: Queue,
    /// The stamp of its one live queue slot; other slots of the key are
    /// stale (it was removed, stored again, or moved on).
    slot: u64,
}

/// A queue slot: the key and the stamp it was pushed with.
type Slot<K> = (K, u64);

/// S3-FIFO over content keyed `K`, sized in bytes.
#[derive(Debug)]
pub struct S3Fifo<K> {
    budget: u64,
    records: HashMap<K, Record>,
    small: VecDeque<Slot<K>>,
    main: VecDeque<Slot<K>>,
    small_bytes: u64,
    main_bytes: u64,
    ghost: VecDeque<K>,
    ghosts: HashSet<K>,
    /// The next slot's stamp.
    stamp: u64,
}

impl<K: Copy + Eq + Hash> S3Fifo<K> {
    /// An empty policy for `budget` bytes.
    pub fn new(budget: u64) -> Self {
        Self {
            budget,
            records: HashMap::new(),
            small: VecDeque::new(),
            main: VecDeque::new(),
            small_bytes: 0,
            main_bytes: 0,
            ghost: VecDeque::new(),
            ghosts: HashSet::new(),
            stamp: 0,
        }
    }

    /// Pushes a new live slot of `key` onto `queue`'s tail.
    fn push(&mut self, key: K, queue: Queue) {
        let stamp = self.stamp;
        self.stamp += 1;
        if let Some(record) = self.records.get_mut(&key) {
            record.slot = stamp;
            record.queue = queue;
        }
        match queue {
            Queue::Small => self.small.push_back((key, stamp)),
            Queue::Main => self.main.push_back((key, stamp)),
        }
    }

    /// The bytes of the content known.
    pub fn stored(&self) -> u64 {
        self.small_bytes + self.main_bytes
    }

    /// The budget.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Whether the content known exceeds the budget.
    pub fn over(&self) -> bool {
        self.stored() > self.budget
    }

    /// Whether `key` is known.
    pub fn contains(&self, key: &K) -> bool {
        self.records.contains_key(key)
    }

    /// Every key known, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.records.keys()
    }

    /// The size of `key`, if known.
    pub fn size_of(&self, key: &K) -> Option<u64> {
        self.records.get(key).map(|r| r.size)
    }

    /// Notes an access to `key`; `false` when it is not known.
    pub fn access(&mut self, key: &K) -> bool {
        match self.records.get_mut(key) {
            Some(record) => {
                record.freq = (record.freq + 1).min(MAX_FREQ);
                true
            }
            None => false,
        }
    }

    /// Notes newly stored content of `size` bytes (an access to content
    /// already known).
    pub fn insert(&mut self, key: K, size: u64) {
        if self.access(&key) {
            return;
        }
        let queue = if self.ghosts.remove(&key) {
            self.main_bytes += size;
            Queue::Main
        } else {
            self.small_bytes += size;
            Queue::Small
        };
        self.records.insert(
            key,
            Record {
                size,
                freq: 0,
                queue,
                slot: 0,
            },
        );
        self.push(key, queue);
    }

    /// Forgets `key` (deleted for another reason: expiry, a purge, found
    /// missing). Its queue slot is skipped when reached; once stale slots
    /// outnumber live ones, the queues are compacted, so removals that no
    /// eviction follows cannot grow them without bound.
    pub fn remove(&mut self, key: &K) -> Option<u64> {
        let record = self.records.remove(key)?;
        match record.queue {
            Queue::Small => self.small_bytes -= record.size,
            Queue::Main => self.main_bytes -= record.size,
        }
        if self.small.len() + self.main.len() > 2 * self.records.len() + 64 {
            let records = &self.records;
            let live = |(key, stamp): &Slot<K>| records.get(key).is_some_and(|r| r.slot == *stamp);
            self.small.retain(live);
            self.main.retain(live);
        }
        Some(record.size)
    }

    /// Queue slots, live and stale (for tests of the bound).
    #[cfg(test)]
    fn slots(&self) -> usize {
        self.small.len() + self.main.len()
    }

    /// Chooses the next content to evict, skipping what `in_use` says is
    /// in use; forgets it and returns it with its size. `None` when
    /// nothing may go.
    pub fn evict(&mut self, in_use: impl Fn(&K) -> bool) -> Option<(K, u64)> {
        // Each known key is looked at a bounded number of times: at most
        // MAX_FREQ second chances, one promotion, one pass when in use.
        let mut budget = (self.small.len() + self.main.len()) * (MAX_FREQ as usize + 2) + 1;
        while budget > 0 {
            budget -= 1;
            // Below the budget (room made for a full disk or a watermark)
            // the small queue's share is of what is stored.
            let small_target = self.budget.min(self.stored()) / 10 * SMALL_TENTHS;
            let from_small = self.small_bytes > small_target || self.main.is_empty();
            let queue = if from_small {
                &mut self.small
            } else {
                &mut self.main
            };
            let (key, stamp) = queue.pop_front()?;
            let Some(record) = self.records.get_mut(&key) else {
                continue;
            };
            if record.slot != stamp {
                continue;
            }
            let (size, freq, queue) = (record.size, record.freq, record.queue);
            // The access a second chance or a promotion spends.
            record.freq = freq.saturating_sub(1);
            if in_use(&key) {
                record.freq = freq;
                self.push(key, queue);
                continue;
            }
            match (queue, freq) {
                // Asked for again while in the small queue (the paper's
                // threshold 1; 2 made no difference on the trace).
                (Queue::Small, 1..) => {
                    record.freq = 0;
                    self.small_bytes -= size;
                    self.main_bytes += size;
                    self.push(key, Queue::Main);
                }
                (Queue::Main, 1..) => self.push(key, Queue::Main),
                (Queue::Small, 0) => {
                    self.records.remove(&key);
                    self.small_bytes -= size;
                    self.remember(key);
                    return Some((key, size));
                }
                (Queue::Main, 0) => {
                    self.records.remove(&key);
                    self.main_bytes -= size;
                    return Some((key, size));
                }
            }
        }
        None
    }

    /// Adds `key` to the ghost list, bounded by the content known.
    fn remember(&mut self, key: K) {
        if self.ghosts.insert(key) {
            self.ghost.push_back(key);
        }
        let bound = self.records.len().max(16);
        while self.ghost.len() > bound {
            if let Some(old) = self.ghost.pop_front() {
                self.ghosts.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Content asked for once leaves before content asked for again, the
    /// giant one-off included, and the bytes add up.
    #[test]
    fn one_off_content_leaves_first() {
        let mut policy = S3Fifo::new(100);
        policy.insert(1u32, 10);
        policy.insert(2, 10);
        assert!(policy.access(&1));
        policy.insert(3, 85);
        assert_eq!(policy.stored(), 105);
        assert!(policy.over());
        // 2 was never asked again: it goes first; 1 moves to the main queue.
        assert_eq!(policy.evict(|_| false), Some((2, 10)));
        assert_eq!(policy.stored(), 95);
        assert!(!policy.over());
        policy.insert(4, 20);
        // The giant one-off goes before the content asked for twice.
        assert_eq!(policy.evict(|_| false), Some((3, 85)));
        assert!(policy.contains(&1));
        assert_eq!(policy.stored(), 30);
    }

    /// Content in use is never chosen; with only content in use, nothing is.
    #[test]
    fn content_in_use_stays() {
        let mut policy = S3Fifo::new(10);
        policy.insert(1u32, 8);
        policy.insert(2, 8);
        assert_eq!(policy.evict(|k| *k == 1), Some((2, 8)));
        policy.insert(3, 8);
        assert_eq!(policy.evict(|_| true), None);
        assert_eq!(policy.stored(), 16);
        assert!(policy.contains(&1) && policy.contains(&3));
    }

    /// Content evicted from the small queue and stored again enters the
    /// main queue (the ghost remembers it) and outlives newer one-offs.
    #[test]
    fn content_that_comes_back_enters_the_main_queue() {
        let mut policy = S3Fifo::new(30);
        policy.insert(1u32, 10);
        policy.insert(2, 10);
        policy.insert(3, 10);
        policy.insert(4, 10);
        assert_eq!(policy.evict(|_| false), Some((1, 10)));
        policy.insert(1, 10);
        assert_eq!(policy.evict(|_| false), Some((2, 10)));
        policy.insert(5, 10);
        assert_eq!(policy.evict(|_| false), Some((3, 10)));
        assert!(policy.contains(&1));
    }

    /// Removal for another reason (expiry, found missing) forgets the
    /// bytes, and a removed key's queue slot is skipped; removals and
    /// inserts that no eviction follows keep the queues bounded.
    #[test]
    fn removed_content_is_forgotten() {
        let mut policy = S3Fifo::new(10);
        policy.insert(1u32, 6);
        policy.insert(2, 6);
        assert_eq!(policy.remove(&1), Some(6));
        assert_eq!(policy.remove(&1), None);
        assert_eq!(policy.stored(), 6);
        policy.insert(3, 6);
        assert_eq!(policy.evict(|_| false), Some((2, 6)));
        assert_eq!(policy.stored(), 6);
        let mut churn = S3Fifo::new(u64::MAX);
        for round in 0..10_000u32 {
            churn.insert(round % 10, 1);
            churn.remove(&(round % 10));
        }
        assert!(churn.slots() <= 2 * 10 + 65, "{} slots", churn.slots());
    }
}
