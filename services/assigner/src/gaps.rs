//! Gap and overlap detection with the coverage engine (`elk-coverage`): a full audit when a
//! leader loads its state, and an `O(log n)` check for every partition it creates. A gap (IDs
//! below a job's cursor that no partition covers, e.g. a partition key deleted by hand) is
//! reported and repaired by creating partitions over it; an overlap is reported and the
//! overlapping partition is never created.

use super::AssignerState;
use elk_coverage::{Coverage, CoverageError};
use elk_protocol::messages::{PartitionRecord, PartitionStatus};
use elk_types::{IdRange, JobName};

impl AssignerState {
    fn coverage_of(&mut self, job: &JobName) -> Option<&mut Coverage> {
        let first = self.jobs.get(job)?.value.spec.range.first();
        Some(
            self.coverage
                .entry(job.clone())
                .or_insert_with(|| Coverage::new(first)),
        )
    }

    /// Builds every job's coverage from the partitions read from KV (all statuses), then audits
    /// each job up to its cursor, queueing repairs for gaps.
    pub fn build_coverage(&mut self, mut loaded: Vec<PartitionRecord>) {
        loaded.sort_by_key(|record| (record.job.clone(), record.range.first()));
        // Partitions refused for overlapping others still exist in KV: never re-create their IDs.
        let mut refused: Vec<(JobName, IdRange)> = Vec::new();
        // What KV really holds per job: (partitions, completed partitions).
        let mut counts: std::collections::BTreeMap<JobName, (u64, u64)> = Default::default();
        for record in loaded {
            let count = counts.entry(record.job.clone()).or_default();
            count.0 += 1;
            count.1 += u64::from(record.status == PartitionStatus::Completed);
            let Some(coverage) = self.coverage_of(&record.job) else {
                continue;
            };
            let inserted = coverage.insert_live(record.range);
            let completed = record.status == PartitionStatus::Completed;
            match inserted {
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
            // A deleted partition key leaves the job's counters ahead of KV: follow KV, so the
            // job completes once what exists (and the repairs) is done.
            let (total, completed) = counts.get(name).copied().unwrap_or_default();
            let job = &mut self.jobs.get_mut(name).expect("listed").value;
            if (job.partitions_total, job.partitions_completed) != (total, completed) {
                tracing::warn!(job = %name, recorded_total = job.partitions_total, total, completed, "job counters disagree with the partitions bucket: corrected");
                job.partitions_total = total;
                job.partitions_completed = completed;
                self.dirty_jobs.insert(name.clone());
            }
        }
        for name in names {
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
                self.overlaps_detected += 1;
                tracing::warn!(job = %name, %overlap, "overlapping partitions found by the audit");
            }
            for gap in audit.gaps {
                self.gaps_detected += 1;
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
                self.gaps_detected += 1;
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

    pub(super) fn coverage_completed(&mut self, job: &JobName, range: IdRange) {
        if let Some(coverage) = self.coverage_of(job) {
            let _ = coverage.complete(range);
        }
    }

    fn report_overlap(&mut self, job: &JobName, range: IdRange, error: &CoverageError) {
        self.overlaps_detected += 1;
        tracing::warn!(%job, %range, %error, "overlapping partition refused");
    }
}
