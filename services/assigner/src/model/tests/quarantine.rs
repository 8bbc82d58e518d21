//! Crash-loop containment (`model/quarantine.rs`): holder deaths are recorded, enough of them
//! with no progress in between park the partition (the rest of the job goes on), progress starts
//! the count anew, and `retry` releases it.

use super::*;
use crate::model::quarantine::{AfterDeath, after_death};
use elk_protocol::messages::{HolderDeath, JobState, PartitionStatus};

/// The member holding `partition` now.
fn holder(state: &AssignerState, partition: u64) -> MemberRef {
    record(state, partition)
        .owner
        .clone()
        .expect("the partition is held")
}

/// `dead` disappears from the view (replaced by its next incarnation, as a restarted process
/// is) and its partitions are reclaimed at `now`; then a round grants what is pending.
fn die_and_restart(
    state: &mut AssignerState,
    dead: &MemberRef,
    others: &[(&str, u64, u32)],
    now: u64,
) {
    state.advance_clock(now);
    let mut members: Vec<(&str, u64, u32)> = others.to_vec();
    members.push((dead.id.as_str(), dead.incarnation.get() + 1, 1));
    let gone = state.apply_view(&view(&members));
    assert_eq!(gone, vec![dead.clone()]);
    assert!(state.reclaim(dead) >= 1);
    state.reconcile(now);
}

/// One partition (1..=1,000) held by `w` (capacity 1, one grant per capacity) at time 1.
fn one_partition_on_one_worker(threshold: u32) -> AssignerState {
    let mut state = state_with_job(IdRange::new(1, 1_000).unwrap(), 1_000);
    state.policy.grants_per_capacity = 1;
    state.policy.quarantine_after_deaths = threshold;
    state.apply_view(&view(&[("w", 1, 1)]));
    state.reconcile(1);
    state
}

#[test]
fn holders_dying_three_times_quarantine_the_partition_and_the_rest_of_the_job_goes_on() {
    let mut state = state_with_job(IdRange::new(1, 2_000).unwrap(), 1_000);
    state.policy.grants_per_capacity = 1;
    state.apply_view(&view(&[("a", 1, 1), ("b", 1, 1)]));
    state.reconcile(1);
    // The other partition completes on its holder.
    let other = holder(&state, 2);
    let token = record(&state, 2).token;
    state
        .apply_progress(&report(
            other.id.as_str(),
            other.incarnation.get(),
            2,
            token,
            ProgressEvent::Completed,
        ))
        .unwrap();
    let healthy = (other.id.as_str().to_owned(), other.incarnation.get());

    let mut died = Vec::new();
    for death in 1..=3u64 {
        let dead = holder(&state, 1);
        assert_ne!(
            dead.id.as_str(),
            healthy.0,
            "the healthy worker is busy? it is not"
        );
        died.push(dead.clone());
        die_and_restart(
            &mut state,
            &dead,
            &[(&healthy.0, healthy.1, 1)],
            death * 1_000,
        );
        let record = record(&state, 1);
        assert_eq!(record.holder_deaths.len() as u64, death);
        if death < 3 {
            assert_eq!(record.status, PartitionStatus::Granted, "granted again");
            assert!(!record.quarantined);
        }
    }
    let parked = record(&state, 1).clone();
    assert_eq!(parked.status, PartitionStatus::Failed);
    assert!(parked.quarantined);
    assert_eq!(parked.owner, None);
    assert!(parked.error.as_deref().unwrap().starts_with("quarantined"));
    assert_eq!(
        parked.holder_deaths,
        died.iter()
            .zip([1_000, 2_000, 3_000])
            .map(|(member, at)| HolderDeath {
                member: member.clone(),
                at_unix_ms: at,
                checkpoint: None,
            })
            .collect::<Vec<_>>(),
        "who died and when"
    );
    let counters = state.counters();
    assert_eq!(
        (counters.partitions_quarantined, counters.partitions_parked),
        (1, 1)
    );
    let job = &state.jobs[&job_name()].value;
    assert_eq!((job.partitions_failed, job.partitions_completed), (1, 1));
    assert_eq!(
        job.state,
        JobState::Active,
        "a parked partition keeps it open"
    );
    let gauges = state.gauges();
    assert_eq!(gauges.jobs[0].quarantined, 1);
    assert_eq!(gauges.jobs[0].partitions["failed"], 1);
    // Not granted again while quarantined, whatever the rounds.
    state.reconcile(10_000);
    assert_eq!(record_status(&state, 1), PartitionStatus::Failed);
    // Visible through the listing and the ID lookup.
    let (failed, _) = state
        .list_partitions(
            Some(&job_name()),
            &[PartitionStatus::Failed],
            None,
            None,
            usize::MAX,
        )
        .unwrap();
    assert!(failed[0].quarantined);
    match state.id_status(&job_name(), 500).unwrap() {
        elk_protocol::admin::IdState::InPartition { partition } => {
            assert_eq!(partition.holder_deaths.len(), 3)
        }
        other => panic!("unexpected {other:?}"),
    }

    // `retry` releases it with a clean record; it completes and so does the job.
    assert_eq!(state.retry(Some(&job_name()), Some(PartitionId(1))), Ok(1));
    let retried = record(&state, 1);
    assert_eq!(retried.status, PartitionStatus::Pending);
    assert!(!retried.quarantined && retried.holder_deaths.is_empty());
    state.reconcile(11_000);
    let now_holder = holder(&state, 1);
    let token = record(&state, 1).token;
    state
        .apply_progress(&report(
            now_holder.id.as_str(),
            now_holder.incarnation.get(),
            1,
            token,
            ProgressEvent::Completed,
        ))
        .unwrap();
    state.reconcile(12_000);
    assert_eq!(state.jobs[&job_name()].value.state, JobState::Completed);
}

fn record_status(state: &AssignerState, partition: u64) -> PartitionStatus {
    record(state, partition).status
}

#[test]
fn progress_between_deaths_starts_the_count_anew() {
    let mut state = one_partition_on_one_worker(3);
    let mut now = 1_000;
    for checkpoint in [100, 200] {
        let dead = holder(&state, 1);
        let token = record(&state, 1).token;
        let event = ProgressEvent::Checkpoint {
            last_done: checkpoint,
        };
        state
            .apply_progress(&report(
                dead.id.as_str(),
                dead.incarnation.get(),
                1,
                token,
                event,
            ))
            .unwrap();
        die_and_restart(&mut state, &dead, &[], now);
        now += 1_000;
        let deaths = &record(&state, 1).holder_deaths;
        assert_eq!(
            deaths.len(),
            1,
            "the checkpoint moved: only the last death counts"
        );
        assert_eq!(deaths[0].checkpoint, Some(checkpoint));
    }
    // Two more deaths without progress: three in a row at checkpoint 200.
    for _ in 0..2 {
        let dead = holder(&state, 1);
        die_and_restart(&mut state, &dead, &[], now);
        now += 1_000;
    }
    let record = record(&state, 1);
    assert!(record.quarantined);
    assert_eq!(
        record
            .holder_deaths
            .iter()
            .map(|d| d.checkpoint)
            .collect::<Vec<_>>(),
        [Some(200); 3]
    );
    // Its next grant would resume after the checkpoint, as for any parked partition.
    assert_eq!(record.checkpoint, Some(200));
}

#[test]
fn with_quarantine_off_deaths_are_kept_bounded_and_never_park() {
    let mut state = one_partition_on_one_worker(0);
    for death in 1..=20u64 {
        let dead = holder(&state, 1);
        die_and_restart(&mut state, &dead, &[], death * 1_000);
    }
    let record = record(&state, 1);
    assert_eq!(record.status, PartitionStatus::Granted);
    assert!(!record.quarantined);
    assert_eq!(record.holder_deaths.len(), 16, "the latest 16");
    assert_eq!(record.holder_deaths[15].at_unix_ms, 20_000);
    assert_eq!(state.counters().partitions_quarantined, 0);
}

#[test]
fn a_worker_leaving_after_its_release_is_no_death() {
    let mut state = one_partition_on_one_worker(1);
    let dead = holder(&state, 1);
    let token = record(&state, 1).token;
    let released = ProgressEvent::Released {
        last_done: Some(10),
    };
    state
        .apply_progress(&report(
            dead.id.as_str(),
            dead.incarnation.get(),
            1,
            token,
            released,
        ))
        .unwrap();
    assert!(state.apply_view(&view(&[])).is_empty(), "it holds nothing");
    assert_eq!(state.reclaim(&dead), 0, "nothing to take back");
    assert!(record(&state, 1).holder_deaths.is_empty());
    assert_eq!(record_status(&state, 1), PartitionStatus::Pending);
}

#[test]
fn only_the_partitions_the_dead_worker_was_running_carry_its_death() {
    // Capacity 1, two grants per capacity: it runs the older grant and queues the other.
    let mut state = state_with_job(IdRange::new(1, 2_000).unwrap(), 1_000);
    state.apply_view(&view(&[("w", 1, 1)]));
    state.reconcile(1);
    let (running, queued) = if record(&state, 1).token < record(&state, 2).token {
        (1, 2)
    } else {
        (2, 1)
    };
    let dead = holder(&state, 1);
    die_and_restart(&mut state, &dead, &[], 1_000);
    assert_eq!(record(&state, running).holder_deaths.len(), 1);
    assert!(
        record(&state, queued).holder_deaths.is_empty(),
        "it never ran there"
    );

    // A leader that never saw the worker's capacity takes held / grants_per_capacity: here its
    // capacity (its slots were full).
    let mut state = state_with_job(IdRange::new(1, 2_000).unwrap(), 1_000);
    state.apply_view(&view(&[("w", 1, 1)]));
    state.reconcile(1);
    state.departed_capacity.clear();
    state.workers.clear();
    let (running, queued) = if record(&state, 1).token < record(&state, 2).token {
        (1, 2)
    } else {
        (2, 1)
    };
    let dead = holder(&state, 1);
    assert_eq!(state.reclaim(&dead), 2);
    assert_eq!(record(&state, running).holder_deaths.len(), 1);
    assert!(record(&state, queued).holder_deaths.is_empty());
}

#[test]
fn the_decision_counts_deaths_since_the_last_progress() {
    let holder = |n: u64| MemberRef {
        id: MemberId::new("w").unwrap(),
        incarnation: Incarnation(n),
    };
    let mut record = PartitionRecord::pending(
        job_name(),
        PartitionId(1),
        IdRange::new(1, 10).unwrap(),
        EPOCH,
    );
    record.checkpoint = Some(4);
    let first = after_death(&record, &holder(1), 7, 2);
    let AfterDeath::Retry(deaths) = first else {
        panic!("one death of two: retried, got {first:?}");
    };
    assert_eq!(
        deaths,
        vec![HolderDeath {
            member: holder(1),
            at_unix_ms: 7,
            checkpoint: Some(4)
        }]
    );
    record.holder_deaths = deaths;
    let second = after_death(&record, &holder(2), 9, 2);
    assert!(matches!(&second, AfterDeath::Quarantine(d) if d.len() == 2));
    record.checkpoint = Some(5);
    let after_progress = after_death(&record, &holder(2), 9, 2);
    assert!(matches!(&after_progress, AfterDeath::Retry(d) if d.len() == 1));
    assert!(matches!(
        after_death(&record, &holder(2), 9, 1),
        AfterDeath::Quarantine(_)
    ));
}
