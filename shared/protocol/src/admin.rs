//! Admin request/reply, served by the active assigner on `elk.<ns>.admin.assigner.<verb>`
//! (one verb per [`AdminRequest`] variant, see [`AdminRequest::verb`]), and the planner
//! request/reply on `elk.<ns>.plan.<job>`.
//!
//! Every reply is an [`AdminReply`]: either `result` or an [`AdminError`] carrying a machine-readable
//! [`AdminErrorCode`] and a message for the operator. Admin replies are at schema
//! [`ADMIN_REPLY_SCHEMA`] (2): schema 1 carried the error as a bare string, which is still
//! accepted on decode (its code is then [`AdminErrorCode::Internal`]).

use crate::SCHEMA_VERSION;
use crate::codec::Message;
use crate::messages::{
    DrainSource, JobRecord, JobSpec, MemberRef, MemberRole, PartitionRecord, PartitionStatus,
    PlacementControl,
};
use crate::names::ControlRole;
use elk_types::{Capacity, Epoch, Incarnation, JobName, MemberId, PartitionId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

fn current_schema() -> u16 {
    SCHEMA_VERSION
}

/// Service name of the assigner in admin subjects.
pub const ASSIGNER_SERVICE: &str = "assigner";
/// Service name of the election in admin subjects (served by the active election replica).
pub const ELECTION_SERVICE: &str = "election";
/// Largest page `list_jobs` and `list_partitions` return (a page is also cut short before its
/// reply would exceed the server's maximum payload).
pub const MAX_PAGE: u32 = 1_000;
/// Page size of `list_jobs` and `list_partitions` when the request names none.
pub const DEFAULT_PAGE: u32 = 100;

/// What an operator asks the assigner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verb", rename_all = "snake_case")]
pub enum AdminCommand {
    /// Create a job (fixed range or open-ended).
    CreateJob {
        name: JobName,
        spec: JobSpec,
    },
    /// One page of jobs in name order (at most `limit`, default 100, at most [`MAX_PAGE`], and
    /// never more than fits in one NATS message); `after` continues after the previous page's
    /// `next_after`.
    ListJobs {
        #[serde(default)]
        after: Option<JobName>,
        #[serde(default)]
        limit: Option<u32>,
    },
    GetJob {
        name: JobName,
    },
    /// Stop granting the job's partitions and revoke the granted ones.
    PauseJob {
        name: JobName,
    },
    ResumeJob {
        name: JobName,
    },
    /// Terminal: revoke everything, plan nothing more.
    CancelJob {
        name: JobName,
    },
    /// Live (not yet compacted) partitions, ordered by (job, id); `after` continues a page.
    ListPartitions {
        #[serde(default)]
        job: Option<JobName>,
        /// Empty: every status.
        #[serde(default)]
        statuses: Vec<PartitionStatus>,
        #[serde(default)]
        after: Option<(JobName, PartitionId)>,
        #[serde(default)]
        limit: Option<u32>,
    },
    /// Re-queue failed partitions: all, one job's, or one partition.
    Retry {
        #[serde(default)]
        job: Option<JobName>,
        #[serde(default)]
        partition: Option<PartitionId>,
    },
    /// Where one ID stands: in a live partition, completed (possibly compacted), or not planned.
    IdStatus {
        job: JobName,
        id: u64,
    },
    Stats,
    /// Every live member (workers with their grants, load, drain state and progress; the
    /// control-plane replicas) and whether placement is frozen.
    Members,
    /// Stop granting to `worker` (its live incarnation) and revoke its partitions, which it
    /// releases with their checkpoints; it stays a member until removed.
    Drain {
        worker: MemberId,
        /// Who asks (default `operator`); the scaler undrains only its own drains.
        #[serde(default = "operator")]
        source: DrainSource,
    },
    /// Let a drained worker take grants again.
    Undrain {
        worker: MemberId,
    },
    /// No rebalancing moves until `unfreeze` (pending partitions are still granted, and dead
    /// workers' partitions still reclaimed).
    Freeze {
        #[serde(default)]
        reason: Option<String>,
    },
    Unfreeze,
    /// Served by the active election replica: hand `role` to `to` (or to the next live member
    /// of that role) under a new epoch.
    Transfer {
        role: ControlRole,
        #[serde(default)]
        to: Option<MemberId>,
    },
}

fn operator() -> DrainSource {
    DrainSource::Operator
}

/// The verbs that change nothing: what a read-only identity (NATS observer role, HTTP read-only
/// token) may send.
pub const READ_ONLY_VERBS: [&str; 5] = [
    "list_jobs",
    "get_job",
    "list_partitions",
    "id_status",
    "stats",
];

impl AdminCommand {
    /// Whether the command only reads (its verb is one of [`READ_ONLY_VERBS`]).
    pub fn is_read_only(&self) -> bool {
        READ_ONLY_VERBS.contains(&self.verb())
    }

    /// The service that serves this command ([`ASSIGNER_SERVICE`] or [`ELECTION_SERVICE`]).
    pub fn service(&self) -> &'static str {
        match self {
            AdminCommand::Transfer { .. } => ELECTION_SERVICE,
            _ => ASSIGNER_SERVICE,
        }
    }

    /// The subject verb of this command.
    pub fn verb(&self) -> &'static str {
        match self {
            AdminCommand::CreateJob { .. } => "create_job",
            AdminCommand::ListJobs { .. } => "list_jobs",
            AdminCommand::GetJob { .. } => "get_job",
            AdminCommand::PauseJob { .. } => "pause_job",
            AdminCommand::ResumeJob { .. } => "resume_job",
            AdminCommand::CancelJob { .. } => "cancel_job",
            AdminCommand::ListPartitions { .. } => "list_partitions",
            AdminCommand::Retry { .. } => "retry",
            AdminCommand::IdStatus { .. } => "id_status",
            AdminCommand::Stats => "stats",
            AdminCommand::Members => "members",
            AdminCommand::Drain { .. } => "drain",
            AdminCommand::Undrain { .. } => "undrain",
            AdminCommand::Freeze { .. } => "freeze",
            AdminCommand::Unfreeze => "unfreeze",
            AdminCommand::Transfer { .. } => "transfer",
        }
    }
}

/// Request envelope: `{"schema": 1, "command": {"verb": "...", ...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminRequest {
    #[serde(default = "current_schema")]
    pub schema: u16,
    pub command: AdminCommand,
}

impl AdminRequest {
    pub fn new(command: AdminCommand) -> Self {
        Self {
            schema: SCHEMA_VERSION,
            command,
        }
    }
}

impl Message for AdminRequest {
    const KIND: &'static str = "admin request";
    fn schema(&self) -> u16 {
        self.schema
    }
}

/// Where one ID of a job stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum IdState {
    /// In this live partition (boxed: far larger than the other variants; same encoding).
    InPartition { partition: Box<PartitionRecord> },
    /// Processed; its partition may have been compacted away.
    Completed,
    /// No partition covers it yet.
    NotPlanned,
}

/// Counters of the active assigner.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminStats {
    pub epoch: Epoch,
    pub jobs: u64,
    pub live_workers: u64,
    /// Live partitions by status (`pending`, `granted`, ...).
    pub partitions: BTreeMap<String, u64>,
    pub progress_applied: u64,
    pub progress_rejected: u64,
    pub progress_malformed: u64,
    pub gaps_detected: u64,
    pub gaps_repaired: u64,
    pub overlaps_detected: u64,
    pub revocations: u64,
    /// Revokes not answered within the revoke timeout (still waiting for release or expiry).
    #[serde(default)]
    pub revokes_overdue: u64,
    pub retries_scheduled: u64,
    pub partitions_compacted: u64,
}

/// Where a member stands, as the assigner leader sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberState {
    /// A worker that takes grants.
    Active,
    /// A worker asked to drain that still holds (or is handing back) partitions.
    Draining,
    /// A worker asked to drain that holds nothing: safe to remove.
    Drained,
    /// A worker shutting down on its own (it released work unasked): gets nothing new.
    Leaving,
    /// A control-plane replica (election, assigner, scaler).
    Service,
}

/// One live member in the `members` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub id: MemberId,
    pub role: MemberRole,
    pub incarnation: Incarnation,
    pub capacity: Capacity,
    /// Jobs a worker processes (empty: every job).
    #[serde(default)]
    pub jobs: Vec<JobName>,
    /// Partitions granted to it (running or queued on the worker).
    pub granted: u32,
    /// Partitions revoked from it and not yet released.
    pub revoking: u32,
    pub state: MemberState,
    /// Who asked it to drain, while a drain is requested.
    #[serde(default)]
    pub drain: Option<DrainSource>,
    /// IDs this worker moved forward (applied checkpoints and completions) during the current
    /// leader term: the scaler measures throughput from its growth.
    pub ids_progressed: u64,
}

/// The result of a leadership transfer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transferred {
    pub role: ControlRole,
    /// Who held it before (`None`: nobody).
    pub previous: Option<MemberRef>,
    pub holder: MemberRef,
    pub epoch: Epoch,
}

/// The successful result of a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AdminResult {
    Job {
        job: JobRecord,
    },
    Jobs {
        jobs: Vec<JobRecord>,
        /// Pass as `after` for the next page; `None` on the last page.
        #[serde(default)]
        next_after: Option<JobName>,
    },
    Partitions {
        partitions: Vec<PartitionRecord>,
        /// Pass as `after` for the next page; `None` on the last page.
        next_after: Option<(JobName, PartitionId)>,
    },
    Retried {
        count: u64,
    },
    IdStatus {
        id: u64,
        status: IdState,
    },
    Stats {
        stats: AdminStats,
    },
    Members {
        /// The leader's epoch (the scale of `ids_progressed`: it restarts with every term).
        epoch: Epoch,
        /// When the leader answered (Unix ms, its clock).
        now_unix_ms: u64,
        frozen: bool,
        members: Vec<MemberStatus>,
    },
    Member {
        member: MemberStatus,
    },
    Placement {
        placement: PlacementControl,
    },
    Transferred {
        transfer: Transferred,
    },
}

impl AdminResult {
    /// The `kind` tag of this result.
    pub fn kind(&self) -> &'static str {
        match self {
            AdminResult::Job { .. } => "job",
            AdminResult::Jobs { .. } => "jobs",
            AdminResult::Partitions { .. } => "partitions",
            AdminResult::Retried { .. } => "retried",
            AdminResult::IdStatus { .. } => "id_status",
            AdminResult::Stats { .. } => "stats",
            AdminResult::Members { .. } => "members",
            AdminResult::Member { .. } => "member",
            AdminResult::Placement { .. } => "placement",
            AdminResult::Transferred { .. } => "transferred",
        }
    }
}

/// Schema version of [`AdminReply`]: 2 since errors carry an [`AdminErrorCode`].
pub const ADMIN_REPLY_SCHEMA: u16 = 2;

/// Why an admin request was refused, in a form a client can act on without reading the text.
/// HTTP maps each code to a status (see [`AdminErrorCode::http_status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminErrorCode {
    /// The request could not be decoded or names something malformed.
    BadRequest,
    /// A job specification is invalid (empty range, zero partition size, ...).
    InvalidSpec,
    /// No job of that name exists.
    UnknownJob,
    /// No live partition of that id exists.
    UnknownPartition,
    /// No live member of that id (and kind) exists.
    UnknownMember,
    /// Something of that name exists already.
    AlreadyExists,
    /// The command conflicts with the current state (e.g. resuming a cancelled job).
    InvalidState,
    /// The request would exceed a configured limit (jobs, partitions, page size, ...).
    LimitExceeded,
    /// The request was understood but could not be carried out now (storage unavailable,
    /// leadership changing); retrying later may succeed.
    Unavailable,
    /// The caller is not allowed to do this.
    Forbidden,
    /// Anything else.
    Internal,
}

impl AdminErrorCode {
    /// The HTTP status a gateway answers this refusal with.
    pub const fn http_status(self) -> u16 {
        match self {
            AdminErrorCode::BadRequest => 400,
            AdminErrorCode::Forbidden => 403,
            AdminErrorCode::UnknownJob
            | AdminErrorCode::UnknownPartition
            | AdminErrorCode::UnknownMember => 404,
            AdminErrorCode::AlreadyExists | AdminErrorCode::InvalidState => 409,
            AdminErrorCode::InvalidSpec => 422,
            AdminErrorCode::LimitExceeded => 429,
            AdminErrorCode::Unavailable => 503,
            AdminErrorCode::Internal => 500,
        }
    }

    /// Whether the same request may succeed later without any change.
    pub const fn is_retryable(self) -> bool {
        matches!(self, AdminErrorCode::Unavailable)
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            AdminErrorCode::BadRequest => "bad_request",
            AdminErrorCode::InvalidSpec => "invalid_spec",
            AdminErrorCode::UnknownJob => "unknown_job",
            AdminErrorCode::UnknownPartition => "unknown_partition",
            AdminErrorCode::UnknownMember => "unknown_member",
            AdminErrorCode::AlreadyExists => "already_exists",
            AdminErrorCode::InvalidState => "invalid_state",
            AdminErrorCode::LimitExceeded => "limit_exceeded",
            AdminErrorCode::Unavailable => "unavailable",
            AdminErrorCode::Forbidden => "forbidden",
            AdminErrorCode::Internal => "internal",
        }
    }
}

impl std::fmt::Display for AdminErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused admin request: a code for programs, a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{message} ({code})")]
pub struct AdminError {
    pub code: AdminErrorCode,
    pub message: String,
}

impl AdminError {
    pub fn new(code: AdminErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Schema 1 sent the error as a bare string; schema 2 sends `{code, message}`.
impl<'de> Deserialize<'de> for AdminError {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Wire {
            Coded {
                code: AdminErrorCode,
                message: String,
            },
            Legacy(String),
        }
        Ok(match Wire::deserialize(deserializer)? {
            Wire::Coded { code, message } => AdminError { code, message },
            Wire::Legacy(message) => AdminError {
                code: AdminErrorCode::Internal,
                message,
            },
        })
    }
}

/// Reply to an admin request: the result, or a coded error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminReply {
    #[serde(default = "current_schema")]
    pub schema: u16,
    pub result: Option<AdminResult>,
    pub error: Option<AdminError>,
}

impl AdminReply {
    pub fn ok(result: AdminResult) -> Self {
        Self {
            schema: ADMIN_REPLY_SCHEMA,
            result: Some(result),
            error: None,
        }
    }

    pub fn error(code: AdminErrorCode, message: impl Into<String>) -> Self {
        Self::refused(AdminError::new(code, message))
    }

    pub fn refused(error: AdminError) -> Self {
        Self {
            schema: ADMIN_REPLY_SCHEMA,
            result: None,
            error: Some(error),
        }
    }
}

impl Message for AdminReply {
    const KIND: &'static str = "admin reply";
    const MAX_SCHEMA: u16 = ADMIN_REPLY_SCHEMA;
    fn schema(&self) -> u16 {
        self.schema
    }
}

/// The assigner asks a job's planner how far the job's data goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanRequest {
    #[serde(default = "current_schema")]
    pub schema: u16,
    pub job: JobName,
    /// First ID not yet covered by a partition.
    pub cursor: u64,
    /// How many IDs the assigner would like to plan now (a hint).
    pub wanted: u64,
}

impl Message for PlanRequest {
    const KIND: &'static str = "plan request";
    fn schema(&self) -> u16 {
        self.schema
    }
}

/// The planner's answer: the highest ID that exists now (`None`: nothing yet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanReply {
    #[serde(default = "current_schema")]
    pub schema: u16,
    pub max_id: Option<u64>,
}

impl Message for PlanReply {
    const KIND: &'static str = "plan reply";
    fn schema(&self) -> u16 {
        self.schema
    }
}
