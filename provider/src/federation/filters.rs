//! This provider's own Bloom filter: built over every hosted canonical URI, rebuilt periodically
//! and after registry changes, served in full or as an incremental update since an older
//! generation. Recent generations are kept so peers can catch up with a few bytes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use switchyard_protocol::bloom::{self, BloomFilter};
use switchyard_protocol::dict::Dict;

/// Generations kept for incremental answers.
const HISTORY: usize = 8;
/// Smallest capacity a filter is sized for, so a small provider does not resize on every user.
const MIN_CAPACITY: u64 = 1024;

struct Built {
    generation: u64,
    filter: Arc<BloomFilter>,
}

#[derive(Default)]
struct Inner {
    current: Option<Built>,
    /// Items the current parameters were sized for.
    capacity: u64,
    history: VecDeque<Built>,
}

pub struct OwnFilter {
    false_positive_rate: f64,
    inner: RwLock<Inner>,
    /// Registry changes made through this process since the last rebuild.
    pub changes: AtomicU64,
}

/// Figures about the filter in force, for the admin API and metrics.
#[derive(Debug, Clone)]
pub struct FilterStats {
    pub generation: u64,
    pub items: u64,
    pub bits: u64,
    pub estimated_false_positive_rate: f64,
}

impl OwnFilter {
    pub fn new(false_positive_rate: f64) -> Self {
        OwnFilter {
            false_positive_rate,
            inner: RwLock::new(Inner::default()),
            changes: AtomicU64::new(0),
        }
    }

    pub fn note_change(&self, count: u64) {
        self.changes.fetch_add(count, Ordering::Relaxed);
    }

    /// Rebuilds over `uris`; returns the new generation if the filter changed. The size stays
    /// while the URIs fit the capacity, which keeps incremental updates possible.
    pub fn rebuild(&self, uris: &[String]) -> Option<u64> {
        self.changes.store(0, Ordering::Relaxed);
        let items = uris.len() as u64;
        let mut inner = self.inner.write().expect("filter lock");
        let reuse = inner
            .current
            .as_ref()
            .filter(|_| items <= inner.capacity)
            .map(|c| c.filter.bits());
        let bits = match reuse {
            Some(bits) => bits,
            None => {
                let capacity = (items + items / 4).max(MIN_CAPACITY);
                inner.capacity = capacity;
                bloom::bits_for_capacity(capacity, self.false_positive_rate)
                    .expect("the configuration check bounds the false-positive rate")
            }
        };
        let mut filter = BloomFilter::empty(bits).expect("a computed size is valid");
        for uri in uris {
            filter.insert(uri);
        }
        if let Some(current) = &inner.current {
            if *current.filter == filter {
                return None;
            }
        }
        let generation = inner
            .current
            .as_ref()
            .map(|c| c.generation + 1)
            .unwrap_or(0)
            .max(crate::shared::now_ms() as u64);
        if let Some(old) = inner.current.take() {
            if old.filter.bits() == filter.bits() {
                inner.history.push_front(old);
                inner.history.truncate(HISTORY);
            } else {
                inner.history.clear();
            }
        }
        metrics::gauge!("switchyard_bloom_items").set(filter.items() as f64);
        metrics::gauge!("switchyard_bloom_generation").set(generation as f64);
        metrics::gauge!("switchyard_bloom_estimated_false_positive_rate")
            .set(filter.estimated_false_positive_rate());
        inner.current = Some(Built {
            generation,
            filter: Arc::new(filter),
        });
        Some(generation)
    }

    pub fn stats(&self) -> Option<FilterStats> {
        let inner = self.inner.read().expect("filter lock");
        inner.current.as_ref().map(|c| FilterStats {
            generation: c.generation,
            items: c.filter.items(),
            bits: c.filter.bits(),
            estimated_false_positive_rate: c.filter.estimated_false_positive_rate(),
        })
    }

    /// The answer to `GET /federation/v1/bloom[?since=G]`: the changes since `since` when this
    /// provider still has that generation and they are smaller, the full filter otherwise.
    /// None before the first build. The second value names the form: `full` or `incremental`.
    pub fn update_since(&self, since: Option<u64>) -> Option<(Dict, &'static str)> {
        let inner = self.inner.read().expect("filter lock");
        let current = inner.current.as_ref()?;
        let older = since.and_then(|since| {
            if since == current.generation {
                Some(current)
            } else {
                inner.history.iter().find(|b| b.generation == since)
            }
        });
        if let Some(older) = older {
            if let Ok(flips) = current.filter.diff(&older.filter) {
                if bloom::incremental_is_smaller(current.filter.bits(), &flips) {
                    let dict = bloom::to_incremental_dict(
                        &current.filter,
                        older.generation,
                        current.generation,
                        &flips,
                    );
                    return Some((dict, "incremental"));
                }
            }
        }
        Some((
            bloom::to_full_dict(&current.filter, current.generation),
            "full",
        ))
    }
}
