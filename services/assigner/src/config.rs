//! Configuration of an assigner replica: `[service]` (shared by every service, see
//! [`ServiceCommon`](elk_runtime::ServiceCommon)) and `[assigner]`, loaded by `elk_runtime` (defaults → TOML file → `ELK_*`
//! environment, e.g. `ELK_ASSIGNER__HTTP_LISTEN=0.0.0.0:8080` → flags) and validated.

use elk_runtime::{ConfigError, Validate};
use serde::{Deserialize, Serialize};
use std::time::Duration;

elk_runtime::service_config! {
    /// Everything an assigner replica needs; every field has a default (see `--print-config`).
    pub struct AssignerConfig { assigner: AssignerSettings }
}

/// `[assigner]`: grant policy, round sizes, timeouts and the HTTP admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AssignerSettings {
    /// Grants a worker holds per unit of capacity (running plus queued on the worker).
    pub grants_per_capacity: u32,
    /// Partitions created per reconcile round at most.
    pub partitions_per_round: usize,
    /// A revoke not answered within this time is reported (`revokes_overdue`); the partition
    /// still waits for the old owner's release or member expiry before it is granted again.
    #[serde(with = "humantime_serde")]
    pub revoke_timeout: Duration,
    /// Resync tick of the leader loop.
    #[serde(with = "humantime_serde")]
    pub tick: Duration,
    /// Address of the HTTP JSON admin API (e.g. `127.0.0.1:8080`); none when unset. Every
    /// replica serves it and forwards to the active assigner over NATS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_listen: Option<String>,
}

impl Default for AssignerSettings {
    fn default() -> Self {
        Self {
            grants_per_capacity: 2,
            partitions_per_round: 1_000,
            revoke_timeout: Duration::from_secs(5),
            tick: Duration::from_millis(200),
            http_listen: None,
        }
    }
}

impl Validate for AssignerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.service.validate()?;
        let assigner = &self.assigner;
        if assigner.grants_per_capacity == 0 {
            return Err(ConfigError::invalid(
                "assigner.grants_per_capacity must be at least 1",
            ));
        }
        if assigner.partitions_per_round == 0 {
            return Err(ConfigError::invalid(
                "assigner.partitions_per_round must be at least 1",
            ));
        }
        if assigner.tick.is_zero() {
            return Err(ConfigError::invalid(
                "assigner.tick must be greater than zero",
            ));
        }
        if let Some(address) = &assigner.http_listen {
            elk_runtime::metrics_http::validate_listen_address("assigner.http_listen", address)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_sizes_and_bad_addresses_are_refused_not_clamped() {
        let mut config = AssignerConfig::default();
        assert!(config.validate().is_ok());
        config.assigner.partitions_per_round = 0;
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("assigner.partitions_per_round"), "{error}");
        config.assigner.partitions_per_round = 1;
        config.assigner.http_listen = Some("localhost".to_owned());
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("assigner.http_listen"), "{error}");
    }
}
