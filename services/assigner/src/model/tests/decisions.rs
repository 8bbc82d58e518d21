//! What rounds decide: cutting jobs, grants and minimal revocations, progress, reclaims, draining,
//! audits, retries and planners.

use super::*;
use crate::model::Rejection;
use elk_protocol::messages::{JobState, PartitionStatus};

#[test]
fn partitions_cover_the_range_exactly() {
    let range = IdRange::new(10, 10_004).unwrap();
    let mut state = state_with_job(range, 1_000);
    state.reconcile(1);
    let ranges: Vec<IdRange> = state.partitions.values().map(|p| p.value.range).collect();
    assert_eq!(ranges.len(), 10);
    assert_eq!(ranges[0].first(), 10);
    assert_eq!(ranges.last().unwrap().last(), 10_004);
    for pair in ranges.windows(2) {
        assert_eq!(pair[0].last() + 1, pair[1].first(), "no gap, no overlap");
    }
    assert_eq!(state.jobs[&job_name()].value.partitions_total, 10);
    // A second round creates nothing more.
    state.reconcile(2);
    assert_eq!(state.partitions.len(), 10);
}

#[test]
fn grants_fill_slots_evenly_and_tokens_are_unique() {
    let mut state = cut_ahead_state_with_job(IdRange::new(1, 100_000).unwrap(), 1_000);
    state.apply_view(&view(&[("a", 1, 2), ("b", 1, 2), ("c", 1, 1)]));
    state.reconcile(1);
    assert_eq!(
        state.granted_to("a"),
        4,
        "capacity 2 x 2 grants per capacity"
    );
    assert_eq!(state.granted_to("c"), 2);
    assert_eq!(state.pending_count(), 100 - 10);
    let mut tokens: Vec<u64> = state
        .partitions
        .values()
        .map(|p| p.value.token.get())
        .filter(|t| *t != 0)
        .collect();
    let before = tokens.len();
    tokens.sort_unstable();
    tokens.dedup();
    assert_eq!(tokens.len(), before);
    let record = state
        .desired_assignment(&MemberId::new("a").unwrap())
        .unwrap();
    assert_eq!(record.grants.len(), 4);
    assert_eq!(record.epoch, EPOCH);
}

#[test]
fn progress_with_a_stale_token_or_owner_is_rejected() {
    let mut state = state_with_job(IdRange::new(1, 10_000).unwrap(), 1_000);
    state.apply_view(&view(&[("a", 1, 1)]));
    state.reconcile(1);
    let (_, token) = owner_and_token(&state, 1);
    let stale = PartitionLeaseToken(token.get() ^ 1);
    assert_eq!(
        state.apply_progress(&report("a", 1, 1, stale, ProgressEvent::Completed)),
        Err(Rejection::StaleToken)
    );
    assert_eq!(
        state.apply_progress(&report("a", 2, 1, token, ProgressEvent::Completed)),
        Err(Rejection::StaleToken)
    );
    assert_eq!(
        state.apply_progress(&report("b", 1, 1, token, ProgressEvent::Completed)),
        Err(Rejection::StaleToken)
    );
    assert_eq!(
        state.apply_progress(&report("a", 1, 99, token, ProgressEvent::Completed)),
        Err(Rejection::UnknownPartition)
    );
    assert_eq!(state.counters().progress_rejected, 4);
    let checkpoint = ProgressEvent::Checkpoint { last_done: 500 };
    assert!(
        state
            .apply_progress(&report("a", 1, 1, token, checkpoint))
            .is_ok()
    );
    assert_eq!(record(&state, 1).checkpoint, Some(500));
    assert!(
        state
            .apply_progress(&report("a", 1, 1, token, ProgressEvent::Completed))
            .is_ok()
    );
    assert!(
        !state.partitions.contains_key(&key(1)),
        "completed partitions leave memory"
    );
    assert_eq!(state.jobs[&job_name()].value.partitions_completed, 1);
    assert_eq!(state.jobs[&job_name()].value.ids_completed, 1_000);
}

#[test]
fn a_checkpoint_outside_the_grant_s_range_is_refused() {
    let mut state = state_with_job(IdRange::new(1, 10_000).unwrap(), 1_000);
    state.apply_view(&view(&[("a", 1, 1)]));
    state.reconcile(1);
    // Partition 2 covers 1,001..=2,000.
    let (_, token) = owner_and_token(&state, 2);
    let outside = [
        ProgressEvent::Checkpoint { last_done: 2_001 },
        ProgressEvent::Checkpoint { last_done: 1_000 },
        ProgressEvent::Released {
            last_done: Some(u64::MAX),
        },
        ProgressEvent::Failed {
            error: "x".to_owned(),
            last_done: Some(0),
            permanent: false,
        },
    ];
    for event in outside {
        assert_eq!(
            state.apply_progress(&report("a", 1, 2, token, event)),
            Err(Rejection::OutOfRange)
        );
    }
    assert_eq!(state.counters().progress_rejected, 4);
    let stored = record(&state, 2);
    assert_eq!(stored.checkpoint, None);
    assert_eq!(stored.status, PartitionStatus::Granted);
    for last_done in [1_001, 2_000] {
        let checkpoint = ProgressEvent::Checkpoint { last_done };
        assert!(
            state
                .apply_progress(&report("a", 1, 2, token, checkpoint))
                .is_ok()
        );
    }
    assert_eq!(record(&state, 2).checkpoint, Some(2_000));
}

#[test]
fn grant_tokens_are_random_and_never_repeat_a_partition_s_last() {
    let mut state = state_with_job(IdRange::new(1, 100_000).unwrap(), 1_000);
    state.apply_view(&view(&[("a", 1, 50)]));
    state.reconcile(1);
    let mut tokens: Vec<u64> = (1..=40)
        .map(|p| owner_and_token(&state, p).1.get())
        .collect();
    tokens.sort_unstable();
    // Sequential tokens (the old `epoch << 32 | counter`) differ by one; random ones by ~2^58.
    let closest = tokens.windows(2).map(|w| w[1] - w[0]).min().unwrap();
    assert!(closest > 1 << 32, "tokens too close: {closest}");
}

#[test]
fn departed_worker_is_reclaimed_and_regranted_from_its_checkpoint() {
    let mut state = state_with_job(IdRange::new(1, 2_000).unwrap(), 1_000);
    state.apply_view(&view(&[("a", 1, 1)]));
    state.reconcile(1);
    let (_, token) = owner_and_token(&state, 1);
    let checkpoint = ProgressEvent::Checkpoint { last_done: 400 };
    state
        .apply_progress(&report("a", 1, 1, token, checkpoint))
        .unwrap();
    let gone = state.apply_view(&view(&[("b", 1, 1)]));
    assert_eq!(
        gone,
        vec![MemberRef {
            id: MemberId::new("a").unwrap(),
            incarnation: Incarnation(1)
        }]
    );
    assert_eq!(state.reclaim(&gone[0]), 2);
    state.reconcile(2);
    let (owner, new_token) = owner_and_token(&state, 1);
    assert_eq!(owner.unwrap().id.as_str(), "b");
    assert_ne!(new_token, token);
    let record = state
        .desired_assignment(&MemberId::new("b").unwrap())
        .unwrap();
    let grant = record
        .grants
        .iter()
        .find(|g| g.partition == PartitionId(1))
        .unwrap();
    assert_eq!(grant.resume_from, 401);
    // Late progress from the departed owner is rejected.
    assert!(
        state
            .apply_progress(&report("a", 1, 1, token, ProgressEvent::Completed))
            .is_err()
    );
}

#[test]
fn unrequested_release_marks_the_worker_draining() {
    let mut state = state_with_job(IdRange::new(1, 4_000).unwrap(), 1_000);
    state.apply_view(&view(&[("a", 1, 1), ("b", 1, 1)]));
    state.reconcile(1);
    let a = MemberId::new("a").unwrap();
    let (owner, token) = owner_and_token(&state, 1);
    assert_eq!(owner.unwrap().id, a);
    let released = ProgressEvent::Released {
        last_done: Some(250),
    };
    state
        .apply_progress(&report("a", 1, 1, token, released))
        .unwrap();
    state.reconcile(2);
    let (owner, _) = owner_and_token(&state, 1);
    assert_ne!(
        owner.map(|o| o.id),
        Some(a.clone()),
        "a draining worker gets nothing back"
    );
    assert!(state.workers[&a].draining);
}

#[test]
fn a_joining_worker_gets_its_share_by_minimal_revocations() {
    let mut state = state_with_job(IdRange::new(1, 8_000).unwrap(), 1_000);
    state.apply_view(&view(&[("a", 1, 2), ("b", 1, 2)]));
    state.reconcile(1);
    assert_eq!((state.granted_to("a"), state.granted_to("b")), (4, 4));
    assert_eq!(state.counters().revocations, 0);

    // c joins: 8 partitions over 12 slots → quotas 3, 3, 2 (ceil); a and b shed what is over.
    state.apply_view(&view(&[("a", 1, 2), ("b", 1, 2), ("c", 1, 2)]));
    state.reconcile(2);
    assert_eq!(state.counters().revocations, 2, "exactly the minimum moves");
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
    assert_eq!(revoking.len(), 2);
    assert_eq!(
        state.granted_to("c"),
        0,
        "nothing is granted while the old owner may still run it"
    );
    // Revoked partitions leave the owner's record at once.
    let record_a = state
        .desired_assignment(&MemberId::new("a").unwrap())
        .unwrap();
    assert!(
        record_a
            .grants
            .iter()
            .all(|g| !revoking.iter().any(|(id, _, _)| g.partition.get() == *id))
    );

    // The owners release with their checkpoints; the partitions go to c, resuming after them.
    for (id, owner, token) in &revoking {
        let event = ProgressEvent::Released {
            last_done: Some((id - 1) * 1_000 + 10),
        };
        state
            .apply_progress(&report(owner.id.as_str(), 1, *id, *token, event))
            .unwrap();
    }
    state.reconcile(3);
    assert_eq!(state.granted_to("c"), 2);
    assert_eq!(
        state.counters().revocations,
        2,
        "no further moves once balanced"
    );
    let record_c = state
        .desired_assignment(&MemberId::new("c").unwrap())
        .unwrap();
    for grant in &record_c.grants {
        assert_eq!(grant.resume_from, grant.range.first() + 10);
    }
    assert!(
        state.workers.values().all(|w| !w.draining),
        "a revoked release is not a shutdown"
    );
}

fn partition_record(id: u64, range: IdRange, status: PartitionStatus) -> PartitionRecord {
    let mut record = PartitionRecord::pending(job_name(), PartitionId(id), range, Epoch(1));
    record.status = status;
    record
}

#[test]
fn the_audit_at_load_repairs_a_deleted_partition() {
    let mut job = fixed_job(IdRange::new(1, 5_000).unwrap(), 1_000);
    job.cursor = 5_001;
    job.next_partition = PartitionId(6);
    job.partitions_total = 5;
    job.partitions_completed = 1;
    // Partition 3 ([2001, 3000]) was deleted by hand; partition 1 is completed.
    let partitions = [
        (1, PartitionStatus::Completed),
        (2, PartitionStatus::Pending),
        (4, PartitionStatus::Pending),
        (5, PartitionStatus::Pending),
    ]
    .into_iter()
    .map(|(id, status)| {
        let range = IdRange::new((id - 1) * 1_000 + 1, id * 1_000).unwrap();
        (partition_record(id, range, status), Revision(id))
    })
    .collect();
    let mut state = loaded(Snapshot {
        jobs: vec![(job, Revision(1))],
        partitions,
        ..Snapshot::default()
    });
    assert_eq!(state.counters().gaps_detected, 1);
    state.reconcile(1);
    assert_eq!(state.counters().gaps_repaired, 1);
    let repaired = record(&state, 6);
    assert_eq!(repaired.range, IdRange::new(2_001, 3_000).unwrap());
    // Counters follow KV (4 partitions left) plus the repair.
    assert_eq!(state.jobs[&job_name()].value.partitions_total, 5);
    // Nothing else is created: the range is covered again.
    state.reconcile(2);
    assert_eq!(state.partitions.len(), 4);
    assert_eq!(state.counters().overlaps_detected, 0);
}

#[test]
fn a_completion_stored_without_its_job_record_is_counted_at_load() {
    // Partitions 1 and 2 completed in KV, but the job record written after them was lost (a
    // NATS failover between the two writes): it still counts partition 1 only.
    let mut job = fixed_job(IdRange::new(1, 3_000).unwrap(), 1_000);
    job.cursor = 3_001;
    job.next_partition = PartitionId(4);
    job.partitions_total = 3;
    job.partitions_completed = 1;
    job.ids_completed = 1_000;
    let partitions = [
        (1, PartitionStatus::Completed),
        (2, PartitionStatus::Completed),
        (3, PartitionStatus::Pending),
    ]
    .into_iter()
    .map(|(id, status)| {
        let range = IdRange::new((id - 1) * 1_000 + 1, id * 1_000).unwrap();
        (partition_record(id, range, status), Revision(id))
    })
    .collect();
    let state = loaded(Snapshot {
        jobs: vec![(job, Revision(1))],
        partitions,
        ..Snapshot::default()
    });
    let job = &state.jobs[&job_name()].value;
    assert_eq!((job.partitions_total, job.partitions_completed), (3, 2));
    assert_eq!(job.ids_completed, 2_000, "the IDs follow the partitions");
    assert_eq!(state.counters().gaps_detected, 0);
}

#[test]
fn partitions_created_without_their_job_record_are_never_cut_again_nor_their_ids_reused() {
    // The old leader wrote partitions 3 and 4, then failed before the job record advancing the
    // cursor past them: the record still says cursor 2,001 and next partition 3.
    let mut job = fixed_job(IdRange::new(1, 6_000).unwrap(), 1_000);
    job.cursor = 2_001;
    job.next_partition = PartitionId(3);
    job.partitions_total = 2;
    let partitions: Vec<_> = (1..=4)
        .map(|id| {
            let range = IdRange::new((id - 1) * 1_000 + 1, id * 1_000).unwrap();
            (
                partition_record(id, range, PartitionStatus::Pending),
                Revision(id),
            )
        })
        .collect();
    let mut state = loaded(Snapshot {
        jobs: vec![(job, Revision(1))],
        partitions,
        ..Snapshot::default()
    });
    let job = &state.jobs[&job_name()].value;
    assert_eq!((job.cursor, job.next_partition), (4_001, PartitionId(5)));
    state.reconcile(1);
    assert_eq!(state.counters().overlaps_detected, 0, "nothing re-cut");
    for id in 1..=4 {
        let range = IdRange::new((id - 1) * 1_000 + 1, id * 1_000).unwrap();
        assert_eq!(record(&state, id).range, range, "partition {id} kept");
    }
    assert_eq!(record(&state, 5).range, IdRange::new(4_001, 5_000).unwrap());
    assert_eq!(record(&state, 6).range, IdRange::new(5_001, 6_000).unwrap());
    assert_eq!(state.jobs[&job_name()].value.partitions_total, 6);
    assert!(state.indexes_consistent());
}

#[test]
fn a_partition_read_staler_than_its_job_record_is_taken_as_completed() {
    // The job record counts [1, 3000] (watermark) and [6001, 9000] as completed, but the
    // snapshot read of the partitions came from a replica still catching up: they look granted.
    let mut job = fixed_job(IdRange::new(1, 10_000).unwrap(), 1_000);
    job.cursor = 10_001;
    job.next_partition = PartitionId(11);
    job.partitions_total = 10;
    job.partitions_completed = 6;
    // Below the watermark they were counted as compacted; their deletes had not happened.
    job.partitions_compacted = 3;
    job.low_watermark = Some(3_000);
    job.completed_above_watermark = vec![IdRange::new(6_001, 9_000).unwrap()];
    let stale = [1, 2, 3, 7, 8, 9];
    let partitions: Vec<_> = (1..=10)
        .map(|id| {
            let range = IdRange::new((id - 1) * 1_000 + 1, id * 1_000).unwrap();
            let status = if stale.contains(&id) {
                PartitionStatus::Granted
            } else {
                PartitionStatus::Pending
            };
            let mut record = partition_record(id, range, status);
            if status == PartitionStatus::Granted {
                record.owner = Some(MemberRef {
                    id: MemberId::new("w").unwrap(),
                    incarnation: Incarnation(1),
                });
            }
            (record, Revision(id))
        })
        .collect();
    let mut state = loaded(Snapshot {
        jobs: vec![(job, Revision(1))],
        partitions,
        ..Snapshot::default()
    });
    state.reconcile(1);
    let live: Vec<u64> = state
        .partitions
        .keys()
        .map(|key| key.partition.get())
        .collect();
    assert_eq!(
        live,
        vec![4, 5, 6, 10],
        "only the unfinished partitions are live"
    );
    assert_eq!(state.counters().overlaps_detected, 0);
    let job = &state.jobs[&job_name()].value;
    assert_eq!((job.partitions_total, job.partitions_completed), (10, 6));
    assert!(state.indexes_consistent());
}

#[test]
fn overlapping_partitions_are_reported_never_created_twice() {
    let mut job = fixed_job(IdRange::new(1, 2_000).unwrap(), 1_000);
    job.cursor = 2_001;
    job.next_partition = PartitionId(3);
    job.partitions_total = 2;
    let partitions = vec![
        (
            partition_record(1, IdRange::new(1, 1_000).unwrap(), PartitionStatus::Pending),
            Revision(1),
        ),
        (
            partition_record(
                2,
                IdRange::new(500, 2_000).unwrap(),
                PartitionStatus::Pending,
            ),
            Revision(2),
        ),
    ];
    let mut state = loaded(Snapshot {
        jobs: vec![(job, Revision(1))],
        partitions,
        ..Snapshot::default()
    });
    assert_eq!(state.counters().overlaps_detected, 1);
    // The refused partition's IDs are not re-created: partition 2 still exists in KV.
    state.reconcile(1);
    assert_eq!(state.counters().gaps_repaired, 0);
    assert_eq!(state.jobs[&job_name()].value.partitions_total, 2);
}

#[test]
fn failures_back_off_then_park_and_retry_requeues() {
    let mut job = fixed_job(IdRange::new(1, 1_000).unwrap(), 1_000);
    job.spec.retry_backoff_ms = 100;
    let mut state = state_with(job);
    state.apply_view(&view(&[("a", 1, 1)]));
    state.reconcile(10_000);
    let fail = |state: &mut AssignerState| {
        let (_, token) = owner_and_token(state, 1);
        state
            .apply_progress(&report("a", 1, 1, token, failed("boom", Some(99), false)))
            .unwrap();
    };

    fail(&mut state);
    let parked = record(&state, 1);
    assert_eq!(parked.status, PartitionStatus::Pending);
    assert_eq!(parked.attempts, 1);
    assert_eq!(
        parked.not_before_unix_ms,
        Some(10_100),
        "first retry after the base backoff"
    );
    assert_eq!(
        parked.checkpoint,
        Some(99),
        "a retry resumes after the last checkpoint"
    );
    state.reconcile(10_099);
    assert_eq!(
        owner_and_token(&state, 1).0,
        None,
        "not granted during the backoff"
    );
    state.reconcile(10_100);
    assert!(owner_and_token(&state, 1).0.is_some());

    fail(&mut state);
    assert_eq!(
        record(&state, 1).not_before_unix_ms,
        Some(10_300),
        "the backoff doubles"
    );
    state.reconcile(10_300);
    fail(&mut state);
    let parked = record(&state, 1);
    assert_eq!(
        parked.status,
        PartitionStatus::Failed,
        "parked after max_attempts (3)"
    );
    assert_eq!(state.jobs[&job_name()].value.partitions_failed, 1);
    assert_eq!(state.counters().retries_scheduled, 2);

    assert_eq!(state.retry(Some(&job_name()), None), Ok(1));
    let requeued = record(&state, 1);
    assert_eq!(
        (requeued.status, requeued.attempts),
        (PartitionStatus::Pending, 0)
    );
    assert_eq!(state.jobs[&job_name()].value.partitions_failed, 0);
}

#[test]
fn a_permanent_failure_parks_the_partition_without_spending_attempts() {
    let mut job = fixed_job(IdRange::new(1, 2_000).unwrap(), 1_000);
    job.spec.max_attempts = 5;
    let mut state = state_with(job);
    state.apply_view(&view(&[("a", 1, 1)]));
    state.reconcile(1_000);
    let (_, token) = owner_and_token(&state, 1);
    state
        .apply_progress(&report("a", 1, 1, token, failed("poison", Some(42), true)))
        .unwrap();
    let parked = record(&state, 1);
    assert_eq!(parked.status, PartitionStatus::Failed, "parked at once");
    assert_eq!(parked.attempts, 1, "4 attempts left, none spent");
    assert_eq!(parked.error.as_deref(), Some("poison"));
    assert_eq!(parked.checkpoint, Some(42));
    assert_eq!(parked.not_before_unix_ms, None);
    assert_eq!(state.counters().retries_scheduled, 0);
    assert_eq!(state.jobs[&job_name()].value.partitions_failed, 1);
    // Never granted again by itself; the other partition goes on.
    state.reconcile(1_000_000);
    assert_eq!(record(&state, 1).owner, None);
    assert_eq!(state.granted_to("a"), 1);
    // An operator's retry brings it back.
    assert_eq!(state.retry(Some(&job_name()), Some(PartitionId(1))), Ok(1));
    assert_eq!(record(&state, 1).status, PartitionStatus::Pending);
}

#[test]
fn open_ended_jobs_plan_what_the_planner_reports_within_the_backlog() {
    let spec = JobSpec {
        lookahead: 2,
        ..JobSpec::open_ended(1, 100)
    };
    let mut state = state_with(JobRecord::new(job_name(), spec, EPOCH, 0));
    state.apply_view(&view(&[("a", 1, 2)]));

    let round = state.reconcile(5_000);
    assert!(state.partitions.is_empty(), "nothing known yet");
    assert_eq!(round.plan_questions.len(), 1);
    let question = &round.plan_questions[0];
    assert_eq!((question.cursor, question.wanted), (1, 400));
    assert!(
        state.reconcile(5_001).plan_questions.is_empty(),
        "one outstanding question per job"
    );

    state.apply_plan_answer(&job_name(), Some(1_050));
    let round = state.reconcile(5_002);
    // Backlog target: capacity 2 × lookahead 2 = 4 partitions, though 11 are known.
    assert_eq!(state.partitions.len(), 4);
    assert_eq!(state.jobs[&job_name()].value.cursor, 401);
    assert!(
        round.plan_questions.is_empty(),
        "known data is not planned yet"
    );

    // Completing partitions makes room; the rest of the known data is planned, then asked again.
    for id in 1..=4 {
        let (_, token) = owner_and_token(&state, id);
        state
            .apply_progress(&report("a", 1, id, token, ProgressEvent::Completed))
            .unwrap();
    }
    state.reconcile(5_003);
    assert_eq!(state.jobs[&job_name()].value.cursor, 801);
    for id in 5..=8 {
        let (_, token) = owner_and_token(&state, id);
        state
            .apply_progress(&report("a", 1, id, token, ProgressEvent::Completed))
            .unwrap();
    }
    state.reconcile(5_004);
    let last = state
        .partitions
        .values()
        .map(|p| p.value.range.last())
        .max()
        .unwrap();
    assert_eq!(last, 1_050, "the last partition ends at the known max");
    assert_eq!(
        state.jobs[&job_name()].value.state,
        JobState::Active,
        "open-ended jobs stay open"
    );
    assert_eq!(
        state.reconcile(6_005).plan_questions.len(),
        1,
        "asks again once everything known is planned"
    );
}

#[test]
fn an_unanswered_revoke_is_reported_but_never_granted_elsewhere() {
    let mut state = state_with_job(IdRange::new(1, 8_000).unwrap(), 1_000);
    state.apply_view(&view(&[("a", 1, 2), ("b", 1, 2)]));
    state.reconcile(1_000);
    state.apply_view(&view(&[("a", 1, 2), ("b", 1, 2), ("c", 1, 2)]));
    state.reconcile(1_000);
    assert_eq!(state.counters().revocations, 2);

    state.reconcile(1_000 + 4_999);
    assert_eq!(state.counters().revokes_overdue, 0);
    state.reconcile(1_000 + 5_000);
    state.reconcile(1_000 + 5_001);
    assert_eq!(
        state.counters().revokes_overdue,
        2,
        "each overdue revoke is reported once"
    );
    assert_eq!(
        state.granted_to("c"),
        0,
        "still waiting for the release or the owner's expiry"
    );
    let revoking = state
        .partitions
        .values()
        .filter(|p| p.value.status == PartitionStatus::Revoking);
    assert_eq!(revoking.count(), 2);
}

#[test]
fn draining_is_written_to_the_record_and_survives_a_new_leader() {
    let mut state = state_with_job(IdRange::new(1, 4_000).unwrap(), 1_000);
    state.apply_view(&view(&[("a", 1, 1), ("b", 1, 1)]));
    state.reconcile(1);
    let a = MemberId::new("a").unwrap();
    let (_, token) = owner_and_token(&state, 1);
    let released = ProgressEvent::Released { last_done: None };
    state
        .apply_progress(&report("a", 1, 1, token, released))
        .unwrap();
    let record = state.desired_assignment(&a).unwrap();
    assert!(record.drain, "the shutting-down worker's record says drain");

    // A new leader loads that record: the worker is still draining and gets nothing.
    let mut next = loaded(Snapshot {
        jobs: vec![(
            fixed_job(IdRange::new(1, 4_000).unwrap(), 1_000),
            Revision(1),
        )],
        assignments: vec![(a.clone(), record, Revision(9))],
        ..Snapshot::default()
    });
    next.apply_view(&view(&[("a", 1, 1), ("b", 1, 1)]));
    assert!(next.workers[&a].draining);
    next.reconcile(1);
    assert_eq!(next.granted_to("a"), 0);
}
