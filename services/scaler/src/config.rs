//! Configuration of a scaler replica (defaults → TOML file → `ELK_*` env → flags).

use elk_types::{MemberId, Namespace};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Everything a scaler replica needs; every field has a default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScalerConfig {
    /// NATS server URL.
    pub nats_url: String,
    /// Optional NATS `.creds` file (JWT + NKEY).
    pub credentials_file: Option<PathBuf>,
    /// Deployment namespace: every bucket and subject name carries it.
    pub namespace: Namespace,
    /// This replica's member id (its key in the members bucket); unique per replica.
    pub member_id: MemberId,
    /// TTL of this replica's member key; renewed every third of it.
    #[serde(with = "humantime_serde")]
    pub member_ttl: Duration,
    /// How often the leader recomputes the desired worker count.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Lower bound of the desired worker count.
    pub min_workers: u32,
    /// Upper bound of the desired worker count.
    pub max_workers: u32,
    /// Pending partitions one worker is expected to take (desired = backlog / this, rounded up).
    pub partitions_per_worker: u64,
}

impl Default for ScalerConfig {
    fn default() -> Self {
        Self {
            nats_url: "nats://127.0.0.1:4222".to_owned(),
            credentials_file: None,
            namespace: Namespace::new("default").expect("valid default namespace"),
            member_id: MemberId::new("scaler-1").expect("valid default member id"),
            member_ttl: Duration::from_secs(3),
            interval: Duration::from_secs(1),
            min_workers: 1,
            max_workers: 100,
            partitions_per_worker: 10,
        }
    }
}

impl ScalerConfig {
    /// Rejects values the service cannot run with.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.member_ttl < Duration::from_secs(1) {
            return Err(format!(
                "member_ttl must be at least 1s, got {:?}",
                self.member_ttl
            ));
        }
        if self.interval.is_zero() {
            return Err("interval must be greater than zero".to_owned());
        }
        if self.partitions_per_worker == 0 {
            return Err("partitions_per_worker must be at least 1".to_owned());
        }
        if self.min_workers > self.max_workers {
            return Err(format!(
                "min_workers ({}) must not exceed max_workers ({})",
                self.min_workers, self.max_workers
            ));
        }
        Ok(())
    }
}
