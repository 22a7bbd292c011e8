//! The most frequent keys of a stream in bounded memory (the Space-Saving
//! algorithm): at most `capacity` keys are counted; a new key arriving
//! when all are taken replaces the least counted one and inherits its
//! count (plus one), so every key counted at least `total / capacity`
//! times is kept, each count over by at most its recorded error.

use std::collections::HashMap;

/// Counts of the most frequent keys.
#[derive(Debug)]
pub struct TopK {
    capacity: usize,
    /// Key → (count, by how much the count may be over).
    counts: HashMap<String, (u64, u64)>,
}

/// Keys a [`TopK`] counts by default: the repositories of one namespace
/// the status page ranks.
const DEFAULT_CAPACITY: usize = 256;

impl Default for TopK {
    /// Counts at most 256 keys.
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl TopK {
    /// Counts at most `capacity` keys (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            counts: HashMap::new(),
        }
    }

    /// Counts one more `key`.
    pub fn add(&mut self, key: &str) {
        if let Some((count, _)) = self.counts.get_mut(key) {
            *count += 1;
            return;
        }
        let mut inherited = 0;
        if self.counts.len() >= self.capacity {
            let least = self
                .counts
                .iter()
                .min_by_key(|(_, (count, _))| *count)
                .map(|(k, (count, _))| (k.clone(), *count));
            if let Some((least, count)) = least {
                self.counts.remove(&least);
                inherited = count;
            }
        }
        self.counts
            .insert(key.to_owned(), (inherited + 1, inherited));
    }

    /// The `n` most counted keys, most first (ties by key), each with its
    /// count and how much it may be over.
    pub fn top(&self, n: usize) -> Vec<(String, u64, u64)> {
        let mut all: Vec<(String, u64, u64)> = self
            .counts
            .iter()
            .map(|(k, (count, error))| (k.clone(), *count, *error))
            .collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frequent_keys_survive_a_stream_of_rare_ones() {
        let mut top = TopK::new(8);
        for i in 0..10_000 {
            top.add(if i % 3 == 0 { "hot" } else { "warm" });
            top.add(&format!("rare-{i}"));
        }
        let found = top.top(2);
        assert_eq!(found[0].0, "warm");
        assert_eq!(found[1].0, "hot");
        // Never under the true count, and within the error recorded.
        assert!(found[1].1 >= 3334 && found[1].1 - found[1].2 <= 3334);
        assert_eq!(top.counts.len(), 8, "bounded");
    }
}
