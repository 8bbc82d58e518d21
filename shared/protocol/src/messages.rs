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

/// How a job's ID space is defined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// The inclusive ID range to process.
    pub range: IdRange,
    /// IDs per partition.
    pub partition_size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Active,
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
    pub partitions_total: u64,
    pub partitions_completed: u64,
    pub ids_completed: u64,
    pub created_unix_ms: u64,
    #[serde(default)]
    pub completed_unix_ms: Option<u64>,
    /// Epoch of the assigner that last wrote this record (fencing of job writes).
    #[serde(default)]
    pub epoch: Epoch,
}
message!(JobRecord, "job");

impl JobRecord {
    /// IDs in the job's range.
    pub fn ids_total(&self) -> u64 {
        self.spec.range.len()
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
    /// Epoch of the assigner that last wrote this record.
    pub epoch: Epoch,
}
message!(PartitionRecord, "partition");

/// One partition granted to a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub job: JobName,
    pub partition: PartitionId,
    pub range: IdRange,
    /// First ID to process (`checkpoint + 1`, or `range.min`).
    pub resume_from: u64,
    pub token: PartitionLeaseToken,
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
    /// The processor failed; `last_done` is the last checkpoint it reached.
    Failed {
        error: String,
        last_done: Option<u64>,
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
}
message!(DesiredWorkers, "desired workers");

/// Milliseconds since the Unix epoch, for human-facing timestamps (never used for ordering).
pub fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}
