//! The assigner's in-memory model of jobs, partitions and assignments, and every decision made on
//! it. Pure: no I/O. The leader loop (`leader.rs`) feeds it events and persists what it marks
//! dirty, always partitions before the assignment records that point at them.
//!
//! Partition lifecycle (all transitions made here):
//!
//! ```text
//!   created ─▶ Pending ──grant(fresh token)──▶ Granted ──Completed──▶ Completed ─▶ compacted
//!               ▲  ▲                             │  │
//!               │  │ backoff over (retry)        │  │ Failed: attempts < max ─▶ Pending (not before
//!               │  └─────────────────────────────┘  │         now + backoff); else ─▶ Failed
//!               │                                   │ over quota / job paused ─▶ Revoking
//!               │   Released(token), or the owner's │ owner gone (key expired or deleted,
//!               └── member gone ◀── Revoking ◀──────┘ after the progress barrier) ─▶ Pending
//!   Failed ──retry command──▶ Pending (attempts reset)
//! ```
//!
//! Only progress carrying the partition's current token from its current owner is applied; any
//! other report is stale, counted and dropped.

use elk_protocol::SCHEMA_VERSION;
use elk_protocol::messages::{
    AssignmentRecord, Grant, JobRecord, MemberRef, MembershipView, PartitionRecord,
    PartitionStatus, ProgressEvent, ProgressReport,
};
use elk_types::{
    Capacity, Epoch, IdRange, Incarnation, JobName, MemberId, PartitionId, PartitionLeaseToken,
    Revision, ViewSeq,
};
use std::collections::{BTreeMap, BTreeSet};

#[path = "gaps.rs"]
mod gaps;
#[path = "grants.rs"]
mod grants;
#[path = "jobs.rs"]
mod jobs;
#[path = "plan.rs"]
mod plan;

pub(crate) use plan::PlanQuestion;

pub(crate) type PartitionKey = (JobName, PartitionId);

/// A record and the KV revision it is stored at (`None`: not written yet).
#[derive(Debug, Clone)]
pub(crate) struct Stored<T> {
    pub value: T,
    pub revision: Option<Revision>,
}

impl<T> Stored<T> {
    pub fn new(value: T) -> Self {
        Self {
            value,
            revision: None,
        }
    }
}

/// A live worker as the assigner sees it.
#[derive(Debug, Clone)]
pub(crate) struct WorkerInfo {
    pub incarnation: Incarnation,
    pub capacity: Capacity,
    pub jobs: Vec<JobName>,
    /// Released work it was not asked to release: it is shutting down, grant it nothing more.
    pub draining: bool,
}

impl WorkerInfo {
    fn processes(&self, job: &JobName) -> bool {
        self.jobs.is_empty() || self.jobs.contains(job)
    }
}

/// Why a progress report was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejection {
    UnknownPartition,
    StaleToken,
}

/// Tunables of the decisions.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    /// Grants a worker holds per unit of capacity (running + queued on the worker).
    pub grants_per_capacity: u32,
    /// Partitions created per reconcile round (bounds the size of one flush).
    pub partitions_per_round: usize,
    /// A revoke not answered by then is reported; the partition keeps waiting for the owner's
    /// release or member expiry (it is never granted while the old owner may still run it).
    pub revoke_timeout_ms: u64,
}

#[derive(Debug)]
pub(crate) struct AssignerState {
    pub epoch: Epoch,
    token_counter: u64,
    pub policy: Policy,
    pub jobs: BTreeMap<JobName, Stored<JobRecord>>,
    /// Live (not completed) partitions only: memory follows live work.
    pub partitions: BTreeMap<PartitionKey, Stored<PartitionRecord>>,
    pub assignments: BTreeMap<MemberId, Stored<AssignmentRecord>>,
    pub workers: BTreeMap<MemberId, WorkerInfo>,
    grants_by_worker: BTreeMap<MemberId, BTreeSet<PartitionKey>>,
    pending: BTreeSet<PartitionKey>,
    pub dirty_partitions: BTreeSet<PartitionKey>,
    pub dirty_jobs: BTreeSet<JobName>,
    pub dirty_assignments: BTreeSet<MemberId>,
    /// Completed partitions written to KV this round and then forgotten.
    pub completed_to_write: Vec<Stored<PartitionRecord>>,
    pub rejected_progress: u64,
    /// Per job: low watermark + completed intervals + live partitions (gap detection).
    coverage: BTreeMap<JobName, elk_coverage::Coverage>,
    /// Gaps waiting for partitions to be created over them.
    repairs: Vec<(JobName, IdRange)>,
    pub gaps_detected: u64,
    pub gaps_repaired: u64,
    pub overlaps_detected: u64,
    /// Partitions taken from over-quota workers to rebalance.
    pub revocations: u64,
    /// Failed partitions waiting for their retry: key → not before (Unix ms).
    delayed: BTreeMap<PartitionKey, u64>,
    /// Completed partitions still in KV, per job by last ID, deleted once below the watermark.
    awaiting_compaction: BTreeMap<JobName, BTreeMap<u64, PartitionId>>,
    /// Partition keys to delete in the next flush (after the job records are written).
    pub compaction_deletes: Vec<PartitionKey>,
    /// Open-ended jobs: when the planner was last asked, and whether an answer is outstanding.
    plan_asked: BTreeMap<JobName, (u64, bool)>,
    /// Current time (Unix ms), set by the leader loop every round; tests set it by hand.
    pub now_ms: u64,
    pub retries_scheduled: u64,
    pub partitions_compacted: u64,
    /// Revoking partitions: since when (Unix ms), and whether already reported as overdue.
    revoking_since: BTreeMap<PartitionKey, (u64, bool)>,
    /// Revokes not answered within the revoke timeout.
    pub revokes_overdue: u64,
}

impl AssignerState {
    pub fn new(epoch: Epoch, policy: Policy) -> Self {
        Self {
            epoch,
            // A random start: a leader task restarted under the same epoch never re-issues a
            // token of its previous run (tokens are `epoch << 32 | counter`).
            token_counter: u64::from(rand::random::<u32>() >> 1),
            policy,
            jobs: BTreeMap::new(),
            partitions: BTreeMap::new(),
            assignments: BTreeMap::new(),
            workers: BTreeMap::new(),
            grants_by_worker: BTreeMap::new(),
            pending: BTreeSet::new(),
            dirty_partitions: BTreeSet::new(),
            dirty_jobs: BTreeSet::new(),
            dirty_assignments: BTreeSet::new(),
            completed_to_write: Vec::new(),
            rejected_progress: 0,
            coverage: BTreeMap::new(),
            repairs: Vec::new(),
            gaps_detected: 0,
            gaps_repaired: 0,
            overlaps_detected: 0,
            revocations: 0,
            delayed: BTreeMap::new(),
            awaiting_compaction: BTreeMap::new(),
            compaction_deletes: Vec::new(),
            plan_asked: BTreeMap::new(),
            now_ms: 0,
            retries_scheduled: 0,
            partitions_compacted: 0,
            revoking_since: BTreeMap::new(),
            revokes_overdue: 0,
        }
    }

    /// Adds a partition loaded from KV (completed ones are not kept).
    pub fn load_partition(&mut self, record: PartitionRecord, revision: Revision) {
        if record.status == PartitionStatus::Completed {
            return;
        }
        let key = (record.job.clone(), record.id);
        if record.status == PartitionStatus::Revoking {
            self.revoking_since
                .insert(key.clone(), (self.now_ms, false));
        }
        self.index(&key, &record);
        self.partitions.insert(
            key,
            Stored {
                value: record,
                revision: Some(revision),
            },
        );
    }

    fn index(&mut self, key: &PartitionKey, record: &PartitionRecord) {
        match record.status {
            PartitionStatus::Pending => match record.not_before_unix_ms {
                Some(due) => {
                    self.delayed.insert(key.clone(), due);
                }
                None => {
                    self.pending.insert(key.clone());
                }
            },
            PartitionStatus::Granted => {
                if let Some(owner) = &record.owner {
                    self.grants_by_worker
                        .entry(owner.id.clone())
                        .or_default()
                        .insert(key.clone());
                }
            }
            _ => {}
        }
    }

    fn unindex(&mut self, key: &PartitionKey, record: &PartitionRecord) {
        self.pending.remove(key);
        self.delayed.remove(key);
        if let Some(owner) = &record.owner
            && let Some(set) = self.grants_by_worker.get_mut(&owner.id)
        {
            set.remove(key);
        }
    }

    /// Drops a partition from memory (its key is being deleted).
    fn forget_partition(&mut self, key: &PartitionKey) {
        if let Some(stored) = self.partitions.remove(key) {
            self.unindex(key, &stored.value);
            self.dirty_partitions.remove(key);
            self.revoking_since.remove(key);
        }
    }

    /// Changes a partition through `change`, keeping the indexes and the dirty set right.
    fn update_partition(&mut self, key: &PartitionKey, change: impl FnOnce(&mut PartitionRecord)) {
        let Some(mut stored) = self.partitions.remove(key) else {
            return;
        };
        self.unindex(key, &stored.value);
        change(&mut stored.value);
        stored.value.epoch = self.epoch;
        if stored.value.status == PartitionStatus::Revoking {
            self.revoking_since
                .entry(key.clone())
                .or_insert((self.now_ms, false));
        } else {
            self.revoking_since.remove(key);
        }
        if let Some(owner) = &stored.value.owner {
            self.dirty_assignments.insert(owner.id.clone());
        }
        if stored.value.status == PartitionStatus::Completed {
            self.dirty_partitions.remove(key);
            self.completed_to_write.push(stored);
            return;
        }
        self.index(key, &stored.value);
        self.partitions.insert(key.clone(), stored);
        self.dirty_partitions.insert(key.clone());
    }

    /// Partitions being revoked (waiting for their owner's release or expiry).
    pub(crate) fn revoking_keys(&self) -> impl Iterator<Item = PartitionKey> + '_ {
        self.revoking_since.keys().cloned()
    }

    /// Reports (once each) revokes unanswered for longer than the revoke timeout. Nothing else
    /// happens to them: they are granted again only after a release or the owner's expiry.
    pub fn report_overdue_revokes(&mut self) {
        let deadline = self.now_ms.saturating_sub(self.policy.revoke_timeout_ms);
        for (key, (since, reported)) in self.revoking_since.iter_mut() {
            if *reported || *since > deadline {
                continue;
            }
            *reported = true;
            self.revokes_overdue += 1;
            let owner = self.partitions.get(key).and_then(|p| p.value.owner.clone());
            tracing::warn!(job = %key.0, partition = %key.1, owner = ?owner.map(|o| o.id), "revoke not answered in time: waiting for the owner's release or member expiry");
        }
    }

    fn next_token(&mut self) -> PartitionLeaseToken {
        self.token_counter = (self.token_counter + 1) & 0xFFFF_FFFF;
        PartitionLeaseToken((self.epoch.get() << 32) | self.token_counter)
    }

    /// Replaces the set of live workers from a membership view. Returns the members (with the
    /// incarnation that held partitions) that are no longer live: their partitions may only be
    /// reclaimed once every progress report they published before leaving has been applied.
    pub fn apply_view(&mut self, view: &MembershipView) -> Vec<MemberRef> {
        let mut next = BTreeMap::new();
        for member in view.workers() {
            // Draining survives a leader change through the `drain` flag of the worker's record.
            let draining = self
                .workers
                .get(&member.id)
                .is_some_and(|w| w.incarnation == member.incarnation && w.draining)
                || self.assignments.get(&member.id).is_some_and(|record| {
                    record.value.incarnation == member.incarnation && record.value.drain
                });
            next.insert(
                member.id.clone(),
                WorkerInfo {
                    incarnation: member.incarnation,
                    capacity: member.capacity,
                    jobs: member.jobs.clone(),
                    draining,
                },
            );
        }
        self.workers = next;
        let mut gone = BTreeSet::new();
        for stored in self.partitions.values() {
            if let Some(owner) = &stored.value.owner
                && !self.is_live(owner)
                && stored.value.status != PartitionStatus::Pending
            {
                gone.insert((owner.id.clone(), owner.incarnation));
            }
        }
        for (id, stored) in &self.assignments {
            let live = self
                .workers
                .get(id)
                .is_some_and(|w| w.incarnation == stored.value.incarnation);
            if !live && !stored.value.grants.is_empty() {
                gone.insert((id.clone(), stored.value.incarnation));
            }
        }
        for id in self.workers.keys() {
            let stale = self
                .assignments
                .get(id)
                .is_none_or(|a| a.value.incarnation != self.workers[id].incarnation);
            if stale {
                self.dirty_assignments.insert(id.clone());
            }
        }
        gone.into_iter()
            .map(|(id, incarnation)| MemberRef { id, incarnation })
            .collect()
    }

    pub fn is_live(&self, member: &MemberRef) -> bool {
        self.workers
            .get(&member.id)
            .is_some_and(|w| w.incarnation == member.incarnation)
    }

    /// Takes back every partition held by `member`, which is gone (its key expired, so it has
    /// fenced itself, or it deleted its key after releasing). They resume from their checkpoint.
    pub fn reclaim(&mut self, member: &MemberRef) -> usize {
        if self.is_live(member) {
            return 0;
        }
        let keys: Vec<PartitionKey> = self
            .partitions
            .iter()
            .filter(|(_, stored)| {
                stored.value.owner.as_ref() == Some(member)
                    && matches!(
                        stored.value.status,
                        PartitionStatus::Granted | PartitionStatus::Revoking
                    )
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in &keys {
            self.update_partition(key, |record| {
                record.status = PartitionStatus::Pending;
                record.owner = None;
            });
        }
        if let Some(stored) = self.assignments.get(&member.id)
            && stored.value.incarnation == member.incarnation
            && !stored.value.grants.is_empty()
        {
            self.dirty_assignments.insert(member.id.clone());
        }
        keys.len()
    }

    /// Applies one progress report. Stale reports (wrong token or owner) are rejected.
    pub fn apply_progress(&mut self, report: &ProgressReport) -> Result<(), Rejection> {
        let key = (report.job.clone(), report.partition);
        let Some(stored) = self.partitions.get(&key) else {
            self.rejected_progress += 1;
            return Err(Rejection::UnknownPartition);
        };
        let record = &stored.value;
        let owner_matches = record.owner.as_ref().is_some_and(|owner| {
            owner.id == report.worker && owner.incarnation == report.incarnation
        });
        let active = matches!(
            record.status,
            PartitionStatus::Granted | PartitionStatus::Revoking
        );
        if !owner_matches || !active || record.token != report.token {
            self.rejected_progress += 1;
            return Err(Rejection::StaleToken);
        }
        let range = record.range;
        match &report.event {
            ProgressEvent::Checkpoint { last_done } => {
                let last_done = (*last_done).min(range.last());
                self.update_partition(&key, |record| {
                    record.checkpoint = record.checkpoint.max(Some(last_done));
                });
            }
            ProgressEvent::Completed => {
                let completed = record.clone();
                self.update_partition(&key, |record| {
                    record.status = PartitionStatus::Completed;
                    record.checkpoint = Some(range.last());
                });
                self.coverage_completed(&completed);
                if let Some(job) = self.jobs.get_mut(&report.job) {
                    job.value.partitions_completed += 1;
                    job.value.ids_completed += range.len();
                    self.dirty_jobs.insert(report.job.clone());
                }
            }
            ProgressEvent::Failed {
                error,
                last_done,
                permanent,
            } => {
                let last_done = last_done.map(|done| done.min(range.last()));
                self.fail_partition(&key, error.clone(), last_done, *permanent);
                self.mark_owner_dirty(report);
            }
            ProgressEvent::Released { last_done } => {
                let revoked = record.status == PartitionStatus::Revoking;
                let last_done = last_done.map(|done| done.min(range.last()));
                self.update_partition(&key, |record| {
                    record.status = PartitionStatus::Pending;
                    record.owner = None;
                    record.checkpoint = record.checkpoint.max(last_done);
                });
                self.mark_owner_dirty(report);
                if !revoked {
                    // Released without being asked: the worker is shutting down.
                    if let Some(worker) = self.workers.get_mut(&report.worker) {
                        worker.draining = true;
                    }
                }
            }
        }
        Ok(())
    }

    fn mark_owner_dirty(&mut self, report: &ProgressReport) {
        self.dirty_assignments.insert(report.worker.clone());
    }

    /// The assignment record `worker` should hold now (its granted partitions), if it changed.
    pub fn desired_assignment(&mut self, worker: &MemberId) -> Option<AssignmentRecord> {
        let live = self.workers.get(worker);
        let grants: Vec<Grant> = match live {
            Some(info) => self
                .grants_by_worker
                .get(worker)
                .into_iter()
                .flatten()
                .filter_map(|key| self.partitions.get(key))
                .filter(|stored| {
                    stored
                        .value
                        .owner
                        .as_ref()
                        .is_some_and(|o| o.incarnation == info.incarnation)
                })
                .map(|stored| grant_of(&stored.value))
                .collect(),
            None => Vec::new(),
        };
        let incarnation = match (live, self.assignments.get(worker)) {
            (Some(info), _) => info.incarnation,
            (None, Some(existing)) => existing.value.incarnation,
            (None, None) => return None,
        };
        let drain = live.is_some_and(|info| info.draining);
        let previous = self.assignments.get(worker);
        if let Some(previous) = previous {
            let same = previous.value.grants == grants
                && previous.value.incarnation == incarnation
                && previous.value.epoch == self.epoch
                && previous.value.drain == drain;
            if same {
                return None;
            }
        } else if grants.is_empty() && live.is_none() {
            return None;
        }
        let seq = previous.map_or(ViewSeq(1), |p| ViewSeq(p.value.seq.get() + 1));
        Some(AssignmentRecord {
            schema: SCHEMA_VERSION,
            incarnation,
            epoch: self.epoch,
            seq,
            grants,
            drain,
        })
    }

    /// Marks every live worker's record for rewriting (a new leader re-stamps them with its epoch).
    pub fn restamp_all_assignments(&mut self) {
        let ids: Vec<MemberId> = self.workers.keys().cloned().collect();
        self.dirty_assignments.extend(ids);
    }

    #[cfg(test)]
    pub fn granted_to(&self, worker: &MemberId) -> usize {
        self.grants_by_worker.get(worker).map_or(0, BTreeSet::len)
    }

    #[cfg(test)]
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }
}

fn grant_of(record: &PartitionRecord) -> Grant {
    let resume_from = match record.checkpoint {
        Some(done) if done >= record.range.first() => done + 1,
        _ => record.range.first(),
    };
    Grant {
        job: record.job.clone(),
        partition: record.id,
        range: record.range,
        resume_from,
        token: record.token,
    }
}
