//! What the model counts and exports for the metrics: grants, revocations by cause, parked
//! partitions, hand-over durations, and the per-job gauges (partitions by status, IDs, backlog
//! age).

use super::*;
use elk_protocol::messages::{JobState, PartitionStatus};

#[test]
fn grants_revocations_by_cause_and_handovers_are_counted() {
    let mut state = state_with_job(IdRange::new(1, 8_000).unwrap(), 1_000);
    state.apply_view(&view(&[("a", 1, 2), ("b", 1, 2)]));
    state.reconcile(1_000);
    assert_eq!(state.counters().grants, 8);

    // c joins: two partitions move, timed from the revoke to the release.
    state.apply_view(&view(&[("a", 1, 2), ("b", 1, 2), ("c", 1, 2)]));
    state.reconcile(2_000);
    let counters = state.counters();
    assert_eq!(
        (counters.revocations, counters.revocations_job_stopped),
        (2, 0)
    );
    let revoking: Vec<(u64, MemberRef, PartitionLeaseToken)> = state
        .partitions
        .iter()
        .filter(|(_, p)| p.value.status == PartitionStatus::Revoking)
        .map(|(key, p)| {
            (
                key.partition.get(),
                p.value.owner.clone().unwrap(),
                p.value.token,
            )
        })
        .collect();
    state.advance_clock(2_750);
    for (id, owner, token) in &revoking {
        let released = ProgressEvent::Released { last_done: None };
        state
            .apply_progress(&report(owner.id.as_str(), 1, *id, *token, released))
            .unwrap();
    }
    assert_eq!(state.take_handover_durations(), vec![750, 750]);
    assert!(state.take_handover_durations().is_empty(), "taken once");
    state.reconcile(3_000);
    assert_eq!(state.counters().grants, 10, "re-granted to c");

    // Pausing the job revokes everything granted, counted as job_stopped.
    state.pause_job(&job_name()).unwrap();
    let counters = state.counters();
    assert_eq!(counters.revocations_job_stopped, 8);
    assert_eq!(counters.revocations, 10);
}

#[test]
fn a_parked_partition_is_counted_once() {
    let mut job = fixed_job(IdRange::new(1, 100).unwrap(), 100);
    job.spec.max_attempts = 1;
    let mut state = state_with(job);
    state.apply_view(&view(&[("a", 1, 1)]));
    state.reconcile(1);
    let (_, token) = owner_and_token(&state, 1);
    state
        .apply_progress(&report("a", 1, 1, token, failed("bad input", None, false)))
        .unwrap();
    state.reconcile(2);
    let counters = state.counters();
    assert_eq!(
        (counters.partitions_parked, counters.retries_scheduled),
        (1, 0)
    );
    let gauges = state.gauges();
    assert_eq!(gauges.jobs[0].partitions["failed"], 1);
}

#[test]
fn job_gauges_count_partitions_by_status_and_age_the_backlog() {
    // 20 partitions cut ahead, one worker with 2 slots: 2 granted, 18 waiting since t = 1 s.
    let mut state = cut_ahead_state_with_job(IdRange::new(1, 2_000).unwrap(), 100);
    state.apply_view(&view(&[("a", 1, 1)]));
    state.reconcile(1_000);
    state.advance_clock(6_000);
    let gauges = state.gauges();
    assert_eq!((gauges.live_workers, gauges.draining_workers), (1, 0));
    let [job] = gauges.jobs.as_slice() else {
        panic!("one job: {gauges:?}");
    };
    assert_eq!(job.state, JobState::Active);
    assert_eq!(job.partitions["granted"], 2);
    assert_eq!(job.partitions["pending"], 18);
    assert_eq!(job.partitions["revoking"], 0);
    assert_eq!(job.partitions["completed"], 0);
    assert_eq!(job.ids_remaining, 2_000);
    assert_eq!(
        job.backlog_age_ms, 5_000,
        "the oldest pending waits since t = 1 s"
    );

    // Completing a granted partition: counted from the job record, IDs move over.
    let (_, token) = owner_and_token(&state, 1);
    state
        .apply_progress(&report("a", 1, 1, token, ProgressEvent::Completed))
        .unwrap();
    state.reconcile(7_000);
    let job = &state.gauges().jobs[0];
    assert_eq!(job.partitions["completed"], 1);
    assert_eq!((job.ids_completed, job.ids_remaining), (100, 1_900));
    assert_eq!(job.partitions["granted"], 2, "the next one is granted");
    assert_eq!(job.backlog_age_ms, 6_000);
}

#[test]
fn finished_jobs_linger_then_leave_the_gauges() {
    let mut state = state_with_job(IdRange::new(1, 100).unwrap(), 100);
    state.apply_view(&view(&[("a", 1, 1)]));
    state.reconcile(1);
    let (_, token) = owner_and_token(&state, 1);
    state
        .apply_progress(&report("a", 1, 1, token, ProgressEvent::Completed))
        .unwrap();
    state.reconcile(2);
    let job = &state.gauges().jobs[0];
    assert_eq!(job.state, JobState::Completed);
    assert_eq!(job.ids_remaining, 0);
    state.advance_clock(2 + super::super::gauges::TERMINAL_JOB_LINGER_MS + 1);
    assert!(state.gauges().jobs.is_empty());
}
