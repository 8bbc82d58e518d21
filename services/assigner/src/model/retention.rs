//! Removing finished jobs: a completed or cancelled job is kept for `finished_job_retention`
//! after it ended (completion or cancellation time), then its record is deleted — only once none
//! of its partition keys is left (a cancelled job's granted partitions are released and deleted
//! first; a completed job's were compacted). Until then `get_job`, `list_jobs` and `id_status`
//! answer for it; afterwards the name is unknown and may be used again.

use super::AssignerState;
use elk_protocol::messages::JobState;
use elk_types::JobName;

impl AssignerState {
    /// Drops finished jobs whose retention has passed and queues their records' deletes.
    pub(super) fn remove_expired_jobs(&mut self) {
        let retention = self.policy.finished_job_retention_ms;
        let mut expired: Vec<JobName> = Vec::new();
        let mut undated: Vec<JobName> = Vec::new();
        for (name, stored) in &self.jobs {
            let job = &stored.value;
            if !job.is_terminal() {
                continue;
            }
            match job.ended_unix_ms() {
                Some(ended) if self.now_ms >= ended.saturating_add(retention) => {
                    expired.push(name.clone());
                }
                Some(_) => {}
                None => undated.push(name.clone()),
            }
        }
        // A cancelled record stored without its time (before the field existed): its retention
        // counts from now.
        for name in undated {
            let job = &mut self.jobs.get_mut(&name).expect("listed").value;
            if job.state == JobState::Cancelled {
                job.cancelled_unix_ms = Some(self.now_ms);
            } else {
                job.completed_unix_ms = Some(self.now_ms);
            }
            self.dirty_jobs.insert(name);
        }
        for name in expired {
            if self.has_partition_keys(&name) {
                continue;
            }
            self.jobs.remove(&name);
            self.coverage.remove(&name);
            self.plan_asked.remove(&name);
            self.awaiting_compaction.remove(&name);
            self.dirty_jobs.remove(&name);
            self.job_deletes.push(name);
        }
    }

    /// Whether any partition key of the job may still exist (live, waiting for compaction, or a
    /// gap still to repair).
    fn has_partition_keys(&self, name: &JobName) -> bool {
        self.partitions_of(name).next().is_some()
            || self
                .awaiting_compaction
                .get(name)
                .is_some_and(|waiting| !waiting.is_empty())
            || self.repairs.iter().any(|(job, _)| job == name)
    }
}
