//! What the model exports as gauges (`crate::metrics` turns them into Prometheus series): per job,
//! its partitions by status, IDs done and left, and how long its oldest pending partition has
//! waited; fleet-wide, the workers the leader places on. Computed from the model on demand (one
//! pass over the live partitions), never stored.

use super::AssignerState;
use elk_protocol::messages::{JobState, PartitionStatus};
use elk_types::JobName;
use std::collections::BTreeMap;

/// A terminal job stays exported this long after it completed, so its last samples (100 %) are
/// scraped before its series go away.
pub(crate) const TERMINAL_JOB_LINGER_MS: u64 = 5 * 60 * 1_000;

/// One job's gauges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JobGauges {
    pub job: JobName,
    pub state: JobState,
    /// Live partitions by status (`pending` includes those waiting for a retry's back-off) plus
    /// `completed` from the job record (compacted ones included).
    pub partitions: BTreeMap<&'static str, u64>,
    pub ids_completed: u64,
    /// IDs known and not processed yet (open-ended jobs: up to what the planner reported).
    pub ids_remaining: u64,
    /// How long the oldest pending partition of the job has waited (0 when none waits).
    pub backlog_age_ms: u64,
    /// Of the `failed` partitions: those parked by quarantine (`quarantine.rs`).
    pub quarantined: u64,
}

/// Everything the model exports as gauges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ModelGauges {
    /// Active and paused jobs, and terminal ones for [`TERMINAL_JOB_LINGER_MS`] after completing.
    pub jobs: Vec<JobGauges>,
    /// Workers in the membership view.
    pub live_workers: u64,
    /// Of those, the ones shutting down (granted nothing new).
    pub draining_workers: u64,
}

/// The wire name of a status (the label value).
fn status_name(status: PartitionStatus) -> &'static str {
    match status {
        PartitionStatus::Pending => "pending",
        PartitionStatus::Granted => "granted",
        PartitionStatus::Revoking => "revoking",
        PartitionStatus::Completed => "completed",
        PartitionStatus::Failed => "failed",
    }
}

impl AssignerState {
    /// The gauges at the model's current time.
    pub(crate) fn gauges(&self) -> ModelGauges {
        let mut by_job: BTreeMap<&JobName, BTreeMap<&'static str, u64>> = BTreeMap::new();
        let mut quarantined: BTreeMap<&JobName, u64> = BTreeMap::new();
        for (key, stored) in &self.partitions {
            let counts = by_job.entry(&key.job).or_default();
            *counts.entry(status_name(stored.value.status)).or_default() += 1;
            if stored.value.quarantined {
                *quarantined.entry(&key.job).or_default() += 1;
            }
        }
        let mut oldest_pending: BTreeMap<&JobName, u64> = BTreeMap::new();
        for (key, since) in &self.pending_since {
            let oldest = oldest_pending.entry(&key.job).or_insert(*since);
            *oldest = (*oldest).min(*since);
        }
        let jobs = self
            .jobs
            .values()
            .map(|stored| &stored.value)
            .filter(|job| match job.state {
                JobState::Active | JobState::Paused => true,
                JobState::Completed => job
                    .completed_unix_ms
                    .is_some_and(|done| self.now_ms.saturating_sub(done) <= TERMINAL_JOB_LINGER_MS),
                JobState::Cancelled => false,
            })
            .map(|job| {
                let mut partitions = by_job.remove(&job.name).unwrap_or_default();
                for status in ["pending", "granted", "revoking", "failed"] {
                    partitions.entry(status).or_default();
                }
                partitions.insert("completed", job.partitions_completed);
                JobGauges {
                    job: job.name.clone(),
                    state: job.state,
                    partitions,
                    ids_completed: job.ids_completed,
                    ids_remaining: job.ids_total().saturating_sub(job.ids_completed),
                    backlog_age_ms: oldest_pending
                        .get(&job.name)
                        .map_or(0, |since| self.now_ms.saturating_sub(*since)),
                    quarantined: quarantined.get(&job.name).copied().unwrap_or(0),
                }
            })
            .collect();
        ModelGauges {
            jobs,
            live_workers: self.workers.len() as u64,
            draining_workers: self.workers.values().filter(|w| !w.takes_grants()).count() as u64,
        }
    }
}
