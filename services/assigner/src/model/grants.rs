//! Granting and balancing with the sticky placement engine (`elk-placement`).
//!
//! Each round solves over the *active set*: every partition granted to a live, non-draining
//! worker plus as many pending partitions (in key order) as the workers have free slots, with each
//! worker's slots (`capacity × grants_per_capacity`) as its weight. The solver keeps every
//! partition where it is unless its owner is over quota, so:
//! * a pending partition placed on a worker is **granted** (fresh token);
//! * a granted partition placed elsewhere is **revoked**: it leaves the owner's record and turns
//!   `revoking`; the owner releases it with its checkpoint, it becomes pending, and a later round
//!   grants it where there is room. It is never granted while the old owner may still run it.
//!
//! Workers that declared jobs only ever receive partitions of those jobs; the balance is computed
//! as if every worker processed every job.
//!
//! The churn budget (`churn.rs`, off by default) caps the revokes of one round; the moves it
//! defers stay with their owners and are wanted again by the next round's solution. At a job's
//! end on a fleet that did not change (the tail hold, `churn.rs`) only grants waiting in a
//! worker's queue move, and only to idle slots.

use super::churn::{RebalanceRound, Source, choose_moves, fleet_signature};
use super::{AssignerState, PartitionKey, spans};
use elk_placement::{Partition, Worker, solve};
use elk_protocol::messages::{JobState, MemberRef, PartitionStatus};
use elk_types::{JobName, MemberId};
use std::collections::{BTreeMap, BTreeSet};

impl AssignerState {
    /// Grants pending partitions and revokes from over-quota workers (see the module header).
    pub(super) fn plan_grants(&mut self) {
        let slots_per_capacity = self.policy.grants_per_capacity.max(1);
        let workers: Vec<Worker<MemberId>> = self
            .workers
            .iter()
            .filter(|(_, info)| info.takes_grants() && info.capacity.get() > 0)
            .map(|(id, info)| {
                Worker::new(
                    id.clone(),
                    info.capacity.get().saturating_mul(slots_per_capacity),
                )
            })
            .collect();
        if workers.is_empty() {
            return;
        }
        self.churn
            .observe_fleet(fleet_signature(workers.iter().map(|worker| {
                let info = &self.workers[&worker.id];
                (
                    &worker.id,
                    info.incarnation.0,
                    u64::from(worker.capacity),
                    info.jobs.as_slice(),
                )
            })));
        let total_slots: u64 = workers
            .iter()
            .map(|worker| u64::from(worker.capacity))
            .sum();

        let mut active: Vec<(PartitionKey, Option<MemberId>)> = Vec::new();
        let mut stopped_jobs: Vec<PartitionKey> = Vec::new();
        for worker in &workers {
            let incarnation = self.workers[&worker.id].incarnation;
            for key in self.grants_by_worker.get(&worker.id).into_iter().flatten() {
                if !self.job_is_active(&key.job) {
                    stopped_jobs.push(key.clone());
                    continue;
                }
                let current = self.partitions[key].value.owner.as_ref();
                if current.is_some_and(|owner| owner.incarnation == incarnation) {
                    active.push((key.clone(), Some(worker.id.clone())));
                }
            }
        }
        // Paused or cancelled while granted (e.g. seen at load): hand them back.
        for key in &stopped_jobs {
            self.revoke(key, RevokeCause::JobStopped);
        }
        // Partitions being handed over take a place in the balance (their future owner's), so
        // the solver does not revoke more while they are in flight.
        let in_flight: Vec<PartitionKey> = self
            .revoking_keys()
            .filter(|key| self.job_is_active(&key.job))
            .collect();
        let moving: BTreeSet<PartitionKey> = in_flight.iter().cloned().collect();
        active.extend(in_flight.into_iter().map(|key| (key, None)));
        let room = total_slots.saturating_sub(active.len() as u64) as usize;
        let mut candidates = self
            .pending
            .iter()
            .filter(|key| self.job_is_active(&key.job));
        let grantable: Vec<PartitionKey> = candidates.by_ref().take(room).cloned().collect();
        // Grantable partitions left waiting for a slot: not a job's tail (`churn.rs`).
        let waiting = candidates.next().is_some();
        active.extend(grantable.into_iter().map(|key| (key, None)));
        if active.is_empty() {
            return;
        }
        active.sort_by(|a, b| a.0.cmp(&b.0));
        let partitions: Vec<Partition<MemberId>> = active
            .iter()
            .enumerate()
            .map(|(position, (_, owner))| Partition::new(position as u64, owner.clone()))
            .collect();
        let assignment = match solve(&workers, &partitions) {
            Ok(assignment) => assignment,
            Err(error) => {
                tracing::error!(%error, "placement failed; no grants this round");
                return;
            }
        };

        let frozen = self.placement_frozen();
        let granted = active.iter().filter(|(_, owner)| owner.is_some()).count() as u64;
        // Partitions held per worker after this round, for the fallback below.
        let mut held: BTreeMap<MemberId, u64> = BTreeMap::new();
        let mut unplaced: Vec<PartitionKey> = Vec::new();
        // The balance's moves, per owner in the solver's order; the churn budget picks which
        // start this round (`churn.rs`).
        let mut wanted: BTreeMap<MemberId, Vec<PartitionKey>> = BTreeMap::new();
        for (position, (key, previous)) in active.into_iter().enumerate() {
            let target = assignment.owner(position).map(|index| &workers[index].id);
            let compatible = target.is_some_and(|target| self.workers[target].processes(&key.job));
            match (previous, target) {
                (Some(previous), Some(target)) if &previous == target => {
                    *held.entry(previous).or_default() += 1;
                }
                // Move only to a worker that processes the job; otherwise it stays put (and while
                // placement is frozen, always).
                (Some(previous), Some(_)) if compatible && !frozen => {
                    wanted.entry(previous).or_default().push(key);
                }
                (Some(previous), _) => *held.entry(previous).or_default() += 1,
                // A hand-over in flight: its place is reserved, the grant waits for the release.
                (None, Some(target)) if moving.contains(&key) => {
                    *held.entry(target.clone()).or_default() += 1;
                }
                (None, _) if moving.contains(&key) => {}
                // Frozen: pending partitions go to the least loaded workers with room (below),
                // since the balance counted on moves that are not made.
                (None, Some(target)) if compatible && !frozen => {
                    *held.entry(target.clone()).or_default() += 1;
                    let target = target.clone();
                    self.grant(&key, target);
                }
                (None, _) => unplaced.push(key),
            }
        }
        self.start_rebalance_moves(wanted, &workers, granted, waiting, &mut held);
        // Workers that declared jobs: a partition the balance put on a worker that does not
        // process its job goes to the least loaded worker that does and has a free slot.
        for key in unplaced {
            let candidate = workers
                .iter()
                .filter(|worker| self.workers[&worker.id].processes(&key.job))
                .map(|worker| (held.get(&worker.id).copied().unwrap_or(0), worker))
                .filter(|(load, worker)| *load < u64::from(worker.capacity))
                .min_by_key(|(load, worker)| {
                    (*load * 1_000_000 / u64::from(worker.capacity), &worker.id)
                })
                .map(|(_, worker)| worker.id.clone());
            if let Some(target) = candidate {
                *held.entry(target.clone()).or_default() += 1;
                self.grant(&key, target);
            }
        }
    }

    /// Revokes the moves the churn budget allows this round (all of them when uncapped; under
    /// the tail hold only queued grants, to idle slots), the most useful first, and counts the
    /// others as still held by their owners.
    fn start_rebalance_moves(
        &mut self,
        wanted: BTreeMap<MemberId, Vec<PartitionKey>>,
        workers: &[Worker<MemberId>],
        granted: u64,
        waiting: bool,
        held: &mut BTreeMap<MemberId, u64>,
    ) {
        self.churn
            .settle(|key| self.revoking_since.get(key).map(|(_, overdue)| *overdue));
        if wanted.is_empty() {
            // While frozen the solver's moves are never wanted: that is no balance.
            if !self.placement_frozen() {
                self.churn.nothing_wanted();
            }
            return;
        }
        let hold = self.churn.holds(waiting);
        let budget = if hold {
            // Queued grants to idle slots only (`churn.rs`, tail hold).
            self.churn.budget(Some(self.free_slots()))
        } else {
            self.churn.budget(self.policy.rebalance.cap(granted))
        };
        let slots: BTreeMap<&MemberId, u64> = workers
            .iter()
            .map(|worker| (&worker.id, u64::from(worker.capacity)))
            .collect();
        let mut sources = Vec::with_capacity(wanted.len());
        for (worker, mut sheds) in wanted {
            let load = held.get(&worker).copied().unwrap_or(0) + sheds.len() as u64;
            if hold {
                // Only as many as cannot be running (beyond its `capacity`): the highest keys
                // the solver sheds, in a job cut in order its latest grants.
                let capacity = u64::from(self.workers[&worker].capacity.get());
                let queued = usize::try_from(load.saturating_sub(capacity)).unwrap_or(usize::MAX);
                if sheds.len() > queued {
                    let stay = sheds.len() - queued;
                    *held.entry(worker.clone()).or_default() += stay as u64;
                    sheds.drain(..stay);
                }
            }
            sources.push(Source {
                load,
                slots: slots.get(&worker).copied().unwrap_or(1),
                worker,
                sheds,
            });
        }
        let (chosen, deferred) = choose_moves(sources, budget);
        for (key, _) in &chosen {
            self.revoke(key, RevokeCause::Rebalance);
            self.churn.started(key.clone());
        }
        let mut deferred_moves = 0;
        for (worker, count) in deferred {
            deferred_moves += count;
            *held.entry(worker).or_default() += count;
        }
        // A round spent waiting for the last wave's hand-overs records nothing: the metric
        // counts waves.
        if !chosen.is_empty() {
            self.churn.record(RebalanceRound {
                moved: chosen.len() as u64,
                deferred: deferred_moves,
            });
        }
    }

    fn job_is_active(&self, job: &JobName) -> bool {
        self.jobs
            .get(job)
            .is_some_and(|job| job.value.state == JobState::Active)
    }

    fn grant(&mut self, key: &PartitionKey, worker: MemberId) {
        let incarnation = self.workers[&worker].incarnation;
        let previous = self.partitions.get(key).map(|stored| stored.value.token);
        let token = self.next_token(previous.unwrap_or_default());
        let owner = MemberRef {
            id: worker,
            incarnation,
        };
        self.counters.grants += 1;
        self.transition(key, PartitionStatus::Granted, |record| {
            let resume_from = super::workers::resume_point(record);
            spans::grant(record, owner.id.as_str(), token.get(), resume_from);
            record.owner = Some(owner);
            record.token = token;
            record.error = None;
        });
    }

    /// Takes a granted partition off its owner's record; it stays `revoking` (still owned, same
    /// token) until the owner releases it or its membership ends. `cause` is counted and named
    /// in the partition's trace.
    pub(super) fn revoke(&mut self, key: &PartitionKey, cause: RevokeCause) {
        self.counters.revocations += 1;
        match cause {
            RevokeCause::Rebalance => {}
            RevokeCause::Drain => self.counters.revocations_drain += 1,
            RevokeCause::Split => self.counters.revocations_split += 1,
            RevokeCause::JobPaused | RevokeCause::JobCancelled | RevokeCause::JobStopped => {
                self.counters.revocations_job_stopped += 1
            }
        }
        self.transition(key, PartitionStatus::Revoking, |record| {
            spans::grant_event("elk.partition.revoke", record, cause.reason());
        });
    }
}

/// Why a partition is revoked (counted per cause: `rebalance`, `drain`, or `job_stopped` for the
/// three job causes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RevokeCause {
    /// Its owner is over quota: the balance moves it.
    Rebalance,
    /// Its job was paused by an admin command.
    JobPaused,
    /// Its job was cancelled by an admin command.
    JobCancelled,
    /// Its job was found paused or cancelled while the partition was granted (e.g. at load).
    JobStopped,
    /// Its owner was asked to drain (`levers.rs`).
    Drain,
    /// A straggler re-cut over idle workers once released (`split.rs`).
    Split,
}

impl RevokeCause {
    /// The `elk.reason` of the partition's `elk.partition.revoke` span.
    fn reason(self) -> &'static str {
        match self {
            Self::Rebalance => "rebalance",
            Self::JobPaused => "job_paused",
            Self::JobCancelled => "job_cancelled",
            Self::JobStopped => "job_stopped",
            Self::Drain => "drain",
            Self::Split => "split",
        }
    }
}
