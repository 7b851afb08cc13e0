//! A map whose entries expire a fixed time after they were last written, pruned as it is used in
//! O(1) amortised time: an insertion-ordered queue of (time, key) says what is oldest. The SIP
//! edge remembers transactions and ended calls this way; scanning the whole map on every
//! insertion cost more than the calls themselves at a few hundred calls a second.

use std::borrow::Borrow;
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

pub struct ExpiringMap<K, V> {
    entries: HashMap<K, (Instant, V)>,
    order: VecDeque<(Instant, K)>,
    lifetime: Duration,
    /// Past this many entries the oldest go, expired or not.
    capacity: usize,
    /// Past this many bytes (as `weigh` counts them) the oldest go too.
    budget: usize,
    weigh: fn(&V) -> usize,
    weight: usize,
}

impl<K: Hash + Eq + Clone, V> ExpiringMap<K, V> {
    pub fn new(lifetime: Duration, capacity: usize) -> Self {
        Self::with_budget(lifetime, capacity, usize::MAX, |_| 0)
    }

    /// Also bounded in bytes: values whose sizes vary (a response echoes the request's Vias)
    /// cannot make `capacity` entries cost more than `budget`.
    pub fn with_budget(
        lifetime: Duration,
        capacity: usize,
        budget: usize,
        weigh: fn(&V) -> usize,
    ) -> Self {
        ExpiringMap {
            entries: HashMap::new(),
            order: VecDeque::new(),
            lifetime,
            capacity,
            budget,
            weigh,
            weight: 0,
        }
    }

    /// Drops what expired by `now`, and the oldest beyond the capacity or the budget.
    fn prune(&mut self, now: Instant) {
        while let Some((at, key)) = self.order.front() {
            let expired = now.duration_since(*at) >= self.lifetime;
            if !expired && self.entries.len() <= self.capacity && self.weight <= self.budget {
                break;
            }
            // Only the queue entry of the latest write removes the key: an older one is stale.
            if self
                .entries
                .get(key)
                .is_some_and(|(written, _)| written == at)
            {
                if let Some((_, value)) = self.entries.remove(key) {
                    self.weight -= (self.weigh)(&value);
                }
            }
            self.order.pop_front();
        }
    }

    pub fn insert(&mut self, key: K, value: V, now: Instant) {
        self.weight += (self.weigh)(&value);
        if let Some((_, old)) = self.entries.insert(key.clone(), (now, value)) {
            self.weight -= (self.weigh)(&old);
        }
        self.order.push_back((now, key));
        self.prune(now);
    }

    /// The value written under `key` less than the lifetime before `now`.
    pub fn get<Q>(&mut self, key: &Q, now: Instant) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.prune(now);
        self.entries.get(key).map(|(_, v)| v)
    }

    pub fn remove(&mut self, key: &K) {
        if let Some((_, value)) = self.entries.remove(key) {
            self.weight -= (self.weigh)(&value);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_after_their_last_write_and_the_oldest_go_past_the_capacity() {
        let start = Instant::now();
        let second = Duration::from_secs(1);
        let mut map = ExpiringMap::new(Duration::from_secs(10), 3);
        map.insert("a", 1, start);
        map.insert("b", 2, start + second);
        // Rewritten: lives ten seconds from now on.
        map.insert("a", 3, start + 5 * second);
        assert_eq!(map.get(&"a", start + 12 * second), Some(&3));
        assert_eq!(map.get(&"b", start + 12 * second), None);
        assert_eq!(map.len(), 1);
        map.insert("c", 4, start + 13 * second);
        map.insert("d", 5, start + 13 * second);
        map.insert("e", 6, start + 13 * second);
        assert_eq!(map.len(), 3);
        assert_eq!(map.get(&"a", start + 13 * second), None, "the oldest went");
        map.remove(&"d");
        assert_eq!(map.get(&"d", start + 13 * second), None);
        assert_eq!(map.get(&"e", start + 13 * second), Some(&6));
    }

    #[test]
    fn past_the_byte_budget_the_oldest_go() {
        let now = Instant::now();
        let mut map: ExpiringMap<u32, Vec<u8>> =
            ExpiringMap::with_budget(Duration::from_secs(10), 100, 1_000, Vec::len);
        for key in 0..5 {
            map.insert(key, vec![0; 300], now);
        }
        // 1,500 bytes written: the two oldest went.
        assert_eq!(map.len(), 3);
        assert_eq!(map.get(&0, now), None);
        assert_eq!(map.get(&1, now), None);
        assert!(map.get(&4, now).is_some());
        // A rewrite counts the new value, not both.
        map.insert(4, vec![0; 10], now);
        map.insert(5, vec![0; 300], now);
        assert_eq!(map.len(), 4);
        // Removed, its bytes are free again: 2, 3, 4 (610 bytes) and 6 (390) fit.
        map.remove(&5);
        map.insert(6, vec![0; 390], now);
        assert_eq!(map.len(), 4);
        // One byte more and the oldest, 2, goes.
        map.insert(7, vec![0; 1], now);
        assert_eq!(map.get(&2, now), None);
        assert!(map.get(&3, now).is_some());
    }
}
