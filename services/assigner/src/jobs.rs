//! Operator commands on the model: job creation checks, pause / resume / cancel, retry of failed
//! partitions, partition listing and ID lookups. The leader loop persists what they mark dirty
//! before it replies.

use super::{AssignerState, PartitionKey, Stored};
use elk_protocol::admin::{IdState, MAX_PAGE};
use elk_protocol::messages::{JobRecord, JobSpec, JobState, PartitionRecord, PartitionStatus};
use elk_types::{JobName, PartitionId, Revision};

/// Largest partition size accepted (a partition is one unit of work and one KV record).
const MAX_PARTITION_SIZE: u64 = 1 << 40;

impl AssignerState {
    /// Checks a new job and builds its record (not yet stored).
    pub fn new_job(&self, name: &JobName, spec: &JobSpec) -> Result<JobRecord, String> {
        if self.jobs.contains_key(name) {
            return Err(format!("job '{name}' already exists"));
        }
        if spec.partition_size == 0 || spec.partition_size > MAX_PARTITION_SIZE {
            return Err(format!(
                "partition_size must be between 1 and {MAX_PARTITION_SIZE}"
            ));
        }
        if spec.range.last() == u64::MAX {
            return Err("the range must end below u64::MAX".to_owned());
        }
        if spec.max_attempts == 0 {
            return Err("max_attempts must be at least 1".to_owned());
        }
        if spec.open_ended && spec.lookahead == 0 {
            return Err("lookahead must be at least 1 for an open-ended job".to_owned());
        }
        Ok(JobRecord::new(
            name.clone(),
            spec.clone(),
            self.epoch,
            self.now_ms,
        ))
    }

    /// Adds a job that was just stored at `revision`.
    pub fn insert_job(&mut self, record: JobRecord, revision: Revision) {
        self.jobs.insert(
            record.name.clone(),
            Stored {
                value: record,
                revision: Some(revision),
            },
        );
    }

    fn job_mut(&mut self, name: &JobName) -> Result<&mut JobRecord, String> {
        self.jobs
            .get_mut(name)
            .map(|stored| &mut stored.value)
            .ok_or_else(|| format!("unknown job '{name}'"))
    }

    pub fn pause_job(&mut self, name: &JobName) -> Result<JobRecord, String> {
        let job = self.job_mut(name)?;
        match job.state {
            JobState::Active => job.state = JobState::Paused,
            JobState::Paused => {}
            state => return Err(format!("job '{name}' is {state:?} and cannot be paused")),
        }
        self.revoke_job(name);
        Ok(self.touch(name))
    }

    pub fn resume_job(&mut self, name: &JobName) -> Result<JobRecord, String> {
        let job = self.job_mut(name)?;
        match job.state {
            JobState::Paused => job.state = JobState::Active,
            JobState::Active => {}
            state => return Err(format!("job '{name}' is {state:?} and cannot be resumed")),
        }
        Ok(self.touch(name))
    }

    pub fn cancel_job(&mut self, name: &JobName) -> Result<JobRecord, String> {
        let job = self.job_mut(name)?;
        if job.state == JobState::Completed {
            return Err(format!("job '{name}' is already completed"));
        }
        job.state = JobState::Cancelled;
        self.revoke_job(name);
        Ok(self.touch(name))
    }

    fn touch(&mut self, name: &JobName) -> JobRecord {
        self.dirty_jobs.insert(name.clone());
        self.jobs[name].value.clone()
    }

    /// Revokes every granted partition of a job (they are released, then stay pending).
    fn revoke_job(&mut self, name: &JobName) {
        let granted: Vec<PartitionKey> = self
            .partitions_of(name)
            .filter(|stored| stored.value.status == PartitionStatus::Granted)
            .map(|stored| (stored.value.job.clone(), stored.value.id))
            .collect();
        for key in granted {
            self.revoke(&key);
        }
    }

    fn partitions_of<'a>(
        &'a self,
        name: &JobName,
    ) -> impl Iterator<Item = &'a Stored<PartitionRecord>> + 'a {
        let first = (name.clone(), PartitionId(0));
        let last = (name.clone(), PartitionId(u64::MAX));
        self.partitions
            .range(first..=last)
            .map(|(_, stored)| stored)
    }

    /// Re-queues failed partitions (all, one job's, or one partition) with a fresh retry budget.
    pub fn retry(
        &mut self,
        job: Option<&JobName>,
        partition: Option<PartitionId>,
    ) -> Result<u64, String> {
        if let Some(job) = job
            && !self.jobs.contains_key(job)
        {
            return Err(format!("unknown job '{job}'"));
        }
        if partition.is_some() && job.is_none() {
            return Err("a partition id needs its job".to_owned());
        }
        let failed: Vec<PartitionKey> = self
            .partitions
            .iter()
            .filter(|(key, stored)| {
                stored.value.status == PartitionStatus::Failed
                    && job.is_none_or(|job| key.0 == *job)
                    && partition.is_none_or(|id| key.1 == id)
            })
            .map(|(key, _)| key.clone())
            .collect();
        if let (Some(job), Some(id), true) = (job, partition, failed.is_empty()) {
            let exists = self.partitions.contains_key(&(job.clone(), id));
            return Err(if exists {
                format!("partition {job}.{id} is not failed")
            } else {
                format!("partition {job}.{id} is not a live partition")
            });
        }
        for key in &failed {
            self.update_partition(key, |record| {
                record.status = PartitionStatus::Pending;
                record.attempts = 0;
                record.not_before_unix_ms = None;
            });
            if let Some(stored) = self.jobs.get_mut(&key.0) {
                stored.value.partitions_failed = stored.value.partitions_failed.saturating_sub(1);
                self.dirty_jobs.insert(key.0.clone());
            }
        }
        Ok(failed.len() as u64)
    }

    /// A page of live partitions in (job, id) order.
    pub fn list_partitions(
        &self,
        job: Option<&JobName>,
        statuses: &[PartitionStatus],
        after: Option<&PartitionKey>,
        limit: Option<u32>,
    ) -> (Vec<PartitionRecord>, Option<PartitionKey>) {
        let limit = limit.unwrap_or(100).clamp(1, MAX_PAGE) as usize;
        let mut page: Vec<PartitionRecord> = Vec::new();
        let mut next_after = None;
        let lower = match after {
            Some(after) => std::ops::Bound::Excluded(after.clone()),
            None => std::ops::Bound::Unbounded,
        };
        let range = (lower, std::ops::Bound::Unbounded);
        for (key, stored) in self.partitions.range::<PartitionKey, _>(range) {
            if job.is_some_and(|job| key.0 != *job) {
                continue;
            }
            if !statuses.is_empty() && !statuses.contains(&stored.value.status) {
                continue;
            }
            if page.len() == limit {
                next_after = page.last().map(|last| (last.job.clone(), last.id));
                break;
            }
            page.push(stored.value.clone());
        }
        (page, next_after)
    }

    /// Where `id` of `job` stands.
    pub fn id_status(&self, job: &JobName, id: u64) -> Result<IdState, String> {
        let record = &self
            .jobs
            .get(job)
            .ok_or_else(|| format!("unknown job '{job}'"))?
            .value;
        if let Some(stored) = self.partitions_of(job).find(|p| p.value.range.contains(id)) {
            return Ok(IdState::InPartition {
                partition: stored.value.clone(),
            });
        }
        if record.id_completed(id) {
            return Ok(IdState::Completed);
        }
        Ok(IdState::NotPlanned)
    }

    /// Live partitions by status name.
    pub fn partition_counts(&self) -> std::collections::BTreeMap<String, u64> {
        let mut counts = std::collections::BTreeMap::new();
        for stored in self.partitions.values() {
            let status = format!("{:?}", stored.value.status).to_lowercase();
            *counts.entry(status).or_insert(0) += 1;
        }
        counts
    }
}
