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
//!
//! The policy keeps a 16-byte [`Record`] per piece of content wherever its
//! [`Records`] keep them: in a map of its own ([`Keyed`]), or beside the
//! scheduler's per-digest counts (the table's digest arena), where a queue
//! slot is a 4-byte index and no digest is stored twice.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, Hash};

/// The most accesses counted per piece of content.
const MAX_FREQ: u8 = 3;

/// How many queue slots [`S3Fifo::next_out`] looks at per key it lists.
const NEXT_OUT_SCAN: usize = 64;

/// The share of the budget the small queue holds, in tenths.
const SMALL_TENTHS: u64 = 1;

/// Which queue content is in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Queue {
    /// Not in the policy.
    #[default]
    Out,
    Small,
    Main,
}

/// One piece of content's place in the policy.
#[derive(Debug, Clone, Copy, Default)]
pub struct Record {
    size: u64,
    /// The stamp of its one live queue slot; other slots of the key are
    /// stale (it was removed, stored again, or moved on).
    slot: u32,
    freq: u8,
    queue: Queue,
}

impl Record {
    /// Whether the content is in the policy.
    pub fn is_in(&self) -> bool {
        self.queue != Queue::Out
    }
}

/// A record not in the policy.
static OUT: Record = Record {
    size: 0,
    slot: 0,
    freq: 0,
    queue: Queue::Out,
};

/// Where the policy keeps its records.
pub trait Records {
    /// How callers name content (a digest).
    type Name: Copy + Eq;
    /// What queue slots hold.
    type Key: Copy + Eq;
    /// The key of `name`, if it has one.
    fn key(&self, name: &Self::Name) -> Option<Self::Key>;
    /// The key of `name`, made if it has none.
    fn key_or_add(&mut self, name: &Self::Name) -> Self::Key;
    /// The name of `key`.
    fn name(&self, key: Self::Key) -> Self::Name;
    /// The record of `key` (out of the policy when there is none).
    fn record(&self, key: Self::Key) -> &Record;
    /// The record of `key`, to change.
    fn record_mut(&mut self, key: Self::Key) -> &mut Record;
    /// `key`'s record just left the policy: its key may go.
    fn released(&mut self, key: Self::Key);
    /// A 64-bit fingerprint of `name`, for the ghost list.
    fn fingerprint(&self, name: &Self::Name) -> u64;
    /// Heap bytes the records add.
    fn allocated_bytes(&self) -> usize;
}

/// Records in a map of their own, keyed by name.
#[derive(Debug, Default)]
pub struct Keyed<K> {
    map: HashMap<K, Record>,
    hasher: std::hash::RandomState,
}

impl<K: Copy + Eq + Hash> Records for Keyed<K> {
    type Name = K;
    type Key = K;

    fn key(&self, name: &K) -> Option<K> {
        self.map.contains_key(name).then_some(*name)
    }

    fn key_or_add(&mut self, name: &K) -> K {
        *name
    }

    fn name(&self, key: K) -> K {
        key
    }

    fn record(&self, key: K) -> &Record {
        self.map.get(&key).unwrap_or(&OUT)
    }

    fn record_mut(&mut self, key: K) -> &mut Record {
        self.map.entry(key).or_default()
    }

    fn released(&mut self, key: K) {
        self.map.remove(&key);
    }

    fn fingerprint(&self, name: &K) -> u64 {
        self.hasher.hash_one(name)
    }

    fn allocated_bytes(&self) -> usize {
        self.map.capacity() * (size_of::<(K, Record)>() + 1)
    }
}

/// S3-FIFO over content kept in `R`, sized in bytes.
#[derive(Debug)]
pub struct S3Fifo<R: Records> {
    budget: u64,
    records: R,
    /// Content in the policy.
    live: usize,
    small: VecDeque<(R::Key, u32)>,
    main: VecDeque<(R::Key, u32)>,
    small_bytes: u64,
    main_bytes: u64,
    /// Fingerprints of content evicted from the small queue, oldest first.
    ghost: VecDeque<u64>,
    ghosts: HashSet<u64>,
    /// The next slot's stamp.
    stamp: u32,
}

impl<K: Copy + Eq + Hash> S3Fifo<Keyed<K>> {
    /// An empty policy for `budget` bytes, keeping its records in a map.
    pub fn new(budget: u64) -> Self {
        Self::with_records(
            budget,
            Keyed {
                map: HashMap::new(),
                hasher: std::hash::RandomState::new(),
            },
        )
    }
}

impl<R: Records + Default> Default for S3Fifo<R> {
    /// No budget (`u64::MAX`) until [`S3Fifo::set_budget`].
    fn default() -> Self {
        Self::with_records(u64::MAX, R::default())
    }
}

impl<R: Records> S3Fifo<R> {
    /// An empty policy for `budget` bytes over `records`.
    pub fn with_records(budget: u64, records: R) -> Self {
        Self {
            budget,
            records,
            live: 0,
            small: VecDeque::new(),
            main: VecDeque::new(),
            small_bytes: 0,
            main_bytes: 0,
            ghost: VecDeque::new(),
            ghosts: HashSet::new(),
            stamp: 0,
        }
    }

    /// Where the records are kept.
    pub fn records(&self) -> &R {
        &self.records
    }

    /// Where the records are kept, to change what is not the policy's.
    pub fn records_mut(&mut self) -> &mut R {
        &mut self.records
    }

    /// Sets the budget.
    pub fn set_budget(&mut self, budget: u64) {
        self.budget = budget;
    }

    /// Pushes a new live slot of `key` onto `queue`'s tail.
    fn push(&mut self, key: R::Key, queue: Queue) {
        let stamp = self.stamp;
        self.stamp = self.stamp.wrapping_add(1);
        let record = self.records.record_mut(key);
        record.slot = stamp;
        record.queue = queue;
        match queue {
            Queue::Small => self.small.push_back((key, stamp)),
            Queue::Main => self.main.push_back((key, stamp)),
            Queue::Out => {}
        }
    }

    /// Whether a queue slot is its key's live one.
    fn is_live(records: &R, (key, stamp): &(R::Key, u32)) -> bool {
        let record = records.record(*key);
        record.is_in() && record.slot == *stamp
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

    /// The record of `name`, if it is in the policy.
    fn get(&self, name: &R::Name) -> Option<&Record> {
        let key = self.records.key(name)?;
        Some(self.records.record(key)).filter(|r| r.is_in())
    }

    /// Whether `name` is known.
    pub fn contains(&self, name: &R::Name) -> bool {
        self.get(name).is_some()
    }

    /// The size of `name`, if known.
    pub fn size_of(&self, name: &R::Name) -> Option<u64> {
        self.get(name).map(|r| r.size)
    }

    /// Every name known, in queue order.
    pub fn names(&self) -> Vec<R::Name> {
        self.small
            .iter()
            .chain(&self.main)
            .filter(|slot| Self::is_live(&self.records, slot))
            .map(|(key, _)| self.records.name(*key))
            .collect()
    }

    /// Notes an access to `name`; `false` when it is not known.
    pub fn access(&mut self, name: &R::Name) -> bool {
        let Some(key) = self.records.key(name) else {
            return false;
        };
        let record = self.records.record_mut(key);
        if !record.is_in() {
            return false;
        }
        record.freq = (record.freq + 1).min(MAX_FREQ);
        true
    }

    /// Notes newly stored content of `size` bytes (an access to content
    /// already known).
    pub fn insert(&mut self, name: R::Name, size: u64) {
        if self.access(&name) {
            return;
        }
        let queue = if self.ghosts.remove(&self.records.fingerprint(&name)) {
            self.main_bytes += size;
            Queue::Main
        } else {
            self.small_bytes += size;
            Queue::Small
        };
        let key = self.records.key_or_add(&name);
        *self.records.record_mut(key) = Record {
            size,
            ..Record::default()
        };
        self.live += 1;
        self.push(key, queue);
    }

    /// Takes `key`'s record out of the policy, returning its size.
    fn take(&mut self, key: R::Key) -> u64 {
        let record = std::mem::take(self.records.record_mut(key));
        match record.queue {
            Queue::Small => self.small_bytes -= record.size,
            Queue::Main => self.main_bytes -= record.size,
            Queue::Out => {}
        }
        self.live -= 1;
        self.records.released(key);
        record.size
    }

    /// Forgets `name` (deleted for another reason: expiry, a purge, found
    /// missing). Its queue slot is skipped when reached; once stale slots
    /// outnumber live ones, the queues are compacted, so removals that no
    /// eviction follows cannot grow them without bound.
    pub fn remove(&mut self, name: &R::Name) -> Option<u64> {
        let key = self.records.key(name)?;
        if !self.records.record(key).is_in() {
            return None;
        }
        let size = self.take(key);
        if self.small.len() + self.main.len() > 2 * self.live + 64 {
            let records = &self.records;
            self.small.retain(|slot| Self::is_live(records, slot));
            self.main.retain(|slot| Self::is_live(records, slot));
        }
        Some(size)
    }

    /// Queue slots, live and stale (for tests of the bound).
    #[cfg(test)]
    fn slots(&self) -> usize {
        self.small.len() + self.main.len()
    }

    /// Heap bytes held: the queues, the ghost list and what the records
    /// add.
    pub fn allocated_bytes(&self) -> usize {
        (self.small.capacity() + self.main.capacity()) * size_of::<(R::Key, u32)>()
            + self.ghost.capacity() * 8
            + self.ghosts.capacity() * 9
            + self.records.allocated_bytes()
    }

    /// The first `n` names eviction would choose, with their sizes, if
    /// nothing were asked for or in use meanwhile: the small queue's content
    /// not asked for again, from its head, then the main queue's.
    pub fn next_out(&self, n: usize) -> Vec<(R::Name, u64)> {
        // Looks at a bounded number of slots: the caller holds the lock
        // every access takes.
        self.small
            .iter()
            .chain(&self.main)
            .take(n.saturating_mul(NEXT_OUT_SCAN))
            .filter(|slot| Self::is_live(&self.records, slot))
            .map(|(key, _)| (*key, self.records.record(*key)))
            .filter(|(_, r)| r.freq == 0)
            .map(|(key, r)| (self.records.name(key), r.size))
            .take(n)
            .collect()
    }

    /// Chooses the next content to evict, skipping what `in_use` says is
    /// in use; forgets it and returns it with its size. `None` when
    /// nothing may go.
    pub fn evict(&mut self, in_use: impl Fn(&R::Name) -> bool) -> Option<(R::Name, u64)> {
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
            let slot = queue.pop_front()?;
            if !Self::is_live(&self.records, &slot) {
                continue;
            }
            let key = slot.0;
            let name = self.records.name(key);
            let record = self.records.record_mut(key);
            let (size, freq, queue) = (record.size, record.freq, record.queue);
            // The access a second chance or a promotion spends.
            record.freq = freq.saturating_sub(1);
            if in_use(&name) {
                self.records.record_mut(key).freq = freq;
                self.push(key, queue);
                continue;
            }
            match (queue, freq) {
                // Asked for again while in the small queue (the paper's
                // threshold 1; 2 made no difference on the trace).
                (Queue::Small, 1..) => {
                    self.records.record_mut(key).freq = 0;
                    self.small_bytes -= size;
                    self.main_bytes += size;
                    self.push(key, Queue::Main);
                }
                (Queue::Main, 1..) => self.push(key, Queue::Main),
                (Queue::Small, 0) => {
                    let fingerprint = self.records.fingerprint(&name);
                    self.take(key);
                    self.remember(fingerprint);
                    return Some((name, size));
                }
                (Queue::Main, 0) | (Queue::Out, _) => {
                    self.take(key);
                    return Some((name, size));
                }
            }
        }
        None
    }

    /// Adds `fingerprint` to the ghost list, bounded by the content known.
    fn remember(&mut self, fingerprint: u64) {
        if self.ghosts.insert(fingerprint) {
            self.ghost.push_back(fingerprint);
        }
        let bound = self.live.max(16);
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

    /// What would go next is what eviction then chooses.
    #[test]
    fn next_out_predicts_eviction() {
        let mut policy = S3Fifo::new(100);
        for key in 1u32..=5 {
            policy.insert(key, 30);
        }
        policy.access(&2);
        assert_eq!(policy.next_out(2), vec![(1, 30), (3, 30)]);
        assert_eq!(policy.evict(|_| false), Some((1, 30)));
        assert_eq!(policy.evict(|_| false), Some((3, 30)));
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
