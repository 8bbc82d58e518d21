//! The assigner's model: jobs, live partitions, workers and assignment records in memory, and every
//! decision made on them. Pure: no I/O, no clock, no async. The leader loop (`crate::leader`)
//! feeds it events (membership views, progress reports, admin commands, planner answers), runs one
//! [`AssignerState::reconcile`] per round, takes the round's [`ChangeSet`] and has the store write
//! it (`crate::store`), which reports the new revisions back with
//! [`AssignerState::record_written`]. That change set is the model's only way out: every KV write
//! the assigner makes (job creation included) is in one.
//!
//! Partition lifecycle. Every status change goes through one function (`transition`, in
//! `partitions.rs`) that checks it against this diagram with a `debug_assert!`:
//!
//! ```text
//!   created ─▶ Pending ──grant(fresh token)──▶ Granted ──Completed──▶ Completed ─▶ compacted
//!               ▲  ▲                             │  │
//!               │  │ backoff over (retry)        │  │ Failed: attempts < max ─▶ Pending (not before
//!               │  └─────────────────────────────┘  │   now + backoff); else, or permanent ─▶ Failed
//!               │                                   │ over quota / job paused ─▶ Revoking
//!               │   Released(token), or the owner's │ owner gone (key expired or deleted,
//!               └── member gone ◀── Revoking ◀──────┘ after the progress barrier) ─▶ Pending,
//!                                                          or Failed (quarantined) when holders
//!                                                          keep dying (`quarantine.rs`)
//!   Revoking ──Completed / Failed (reported before the release)──▶ like Granted
//!   Failed ──retry command──▶ Pending (attempts, holder deaths and quarantine reset)
//!   Pending, Failed of a cancelled job ─▶ deleted
//! ```
//!
//! Only progress carrying the partition's current token from its current owner is applied; any
//! other report is stale, counted and dropped.
//!
//! Files: `partitions.rs` (the lifecycle, its indexes, progress, reclaims), `workers.rs` (views and
//! assignment records), `grants.rs` (placement), `churn.rs` (the churn budget: rebalancing moves
//! per round), `plan.rs` (cutting jobs, retries, planners),
//! `gaps.rs` (coverage, audit, compaction), `retention.rs` (removing finished jobs), `jobs.rs`
//! (admin commands), `refusal.rs` (their typed refusals), `changes.rs` (the change set),
//! `levers.rs` (drains, freeze, `members`), `spans.rs` (the spans of a partition's trace, built
//! at these events only when the process traces). Memory (docs/decisions/compact-assigner-model.md):
//! `live.rs` (the compact form a live partition is held in), `assignment.rs` (what is kept of
//! each worker's stored record: digests, not grants), `memory.rs` (tables repacked after large
//! rounds).

mod assignment;
mod changes;
mod churn;
mod gaps;
mod gauges;
mod grants;
mod jobs;
mod levers;
mod live;
mod memory;
mod partitions;
mod plan;
mod quarantine;
mod range_purge;
mod refusal;
mod retention;
mod spans;
mod split;
mod workers;

#[cfg(test)]
mod tests;

pub(crate) use changes::{ChangeSet, Put, Written};
pub(crate) use churn::{RebalancePolicy, RebalanceRound};
pub(crate) use gauges::{JobGauges, ModelGauges};
pub(crate) use plan::{MAX_FILL_CUT, PlanQuestion};
pub(crate) use range_purge::RangePurge;
pub(crate) use refusal::{AdminRefusal, JobCommand, SpecProblem};
pub(crate) use split::TailPolicy;

pub(crate) use crate::config::WritePath;

use elk_protocol::messages::{
    AssignmentRecord, DrainSource, JobRecord, PartitionRecord, PlacementControl,
};
use elk_types::{Capacity, Epoch, IdRange, Incarnation, JobName, MemberId, PartitionId, Revision};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// A partition's key in the model (and, as `<job>.<partition>`, in the partitions bucket).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct PartitionKey {
    pub job: JobName,
    pub partition: PartitionId,
}

impl PartitionKey {
    pub fn new(job: JobName, partition: PartitionId) -> Self {
        Self { job, partition }
    }

    pub fn of(record: &PartitionRecord) -> Self {
        Self::new(record.job.clone(), record.id)
    }

    /// The smallest and largest keys a job's partitions can have (for range scans).
    fn bounds_of(job: &JobName) -> std::ops::RangeInclusive<PartitionKey> {
        Self::new(job.clone(), PartitionId(0))..=Self::new(job.clone(), PartitionId(u64::MAX))
    }
}

impl fmt::Display for PartitionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.job, self.partition)
    }
}

/// A record and the KV revision it is stored at (none: not written yet). The revision is held
/// as a `NonZeroU64`, 8 bytes where `Option<Revision>` takes 16 (one per live partition: issue
/// 10's memory target): a KV revision is a stream sequence, which starts at 1.
#[derive(Debug, Clone)]
pub(crate) struct Stored<T> {
    pub value: T,
    revision: Option<std::num::NonZeroU64>,
}

impl<T> Stored<T> {
    fn new(value: T) -> Self {
        Self {
            value,
            revision: None,
        }
    }

    fn at(value: T, revision: Revision) -> Self {
        let mut stored = Self::new(value);
        stored.set_revision(revision);
        stored
    }

    /// The revision it is stored at; `None` until written (a CAS then expects no key).
    pub(crate) fn revision(&self) -> Option<Revision> {
        self.revision.map(|revision| Revision(revision.get()))
    }

    /// Records the revision a write was acknowledged at (0 is no stream sequence: read as
    /// "not written").
    fn set_revision(&mut self, revision: Revision) {
        self.revision = std::num::NonZeroU64::new(revision.get());
    }
}

/// A live worker as the assigner sees it.
#[derive(Debug, Clone)]
struct WorkerInfo {
    incarnation: Incarnation,
    capacity: Capacity,
    jobs: Vec<JobName>,
    /// Released work it was not asked to release: it is shutting down, grant it nothing more.
    draining: bool,
    /// A drain requested for this incarnation (`levers.rs`): grant it nothing, revoke its grants.
    drain: Option<DrainSource>,
}

impl WorkerInfo {
    /// Whether placement may give it partitions (neither leaving nor asked to drain).
    fn takes_grants(&self) -> bool {
        !self.draining && self.drain.is_none()
    }

    fn processes(&self, job: &JobName) -> bool {
        self.jobs.is_empty() || self.jobs.contains(job)
    }
}

/// Why a progress report was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejection {
    UnknownPartition,
    StaleToken,
    /// A checkpoint (`last_done`) outside the grant's range: applying it would mark IDs done that
    /// the grant never covered, or skip the grant's own.
    OutOfRange,
}

impl Rejection {
    /// The `reason` label of `elk_assigner_progress_reports_total{outcome="rejected"}`.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Rejection::UnknownPartition => "unknown_partition",
            Rejection::StaleToken => "stale_token",
            Rejection::OutOfRange => "out_of_range",
        }
    }
}

/// Tunables of the decisions.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    /// Grants a worker holds per unit of capacity (running + queued on the worker).
    pub grants_per_capacity: u32,
    /// Partitions created per reconcile round (bounds the size of one flush), or more to fill
    /// the fleet's free grant slots (`plan.rs`, `cut_budget`).
    pub partitions_per_round: usize,
    /// Most partitions a round cuts to fill free grant slots ([`MAX_FILL_CUT`] in the service).
    pub max_fill_cut: usize,
    /// Partition keys a fixed job may have at once (live, parked and completed ones awaiting
    /// compaction): more are cut as these are compacted, so no job's size creates unbounded keys.
    pub max_job_backlog: u64,
    /// How long a finished (completed or cancelled) job is kept before its record and partition
    /// keys are removed (ms).
    pub finished_job_retention_ms: u64,
    /// A revoke not answered by then is reported; the partition keeps waiting for the owner's
    /// release or member expiry (it is never granted while the old owner may still run it).
    pub revoke_timeout_ms: u64,
    /// Straggler splitting and adaptive partition size (`split.rs`).
    pub tails: TailPolicy,
    /// The churn budget: rebalancing moves per round at most (`churn.rs`).
    pub rebalance: RebalancePolicy,
    /// Holder deaths (with no progress in between) that quarantine a partition; 0: never
    /// (`quarantine.rs`).
    pub quarantine_after_deaths: u32,
    /// How rounds are stored (`crate::config::WritePath`): `Lean` does not write completed
    /// partitions (the job record carries them until compaction), cuts fixed jobs just in time
    /// (`plan.rs`) and pipelines the flush.
    pub write_path: WritePath,
}

/// What the model counts in one leader term; published to `crate::metrics` once per round.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    /// Progress reports refused (unknown partition, stale token or owner).
    pub progress_rejected: u64,
    /// Gaps found (full audit at load, or in front of a new partition).
    pub gaps_detected: u64,
    /// Partitions created to fill gaps.
    pub gaps_repaired: u64,
    /// Overlapping partitions found or refused.
    pub overlaps_detected: u64,
    /// Partitions granted (each grant has a fresh token).
    pub grants: u64,
    /// Partitions taken from over-quota workers (or of stopped jobs).
    pub revocations: u64,
    /// Of `revocations`: those of paused or cancelled jobs.
    pub revocations_job_stopped: u64,
    /// Of `revocations`: those of drained workers (the rest rebalance).
    pub revocations_drain: u64,
    /// Of `revocations`: stragglers revoked to be split (`split.rs`).
    pub revocations_split: u64,
    /// Stragglers revoked to be split.
    pub splits: u64,
    /// Partitions created from split remainders.
    pub split_pieces: u64,
    /// Revokes not answered within the revoke timeout.
    pub revokes_overdue: u64,
    /// Failed attempts scheduled for a retry.
    pub retries_scheduled: u64,
    /// Partitions parked as `failed` (attempts exhausted, or a permanent failure).
    pub partitions_parked: u64,
    /// Completed partitions deleted below their job's low watermark.
    pub partitions_compacted: u64,
    /// Of `partitions_parked`: those quarantined because their holders kept dying.
    pub partitions_quarantined: u64,
}

/// What the leader read from KV when its term began (decodable records only).
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub jobs: Vec<(JobRecord, Revision)>,
    pub partitions: Vec<(PartitionRecord, Revision)>,
    pub assignments: Vec<(MemberId, AssignmentRecord, Revision)>,
    /// `fleet/placement` (the levers), if stored.
    pub placement: Option<(PlacementControl, Revision)>,
}

/// What a round asks of the outside world besides its change set.
#[derive(Debug, Default)]
pub(crate) struct RoundOutput {
    /// Questions for open-ended jobs' planners (answers come back through
    /// [`AssignerState::apply_plan_answer`]).
    pub plan_questions: Vec<PlanQuestion>,
}

#[derive(Debug)]
pub(crate) struct AssignerState {
    epoch: Epoch,
    policy: Policy,
    /// Current time (Unix ms): set by [`AssignerState::advance_clock`] and `reconcile`.
    now_ms: u64,
    jobs: BTreeMap<JobName, Stored<JobRecord>>,
    /// Live (not completed) partitions only: memory follows live work. Compact (`live.rs`).
    partitions: BTreeMap<PartitionKey, Stored<live::LivePartition>>,
    /// What each worker's stored assignment record says (`assignment.rs`): not its grants.
    assignments: BTreeMap<MemberId, Stored<assignment::RecordSummary>>,
    workers: BTreeMap<MemberId, WorkerInfo>,

    // Indexes over `partitions` (kept by `transition`, checked by `indexes_consistent`).
    /// Granted partitions per owner id.
    grants_by_worker: BTreeMap<MemberId, BTreeSet<PartitionKey>>,
    /// Grantable pending partitions.
    pending: BTreeSet<PartitionKey>,
    /// Pending partitions waiting for their retry: key → not before (Unix ms).
    delayed: BTreeMap<PartitionKey, u64>,
    /// Revoking partitions: since when (Unix ms), and whether already reported as overdue.
    revoking_since: BTreeMap<PartitionKey, (u64, bool)>,
    /// Pending partitions (grantable or delayed): since when (Unix ms) they wait — since they
    /// became pending, or since this term loaded them.
    pending_since: BTreeMap<PartitionKey, u64>,

    /// Per job: low watermark + completed intervals + live partitions (gap detection).
    coverage: BTreeMap<JobName, elk_coverage::Coverage>,
    /// Gaps waiting for partitions to be created over them.
    repairs: Vec<(JobName, IdRange)>,
    /// Completed partitions still in KV, per job by last ID, deleted once below the watermark;
    /// with the key's revision when known (`range_purge.rs`).
    awaiting_compaction: BTreeMap<JobName, BTreeMap<u64, (PartitionId, Option<Revision>)>>,
    /// Open-ended jobs: when the planner was last asked, and whether an answer is outstanding.
    plan_asked: BTreeMap<JobName, (u64, bool)>,

    // What the next change set holds.
    dirty_partitions: BTreeSet<PartitionKey>,
    dirty_jobs: BTreeSet<JobName>,
    dirty_assignments: BTreeSet<MemberId>,
    /// Completed partitions to write once, then forget (`WritePath::Baseline` only: the lean
    /// path leaves their keys as they are, the job record's summary counting them).
    completed_to_write: Vec<Stored<PartitionRecord>>,
    /// Partition keys to delete (after the job records accounting for them are written), with
    /// their revision when known (`range_purge.rs`).
    compaction_deletes: Vec<(PartitionKey, Option<Revision>)>,
    /// Finished jobs past their retention whose records to delete (`retention.rs`).
    job_deletes: Vec<JobName>,

    counters: Counters,
    /// Durations (ms) of hand-overs completed since last taken: revoke → the owner's release.
    handovers_ms: Vec<u64>,
    /// Drains, freeze, per-worker progress and the view's members (`levers.rs`).
    levers: levers::Levers,
    /// Observations, rates and splits in progress (`split.rs`).
    tails: split::Tails,
    /// Capacities of worker incarnations that left the view, until their reclaim: how many of
    /// their partitions they were running (`quarantine.rs`).
    departed_capacity: BTreeMap<(MemberId, Incarnation), Capacity>,
    /// Rebalancing hand-overs in flight and rounds' moves (`churn.rs`).
    churn: churn::Churn,
    /// Keys added to the partition table and the grant index since they were last repacked
    /// (`memory.rs`).
    inserted_since_repack: usize,
}

impl AssignerState {
    pub fn new(epoch: Epoch, policy: Policy) -> Self {
        Self {
            epoch,
            policy,
            now_ms: 0,
            jobs: BTreeMap::new(),
            partitions: BTreeMap::new(),
            assignments: BTreeMap::new(),
            workers: BTreeMap::new(),
            grants_by_worker: BTreeMap::new(),
            pending: BTreeSet::new(),
            delayed: BTreeMap::new(),
            revoking_since: BTreeMap::new(),
            pending_since: BTreeMap::new(),
            coverage: BTreeMap::new(),
            repairs: Vec::new(),
            awaiting_compaction: BTreeMap::new(),
            plan_asked: BTreeMap::new(),
            dirty_partitions: BTreeSet::new(),
            dirty_jobs: BTreeSet::new(),
            dirty_assignments: BTreeSet::new(),
            completed_to_write: Vec::new(),
            compaction_deletes: Vec::new(),
            job_deletes: Vec::new(),
            counters: Counters::default(),
            handovers_ms: Vec::new(),
            levers: levers::Levers::new(),
            tails: split::Tails::default(),
            departed_capacity: BTreeMap::new(),
            churn: churn::Churn::default(),
            inserted_since_repack: 0,
        }
    }

    /// The model of a new term: what KV holds, audited (gaps queued for repair, overlaps refused,
    /// job counters corrected to KV, completed keys queued for compaction), with every live
    /// worker's record to be rewritten under `epoch` once a view names them.
    pub fn load(epoch: Epoch, policy: Policy, now_ms: u64, snapshot: Snapshot) -> Self {
        let mut state = Self::new(epoch, policy);
        // The clock first, so that revokes found at load are timed from now, not from 1970.
        state.now_ms = now_ms;
        state.levers = levers::Levers::loaded(snapshot.placement);
        for (job, revision) in snapshot.jobs {
            state
                .jobs
                .insert(job.name.clone(), Stored::at(job, revision));
        }
        let mut loaded = Vec::with_capacity(snapshot.partitions.len());
        let mut completed_by_job_record = 0_u64;
        for (mut record, revision) in snapshot.partitions {
            completed_by_job_record += u64::from(state.trust_the_job_record(&mut record));
            state.load_partition(record.clone(), revision);
            loaded.push(record);
        }
        if completed_by_job_record > 0 {
            tracing::info!(
                partitions = completed_by_job_record,
                "partition keys completed in their job record only (lean write path, or a stale read): taken as completed"
            );
        }
        state.build_coverage(loaded);
        for (worker, record, revision) in snapshot.assignments {
            state.assignments.insert(
                worker,
                Stored::at(assignment::RecordSummary::of(&record), revision),
            );
        }
        state.repack_if_grown();
        state
    }

    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// The rounds that wanted rebalancing moves since the last call: moves started, deferred.
    pub fn take_rebalance_rounds(&mut self) -> Vec<RebalanceRound> {
        self.churn.take_rounds()
    }

    /// Jobs in the model (every state).
    pub fn job_count(&self) -> usize {
        self.jobs.len()
    }

    pub fn live_partition_count(&self) -> usize {
        self.partitions.len()
    }

    pub fn live_worker_count(&self) -> usize {
        self.workers.len()
    }

    /// A partition whose whole range its job record counts as completed is completed, whatever
    /// its record says (returns whether it was not marked so). Two ways lead there: on the lean
    /// write path a completion is stored in the job record only — the key keeps its last status
    /// (`granted`, `revoking`) until compaction purges it; on the baseline path the partition
    /// record is written `completed` before the job record counting it, so the job record can
    /// only be ahead when the partition read is stale — on a cluster, a snapshot's consumer can
    /// read a replica that is still catching up (nats_durability: such partitions were granted
    /// again and their IDs counted twice).
    fn trust_the_job_record(&self, record: &mut PartitionRecord) -> bool {
        use elk_protocol::messages::PartitionStatus;
        let Some(job) = self.jobs.get(&record.job) else {
            return false;
        };
        if record.status != PartitionStatus::Completed
            && gaps::counted_completed(&job.value, record.range)
        {
            let range = record.range;
            tracing::debug!(job = %record.job, partition = %record.id, %range, status = ?record.status, "partition record behind its job record: taken as completed");
            record.status = PartitionStatus::Completed;
            record.owner = None;
            return true;
        }
        false
    }

    /// Sets the clock (Unix ms) events are stamped with until the next round; never goes back.
    pub fn advance_clock(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
    }

    /// One round of decisions at `now_ms`, after the round's events were applied: due retries
    /// become grantable, overdue revokes are reported, partitions are planned (repairs first),
    /// planners are asked, pending partitions granted and over-quota ones revoked, completed ones
    /// compacted, cancelled jobs cleared and finished jobs past their retention removed. Idempotent: a second call with nothing new decides
    /// nothing new.
    pub fn reconcile(&mut self, now_ms: u64) -> RoundOutput {
        self.advance_clock(now_ms);
        self.release_due_retries();
        self.report_overdue_revokes();
        // Remainders re-cut last round first (their shrunk partition is stored now), then
        // this round's re-cuts (their remainders wait for the next round).
        self.cut_split_remainders();
        self.recut_released();
        self.plan_partitions();
        let plan_questions = self.plan_questions();
        self.revoke_drained();
        self.plan_grants();
        self.split_stragglers();
        self.compact();
        self.clear_cancelled();
        self.remove_expired_jobs();
        self.repack_if_grown();
        debug_assert_eq!(self.index_mismatch(), None, "indexes out of step");
        RoundOutput { plan_questions }
    }

    /// Every index agrees with the partitions they index (the invariant `transition` keeps).
    #[cfg(test)]
    pub(super) fn indexes_consistent(&self) -> bool {
        self.index_mismatch().is_none()
    }

    /// What disagrees between the partitions and their indexes, if anything (named, so that a
    /// failed debug assertion in an integration run says where to look). Each partition is looked
    /// up in the index its status puts it in, then every index's size is compared with the
    /// partitions found there, so no index holds an entry more: the same as comparing the sets,
    /// without copying 100,000 keys every round of a debug build.
    pub(super) fn index_mismatch(&self) -> Option<String> {
        use elk_protocol::messages::PartitionStatus;
        let (mut pending, mut delayed, mut revoking, mut granted) = (0, 0, 0, 0);
        for (key, stored) in &self.partitions {
            // The key is the record's only job name and id (`live.rs`): no mismatch to check.
            let record = &stored.value;
            let indexed = match (record.status, record.not_before_unix_ms(), &record.owner) {
                (PartitionStatus::Pending, None, _) => {
                    pending += 1;
                    self.pending.contains(key) && self.pending_since.contains_key(key)
                }
                (PartitionStatus::Pending, Some(due), _) => {
                    delayed += 1;
                    self.delayed.get(key) == Some(&due) && self.pending_since.contains_key(key)
                }
                (PartitionStatus::Granted, _, Some(owner)) => {
                    granted += 1;
                    self.grants_by_worker
                        .get(&owner.id)
                        .is_some_and(|keys| keys.contains(key))
                }
                (PartitionStatus::Granted, _, None) => {
                    return Some(format!("{key:?} is granted without an owner"));
                }
                (PartitionStatus::Revoking, _, _) => {
                    revoking += 1;
                    self.revoking_since.contains_key(key)
                }
                (PartitionStatus::Completed, _, _) => {
                    return Some(format!("{key:?} is completed but not compacted"));
                }
                (PartitionStatus::Failed, _, _) => true,
            };
            if !indexed {
                return Some(format!(
                    "{key:?} ({:?}, not before {:?}, owner {:?}) is missing from its index",
                    record.status,
                    record.not_before_unix_ms(),
                    record.owner
                ));
            }
        }
        let indexed_grants: usize = self.grants_by_worker.values().map(BTreeSet::len).sum();
        let sizes = [
            ("pending", self.pending.len(), pending),
            ("delayed", self.delayed.len(), delayed),
            ("pending_since", self.pending_since.len(), pending + delayed),
            ("revoking_since", self.revoking_since.len(), revoking),
            ("grants_by_worker", indexed_grants, granted),
        ];
        if let Some((index, size, records)) =
            sizes.into_iter().find(|(_, size, records)| size != records)
        {
            return Some(format!("{index} holds {size} keys, the records {records}"));
        }
        self.dirty_partitions
            .iter()
            .find(|key| !self.partitions.contains_key(*key))
            .map(|key| format!("dirty {key:?} is not a partition"))
    }
}
