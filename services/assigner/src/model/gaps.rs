//! Coverage with the coverage engine (`elk-coverage`): gap and overlap detection (a full audit
//! when a leader loads its state, an `O(log n)` check for every partition it creates) and
//! compaction.
//!
//! * A gap (IDs below a job's cursor that no partition covers, e.g. a partition key deleted by
//!   hand) is reported and repaired by creating partitions over it; an overlap is reported and
//!   the overlapping partition is never created.
//! * Compaction: a completed partition whose range lies at or below the job's low watermark is
//!   deleted from the partitions bucket. The job record keeps the watermark and the completed
//!   ranges above it, so questions about compacted IDs are answered from it. Job records are
//!   written before the deletes, so a crash in between leaves extra keys, never a hole.

use super::{AssignerState, PartitionKey};
use elk_coverage::{Coverage, CoverageError, CoverageRecord};
use elk_protocol::messages::{JobRecord, JobState, PartitionRecord, PartitionStatus};
use elk_types::{IdRange, JobName, PartitionId, Revision};
use std::collections::BTreeMap;

/// How many IDs `coverage` holds as completed: those up to the low watermark and the completed
/// intervals above it.
fn completed_ids(coverage: &mut Coverage) -> u64 {
    let below = coverage
        .low_watermark()
        .map_or(0, |low| low - coverage.start() + 1);
    below
        + coverage
            .completed_ranges()
            .map(|range| range.len())
            .sum::<u64>()
}

/// Whether `job`'s record counts every ID of `range` as completed (below its low watermark, or
/// inside one of its completed ranges above it, which are kept merged).
pub(super) fn counted_completed(job: &JobRecord, range: IdRange) -> bool {
    let below_watermark = job.low_watermark.is_some_and(|low| range.last() <= low)
        && range.first() >= job.spec.range.first();
    below_watermark
        || job
            .completed_above_watermark
            .iter()
            .any(|done| done.first() <= range.first() && range.last() <= done.last())
}

impl AssignerState {
    pub(super) fn coverage_of(&mut self, job: &JobName) -> Option<&mut Coverage> {
        let record = &self.jobs.get(job)?.value;
        if !self.coverage.contains_key(job) {
            let persisted = CoverageRecord {
                start: record.spec.range.first(),
                low_watermark: record.low_watermark,
                completed: record.completed_above_watermark.clone(),
                live: Vec::new(),
            };
            let coverage = Coverage::try_from(persisted).unwrap_or_else(|error| {
                tracing::warn!(%job, %error, "invalid coverage summary in the job record: rebuilt from partitions");
                Coverage::new(record.spec.range.first())
            });
            self.coverage.insert(job.clone(), coverage);
        }
        self.coverage.get_mut(job)
    }

    /// Builds every job's coverage from its record's summary and the partitions read from KV
    /// (all statuses), corrects job counters that disagree with KV, then audits each job up to its
    /// cursor, queueing repairs for gaps.
    pub(super) fn build_coverage(&mut self, mut loaded: Vec<PartitionRecord>) {
        loaded.sort_by_key(|record| (record.job.clone(), record.range.first()));
        self.catch_up_cursors(&loaded);
        // Partitions refused for overlapping others still exist in KV: never re-create their IDs.
        let mut refused: Vec<(JobName, IdRange)> = Vec::new();
        // What KV really holds per job beyond compaction: (partitions, completed partitions).
        let mut counts: BTreeMap<JobName, (u64, u64)> = BTreeMap::new();
        for record in loaded {
            let completed = record.status == PartitionStatus::Completed;
            let already_compacted = completed
                && self.jobs.get(&record.job).is_some_and(|job| {
                    job.value.id_completed(record.range.first())
                        && job.value.id_completed(record.range.last())
                        && job
                            .value
                            .low_watermark
                            .is_some_and(|low| record.range.last() <= low)
                });
            if already_compacted {
                // Counted as compacted already; its delete did not happen before a failover:
                // delete it now without counting it twice.
                self.compaction_deletes
                    .push((PartitionKey::of(&record), None));
                continue;
            }
            if completed {
                // Its revision is not kept at load: it is purged by itself.
                self.await_compaction(&record, None);
            }
            let count = counts.entry(record.job.clone()).or_default();
            count.0 += 1;
            count.1 += u64::from(completed);
            let already_counted = completed
                && self
                    .jobs
                    .get(&record.job)
                    .is_some_and(|job| counted_completed(&job.value, record.range));
            if already_counted {
                // The job record's summary (the coverage's start) holds it already: inserting
                // it again would be refused as an overlap with itself.
                continue;
            }
            let Some(coverage) = self.coverage_of(&record.job) else {
                continue;
            };
            match coverage.insert_live(record.range) {
                Ok(_) if completed => {
                    let _ = coverage.complete(record.range);
                }
                Ok(_) => {}
                Err(error) => {
                    self.report_overlap(&record.job, record.range, &error);
                    refused.push((record.job, record.range));
                }
            }
        }
        let names: Vec<JobName> = self.jobs.keys().cloned().collect();
        for name in &names {
            // A deleted partition key leaves the job's counters ahead of KV, and a partition
            // completed in KV whose job record write failed (a NATS failover between the two
            // writes) leaves them behind: follow KV, so the job completes once what exists (and
            // the repairs) is done, with the IDs its coverage holds.
            let (in_kv, completed_in_kv) = counts.get(name).copied().unwrap_or_default();
            let ids_completed = self.coverage_of(name).map(completed_ids);
            let job = &mut self.jobs.get_mut(name).expect("listed").value;
            if job.state == JobState::Cancelled {
                // Its partitions are being deleted on purpose: the counters keep the history.
                continue;
            }
            let total = in_kv + job.partitions_compacted;
            let completed = completed_in_kv + job.partitions_compacted;
            if (job.partitions_total, job.partitions_completed) != (total, completed) {
                tracing::warn!(job = %name, recorded_total = job.partitions_total, total, completed, "job counters disagree with the partitions bucket: corrected");
                job.partitions_total = total;
                job.partitions_completed = completed;
                if let Some(ids) = ids_completed {
                    job.ids_completed = ids;
                }
                self.dirty_jobs.insert(name.clone());
            }
        }
        for name in names {
            if self.jobs[&name].value.is_terminal() {
                // Nothing of a completed or cancelled job is planned again: no gap to repair.
                continue;
            }
            let cursor = self.jobs[&name].value.cursor;
            let first = self.jobs[&name].value.spec.range.first();
            if cursor <= first {
                continue;
            }
            let Some(coverage) = self.coverage_of(&name) else {
                continue;
            };
            let audit = coverage.audit(cursor - 1);
            for overlap in audit.overlaps {
                self.counters.overlaps_detected += 1;
                tracing::warn!(job = %name, %overlap, "overlapping partitions found by the audit");
            }
            for gap in audit.gaps {
                self.counters.gaps_detected += 1;
                let covered_elsewhere = refused
                    .iter()
                    .any(|(job, range)| *job == name && range.overlaps(gap));
                if covered_elsewhere {
                    tracing::warn!(job = %name, %gap, "gap covered by an overlapping partition: not repaired");
                    continue;
                }
                tracing::warn!(job = %name, %gap, "gap found by the audit: repairing");
                self.repairs.push((name.clone(), gap));
            }
            self.sync_coverage_summary(&name);
        }
    }

    /// Moves each job's planning cursor and next partition id past every partition KV holds.
    ///
    /// The previous leader writes a new partition's key before the job record that advances the
    /// cursor; a failover between the two leaves the record behind. Planning from it would
    /// re-cut those ranges (refused as overlaps) and then give the next range the id of a
    /// partition that exists: its record, and the range it covered, would be overwritten (found
    /// by `auth_stack` under load — IDs never processed, indexes out of step).
    fn catch_up_cursors(&mut self, loaded: &[PartitionRecord]) {
        let mut reached: BTreeMap<&JobName, (u64, PartitionId)> = BTreeMap::new();
        for record in loaded {
            let entry = reached
                .entry(&record.job)
                .or_insert((record.range.last(), record.id));
            entry.0 = entry.0.max(record.range.last());
            entry.1 = entry.1.max(record.id);
        }
        for (name, (last, id)) in reached {
            let Some(stored) = self.jobs.get_mut(name) else {
                continue;
            };
            let job = &mut stored.value;
            // Ranges end below u64::MAX. A forged id at u64::MAX saturates: the next cut is then
            // refused (`create_partition`) instead of wrapping.
            let (cursor, next) = (last + 1, PartitionId(id.get().saturating_add(1)));
            if job.cursor < cursor || job.next_partition < next {
                tracing::warn!(job = %name, recorded_cursor = job.cursor, cursor = job.cursor.max(cursor), recorded_next = %job.next_partition, next = %job.next_partition.max(next), "job record behind the partitions bucket: cursor and partition ids caught up");
                job.cursor = job.cursor.max(cursor);
                job.next_partition = job.next_partition.max(next);
                self.dirty_jobs.insert(name.clone());
            }
        }
    }

    /// Registers a partition about to be created. `false` means it overlaps existing coverage and
    /// must not be created; a gap in front of it is queued for repair.
    pub(super) fn admit_new_partition(&mut self, job: &JobName, range: IdRange) -> bool {
        let Some(coverage) = self.coverage_of(job) else {
            return true;
        };
        match coverage.insert_live(range) {
            Ok(None) => true,
            Ok(Some(gap)) => {
                self.counters.gaps_detected += 1;
                tracing::warn!(%job, %gap, "gap in front of a new partition: repairing");
                self.repairs.push((job.clone(), gap));
                true
            }
            Err(error) => {
                self.report_overlap(job, range, &error);
                false
            }
        }
    }

    /// A partition completed: record it in the coverage and the job's summary, and schedule its
    /// key for compaction.
    /// `revision`: the key's latest revision, when nothing else is written to it.
    pub(super) fn coverage_completed(
        &mut self,
        record: &PartitionRecord,
        revision: Option<Revision>,
    ) {
        if let Some(coverage) = self.coverage_of(&record.job) {
            let _ = coverage.complete(record.range);
        }
        self.await_compaction(record, revision);
        self.sync_coverage_summary(&record.job);
    }

    fn await_compaction(&mut self, record: &PartitionRecord, revision: Option<Revision>) {
        self.awaiting_compaction
            .entry(record.job.clone())
            .or_default()
            .insert(record.range.last(), (record.id, revision));
    }

    /// Copies the coverage's watermark and completed ranges into the job record.
    fn sync_coverage_summary(&mut self, job: &JobName) {
        let Some(coverage) = self.coverage.get(job) else {
            return;
        };
        let low_watermark = coverage.low_watermark();
        let completed: Vec<IdRange> = coverage.completed_ranges().collect();
        let Some(stored) = self.jobs.get_mut(job) else {
            return;
        };
        if stored.value.low_watermark != low_watermark
            || stored.value.completed_above_watermark != completed
        {
            stored.value.low_watermark = low_watermark;
            stored.value.completed_above_watermark = completed;
            self.dirty_jobs.insert(job.clone());
        }
    }

    /// Queues the deletion of completed partitions now below their job's low watermark.
    pub(super) fn compact(&mut self) {
        let jobs: Vec<JobName> = self.awaiting_compaction.keys().cloned().collect();
        for job in jobs {
            let Some(low_watermark) = self.jobs.get(&job).and_then(|j| j.value.low_watermark)
            else {
                continue;
            };
            let waiting = self.awaiting_compaction.get_mut(&job).expect("listed");
            let above = waiting.split_off(&low_watermark.saturating_add(1));
            let below = std::mem::replace(waiting, above);
            if below.is_empty() {
                continue;
            }
            let count = below.len() as u64;
            self.compaction_deletes.extend(
                below
                    .into_values()
                    .map(|(id, revision)| (PartitionKey::new(job.clone(), id), revision)),
            );
            self.counters.partitions_compacted += count;
            if let Some(stored) = self.jobs.get_mut(&job) {
                stored.value.partitions_compacted += count;
                self.dirty_jobs.insert(job.clone());
            }
        }
    }

    /// Deletes what is left of cancelled jobs: their pending and parked partitions (never granted
    /// again) and their completed ones; granted or revoking ones are deleted once released.
    pub(super) fn clear_cancelled(&mut self) {
        let cancelled: Vec<JobName> = self
            .jobs
            .iter()
            .filter(|(_, stored)| stored.value.state == JobState::Cancelled)
            .map(|(name, _)| name.clone())
            .collect();
        for job in cancelled {
            let idle: Vec<PartitionKey> = self
                .partitions_of(&job)
                .filter(|(_, stored)| {
                    matches!(
                        stored.value.status,
                        PartitionStatus::Pending | PartitionStatus::Failed
                    )
                })
                .map(|(key, _)| key.clone())
                .collect();
            for key in idle {
                self.forget_partition(&key);
                self.compaction_deletes.push((key, None));
            }
            if let Some(waiting) = self.awaiting_compaction.remove(&job) {
                self.compaction_deletes.extend(
                    waiting
                        .into_values()
                        .map(|(id, _)| (PartitionKey::new(job.clone(), id), None)),
                );
            }
        }
    }

    fn report_overlap(&mut self, job: &JobName, range: IdRange, error: &CoverageError) {
        self.counters.overlaps_detected += 1;
        tracing::warn!(%job, %range, %error, "overlapping partition refused");
    }
}
