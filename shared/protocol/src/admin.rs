//! Admin request/reply, served by the active assigner on `elk.<ns>.admin.assigner.<verb>`
//! (one verb per [`AdminRequest`] variant, see [`AdminRequest::verb`]), and the planner
//! request/reply on `elk.<ns>.plan.<job>`.
//!
//! Every reply is an [`AdminReply`]: either `result` or a human-readable `error`.

use crate::SCHEMA_VERSION;
use crate::codec::Message;
use crate::messages::{JobRecord, JobSpec, PartitionRecord, PartitionStatus};
use elk_types::{Epoch, JobName, PartitionId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

fn current_schema() -> u16 {
    SCHEMA_VERSION
}

/// Service name of the assigner in admin subjects.
pub const ASSIGNER_SERVICE: &str = "assigner";
/// Largest page `list_partitions` returns.
pub const MAX_PAGE: u32 = 1_000;

/// What an operator asks the assigner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verb", rename_all = "snake_case")]
pub enum AdminCommand {
    /// Create a job (fixed range or open-ended).
    CreateJob {
        name: JobName,
        spec: JobSpec,
    },
    ListJobs,
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
}

impl AdminCommand {
    /// The subject verb of this command.
    pub fn verb(&self) -> &'static str {
        match self {
            AdminCommand::CreateJob { .. } => "create_job",
            AdminCommand::ListJobs => "list_jobs",
            AdminCommand::GetJob { .. } => "get_job",
            AdminCommand::PauseJob { .. } => "pause_job",
            AdminCommand::ResumeJob { .. } => "resume_job",
            AdminCommand::CancelJob { .. } => "cancel_job",
            AdminCommand::ListPartitions { .. } => "list_partitions",
            AdminCommand::Retry { .. } => "retry",
            AdminCommand::IdStatus { .. } => "id_status",
            AdminCommand::Stats => "stats",
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
    /// In this live partition.
    InPartition { partition: PartitionRecord },
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

/// The successful result of a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AdminResult {
    Job {
        job: JobRecord,
    },
    Jobs {
        jobs: Vec<JobRecord>,
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
}

/// Reply to an admin request: the result, or an error message for the operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminReply {
    #[serde(default = "current_schema")]
    pub schema: u16,
    pub result: Option<AdminResult>,
    pub error: Option<String>,
}

impl AdminReply {
    pub fn ok(result: AdminResult) -> Self {
        Self {
            schema: SCHEMA_VERSION,
            result: Some(result),
            error: None,
        }
    }

    pub fn error(message: impl Into<String>) -> Self {
        Self {
            schema: SCHEMA_VERSION,
            result: None,
            error: Some(message.into()),
        }
    }
}

impl Message for AdminReply {
    const KIND: &'static str = "admin reply";
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
