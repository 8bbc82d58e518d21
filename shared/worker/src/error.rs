//! The error shape of elk-worker: what can stop a worker (or a planner) from starting or from
//! shutting down cleanly. Problems while running (an undecodable record, a failed publish) are
//! logged and counted, never fatal.

use elk_nats::NatsError;
use elk_types::MemberId;

/// Why a worker could not start, or did not shut down cleanly.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("invalid worker configuration: {reason}")]
    InvalidConfig { reason: String },
    #[error(
        "member id '{id}' is already taken by a live member; pick another id or wait for its TTL"
    )]
    IdTaken { id: MemberId },
    #[error(transparent)]
    Nats(#[from] NatsError),
    #[error("worker task ended abnormally: {reason}")]
    TaskFailed { reason: String },
    /// The subscription could not be made or confirmed; the NATS client's error is the source.
    #[error("cannot subscribe to {subject}: {source}")]
    Subscribe {
        subject: String,
        #[source]
        source: elk_nats::BoxError,
    },
    /// The metrics endpoint cannot listen where [`crate::WorkerBuilder::metrics_listen`] said.
    #[error(transparent)]
    MetricsListen(#[from] elk_runtime::MetricsListenError),
}

impl elk_nats::Retryable for WorkerError {
    fn is_retryable(&self) -> bool {
        WorkerError::is_retryable(self)
    }
}

impl WorkerError {
    /// Whether starting again later may succeed (a taken id frees up when its TTL expires).
    pub fn is_retryable(&self) -> bool {
        match self {
            WorkerError::InvalidConfig { .. }
            | WorkerError::TaskFailed { .. }
            | WorkerError::MetricsListen(_) => false,
            WorkerError::IdTaken { .. } | WorkerError::Subscribe { .. } => true,
            WorkerError::Nats(error) => error.is_retryable(),
        }
    }
}

impl From<elk_nats::JoinError> for WorkerError {
    fn from(error: elk_nats::JoinError) -> Self {
        match error {
            elk_nats::JoinError::IdTaken { id } => WorkerError::IdTaken { id },
            elk_nats::JoinError::KeyTaken { key } => WorkerError::InvalidConfig {
                reason: format!("lease key '{key}' is held by someone else"),
            },
            elk_nats::JoinError::Nats(error) => WorkerError::Nats(error),
        }
    }
}
