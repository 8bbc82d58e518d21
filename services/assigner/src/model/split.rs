//! The tail of a job (issue 14 items 1 and 2): **straggler splitting** and **adaptive partition
//! size**, both driven by the throughput measured from checkpoints.
//!
//! * **Measuring.** Every round, each granted partition is observed under its current token: when
//!   the observation began and where its resume point was then (restarted until the checkpoint
//!   first moves: a grant queued behind another on its worker has not started). Its rate is the
//!   IDs its checkpoint moved since, over the time since (known once `observe_min_ms` passed and
//!   it moved). A job's rate per partition is the sum of the IDs over the sum of the times of its
//!   observed partitions (the last value is kept while none runs).
//! * **Splitting** ([`choose_splits`], pure). When workers have free slots and no grantable
//!   partition is waiting for them, the running partitions whose remaining IDs (above the last
//!   checkpoint) would take at least `split_min_remaining_ms` at their measured rate are split,
//!   longest first, at most `splits_per_round` per round, each into
//!   `min(free slots + 1, split_max_pieces, remaining ÷ split_min_ids)` pieces (never a piece
//!   below `split_min_ids`, never when no slot is free). A split is the ordinary hand-over: the
//!   partition is **revoked** (cause `split`), the owner releases it with its checkpoint, and once
//!   it is pending (released, or reclaimed from a dead owner) it is **re-cut**
//!   ([`piece_ranges`], pure): the partition keeps its key and its checkpoint and shrinks to its
//!   done prefix plus the first piece; the rest of the remainder becomes new partitions in the
//!   **next** round. Two rounds on purpose: the shrunk record is stored (its flush succeeded, or
//!   the term ended) before any partition over the released IDs exists, so a failure between the
//!   two leaves a gap (repaired by the audit of the next term), never an overlap. Completing,
//!   failing or a new grant cancels a split not yet re-cut.
//! * **Adaptive size** ([`adaptive_size`], pure). With `target_partition_ms` set, a partition cut
//!   for a job whose rate is known gets `rate × target` IDs, within `[min_partition_ids,
//!   max_partition_ids]`; before the first measurement the job's `partition_size` is used.
//!
//! Coverage stays exact: the re-cut replaces the partition's live range in the job's coverage
//! by its shrunk range, and every new piece is admitted by the same coverage check as any new
//! partition. `id_status` answers from the live partitions as always (during the one round
//! between the re-cut and the new pieces, the IDs of the later pieces are `not planned`).

use super::grants::RevokeCause;
use super::{AssignerState, PartitionKey};
use elk_protocol::messages::{JobState, PartitionStatus};
use elk_types::{IdRange, JobName};
use std::collections::BTreeMap;

/// Tunables of splitting and adaptive size (`[assigner.tails]`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TailPolicy {
    /// Split stragglers at all.
    pub split: bool,
    /// Split a partition only when its remaining IDs would take at least this long (ms) at its
    /// measured rate.
    pub split_min_remaining_ms: u64,
    /// No piece of a split has fewer IDs.
    pub split_min_ids: u64,
    /// A split makes at most this many pieces (the kept partition included).
    pub split_max_pieces: u32,
    /// Partitions split per round at most.
    pub splits_per_round: usize,
    /// A rate is trusted only after observing a partition this long (ms).
    pub observe_min_ms: u64,
    /// Size new partitions to take about this long (ms) at the job's measured rate; `None`: the
    /// job's `partition_size`.
    pub target_partition_ms: Option<u64>,
    pub min_partition_ids: u64,
    pub max_partition_ids: u64,
}

impl Default for TailPolicy {
    /// Both off (the configuration's default).
    fn default() -> Self {
        Self {
            split: false,
            split_min_remaining_ms: 5_000,
            split_min_ids: 100,
            split_max_pieces: 16,
            splits_per_round: 4,
            observe_min_ms: 1_000,
            target_partition_ms: None,
            min_partition_ids: 100,
            max_partition_ids: 1_000_000,
        }
    }
}

/// A running partition as the split decision sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Running<K> {
    pub key: K,
    /// IDs above its last checkpoint.
    pub remaining: u64,
    /// IDs its checkpoint moved during the observation.
    pub done: u64,
    /// How long it has been observed (ms).
    pub observed_ms: u64,
}

impl<K> Running<K> {
    /// The time its remaining IDs take at its measured rate (ms), once the rate is known.
    pub fn remaining_ms(&self, observe_min_ms: u64) -> Option<u64> {
        if self.done == 0 || self.observed_ms < observe_min_ms.max(1) {
            return None;
        }
        let estimate =
            u128::from(self.remaining) * u128::from(self.observed_ms) / u128::from(self.done);
        Some(u64::try_from(estimate).unwrap_or(u64::MAX))
    }
}

/// A decided split: revoke `key`, re-cut its remainder into `pieces`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SplitPlan<K> {
    pub key: K,
    pub pieces: u32,
}

/// Which running partitions to split and into how many pieces, given the `free_slots` of the
/// fleet (slots no granted or grantable partition takes). Longest remaining time first; ties by
/// key. Each split uses `pieces − 1` free slots (its owner keeps one piece's slot).
pub(crate) fn choose_splits<K: Clone + Ord>(
    policy: &TailPolicy,
    free_slots: u64,
    running: &[Running<K>],
) -> Vec<SplitPlan<K>> {
    if !policy.split || free_slots == 0 || policy.split_max_pieces < 2 {
        return Vec::new();
    }
    let min_ids = policy.split_min_ids.max(1);
    let mut candidates: Vec<(u64, &Running<K>)> = running
        .iter()
        .filter_map(|partition| {
            let remaining_ms = partition.remaining_ms(policy.observe_min_ms)?;
            let worth =
                remaining_ms >= policy.split_min_remaining_ms && partition.remaining >= 2 * min_ids;
            worth.then_some((remaining_ms, partition))
        })
        .collect();
    candidates.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.key.cmp(&b.1.key)));
    let mut free = free_slots;
    let mut plans = Vec::new();
    for (_, partition) in candidates {
        if free == 0 || plans.len() >= policy.splits_per_round {
            break;
        }
        let by_size = partition.remaining / min_ids;
        let pieces = (free + 1)
            .min(u64::from(policy.split_max_pieces))
            .min(by_size);
        if pieces < 2 {
            continue;
        }
        free -= pieces - 1;
        plans.push(SplitPlan {
            key: partition.key.clone(),
            pieces: u32::try_from(pieces).expect("at most split_max_pieces"),
        });
    }
    plans
}

/// The re-cut of a released partition over `range` whose next ID to process is `resume` into
/// (up to) `pieces` pieces of equal size (±1 ID), none below `min_ids`: the range it keeps (its done
/// prefix and the first piece) and the new ranges after it, in order. `None` when fewer than two
/// pieces fit.
pub(crate) fn piece_ranges(
    range: IdRange,
    resume: u64,
    pieces: u32,
    min_ids: u64,
) -> Option<(IdRange, Vec<IdRange>)> {
    let resume = resume.max(range.first());
    if resume > range.last() {
        return None;
    }
    let remaining = range.last() - resume + 1;
    let pieces = u64::from(pieces).min(remaining / min_ids.max(1));
    if pieces < 2 {
        return None;
    }
    // Sizes differ by at most one ID (the first `extra` pieces take one more), so none is below
    // `remaining ÷ pieces`, which is at least `min_ids`.
    let (base, extra) = (remaining / pieces, remaining % pieces);
    let mut bounds = Vec::with_capacity(pieces as usize);
    let mut first = resume;
    for piece in 0..pieces {
        let last = first + base - 1 + u64::from(piece < extra);
        bounds.push((first, last));
        first = last + 1;
    }
    debug_assert_eq!(first - 1, range.last());
    let kept = IdRange::new(range.first(), bounds[0].1).expect("ordered");
    let rest = bounds[1..]
        .iter()
        .map(|(first, last)| IdRange::new(*first, *last).expect("ordered"))
        .collect();
    Some((kept, rest))
}

/// The size of a partition cut now for a job whose measured rate is `ids_per_ms` (per
/// partition): `rate × target` within `[min, max]`, or `partition_size` while adaptive size is
/// off or nothing was measured yet.
pub(crate) fn adaptive_size(
    policy: &TailPolicy,
    partition_size: u64,
    ids_per_ms: Option<f64>,
) -> u64 {
    let (Some(target_ms), Some(rate)) = (policy.target_partition_ms, ids_per_ms) else {
        return partition_size;
    };
    if !rate.is_finite() || rate <= 0.0 {
        return partition_size;
    }
    let min = policy.min_partition_ids.max(1);
    let max = policy.max_partition_ids.max(min);
    let ideal = rate * target_ms as f64;
    // `as` saturates for floats beyond u64.
    (ideal.round() as u64).clamp(min, max)
}

/// One granted partition under observation.
#[derive(Debug, Clone)]
struct Observation {
    token: elk_types::PartitionLeaseToken,
    since_ms: u64,
    /// Its resume point when the observation began.
    from: u64,
}

/// What the model keeps for splitting and sizing (memory only: a new term measures afresh).
#[derive(Debug, Default)]
pub(crate) struct Tails {
    observed: BTreeMap<PartitionKey, Observation>,
    /// Revoked to be split, into this many pieces, once pending.
    wanted: BTreeMap<PartitionKey, u32>,
    /// Remainders of re-cut partitions: new partitions over them next round, of this size.
    remainders: Vec<(JobName, Vec<IdRange>)>,
    /// Measured IDs per ms per partition, per job.
    rates: BTreeMap<JobName, f64>,
}

impl AssignerState {
    /// The size of the next partition cut for `job` (adaptive when configured).
    pub(super) fn cut_size(&self, job: &JobName) -> u64 {
        let spec_size = self.jobs[job].value.spec.partition_size;
        adaptive_size(
            &self.policy.tails,
            spec_size,
            self.tails.rates.get(job).copied(),
        )
    }

    /// The measured rate (IDs per ms per partition) of `job`, if any.
    #[cfg(test)]
    pub(super) fn measured_rate(&self, job: &JobName) -> Option<f64> {
        self.tails.rates.get(job).copied()
    }

    /// Creates the partitions of remainders re-cut in an earlier round (whose shrunk partition
    /// is stored by now).
    pub(super) fn cut_split_remainders(&mut self) {
        for (job, ranges) in std::mem::take(&mut self.tails.remainders) {
            if !self.jobs.contains_key(&job) || self.jobs[&job].value.is_terminal() {
                continue;
            }
            for range in ranges {
                if self.create_partition(&job, range) {
                    self.counters.split_pieces += 1;
                }
            }
        }
    }

    /// Re-cuts the partitions revoked for a split that are pending now; forgets the ones that
    /// completed, failed or went away meanwhile.
    pub(super) fn recut_released(&mut self) {
        let wanted = std::mem::take(&mut self.tails.wanted);
        for (key, pieces) in wanted {
            let Some(record) = self.partitions.get(&key).map(|p| p.value.clone()) else {
                continue;
            };
            match record.status {
                PartitionStatus::Revoking => {
                    self.tails.wanted.insert(key, pieces);
                    continue;
                }
                PartitionStatus::Pending => {}
                _ => continue,
            }
            let resume = record.resume_point();
            let min_ids = self.policy.tails.split_min_ids;
            let Some((kept, rest)) = piece_ranges(record.range, resume, pieces, min_ids) else {
                continue;
            };
            let Some(coverage) = self.coverage_of(&key.job) else {
                continue;
            };
            if coverage.remove_live(record.range).is_err() {
                continue;
            }
            coverage
                .insert_live(kept)
                .expect("a shrunk range inside its own freed range fits");
            self.update_partition(&key, |record| record.range = kept);
            tracing::info!(partition = %key, from = %record.range, %kept, pieces = rest.len() + 1, "straggler re-cut");
            self.tails.remainders.push((key.job.clone(), rest));
        }
    }

    /// Observes the granted partitions (rates per partition and per job), then splits
    /// stragglers when slots are free (see the module header).
    pub(super) fn split_stragglers(&mut self) {
        let tails = &self.policy.tails;
        if !tails.split && tails.target_partition_ms.is_none() {
            // Nothing measured is used: nothing to observe.
            return;
        }
        let running = self.observe_running();
        if !self.policy.tails.split || self.placement_frozen() {
            return;
        }
        let free = self.free_slots();
        for plan in choose_splits(&self.policy.tails, free, &running) {
            tracing::info!(partition = %plan.key, pieces = plan.pieces, "straggler: revoked to be split");
            self.counters.splits += 1;
            self.revoke(&plan.key, RevokeCause::Split);
            self.tails.wanted.insert(plan.key, plan.pieces);
        }
    }

    /// Updates the observations of granted partitions and the per-job rates; returns the
    /// partitions a split may take (granted, job active, owner taking grants, not being split).
    fn observe_running(&mut self) -> Vec<Running<PartitionKey>> {
        let now = self.now_ms;
        let mut observed = BTreeMap::new();
        let mut running = Vec::new();
        let mut totals: BTreeMap<JobName, (u64, u64)> = BTreeMap::new();
        // Granted partitions only, through the index (not every live partition).
        let granted = self.grants_by_worker.values().flatten();
        for (key, record) in granted.filter_map(|key| Some((key, &self.partitions.get(key)?.value)))
        {
            let Some(owner) = &record.owner else { continue };
            let resume = record.resume_point();
            let observation = match self.tails.observed.remove(key) {
                // Measured from its first move: a grant queued on its worker (the second slot of
                // `grants_per_capacity`) has not started, and its wait is no part of its rate.
                Some(seen) if seen.token == record.token && resume > seen.from => seen,
                _ => Observation {
                    token: record.token,
                    since_ms: now,
                    from: resume,
                },
            };
            let done = resume.saturating_sub(observation.from);
            let observed_ms = now.saturating_sub(observation.since_ms);
            if done > 0 && observed_ms >= self.policy.tails.observe_min_ms.max(1) {
                let total = totals.entry(key.job.clone()).or_default();
                total.0 += done;
                total.1 += observed_ms;
            }
            let splittable = !self.tails.wanted.contains_key(key)
                && self
                    .workers
                    .get(&owner.id)
                    .is_some_and(|w| w.takes_grants())
                && self
                    .jobs
                    .get(&key.job)
                    .is_some_and(|job| job.value.state == JobState::Active);
            if splittable {
                running.push(Running {
                    key: key.clone(),
                    remaining: (record.range.last() + 1).saturating_sub(resume),
                    done,
                    observed_ms,
                });
            }
            observed.insert(key.clone(), observation);
        }
        self.tails.observed = observed;
        for (job, (ids, ms)) in totals {
            self.tails.rates.insert(job, ids as f64 / ms as f64);
        }
        self.tails
            .rates
            .retain(|job, _| self.jobs.contains_key(job));
        running
    }

    /// Slots of workers taking grants that no granted or revoking partition of theirs takes
    /// (counting `capacity`, not the queue of `grants_per_capacity`), minus the grantable
    /// partitions waiting for a slot.
    pub(super) fn free_slots(&self) -> u64 {
        let mut held: BTreeMap<&elk_types::MemberId, u64> = self
            .grants_by_worker
            .iter()
            .map(|(worker, keys)| (worker, keys.len() as u64))
            .collect();
        for key in self.revoking_since.keys() {
            if let Some(owner) = self
                .partitions
                .get(key)
                .and_then(|p| p.value.owner.as_ref())
            {
                *held.entry(&owner.id).or_default() += 1;
            }
        }
        let free: u64 = self
            .workers
            .iter()
            .filter(|(_, info)| info.takes_grants())
            .map(|(id, info)| {
                u64::from(info.capacity.get()).saturating_sub(held.get(id).copied().unwrap_or(0))
            })
            .sum();
        free.saturating_sub(self.pending.len() as u64 + self.tails.coming())
    }
}

impl Tails {
    /// Partitions about to exist besides the pending ones: the remainders' pieces, and the
    /// pieces of splits waiting for their release.
    fn coming(&self) -> u64 {
        let remainders: usize = self.remainders.iter().map(|(_, ranges)| ranges.len()).sum();
        let wanted: u64 = self
            .wanted
            .values()
            .map(|pieces| u64::from(pieces - 1))
            .sum();
        remainders as u64 + wanted
    }
}
