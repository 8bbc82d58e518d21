//! The churn budget (issue 14 item 4): a cap on the partitions the balance moves per round.
//!
//! The placement solver (`grants.rs`, `elk-placement`) already moves the fewest partitions that
//! reach the balance, but all of them in one round: a fleet that doubles moves half its
//! partitions at once, and each move stops a partition's processing for a hand-over. With a cap
//! (`[assigner.rebalance]`: `max_moves_per_round`, `max_moves_fraction` of the granted
//! partitions; the smaller one, at least 1), a round starts at most *cap minus the rebalancing
//! hand-overs still in flight* moves, so at most `cap` partitions are ever between owners for
//! balance. The moves left over are deferred; the next round's solution wants them again (the
//! solver is sticky, so it sheds the same partitions of the same workers) and the fleet
//! converges one wave per round, within `ceil(minimum moves / cap)` waves.
//!
//! Only moves made *to even out load* count. Reclaims of departed workers' partitions (they are
//! never revoked: they are pending again), drains, revokes of paused or cancelled jobs and
//! straggler splits (bounded by `splits_per_round` on their own) are never capped or delayed:
//! recovery and the operator's levers come first.
//!
//! Which moves go first: each one is taken from the worker most loaded per slot at that point
//! (ties: the one with more to shed, then the smaller id), so every wave lowers the peak load as
//! far as its budget allows.
//!
//! **Tail hold** (issue 10 item 6). Once no pending partition waits for a slot, every completion
//! shrinks the active set and with it every worker's quota, so the solver keeps finding workers
//! "over quota" at a job's end: it revoked running partitions seconds (or milliseconds) before
//! they finished, and queued ones onto workers whose slots were all busy — work redone from the
//! last checkpoint and hand-overs that end after the partition would have, on a fleet nobody
//! joined (`elk-bench overhead`: 40–45 revokes in the last wave, half of them running). Moving
//! a running partition never finishes the work sooner: it already has a slot. So while **(a)**
//! no grantable partition is left waiting and **(b)** the fleet (the workers taking grants: id,
//! incarnation, slots, job filter) is the one the balance last **settled** for (a round that
//! wanted no move with no rebalancing hand-over in flight), the balance only moves grants that
//! cannot be running — beyond their worker's `capacity`, waiting in its queue — and no more than
//! there are idle slots (capacity no grant, hand-over or pending partition takes), minus the
//! rebalancing hand-overs in flight: a grant queued behind a long partition still goes to a
//! worker that has nothing to do. A join, a
//! departure, a new incarnation, a drain or a capacity change unsettles it, and the balance moves
//! as before until it settles again; so does a new leader (it has seen no fleet yet).

use super::PartitionKey;
use elk_types::MemberId;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::hash::{DefaultHasher, Hash, Hasher};

/// The churn budget's settings; the default caps nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct RebalancePolicy {
    /// Rebalancing moves per round at most (absolute).
    pub max_moves_per_round: Option<u64>,
    /// Rebalancing moves per round at most, as a fraction (0, 1] of the granted partitions.
    pub max_moves_fraction: Option<f64>,
}

impl RebalancePolicy {
    /// The cap of a round in which `granted` partitions are held by live workers: the smaller of
    /// both limits, at least 1 so that any imbalance is worked off; `None` when uncapped.
    pub fn cap(&self, granted: u64) -> Option<u64> {
        // Rounding down: a fraction is a ceiling the fleet never exceeds (but for the floor of 1).
        let fraction = self
            .max_moves_fraction
            .map(|fraction| (fraction * granted as f64).floor() as u64);
        let cap = match (self.max_moves_per_round, fraction) {
            (None, None) => return None,
            (Some(absolute), None) => absolute,
            (None, Some(fraction)) => fraction,
            (Some(absolute), Some(fraction)) => absolute.min(fraction),
        };
        Some(cap.max(1))
    }
}

/// What one round did about the balance, for `elk_assigner_rebalance_moves` (recorded for the
/// rounds that started moves).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RebalanceRound {
    /// Rebalancing revokes started.
    pub moved: u64,
    /// Moves the balance wanted that the budget held back to a later round.
    pub deferred: u64,
}

/// The budget's memory across rounds.
#[derive(Debug, Default)]
pub(super) struct Churn {
    /// Partitions revoked to rebalance whose hand-over has not finished (still `revoking` and
    /// not yet overdue): they spend this round's budget.
    in_flight: BTreeSet<PartitionKey>,
    /// Rounds that started moves since the metrics last took them.
    rounds: Vec<RebalanceRound>,
    /// The fleet of the last round, as a [`fleet_signature`].
    fleet: Option<u64>,
    /// That fleet has been balanced since it last changed (tail hold, module header).
    settled: bool,
}

/// A digest of the workers placement sees: what changes quotas other than the partitions.
pub(super) fn fleet_signature<'a>(
    workers: impl Iterator<Item = (&'a MemberId, u64, u64, &'a [elk_types::JobName])>,
) -> u64 {
    let mut hasher = DefaultHasher::new();
    for (id, incarnation, slots, jobs) in workers {
        (id, incarnation, slots, jobs).hash(&mut hasher);
    }
    hasher.finish()
}

impl Churn {
    /// Forgets hand-overs that ended (released, completed, failed, reclaimed) or are overdue: a
    /// worker that never answers a revoke must not stop the balance (its partition waits for
    /// the release or expiry regardless, `revoke_timeout`). `revoking` maps a revoking
    /// partition to whether its revoke is overdue.
    pub fn settle(&mut self, revoking: impl Fn(&PartitionKey) -> Option<bool>) {
        self.in_flight
            .retain(|key| revoking(key).is_some_and(|overdue| !overdue));
    }

    /// Notes the round's fleet: a different one than last round's is not settled.
    pub fn observe_fleet(&mut self, signature: u64) {
        if self.fleet != Some(signature) {
            self.fleet = Some(signature);
            self.settled = false;
        }
    }

    /// The round's solution wanted no move: with no rebalancing hand-over in flight the balance
    /// is settled for this fleet.
    pub fn nothing_wanted(&mut self) {
        if self.in_flight.is_empty() {
            self.settled = true;
        }
    }

    /// Whether the tail hold applies (module header); `waiting`: grantable partitions were left
    /// pending this round.
    pub fn holds(&self, waiting: bool) -> bool {
        self.settled && !waiting
    }

    /// Moves this round may start under `cap` (`None`: every one).
    pub fn budget(&self, cap: Option<u64>) -> Option<u64> {
        cap.map(|cap| cap.saturating_sub(self.in_flight.len() as u64))
    }

    /// A rebalancing revoke started.
    pub fn started(&mut self, key: PartitionKey) {
        self.in_flight.insert(key);
    }

    pub fn record(&mut self, round: RebalanceRound) {
        self.rounds.push(round);
    }

    pub fn take_rounds(&mut self) -> Vec<RebalanceRound> {
        std::mem::take(&mut self.rounds)
    }
}

/// A worker the balance wants moves from: what it holds now and the partitions it should shed.
#[derive(Debug)]
pub(super) struct Source {
    pub worker: MemberId,
    /// Partitions it holds at the start of the round (kept ones and those it should shed).
    pub load: u64,
    /// `capacity × grants_per_capacity`.
    pub slots: u64,
    /// The partitions the solver takes from it, in the order they are to go.
    pub sheds: Vec<PartitionKey>,
}

impl Source {
    /// Load per slot, compared exactly: `a.load / a.slots` vs `b.load / b.slots`.
    fn cmp_load(&self, other: &Self) -> Ordering {
        let left = u128::from(self.load) * u128::from(other.slots.max(1));
        let right = u128::from(other.load) * u128::from(self.slots.max(1));
        left.cmp(&right)
    }
}

/// Heap order: the most loaded per slot first, then the one with more to shed, then the smaller
/// worker id.
impl Ord for Source {
    fn cmp(&self, other: &Self) -> Ordering {
        self.cmp_load(other)
            .then(self.sheds.len().cmp(&other.sheds.len()))
            .then_with(|| other.worker.cmp(&self.worker))
    }
}

impl PartialOrd for Source {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Source {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Source {}

/// The moves to start under `budget` (`None`: all), each from the most loaded worker per slot at
/// that point; the rest are deferred, returned per worker. Pure: the property tests drive it.
pub(super) fn choose_moves(
    sources: Vec<Source>,
    budget: Option<u64>,
) -> (Vec<(PartitionKey, MemberId)>, BTreeMap<MemberId, u64>) {
    let wanted: usize = sources.iter().map(|source| source.sheds.len()).sum();
    let budget = budget.map_or(wanted, |budget| {
        usize::try_from(budget).unwrap_or(usize::MAX).min(wanted)
    });
    let mut chosen = Vec::with_capacity(budget);
    let mut heap: BinaryHeap<Source> = sources
        .into_iter()
        .filter(|source| !source.sheds.is_empty())
        .map(|mut source| {
            // Popped from the end: the first in the solver's order goes first.
            source.sheds.reverse();
            source
        })
        .collect();
    while chosen.len() < budget {
        let Some(mut source) = heap.pop() else { break };
        let key = source
            .sheds
            .pop()
            .expect("only sources with sheds are queued");
        chosen.push((key, source.worker.clone()));
        source.load -= 1;
        if !source.sheds.is_empty() {
            heap.push(source);
        }
    }
    let deferred = heap
        .into_iter()
        .map(|source| (source.worker, source.sheds.len() as u64))
        .collect();
    (chosen, deferred)
}
