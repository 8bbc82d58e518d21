//! Configuration of an election replica (defaults → TOML file → `ELK_*` env → flags).

use elk_types::{MemberId, Namespace};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Everything an election replica needs; every field has a default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ElectionConfig {
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

impl Default for ElectionConfig {
    fn default() -> Self {
        Self {
            nats_url: "nats://127.0.0.1:4222".to_owned(),
            credentials_file: None,
            namespace: Namespace::new("default").expect("valid default namespace"),
            member_id: MemberId::new("election-1").expect("valid default member id"),
            member_ttl: Duration::from_secs(3),
            election_ttl: Duration::from_secs(3),
            standby_retry: Duration::from_secs(1),
            view_debounce: Duration::from_millis(20),
            role_resync: Duration::from_secs(5),
        }
    }
}

impl ElectionConfig {
    /// Rejects values the service cannot run with.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.member_ttl < Duration::from_secs(1) {
            return Err(format!(
                "member_ttl must be at least 1s, got {:?}",
                self.member_ttl
            ));
        }
        if self.election_ttl < Duration::from_secs(1) {
            return Err(format!(
                "election_ttl must be at least 1s, got {:?}",
                self.election_ttl
            ));
        }
        if self.standby_retry.is_zero() || self.role_resync.is_zero() {
            return Err("standby_retry and role_resync must be greater than zero".to_owned());
        }
        Ok(())
    }
}
