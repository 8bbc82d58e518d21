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
//! **Every partition of the dead holder is charged.** The assigner does not know which of a
//! worker's partitions was running when it died; each one it held gets the death. A partition
//! that only sat in the same worker's queue makes progress on its next holder, which starts its
//! list anew, so only one that is granted again and again beside the poison without ever running
//! could be quarantined with it (`grants_per_capacity = 1` rules that out: every grant runs).

use super::{AssignerState, PartitionKey};
use elk_protocol::messages::{HolderDeath, MemberRef, PartitionRecord, PartitionStatus};

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
    /// Takes `key` back from `holder`, which died holding it: pending again with the death on
    /// record, or quarantined (module header).
    pub(super) fn holder_died(&mut self, key: &PartitionKey, holder: &MemberRef) {
        let Some(stored) = self.partitions.get(key) else {
            return;
        };
        let decision = after_death(
            &stored.value,
            holder,
            self.now_ms,
            self.policy.quarantine_after_deaths,
        );
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
