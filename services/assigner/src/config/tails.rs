//! `[assigner.tails]`: straggler splitting and adaptive partition size (issue 14 items 1 and 2;
//! the decisions are in `model/split.rs`). Both are off by default: they change how many
//! partitions a job has, which operators and dashboards may count on.

use elk_runtime::ConfigError;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `[assigner.tails]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TailSettings {
    /// Split running partitions whose remaining IDs would take long at their measured rate when
    /// workers have free slots.
    pub split: bool,
    /// A partition is split only when its remaining IDs would take at least this long.
    #[serde(with = "humantime_serde")]
    pub split_min_remaining: Duration,
    /// No piece of a split has fewer IDs.
    pub split_min_ids: u64,
    /// A split makes at most this many pieces (the kept partition included), at least 2.
    pub split_max_pieces: u32,
    /// Partitions split per round at most.
    pub splits_per_round: usize,
    /// A partition's rate is trusted after observing it this long (workers checkpoint every
    /// second).
    #[serde(with = "humantime_serde")]
    pub observe_min: Duration,
    /// Size newly cut partitions to take about this long at the job's measured rate (unset: the
    /// job's `partition_size`).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub target_partition_time: Option<Duration>,
    /// Bounds of an adaptive partition size (IDs).
    pub min_partition_ids: u64,
    pub max_partition_ids: u64,
}

impl Default for TailSettings {
    fn default() -> Self {
        let policy = crate::model::TailPolicy::default();
        Self {
            split: policy.split,
            split_min_remaining: Duration::from_millis(policy.split_min_remaining_ms),
            split_min_ids: policy.split_min_ids,
            split_max_pieces: policy.split_max_pieces,
            splits_per_round: policy.splits_per_round,
            observe_min: Duration::from_millis(policy.observe_min_ms),
            target_partition_time: None,
            min_partition_ids: policy.min_partition_ids,
            max_partition_ids: policy.max_partition_ids,
        }
    }
}

impl TailSettings {
    /// Refuses values the decisions cannot run with.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.split_min_ids == 0 || self.min_partition_ids == 0 {
            return Err(ConfigError::invalid(
                "assigner.tails.split_min_ids and min_partition_ids must be at least 1",
            ));
        }
        if self.split_max_pieces < 2 || self.splits_per_round == 0 {
            return Err(ConfigError::invalid(
                "assigner.tails.split_max_pieces must be at least 2 and splits_per_round at least 1",
            ));
        }
        if self.min_partition_ids > self.max_partition_ids {
            return Err(ConfigError::invalid(
                "assigner.tails.min_partition_ids must not exceed max_partition_ids",
            ));
        }
        if self.target_partition_time.is_some_and(|t| t.is_zero()) {
            return Err(ConfigError::invalid(
                "assigner.tails.target_partition_time must be greater than zero",
            ));
        }
        Ok(())
    }

    /// The model's policy.
    pub(crate) fn policy(&self) -> crate::model::TailPolicy {
        let ms = |duration: Duration| u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        crate::model::TailPolicy {
            split: self.split,
            split_min_remaining_ms: ms(self.split_min_remaining),
            split_min_ids: self.split_min_ids,
            split_max_pieces: self.split_max_pieces,
            splits_per_round: self.splits_per_round,
            observe_min_ms: ms(self.observe_min),
            target_partition_ms: self.target_partition_time.map(ms),
            min_partition_ids: self.min_partition_ids,
            max_partition_ids: self.max_partition_ids,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AssignerConfig;
    use elk_runtime::Validate;

    #[test]
    fn tails_come_from_the_environment_and_bad_values_are_refused() {
        let variables = [
            ("ELK_ASSIGNER__TAILS__SPLIT", "true"),
            ("ELK_ASSIGNER__TAILS__TARGET_PARTITION_TIME", "10s"),
            ("ELK_ASSIGNER__TAILS__SPLIT_MIN_IDS", "50"),
        ]
        .map(|(key, value)| (key.to_owned(), value.to_owned()));
        let mut config: AssignerConfig =
            elk_runtime::load_config_from(None, variables, serde_json::json!({})).unwrap();
        let policy = config.assigner.tails.policy();
        assert!(policy.split);
        assert_eq!(policy.target_partition_ms, Some(10_000));
        assert_eq!(policy.split_min_ids, 50);
        assert!(config.validate().is_ok());
        config.assigner.tails.split_max_pieces = 1;
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("split_max_pieces"), "{error}");
        config.assigner.tails.split_max_pieces = 2;
        config.assigner.tails.min_partition_ids = 10;
        config.assigner.tails.max_partition_ids = 5;
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("max_partition_ids"), "{error}");
    }

    #[test]
    fn off_by_default() {
        let policy = TailSettings::default().policy();
        assert!(!policy.split);
        assert_eq!(policy.target_partition_ms, None);
        assert_eq!(policy, crate::model::TailPolicy::default());
    }
}
