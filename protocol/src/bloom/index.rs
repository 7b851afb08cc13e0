//! Every peer's filter in one bit-sliced (transposed) index, as BitFunnel and BIGSI keep theirs:
//! filters of one size share a matrix with a row per bit position and a column per filter, so a
//! dispatch hashes the URI once and ANDs eight rows, instead of probing each filter apart.

use super::filter::{hash, positions, validate_flips, BloomError, BloomFilter, BLOCK_BITS};

/// Filters of one bit count.
struct Group {
    bits: u64,
    /// 64-bit words per row: room for `lanes · 64` filters.
    lanes: usize,
    /// `bits` rows of `lanes` words; bit c of a row's words is column c.
    rows: Vec<u64>,
    /// The slot each column holds, if any.
    columns: Vec<Option<usize>>,
}

impl Group {
    fn new(bits: u64) -> Self {
        Group {
            bits,
            lanes: 1,
            rows: vec![0; bits as usize],
            columns: vec![None; 64],
        }
    }

    fn held(&self) -> usize {
        self.columns.iter().filter(|c| c.is_some()).count()
    }

    /// A free column, doubling the row width when every column is taken.
    fn free_column(&mut self) -> usize {
        if let Some(free) = self.columns.iter().position(Option::is_none) {
            return free;
        }
        let lanes = self.lanes * 2;
        let mut rows = vec![0; self.bits as usize * lanes];
        for (new, old) in rows
            .chunks_exact_mut(lanes)
            .zip(self.rows.chunks_exact(self.lanes))
        {
            new[..self.lanes].copy_from_slice(old);
        }
        let free = self.columns.len();
        self.rows = rows;
        self.lanes = lanes;
        self.columns.resize(lanes * 64, None);
        free
    }

    fn flip(&mut self, column: usize, position: u64) {
        self.rows[position as usize * self.lanes + column / 64] ^= 1 << (column % 64);
    }

    fn clear_column(&mut self, column: usize) {
        let mask = !(1u64 << (column % 64));
        for row in self.rows.chunks_exact_mut(self.lanes) {
            row[column / 64] &= mask;
        }
    }
}

/// Filters by slot (a number the caller gives each peer), grouped by size.
#[derive(Default)]
pub struct FilterIndex {
    groups: Vec<Group>,
    /// Per slot: its group and column.
    placement: Vec<Option<(usize, usize)>>,
}

impl FilterIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Holds `filter` as `slot`'s, in place of any it held.
    pub fn insert(&mut self, slot: usize, filter: &BloomFilter) {
        self.remove(slot);
        let group = match self.groups.iter().position(|g| g.bits == filter.bits()) {
            Some(group) => group,
            None => {
                self.groups.push(Group::new(filter.bits()));
                self.groups.len() - 1
            }
        };
        let target = &mut self.groups[group];
        let column = target.free_column();
        target.columns[column] = Some(slot);
        for position in filter.set_positions() {
            target.flip(column, position);
        }
        if self.placement.len() <= slot {
            self.placement.resize(slot + 1, None);
        }
        self.placement[slot] = Some((group, column));
    }

    /// Forgets `slot`'s filter, if it held one.
    pub fn remove(&mut self, slot: usize) {
        let Some((group, column)) = self.placement.get_mut(slot).and_then(Option::take) else {
            return;
        };
        let target = &mut self.groups[group];
        target.columns[column] = None;
        if target.held() > 0 {
            target.clear_column(column);
            return;
        }
        self.groups.swap_remove(group);
        // The group that took the removed one's place keeps its columns; its slots move with it.
        if let Some(moved) = self.groups.get(group) {
            for slot in moved.columns.iter().flatten() {
                if let Some((g, _)) = &mut self.placement[*slot] {
                    *g = group;
                }
            }
        }
    }

    /// Flips bits of `slot`'s filter, as [`BloomFilter::apply`] does; on error nothing changes.
    /// Does nothing for a slot without a filter.
    pub fn apply(&mut self, slot: usize, flips: &[u64]) -> Result<(), BloomError> {
        let Some((group, column)) = self.placement.get(slot).copied().flatten() else {
            return Ok(());
        };
        let target = &mut self.groups[group];
        validate_flips(flips, target.bits)?;
        for &position in flips {
            target.flip(column, position);
        }
        Ok(())
    }

    /// Whether `slot`'s filter may hold `uri`; false without a filter.
    pub fn contains(&self, slot: usize, uri: &str) -> bool {
        let Some((group, column)) = self.placement.get(slot).copied().flatten() else {
            return false;
        };
        let g = &self.groups[group];
        positions(hash(uri), g.bits / BLOCK_BITS)
            .iter()
            .all(|&p| g.rows[p as usize * g.lanes + column / 64] >> (column % 64) & 1 != 0)
    }

    /// Calls `found` with every slot whose filter may hold `uri`.
    pub fn candidates(&self, uri: &str, mut found: impl FnMut(usize)) {
        let hash = hash(uri);
        for g in &self.groups {
            let rows = positions(hash, g.bits / BLOCK_BITS).map(|p| p as usize * g.lanes);
            for lane in 0..g.lanes {
                let mut hits = rows
                    .iter()
                    .fold(!0u64, |acc, &row| acc & g.rows[row + lane]);
                while hits != 0 {
                    let column = lane * 64 + hits.trailing_zeros() as usize;
                    hits &= hits - 1;
                    if let Some(slot) = g.columns[column] {
                        found(slot);
                    }
                }
            }
        }
    }

    /// How many filters are held.
    pub fn len(&self) -> usize {
        self.placement.iter().flatten().count()
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Bytes held by the matrices.
    pub fn matrix_bytes(&self) -> usize {
        self.groups.iter().map(|g| g.rows.len() * 8).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter_of(uris: impl Iterator<Item = String>, bits: u64) -> BloomFilter {
        let mut filter = BloomFilter::empty(bits).unwrap();
        for uri in uris {
            filter.insert(&uri);
        }
        filter
    }

    /// Slot s holds the URIs `tel:+1555…` numbered s·100 to s·100+99, sized by `bits(s)`.
    fn peers(count: usize, bits: impl Fn(usize) -> u64) -> Vec<BloomFilter> {
        (0..count)
            .map(|s| filter_of((s * 100..s * 100 + 100).map(uri), bits(s)))
            .collect()
    }

    fn uri(i: usize) -> String {
        format!("tel:+1555{i:07}")
    }

    fn candidates(index: &FilterIndex, uri: &str) -> Vec<usize> {
        let mut found = Vec::new();
        index.candidates(uri, |slot| found.push(slot));
        found.sort_unstable();
        found
    }

    /// The answer of probing each filter apart.
    fn expected(filters: &[Option<&BloomFilter>], uri: &str) -> Vec<usize> {
        (0..filters.len())
            .filter(|&s| filters[s].is_some_and(|f| f.contains(uri)))
            .collect()
    }

    #[test]
    fn answers_as_the_filters_themselves_across_sizes_and_growth() {
        // 200 filters in three sizes: each group grows from one lane to two.
        let filters = peers(200, |s| [2048, 2560, 8192][s % 3]);
        let mut index = FilterIndex::new();
        for (slot, filter) in filters.iter().enumerate() {
            index.insert(slot, filter);
        }
        assert_eq!(index.len(), 200);
        assert!(!index.is_empty());
        // 67 or 66 filters a size: two lanes of 64 columns, 16 bytes a row.
        assert_eq!(index.matrix_bytes(), (2048 + 2560 + 8192) * 16);
        let all: Vec<Option<&BloomFilter>> = filters.iter().map(Some).collect();
        for i in (0..21_000).step_by(7) {
            let probe = uri(i);
            assert_eq!(
                candidates(&index, &probe),
                expected(&all, &probe),
                "{probe}"
            );
            for slot in [0, 1, 2, 77, 199] {
                assert_eq!(index.contains(slot, &probe), filters[slot].contains(&probe));
            }
        }
        // Every held URI is found at its own slot.
        for s in [0, 64, 130, 199] {
            assert!(candidates(&index, &uri(s * 100 + 5)).contains(&s));
        }
    }

    #[test]
    fn removal_replacement_and_flips_keep_it_exact() {
        let filters = peers(70, |s| if s < 40 { 2048 } else { 4096 });
        let mut index = FilterIndex::new();
        for (slot, filter) in filters.iter().enumerate() {
            index.insert(slot, filter);
        }
        let mut model: Vec<Option<BloomFilter>> = filters.into_iter().map(Some).collect();
        // Remove one of a group, then a whole group (the other group moves in the list).
        index.remove(3);
        model[3] = None;
        for (slot, held) in model.iter_mut().enumerate().take(40) {
            index.remove(slot);
            *held = None;
        }
        index.remove(3);
        // Replace one with a filter of a new size, and flip bits of another.
        let replacement = filter_of((9000..9100).map(uri), 2560);
        index.insert(50, &replacement);
        model[50] = Some(replacement);
        // Slot 60 held 6000..6100: some URIs leave, others arrive, so bits flip both ways.
        let newer = filter_of((6050..6150).map(uri), 4096);
        let flips = newer.diff(model[60].as_ref().unwrap()).unwrap();
        index.apply(60, &flips).unwrap();
        model[60].as_mut().unwrap().apply(&flips, 100).unwrap();
        assert_eq!(model[60].as_ref(), Some(&newer));
        // A column freed in a group that goes on is cleared before it is reused.
        index.remove(45);
        let reused = filter_of((8000..8100).map(uri), 4096);
        index.insert(45, &reused);
        model[45] = Some(reused);
        // A new group of the emptied size starts without stale bits.
        index.insert(5, &filter_of((7000..7100).map(uri), 2048));
        model[5] = Some(filter_of((7000..7100).map(uri), 2048));
        assert_eq!(index.len(), 31);

        let view: Vec<Option<&BloomFilter>> = model.iter().map(Option::as_ref).collect();
        for i in 0..10_000 {
            let probe = uri(i);
            assert_eq!(
                candidates(&index, &probe),
                expected(&view, &probe),
                "{probe}"
            );
        }
        assert_eq!(
            index.apply(60, &[4096]),
            Err(BloomError::FlipOutOfRange {
                position: 4096,
                bits: 4096
            })
        );
        assert_eq!(index.apply(3, &[1]), Ok(()));
        assert!(!index.contains(3, &uri(305)));
        for slot in 40..70 {
            index.remove(slot);
        }
        index.remove(5);
        assert!(index.is_empty());
        assert_eq!(index.matrix_bytes(), 0);
    }
}
