//! The cold start of a large job (issue 10 item 3): a round cuts as many partitions as the live
//! fleet has free grant slots, so each is cut and granted in one round and written once, and
//! each worker's assignment record is written once — not once per `partitions_per_round`.

use super::*;
use crate::model::Written;

fn small_rounds(partitions_per_round: usize) -> Policy {
    Policy {
        partitions_per_round,
        ..policy()
    }
}

/// Workers `w0`..`w<count>` of `capacity` each, incarnation 1.
fn fleet(count: usize, capacity: u32) -> MembershipView {
    let names: Vec<String> = (0..count).map(|index| format!("w{index:03}")).collect();
    let members: Vec<(&str, u64, u32)> = names
        .iter()
        .map(|name| (name.as_str(), 1, capacity))
        .collect();
    view(&members)
}

/// What one round wrote: partition puts, assignment record puts.
fn flush(state: &mut AssignerState) -> (usize, usize) {
    let changes = state.take_changes();
    let mut written = Written::default();
    for put in &changes.partitions {
        written.partitions.push((put.key.clone(), Revision(1)));
    }
    for put in &changes.jobs {
        written.jobs.push((put.key.clone(), Revision(1)));
    }
    for put in &changes.assignments {
        written
            .assignments
            .push((put.key.clone(), put.value.clone(), Revision(1)));
    }
    let counts = (changes.partitions.len(), changes.assignments.len());
    state.record_written(written);
    counts
}

#[test]
fn a_fleet_with_room_for_the_job_gets_it_in_one_round_each_record_written_once() {
    // 2,000 partitions; 20 workers × capacity 60 × 2 grants per capacity = 2,400 slots.
    let range = IdRange::new(1, 2_000).unwrap();
    let mut state = AssignerState::load(
        EPOCH,
        small_rounds(100),
        0,
        Snapshot {
            jobs: vec![(fixed_job(range, 1), Revision(1))],
            ..Snapshot::default()
        },
    );
    state.apply_view(&fleet(20, 60));
    state.reconcile(1);
    let (partition_puts, record_puts) = flush(&mut state);
    assert_eq!(
        partition_puts, 2_000,
        "every partition cut and granted at once"
    );
    assert_eq!(record_puts, 20, "one record per worker");
    assert_eq!(state.pending_count(), 0);
    for index in 0..20 {
        assert_eq!(state.granted_to(&format!("w{index:03}")), 100);
    }
    state.reconcile(2);
    assert_eq!(flush(&mut state), (0, 0), "nothing left to write");
}

#[test]
fn the_cut_is_bounded_by_the_free_slots_then_by_partitions_per_round() {
    // 4 workers × capacity 10 × 2 = 80 slots; a job of 1,000 partitions, 50 per round. The
    // baseline write path cuts ahead of the grants (the lean one stops at the free slots:
    // `write_path.rs`).
    let range = IdRange::new(1, 1_000).unwrap();
    let mut state = AssignerState::load(
        EPOCH,
        cut_ahead(small_rounds(50)),
        0,
        Snapshot {
            jobs: vec![(fixed_job(range, 1), Revision(1))],
            ..Snapshot::default()
        },
    );
    state.apply_view(&fleet(4, 10));
    state.reconcile(1);
    assert_eq!(flush(&mut state), (80, 4), "the free slots, all granted");
    // Full: the next rounds cut `partitions_per_round`, which wait as pending.
    state.reconcile(2);
    assert_eq!(flush(&mut state), (50, 0));
    assert_eq!(state.pending_count(), 50);
    // Waiting partitions take slots too: no slot is free, so still 50 per round.
    state.reconcile(3);
    assert_eq!(flush(&mut state).0, 50);
    assert_eq!(state.partitions.len(), 180);
    assert!(state.indexes_consistent());
}

#[test]
fn without_workers_a_round_cuts_partitions_per_round() {
    let range = IdRange::new(1, 1_000).unwrap();
    let mut state = AssignerState::load(
        EPOCH,
        small_rounds(30),
        0,
        Snapshot {
            jobs: vec![(fixed_job(range, 1), Revision(1))],
            ..Snapshot::default()
        },
    );
    state.reconcile(1);
    assert_eq!(flush(&mut state), (30, 0));
}

#[test]
fn a_fill_cut_stops_at_its_bound() {
    // 100 workers × capacity 10 × 2 = 2,000 slots; a job of 3,000 partitions; 1,200 a round.
    let range = IdRange::new(1, 3_000).unwrap();
    let mut state = AssignerState::load(
        EPOCH,
        cut_ahead(Policy {
            max_fill_cut: 1_200,
            ..small_rounds(100)
        }),
        0,
        Snapshot {
            jobs: vec![(fixed_job(range, 1), Revision(1))],
            ..Snapshot::default()
        },
    );
    state.apply_view(&fleet(100, 10));
    state.reconcile(1);
    assert_eq!(flush(&mut state), (1_200, 100));
    state.reconcile(2);
    assert_eq!(flush(&mut state), (800, 100), "the other free slots");
    state.reconcile(3);
    assert_eq!(flush(&mut state), (100, 0), "full: partitions_per_round");
}

#[test]
fn a_large_round_is_taken_in_slices_with_records_after_the_last_partition() {
    // 2,000 partitions cut and granted in one round, taken 500 partition puts at a time: job and
    // assignment records only come with the last partitions' slice, after every partition they
    // point at, and the assignment records (100 grants each) 500 grants' worth at a time.
    let range = IdRange::new(1, 2_000).unwrap();
    let mut state = AssignerState::load(
        EPOCH,
        small_rounds(100),
        0,
        Snapshot {
            jobs: vec![(fixed_job(range, 1), Revision(1))],
            ..Snapshot::default()
        },
    );
    state.apply_view(&fleet(20, 60));
    state.reconcile(1);
    let mut written_keys = std::collections::BTreeSet::new();
    let mut slices = Vec::new();
    loop {
        let changes = state.take_changes_bounded(500);
        slices.push((
            changes.partitions.len(),
            changes.jobs.len(),
            changes.assignments.len(),
        ));
        let mut written = Written::default();
        for put in &changes.partitions {
            assert!(written_keys.insert(put.key.clone()), "{} twice", put.key);
            written.partitions.push((put.key.clone(), Revision(2)));
        }
        for put in &changes.jobs {
            written.jobs.push((put.key.clone(), Revision(2)));
        }
        for put in &changes.assignments {
            written
                .assignments
                .push((put.key.clone(), put.value.clone(), Revision(2)));
        }
        state.record_written(written);
        if !state.changes_pending() {
            break;
        }
    }
    assert_eq!(
        slices,
        vec![
            (500, 0, 0),
            (500, 0, 0),
            (500, 0, 0),
            (500, 1, 5),
            (0, 0, 5),
            (0, 0, 5),
            (0, 0, 5)
        ],
        "(partition puts, job puts, assignment puts) per slice"
    );
    assert_eq!(written_keys.len(), 2_000);
    state.reconcile(2);
    assert!(state.take_changes().is_empty(), "nothing left to write");
}
