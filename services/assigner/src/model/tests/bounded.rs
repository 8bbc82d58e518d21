//! Bounded work per request (issue 9 item 5): a fixed job's partition keys stay within
//! `max_job_backlog` whatever its size, and the job is still cut, covered and completed exactly.

use super::*;
use elk_protocol::admin::IdState;
use elk_protocol::messages::JobState;
use std::collections::BTreeSet;

fn bounded_policy(max_job_backlog: u64) -> Policy {
    Policy {
        max_job_backlog,
        ..policy()
    }
}

/// The partition keys KV holds, replayed from the change sets the model hands out.
#[derive(Default)]
struct KvKeys {
    keys: BTreeSet<PartitionKey>,
    peak: usize,
}

impl KvKeys {
    /// Takes the round's changes, applies them to the key set and acknowledges the writes.
    fn flush(&mut self, state: &mut AssignerState) {
        let changes = state.take_changes();
        let mut written = super::super::Written::default();
        for put in changes.partitions.iter().chain(&changes.completed) {
            self.keys.insert(put.key.clone());
            written.partitions.push((put.key.clone(), Revision(1)));
        }
        for put in &changes.jobs {
            written.jobs.push((put.key.clone(), Revision(1)));
        }
        for key in &changes.purges {
            self.keys.remove(key);
        }
        state.record_written(written);
        self.peak = self.peak.max(self.keys.len());
    }
}

/// Completes every partition worker `a` holds, last-granted first (so completed partitions wait
/// above the low watermark for compaction before the earlier ones finish).
fn complete_all_of_a(state: &mut AssignerState) -> usize {
    let a = MemberId::new("a").unwrap();
    let Some(record) = state.desired_assignment(&a) else {
        return 0;
    };
    let grants = record.grants;
    for grant in grants.iter().rev() {
        let report = ProgressReport {
            job: grant.job.clone(),
            ..report("a", 1, grant.partition.get(), grant.token, ProgressEvent::Completed)
        };
        state.apply_progress(&report).unwrap();
    }
    grants.len()
}

#[test]
fn a_fixed_job_of_a_trillion_ids_holds_no_more_keys_than_the_bound() {
    let range = IdRange::new(1, 1_000_000_000_000).unwrap();
    let mut state = AssignerState::load(
        EPOCH,
        bounded_policy(50),
        0,
        Snapshot {
            jobs: vec![(fixed_job(range, 1), Revision(1))],
            ..Snapshot::default()
        },
    );
    let mut kv = KvKeys::default();
    for now in 1..=5 {
        state.reconcile(now);
        kv.flush(&mut state);
    }
    assert_eq!(kv.keys.len(), 50, "cut up to the bound, no further");
    assert_eq!(state.partitions.len(), 50, "memory follows the bound too");
    let job = &state.jobs[&job_name()].value;
    assert_eq!((job.partitions_total, job.cursor), (50, 51));
    // IDs beyond the cursor are exactly "not planned", not lost.
    assert!(matches!(
        state.id_status(&job_name(), 51).unwrap(),
        IdState::NotPlanned
    ));

    // A worker completes what it gets: more is cut as completed keys are compacted, never above
    // the bound.
    state.apply_view(&view(&[("a", 1, 4)]));
    let mut completed = 0;
    for now in 10..60 {
        state.reconcile(now);
        kv.flush(&mut state);
        completed += complete_all_of_a(&mut state);
    }
    state.reconcile(100);
    kv.flush(&mut state);
    assert!(completed > 100, "the job kept being cut: {completed}");
    assert!(kv.peak <= 50, "peak of {} keys", kv.peak);
    let job = &state.jobs[&job_name()].value;
    assert_eq!(job.ids_completed, completed as u64);
    assert_eq!(job.low_watermark, Some(completed as u64));
    assert_eq!(job.state, JobState::Active);
}

#[test]
fn a_job_larger_than_the_bound_completes_exactly() {
    let range = IdRange::new(1, 1_000).unwrap();
    let mut state = AssignerState::load(
        EPOCH,
        bounded_policy(8),
        0,
        Snapshot {
            jobs: vec![(fixed_job(range, 10), Revision(1))],
            ..Snapshot::default()
        },
    );
    state.apply_view(&view(&[("a", 1, 2)]));
    let mut kv = KvKeys::default();
    let mut now = 1;
    while state.jobs[&job_name()].value.state == JobState::Active {
        assert!(now < 1_000, "the job does not complete");
        state.reconcile(now);
        kv.flush(&mut state);
        complete_all_of_a(&mut state);
        now += 1;
    }
    kv.flush(&mut state);
    let job = &state.jobs[&job_name()].value;
    assert_eq!(job.state, JobState::Completed);
    assert_eq!((job.partitions_total, job.partitions_completed), (100, 100));
    assert_eq!(job.ids_completed, 1_000);
    assert_eq!(job.low_watermark, Some(1_000));
    assert!(kv.peak <= 8, "peak of {} keys", kv.peak);
    assert!(matches!(
        state.id_status(&job_name(), 777).unwrap(),
        IdState::Completed
    ));
}
