//! Configuration of an election replica: `[service]` (shared by every service, see
//! [`ServiceCommon`](elk_runtime::ServiceCommon)) and `[election]`, loaded by `elk_runtime` (defaults → TOML file → `ELK_*`
//! environment, e.g. `ELK_ELECTION__ELECTION_TTL=5s` → flags) and validated.

use elk_runtime::{ConfigError, Validate};
use serde::{Deserialize, Serialize};
use std::time::Duration;

elk_runtime::service_config! {
    /// Everything an election replica needs; every field has a default (see `--print-config`).
    pub struct ElectionConfig { election: ElectionSettings }
}

/// `[election]`: timings of the active/standby lease and of the view and role reconciliation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ElectionSettings {
    /// TTL of the `election` lease held by the active replica; a crashed active replica is
    /// replaced within about this long.
    #[serde(with = "humantime_serde")]
    pub election_ttl: Duration,
    /// How often a standby replica retries to take the `election` lease even without seeing it
    /// deleted (a safety net for a missed delete marker).
    #[serde(with = "humantime_serde")]
    pub standby_retry: Duration,
    /// Membership events arriving within this window after a first one are applied in one view
    /// write (one generation step per burst).
    #[serde(with = "humantime_serde")]
    pub view_debounce: Duration,
    /// How often the active replica re-checks the role leases against the view even when
    /// nothing changed (level-triggered resync).
    #[serde(with = "humantime_serde")]
    pub role_resync: Duration,
}

impl Default for ElectionSettings {
    fn default() -> Self {
        Self {
            election_ttl: Duration::from_secs(3),
            standby_retry: Duration::from_secs(1),
            view_debounce: Duration::from_millis(20),
            role_resync: Duration::from_secs(5),
        }
    }
}

impl Validate for ElectionConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.service.validate()?;
        let election = &self.election;
        if election.election_ttl < Duration::from_secs(1) {
            return Err(ConfigError::invalid(format!(
                "election.election_ttl must be at least 1s, got {:?}",
                election.election_ttl
            )));
        }
        if election.standby_retry.is_zero() || election.role_resync.is_zero() {
            return Err(ConfigError::invalid(
                "election.standby_retry and election.role_resync must be greater than zero",
            ));
        }
        Ok(())
    }
}
