//! The assigner's error type, classified for the role supervisor: a retryable error restarts the
//! leader term after a back-off, a terminal one gives the role up (`elk_nats::role`), and
//! [`AssignerError::Deposed`] ends the term without a restart.

use elk_nats::{NatsError, Retryable, RoleError};
use elk_runtime::ConfigError;
use elk_types::Epoch;
use std::fmt;

/// Errors of the assigner service.
#[derive(Debug, thiserror::Error)]
pub enum AssignerError {
    /// Terminal: fix the configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Terminal: the HTTP admin API cannot listen on `http_listen`.
    #[error("cannot listen on {address} (http_listen)")]
    HttpListen {
        address: String,
        #[source]
        source: std::io::Error,
    },
    /// Terminal: the HTTP admin API's tokens or TLS files are missing or unusable.
    #[error("HTTP admin API: {reason}")]
    HttpSetup { reason: String },
    /// Terminal: the metrics endpoint cannot listen on `metrics_listen`.
    #[error(transparent)]
    MetricsListen(#[from] elk_runtime::MetricsListenError),
    /// Retryable or terminal as the NATS error says.
    #[error(transparent)]
    Nats(#[from] NatsError),
    /// At start-up: joining the members bucket or following the role lease.
    #[error(transparent)]
    Role(#[from] RoleError),
    /// Retryable: a JetStream operation of the leader loop failed.
    #[error("{operation} failed")]
    Jetstream {
        operation: JetstreamOperation,
        #[source]
        source: async_nats::Error,
    },
    /// Not a failure of this replica: a newer assigner exists (a record written under a higher
    /// epoch, or the role lease moved on). The term ends and is not restarted.
    #[error("deposed: a newer assigner than epoch {epoch} exists")]
    Deposed { epoch: Epoch },
    /// Retryable: a feed the leader loop follows ended (a new term subscribes again).
    #[error("the {0} ended")]
    FeedEnded(Feed),
}

/// A JetStream operation of the leader loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JetstreamOperation {
    ProgressConsumer,
    ProgressPull,
    ProgressInfo,
    AdminSubscription,
}

impl fmt::Display for JetstreamOperation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JetstreamOperation::ProgressConsumer => "getting the progress consumer",
            JetstreamOperation::ProgressPull => "pulling from the progress stream",
            JetstreamOperation::ProgressInfo => "reading the progress stream's info",
            JetstreamOperation::AdminSubscription => "subscribing to admin requests",
        })
    }
}

/// A feed the leader loop follows whose end ends the term (the progress feed never ends: it
/// re-creates its consumer instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    MembershipView,
}

impl fmt::Display for Feed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Feed::MembershipView => "membership view follower",
        })
    }
}

impl AssignerError {
    pub(crate) fn jetstream(
        operation: JetstreamOperation,
        source: impl Into<async_nats::Error>,
    ) -> Self {
        AssignerError::Jetstream {
            operation,
            source: source.into(),
        }
    }
}

impl Retryable for AssignerError {
    fn is_retryable(&self) -> bool {
        match self {
            AssignerError::Config(_)
            | AssignerError::HttpListen { .. }
            | AssignerError::HttpSetup { .. }
            | AssignerError::MetricsListen(_) => false,
            AssignerError::Nats(error) => error.is_retryable(),
            AssignerError::Role(error) => error.is_retryable(),
            AssignerError::Jetstream { .. } | AssignerError::FeedEnded(_) => true,
            AssignerError::Deposed { .. } => false,
        }
    }
}
