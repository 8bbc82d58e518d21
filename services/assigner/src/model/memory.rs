//! Keeping the model's memory close to what it holds. A B-tree filled by ascending inserts, as a
//! cold start cuts a job's partitions (and grants each worker its share), keeps its nodes a bit
//! over half full (`elk_types::btree`). At 100,000 live partitions that slack was about half of
//! the partition table and of the per-worker grant sets (issue 10 item 3, docs/benchmarks.md
//! "Scale"). Whenever many keys were added, the tables are rebuilt with full nodes — during a
//! round too: a cold start that cuts 100,000 partitions in one round otherwise peaked with every
//! table half empty (the process keeps that peak's memory afterwards).

use super::AssignerState;
use elk_types::btree::{repacked, repacked_set};

/// Fewest keys added since the last repack that make a repack worth its pass over every key.
const REPACK_MIN_INSERTS: usize = 1_024;

impl AssignerState {
    /// Counts keys added to the partition table or a grant index, and repacks the tables when
    /// enough were (see [`Self::repack_if_grown`]).
    pub(super) fn note_inserted(&mut self) {
        self.inserted_since_repack += 1;
        self.repack_if_grown();
    }

    /// Rebuilds the partition table, the grant index, the pending and dirty sets and each job's
    /// live ranges (which a cold start fills in key order as well) with full nodes when keys
    /// added since the last repack are at least an eighth of the table (and
    /// [`REPACK_MIN_INSERTS`]): an amortised constant per insert, and nothing in a steady state
    /// where partitions only change status.
    pub(super) fn repack_if_grown(&mut self) {
        let added = self.inserted_since_repack;
        if added < REPACK_MIN_INSERTS || added < self.partitions.len() / 8 {
            return;
        }
        self.inserted_since_repack = 0;
        self.partitions = repacked(std::mem::take(&mut self.partitions));
        self.pending_since = repacked(std::mem::take(&mut self.pending_since));
        self.pending = repacked_set(std::mem::take(&mut self.pending));
        self.dirty_partitions = repacked_set(std::mem::take(&mut self.dirty_partitions));
        for keys in self.grants_by_worker.values_mut() {
            *keys = repacked_set(std::mem::take(keys));
        }
        for coverage in self.coverage.values_mut() {
            coverage.repack();
        }
    }
}
