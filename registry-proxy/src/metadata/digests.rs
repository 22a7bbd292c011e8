//! The digests the scheduler knows, once each in an arena: how many
//! entries use each, and its record in the byte budget's policy
//! ([`crate::evict`]). The policy's queues hold 4-byte arena indices, so
//! accounting a stored blob adds 16 bytes to its digest's slot and 8 to a
//! queue, and no digest is stored twice. A slot is freed (and its index
//! reused) once no entry uses its digest and the policy holds no record.

use std::hash::BuildHasher;

use hashbrown::HashTable;

use crate::evict::{Record, Records};
use crate::oci::Digest;

/// Puts `item` into a free slot of `slots` (one `free` names) or a new
/// one at the end; its index.
pub(super) fn place<T>(slots: &mut Vec<T>, free: &mut Vec<u32>, item: T) -> u32 {
    match free.pop() {
        Some(i) => {
            slots[i as usize] = item;
            i
        }
        None => {
            slots.push(item);
            (slots.len() - 1) as u32
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    digest: Digest,
    /// Entries using the digest.
    users: u32,
    record: Record,
}

/// Every digest an entry uses or the byte budget accounts.
#[derive(Debug, Default)]
pub struct Digests {
    slots: Vec<Slot>,
    index: HashTable<u32>,
    free: Vec<u32>,
    hasher: std::hash::RandomState,
}

impl Digests {
    /// The slot of `digest`, if any.
    fn find(&self, digest: &Digest) -> Option<u32> {
        let hash = self.hasher.hash_one(digest);
        self.index
            .find(hash, |&i| self.slots[i as usize].digest == *digest)
            .copied()
    }

    /// The slot of `digest`, made if there is none.
    fn find_or_add(&mut self, digest: &Digest) -> u32 {
        if let Some(i) = self.find(digest) {
            return i;
        }
        let slot = Slot {
            digest: *digest,
            users: 0,
            record: Record::default(),
        };
        let i = place(&mut self.slots, &mut self.free, slot);
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.index.insert_unique(hasher.hash_one(digest), i, |&j| {
            hasher.hash_one(slots[j as usize].digest)
        });
        i
    }

    /// Frees slot `i` when nothing holds it any more.
    fn free_if_unheld(&mut self, i: u32) {
        let slot = &self.slots[i as usize];
        if slot.users > 0 || slot.record.is_in() {
            return;
        }
        let hash = self.hasher.hash_one(slot.digest);
        if let Ok(found) = self.index.find_entry(hash, |&j| j == i) {
            found.remove();
        }
        self.free.push(i);
    }

    /// One more entry uses `digest`.
    pub fn add_user(&mut self, digest: &Digest) {
        let i = self.find_or_add(digest);
        self.slots[i as usize].users += 1;
    }

    /// One entry fewer uses `digest`.
    pub fn drop_user(&mut self, digest: &Digest) {
        if let Some(i) = self.find(digest) {
            let slot = &mut self.slots[i as usize];
            slot.users = slot.users.saturating_sub(1);
            self.free_if_unheld(i);
        }
    }

    /// Whether any entry uses `digest`.
    pub fn used(&self, digest: &Digest) -> bool {
        self.find(digest)
            .is_some_and(|i| self.slots[i as usize].users > 0)
    }

    /// Heap bytes held (capacities).
    pub fn total_bytes(&self) -> usize {
        self.slots.capacity() * size_of::<Slot>()
            + self.index.capacity() * 5
            + self.free.capacity() * 4
    }
}

impl Records for Digests {
    type Name = Digest;
    type Key = u32;

    fn key(&self, name: &Digest) -> Option<u32> {
        self.find(name)
    }

    fn key_or_add(&mut self, name: &Digest) -> u32 {
        self.find_or_add(name)
    }

    fn name(&self, key: u32) -> Digest {
        self.slots[key as usize].digest
    }

    fn record(&self, key: u32) -> &Record {
        &self.slots[key as usize].record
    }

    fn record_mut(&mut self, key: u32) -> &mut Record {
        &mut self.slots[key as usize].record
    }

    fn released(&mut self, key: u32) {
        self.free_if_unheld(key);
    }

    fn fingerprint(&self, name: &Digest) -> u64 {
        // Keyed, so no upstream can choose blobs whose fingerprints meet.
        self.hasher.hash_one(name)
    }

    fn allocated_bytes(&self) -> usize {
        // What the policy adds: its record in each slot.
        self.slots.capacity() * size_of::<Record>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evict::S3Fifo;

    fn d(n: u8) -> Digest {
        Digest::from_raw([n; 32])
    }

    /// Entries and the policy share a digest's slot; it is freed (and
    /// reused) only once neither holds it, and eviction names digests.
    #[test]
    fn entries_and_the_policy_share_slots() {
        let mut policy = S3Fifo::with_records(25, Digests::default());
        policy.records_mut().add_user(&d(1));
        policy.insert(d(1), 10);
        policy.insert(d(2), 10);
        policy.insert(d(3), 10);
        assert!(policy.over());
        assert_eq!(policy.evict(|_| false), Some((d(1), 10)));
        assert!(policy.records().used(&d(1)), "the entry still uses it");
        assert!(!policy.contains(&d(1)));
        policy.records_mut().drop_user(&d(1));
        assert!(!policy.records().used(&d(1)));
        // Slot 0 is free and taken by the next new digest; the ghost list
        // still knows d(1) by its fingerprint.
        policy.insert(d(4), 1);
        assert_eq!(policy.records().find(&d(4)), Some(0));
        policy.insert(d(1), 10);
        assert_eq!(policy.size_of(&d(1)), Some(10));
        assert_eq!(policy.evict(|_| false), Some((d(2), 10)));
        assert_eq!(policy.stored(), 21);
        assert_eq!(policy.names().len(), 3);
    }
}
