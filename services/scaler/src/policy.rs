//! The sizing rule of this slice (the real policy — throughput, stabilization windows — is a
//! later issue): one worker per `partitions_per_worker` pending partitions, within bounds.

use elk_protocol::messages::{JobRecord, JobState};

/// Work not yet done, summed over active jobs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    /// IDs of active jobs not yet processed.
    pub ids: u64,
    /// Partitions of active jobs not yet completed, including those still to be planned.
    pub partitions: u64,
}

/// Sums the backlog of the active jobs.
pub fn backlog_of<'a>(jobs: impl IntoIterator<Item = &'a JobRecord>) -> Backlog {
    let mut backlog = Backlog::default();
    for job in jobs {
        if job.state != JobState::Active {
            continue;
        }
        let remaining_ids = job.ids_total().saturating_sub(job.ids_completed);
        let open_partitions = job
            .partitions_total
            .saturating_sub(job.partitions_completed);
        backlog.ids = backlog.ids.saturating_add(remaining_ids);
        backlog.partitions = backlog
            .partitions
            .saturating_add(open_partitions)
            .saturating_add(unplanned_partitions(job));
    }
    backlog
}

/// Partitions the assigner has yet to create for the known IDs beyond the job's cursor.
fn unplanned_partitions(job: &JobRecord) -> u64 {
    let Some(last) = job.planning_limit() else {
        return 0;
    };
    let first_unplanned = job.cursor.max(job.spec.range.first());
    if first_unplanned > last {
        return 0;
    }
    let unplanned_ids = last - first_unplanned + 1;
    unplanned_ids.div_ceil(job.spec.partition_size.max(1))
}

/// `clamp(ceil(backlog_partitions / partitions_per_worker), min_workers, max_workers)`.
pub fn desired_workers(
    backlog_partitions: u64,
    partitions_per_worker: u64,
    min_workers: u32,
    max_workers: u32,
) -> u32 {
    let needed = backlog_partitions.div_ceil(partitions_per_worker.max(1));
    let needed = u32::try_from(needed).unwrap_or(u32::MAX);
    needed.clamp(min_workers, max_workers.max(min_workers))
}

#[cfg(test)]
mod tests {
    use super::*;
    use elk_protocol::messages::JobSpec;
    use elk_types::{IdRange, JobName, PartitionId};

    fn job(state: JobState, cursor: u64, partitions: (u64, u64), ids_completed: u64) -> JobRecord {
        let mut record = JobRecord::new(
            JobName::new("job").unwrap(),
            JobSpec::fixed(IdRange::new(1, 1_000).unwrap(), 10),
            elk_types::Epoch(0),
            0,
        );
        record.state = state;
        record.cursor = cursor;
        record.next_partition = PartitionId(partitions.0 + 1);
        record.partitions_total = partitions.0;
        record.partitions_completed = partitions.1;
        record.ids_completed = ids_completed;
        record
    }

    #[test]
    fn backlog_counts_open_and_unplanned_partitions_of_active_jobs() {
        let fully_planned = job(JobState::Active, 1_001, (100, 40), 400);
        assert_eq!(
            backlog_of([&fully_planned]),
            Backlog {
                ids: 600,
                partitions: 60
            }
        );
        let half_planned = job(JobState::Active, 501, (50, 10), 100);
        assert_eq!(backlog_of([&half_planned]).partitions, 40 + 50);
        let fresh = job(JobState::Active, 0, (0, 0), 0);
        assert_eq!(backlog_of([&fresh]).partitions, 100);
        let done = job(JobState::Completed, 1_001, (100, 100), 1_000);
        assert_eq!(backlog_of([&done, &fully_planned]).ids, 600);
    }

    #[test]
    fn desired_is_rounded_up_and_bounded() {
        assert_eq!(desired_workers(0, 10, 1, 100), 1);
        assert_eq!(desired_workers(61, 10, 1, 100), 7);
        assert_eq!(desired_workers(60, 10, 1, 100), 6);
        assert_eq!(desired_workers(u64::MAX, 1, 1, 100), 100);
        assert_eq!(desired_workers(5, 10, 3, 100), 3);
    }
}
