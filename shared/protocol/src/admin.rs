//! Admin request/reply messages, served on `elk.<ns>.admin.<service>.<verb>`.

use crate::SCHEMA_VERSION;
use crate::codec::Message;
use crate::messages::JobRecord;
use elk_types::{IdRange, JobName};
use serde::{Deserialize, Serialize};

fn current_schema() -> u16 {
    SCHEMA_VERSION
}

/// Service name of the assigner in admin subjects.
pub const ASSIGNER_SERVICE: &str = "assigner";
/// Verb: create a job (`CreateJobRequest` → `AdminReply`).
pub const CREATE_JOB_VERB: &str = "create_job";

/// Asks the active assigner to create a job over a fixed ID range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateJobRequest {
    #[serde(default = "current_schema")]
    pub schema: u16,
    pub name: JobName,
    pub range: IdRange,
    pub partition_size: u64,
}

impl Message for CreateJobRequest {
    const KIND: &'static str = "create job request";
    fn schema(&self) -> u16 {
        self.schema
    }
}

/// Reply to an admin request: the resulting job, or an error message for the operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminReply {
    #[serde(default = "current_schema")]
    pub schema: u16,
    pub job: Option<JobRecord>,
    pub error: Option<String>,
}

impl Message for AdminReply {
    const KIND: &'static str = "admin reply";
    fn schema(&self) -> u16 {
        self.schema
    }
}
