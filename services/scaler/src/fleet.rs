//! Scale-in that drains first: which workers to drain, undrain and remove so that the fleet
//! reaches the desired count without repeating work. Pure; the leader (`leader.rs`) sends the
//! drain/undrain requests to the assigner and publishes the rest in `fleet/desired`.
//!
//! * **In service** are the workers that take grants (`active`) plus those the scaler itself is
//!   draining. Workers an operator drained and workers shutting down on their own are left alone
//!   (and not counted: they take no work).
//! * **Too many active workers** → drain the surplus, choosing those whose departure costs least:
//!   the fewest partitions held (granted + being revoked: least to hand back, least in-flight
//!   progress to flush), then the one that joined last (largest incarnation), then the largest
//!   id. Not while placement is frozen (an operator is holding everything still).
//! * **Too few active workers while the scaler is draining some** → undrain them first (they are
//!   warm and already there), instead of waiting for new ones.
//! * A scaler-drained worker that holds nothing is **retired**: an actuator removes exactly these
//!   (Kubernetes: the lowest `controller.kubernetes.io/pod-deletion-cost`, then fewer replicas).
//! * **Replicas** for an actuator: `desired` (or the active workers, if more stay because
//!   placement is frozen) + the scaler's workers still draining + the operator's drained ones
//!   (they stay until the operator decides), so nothing is removed before it is drained.

use elk_protocol::admin::{MemberState, MemberStatus};
use elk_protocol::messages::{DrainSource, MemberRole};
use elk_types::MemberId;

/// What the scaler does this round for a desired count.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetPlan {
    /// Ask the assigner to drain these (for a scale-in).
    pub drain: Vec<MemberId>,
    /// Ask the assigner to let these take grants again (the scaler drained them; load came back).
    pub undrain: Vec<MemberId>,
    /// The scaler's drains still holding partitions (after this round's requests).
    pub draining: Vec<MemberId>,
    /// The scaler's drains holding nothing: remove exactly these.
    pub retire: Vec<MemberId>,
    /// Workers an actuator should run now.
    pub replicas: u32,
}

/// The plan reaching `desired` from the assigner's `members` answer (see the module header).
pub fn plan_fleet(desired: u32, members: &[MemberStatus], frozen: bool) -> FleetPlan {
    let workers = members
        .iter()
        .filter(|member| member.role == MemberRole::Worker);
    let mut active: Vec<&MemberStatus> = Vec::new();
    let mut ours: Vec<&MemberStatus> = Vec::new();
    let mut operators = 0u32;
    for worker in workers {
        match (worker.state, worker.drain) {
            (MemberState::Leaving, _) => {}
            (_, Some(DrainSource::Scaler)) => ours.push(worker),
            (_, Some(DrainSource::Operator)) => operators += 1,
            _ => active.push(worker),
        }
    }
    let desired_len = desired as usize;
    let mut plan = FleetPlan::default();
    if active.len() > desired_len && !frozen {
        // Cheapest departures last, so the surplus is taken from the end.
        active.sort_by(|a, b| {
            let held = |m: &MemberStatus| m.granted + m.revoking;
            held(b)
                .cmp(&held(a))
                .then(a.incarnation.cmp(&b.incarnation))
                .then(a.id.cmp(&b.id))
        });
        let surplus = active.split_off(desired_len);
        plan.drain = surplus.iter().map(|member| member.id.clone()).collect();
        plan.drain.sort();
        // Just asked: they count as draining until the assigner reports them drained.
        plan.draining.extend(plan.drain.iter().cloned());
    } else if active.len() < desired_len && !ours.is_empty() {
        let missing = desired_len - active.len();
        // Undrain the ones still holding the most first: they are the least far gone.
        ours.sort_by_key(|member| std::cmp::Reverse(member.granted + member.revoking));
        let back: Vec<&MemberStatus> = ours.drain(..missing.min(ours.len())).collect();
        plan.undrain = back.iter().map(|member| member.id.clone()).collect();
    }
    for member in ours {
        if member.state == MemberState::Drained {
            plan.retire.push(member.id.clone());
        } else {
            plan.draining.push(member.id.clone());
        }
    }
    plan.draining.sort();
    plan.retire.sort();
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    // Active workers that stay (more than desired while frozen) are never removed.
    let serving = desired.max(count(active.len()) + count(plan.undrain.len()));
    plan.replicas = serving
        .saturating_add(count(plan.draining.len()))
        .saturating_add(operators);
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use elk_types::{Capacity, Incarnation};

    fn worker(id: &str, held: u32, state: MemberState, drain: Option<DrainSource>) -> MemberStatus {
        MemberStatus {
            id: MemberId::new(id).unwrap(),
            role: MemberRole::Worker,
            incarnation: Incarnation(1),
            capacity: Capacity(2),
            jobs: Vec::new(),
            granted: held,
            revoking: 0,
            state,
            drain,
            ids_progressed: 0,
        }
    }

    fn active(id: &str, held: u32) -> MemberStatus {
        worker(id, held, MemberState::Active, None)
    }

    fn ids(members: &[MemberId]) -> Vec<&str> {
        members.iter().map(MemberId::as_str).collect()
    }

    #[test]
    fn a_scale_in_drains_the_workers_holding_least_and_keeps_them_until_drained() {
        let members = [
            active("a", 4),
            active("b", 0),
            active("c", 2),
            active("d", 1),
        ];
        let plan = plan_fleet(2, &members, false);
        assert_eq!(ids(&plan.drain), ["b", "d"]);
        assert_eq!(ids(&plan.draining), ["b", "d"]);
        assert!(plan.retire.is_empty());
        assert_eq!(plan.replicas, 4, "nothing is removed before it is drained");
    }

    #[test]
    fn drained_workers_are_retired_and_the_replicas_drop_by_exactly_them() {
        let members = [
            active("a", 4),
            active("c", 2),
            worker("b", 0, MemberState::Drained, Some(DrainSource::Scaler)),
            worker("d", 1, MemberState::Draining, Some(DrainSource::Scaler)),
        ];
        let plan = plan_fleet(2, &members, false);
        assert!(plan.drain.is_empty());
        assert_eq!(ids(&plan.retire), ["b"]);
        assert_eq!(ids(&plan.draining), ["d"]);
        assert_eq!(plan.replicas, 3);
    }

    #[test]
    fn load_coming_back_undrains_before_asking_for_new_workers() {
        let members = [
            active("a", 4),
            worker("b", 0, MemberState::Drained, Some(DrainSource::Scaler)),
            worker("d", 1, MemberState::Draining, Some(DrainSource::Scaler)),
        ];
        let plan = plan_fleet(2, &members, false);
        assert_eq!(ids(&plan.undrain), ["d"]);
        assert_eq!(ids(&plan.retire), ["b"]);
        assert_eq!(plan.replicas, 2);
        let plan = plan_fleet(5, &members, false);
        assert_eq!(ids(&plan.undrain), ["d", "b"]);
        assert_eq!(plan.replicas, 5);
    }

    #[test]
    fn operator_drains_and_leaving_workers_are_left_alone_and_frozen_placement_drains_nothing() {
        let members = [
            active("a", 1),
            active("b", 1),
            worker("o", 0, MemberState::Drained, Some(DrainSource::Operator)),
            worker("l", 0, MemberState::Leaving, None),
        ];
        let plan = plan_fleet(1, &members, false);
        assert_eq!(ids(&plan.drain), ["b"]);
        assert_eq!(
            plan.replicas,
            1 + 1 + 1,
            "desired + b draining + the operator's drain"
        );
        let frozen = plan_fleet(1, &members, true);
        assert!(frozen.drain.is_empty());
        assert_eq!(frozen.replicas, 3, "a and b stay, and the operator's drain");
    }
}
