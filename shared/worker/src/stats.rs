//! Cheap counters a [`crate::WorkerHandle`] exposes: atomics bumped by the worker's tasks, read as
//! a [`WorkerStats`] snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub(crate) struct StatsCounters {
    pub(crate) partitions_started: AtomicU64,
    pub(crate) partitions_completed: AtomicU64,
    pub(crate) partitions_failed: AtomicU64,
    pub(crate) partitions_released: AtomicU64,
    pub(crate) fences: AtomicU64,
    pub(crate) records_applied: AtomicU64,
    pub(crate) records_ignored: AtomicU64,
    pub(crate) reports_published: AtomicU64,
    pub(crate) progress_messages: AtomicU64,
    pub(crate) reports_lost: AtomicU64,
    pub(crate) reports_moot: AtomicU64,
    pub(crate) publish_retries: AtomicU64,
    pub(crate) assignment_resyncs: AtomicU64,
}

impl StatsCounters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add(counter: &AtomicU64, count: u64) {
        counter.fetch_add(count, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> WorkerStats {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        WorkerStats {
            partitions_started: read(&self.partitions_started),
            partitions_completed: read(&self.partitions_completed),
            partitions_failed: read(&self.partitions_failed),
            partitions_released: read(&self.partitions_released),
            fences: read(&self.fences),
            records_applied: read(&self.records_applied),
            records_ignored: read(&self.records_ignored),
            reports_published: read(&self.reports_published),
            progress_messages: read(&self.progress_messages),
            reports_lost: read(&self.reports_lost),
            reports_moot: read(&self.reports_moot),
            publish_retries: read(&self.publish_retries),
            assignment_resyncs: read(&self.assignment_resyncs),
        }
    }
}

/// A snapshot of a worker's counters (all monotonic since start).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerStats {
    /// Processor invocations started.
    pub partitions_started: u64,
    /// Partitions reported `Completed`.
    pub partitions_completed: u64,
    /// Partitions reported `Failed`.
    pub partitions_failed: u64,
    /// Partitions handed back with `Released` (revoke or shutdown).
    pub partitions_released: u64,
    /// Times the worker lost its membership and self-fenced.
    pub fences: u64,
    /// Assignment records applied.
    pub records_applied: u64,
    /// Assignment records ignored (other incarnation, stale epoch/seq, undecodable, deletes).
    pub records_ignored: u64,
    /// Progress reports acknowledged by JetStream.
    pub reports_published: u64,
    /// Progress messages acknowledged by JetStream: one per report, or fewer when the assigner
    /// accepts batches (a batch message carries every report queued while the previous one was
    /// in flight).
    pub progress_messages: u64,
    /// Checkpoint reports given up on after retries (a later checkpoint or the terminal report
    /// carries the progress; terminal reports are never given up while the membership lives).
    pub reports_lost: u64,
    /// Reports dropped unsent because the membership that produced them was lost: the assigner
    /// reclaims those partitions from their last acknowledged checkpoint.
    pub reports_moot: u64,
    /// Failed publish attempts that were retried.
    pub publish_retries: u64,
    /// Times a direct re-read found an assignment record the watch had not delivered (a stalled
    /// watch, then re-created).
    pub assignment_resyncs: u64,
}
