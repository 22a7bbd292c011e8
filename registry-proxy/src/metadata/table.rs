//! The scheduler's entries in memory. An entry is about 44 bytes in a slot
//! array, 5 bytes in the index and 8 bytes (once or twice) in the expiry
//! heap; adding or refreshing one is O(log n).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::BuildHasher;

use hashbrown::HashTable;

use super::digests::{Digests, place};
use crate::evict::S3Fifo;
use crate::oci::{Digest, Kind};

pub use crate::clock::Secs;

/// An entry the table hands out: owned, detached from the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The repository name.
    pub repo: Box<str>,
    /// The content's sha256.
    pub digest: Digest,
    /// What the entry keeps alive.
    pub kind: Kind,
    /// The last access.
    pub at: Secs,
}

const LIVE: u8 = 1;
const LINKED: u8 = 2;

#[derive(Clone, Copy)]
struct Slot {
    digest: Digest,
    repo: u32,
    at: Secs,
    kind: Kind,
    flags: u8,
}

/// The outcome of [`Table::upsert`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upserted {
    /// The entry did not exist.
    pub created: bool,
    /// Its link is known to exist in storage.
    pub linked: bool,
    /// Its access time changed (the journal must record it).
    pub changed: bool,
}

/// How long entries live unaccessed, in seconds; zero is forever.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ttls {
    /// The lifetime in registry:2's namespace and any other not listed.
    pub default: Secs,
    /// Lifetimes by namespace directory.
    pub namespaces: HashMap<String, Secs>,
}

impl Ttls {
    /// Every entry lives `ttl`.
    pub fn uniform(ttl: Secs) -> Self {
        Self {
            default: ttl,
            namespaces: HashMap::new(),
        }
    }

    /// The lifetime of the entries of the repository keyed `repo`.
    pub fn of(&self, repo: &str) -> Secs {
        crate::layout::namespace_dir_of(repo)
            .and_then(|dir| self.namespaces.get(dir))
            .copied()
            .unwrap_or(self.default)
    }

    /// The shortest lifetime that is not forever.
    pub fn shortest(&self) -> Option<Secs> {
        std::iter::once(self.default)
            .chain(self.namespaces.values().copied())
            .filter(|&t| t > 0)
            .min()
    }
}

/// When an entry accessed at `at` falls due under `ttl` (never: `Secs::MAX`).
fn due(at: Secs, ttl: Secs) -> Secs {
    if ttl == 0 {
        Secs::MAX
    } else {
        at.saturating_add(ttl)
    }
}

/// Entries keyed by (repository, digest, kind), ordered by the time they
/// fall due (access time plus their namespace's lifetime).
///
/// The index hashes the whole key (repository, digest, kind) with a keyed
/// hasher: digests are chosen by clients, so neither their bytes nor one
/// digest used by many repositories may line entries up in one probe
/// sequence. How many entries use each digest is counted apart, for
/// "does anything else still use this blob".
#[derive(Default)]
pub struct Table {
    slots: Vec<Slot>,
    free: Vec<u32>,
    index: HashTable<u32>,
    /// (due time, slot); items whose slot moved on are skipped lazily.
    heap: BinaryHeap<Reverse<(Secs, u32)>>,
    repos: Vec<Box<str>>,
    /// The lifetime of each repository's entries.
    repo_ttls: Vec<Secs>,
    ttls: Ttls,
    repo_index: HashTable<u32>,
    hasher: std::hash::RandomState,
    /// How many entries use each digest, and the byte budget's policy
    /// over them.
    budget: S3Fifo<Digests>,
    live: usize,
}

/// The index's hash of an entry's key.
fn key_hash(hasher: &std::hash::RandomState, repo: u32, digest: &Digest, kind: Kind) -> u64 {
    hasher.hash_one((repo, digest, kind))
}

impl Table {
    /// An empty table whose entries live `ttls`.
    pub fn new(ttls: Ttls) -> Self {
        Self {
            ttls,
            ..Self::default()
        }
    }

    /// The lifetime of the entries of `repo`.
    pub fn ttl_of(&self, repo: &str) -> Secs {
        self.ttls.of(repo)
    }

    /// Live entries.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether there are no live entries.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    fn repo_id(&mut self, repo: &str) -> u32 {
        let hash = self.hasher.hash_one(repo);
        let repos = &self.repos;
        if let Some(&id) = self
            .repo_index
            .find(hash, |&id| &*repos[id as usize] == repo)
        {
            return id;
        }
        let id = self.repos.len() as u32;
        self.repos.push(repo.into());
        self.repo_ttls.push(self.ttls.of(repo));
        let (repos, hasher) = (&self.repos, &self.hasher);
        self.repo_index
            .insert_unique(hash, id, |&id| hasher.hash_one(&*repos[id as usize]));
        id
    }

    fn known_repo(&self, repo: &str) -> Option<u32> {
        let hash = self.hasher.hash_one(repo);
        self.repo_index
            .find(hash, |&id| &*self.repos[id as usize] == repo)
            .copied()
    }

    fn find(&self, repo: u32, digest: &Digest, kind: Kind) -> Option<u32> {
        self.index
            .find(key_hash(&self.hasher, repo, digest, kind), |&i| {
                let s = &self.slots[i as usize];
                s.repo == repo && s.kind == kind && s.digest == *digest
            })
            .copied()
    }

    /// Records an access at `at` (never moving an entry's time backwards).
    pub fn upsert(&mut self, repo: &str, digest: &Digest, kind: Kind, at: Secs) -> Upserted {
        let repo = self.repo_id(repo);
        if let Some(i) = self.find(repo, digest, kind) {
            let slot = &mut self.slots[i as usize];
            let changed = at > slot.at;
            let linked = slot.flags & LINKED != 0;
            if changed {
                slot.at = at;
                self.push(i);
            }
            return Upserted {
                created: false,
                linked,
                changed,
            };
        }
        let slot = Slot {
            digest: *digest,
            repo,
            at,
            kind,
            flags: LIVE,
        };
        let i = place(&mut self.slots, &mut self.free, slot);
        let (slots, hasher) = (&self.slots, &self.hasher);
        let hash = key_hash(hasher, repo, digest, kind);
        self.index.insert_unique(hash, i, |&i| {
            let s = &slots[i as usize];
            key_hash(hasher, s.repo, &s.digest, s.kind)
        });
        self.budget.records_mut().add_user(digest);
        self.live += 1;
        self.push(i);
        Upserted {
            created: true,
            linked: false,
            changed: true,
        }
    }

    /// Notes that the entry's link exists in storage.
    pub fn set_linked(&mut self, repo: &str, digest: &Digest, kind: Kind) {
        if let Some(i) = self
            .known_repo(repo)
            .and_then(|r| self.find(r, digest, kind))
        {
            self.slots[i as usize].flags |= LINKED;
        }
    }

    /// Whether the entry exists and its link is known to exist in storage.
    pub fn is_linked(&self, repo: &str, digest: &Digest, kind: Kind) -> bool {
        self.known_repo(repo)
            .and_then(|r| self.find(r, digest, kind))
            .is_some_and(|i| self.slots[i as usize].flags & LINKED != 0)
    }

    /// Whether the entry exists.
    pub fn contains(&self, repo: &str, digest: &Digest, kind: Kind) -> bool {
        self.known_repo(repo)
            .and_then(|r| self.find(r, digest, kind))
            .is_some()
    }

    /// The entry's access time.
    pub fn access_time(&self, repo: &str, digest: &Digest, kind: Kind) -> Option<Secs> {
        let i = self.find(self.known_repo(repo)?, digest, kind)?;
        Some(self.slots[i as usize].at)
    }

    /// Removes an entry; whether it existed.
    pub fn remove(&mut self, repo: &str, digest: &Digest, kind: Kind) -> bool {
        match self
            .known_repo(repo)
            .and_then(|r| self.find(r, digest, kind))
        {
            Some(i) => {
                self.free_slot(i);
                true
            }
            None => false,
        }
    }

    fn free_slot(&mut self, i: u32) {
        let Slot {
            digest, repo, kind, ..
        } = self.slots[i as usize];
        let hash = key_hash(&self.hasher, repo, &digest, kind);
        if let Ok(found) = self.index.find_entry(hash, |&j| j == i) {
            found.remove();
        }
        self.budget.records_mut().drop_user(&digest);
        self.slots[i as usize].flags = 0;
        self.free.push(i);
        self.live -= 1;
    }

    /// Whether any entry still uses `digest`.
    pub fn uses(&self, digest: &Digest) -> bool {
        self.budget.records().used(digest)
    }

    /// The byte budget's policy over the digests (without a budget, its
    /// own is `u64::MAX`).
    pub fn budget(&mut self) -> &mut S3Fifo<Digests> {
        &mut self.budget
    }

    /// The byte budget's policy, to read.
    pub fn budget_ref(&self) -> &S3Fifo<Digests> {
        &self.budget
    }

    /// When the entry in `slot` falls due.
    fn due_of(&self, slot: &Slot) -> Secs {
        due(slot.at, self.repo_ttls[slot.repo as usize])
    }

    fn push(&mut self, slot: u32) {
        let due = self.due_of(&self.slots[slot as usize]);
        if due == Secs::MAX {
            // Never due: an entry living forever stays out of the heap.
            return;
        }
        self.heap.push(Reverse((due, slot)));
        // Refreshes leave stale items behind; rebuild once they outnumber
        // the live ones (amortised O(1) per refresh).
        if self.heap.len() > 2 * self.live + 1024 {
            self.heap = self
                .slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.flags & LIVE != 0 && self.due_of(s) != Secs::MAX)
                .map(|(i, s)| Reverse((self.due_of(s), i as u32)))
                .collect();
        }
    }

    fn is_current(&self, due: Secs, slot: u32) -> bool {
        let s = &self.slots[slot as usize];
        s.flags & LIVE != 0 && self.due_of(s) == due
    }

    /// The earliest time an entry falls due, if any ever does.
    pub fn next_due(&mut self) -> Option<Secs> {
        while let Some(&Reverse((due, slot))) = self.heap.peek() {
            if self.is_current(due, slot) {
                return Some(due);
            }
            self.heap.pop();
        }
        None
    }

    /// Removes and returns an entry that is due at `now`, the earliest first.
    pub fn pop_due(&mut self, now: Secs) -> Option<Entry> {
        let due = self.next_due()?;
        if due > now {
            return None;
        }
        let Reverse((_, i)) = self.heap.pop()?;
        let s = self.slots[i as usize];
        self.free_slot(i);
        Some(Entry {
            repo: self.repos[s.repo as usize].clone(),
            digest: s.digest,
            kind: s.kind,
            at: s.at,
        })
    }

    /// The entries in slots `from..from + count`, and whether the table
    /// ends there (a snapshot's piece).
    pub fn slots(&self, from: usize, count: usize) -> (Vec<Entry>, bool) {
        let end = from.saturating_add(count);
        let entries = self
            .entries_in(from..end)
            .map(|(repo, digest, kind, at)| Entry {
                repo: repo.into(),
                digest: *digest,
                kind,
                at,
            })
            .collect();
        (entries, end >= self.slot_count())
    }

    /// The slot count: [`Self::entries_in`] covers `0..slot_count()`.
    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// The live entries among slots `range`, in no particular order.
    pub fn entries_in(
        &self,
        range: std::ops::Range<usize>,
    ) -> impl Iterator<Item = (&str, &Digest, Kind, Secs)> {
        let end = range.end.min(self.slots.len());
        let start = range.start.min(end);
        self.slots[start..end]
            .iter()
            .filter(|s| s.flags & LIVE != 0)
            .map(|s| (&*self.repos[s.repo as usize], &s.digest, s.kind, s.at))
    }

    /// Heap bytes the table holds (capacities, not lengths).
    pub fn allocated_bytes(&self) -> usize {
        self.slots.capacity() * size_of::<Slot>()
            + self.free.capacity() * 4
            + self.index.capacity() * 5
            + self.heap.capacity() * 8
            + self.repos.iter().map(|r| r.len() + 16).sum::<usize>()
            + self.repo_ttls.capacity() * 4
            + self.repo_index.capacity() * 5
            + self.budget.records().total_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn d(n: u8) -> Digest {
        let mut d = [0; 32];
        d[0] = n % 3; // digests sharing a prefix, as chosen ones do
        d[31] = n;
        Digest::from_raw(d)
    }

    #[derive(Debug, Clone)]
    enum Op {
        Upsert(u8, u8, bool, Secs),
        Remove(u8, u8, bool),
        Pop(Secs),
    }

    /// Repositories `r0` and `r1` live 10 s; `r2`, in namespace `x`, 25 s.
    fn repo(r: u8) -> String {
        if r == 2 {
            "_namespaces/x/r2".to_owned()
        } else {
            format!("r{r}")
        }
    }

    fn ttls() -> Ttls {
        let mut ttls = Ttls::uniform(10);
        ttls.namespaces.insert("x".into(), 25);
        ttls
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..3u8, 0..8u8, any::<bool>(), 0..50u32)
                .prop_map(|(r, g, m, t)| Op::Upsert(r, g, m, t)),
            (0..3u8, 0..8u8, any::<bool>()).prop_map(|(r, g, m)| Op::Remove(r, g, m)),
            (0..80u32).prop_map(Op::Pop),
        ]
    }

    fn kind(manifest: bool) -> Kind {
        if manifest { Kind::Manifest } else { Kind::Blob }
    }

    proptest! {
        /// The table behaves like a map from key to access time whose pops
        /// return an entry due earliest, under its namespace's lifetime.
        #[test]
        fn matches_a_map_model(ops in proptest::collection::vec(op(), 1..400)) {
            let ttls = ttls();
            let mut table = Table::new(ttls.clone());
            let mut model: BTreeMap<(String, Digest, u8), Secs> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Upsert(r, g, m, t) => {
                        let key = (repo(r), d(g), kind(m).code());
                        let up = table.upsert(&key.0, &key.1, kind(m), t);
                        prop_assert_eq!(up.created, !model.contains_key(&key));
                        let at = model.entry(key).or_insert(t);
                        *at = (*at).max(t);
                    }
                    Op::Remove(r, g, m) => {
                        let key = (repo(r), d(g), kind(m).code());
                        prop_assert_eq!(table.remove(&key.0, &key.1, kind(m)), model.remove(&key).is_some());
                    }
                    Op::Pop(now) => {
                        let earliest = model.iter().map(|(k, at)| at + ttls.of(&k.0)).min();
                        match table.pop_due(now) {
                            Some(e) => {
                                let due = e.at + ttls.of(&e.repo);
                                prop_assert_eq!(Some(due), earliest);
                                prop_assert!(due <= now);
                                let key = (e.repo.to_string(), e.digest, e.kind.code());
                                prop_assert_eq!(model.remove(&key), Some(e.at));
                            }
                            None => prop_assert!(earliest.is_none_or(|o| o > now)),
                        }
                    }
                }
                prop_assert_eq!(table.len(), model.len());
                for g in 0..8 {
                    prop_assert_eq!(table.uses(&d(g)), model.keys().any(|k| k.1 == d(g)));
                }
            }
        }
    }
}
