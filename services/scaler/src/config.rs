//! Configuration of a scaler replica: `[service]` (shared by every service, see
//! [`ServiceCommon`](elk_runtime::ServiceCommon)) and `[scaler]`, loaded by `elk_runtime` (defaults → TOML file → `ELK_*`
//! environment, e.g. `ELK_SCALER__MIN_WORKERS=2` → flags) and validated.

use elk_runtime::{ConfigError, Validate};
use serde::{Deserialize, Serialize};
use std::time::Duration;

elk_runtime::service_config! {
    /// Everything a scaler replica needs; every field has a default (see `--print-config`).
    pub struct ScalerConfig { scaler: ScalerSettings }
}

/// `[scaler]`: the sizing rule's inputs and bounds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScalerSettings {
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

impl Default for ScalerSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            min_workers: 1,
            max_workers: 100,
            partitions_per_worker: 10,
        }
    }
}

impl Validate for ScalerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.service.validate()?;
        let scaler = &self.scaler;
        if scaler.interval.is_zero() {
            return Err(ConfigError::invalid(
                "scaler.interval must be greater than zero",
            ));
        }
        if scaler.partitions_per_worker == 0 {
            return Err(ConfigError::invalid(
                "scaler.partitions_per_worker must be at least 1",
            ));
        }
        if scaler.min_workers > scaler.max_workers {
            return Err(ConfigError::invalid(format!(
                "scaler.min_workers ({}) must not exceed scaler.max_workers ({})",
                scaler.min_workers, scaler.max_workers
            )));
        }
        Ok(())
    }
}
