//! Planning: cutting jobs into partitions (gap repairs first; a fixed job's keys bounded by
//! `max_job_backlog`), asking planners how far open-ended jobs go, keeping an open-ended job's
//! backlog near `live capacity × lookahead`, retry backoff (a permanent failure skips the
//! remaining attempts), and completing jobs.

use super::{AssignerState, PartitionKey};
use elk_protocol::messages::{JobState, PartitionRecord, PartitionStatus};
use elk_types::{IdRange, JobName};

/// Longest delay between two retries of a partition.
const MAX_RETRY_BACKOFF_MS: u64 = 5 * 60 * 1_000;
/// Upper bound of an open-ended job's backlog of partitions, whatever the fleet's size.
pub(crate) const MAX_OPEN_ENDED_BACKLOG: u64 = 10_000;
/// Most partitions a round cuts to fill free grant slots (more only when `partitions_per_round`
/// says so). 100,000 lets a 100,000-partition job start in one round (cold start 1.8-1.9 s for
/// 500 and 1,000 workers, release, against 2.9-3.2 s at 10,000 per round: each extra round
/// rewrites every worker's record and repeats the placement pass); the round's model work runs
/// off the async runtime, so its length cannot starve the leader's renewal (`long_round.rs`).
pub(crate) const MAX_FILL_CUT: usize = 100_000;
/// How often an open-ended job's planner is asked while it reports no new data.
pub(crate) const PLAN_INTERVAL_MS: u64 = 1_000;

/// A question for an open-ended job's planner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PlanQuestion {
    pub job: JobName,
    pub cursor: u64,
    pub wanted: u64,
}

impl AssignerState {
    /// Creates the next partitions (repairs first, bounded per round: [`Self::cut_budget`]) and
    /// completes jobs whose every partition is done.
    pub(super) fn plan_partitions(&mut self) {
        let mut budget = self.cut_budget();
        // Repairs first: a gap means IDs below the cursor that nothing covers.
        while budget > 0 {
            let Some((name, gap)) = self.repairs.pop() else {
                break;
            };
            let Some(size) = self
                .jobs
                .get(&name)
                .map(|job| job.value.spec.partition_size)
            else {
                continue;
            };
            let chunks: Vec<IdRange> = gap.chunks(size).collect();
            let (now, later) = chunks.split_at(chunks.len().min(budget));
            for range in now {
                if self.create_partition(&name, *range) {
                    self.counters.gaps_repaired += 1;
                }
            }
            budget -= now.len();
            if let (Some(first), Some(last)) = (later.first(), later.last()) {
                let rest = IdRange::new(first.first(), last.last()).expect("ordered chunks");
                self.repairs.push((name, rest));
            }
        }
        let names: Vec<JobName> = self.jobs.keys().cloned().collect();
        for name in names {
            let job = &self.jobs[&name].value;
            if job.state != JobState::Active {
                continue;
            }
            // Adaptive when configured (`split.rs`), else the job's partition size.
            let size = self.cut_size(&name);
            let limit = job.planning_limit();
            let mut cursor = job.cursor;
            let mut room = self.backlog_room(&name);
            if !job.spec.open_ended
                && let Some(grantable) = self.just_in_time_room(&name)
            {
                room = room.min(grantable);
            }
            while budget > 0 && room > 0 && limit.is_some_and(|last| cursor <= last) {
                let last = cursor.saturating_add(size - 1).min(limit.expect("checked"));
                self.create_partition(&name, IdRange::new(cursor, last).expect("cursor <= last"));
                budget -= 1;
                room -= 1;
                // Job ranges end below u64::MAX (checked at creation), so this cannot overflow.
                cursor = last + 1;
            }
            let stored = self.jobs.get_mut(&name).expect("job exists");
            if stored.value.cursor != cursor {
                stored.value.cursor = cursor;
                self.dirty_jobs.insert(name.clone());
            }
            self.complete_job_if_done(&name);
        }
    }

    /// Partitions this round may cut: `partitions_per_round`, or more when the live fleet has
    /// more free grant slots than that (slots not taken by granted, revoking or waiting
    /// partitions): those are cut and granted in this round, each partition record written once.
    /// Cutting `partitions_per_round` at a time instead would rewrite every worker's assignment
    /// record (all its grants) once per round: a 100,000-partition cold start over 500 workers
    /// took 100 rounds and wrote each record 100 times (~375 MB of records). The flush stays
    /// bounded by what the fleet can hold, by each job's `max_job_backlog` and by
    /// `max_fill_cut` ([`MAX_FILL_CUT`]), which bounds one round's model work and flush.
    pub(super) fn cut_budget(&self) -> usize {
        let slots = self
            .live_capacity()
            .saturating_mul(u64::from(self.policy.grants_per_capacity.max(1)));
        let held: usize = self.grants_by_worker.values().map(|keys| keys.len()).sum();
        let occupied = held + self.revoking_since.len() + self.pending_since.len();
        let free = usize::try_from(slots)
            .unwrap_or(usize::MAX)
            .saturating_sub(occupied);
        self.policy
            .partitions_per_round
            .max(free.min(self.policy.max_fill_cut))
    }

    /// How many more partitions a job may create now: for a fixed job, `max_job_backlog` minus
    /// the partition keys it has (so a job of 10^12 IDs holds at most that many keys, and more
    /// are cut as its completed ones are compacted); for an open-ended one, `live capacity ×
    /// lookahead` minus its live partitions.
    fn backlog_room(&self, name: &JobName) -> u64 {
        let job = &self.jobs[name].value;
        if !job.spec.open_ended {
            return self
                .policy
                .max_job_backlog
                .saturating_sub(self.partition_keys_of(name));
        }
        let target = self
            .live_capacity()
            .saturating_mul(u64::from(job.spec.lookahead))
            .clamp(1, MAX_OPEN_ENDED_BACKLOG);
        target.saturating_sub(self.live_partitions_of(name))
    }

    /// On the lean write path, how many partitions of a fixed job to cut now: as many as the live
    /// workers processing it have free grant slots, minus its partitions already waiting, so each
    /// is granted in the round that cuts it and written once (created granted) instead of
    /// created `pending` and rewritten at its grant. `None` (cut ahead as on the baseline path,
    /// up to the backlog bound) when no live worker can take the job's partitions: its
    /// partitions are then visible before its workers come. Jobs sharing workers may cut a few
    /// more than are granted at once; those wait `pending` like on the baseline path.
    fn just_in_time_room(&self, name: &JobName) -> Option<u64> {
        if self.policy.write_path != super::WritePath::Lean {
            return None;
        }
        let slots_per_capacity = u64::from(self.policy.grants_per_capacity.max(1));
        let mut takers = self
            .workers
            .iter()
            .filter(|(_, info)| {
                info.takes_grants() && info.capacity.get() > 0 && info.processes(name)
            })
            .peekable();
        takers.peek()?;
        let free: u64 = takers
            .map(|(id, info)| {
                let held = self.grants_by_worker.get(id).map_or(0, |keys| keys.len());
                (u64::from(info.capacity.get()) * slots_per_capacity).saturating_sub(held as u64)
            })
            .sum();
        let waiting = self.pending.range(PartitionKey::bounds_of(name)).count() as u64;
        Some(free.saturating_sub(waiting))
    }

    fn live_capacity(&self) -> u64 {
        self.workers
            .values()
            .filter(|worker| worker.takes_grants())
            .map(|worker| u64::from(worker.capacity.get()))
            .sum()
    }

    /// Partitions of the job that are in flight (pending, granted, revoking; not parked).
    fn live_partitions_of(&self, name: &JobName) -> u64 {
        // Parked failures wait for an operator: they must not hold back new data.
        self.partitions_of(name)
            .filter(|(_, stored)| stored.value.status != PartitionStatus::Failed)
            .count() as u64
    }

    /// Partition keys the job has in KV or about to: live partitions (parked failures
    /// included) and completed ones not yet compacted.
    fn partition_keys_of(&self, name: &JobName) -> u64 {
        let awaiting = self
            .awaiting_compaction
            .get(name)
            .map_or(0, |waiting| waiting.len());
        self.partitions_of(name).count() as u64 + awaiting as u64
    }

    fn complete_job_if_done(&mut self, name: &JobName) {
        let repairs_pending = self.repairs.iter().any(|(job, _)| job == name);
        let job = &mut self.jobs.get_mut(name).expect("job exists").value;
        let exhausted =
            !job.spec.open_ended && job.planning_limit().is_some_and(|last| job.cursor > last);
        if job.state == JobState::Active
            && exhausted
            && !repairs_pending
            && job.partitions_completed == job.partitions_total
        {
            job.state = JobState::Completed;
            job.completed_unix_ms = Some(self.now_ms);
            self.dirty_jobs.insert(name.clone());
        }
    }

    /// Creates one pending partition of `job` over `range` unless it overlaps existing coverage.
    pub(super) fn create_partition(&mut self, job: &JobName, range: IdRange) -> bool {
        let id = self.jobs.get(job).expect("job exists").value.next_partition;
        // Only a forged job record can get here (ids count partitions): refuse, never wrap.
        let next_id = match id.next() {
            Ok(next_id) => next_id,
            Err(exhausted) => {
                tracing::error!(%job, %exhausted, "cannot cut another partition");
                return false;
            }
        };
        if !self.admit_new_partition(job, range) {
            return false;
        }
        let stored = self.jobs.get_mut(job).expect("job exists");
        stored.value.next_partition = next_id;
        // Never replace a partition that exists (`catch_up_cursors` keeps ids ahead at load).
        debug_assert!(
            !self
                .partitions
                .contains_key(&PartitionKey::new(job.clone(), id)),
            "partition id {id} of {job} reused"
        );
        stored.value.partitions_total += 1;
        self.dirty_jobs.insert(job.clone());
        let mut record = PartitionRecord::pending(job.clone(), id, range, self.epoch);
        super::spans::cut(&record, stored.value.traceparent.as_deref()).store_in(&mut record);
        self.insert_new_partition(record);
        true
    }

    /// A failed attempt: back to pending after an exponential backoff while attempts remain,
    /// otherwise — or at once when the worker said the failure is `permanent` — parked as
    /// `failed` with its error.
    pub(super) fn fail_partition(
        &mut self,
        key: &PartitionKey,
        error: String,
        last_done: Option<u64>,
        permanent: bool,
        trace: Option<&str>,
    ) {
        let Some(job) = self.jobs.get(&key.job).map(|job| job.value.spec.clone()) else {
            return;
        };
        let attempts = self.partitions.get(key).map_or(0, |p| p.value.attempts) + 1;
        let retry = !permanent && attempts < job.max_attempts;
        let not_before = retry.then(|| {
            let doublings = (attempts - 1).min(20);
            let delay = job.retry_backoff_ms.saturating_mul(1 << doublings);
            self.now_ms + delay.min(MAX_RETRY_BACKOFF_MS)
        });
        let to = if retry {
            PartitionStatus::Pending
        } else {
            PartitionStatus::Failed
        };
        self.transition(key, to, |record| {
            record.owner = None;
            record.attempts = attempts;
            record.error = Some(error);
            record.checkpoint = record.checkpoint.max(last_done);
            record.not_before_unix_ms = not_before;
            if let Some(trace) = trace {
                // The next grant (a retry, or `retry` after parking) links to this failure.
                record.grant_traceparent = Some(trace.to_owned());
            }
        });
        if retry {
            self.counters.retries_scheduled += 1;
        } else if let Some(stored) = self.jobs.get_mut(&key.job) {
            self.counters.partitions_parked += 1;
            stored.value.partitions_failed += 1;
            self.dirty_jobs.insert(key.job.clone());
        }
    }

    /// Makes retries whose backoff has passed grantable again.
    pub(super) fn release_due_retries(&mut self) {
        let due: Vec<PartitionKey> = self
            .delayed
            .iter()
            .filter(|(_, not_before)| **not_before <= self.now_ms)
            .map(|(key, _)| key.clone())
            .collect();
        for key in due {
            self.update_partition(&key, |record| record.not_before_unix_ms = None);
        }
    }

    /// Questions for the planners of open-ended jobs that have room for more partitions but
    /// nothing left to plan; at most one outstanding question per job, at most one per
    /// [`PLAN_INTERVAL_MS`].
    pub(super) fn plan_questions(&mut self) -> Vec<PlanQuestion> {
        let mut questions = Vec::new();
        let names: Vec<JobName> = self.jobs.keys().cloned().collect();
        for name in names {
            let job = &self.jobs[&name].value;
            if !job.spec.open_ended || job.state != JobState::Active {
                continue;
            }
            let planned_all = job.planning_limit().is_none_or(|last| job.cursor > last);
            let room = self.backlog_room(&name);
            if !planned_all || room == 0 {
                continue;
            }
            let (asked_at, outstanding) = self.plan_asked.get(&name).copied().unwrap_or((0, false));
            if outstanding || self.now_ms < asked_at + PLAN_INTERVAL_MS {
                continue;
            }
            let wanted = room.saturating_mul(job.spec.partition_size);
            questions.push(PlanQuestion {
                job: name.clone(),
                cursor: job.cursor,
                wanted,
            });
            self.plan_asked.insert(name, (self.now_ms, true));
        }
        questions
    }

    /// The planner's answer (`None` when it failed or had nothing): a higher max ID extends
    /// what may be planned.
    pub(crate) fn apply_plan_answer(&mut self, job: &JobName, max_id: Option<u64>) {
        if let Some(entry) = self.plan_asked.get_mut(job) {
            entry.1 = false;
        }
        let Some(max_id) = max_id else { return };
        let Some(stored) = self.jobs.get_mut(job) else {
            return;
        };
        if stored.value.known_max.is_none_or(|known| max_id > known) {
            stored.value.known_max = Some(max_id.min(stored.value.spec.range.last()));
            self.dirty_jobs.insert(job.clone());
        }
    }
}
