//! Keeping the model's memory close to what it holds. A B-tree filled by ascending inserts, as a
//! cold start cuts a job's partitions (and grants each worker its share), keeps its nodes a bit
//! over half full: a node that overflows splits in two and the left half is never topped up
//! again. At 100,000 live partitions that slack was about half of the partition table and of
//! the per-worker grant sets (issue 10 item 3, docs/benchmarks.md "Scale"). After a round that
//! added many keys, the tables are rebuilt with full nodes.

use super::AssignerState;
use std::collections::BTreeMap;

/// Fewest keys added since the last repack that make a repack worth its pass over every key.
const REPACK_MIN_INSERTS: usize = 1_024;

/// `map` with every node full (the append of a sorted sequence fills nodes left to right).
/// Moves entries, never clones them; the old nodes are freed as they are emptied, so the two
/// tables never stand whole side by side.
pub(super) fn repacked<K: Ord, V>(mut map: BTreeMap<K, V>) -> BTreeMap<K, V> {
    let Some((key, value)) = map.pop_first() else {
        return map;
    };
    // Appending to an empty map would only swap the two: start from one entry, and the append
    // merges both into new nodes.
    let mut full = BTreeMap::new();
    full.insert(key, value);
    full.append(&mut map);
    full
}

impl AssignerState {
    /// Counts keys added to the partition table or a grant index (see [`Self::repack_if_grown`]).
    pub(super) fn note_inserted(&mut self) {
        self.inserted_since_repack += 1;
    }

    /// Rebuilds the partition table and the grant index with full nodes when keys added since
    /// the last repack are at least an eighth of the table (and [`REPACK_MIN_INSERTS`]): an
    /// amortised constant per insert, and nothing in a steady state where partitions only change
    /// status.
    pub(super) fn repack_if_grown(&mut self) {
        let added = self.inserted_since_repack;
        if added < REPACK_MIN_INSERTS || added < self.partitions.len() / 8 {
            return;
        }
        self.inserted_since_repack = 0;
        self.partitions = repacked(std::mem::take(&mut self.partitions));
        for keys in self.grants_by_worker.values_mut() {
            let set = std::mem::take(keys);
            *keys = set.into_iter().collect();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::repacked;
    use std::collections::BTreeMap;

    #[test]
    fn a_repacked_map_holds_the_same_entries_in_order() {
        let map: BTreeMap<u64, String> = (0..5_000).map(|n| (n * 3, n.to_string())).collect();
        let expected: Vec<(u64, String)> = map.clone().into_iter().collect();
        let repacked: Vec<(u64, String)> = repacked(map).into_iter().collect();
        assert_eq!(repacked, expected);
        assert!(super::repacked(BTreeMap::<u64, u64>::new()).is_empty());
    }
}
