//! The tail hold (issue 10 item 6, `churn.rs`): at a job's end, on a fleet the balance settled
//! for, completions shrink every quota, yet the balance moves no grant that may be running and
//! moves a queued one only to an idle slot; a join still rebalances. Counted in revokes, never
//! timed.

use super::*;
use elk_protocol::messages::PartitionStatus;

const IDS: u64 = 100;

/// `partitions` partitions of one fixed job, all cut and granted in one round over `workers`
/// (name, capacity), incarnation 1.
fn granted(partitions: u64, workers: &[(&str, u32)]) -> AssignerState {
    let mut state = state_with_job(IdRange::new(1, partitions * IDS).unwrap(), IDS);
    let members: Vec<(&str, u64, u32)> = workers.iter().map(|(n, c)| (*n, 1, *c)).collect();
    state.apply_view(&view(&members));
    state.reconcile(1);
    assert_eq!(state.pending_count(), 0, "every partition granted");
    state
}

fn held_by(state: &AssignerState, worker: &str) -> Vec<u64> {
    let worker = MemberId::new(worker).unwrap();
    state.grants_by_worker[&worker]
        .iter()
        .map(|key| key.partition.get())
        .collect()
}

fn complete(state: &mut AssignerState, partition: u64) {
    let (owner, token) = owner_and_token(state, partition);
    let owner = owner.unwrap();
    let event = ProgressEvent::Completed;
    state
        .apply_progress(&report(owner.id.as_str(), 1, partition, token, event))
        .unwrap();
}

fn revoking(state: &AssignerState) -> Vec<u64> {
    partitions_in(state, PartitionStatus::Revoking)
}

#[test]
fn completions_at_a_jobs_end_move_no_grant_that_may_be_running() {
    // Capacity 4 each, 4 grants each: every grant runs.
    let mut state = granted(8, &[("a", 4), ("b", 4)]);
    let a = held_by(&state, "a");
    assert_eq!((a.len(), held_by(&state, "b").len()), (4, 4));
    for partition in &a[..3] {
        complete(&mut state, *partition);
    }
    // a holds 1, b 4: b is over the shrunk quota (5 over equal slots), but its 4 all run.
    for round in 2..6 {
        state.reconcile(round);
    }
    assert_eq!(state.counters().revocations, 0, "{:?}", revoking(&state));
    assert_eq!(held_by(&state, "b").len(), 4);
}

#[test]
fn a_queued_grant_moves_to_an_idle_slot_at_a_jobs_end() {
    // Capacity 2 each, 4 grants each: 2 run, 2 wait in each worker's queue.
    let mut state = granted(8, &[("a", 2), ("b", 2)]);
    let a = held_by(&state, "a");
    let b = held_by(&state, "b");
    for partition in &a[..3] {
        complete(&mut state, *partition);
    }
    // a runs 1 of 2 slots: one idle slot, and b has 2 queued. Exactly one moves: b's highest
    // key, never more than the idle slots.
    state.reconcile(2);
    assert_eq!(revoking(&state), vec![*b.last().unwrap()]);
    state.reconcile(3);
    assert_eq!(state.counters().revocations, 1);
    let moved = *b.last().unwrap();
    let (owner, token) = owner_and_token(&state, moved);
    let event = ProgressEvent::Released { last_done: None };
    state
        .apply_progress(&report(owner.unwrap().id.as_str(), 1, moved, token, event))
        .unwrap();
    state.reconcile(4);
    assert!(
        held_by(&state, "a").contains(&moved),
        "granted to the idle slot"
    );
    // a is full again (2 of 2), b runs 2 and queues 1: no idle slot, nothing moves.
    state.reconcile(5);
    assert_eq!(state.counters().revocations, 1);
}

#[test]
fn a_join_at_a_jobs_end_still_rebalances_then_the_hold_returns() {
    let mut state = granted(8, &[("a", 4), ("b", 4)]);
    state.apply_view(&view(&[("a", 1, 4), ("b", 1, 4), ("c", 1, 4)]));
    state.reconcile(2);
    let moves = state.counters().revocations;
    assert!(moves >= 1, "the joiner takes running grants");
    for partition in revoking(&state) {
        let (owner, token) = owner_and_token(&state, partition);
        let event = ProgressEvent::Released { last_done: None };
        state
            .apply_progress(&report(
                owner.unwrap().id.as_str(),
                1,
                partition,
                token,
                event,
            ))
            .unwrap();
    }
    state.reconcile(3);
    state.reconcile(4);
    let loads: Vec<usize> = ["a", "b", "c"]
        .iter()
        .map(|w| state.granted_to(w))
        .collect();
    assert!(loads.iter().all(|held| (2..=3).contains(held)), "{loads:?}");
    // Settled: completions on c shrink the quotas, and nothing moves any more.
    for partition in held_by(&state, "c") {
        complete(&mut state, partition);
    }
    state.reconcile(5);
    state.reconcile(6);
    assert_eq!(state.counters().revocations, moves);
}
