//! The change set (the model's only way out) and the lifecycle checks.

use super::*;
use crate::model::partitions::transition_allowed;
use crate::model::{Put, RangePurge, Written};
use elk_protocol::messages::{JobState, PartitionStatus};

#[test]
fn a_round_s_change_set_holds_every_write_and_revisions_come_back() {
    let mut state = loaded(Snapshot::default());
    let spec = JobSpec::fixed(IdRange::new(1, 2_000).unwrap(), 1_000);
    state.create_job(&job_name(), &spec).unwrap();
    state.apply_view(&view(&[("a", 1, 1)]));
    state.reconcile(1);
    let changes = state.take_changes();
    // The job is created (expected revision: none) with its partitions, both granted to a.
    assert_eq!(changes.jobs.len(), 1);
    assert_eq!(changes.jobs[0].key, job_name());
    assert_eq!(changes.jobs[0].expected, None);
    assert_eq!(changes.jobs[0].value.partitions_total, 2);
    let keys: Vec<&PartitionKey> = changes.partitions.iter().map(|put| &put.key).collect();
    assert_eq!(keys, vec![&key(1), &key(2)]);
    assert!(changes.partitions.iter().all(|put| put.expected.is_none()
        && put.value.status == PartitionStatus::Granted
        && put.value.epoch == EPOCH));
    let a = MemberId::new("a").unwrap();
    assert_eq!(changes.assignments.len(), 1);
    assert_eq!(changes.assignments[0].key, a);
    assert_eq!(changes.assignments[0].value.grants.len(), 2);
    assert!(changes.purges.is_empty() && changes.prunes.is_empty());
    // Tracing is off in this process: no trace context anywhere (records as without tracing).
    assert!(changes.jobs[0].value.traceparent.is_none());
    assert!(
        changes
            .partitions
            .iter()
            .all(|put| put.value.traceparent.is_none() && put.value.grant_traceparent.is_none())
    );
    assert!(
        changes.assignments[0]
            .value
            .grants
            .iter()
            .all(|g| g.traceparent.is_none())
    );

    // Nothing new happened: the next change set is empty (reconcile is idempotent).
    state.reconcile(2);
    assert!(state.take_changes().is_empty());

    // The store reports revisions; the next writes expect them.
    state.record_written(Written {
        partitions: vec![(key(1), Revision(10)), (key(2), Revision(11))],
        jobs: vec![(job_name(), Revision(12))],
        assignments: changes
            .assignments
            .into_iter()
            .map(|Put { key, value, .. }| (key, value, Revision(13)))
            .collect(),
        pruned: Vec::new(),
        placement: None,
    });
    let (_, token) = owner_and_token(&state, 1);
    state
        .apply_progress(&report("a", 1, 1, token, ProgressEvent::Completed))
        .unwrap();
    state.reconcile(3);
    let changes = state.take_changes();
    assert!(changes.partitions.is_empty());
    // The lean write path writes no `completed` record: the job record counts the range
    // (the baseline path's record is in `write_path.rs`).
    assert!(changes.completed.is_empty());
    assert_eq!(
        changes.jobs[0].value.low_watermark,
        Some(1_000),
        "the job record carries the completion"
    );
    assert_eq!(changes.jobs[0].expected, Some(Revision(12)));
    assert_eq!(changes.assignments[0].expected, Some(Revision(13)));
    // Completed at or below the low watermark: purged after the job record is written, by a
    // range purge of the job's keys below partition 2's revision (still live), which covers
    // partition 1's (10) and nothing that must stay.
    assert!(changes.purges.is_empty());
    assert_eq!(
        changes.range_purges,
        vec![RangePurge {
            job: job_name(),
            below: Revision(11),
            keys: vec![key(1)],
        }]
    );
}

#[test]
fn a_departed_worker_s_record_is_emptied_then_pruned() {
    let mut state = state_with_job(IdRange::new(1, 1_000).unwrap(), 1_000);
    state.apply_view(&view(&[("a", 1, 1)]));
    state.reconcile(1);
    let changes = state.take_changes();
    let a = MemberId::new("a").unwrap();
    state.record_written(Written {
        assignments: changes
            .assignments
            .into_iter()
            .map(|Put { key, value, .. }| (key, value, Revision(5)))
            .collect(),
        ..Written::default()
    });
    let gone = state.apply_view(&view(&[]));
    assert_eq!(state.reclaim(&gone[0]), 1);
    state.reconcile(2);
    let changes = state.take_changes();
    assert_eq!(changes.assignments.len(), 1);
    assert!(changes.assignments[0].value.grants.is_empty());
    assert_eq!(changes.prunes.len(), 1);
    assert_eq!(changes.prunes[0].worker, a);
    assert_eq!(
        changes.prunes[0].expected, None,
        "deleted at the revision its emptied record is written at"
    );
    state.record_written(Written {
        pruned: vec![a.clone()],
        ..Written::default()
    });
    assert!(!state.assignments.contains_key(&a));
    state.reconcile(3);
    assert!(state.take_changes().is_empty());
}

#[test]
fn cancelling_a_job_purges_its_idle_partitions() {
    let mut state = state_with_job(IdRange::new(1, 3_000).unwrap(), 1_000);
    state.reconcile(1);
    state.take_changes();
    let cancelled = state.cancel_job(&job_name()).unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled);
    state.reconcile(2);
    let changes = state.take_changes();
    assert_eq!(changes.purges, vec![key(1), key(2), key(3)]);
    assert_eq!(changes.jobs[0].value.state, JobState::Cancelled);
    assert!(state.partitions.is_empty());
}

#[test]
fn the_lifecycle_allows_only_the_diagram_s_transitions() {
    use PartitionStatus::{Completed, Failed, Granted, Pending, Revoking};
    let all = [Pending, Granted, Revoking, Completed, Failed];
    let allowed: Vec<(PartitionStatus, PartitionStatus)> = all
        .iter()
        .flat_map(|from| all.iter().map(move |to| (*from, *to)))
        .filter(|(from, to)| transition_allowed(*from, *to))
        .collect();
    assert_eq!(
        allowed,
        vec![
            (Pending, Pending),
            (Pending, Granted),
            (Granted, Pending),
            (Granted, Granted),
            (Granted, Revoking),
            (Granted, Completed),
            (Granted, Failed),
            (Revoking, Pending),
            (Revoking, Revoking),
            (Revoking, Completed),
            (Revoking, Failed),
            (Failed, Pending),
        ]
    );
}

#[test]
#[cfg(debug_assertions)]
#[should_panic(expected = "is not in the lifecycle")]
fn a_transition_outside_the_lifecycle_is_caught() {
    let mut state = state_with_job(IdRange::new(1, 1_000).unwrap(), 1_000);
    state.reconcile(1);
    // A pending partition cannot be revoked: it has no owner to release it.
    state.transition(&key(1), PartitionStatus::Revoking, |_| {});
}

#[test]
fn the_indexes_follow_every_transition() {
    let mut state = state_with_job(IdRange::new(1, 6_000).unwrap(), 1_000);
    state.apply_view(&view(&[("a", 1, 1), ("b", 1, 1)]));
    state.reconcile(1);
    assert!(state.indexes_consistent());
    let (_, token) = owner_and_token(&state, 1);
    state
        .apply_progress(&report("a", 1, 1, token, failed("boom", None, false)))
        .unwrap();
    assert!(state.indexes_consistent(), "failed → delayed");
    state.apply_view(&view(&[("a", 1, 1), ("b", 1, 1), ("c", 1, 1)]));
    state.reconcile(2);
    assert!(state.indexes_consistent(), "revoked → revoking");
    state.pending.insert(key(6));
    assert!(
        !state.indexes_consistent(),
        "a granted partition in the pending index is caught"
    );
}

#[test]
fn a_worker_s_record_lists_its_revokes_until_they_are_released() {
    let mut state = loaded(Snapshot::default());
    let spec = JobSpec::fixed(IdRange::new(1, 2_000).unwrap(), 1_000);
    state.create_job(&job_name(), &spec).unwrap();
    state.apply_view(&view(&[("a", 1, 2)]));
    state.reconcile(1);
    let a = MemberId::new("a").unwrap();
    let first = state.take_changes().assignments;
    assert_eq!(first[0].value.grants.len(), 2);
    assert!(first[0].value.revoking.is_empty());
    state.record_written(Written {
        assignments: first
            .into_iter()
            .map(|Put { key, value, .. }| (key, value, Revision(5)))
            .collect(),
        ..Written::default()
    });

    // Pausing revokes both: the record grants nothing and lists both revokes, tokens included,
    // so a worker that never saw a grant (or its current token) can still answer it.
    state.pause_job(&job_name()).unwrap();
    state.reconcile(2);
    let changes = state.take_changes().assignments;
    let record = &changes[0].value;
    assert!(record.grants.is_empty());
    let listed: Vec<(u64, PartitionLeaseToken)> = record
        .revoking
        .iter()
        .map(|grant| (grant.partition.get(), grant.token))
        .collect();
    let tokens: Vec<(u64, PartitionLeaseToken)> = [1, 2]
        .into_iter()
        .map(|partition| (partition, owner_and_token(&state, partition).1))
        .collect();
    assert_eq!(listed, tokens);
    state.record_written(Written {
        assignments: changes
            .into_iter()
            .map(|Put { key, value, .. }| (key, value, Revision(6)))
            .collect(),
        ..Written::default()
    });

    // A checkpoint of a revoking partition rewrites no record.
    let (_, token) = owner_and_token(&state, 1);
    state
        .apply_progress(&report(
            "a",
            1,
            1,
            token,
            ProgressEvent::Checkpoint { last_done: 10 },
        ))
        .unwrap();
    state.reconcile(3);
    assert!(state.take_changes().assignments.is_empty());

    // Its release takes it off the list.
    state
        .apply_progress(&report(
            "a",
            1,
            1,
            token,
            ProgressEvent::Released {
                last_done: Some(10),
            },
        ))
        .unwrap();
    state.reconcile(4);
    let changes = state.take_changes().assignments;
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].key, a);
    let left: Vec<u64> = changes[0]
        .value
        .revoking
        .iter()
        .map(|grant| grant.partition.get())
        .collect();
    assert_eq!(left, vec![2]);
}
