//! `[assigner.rebalance]`: the churn budget (issue 14 item 4; the decisions are in
//! `model/churn.rs`). Off by default: the placement solver already moves the fewest partitions
//! that balance the fleet, and a cap trades how fast a new worker gets its share for how many
//! partitions are interrupted at once — a trade each deployment makes for itself.

use elk_runtime::ConfigError;
use serde::{Deserialize, Serialize};

/// `[assigner.rebalance]`. With both limits set, the smaller applies; a capped round still moves
/// at least one partition, so any imbalance is worked off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RebalanceSettings {
    /// Partitions moved to even out load per round at most, counting the hand-overs of earlier
    /// rounds still in flight (unset: no absolute cap).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_moves_per_round: Option<u64>,
    /// The same cap as a fraction (0, 1] of the partitions granted at the round (rounded down,
    /// at least 1; unset: no fractional cap).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_moves_fraction: Option<f64>,
}

/// `validate` refuses NaN, so equality is an equivalence (the settings compare as a whole).
impl Eq for RebalanceSettings {}

impl RebalanceSettings {
    /// Refuses values the budget cannot run with.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.max_moves_per_round == Some(0) {
            return Err(ConfigError::invalid(
                "assigner.rebalance.max_moves_per_round must be at least 1 (unset it to cap nothing)",
            ));
        }
        if let Some(fraction) = self.max_moves_fraction
            && !(fraction > 0.0 && fraction <= 1.0)
        {
            return Err(ConfigError::invalid(format!(
                "assigner.rebalance.max_moves_fraction must be in (0, 1], not {fraction} (unset it to cap nothing)"
            )));
        }
        Ok(())
    }

    /// The model's policy.
    pub(crate) fn policy(&self) -> crate::model::RebalancePolicy {
        crate::model::RebalancePolicy {
            max_moves_per_round: self.max_moves_per_round,
            max_moves_fraction: self.max_moves_fraction,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AssignerConfig;
    use elk_runtime::Validate;

    #[test]
    fn uncapped_by_default() {
        let settings = RebalanceSettings::default();
        assert_eq!(settings.policy(), crate::model::RebalancePolicy::default());
        assert_eq!(settings.policy().cap(1_000_000), None);
    }

    #[test]
    fn the_budget_comes_from_the_environment_and_bad_values_are_refused() {
        let variables = [
            ("ELK_ASSIGNER__REBALANCE__MAX_MOVES_PER_ROUND", "8"),
            ("ELK_ASSIGNER__REBALANCE__MAX_MOVES_FRACTION", "0.1"),
        ]
        .map(|(key, value)| (key.to_owned(), value.to_owned()));
        let mut config: AssignerConfig =
            elk_runtime::load_config_from(None, variables, serde_json::json!({})).unwrap();
        assert!(config.validate().is_ok());
        let policy = config.assigner.rebalance.policy();
        assert_eq!(policy.max_moves_per_round, Some(8));
        assert_eq!(policy.cap(50), Some(5), "10 % of 50 is below 8");
        assert_eq!(policy.cap(500), Some(8), "8 is below 10 % of 500");
        assert_eq!(policy.cap(3), Some(1), "never below one move");

        for fraction in [0.0, -0.5, 1.5, f64::NAN] {
            config.assigner.rebalance.max_moves_fraction = Some(fraction);
            let error = config.validate().unwrap_err().to_string();
            assert!(error.contains("max_moves_fraction"), "{error}");
        }
        config.assigner.rebalance.max_moves_fraction = Some(1.0);
        config.assigner.rebalance.max_moves_per_round = Some(0);
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("max_moves_per_round"), "{error}");
    }

    fn no_variables() -> Vec<(String, String)> {
        Vec::new()
    }

    #[test]
    fn a_toml_table_sets_the_budget_and_unknown_keys_are_refused() {
        let toml = "[assigner.rebalance]\nmax_moves_per_round = 4\nmax_moves_fraction = 0.25\n";
        let config: AssignerConfig =
            elk_runtime::load_config_toml(toml, no_variables(), serde_json::json!({})).unwrap();
        assert_eq!(config.assigner.rebalance.max_moves_per_round, Some(4));
        assert_eq!(config.assigner.rebalance.max_moves_fraction, Some(0.25));
        let misspelled = "[assigner.rebalance]\nmax_moves = 4\n";
        let refused = elk_runtime::load_config_toml::<AssignerConfig>(
            misspelled,
            no_variables(),
            serde_json::json!({}),
        );
        assert!(refused.is_err(), "unknown keys are refused");
    }
}
