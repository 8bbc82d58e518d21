//! Straggler splitting and adaptive partition size (`model/split.rs`): the pure decisions (unit
//! tests and properties) and what rounds do with them (revoke, re-cut after the release, new
//! pieces the next round, exact coverage and `id_status`).

use super::*;
use crate::model::TailPolicy;
use crate::model::split::{Running, SplitPlan, adaptive_size, choose_splits, piece_ranges};
use elk_protocol::admin::IdState;
use elk_protocol::messages::{JobState, PartitionStatus};
use proptest::prelude::*;

fn splitting() -> TailPolicy {
    TailPolicy {
        split: true,
        split_min_remaining_ms: 5_000,
        split_min_ids: 100,
        split_max_pieces: 16,
        splits_per_round: 4,
        observe_min_ms: 1_000,
        ..TailPolicy::default()
    }
}

fn running(key: u64, remaining: u64, done: u64, observed_ms: u64) -> Running<u64> {
    Running {
        key,
        remaining,
        done,
        observed_ms,
    }
}

fn range(first: u64, last: u64) -> IdRange {
    IdRange::new(first, last).unwrap()
}

#[test]
fn a_slow_partition_is_split_over_the_free_slots() {
    // 8,000 IDs left at 1 ID/ms: 8 s, over the 5 s threshold; 3 free slots → 4 pieces.
    let plans = choose_splits(&splitting(), 3, &[running(7, 8_000, 2_000, 2_000)]);
    assert_eq!(plans, vec![SplitPlan { key: 7, pieces: 4 }]);
}

#[test]
fn nothing_is_split_without_a_free_slot_a_rate_or_a_long_remainder() {
    let policy = splitting();
    let slow = running(1, 8_000, 2_000, 2_000);
    assert!(choose_splits(&policy, 0, std::slice::from_ref(&slow)).is_empty());
    let off = TailPolicy {
        split: false,
        ..policy.clone()
    };
    assert!(choose_splits(&off, 3, std::slice::from_ref(&slow)).is_empty());
    // No checkpoint moved yet, or not observed long enough: no rate, no split.
    assert!(choose_splits(&policy, 3, &[running(1, 8_000, 0, 5_000)]).is_empty());
    assert!(choose_splits(&policy, 3, &[running(1, 8_000, 100, 999)]).is_empty());
    // 4 s left: under the threshold.
    assert!(choose_splits(&policy, 3, &[running(1, 4_000, 2_000, 2_000)]).is_empty());
    // 150 IDs left: two pieces would be under 100 IDs each.
    assert!(choose_splits(&policy, 3, &[running(1, 150, 1, 1_000)]).is_empty());
}

#[test]
fn the_longest_goes_first_and_splits_are_bounded_per_round() {
    let policy = TailPolicy {
        splits_per_round: 2,
        ..splitting()
    };
    let partitions = [
        running(1, 10_000, 1_000, 1_000), // 10 s
        running(2, 40_000, 1_000, 1_000), // 40 s
        running(3, 20_000, 1_000, 1_000), // 20 s
    ];
    let plans = choose_splits(&policy, 100, &partitions);
    assert_eq!(
        plans,
        vec![
            SplitPlan { key: 2, pieces: 16 },
            SplitPlan { key: 3, pieces: 16 }
        ]
    );
    // Two free slots: the longest takes both.
    let plans = choose_splits(&splitting(), 2, &partitions);
    assert_eq!(plans, vec![SplitPlan { key: 2, pieces: 3 }]);
}

#[test]
fn a_re_cut_keeps_the_done_prefix_and_cuts_equal_pieces() {
    let (kept, rest) = piece_ranges(range(1, 10_000), 2_101, 4, 100).unwrap();
    assert_eq!(kept, range(1, 4_075));
    assert_eq!(
        rest,
        vec![
            range(4_076, 6_050),
            range(6_051, 8_025),
            range(8_026, 10_000)
        ]
    );
    // Fewer pieces when the remainder is small; none when two do not fit.
    let (_, rest) = piece_ranges(range(1, 1_000), 701, 8, 100).unwrap();
    assert_eq!(rest.len(), 2);
    assert!(piece_ranges(range(1, 1_000), 850, 8, 100).is_none());
    assert!(piece_ranges(range(1, 1_000), 1_001, 8, 1).is_none());
}

#[test]
fn adaptive_size_follows_the_rate_within_bounds() {
    let policy = TailPolicy {
        target_partition_ms: Some(10_000),
        min_partition_ids: 500,
        max_partition_ids: 50_000,
        ..TailPolicy::default()
    };
    assert_eq!(adaptive_size(&policy, 1_000, None), 1_000);
    assert_eq!(adaptive_size(&policy, 1_000, Some(2.0)), 20_000);
    assert_eq!(adaptive_size(&policy, 1_000, Some(0.001)), 500);
    assert_eq!(adaptive_size(&policy, 1_000, Some(1e9)), 50_000);
    assert_eq!(adaptive_size(&policy, 1_000, Some(f64::NAN)), 1_000);
    assert_eq!(
        adaptive_size(&TailPolicy::default(), 1_000, Some(2.0)),
        1_000
    );
}

proptest! {
    #[test]
    fn re_cuts_cover_the_remainder_exactly(
        first in 0u64..1_000,
        len in 1u64..100_000,
        offset in 0u64..100_000,
        pieces in 2u32..20,
        min_ids in 1u64..5_000,
    ) {
        let whole = range(first, first + len - 1);
        let resume = first + offset % (len + 1);
        let Some((kept, rest)) = piece_ranges(whole, resume, pieces, min_ids) else {
            // Only when two pieces of min_ids do not fit.
            prop_assert!(resume > whole.last() || whole.last() - resume + 1 < 2 * min_ids);
            return Ok(());
        };
        prop_assert_eq!(kept.first(), whole.first());
        prop_assert!(kept.last() >= resume);
        prop_assert!(!rest.is_empty() && rest.len() < pieces as usize);
        let mut next = kept.last() + 1;
        let mut sizes = vec![kept.last() - resume + 1];
        for piece in &rest {
            prop_assert_eq!(piece.first(), next);
            next = piece.last() + 1;
            sizes.push(piece.len());
        }
        prop_assert_eq!(next, whole.last() + 1);
        prop_assert!(sizes.iter().all(|size| *size >= min_ids), "{:?}", sizes);
    }

    #[test]
    fn splits_never_exceed_free_slots_bounds_or_sizes(
        free in 0u64..40,
        partitions in proptest::collection::vec((1u64..200_000, 0u64..10_000, 0u64..20_000), 0..12),
        max_pieces in 2u32..10,
        per_round in 1usize..5,
        min_ids in 1u64..2_000,
    ) {
        let policy = TailPolicy {
            split_max_pieces: max_pieces,
            splits_per_round: per_round,
            split_min_ids: min_ids,
            ..splitting()
        };
        let running: Vec<Running<u64>> = partitions
            .iter()
            .enumerate()
            .map(|(key, (remaining, done, observed))| running(key as u64, *remaining, *done, *observed))
            .collect();
        let plans = choose_splits(&policy, free, &running);
        prop_assert!(plans.len() <= per_round);
        let used: u64 = plans.iter().map(|plan| u64::from(plan.pieces) - 1).sum();
        prop_assert!(used <= free);
        for plan in &plans {
            let partition = &running[plan.key as usize];
            prop_assert!(plan.pieces >= 2 && plan.pieces <= max_pieces);
            prop_assert!(partition.remaining / u64::from(plan.pieces) >= min_ids);
            let remaining_ms = partition.remaining_ms(policy.observe_min_ms);
            prop_assert!(remaining_ms.is_some_and(|ms| ms >= policy.split_min_remaining_ms));
        }
        let mut keys: Vec<u64> = plans.iter().map(|plan| plan.key).collect();
        keys.dedup();
        prop_assert_eq!(keys.len(), plans.len());
    }

    #[test]
    fn adaptive_sizes_stay_within_bounds(rate in 0.0001f64..1e7, target in 1u64..100_000) {
        let policy = TailPolicy {
            target_partition_ms: Some(target),
            min_partition_ids: 50,
            max_partition_ids: 20_000,
            ..TailPolicy::default()
        };
        let size = adaptive_size(&policy, 1_000, Some(rate));
        prop_assert!((50..=20_000).contains(&size));
    }
}

/// A model holding one fixed job over `1..=last` cut in `size`, loaded under `policy`.
fn job_under(policy: Policy, last: u64, size: u64) -> AssignerState {
    let snapshot = Snapshot {
        jobs: vec![(fixed_job(range(1, last), size), Revision(1))],
        ..Snapshot::default()
    };
    AssignerState::load(EPOCH, policy, 0, snapshot)
}

fn splitting_policy() -> Policy {
    Policy {
        tails: splitting(),
        ..policy()
    }
}

/// One job of one 10,000-ID partition, four workers of capacity 1, splitting on.
fn one_straggler() -> AssignerState {
    let mut state = job_under(splitting_policy(), 10_000, 10_000);
    state.apply_view(&view(&[("a", 1, 1), ("b", 1, 1), ("c", 1, 1), ("d", 1, 1)]));
    state.reconcile(0);
    assert_eq!(state.partitions.len(), 1);
    state
}

fn holder(state: &AssignerState, partition: u64) -> (String, u64, PartitionLeaseToken) {
    let record = record(state, partition);
    let owner = record.owner.clone().expect("owned");
    (owner.id.to_string(), owner.incarnation.get(), record.token)
}

fn live_ranges(state: &mut AssignerState) -> Vec<IdRange> {
    state
        .coverage_of(&job_name())
        .unwrap()
        .live_ranges()
        .collect()
}

fn checkpoint(state: &mut AssignerState, partition: u64, last_done: u64) {
    let (worker, incarnation, token) = holder(state, partition);
    state
        .apply_progress(&report(
            &worker,
            incarnation,
            partition,
            token,
            ProgressEvent::Checkpoint { last_done },
        ))
        .unwrap();
}

/// Runs the straggler to its split: 2,000 IDs in 2 s (8 s left), revoked, released at 2,100.
fn split_and_release(state: &mut AssignerState) -> String {
    checkpoint(state, 1, 500);
    state.reconcile(500);
    assert_eq!(
        record(state, 1).status,
        PartitionStatus::Granted,
        "observed 0.5 s: no rate yet"
    );
    checkpoint(state, 1, 2_000);
    state.reconcile(2_000);
    assert_eq!(record(state, 1).status, PartitionStatus::Revoking);
    assert_eq!(state.counters().splits, 1);
    assert_eq!(state.counters().revocations_split, 1);
    let (worker, incarnation, token) = holder(state, 1);
    let released = ProgressEvent::Released {
        last_done: Some(2_100),
    };
    state
        .apply_progress(&report(&worker, incarnation, 1, token, released))
        .unwrap();
    worker
}

#[test]
fn a_straggler_is_revoked_re_cut_after_its_release_and_spread_over_idle_workers() {
    let mut state = one_straggler();
    split_and_release(&mut state);
    state.reconcile(2_100);
    // Re-cut: the partition keeps its done prefix and the first piece, granted again at once.
    let kept = record(&state, 1);
    assert_eq!(kept.range, range(1, 4_075));
    assert_eq!(kept.checkpoint, Some(2_100));
    assert_eq!(kept.status, PartitionStatus::Granted);
    assert_eq!(live_ranges(&mut state), vec![range(1, 4_075)]);
    // The rest is planned the next round, after the shrunk record is stored.
    assert!(matches!(
        state.id_status(&job_name(), 5_000).unwrap(),
        IdState::NotPlanned
    ));
    let _ = state.take_changes();
    state.reconcile(2_200);
    assert_eq!(state.counters().split_pieces, 3);
    let ranges: Vec<IdRange> = state.partitions.values().map(|p| p.value.range).collect();
    assert_eq!(
        ranges,
        vec![
            range(1, 4_075),
            range(4_076, 6_050),
            range(6_051, 8_025),
            range(8_026, 10_000)
        ]
    );
    assert_eq!(live_ranges(&mut state), ranges);
    let owners: std::collections::BTreeSet<String> = state
        .partitions
        .values()
        .map(|p| p.value.owner.clone().expect("granted").id.to_string())
        .collect();
    assert_eq!(owners.len(), 4, "one piece per worker: {owners:?}");
    let job = &state.jobs[&job_name()].value;
    assert_eq!(job.partitions_total, 4);
    match state.id_status(&job_name(), 5_000).unwrap() {
        IdState::InPartition { partition } => assert_eq!(partition.range, range(4_076, 6_050)),
        other => panic!("{other:?}"),
    }
    // Every piece completes: the job is complete with every ID counted once.
    for partition in 1..=4 {
        let (worker, incarnation, token) = holder(&state, partition);
        state
            .apply_progress(&report(
                &worker,
                incarnation,
                partition,
                token,
                ProgressEvent::Completed,
            ))
            .unwrap();
    }
    state.reconcile(3_000);
    let job = &state.jobs[&job_name()].value;
    assert_eq!(job.state, JobState::Completed);
    assert_eq!((job.partitions_completed, job.ids_completed), (4, 10_000));
    assert!(matches!(
        state.id_status(&job_name(), 9_999).unwrap(),
        IdState::Completed
    ));
}

#[test]
fn no_split_without_a_free_slot() {
    let mut state = job_under(splitting_policy(), 20_000, 10_000);
    state.apply_view(&view(&[("a", 1, 1), ("b", 1, 1)]));
    state.reconcile(0);
    for at in [1_000, 2_000, 3_000] {
        checkpoint(&mut state, 1, at / 4);
        checkpoint(&mut state, 2, 10_000 + at / 4);
        state.reconcile(at);
    }
    assert_eq!(state.counters().splits, 0);
    assert_eq!(state.partitions.len(), 2);
}

#[test]
fn a_straggler_completing_before_its_release_is_not_re_cut() {
    let mut state = one_straggler();
    checkpoint(&mut state, 1, 2_000);
    state.reconcile(2_000);
    assert_eq!(record(&state, 1).status, PartitionStatus::Revoking);
    let (worker, incarnation, token) = holder(&state, 1);
    state
        .apply_progress(&report(
            &worker,
            incarnation,
            1,
            token,
            ProgressEvent::Completed,
        ))
        .unwrap();
    state.reconcile(2_100);
    state.reconcile(2_200);
    assert_eq!(state.counters().split_pieces, 0);
    let job = &state.jobs[&job_name()].value;
    assert_eq!(
        (job.state, job.partitions_total, job.ids_completed),
        (JobState::Completed, 1, 10_000)
    );
}

#[test]
fn a_straggler_whose_owner_dies_is_re_cut_from_its_checkpoint() {
    let mut state = one_straggler();
    checkpoint(&mut state, 1, 2_000);
    state.reconcile(2_000);
    let (worker, incarnation, _) = holder(&state, 1);
    assert_eq!(record(&state, 1).status, PartitionStatus::Revoking);
    let remaining: Vec<(&str, u64, u32)> = [("a", 1, 1), ("b", 1, 1), ("c", 1, 1), ("d", 1, 1)]
        .into_iter()
        .filter(|(id, _, _)| *id != worker)
        .collect();
    state.apply_view(&view(&remaining));
    let gone = MemberRef {
        id: MemberId::new(&worker).unwrap(),
        incarnation: Incarnation(incarnation),
    };
    assert_eq!(state.reclaim(&gone), 1);
    state.reconcile(2_500);
    let _ = state.take_changes();
    state.reconcile(2_600);
    // 8,000 IDs left from the checkpoint, 3 live workers: 3 pieces (4 were decided; fewer
    // slots now only change who runs them).
    let ranges: Vec<IdRange> = state.partitions.values().map(|p| p.value.range).collect();
    assert_eq!(ranges.first().unwrap().first(), 1);
    assert_eq!(ranges.last().unwrap().last(), 10_000);
    for pair in ranges.windows(2) {
        assert_eq!(pair[0].last() + 1, pair[1].first());
    }
    assert_eq!(record(&state, 1).checkpoint, Some(2_000));
    assert_eq!(live_ranges(&mut state), ranges);
}

#[test]
fn adaptive_size_cuts_new_partitions_from_the_measured_rate() {
    // Two partitions per round (and two free grant slots, which would otherwise widen the
    // cut), cut ahead of the grants (the baseline write path), so later ones are cut after a
    // measurement while the first two still run.
    let tails = TailPolicy {
        target_partition_ms: Some(4_000),
        min_partition_ids: 100,
        max_partition_ids: 100_000,
        ..TailPolicy::default()
    };
    let mut state = job_under(
        cut_ahead(Policy {
            partitions_per_round: 2,
            grants_per_capacity: 1,
            tails,
            ..policy()
        }),
        1_000_000,
        1_000,
    );
    state.apply_view(&view(&[("a", 1, 1), ("b", 1, 1)]));
    state.reconcile(0);
    assert!(state.measured_rate(&job_name()).is_none());
    // 500 IDs per second each: 0.5 ID/ms → 2,000 IDs take the 4 s target.
    checkpoint(&mut state, 1, 500);
    checkpoint(&mut state, 2, 1_500);
    state.reconcile(1_000);
    assert_eq!(state.measured_rate(&job_name()), Some(0.5));
    state.reconcile(1_100);
    let newest: Vec<u64> = state
        .partitions
        .values()
        .rev()
        .take(2)
        .map(|p| p.value.range.len())
        .collect();
    assert_eq!(newest, vec![2_000, 2_000]);
    let sizes: Vec<u64> = state
        .partitions
        .values()
        .map(|p| p.value.range.len())
        .collect();
    assert_eq!(&sizes[..2], &[1_000, 1_000], "cut before the measurement");
}
