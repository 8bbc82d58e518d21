//! Worker settings, filled by [`crate::WorkerBuilder`] and checked before anything starts.

use elk_nats::{NatsConfig, ProvisionConfig};
use elk_types::{Capacity, JobName, MemberId, Namespace};
use std::collections::BTreeMap;
use std::time::Duration;

/// Default TTL of the member key (renewed every third of it).
pub const DEFAULT_MEMBER_TTL: Duration = Duration::from_secs(3);
/// Default period of checkpoint flushes.
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// Default time processors get to return after cancellation on shutdown (a self-fence aborts).
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(30);
/// Default silence of the assignment watch after which the worker re-reads its key directly.
pub const DEFAULT_ASSIGNMENT_RESYNC: Duration = Duration::from_secs(10);
/// Where a worker connects unless told otherwise.
pub const DEFAULT_NATS_URL: &str = elk_nats::DEFAULT_NATS_URL;

#[derive(Debug, Clone)]
pub(crate) struct WorkerConfig {
    pub(crate) nats: NatsConfig,
    pub(crate) namespace: Namespace,
    pub(crate) id: MemberId,
    pub(crate) capacity: Capacity,
    pub(crate) jobs: Vec<JobName>,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) member_ttl: Duration,
    pub(crate) checkpoint_interval: Duration,
    pub(crate) stop_grace: Duration,
    pub(crate) assignment_resync: Duration,
    pub(crate) provision: ProvisionConfig,
    /// Where to serve `/metrics`, `/healthz` and `/readyz` (`HOST:PORT`); none when unset.
    pub(crate) metrics_listen: Option<String>,
}

impl WorkerConfig {
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.capacity.get() == 0 {
            return Err("capacity must be at least 1".to_owned());
        }
        if self.member_ttl < Duration::from_secs(1) || self.member_ttl > elk_nats::MAX_LEASE_TTL {
            return Err(format!(
                "member_ttl must be between 1s (per-key TTLs are whole seconds) and {:?} (a longer \
                 TTL is not honoured), got {:?}",
                elk_nats::MAX_LEASE_TTL,
                self.member_ttl
            ));
        }
        if self.checkpoint_interval.is_zero() {
            return Err("checkpoint_interval must be greater than zero".to_owned());
        }
        if self.assignment_resync.is_zero() {
            return Err("assignment_resync must be greater than zero".to_owned());
        }
        if self.nats.url.trim().is_empty() {
            return Err("the NATS url is empty".to_owned());
        }
        if let Some(address) = &self.metrics_listen {
            elk_runtime::metrics_http::validate_listen_address("metrics_listen", address)
                .map_err(|error| error.to_string())?;
        }
        Ok(())
    }
}
