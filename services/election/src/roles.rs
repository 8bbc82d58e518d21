//! Designation of the control-plane role leaders (`leases/role.assigner`, `leases/role.scaler`).
//!
//! Rules, applied after every view write and on a resync tick:
//! * sticky: a holder that is in the view with the same incarnation and the matching member role
//!   keeps the role (no write);
//! * otherwise the live member of that role with the smallest id becomes holder, under the stored
//!   epoch + 1 (epoch 1 for the first holder);
//! * with no candidate, a set holder is cleared (`holder: None`), again under epoch + 1.
//!
//! Every write is a compare-and-set on the lease's revision, so epochs never decrease.

use crate::ElectionError;
use crate::metrics::ElectionMetrics;
use bytes::Bytes;
use elk_nats::{CasOutcome, Resources, cas_write, read_entry};
use elk_protocol::messages::{MemberRef, MemberRole, MembershipView, RoleLease};
use elk_protocol::names::ControlRole;
use elk_protocol::{SCHEMA_VERSION, decode, encode};
use elk_types::Epoch;

/// The member role that may lead `role`.
pub fn member_role_for(role: ControlRole) -> MemberRole {
    match role {
        ControlRole::Assigner => MemberRole::Assigner,
        ControlRole::Scaler => MemberRole::Scaler,
    }
}

/// The lease to write for `role`, or `None` when the stored one stands.
pub fn next_role_lease(
    role: ControlRole,
    stored: Option<&RoleLease>,
    view: &MembershipView,
) -> Option<RoleLease> {
    let wanted_role = member_role_for(role);
    let stored_holder = stored.and_then(|lease| lease.holder.as_ref());
    if let Some(holder) = stored_holder {
        let holder_is_live = view.member(&holder.id).is_some_and(|member| {
            member.incarnation == holder.incarnation && member.role == wanted_role
        });
        if holder_is_live {
            return None;
        }
    }
    let previous_epoch = stored.map_or(Epoch(0), |lease| lease.epoch);
    let candidate = view
        .members
        .iter()
        .filter(|member| member.role == wanted_role)
        .min_by(|a, b| a.id.cmp(&b.id));
    let holder = match candidate {
        Some(member) => Some(MemberRef {
            id: member.id.clone(),
            incarnation: member.incarnation,
        }),
        None if stored_holder.is_some() => None,
        None => return None,
    };
    Some(RoleLease {
        schema: SCHEMA_VERSION,
        holder,
        epoch: previous_epoch.next(),
        generation: view.generation,
    })
}

/// Attempts per role before giving up until the next trigger.
const MAX_ROLE_CONFLICTS: usize = 3;

/// Brings every role lease in line with `view`. Errors are logged; the resync tick retries.
pub(crate) async fn reconcile_roles(
    resources: &Resources,
    view: &MembershipView,
    metrics: &ElectionMetrics,
) {
    for role in ControlRole::ALL {
        if let Err(error) = reconcile_role(resources, role, view, metrics).await {
            tracing::warn!(role = role.as_str(), %error, "cannot update role lease; will retry");
        }
    }
}

async fn reconcile_role(
    resources: &Resources,
    role: ControlRole,
    view: &MembershipView,
    metrics: &ElectionMetrics,
) -> Result<(), ElectionError> {
    let key = role.lease_key();
    for _ in 0..MAX_ROLE_CONFLICTS {
        let entry = read_entry(&resources.leases, key)
            .await?
            .filter(|entry| !entry.deleted);
        let (stored, expected_revision) = match entry {
            None => (None, None),
            Some(entry) => match decode::<RoleLease>(&entry.value) {
                Ok(lease) => (Some(lease), Some(entry.revision)),
                Err(error) => {
                    // Overwriting could lower the epoch: leave it to an operator.
                    tracing::error!(role = role.as_str(), %error, "role lease undecodable; not touching it");
                    return Ok(());
                }
            },
        };
        let Some(next) = next_role_lease(role, stored.as_ref(), view) else {
            return Ok(());
        };
        let outcome = cas_write(
            &resources.jetstream,
            &resources.leases,
            key,
            Bytes::from(encode(&next)),
            expected_revision,
            None,
        )
        .await?;
        if let CasOutcome::Written(_) = outcome {
            metrics.role_changed(role);
            tracing::info!(
                role = role.as_str(),
                holder = ?next.holder.as_ref().map(|holder| holder.id.as_str()),
                epoch = %next.epoch,
                generation = %next.generation,
                "role leader designated"
            );
            return Ok(());
        }
    }
    Err(ElectionError::RoleContended {
        role: role.as_str(),
        attempts: MAX_ROLE_CONFLICTS,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use elk_protocol::messages::ViewMember;
    use elk_types::{Capacity, Generation, Incarnation, MemberId};

    fn member(id: &str, role: MemberRole, incarnation: u64) -> ViewMember {
        ViewMember {
            id: MemberId::new(id).unwrap(),
            role,
            incarnation: Incarnation(incarnation),
            capacity: Capacity(0),
            jobs: Vec::new(),
        }
    }

    fn view(generation: u64, mut members: Vec<ViewMember>) -> MembershipView {
        members.sort_by(|a, b| a.id.cmp(&b.id));
        MembershipView {
            schema: SCHEMA_VERSION,
            generation: Generation(generation),
            members,
        }
    }

    fn lease(holder: Option<(&str, u64)>, epoch: u64) -> RoleLease {
        RoleLease {
            schema: SCHEMA_VERSION,
            holder: holder.map(|(id, incarnation)| MemberRef {
                id: MemberId::new(id).unwrap(),
                incarnation: Incarnation(incarnation),
            }),
            epoch: Epoch(epoch),
            generation: Generation(1),
        }
    }

    #[test]
    fn first_holder_is_smallest_id_of_the_role_with_epoch_one() {
        let view = view(
            3,
            vec![
                member("b-assigner", MemberRole::Assigner, 1),
                member("a-worker", MemberRole::Worker, 1),
                member("c-assigner", MemberRole::Assigner, 1),
            ],
        );
        let next = next_role_lease(ControlRole::Assigner, None, &view).unwrap();
        assert_eq!(next.holder.unwrap().id.as_str(), "b-assigner");
        assert_eq!(next.epoch, Epoch(1));
        assert_eq!(next.generation, Generation(3));
        assert_eq!(next_role_lease(ControlRole::Scaler, None, &view), None);
    }

    #[test]
    fn live_holder_keeps_its_role() {
        let view = view(
            4,
            vec![
                member("a", MemberRole::Scaler, 1),
                member("z", MemberRole::Scaler, 7),
            ],
        );
        let stored = lease(Some(("z", 7)), 5);
        assert_eq!(
            next_role_lease(ControlRole::Scaler, Some(&stored), &view),
            None
        );
    }

    #[test]
    fn dead_or_reincarnated_holder_is_replaced_with_a_higher_epoch() {
        let view = view(
            9,
            vec![
                member("a", MemberRole::Scaler, 1),
                member("z", MemberRole::Scaler, 8),
            ],
        );
        let stored = lease(Some(("z", 7)), 5);
        let next = next_role_lease(ControlRole::Scaler, Some(&stored), &view).unwrap();
        assert_eq!(next.holder.unwrap().id.as_str(), "a");
        assert_eq!(next.epoch, Epoch(6));
    }

    #[test]
    fn no_candidate_clears_the_holder_once() {
        let empty = view(2, Vec::new());
        let stored = lease(Some(("z", 7)), 5);
        let cleared = next_role_lease(ControlRole::Assigner, Some(&stored), &empty).unwrap();
        assert_eq!(cleared.holder, None);
        assert_eq!(cleared.epoch, Epoch(6));
        assert_eq!(
            next_role_lease(ControlRole::Assigner, Some(&cleared), &empty),
            None
        );
    }
}
