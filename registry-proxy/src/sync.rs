//! Small synchronisation and bounded-map helpers every layer uses: a lock
//! that survives poisoning, maps that cannot grow without bound, and a
//! wait for a condition that a [`Notify`](tokio::sync::Notify) signals.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, carrying on past a poisoned lock: no holder leaves the
/// data half-changed across a panic point.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// A map within a budget of weight (entries, or bytes): an insert past it
/// forgets the oldest insertions first, one at a time, each in O(1)
/// amortized. Updating a key keeps its place; a removed key's place is
/// skipped (by its generation) and compacted away as it accumulates.
pub(crate) struct Fifo<K, V> {
    map: std::collections::HashMap<K, (V, usize, u64)>,
    order: std::collections::VecDeque<(K, u64)>,
    weight: usize,
    budget: usize,
    generation: u64,
}

impl<K: std::hash::Hash + Eq + Clone, V> Fifo<K, V> {
    /// An empty map holding at most `budget` of weight.
    pub(crate) fn new(budget: usize) -> Self {
        Self {
            map: std::collections::HashMap::new(),
            order: std::collections::VecDeque::new(),
            weight: 0,
            budget,
            generation: 0,
        }
    }

    /// The value of `key`.
    pub(crate) fn get(&self, key: &K) -> Option<&V> {
        self.map.get(key).map(|(v, _, _)| v)
    }

    /// The value of `key`, to change in place (its weight stays).
    pub(crate) fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.map.get_mut(key).map(|(v, _, _)| v)
    }

    /// Forgets `key`.
    pub(crate) fn remove(&mut self, key: &K) {
        self.take(key);
    }

    /// Forgets `key`, returning its value.
    fn take(&mut self, key: &K) -> Option<V> {
        let taken = self.map.remove(key).map(|(value, weight, _)| {
            self.weight -= weight;
            value
        });
        if self.order.len() > 2 * self.map.len() + 16 {
            let map = &self.map;
            self.order
                .retain(|(k, g)| map.get(k).is_some_and(|(_, _, live)| live == g));
        }
        taken
    }

    /// Sets `key` to `value` of `weight`, then forgets the oldest entries
    /// until the map is within its budget again; returns those.
    pub(crate) fn insert(&mut self, key: K, value: V, weight: usize) -> Vec<(K, V)> {
        let mut forgotten = Vec::new();
        self.weight += weight;
        if let Some((old, old_weight, _)) = self.map.get_mut(&key) {
            *old = value;
            self.weight -= std::mem::replace(old_weight, weight);
        } else {
            self.generation += 1;
            self.order.push_back((key.clone(), self.generation));
            self.map.insert(key, (value, weight, self.generation));
        }
        while self.weight > self.budget {
            let Some((oldest, generation)) = self.order.pop_front() else {
                break;
            };
            if self
                .map
                .get(&oldest)
                .is_some_and(|(_, _, g)| *g == generation)
            {
                if let Some(value) = self.take(&oldest) {
                    forgotten.push((oldest, value));
                }
            }
        }
        forgotten
    }

    /// How many entries it holds.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

/// The most entries a [`Swept`] map keeps.
const MAX_HINTS: usize = 100_000;

/// A map that drops its stale entries as it grows: each insert past its
/// threshold keeps only the entries `live` approves, then sets the next
/// threshold to twice what is left (at least `floor`), so that sweeping
/// costs O(1) per insert, amortized, and a map of hints (tag freshness,
/// tokens) never grows past twice its live entries, nor past
/// [`MAX_HINTS`]: a map more than half full of live entries is cleared
/// (losing a hint costs one upstream request).
#[derive(Debug)]
pub(crate) struct Swept<K, V> {
    map: std::collections::HashMap<K, V>,
    next: usize,
    floor: usize,
}

impl<K: std::hash::Hash + Eq, V> Swept<K, V> {
    /// An empty map swept first at `floor` entries.
    pub(crate) fn new(floor: usize) -> Self {
        Self {
            map: std::collections::HashMap::new(),
            next: floor,
            floor,
        }
    }

    /// The value of `key`.
    pub(crate) fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.map.get(key)
    }

    /// Inserts `key`, first dropping what `live` rejects if the map has
    /// reached its threshold.
    pub(crate) fn insert(&mut self, key: K, value: V, live: impl Fn(&V) -> bool) {
        if self.map.len() >= self.next {
            self.map.retain(|_, v| live(v));
            if self.map.len() > MAX_HINTS / 2 {
                self.map.clear();
            }
            self.next = (self.map.len() * 2).max(self.floor).min(MAX_HINTS);
        }
        self.map.insert(key, value);
    }

    /// Removes `key`, returning its value.
    pub(crate) fn remove(&mut self, key: &K) -> Option<V> {
        self.map.remove(key)
    }

    /// How many entries it holds.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

/// The first `Some` that `check` gives, checked again each time `changed`
/// is notified (a notification between two checks is not lost).
pub(crate) async fn wait_until<T>(
    changed: &tokio::sync::Notify,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    loop {
        let notified = changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(found) = check() {
            return found;
        }
        notified.await;
    }
}

#[cfg(test)]
mod tests {
    use super::{Fifo, Swept};

    /// The oldest insertions go first, by weight; an update keeps its
    /// place, and removed keys leave no trace that grows.
    #[test]
    fn a_fifo_stays_within_its_budget_oldest_first() {
        let mut fifo = Fifo::new(10);
        for key in 0..5u32 {
            fifo.insert(key, key, 2);
        }
        fifo.insert(0, 100, 2);
        fifo.insert(5, 5, 4);
        // 0 and 1 went (0 kept its first place when updated); 2.. stay.
        assert_eq!(
            (fifo.get(&0), fifo.get(&1), fifo.get(&2)),
            (None, None, Some(&2))
        );
        assert_eq!(fifo.len(), 4);
        for round in 0..10_000u32 {
            fifo.insert(round % 3 + 10, round, 1);
            fifo.remove(&(round % 3 + 10));
        }
        assert!(
            fifo.order.len() <= 2 * fifo.len() + 17,
            "{}",
            fifo.order.len()
        );
    }

    /// Stale entries go once the map reaches its threshold, and the next
    /// threshold follows what is left: the map stays within twice its
    /// live entries however many keys pass through it.
    #[test]
    fn a_swept_map_stays_within_twice_its_live_entries() {
        let mut map = Swept::new(4);
        for i in 0..10_000u32 {
            // Only the newest 3 are live.
            map.insert(i, i, |v| *v + 3 > i);
            assert!(map.len() <= 8, "{} entries at {i}", map.len());
        }
        assert_eq!(map.get(&9_999), Some(&9_999));
    }
}
