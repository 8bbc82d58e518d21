//! Why the model refuses an admin command: typed, each with the wire code a client acts on
//! (`elk_protocol::admin::AdminErrorCode`; HTTP maps the codes to 400/404/409/422).

use super::PartitionKey;
use elk_protocol::admin::AdminErrorCode;
use elk_protocol::messages::{JobState, PartitionStatus};
use elk_types::{JobName, MemberId};
use std::fmt;

/// A refused admin command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AdminRefusal {
    #[error("unknown job '{0}'")]
    UnknownJob(JobName),
    #[error("partition {0} is not a live partition")]
    UnknownPartition(PartitionKey),
    #[error("job '{0}' already exists")]
    AlreadyExists(JobName),
    #[error("job '{job}' is {state:?} and cannot be {command}")]
    InvalidJobState {
        job: JobName,
        state: JobState,
        command: JobCommand,
    },
    #[error("partition {key} is {status:?}, not failed: nothing to retry")]
    PartitionNotFailed {
        key: PartitionKey,
        status: PartitionStatus,
    },
    #[error(transparent)]
    InvalidSpec(#[from] SpecProblem),
    #[error("a partition id needs its job")]
    PartitionWithoutJob,
    #[error("no live worker '{0}'")]
    UnknownWorker(MemberId),
    #[error("worker '{0}' is shutting down and already hands everything back")]
    WorkerLeaving(MemberId),
    #[error("this command is served by the {0}, not the assigner")]
    WrongService(&'static str),
}

impl AdminRefusal {
    pub fn code(&self) -> AdminErrorCode {
        match self {
            AdminRefusal::UnknownJob(_) => AdminErrorCode::UnknownJob,
            AdminRefusal::UnknownPartition(_) => AdminErrorCode::UnknownPartition,
            AdminRefusal::AlreadyExists(_) => AdminErrorCode::AlreadyExists,
            AdminRefusal::InvalidJobState { .. }
            | AdminRefusal::PartitionNotFailed { .. }
            | AdminRefusal::WorkerLeaving(_) => AdminErrorCode::InvalidState,
            AdminRefusal::UnknownWorker(_) => AdminErrorCode::UnknownMember,
            AdminRefusal::InvalidSpec(_) => AdminErrorCode::InvalidSpec,
            AdminRefusal::PartitionWithoutJob | AdminRefusal::WrongService(_) => {
                AdminErrorCode::BadRequest
            }
        }
    }
}

/// A job command that depends on the job's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JobCommand {
    Pause,
    Resume,
    Cancel,
}

impl fmt::Display for JobCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JobCommand::Pause => "paused",
            JobCommand::Resume => "resumed",
            JobCommand::Cancel => "cancelled",
        })
    }
}

/// What is wrong with a job specification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SpecProblem {
    #[error("partition_size must be between 1 and {max}")]
    PartitionSize { max: u64 },
    #[error("the range must end below u64::MAX")]
    RangeEndsAtMax,
    #[error("max_attempts must be at least 1")]
    NoAttempts,
    #[error("lookahead must be at least 1 for an open-ended job")]
    NoLookahead,
}
