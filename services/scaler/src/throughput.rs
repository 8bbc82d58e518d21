//! The measured throughput of one busy worker, smoothed: the input of the policy's
//! recommendation (`policy.rs`).
//!
//! **Where it is measured.** The assigner leader applies every checkpoint and completion; it adds
//! the IDs each one moved a partition forward to its owner's `ids_progressed` (in memory, per
//! leader term) and reports the counters in its `members` answer (`docs/admin-api.md`). The
//! scaler asks for `members` every `interval` and derives, from two successive answers of the same
//! term,
//!
//! ```text
//!   sample = Σ Δids_progressed / Δt / busy workers
//! ```
//!
//! where busy workers are those holding grants in either answer (an idle worker says nothing about
//! the pace of one that has work). The samples are smoothed exponentially with time constant
//! `rate_smoothing` (`estimate += (1 − e^(−Δt/τ)) × (sample − estimate)`). A new assigner term
//! restarts the counters: the first answer of a term is only a new baseline. Without busy workers
//! the estimate is kept (it is what a scale-up from zero starts from).

use elk_nats::Members;
use elk_protocol::admin::MemberState;
use elk_protocol::messages::MemberRole;
use elk_types::{Epoch, MemberId};
use std::collections::BTreeMap;
use std::time::Duration;

/// One answer of `members`, reduced to what the estimate needs.
#[derive(Debug, Clone)]
struct Sample {
    epoch: Epoch,
    at_ms: u64,
    /// Per worker: IDs progressed, and whether it held grants.
    workers: BTreeMap<MemberId, (u64, bool)>,
}

/// The smoothed IDs per second of one busy worker.
#[derive(Debug, Clone)]
pub struct Throughput {
    smoothing: Duration,
    previous: Option<Sample>,
    estimate: Option<f64>,
}

impl Throughput {
    pub fn new(smoothing: Duration) -> Self {
        Self {
            smoothing,
            previous: None,
            estimate: None,
        }
    }

    /// The current estimate (IDs/s per busy worker), `None` before the first measurement.
    pub fn estimate(&self) -> Option<f64> {
        self.estimate
    }

    /// Takes one `members` answer into account; returns the new estimate.
    pub fn observe(&mut self, members: &Members) -> Option<f64> {
        let sample = Sample {
            epoch: members.epoch,
            at_ms: members.now_unix_ms,
            workers: members
                .members
                .iter()
                .filter(|member| member.role == MemberRole::Worker)
                .map(|member| {
                    let busy = member.granted + member.revoking > 0
                        && member.state != MemberState::Leaving;
                    (member.id.clone(), (member.ids_progressed, busy))
                })
                .collect(),
        };
        let Some(previous) = self.previous.replace(sample) else {
            return self.estimate;
        };
        let current = self.previous.as_ref().expect("just set");
        if previous.epoch != current.epoch || current.at_ms <= previous.at_ms {
            return self.estimate;
        }
        let mut moved = 0u64;
        let mut busy = 0u64;
        for (worker, (progressed, busy_now)) in &current.workers {
            let (before, busy_before) = previous.workers.get(worker).copied().unwrap_or((0, false));
            if *busy_now || busy_before {
                busy += 1;
            }
            moved += progressed.saturating_sub(before);
        }
        if busy == 0 {
            return self.estimate;
        }
        let elapsed = Duration::from_millis(current.at_ms - previous.at_ms);
        let sample = moved as f64 / elapsed.as_secs_f64() / busy as f64;
        let weight = 1.0 - (-elapsed.as_secs_f64() / self.smoothing.as_secs_f64().max(0.001)).exp();
        let estimate = match self.estimate {
            None => sample,
            Some(estimate) => estimate + weight * (sample - estimate),
        };
        self.estimate = Some(estimate);
        self.estimate
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use elk_protocol::admin::MemberStatus;
    use elk_types::{Capacity, Incarnation};

    fn worker(id: &str, progressed: u64, granted: u32) -> MemberStatus {
        MemberStatus {
            id: MemberId::new(id).unwrap(),
            role: MemberRole::Worker,
            incarnation: Incarnation(1),
            capacity: Capacity(2),
            jobs: Vec::new(),
            granted,
            revoking: 0,
            state: MemberState::Active,
            drain: None,
            ids_progressed: progressed,
        }
    }

    fn answer(epoch: u64, at_ms: u64, members: Vec<MemberStatus>) -> Members {
        Members {
            epoch: Epoch(epoch),
            now_unix_ms: at_ms,
            frozen: false,
            members,
        }
    }

    #[test]
    fn the_rate_is_per_busy_worker_and_smoothed() {
        let mut throughput = Throughput::new(Duration::from_secs(10));
        let idle = worker("c", 0, 0);
        assert_eq!(
            throughput.observe(&answer(
                1,
                1_000,
                vec![worker("a", 0, 2), worker("b", 0, 2), idle.clone()]
            )),
            None
        );
        // 2,000 IDs in 1 s over two busy workers (the idle one does not count): 1,000 IDs/s.
        let first = throughput
            .observe(&answer(
                1,
                2_000,
                vec![worker("a", 1_000, 2), worker("b", 1_000, 2), idle.clone()],
            ))
            .unwrap();
        assert!((first - 1_000.0).abs() < 1e-9);
        // A sample of 0 moves the estimate by 1 − e^(−1/10) ≈ 9.5 % towards it.
        let second = throughput
            .observe(&answer(
                1,
                3_000,
                vec![worker("a", 1_000, 2), worker("b", 1_000, 2), idle],
            ))
            .unwrap();
        assert!(
            (second - 1_000.0 * (-0.1f64).exp()).abs() < 1e-6,
            "{second}"
        );
    }

    #[test]
    fn a_new_assigner_term_is_a_new_baseline() {
        let mut throughput = Throughput::new(Duration::from_secs(10));
        throughput.observe(&answer(1, 1_000, vec![worker("a", 5_000, 1)]));
        let first = throughput.observe(&answer(1, 2_000, vec![worker("a", 5_500, 1)]));
        assert_eq!(first, Some(500.0));
        // The counters restarted at 0 under epoch 2: no negative or huge sample.
        assert_eq!(
            throughput.observe(&answer(2, 3_000, vec![worker("a", 10, 1)])),
            first
        );
        let next = throughput
            .observe(&answer(2, 4_000, vec![worker("a", 510, 1)]))
            .unwrap();
        assert!((next - 500.0).abs() < 1e-9);
    }

    #[test]
    fn without_busy_workers_the_estimate_is_kept() {
        let mut throughput = Throughput::new(Duration::from_secs(10));
        throughput.observe(&answer(1, 1_000, vec![worker("a", 0, 1)]));
        throughput.observe(&answer(1, 2_000, vec![worker("a", 300, 1)]));
        assert_eq!(throughput.observe(&answer(1, 3_000, vec![])), Some(300.0));
        assert_eq!(
            throughput.observe(&answer(1, 4_000, vec![worker("z", 0, 0)])),
            Some(300.0)
        );
    }
}
