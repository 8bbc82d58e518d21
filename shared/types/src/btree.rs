//! B-trees rebuilt with full nodes. A `BTreeMap` filled by ascending inserts — as a cold start
//! cuts a job's partitions, grants each worker its share and records each live range — keeps its
//! nodes a bit over half full: a node that overflows splits in two and the left half is never
//! topped up again. Rebuilding one from its own sorted entries fills every node (the assigner's
//! memory per live partition, issue 10).

use std::collections::{BTreeMap, BTreeSet};

/// `map` with every node full (the append of a sorted sequence fills nodes left to right).
/// Moves entries, never clones them; the old nodes are freed as they are emptied, so the two
/// trees never stand whole side by side.
pub fn repacked<K: Ord, V>(mut map: BTreeMap<K, V>) -> BTreeMap<K, V> {
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

/// [`repacked`] for a set.
pub fn repacked_set<K: Ord>(mut set: BTreeSet<K>) -> BTreeSet<K> {
    let Some(first) = set.pop_first() else {
        return set;
    };
    let mut full = BTreeSet::new();
    full.insert(first);
    full.append(&mut set);
    full
}

#[cfg(test)]
mod tests {
    use super::{repacked, repacked_set};
    use std::collections::{BTreeMap, BTreeSet};

    #[test]
    fn a_repacked_tree_holds_the_same_entries_in_order() {
        let map: BTreeMap<u64, String> = (0..5_000).map(|n| (n * 3, n.to_string())).collect();
        let expected: Vec<(u64, String)> = map.clone().into_iter().collect();
        let repacked_map: Vec<(u64, String)> = repacked(map).into_iter().collect();
        assert_eq!(repacked_map, expected);
        assert!(repacked(BTreeMap::<u64, u64>::new()).is_empty());
        let set: BTreeSet<u64> = (0..3_000).rev().collect();
        let expected: Vec<u64> = set.iter().copied().collect();
        let repacked_set_items: Vec<u64> = repacked_set(set).into_iter().collect();
        assert_eq!(repacked_set_items, expected);
        assert!(repacked_set(BTreeSet::<u64>::new()).is_empty());
    }
}
