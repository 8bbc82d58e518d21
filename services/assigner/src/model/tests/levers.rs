//! The levers: a drained worker hands everything back through revoke → release and gets nothing
//! new, undrain lets it take grants again, a freeze stops rebalancing but not the granting of
//! pending (or reclaimed) partitions, and the levers survive a new leader through
//! `fleet/placement`.

use super::*;
use crate::model::changes::Put;
use elk_protocol::admin::MemberState;
use elk_protocol::messages::{DrainSource, PartitionStatus};

fn id(worker: &str) -> MemberId {
    MemberId::new(worker).unwrap()
}

/// Releases every revoking partition with a checkpoint 10 IDs into it.
fn release_revoked(state: &mut AssignerState) -> usize {
    let revoking: Vec<(u64, MemberRef, PartitionLeaseToken, u64)> = state
        .partitions
        .iter()
        .filter(|(_, p)| p.value.status == PartitionStatus::Revoking)
        .map(|(key, p)| {
            let v = &p.value;
            (
                key.partition.get(),
                v.owner.clone().unwrap(),
                v.token,
                v.range.first(),
            )
        })
        .collect();
    for (partition, owner, token, first) in &revoking {
        let event = ProgressEvent::Released {
            last_done: Some(first + 9),
        };
        state
            .apply_progress(&report(
                owner.id.as_str(),
                owner.incarnation.get(),
                *partition,
                *token,
                event,
            ))
            .unwrap();
    }
    revoking.len()
}

fn state_of(state: &AssignerState, worker: &str) -> MemberState {
    let (_, members) = state.members();
    members
        .into_iter()
        .find(|member| member.id == id(worker))
        .unwrap()
        .state
}

#[test]
fn a_drained_worker_hands_everything_back_with_checkpoints_and_gets_nothing_new() {
    let mut state = state_with_job(IdRange::new(1, 8_000).unwrap(), 1_000);
    state.apply_view(&view(&[("a", 1, 2), ("b", 1, 2)]));
    state.reconcile(1);
    assert_eq!((state.granted_to("a"), state.granted_to("b")), (4, 4));

    let status = state.drain(&id("b"), DrainSource::Scaler).unwrap();
    assert_eq!(status.state, MemberState::Draining);
    assert_eq!(status.drain, Some(DrainSource::Scaler));
    assert_eq!(state.counters().revocations_drain, 4);
    state.reconcile(2);
    assert_eq!(state.granted_to("a"), 4, "a's slots are full: b's wait");
    assert_eq!(release_revoked(&mut state), 4);
    state.reconcile(3);
    assert_eq!(state_of(&state, "b"), MemberState::Drained);
    assert_eq!(state.granted_to("b"), 0);
    // a has 4 slots (capacity 2 × 2); the released partitions are pending, resuming after the
    // checkpoints, never granted to b.
    assert_eq!(state.pending_count(), 4);
    // A third worker joins: it takes the released partitions, b still nothing.
    state.apply_view(&view(&[("a", 1, 2), ("b", 1, 2), ("c", 1, 2)]));
    state.reconcile(4);
    assert_eq!(state.granted_to("c"), 4);
    assert_eq!(state.granted_to("b"), 0);
    let record_c = state.desired_assignment(&id("c")).unwrap();
    assert!(
        record_c
            .grants
            .iter()
            .all(|grant| grant.resume_from == grant.range.first() + 10),
        "released with their checkpoints: nothing repeats"
    );
    let record_b = state.desired_assignment(&id("b")).unwrap();
    assert!(record_b.drain, "the worker's record says it drains");

    // Undrain: b takes its share again (by rebalancing).
    assert_eq!(state.undrain(&id("b")).unwrap().state, MemberState::Active);
    state.reconcile(5);
    assert!(
        state.counters().revocations > 4,
        "rebalancing towards b resumed"
    );
}

#[test]
fn drain_refusals_name_the_worker() {
    let mut state = state_with_job(IdRange::new(1, 1_000).unwrap(), 100);
    state.apply_view(&view(&[("a", 1, 1)]));
    let refused = state.drain(&id("nope"), DrainSource::Operator).unwrap_err();
    assert_eq!(
        refused.code(),
        elk_protocol::admin::AdminErrorCode::UnknownMember
    );
    assert!(refused.to_string().contains("nope"));
    assert!(state.undrain(&id("nope")).is_err());
}

#[test]
fn an_operator_drain_takes_over_a_scaler_drain() {
    let mut state = state_with_job(IdRange::new(1, 1_000).unwrap(), 100);
    state.apply_view(&view(&[("a", 1, 1)]));
    state.drain(&id("a"), DrainSource::Scaler).unwrap();
    let status = state.drain(&id("a"), DrainSource::Operator).unwrap();
    assert_eq!(status.drain, Some(DrainSource::Operator));
    // The scaler asking again does not take it back.
    let status = state.drain(&id("a"), DrainSource::Scaler).unwrap();
    assert_eq!(status.drain, Some(DrainSource::Operator));
}

#[test]
fn frozen_placement_makes_no_rebalancing_moves_but_still_grants_and_reclaims() {
    let mut state = state_with_job(IdRange::new(1, 8_000).unwrap(), 1_000);
    state.apply_view(&view(&[("a", 1, 2), ("b", 1, 2)]));
    state.reconcile(1);
    let frozen = state.freeze(Some("incident".to_owned()));
    assert_eq!(
        frozen.frozen.as_ref().unwrap().reason.as_deref(),
        Some("incident")
    );
    // c joins: without the freeze a and b would shed 2 partitions to it.
    state.apply_view(&view(&[("a", 1, 2), ("b", 1, 2), ("c", 1, 2)]));
    state.reconcile(2);
    assert_eq!(
        state.counters().revocations,
        0,
        "no rebalancing while frozen"
    );
    assert_eq!(state.granted_to("c"), 0);
    // b dies: its partitions are reclaimed and granted (to c, the one with room).
    let gone = state.apply_view(&view(&[("a", 1, 2), ("c", 1, 2)]));
    assert_eq!(state.reclaim(&gone[0]), 4);
    state.reconcile(3);
    assert_eq!(
        state.granted_to("c"),
        4,
        "reclaiming still happens while frozen"
    );
    assert_eq!(state.granted_to("a"), 4);
    // Unfreeze: rebalancing resumes (it is balanced already: no moves).
    assert!(state.unfreeze().frozen.is_none());
    state.reconcile(4);
    assert_eq!(state.counters().revocations, 0);
}

#[test]
fn the_levers_are_written_once_and_a_new_leader_continues_them() {
    let mut state = state_with_job(IdRange::new(1, 4_000).unwrap(), 1_000);
    state.apply_view(&view(&[("a", 1, 2), ("b", 1, 2)]));
    state.reconcile(1);
    let _ = state.take_changes();
    state.freeze(None);
    state.drain(&id("b"), DrainSource::Operator).unwrap();
    state.reconcile(2);
    let changes = state.take_changes();
    assert_eq!(changes.placement.len(), 1);
    let Put {
        value, expected, ..
    } = changes.placement[0].clone();
    assert_eq!(expected, None, "created");
    assert_eq!(value.epoch, EPOCH);
    assert!(value.frozen.is_some());
    assert_eq!(value.drains.len(), 1);
    assert!(state.take_changes().placement.is_empty(), "written once");

    // A new leader loads the record: b still drains, placement still frozen.
    let mut next = loaded(Snapshot {
        jobs: vec![(
            fixed_job(IdRange::new(1, 4_000).unwrap(), 1_000),
            Revision(1),
        )],
        placement: Some((value, Revision(9))),
        ..Snapshot::default()
    });
    next.apply_view(&view(&[("a", 1, 2), ("b", 1, 2)]));
    next.reconcile(1);
    assert_eq!(next.granted_to("b"), 0);
    let (frozen, _) = next.members();
    assert!(frozen);
    // The drain ends with b's incarnation: a restarted b is a new worker.
    next.apply_view(&view(&[("a", 1, 2), ("b", 2, 2)]));
    next.reconcile(2);
    let changes = next.take_changes();
    assert_eq!(changes.placement[0].expected, Some(Revision(9)));
    assert!(changes.placement[0].value.drains.is_empty());
    assert_eq!(state_of(&next, "b"), MemberState::Active);
}

#[test]
fn progress_is_counted_per_worker_for_the_scaler() {
    let mut state = state_with_job(IdRange::new(1, 2_000).unwrap(), 1_000);
    state.apply_view(&view(&[("a", 1, 2)]));
    state.reconcile(1);
    let (_, token) = owner_and_token(&state, 1);
    state
        .apply_progress(&report(
            "a",
            1,
            1,
            token,
            ProgressEvent::Checkpoint { last_done: 300 },
        ))
        .unwrap();
    state
        .apply_progress(&report("a", 1, 1, token, ProgressEvent::Completed))
        .unwrap();
    let (_, members) = state.members();
    assert_eq!(members[0].ids_progressed, 1_000);
    assert_eq!(members[0].granted, 1);
}
