//! Designation of the control-plane role leaders (`leases/role.assigner`, `leases/role.scaler`).
//!
//! Rules, applied after every view write and on a resync tick:
//! * sticky: a holder that is in the view with the same incarnation and the matching member role
//!   keeps the role (no write);
//! * otherwise the live member of that role with the smallest id becomes holder, under the stored
//!   epoch + 1 (epoch 1 for the first holder);
//! * with no candidate, a set holder is cleared (`holder: None`), again under epoch + 1.
//!
//! Every write is a compare-and-set on the lease's revision, so epochs never decrease — also when
//! the lease was deleted (a delete marker stands) or garbled (a misconfigured server let someone
//! delete or overwrite it): the next epoch is then taken above the `leases` bucket's last revision, which is above every epoch
//! the election ever wrote (an epoch grows by one per write of its key, each write raises the
//! revision by at least one, and the first epoch is 1), and an undecodable lease is rewritten
//! rather than left standing. An epoch never wraps: at `u64::MAX` the write is refused
//! ([`ElectionError::Exhausted`]).

use crate::ElectionError;
use crate::metrics::ElectionMetrics;
use bytes::Bytes;
use elk_nats::{CasOutcome, Resources, cas_write, last_revision, read_entry};
use elk_protocol::messages::{MemberRef, MemberRole, MembershipView, RoleLease};
use elk_protocol::names::ControlRole;
use elk_protocol::{SCHEMA_VERSION, decode, encode};
use elk_types::{Epoch, Exhausted};

/// The member role that may lead `role`.
pub fn member_role_for(role: ControlRole) -> MemberRole {
    match role {
        ControlRole::Assigner => MemberRole::Assigner,
        ControlRole::Scaler => MemberRole::Scaler,
    }
}

/// The lease to write for `role`, or `None` when the stored one stands. `floor` is the highest
/// epoch that may have been used when there is no stored lease (see the module header); a stored
/// lease continues its own epoch.
pub fn next_role_lease(
    role: ControlRole,
    stored: Option<&RoleLease>,
    view: &MembershipView,
    floor: Epoch,
) -> Result<Option<RoleLease>, Exhausted> {
    let wanted_role = member_role_for(role);
    let stored_holder = stored.and_then(|lease| lease.holder.as_ref());
    if let Some(holder) = stored_holder {
        let holder_is_live = view.member(&holder.id).is_some_and(|member| {
            member.incarnation == holder.incarnation && member.role == wanted_role
        });
        if holder_is_live {
            return Ok(None);
        }
    }
    let previous_epoch = stored.map_or(floor, |lease| lease.epoch);
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
        None => return Ok(None),
    };
    Ok(Some(RoleLease {
        schema: SCHEMA_VERSION,
        holder,
        epoch: previous_epoch.next()?,
        generation: view.generation,
    }))
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
        // `None`: the key never existed (epochs start at 1). A delete marker means it did.
        let entry = read_entry(&resources.leases, key).await?;
        let deleted = entry.as_ref().is_some_and(|entry| entry.deleted);
        let (stored, expected_revision, garbled) = match entry.filter(|entry| !entry.deleted) {
            None => (None, None, false),
            Some(entry) => match decode::<RoleLease>(&entry.value) {
                Ok(lease) => (Some(lease), Some(entry.revision), false),
                Err(error) => {
                    tracing::error!(role = role.as_str(), %error, "role lease undecodable: rewriting it above every epoch used");
                    (None, Some(entry.revision), true)
                }
            },
        };
        let exhausted = |source| ElectionError::Exhausted {
            role: role.as_str(),
            source,
        };
        // Nothing to write without a candidate (nor a garbled value to replace): skip the floor.
        let unchanged = next_role_lease(role, stored.as_ref(), view, Epoch(0));
        if !garbled && matches!(unchanged, Ok(None)) {
            return Ok(());
        }
        let next = if stored.is_some() || !(deleted || garbled) {
            unchanged.map_err(exhausted)?
        } else {
            let floor = Epoch(last_revision(&resources.leases).await?.get());
            next_role_lease(role, None, view, floor).map_err(exhausted)?
        };
        let next = match next {
            Some(next) => next,
            // Garbled, and nobody to designate: a cleared lease replaces it.
            None => RoleLease {
                schema: SCHEMA_VERSION,
                holder: None,
                epoch: Epoch(last_revision(&resources.leases).await?.get())
                    .next()
                    .map_err(exhausted)?,
                generation: view.generation,
            },
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
        let next = next_role_lease(ControlRole::Assigner, None, &view, Epoch(0))
            .unwrap()
            .unwrap();
        assert_eq!(next.holder.unwrap().id.as_str(), "b-assigner");
        assert_eq!(next.epoch, Epoch(1));
        assert_eq!(next.generation, Generation(3));
        assert_eq!(
            next_role_lease(ControlRole::Scaler, None, &view, Epoch(0)),
            Ok(None)
        );
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
            next_role_lease(ControlRole::Scaler, Some(&stored), &view, Epoch(0)),
            Ok(None)
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
        let next = next_role_lease(ControlRole::Scaler, Some(&stored), &view, Epoch(0))
            .unwrap()
            .unwrap();
        assert_eq!(next.holder.unwrap().id.as_str(), "a");
        assert_eq!(next.epoch, Epoch(6));
    }

    #[test]
    fn no_candidate_clears_the_holder_once() {
        let empty = view(2, Vec::new());
        let stored = lease(Some(("z", 7)), 5);
        let cleared = next_role_lease(ControlRole::Assigner, Some(&stored), &empty, Epoch(0))
            .unwrap()
            .unwrap();
        assert_eq!(cleared.holder, None);
        assert_eq!(cleared.epoch, Epoch(6));
        assert_eq!(
            next_role_lease(ControlRole::Assigner, Some(&cleared), &empty, Epoch(0)),
            Ok(None)
        );
    }

    #[test]
    fn a_missing_lease_continues_above_the_floor_and_no_epoch_wraps() {
        let view = view(5, vec![member("a", MemberRole::Assigner, 1)]);
        let next = next_role_lease(ControlRole::Assigner, None, &view, Epoch(41))
            .unwrap()
            .unwrap();
        assert_eq!(next.epoch, Epoch(42));
        let at_the_end = lease(Some(("gone", 1)), u64::MAX);
        let refused = next_role_lease(ControlRole::Assigner, Some(&at_the_end), &view, Epoch(0));
        assert_eq!(refused.unwrap_err().value, u64::MAX);
    }
}
