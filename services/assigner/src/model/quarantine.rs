//! Crash-loop containment: a partition whose holders keep dying while they hold it is parked.
//!
//! A processor that fails reports it and the partition is retried `max_attempts` times, then
//! parked (`plan.rs`). A processor that kills its process (an abort, the OOM killer, a segfault
//! in native code on one "key of death") reports nothing: its member key expires and the
//! partition is reclaimed and handed to the next worker, which dies too. So every reclaim of a
//! held partition is a *holder death*, kept in the record (`holder_deaths`, with who and when);
//! once `Policy::quarantine_after_deaths` deaths have happened with no progress in between, the
//! partition is parked as `failed` with `quarantined` set instead of granted again. The rest of
//! the job goes on; `retry` (the admin command) clears the deaths and releases it.
//!
//! **No progress in between.** A death after which the partition's checkpoint moved beyond where
//! the previous death left it is not the same crash: a long partition on a fleet whose machines
//! fail now and then must not be quarantined for their failures. A key of death stops every
//! holder at the same ID, so the checkpoint stops moving (within one checkpoint interval of the
//! poison) and the deaths add up.
//!
//! **Only what it was running is charged.** A worker holds up to `capacity ×
//! grants_per_capacity` grants but runs `capacity` of them; the rest wait in its queue, and the
//! SDK starts queued grants oldest first (protocol §5.5). Grant tokens grow with every grant, so
//! the partitions a dead worker was running are the `capacity` it held with the smallest tokens:
//! those carry its death; the queued ones go back to pending with their record unchanged (they
//! did nothing that could have killed it). The capacity is the one the departed incarnation had
//! in its last view; a leader that never saw it (it took over after the worker left) takes
//! `held / grants_per_capacity` rounded up, which is the capacity of a worker whose slots were all
//! full and never more than it.
//!
//! Off by default (`quarantine_after_deaths = 0`): under frequent infrastructure faults innocent
//! partitions die with their workers too (docs/decisions/quarantine.md).

use super::{AssignerState, PartitionKey, WorkerInfo};
use elk_protocol::messages::{HolderDeath, MemberRef, PartitionRecord, PartitionStatus};
use elk_types::{Incarnation, MemberId};
use std::collections::{BTreeMap, BTreeSet};

/// What becomes of a partition whose holder died holding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum AfterDeath {
    /// Back to pending (granted again), with these deaths on record.
    Retry(Vec<HolderDeath>),
    /// Parked as `failed`, quarantined, with these deaths on record.
    Quarantine(Vec<HolderDeath>),
}

/// The decision for `record`, whose holder `holder` died at `now_ms`: its deaths since its last
/// progress, this one included, and whether they reach `threshold` (`0`: never quarantine).
pub(super) fn after_death(
    record: &PartitionRecord,
    holder: &MemberRef,
    now_ms: u64,
    threshold: u32,
) -> AfterDeath {
    let progressed = record
        .holder_deaths
        .last()
        .is_some_and(|previous| record.checkpoint > previous.checkpoint);
    let mut deaths = if progressed {
        Vec::new()
    } else {
        record.holder_deaths.clone()
    };
    deaths.push(HolderDeath {
        member: holder.clone(),
        at_unix_ms: now_ms,
        checkpoint: record.checkpoint,
    });
    if threshold > 0 && deaths.len() >= threshold as usize {
        return AfterDeath::Quarantine(deaths);
    }
    if threshold == 0 {
        // Nothing is decided on them: keep the list bounded (the latest ones).
        let excess = deaths.len().saturating_sub(MAX_DEATHS_KEPT);
        deaths.drain(..excess);
    }
    AfterDeath::Retry(deaths)
}

/// With quarantine off, the deaths on record are still kept for operators, up to this many.
const MAX_DEATHS_KEPT: usize = 16;

impl AssignerState {
    /// Remembers the capacity of every worker incarnation that is not in the view `next` any
    /// more, until its reclaim; forgets those that are live again.
    pub(super) fn note_departed_capacities(&mut self, next: &BTreeMap<MemberId, WorkerInfo>) {
        let is_in = |id: &MemberId, incarnation: Incarnation| {
            next.get(id)
                .is_some_and(|info| info.incarnation == incarnation)
        };
        self.departed_capacity
            .retain(|(id, incarnation), _| !is_in(id, *incarnation));
        for (id, info) in &self.workers {
            if !is_in(id, info.incarnation) {
                self.departed_capacity
                    .insert((id.clone(), info.incarnation), info.capacity);
            }
        }
    }

    /// Of `held` (the partitions `member` held when it departed), those it was running: the
    /// `capacity` with the oldest grants (smallest tokens); when its capacity is unknown,
    /// `held / grants_per_capacity` rounded up (its capacity if its slots were full).
    pub(super) fn running_when_departed(
        &mut self,
        member: &MemberRef,
        held: &[PartitionKey],
    ) -> BTreeSet<PartitionKey> {
        let per_capacity = self.policy.grants_per_capacity.max(1) as usize;
        let capacity = self
            .departed_capacity
            .remove(&(member.id.clone(), member.incarnation))
            .map_or(held.len().div_ceil(per_capacity), |capacity| {
                capacity.get() as usize
            });
        let mut by_age: Vec<(u64, &PartitionKey)> = held
            .iter()
            .filter_map(|key| Some((self.partitions.get(key)?.value.token.get(), key)))
            .collect();
        by_age.sort();
        by_age
            .into_iter()
            .take(capacity)
            .map(|(_, key)| key.clone())
            .collect()
    }

    /// Takes `key` back from `holder`, which departed holding it: pending again, with the
    /// holder's death on record when it was running it (`death`), or quarantined (module header).
    pub(super) fn holder_died(&mut self, key: &PartitionKey, holder: &MemberRef, death: bool) {
        let Some(stored) = self.partitions.get(key) else {
            return;
        };
        let decision = if death {
            after_death(
                &stored.value.record(key),
                holder,
                self.now_ms,
                self.policy.quarantine_after_deaths,
            )
        } else {
            AfterDeath::Retry(stored.value.holder_deaths().to_vec())
        };
        let reclaim_span = |record: &mut PartitionRecord| {
            // The next grant links to this reclaim (sampled traces only).
            if let Some(reclaim) =
                super::spans::grant_event("elk.partition.reclaim", record, "owner_departed")
            {
                record.grant_traceparent = Some(reclaim);
            }
            record.owner = None;
        };
        match decision {
            AfterDeath::Retry(deaths) => {
                self.transition(key, PartitionStatus::Pending, |record| {
                    reclaim_span(record);
                    record.holder_deaths = deaths;
                });
            }
            AfterDeath::Quarantine(deaths) => {
                let count = deaths.len();
                tracing::warn!(partition = %key, deaths = count, holders = ?deaths.iter().map(|d| d.member.id.as_str()).collect::<Vec<_>>(), "partition quarantined: its holders keep dying while they hold it");
                self.transition(key, PartitionStatus::Failed, |record| {
                    reclaim_span(record);
                    record.error = Some(format!(
                        "quarantined: {count} holders died holding it with no progress in between"
                    ));
                    record.holder_deaths = deaths;
                    record.quarantined = true;
                    record.not_before_unix_ms = None;
                });
                self.counters.partitions_quarantined += 1;
                self.counters.partitions_parked += 1;
                if let Some(job) = self.jobs.get_mut(&key.job) {
                    job.value.partitions_failed += 1;
                    self.dirty_jobs.insert(key.job.clone());
                }
            }
        }
    }
}
