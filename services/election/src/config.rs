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
    /// A member whose key is not rewritten for this long is left out of the view even though its
    /// key is still there (written without a TTL, it would never expire). Live members renew every
    /// third of their TTL, and no TTL may exceed `elk_nats::MAX_LEASE_TTL` (60 s), the default.
    /// Checked every `role_resync`.
    #[serde(with = "humantime_serde")]
    pub member_silence_limit: Duration,
    /// The largest capacity the view lists for a member; a member announcing more is listed with
    /// this (placement quotas are proportional to capacity: one member, real or forged, can never
    /// draw more than this share).
    pub max_member_capacity: u32,
}

/// Default of `election.max_member_capacity`: far above any worker measured (`docs/benchmarks.md`
/// runs capacities up to 64), far below what would let one member take a whole fleet's work.
pub const DEFAULT_MAX_MEMBER_CAPACITY: u32 = 1_024;

impl Default for ElectionSettings {
    fn default() -> Self {
        Self {
            election_ttl: Duration::from_secs(3),
            standby_retry: Duration::from_secs(1),
            view_debounce: Duration::from_millis(20),
            role_resync: Duration::from_secs(5),
            member_silence_limit: elk_nats::MAX_LEASE_TTL,
            max_member_capacity: DEFAULT_MAX_MEMBER_CAPACITY,
        }
    }
}

impl Validate for ElectionConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.service.validate()?;
        let election = &self.election;
        if election.election_ttl < Duration::from_secs(1)
            || election.election_ttl > elk_nats::MAX_LEASE_TTL
        {
            return Err(ConfigError::invalid(format!(
                "election.election_ttl must be between 1s and {:?} (a longer TTL is not honoured), got {:?}",
                elk_nats::MAX_LEASE_TTL,
                election.election_ttl
            )));
        }
        if election.max_member_capacity == 0 {
            return Err(ConfigError::invalid(
                "election.max_member_capacity must be at least 1",
            ));
        }
        if election.standby_retry.is_zero()
            || election.role_resync.is_zero()
            || election.member_silence_limit.is_zero()
        {
            return Err(ConfigError::invalid(
                "election.standby_retry, election.role_resync and election.member_silence_limit \
                 must be greater than zero",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn misspelled_keys_are_errors_naming_them() {
        let no_flags = BTreeMap::<String, String>::new();
        for (file, key) in [
            ("[election]\nelection_tll = \"3s\"\n", "election_tll"),
            ("[service]\nmember_tll = \"3s\"\n", "member_tll"),
        ] {
            let refused = elk_runtime::load_config_toml::<ElectionConfig>(file, [], &no_flags);
            let error = refused.unwrap_err().to_string();
            assert!(error.contains(key), "{error}");
        }
        let variables = [("ELK_ELECTION__VIEW_DEBOUNSE".to_owned(), "1s".to_owned())];
        let refused = elk_runtime::load_config_from::<ElectionConfig>(None, variables, &no_flags);
        let error = refused.unwrap_err().to_string();
        let named =
            error.contains("view_debounse") && error.contains("ELK_ELECTION__VIEW_DEBOUNSE");
        assert!(named, "{error}");
    }
}
