//! The assigner's counters, shared with whoever started the replica (tests, `elkctl`, the bench):
//! the leader loop counts what happens at its I/O edge (progress applied or malformed, reclaims, KV
//! writes, terms) and publishes the model's own [`Counters`] once per round.

use crate::model::Counters;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters exported by the assigner (read by tests and `elkctl`). The model's counters restart
/// from 0 with every leader term; the others add up over the replica's life.
#[derive(Debug, Default)]
pub struct AssignerMetrics {
    pub progress_applied: AtomicU64,
    pub progress_rejected: AtomicU64,
    pub progress_malformed: AtomicU64,
    pub partitions_reclaimed: AtomicU64,
    pub kv_writes: AtomicU64,
    /// Gaps found (full audit at leader start, or in front of a new partition).
    pub gaps_detected: AtomicU64,
    /// Partitions created to fill gaps.
    pub gaps_repaired: AtomicU64,
    /// Overlapping partitions found or refused.
    pub overlaps_detected: AtomicU64,
    /// Partitions revoked from over-quota workers to rebalance.
    pub revocations: AtomicU64,
    /// Revokes not answered within the revoke timeout.
    pub revokes_overdue: AtomicU64,
    /// Failed attempts scheduled for a retry.
    pub retries_scheduled: AtomicU64,
    /// Completed partitions deleted below their job's low watermark.
    pub partitions_compacted: AtomicU64,
    pub leader_terms: AtomicU64,
}

impl AssignerMetrics {
    /// Copies the model's counters of the current term.
    pub(crate) fn publish(&self, counters: &Counters) {
        let Counters {
            progress_rejected,
            gaps_detected,
            gaps_repaired,
            overlaps_detected,
            revocations,
            revokes_overdue,
            retries_scheduled,
            partitions_compacted,
        } = *counters;
        let relaxed = Ordering::Relaxed;
        self.progress_rejected.store(progress_rejected, relaxed);
        self.gaps_detected.store(gaps_detected, relaxed);
        self.gaps_repaired.store(gaps_repaired, relaxed);
        self.overlaps_detected.store(overlaps_detected, relaxed);
        self.revocations.store(revocations, relaxed);
        self.revokes_overdue.store(revokes_overdue, relaxed);
        self.retries_scheduled.store(retries_scheduled, relaxed);
        self.partitions_compacted
            .store(partitions_compacted, relaxed);
    }

    /// Adds to one of the I/O-edge counters.
    pub(crate) fn add(counter: &AtomicU64, count: u64) {
        counter.fetch_add(count, Ordering::Relaxed);
    }

    pub(crate) fn read(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
