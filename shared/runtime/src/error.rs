//! [`ReplicaError`]: how any service replica fails, whatever the service — its configuration,
//! its membership, or NATS. The election wraps it in its own error; the scaler's error is it.

use crate::config::ConfigError;
use elk_nats::{JoinError, NatsError, Retryable, RoleError};
use elk_types::MemberId;

/// The failures every service replica shares.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// Terminal: fix the configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Joining the members bucket failed on NATS (a live holder of the id is waited for, not an
    /// error).
    #[error("cannot join as member '{id}': {source}")]
    Join {
        id: MemberId,
        #[source]
        source: JoinError,
    },
    /// Retryable when NATS was only unreachable or slow.
    #[error(transparent)]
    Nats(#[from] NatsError),
    /// Terminal: the metrics endpoint cannot listen on `metrics_listen`.
    #[error(transparent)]
    MetricsListen(#[from] crate::MetricsListenError),
}

/// Start-up failures of the role supervisor (`elk_nats::RoleSupervisor`) are a replica's own.
impl From<RoleError> for ReplicaError {
    fn from(error: RoleError) -> Self {
        match error {
            RoleError::Join { id, source } => ReplicaError::Join { id, source },
            RoleError::Follow { source, .. } => ReplicaError::Nats(source),
        }
    }
}

impl Retryable for ReplicaError {
    fn is_retryable(&self) -> bool {
        match self {
            ReplicaError::Config(_) => false,
            ReplicaError::Join { source, .. } => source.is_retryable(),
            ReplicaError::Nats(error) => error.is_retryable(),
            ReplicaError::MetricsListen(error) => error.is_retryable(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_is_terminal_and_nats_follows_its_kind() {
        let config = ReplicaError::from(ConfigError::invalid("bad"));
        assert!(!config.is_retryable());
        let unreachable = std::io::Error::other("connection reset");
        let nats = ReplicaError::from(NatsError::kv("read", "b", "k", unreachable));
        assert!(nats.is_retryable());
        let join = ReplicaError::Join {
            id: MemberId::new("a").unwrap(),
            source: JoinError::IdTaken {
                id: MemberId::new("a").unwrap(),
            },
        };
        assert!(join.is_retryable(), "a live holder goes away by itself");
    }
}
