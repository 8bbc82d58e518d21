//! Wire messages. Every struct has a `schema` field (see [`crate::SCHEMA_VERSION`]); enums are
//! encoded as snake_case strings, and tagged unions carry a `kind` field, so a worker written in
//! another language reads them as plain maps.

use crate::SCHEMA_VERSION;
use crate::codec::Message;
use elk_types::{
    Capacity, Epoch, Generation, IdRange, Incarnation, JobName, MemberId, PartitionId,
    PartitionLeaseToken, ViewSeq,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

macro_rules! message {
    ($name:ident, $kind:literal) => {
        impl Message for $name {
            const KIND: &'static str = $kind;
            fn schema(&self) -> u16 {
                self.schema
            }
        }
    };
}

fn current_schema() -> u16 {
    SCHEMA_VERSION
}

/// What a member of the namespace is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberRole {
    Worker,
    Election,
    Assigner,
    Scaler,
}

/// Value of `elk_<ns>_members/<member_id>`: written by the member itself, with a per-key TTL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    #[serde(default = "current_schema")]
    pub schema: u16,
    pub role: MemberRole,
    pub incarnation: Incarnation,
    /// Concurrent partitions this member runs (workers only; 0 for services).
    pub capacity: Capacity,
    /// Jobs this worker processes; empty means every job.
    #[serde(default)]
    pub jobs: Vec<JobName>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Software version of the member, for operators.
    #[serde(default)]
    pub version: String,
}
message!(MemberRecord, "member");

/// Value of `elk_<ns>_leases/election`: the active election replica (per-key TTL, CAS-renewed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElectionLease {
    #[serde(default = "current_schema")]
    pub schema: u16,
    pub holder: MemberId,
    pub incarnation: Incarnation,
}
message!(ElectionLease, "election lease");

/// One member as listed in the membership view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewMember {
    pub id: MemberId,
    pub role: MemberRole,
    pub incarnation: Incarnation,
    pub capacity: Capacity,
    #[serde(default)]
    pub jobs: Vec<JobName>,
}

/// Value of `elk_<ns>_leases/view`: the live members, totally ordered by `generation`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipView {
    #[serde(default = "current_schema")]
    pub schema: u16,
    /// Incremented on every join, leave or expiry; never decreases, across election failovers.
    pub generation: Generation,
    /// Members sorted by id.
    pub members: Vec<ViewMember>,
}
message!(MembershipView, "membership view");

impl MembershipView {
    pub fn member(&self, id: &MemberId) -> Option<&ViewMember> {
        self.members
            .binary_search_by(|m| m.id.cmp(id))
            .ok()
            .map(|index| &self.members[index])
    }

    pub fn workers(&self) -> impl Iterator<Item = &ViewMember> {
        self.members.iter().filter(|m| m.role == MemberRole::Worker)
    }
}

/// The member holding a role or a partition, pinned to one incarnation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MemberRef {
    pub id: MemberId,
    pub incarnation: Incarnation,
}

/// Value of `elk_<ns>_leases/role.<role>`: who leads a control-plane role, under which epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleLease {
    #[serde(default = "current_schema")]
    pub schema: u16,
    /// `None` while no live member can take the role.
    pub holder: Option<MemberRef>,
    /// Fencing token: incremented on every change of holder; never decreases.
    pub epoch: Epoch,
    /// View generation at which this holder was designated.
    pub generation: Generation,
}
message!(RoleLease, "role lease");

/// Default retry budget of a partition (attempts, including the first).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Default delay before the first retry; doubled on every further failure (capped at 5 minutes).
pub const DEFAULT_RETRY_BACKOFF_MS: u64 = 1_000;
/// Default backlog of an open-ended job, in partitions per unit of live worker capacity.
pub const DEFAULT_LOOKAHEAD: u32 = 4;

fn default_max_attempts() -> u32 {
    DEFAULT_MAX_ATTEMPTS
}

fn default_retry_backoff_ms() -> u64 {
    DEFAULT_RETRY_BACKOFF_MS
}

fn default_lookahead() -> u32 {
    DEFAULT_LOOKAHEAD
}

/// How a job's ID space is defined and processed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// The inclusive ID range. For an open-ended job `range.min` is the first ID and `range.max`
    /// only a bound: how far data really goes is asked from the job's planner.
    pub range: IdRange,
    /// IDs per partition.
    pub partition_size: u64,
    /// The ID space grows: the assigner asks a planner (`elk.<ns>.plan.<job>`) for the max ID.
    #[serde(default)]
    pub open_ended: bool,
    /// Attempts of a partition before it is parked as `failed` (including the first).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Delay before the first retry of a failed partition; doubles with every attempt.
    #[serde(default = "default_retry_backoff_ms")]
    pub retry_backoff_ms: u64,
    /// Open-ended jobs: pending backlog kept near `live worker capacity × lookahead` partitions.
    #[serde(default = "default_lookahead")]
    pub lookahead: u32,
}

impl JobSpec {
    /// A fixed-range job with default retry settings.
    pub fn fixed(range: IdRange, partition_size: u64) -> Self {
        Self {
            range,
            partition_size,
            open_ended: false,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            retry_backoff_ms: DEFAULT_RETRY_BACKOFF_MS,
            lookahead: DEFAULT_LOOKAHEAD,
        }
    }

    /// An open-ended job starting at `first`, bounded by `u64::MAX - 1`.
    pub fn open_ended(first: u64, partition_size: u64) -> Self {
        let range = IdRange::new(first, (u64::MAX - 1).max(first)).expect("ordered");
        Self {
            open_ended: true,
            ..Self::fixed(range, partition_size)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Partitions are planned and granted.
    Active,
    /// Nothing of the job is granted; granted partitions were revoked (resume continues them).
    Paused,
    /// Terminal: nothing more is planned or granted.
    Cancelled,
    /// Terminal: every ID of the range (fixed jobs) is processed.
    Completed,
}

/// Value of `elk_<ns>_jobs/<job>`: written by the assigner only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    #[serde(default = "current_schema")]
    pub schema: u16,
    pub name: JobName,
    pub spec: JobSpec,
    pub state: JobState,
    /// Next ID not yet covered by a partition (the planning cursor).
    pub cursor: u64,
    /// Id the next created partition gets.
    pub next_partition: PartitionId,
    /// Partitions that exist (compacted ones included).
    pub partitions_total: u64,
    pub partitions_completed: u64,
    /// Partitions parked as `failed` after `max_attempts`.
    #[serde(default)]
    pub partitions_failed: u64,
    /// Completed partitions deleted from the partitions bucket (covered by the low watermark).
    #[serde(default)]
    pub partitions_compacted: u64,
    pub ids_completed: u64,
    pub created_unix_ms: u64,
    #[serde(default)]
    pub completed_unix_ms: Option<u64>,
    /// When the job was cancelled. A finished (completed or cancelled) job is removed, with its
    /// partition keys, once the assigner's `finished_job_retention` has passed since then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled_unix_ms: Option<u64>,
    /// Epoch of the assigner that last wrote this record (fencing of job writes).
    #[serde(default)]
    pub epoch: Epoch,
    /// Open-ended jobs: the highest ID the planner reported so far.
    #[serde(default)]
    pub known_max: Option<u64>,
    /// Every ID from `spec.range.min` to this one is processed (compacted partitions live here).
    #[serde(default)]
    pub low_watermark: Option<u64>,
    /// Completed ranges above the low watermark (merged).
    #[serde(default)]
    pub completed_above_watermark: Vec<IdRange>,
    /// W3C `traceparent` of the span that created the job (the assigner's handling of
    /// `create_job`), when that span was sampled: every partition's trace links to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}
message!(JobRecord, "job");

impl JobRecord {
    /// A new, active job with nothing planned yet.
    pub fn new(name: JobName, spec: JobSpec, epoch: Epoch, created_unix_ms: u64) -> Self {
        Self {
            schema: SCHEMA_VERSION,
            name,
            cursor: spec.range.first(),
            spec,
            state: JobState::Active,
            next_partition: PartitionId(1),
            partitions_total: 0,
            partitions_completed: 0,
            partitions_failed: 0,
            partitions_compacted: 0,
            ids_completed: 0,
            created_unix_ms,
            completed_unix_ms: None,
            cancelled_unix_ms: None,
            epoch,
            known_max: None,
            low_watermark: None,
            completed_above_watermark: Vec::new(),
            traceparent: None,
        }
    }

    /// IDs in the job's range; for an open-ended job, up to the planner's latest max ID.
    pub fn ids_total(&self) -> u64 {
        let first = self.spec.range.first();
        match self.planning_limit() {
            Some(last) if last >= first => last - first + 1,
            _ => 0,
        }
    }

    /// The last ID partitions may be created up to now (`None`: nothing known yet).
    pub fn planning_limit(&self) -> Option<u64> {
        if self.spec.open_ended {
            self.known_max.map(|max| max.min(self.spec.range.last()))
        } else {
            Some(self.spec.range.last())
        }
    }

    /// Whether the job is over (completed or cancelled).
    pub fn is_terminal(&self) -> bool {
        matches!(self.state, JobState::Completed | JobState::Cancelled)
    }

    /// When the job ended: its completion or cancellation time (`None` while it runs, or for a
    /// cancelled record written before `cancelled_unix_ms` existed).
    pub fn ended_unix_ms(&self) -> Option<u64> {
        match self.state {
            JobState::Completed => self.completed_unix_ms,
            JobState::Cancelled => self.cancelled_unix_ms,
            JobState::Active | JobState::Paused => None,
        }
    }

    /// Whether `id` is known processed from the coverage summary (compacted partitions included).
    pub fn id_completed(&self, id: u64) -> bool {
        let first = self.spec.range.first();
        if id >= first && self.low_watermark.is_some_and(|low| id <= low) {
            return true;
        }
        self.completed_above_watermark
            .iter()
            .any(|range| range.contains(id))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartitionStatus {
    /// Waiting for a grant.
    Pending,
    /// Granted to `owner` under `token`.
    Granted,
    /// Taken away from `owner`; waiting for its release (or its member key's expiry).
    Revoking,
    Completed,
    Failed,
}

/// Value of `elk_<ns>_partitions/<job>.<partition_id>`: written by the assigner only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRecord {
    #[serde(default = "current_schema")]
    pub schema: u16,
    pub job: JobName,
    pub id: PartitionId,
    pub range: IdRange,
    pub status: PartitionStatus,
    pub owner: Option<MemberRef>,
    /// Token of the current (or last) grant; progress with another token is rejected.
    pub token: PartitionLeaseToken,
    /// Last ID durably reported done.
    pub checkpoint: Option<u64>,
    pub attempts: u32,
    pub error: Option<String>,
    /// A failed partition waiting for its retry is not granted before this time.
    #[serde(default)]
    pub not_before_unix_ms: Option<u64>,
    /// Epoch of the assigner that last wrote this record.
    pub epoch: Epoch,
    /// W3C `traceparent` of the partition's trace root (its cut), set when the assigner traces:
    /// every later span of the partition's life belongs to this trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// W3C `traceparent` of the partition's latest step: while `granted`/`revoking` the current
    /// grant's span (copied into the worker's [`Grant`]); afterwards the span that ended the
    /// ownership (the owner's `released`/`failed` report, or the grant of a reclaimed owner),
    /// which the next grant links to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_traceparent: Option<String>,
    /// The partition's trace root was decided **not sampled** (then both `traceparent`s are
    /// absent): its grants say so with [`Grant::unsampled`], and a new leader keeps the decision.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unsampled: bool,
    /// Holders that died holding this partition (their member key expired with no report from
    /// them), oldest first, since the partition last made progress: a death after which the
    /// checkpoint moved on starts the list anew. Cleared by `retry`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holder_deaths: Vec<HolderDeath>,
    /// Parked (`failed`) because `holder_deaths` reached the assigner's
    /// `quarantine_after_deaths`: processing it seems to kill its worker. Cleared by `retry`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub quarantined: bool,
}
message!(PartitionRecord, "partition");

/// A holder of a partition that died holding it (protocol §6.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderDeath {
    pub member: MemberRef,
    /// When the assigner took the partition back from it (Unix ms).
    pub at_unix_ms: u64,
    /// The partition's checkpoint then (the last ID reported done before the death).
    pub checkpoint: Option<u64>,
}

impl PartitionRecord {
    /// A newly created partition, waiting for its first grant.
    pub fn pending(job: JobName, id: PartitionId, range: IdRange, epoch: Epoch) -> Self {
        Self {
            schema: SCHEMA_VERSION,
            job,
            id,
            range,
            status: PartitionStatus::Pending,
            owner: None,
            token: PartitionLeaseToken(0),
            checkpoint: None,
            attempts: 0,
            error: None,
            not_before_unix_ms: None,
            epoch,
            traceparent: None,
            grant_traceparent: None,
            unsampled: false,
            holder_deaths: Vec::new(),
            quarantined: false,
        }
    }
}

/// One partition granted to a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub job: JobName,
    pub partition: PartitionId,
    pub range: IdRange,
    /// First ID to process (`checkpoint + 1`, or `range.min`).
    pub resume_from: u64,
    pub token: PartitionLeaseToken,
    /// W3C `traceparent` of the assigner's grant span when the coordinator traces: the worker's
    /// processing span is its child (its sampled flag carries the sampling decision). Absent
    /// otherwise. A KV watch delivers no headers, so the context travels in the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The coordinator traces and this partition's trace is **not sampled** (then there is no
    /// `traceparent`): the worker must not start a trace of its own for it. One flag instead of
    /// a 55-byte context that would only say "not sampled" (docs/decisions/unsampled-flag.md).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unsampled: bool,
}

/// Value of `elk_<ns>_assignments/<worker_id>`: the complete set of partitions the worker may
/// run. A partition absent from the latest record is revoked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignmentRecord {
    #[serde(default = "current_schema")]
    pub schema: u16,
    /// The incarnation of the worker this record is meant for; other incarnations ignore it.
    pub incarnation: Incarnation,
    /// Epoch of the assigner that wrote it; workers ignore records older than the newest seen.
    pub epoch: Epoch,
    /// Increases with every write of this worker's record.
    pub seq: ViewSeq,
    pub grants: Vec<Grant>,
    /// The worker should finish nothing new and release everything (scale-in).
    #[serde(default)]
    pub drain: bool,
    /// Partitions revoked from this worker whose `released` the assigner still waits for, with
    /// their current token. A worker that does not hold one (it never saw that grant: a record
    /// it missed, or a token a new leader changed before writing it) releases it at once, so no
    /// revoke waits for an answer that can never come.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoking: Vec<Grant>,
    /// The assigner that wrote this record accepts [`ProgressBatch`] messages: the worker may
    /// send several reports in one message. Absent (`false`) from an assigner that does not, or
    /// that is configured not to (the `baseline` write path): then only single reports.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub progress_batches: bool,
}
message!(AssignmentRecord, "assignment");

/// What happened to a partition on a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ProgressEvent {
    /// Every ID up to and including `last_done` is processed.
    Checkpoint { last_done: u64 },
    /// The whole range is processed.
    Completed,
    /// The processor failed; `last_done` is the last checkpoint it reached. `permanent`: retrying
    /// cannot help (poison data), so the partition is parked at once instead of retried.
    Failed {
        error: String,
        last_done: Option<u64>,
        #[serde(default)]
        permanent: bool,
    },
    /// The worker stopped processing after a revoke (or on shutdown) and gives the partition back.
    Released { last_done: Option<u64> },
}

/// Published by a worker on `elk.<ns>.progress.<worker_id>` (JetStream, acked).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgressReport {
    #[serde(default = "current_schema")]
    pub schema: u16,
    pub worker: MemberId,
    pub incarnation: Incarnation,
    pub job: JobName,
    pub partition: PartitionId,
    pub token: PartitionLeaseToken,
    pub event: ProgressEvent,
}
message!(ProgressReport, "progress");

/// Several progress reports in one message, published like a [`ProgressReport`] on the worker's
/// subject: each report is applied in order as if it had been published alone. A worker sends
/// one only after an assignment record with `progress_batches` (an older assigner would drop it
/// as undecodable). What tells it from a single report is its `reports` key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgressBatch {
    #[serde(default = "current_schema")]
    pub schema: u16,
    pub reports: Vec<ProgressReport>,
}
message!(ProgressBatch, "progress batch");

/// The reports of one message on a progress subject, in order: a [`ProgressBatch`] (a map with
/// a `reports` key; each report's own `schema` is checked too) or one [`ProgressReport`].
pub fn decode_progress(bytes: &[u8]) -> Result<Vec<ProgressReport>, crate::DecodeError> {
    match crate::decode::<ProgressBatch>(bytes) {
        Ok(batch) => {
            for report in &batch.reports {
                if report.schema == 0 || report.schema > SCHEMA_VERSION {
                    return Err(crate::DecodeError::UnsupportedSchema {
                        kind: ProgressReport::KIND,
                        found: report.schema,
                        supported: SCHEMA_VERSION,
                    });
                }
            }
            Ok(batch.reports)
        }
        Err(batch_error) => match crate::decode::<ProgressReport>(bytes) {
            Ok(report) => Ok(vec![report]),
            // A map with a `reports` key was meant as a batch: its error says what is wrong.
            Err(_) if has_reports_key(bytes) => Err(batch_error),
            Err(single_error) => Err(single_error),
        },
    }
}

/// Whether `bytes` is a map with a `reports` key (whatever its value).
fn has_reports_key(bytes: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(default)]
        reports: Option<serde::de::IgnoredAny>,
    }
    let mut deserializer = rmp_serde::Deserializer::from_read_ref(bytes);
    deserializer.set_max_depth(crate::codec::MAX_NESTING);
    Probe::deserialize(&mut deserializer).is_ok_and(|probe| probe.reports.is_some())
}

/// Value of `elk_<ns>_fleet/desired`: the scaler's desired worker count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredWorkers {
    #[serde(default = "current_schema")]
    pub schema: u16,
    /// Epoch of the scaler that computed it.
    pub epoch: Epoch,
    pub desired: u32,
    pub live_workers: u32,
    pub backlog_ids: u64,
    pub backlog_partitions: u64,
    pub computed_unix_ms: u64,
    /// Workers an actuator should run now: `desired` plus those still draining before their
    /// removal (0 in records of older scalers: read `desired`).
    #[serde(default)]
    pub replicas: u32,
    /// Workers the scaler asked to drain for a scale-in that still hold partitions.
    #[serde(default)]
    pub draining: Vec<MemberId>,
    /// Drained workers (nothing held, nothing granted): remove exactly these first.
    #[serde(default)]
    pub retire: Vec<MemberId>,
    /// The measured throughput of one busy worker (IDs per second, smoothed) the count was
    /// computed from; `None` before the first measurement.
    #[serde(default)]
    pub worker_ids_per_second: Option<u64>,
}
message!(DesiredWorkers, "desired workers");

/// Who asked a worker to drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DrainSource {
    /// An operator (`elkctl drain`, the HTTP API).
    Operator,
    /// The scaler, before removing the worker in a scale-in.
    Scaler,
}

/// One requested drain: the worker incarnation gets nothing new and its partitions are revoked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainRequest {
    pub worker: MemberRef,
    pub source: DrainSource,
    pub since_unix_ms: u64,
}

/// Placement frozen by an operator: no rebalancing moves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Freeze {
    #[serde(default)]
    pub reason: Option<String>,
    pub since_unix_ms: u64,
}

/// Value of `elk_<ns>_fleet/placement`: the placement levers, written by the assigner leader
/// (CAS, stamped with its epoch) so they survive a leader change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementControl {
    #[serde(default = "current_schema")]
    pub schema: u16,
    /// Epoch of the assigner that wrote it.
    #[serde(default)]
    pub epoch: Epoch,
    /// `Some` while placement is frozen.
    #[serde(default)]
    pub frozen: Option<Freeze>,
    /// Live worker incarnations asked to drain, sorted by worker id.
    #[serde(default)]
    pub drains: Vec<DrainRequest>,
}
message!(PlacementControl, "placement control");

/// Milliseconds since the Unix epoch, for human-facing timestamps (never used for ordering).
pub fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}
