//! Operator commands on the model: job creation (checked, then written with the round's change
//! set), pause / resume / cancel, retry of failed partitions, job and partition listings and ID
//! lookups. Refusals are typed ([`AdminRefusal`]); the leader loop persists the changes before it
//! replies, so a reply means the change is stored.

use super::grants::RevokeCause;
use super::live::LivePartition;
use super::{AdminRefusal, AssignerState, JobCommand, PartitionKey, SpecProblem, Stored};
use elk_protocol::admin::{DEFAULT_PAGE, IdState, MAX_PAGE};
use elk_protocol::messages::{JobRecord, JobSpec, JobState, PartitionRecord, PartitionStatus};
use elk_types::{JobName, PartitionId};
use std::collections::BTreeMap;
use std::ops::Bound;

/// Largest partition size accepted (a partition is one unit of work and one KV record).
const MAX_PARTITION_SIZE: u64 = 1 << 40;

/// Checks a job specification.
fn check_spec(spec: &JobSpec) -> Result<(), SpecProblem> {
    if spec.partition_size == 0 || spec.partition_size > MAX_PARTITION_SIZE {
        return Err(SpecProblem::PartitionSize {
            max: MAX_PARTITION_SIZE,
        });
    }
    if spec.range.last() == u64::MAX {
        return Err(SpecProblem::RangeEndsAtMax);
    }
    if spec.max_attempts == 0 {
        return Err(SpecProblem::NoAttempts);
    }
    if spec.open_ended && spec.lookahead == 0 {
        return Err(SpecProblem::NoLookahead);
    }
    Ok(())
}

impl AssignerState {
    /// Creates a job (stored with the round's change set, as a create: it must not exist in KV).
    #[cfg(test)]
    pub(crate) fn create_job(
        &mut self,
        name: &JobName,
        spec: &JobSpec,
    ) -> Result<JobRecord, AdminRefusal> {
        self.create_traced_job(name, spec, None)
    }

    /// Creates a job; `traceparent` is the (sampled) span of the request that created it, which
    /// every partition's trace links to.
    pub(crate) fn create_traced_job(
        &mut self,
        name: &JobName,
        spec: &JobSpec,
        traceparent: Option<String>,
    ) -> Result<JobRecord, AdminRefusal> {
        if self.jobs.contains_key(name) {
            return Err(AdminRefusal::AlreadyExists(name.clone()));
        }
        check_spec(spec)?;
        let mut record = JobRecord::new(name.clone(), spec.clone(), self.epoch, self.now_ms);
        record.traceparent = traceparent;
        self.jobs.insert(name.clone(), Stored::new(record.clone()));
        self.dirty_jobs.insert(name.clone());
        Ok(record)
    }

    /// A page of jobs in name order after `after`, within `limit` and `max_bytes` of encoded
    /// records, and the name to continue after (`None`: the last page).
    pub(crate) fn list_jobs(
        &self,
        after: Option<&JobName>,
        limit: Option<u32>,
        max_bytes: usize,
    ) -> (Vec<JobRecord>, Option<JobName>) {
        let lower = match after {
            Some(after) => Bound::Excluded(after.clone()),
            None => Bound::Unbounded,
        };
        let mut page = Page::new(limit, max_bytes);
        for stored in self.jobs.range((lower, Bound::Unbounded)).map(|(_, s)| s) {
            if !page.offer(&stored.value) {
                let next = page.items.last().map(|job| job.name.clone());
                return (page.items, next);
            }
        }
        (page.items, None)
    }

    pub(crate) fn get_job(&self, name: &JobName) -> Result<JobRecord, AdminRefusal> {
        Ok(self.job(name)?.clone())
    }

    fn job(&self, name: &JobName) -> Result<&JobRecord, AdminRefusal> {
        self.jobs
            .get(name)
            .map(|stored| &stored.value)
            .ok_or_else(|| AdminRefusal::UnknownJob(name.clone()))
    }

    fn job_mut(&mut self, name: &JobName) -> Result<&mut JobRecord, AdminRefusal> {
        self.jobs
            .get_mut(name)
            .map(|stored| &mut stored.value)
            .ok_or_else(|| AdminRefusal::UnknownJob(name.clone()))
    }

    pub(crate) fn pause_job(&mut self, name: &JobName) -> Result<JobRecord, AdminRefusal> {
        let job = self.job_mut(name)?;
        match job.state {
            JobState::Active => job.state = JobState::Paused,
            JobState::Paused => {}
            state => return Err(invalid_state(name, state, JobCommand::Pause)),
        }
        self.revoke_job(name, RevokeCause::JobPaused);
        Ok(self.touch(name))
    }

    pub(crate) fn resume_job(&mut self, name: &JobName) -> Result<JobRecord, AdminRefusal> {
        let job = self.job_mut(name)?;
        match job.state {
            JobState::Paused => job.state = JobState::Active,
            JobState::Active => {}
            state => return Err(invalid_state(name, state, JobCommand::Resume)),
        }
        Ok(self.touch(name))
    }

    pub(crate) fn cancel_job(&mut self, name: &JobName) -> Result<JobRecord, AdminRefusal> {
        let now_ms = self.now_ms;
        let job = self.job_mut(name)?;
        if job.state == JobState::Completed {
            return Err(invalid_state(name, job.state, JobCommand::Cancel));
        }
        job.state = JobState::Cancelled;
        job.cancelled_unix_ms = Some(now_ms);
        self.revoke_job(name, RevokeCause::JobCancelled);
        Ok(self.touch(name))
    }

    fn touch(&mut self, name: &JobName) -> JobRecord {
        self.dirty_jobs.insert(name.clone());
        self.jobs[name].value.clone()
    }

    /// Revokes every granted partition of a job (they are released, then stay pending).
    fn revoke_job(&mut self, name: &JobName, cause: RevokeCause) {
        let granted: Vec<PartitionKey> = self
            .partitions_of(name)
            .filter(|(_, stored)| stored.value.status == PartitionStatus::Granted)
            .map(|(key, _)| key.clone())
            .collect();
        for key in granted {
            self.revoke(&key, cause);
        }
    }

    pub(super) fn partitions_of<'a>(
        &'a self,
        name: &JobName,
    ) -> impl Iterator<Item = (&'a PartitionKey, &'a Stored<LivePartition>)> + 'a {
        self.partitions.range(PartitionKey::bounds_of(name))
    }

    /// Re-queues failed partitions (all, one job's, or one partition) with a fresh retry budget.
    pub(crate) fn retry(
        &mut self,
        job: Option<&JobName>,
        partition: Option<PartitionId>,
    ) -> Result<u64, AdminRefusal> {
        if let Some(job) = job {
            self.job(job)?;
        }
        if partition.is_some() && job.is_none() {
            return Err(AdminRefusal::PartitionWithoutJob);
        }
        let failed: Vec<PartitionKey> = self
            .partitions
            .iter()
            .filter(|(key, stored)| {
                stored.value.status == PartitionStatus::Failed
                    && job.is_none_or(|job| key.job == *job)
                    && partition.is_none_or(|id| key.partition == id)
            })
            .map(|(key, _)| key.clone())
            .collect();
        if let (Some(job), Some(id), true) = (job, partition, failed.is_empty()) {
            let key = PartitionKey::new(job.clone(), id);
            return Err(match self.partitions.get(&key) {
                Some(stored) => AdminRefusal::PartitionNotFailed {
                    key,
                    status: stored.value.status,
                },
                None => AdminRefusal::UnknownPartition(key),
            });
        }
        for key in &failed {
            self.transition(key, PartitionStatus::Pending, |record| {
                record.attempts = 0;
                record.not_before_unix_ms = None;
                record.holder_deaths.clear();
                record.quarantined = false;
            });
            if let Some(stored) = self.jobs.get_mut(&key.job) {
                stored.value.partitions_failed = stored.value.partitions_failed.saturating_sub(1);
                self.dirty_jobs.insert(key.job.clone());
            }
        }
        Ok(failed.len() as u64)
    }

    /// A page of live partitions in (job, id) order (within `limit` and `max_bytes` of encoded
    /// records), and the key to continue after.
    pub(crate) fn list_partitions(
        &self,
        job: Option<&JobName>,
        statuses: &[PartitionStatus],
        after: Option<&PartitionKey>,
        limit: Option<u32>,
        max_bytes: usize,
    ) -> Result<(Vec<PartitionRecord>, Option<PartitionKey>), AdminRefusal> {
        if let Some(job) = job {
            self.job(job)?;
        }
        let mut page = Page::new(limit, max_bytes);
        let lower = match after {
            Some(after) => Bound::Excluded(after.clone()),
            None => Bound::Unbounded,
        };
        let range = (lower, Bound::Unbounded);
        for (key, stored) in self.partitions.range::<PartitionKey, _>(range) {
            if job.is_some_and(|job| key.job != *job) {
                continue;
            }
            if !statuses.is_empty() && !statuses.contains(&stored.value.status) {
                continue;
            }
            if !page.offer(&stored.value.record(key)) {
                let next = page.items.last().map(PartitionKey::of);
                return Ok((page.items, next));
            }
        }
        Ok((page.items, None))
    }

    /// Where `id` of `job` stands.
    pub(crate) fn id_status(&self, job: &JobName, id: u64) -> Result<IdState, AdminRefusal> {
        let record = self.job(job)?;
        if let Some((key, stored)) = self
            .partitions_of(job)
            .find(|(_, p)| p.value.range.contains(id))
        {
            return Ok(IdState::InPartition {
                partition: Box::new(stored.value.record(key)),
            });
        }
        if record.id_completed(id) {
            return Ok(IdState::Completed);
        }
        Ok(IdState::NotPlanned)
    }

    /// Live partitions by status name.
    pub(crate) fn partition_counts(&self) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for stored in self.partitions.values() {
            let status = format!("{:?}", stored.value.status).to_lowercase();
            *counts.entry(status).or_insert(0) += 1;
        }
        counts
    }
}

/// A listing page being filled: at most `limit` records (default [`DEFAULT_PAGE`], at most
/// [`MAX_PAGE`]) and at most `max_bytes` of encoded records, so that the reply fits in one NATS
/// message. A page always takes its first record (one job or partition record is far below any
/// server's payload limit).
struct Page<T> {
    items: Vec<T>,
    limit: usize,
    bytes: usize,
    max_bytes: usize,
}

impl<T: Clone + elk_protocol::codec::Message> Page<T> {
    fn new(limit: Option<u32>, max_bytes: usize) -> Self {
        Self {
            items: Vec::new(),
            limit: limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE) as usize,
            bytes: 0,
            max_bytes,
        }
    }

    /// Adds `item` if the page has room for it; `false`: the page is full (the item is not in it).
    fn offer(&mut self, item: &T) -> bool {
        let size = elk_protocol::encode(item).len();
        let fits = self.items.is_empty() || self.bytes.saturating_add(size) <= self.max_bytes;
        if self.items.len() == self.limit || !fits {
            return false;
        }
        self.bytes += size;
        self.items.push(item.clone());
        true
    }
}

fn invalid_state(job: &JobName, state: JobState, command: JobCommand) -> AdminRefusal {
    AdminRefusal::InvalidJobState {
        job: job.clone(),
        state,
        command,
    }
}
