//! Configuration of a scaler replica: `[service]` (shared by every service, see
//! [`ServiceCommon`](elk_runtime::ServiceCommon)) and `[scaler]`, loaded by `elk_runtime` (defaults → TOML file → `ELK_*`
//! environment, e.g. `ELK_SCALER__MIN_WORKERS=2` → flags) and validated.

use crate::policy::PolicySettings;
use elk_runtime::{ConfigError, Validate};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

elk_runtime::service_config! {
    /// Everything a scaler replica needs; every field has a default (see `--print-config`).
    pub struct ScalerConfig { scaler: ScalerSettings }
}

/// `[scaler]`: the policy's bounds and pace (`policy.rs`), the scale-in and the optional
/// Kubernetes actuation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScalerSettings {
    /// How often the leader decides (and asks the assigner for `members`).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Lower bound of the desired worker count (0 allows scale to zero).
    pub min_workers: u32,
    /// Upper bound of the desired worker count.
    pub max_workers: u32,
    /// Drain the backlog within this time at the measured throughput.
    #[serde(with = "humantime_serde")]
    pub target_drain: Duration,
    /// At zero workers, scale up only once the backlog has this many IDs.
    pub activation_backlog_ids: u64,
    /// A scale-up adds at most `max(scale_up_step, current)` workers per decision.
    pub scale_up_step: u32,
    /// A scale-down waits this long after the last scale-up and goes to the highest
    /// recommendation of the last window this long (stabilization).
    #[serde(with = "humantime_serde")]
    pub scale_down_window: Duration,
    /// Time constant of the throughput smoothing.
    #[serde(with = "humantime_serde")]
    pub rate_smoothing: Duration,
    /// Before any throughput was measured: one worker per this many open partitions.
    pub partitions_per_worker: u64,
    /// Changes smaller than this share (in %) of the current count are not made.
    pub tolerance_percent: u32,
    /// Scale-in drains the workers it removes first (through the assigner) and names them in
    /// `fleet/desired` `retire`. Off: only the counts are published.
    pub drain_before_remove: bool,
    /// Actuate a Kubernetes Deployment's `scale` subresource (none by default).
    pub kubernetes: Option<KubernetesSettings>,
}

/// `[scaler.kubernetes]`: the worker Deployment the scaler sizes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesSettings {
    /// Namespace of the Deployment (and its pods).
    pub namespace: String,
    /// Name of the worker Deployment; its pods' names are the workers' member ids.
    pub deployment: String,
    /// API server URL; unset: in-cluster service account, else `~/.kube/config`.
    #[serde(default)]
    pub api_server: Option<String>,
    /// Bearer token file for `api_server`.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Accept the API server's certificate unchecked (development servers only).
    #[serde(default)]
    pub insecure_skip_tls_verify: bool,
}

impl Default for ScalerSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            min_workers: 1,
            max_workers: 100,
            target_drain: Duration::from_secs(120),
            activation_backlog_ids: 1,
            scale_up_step: 4,
            scale_down_window: Duration::from_secs(300),
            rate_smoothing: Duration::from_secs(30),
            partitions_per_worker: 10,
            tolerance_percent: 10,
            drain_before_remove: true,
            kubernetes: None,
        }
    }
}

impl ScalerSettings {
    /// The policy's part of the settings.
    pub fn policy(&self) -> PolicySettings {
        PolicySettings {
            min_workers: self.min_workers,
            max_workers: self.max_workers,
            target_drain: self.target_drain,
            activation_backlog_ids: self.activation_backlog_ids,
            scale_up_step: self.scale_up_step,
            scale_down_window: self.scale_down_window,
            partitions_per_worker: self.partitions_per_worker,
            tolerance_percent: self.tolerance_percent,
        }
    }
}

impl Validate for ScalerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.service.validate()?;
        let scaler = &self.scaler;
        let positive = [
            ("scaler.interval", scaler.interval),
            ("scaler.target_drain", scaler.target_drain),
            ("scaler.rate_smoothing", scaler.rate_smoothing),
        ];
        for (name, value) in positive {
            if value.is_zero() {
                return Err(ConfigError::invalid(format!(
                    "{name} must be greater than zero"
                )));
            }
        }
        if scaler.partitions_per_worker == 0 {
            return Err(ConfigError::invalid(
                "scaler.partitions_per_worker must be at least 1",
            ));
        }
        if scaler.tolerance_percent >= 100 {
            return Err(ConfigError::invalid(
                "scaler.tolerance_percent must be below 100",
            ));
        }
        if scaler.scale_up_step == 0 {
            return Err(ConfigError::invalid(
                "scaler.scale_up_step must be at least 1",
            ));
        }
        if scaler.min_workers > scaler.max_workers {
            return Err(ConfigError::invalid(format!(
                "scaler.min_workers ({}) must not exceed scaler.max_workers ({})",
                scaler.min_workers, scaler.max_workers
            )));
        }
        if let Some(kubernetes) = &scaler.kubernetes
            && (kubernetes.namespace.is_empty() || kubernetes.deployment.is_empty())
        {
            return Err(ConfigError::invalid(
                "scaler.kubernetes needs a namespace and a deployment",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misspelled_keys_are_errors_naming_them() {
        let kubernetes = "[scaler.kubernetes]\nnamespace = \"n\"\ndeployment = \"d\"\n";
        for (file, key) in [
            ("[scaler]\nmin_worker = 1\n".to_owned(), "min_worker"),
            (format!("{kubernetes}tokenfile = \"t\"\n"), "tokenfile"),
            ("[service]\nnamespce = \"n\"\n".to_owned(), "namespce"),
        ] {
            let refused =
                elk_runtime::load_config_toml::<ScalerConfig>(&file, [], serde_json::json!({}));
            let error = refused.unwrap_err().to_string();
            assert!(error.contains(key), "{error}");
        }
        let variables = [("ELK_SCALER__MAX_WORKER".to_owned(), "3".to_owned())];
        let refused =
            elk_runtime::load_config_from::<ScalerConfig>(None, variables, serde_json::json!({}));
        let error = refused.unwrap_err().to_string();
        assert!(
            error.contains("max_worker") && error.contains("ELK_SCALER__MAX_WORKER"),
            "{error}"
        );
    }
}
