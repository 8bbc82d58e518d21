//! Leadership transfer on request: `elk.<ns>.admin.election.transfer`, served by the active
//! election replica (queue group `election`), since the election is the only writer of the role
//! leases.
//!
//! The request names a role and optionally the member to hand it to; without one, the role goes
//! to the next live member of that role after the current holder (by id, wrapping around). The
//! lease is written by compare-and-set with `epoch + 1` and the current view's generation, exactly
//! like a designation after a failure: the old holder sees the lease name someone else and
//! demotes (cancels and awaits its leader task), the new one promotes as soon as it sees it. No
//! TTL is waited for, so the hand-off takes what the lease watches and the new leader's start
//! take (`services/election/tests/transfer.rs` measures it). As in any change of holder, the
//! epoch fences whatever the old holder still writes before it has stopped. The sticky rule of
//! [`crate::roles`] then keeps the new holder, since it is live.

use crate::ElectionError;
use crate::metrics::ElectionMetrics;
use crate::roles::member_role_for;
use bytes::Bytes;
use elk_nats::{CasOutcome, Resources, cas_write, last_revision, read_entry};
use elk_protocol::admin::{
    AdminCommand, AdminErrorCode, AdminReply, AdminRequest, AdminResult, Transferred,
};
use elk_protocol::messages::{MemberRef, MembershipView, RoleLease};
use elk_protocol::names::ControlRole;
use elk_protocol::{SCHEMA_VERSION, decode, encode};
use elk_types::{Epoch, MemberId};

/// Why a transfer is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferRefusal {
    #[error("no live {role} member '{member}'")]
    UnknownMember {
        role: &'static str,
        member: MemberId,
    },
    #[error("no other live {role} replica to hand the role to")]
    NoCandidate { role: &'static str },
    #[error("the role lease of {role} cannot be read; not touching it")]
    Undecodable { role: &'static str },
    #[error("only `transfer` is served on the election's admin subject (got `{verb}`)")]
    WrongVerb { verb: &'static str },
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("the role lease kept changing; try again")]
    Contended,
    #[error("no membership view yet; try again")]
    NoView,
    #[error("{0}")]
    Exhausted(String),
}

impl TransferRefusal {
    fn code(&self) -> AdminErrorCode {
        match self {
            TransferRefusal::UnknownMember { .. } => AdminErrorCode::UnknownMember,
            TransferRefusal::NoCandidate { .. } => AdminErrorCode::InvalidState,
            TransferRefusal::Undecodable { .. } | TransferRefusal::Exhausted(_) => {
                AdminErrorCode::Internal
            }
            TransferRefusal::WrongVerb { .. } | TransferRefusal::BadRequest(_) => {
                AdminErrorCode::BadRequest
            }
            TransferRefusal::Contended | TransferRefusal::NoView => AdminErrorCode::Unavailable,
        }
    }
}

/// The lease that hands `role` to `to` (or to the next live member of the role after the
/// current holder). `Ok(None)`: the wanted member holds it already. Without a stored lease the
/// epoch continues above `floor` (see [`crate::roles`]).
pub fn transfer_lease(
    role: ControlRole,
    stored: Option<&RoleLease>,
    view: &MembershipView,
    to: Option<&MemberId>,
    floor: Epoch,
) -> Result<Option<RoleLease>, TransferRefusal> {
    let wanted_role = member_role_for(role);
    let holder = stored.and_then(|lease| lease.holder.as_ref());
    let candidates: Vec<MemberRef> = view
        .members
        .iter()
        .filter(|member| member.role == wanted_role)
        .map(|member| MemberRef {
            id: member.id.clone(),
            incarnation: member.incarnation,
        })
        .collect();
    let target = match to {
        Some(to) => candidates
            .iter()
            .find(|member| member.id == *to)
            .cloned()
            .ok_or_else(|| TransferRefusal::UnknownMember {
                role: role.as_str(),
                member: to.clone(),
            })?,
        None => {
            let others = candidates.iter().filter(|member| Some(*member) != holder);
            let after_holder = others
                .clone()
                .find(|member| holder.is_some_and(|holder| member.id > holder.id));
            after_holder
                .or_else(|| others.clone().next())
                .cloned()
                .ok_or(TransferRefusal::NoCandidate {
                    role: role.as_str(),
                })?
        }
    };
    if holder == Some(&target) {
        return Ok(None);
    }
    Ok(Some(RoleLease {
        schema: SCHEMA_VERSION,
        holder: Some(target),
        epoch: stored
            .map_or(floor, |lease| lease.epoch)
            .next()
            .map_err(|exhausted| TransferRefusal::Exhausted(exhausted.to_string()))?,
        generation: view.generation,
    }))
}

/// Attempts of the compare-and-set before the request is answered `unavailable`.
const MAX_CONFLICTS: usize = 3;

/// Answers one request of the election's admin subject.
pub(crate) async fn serve(
    resources: &Resources,
    view: Option<&MembershipView>,
    metrics: &ElectionMetrics,
    payload: &[u8],
) -> AdminReply {
    match handle(resources, view, metrics, payload).await {
        Ok(transfer) => AdminReply::ok(AdminResult::Transferred { transfer }),
        Err(ServeError::Refused(refusal)) => AdminReply::error(refusal.code(), refusal.to_string()),
        Err(ServeError::Election(error)) => AdminReply::error(
            AdminErrorCode::Unavailable,
            format!("could not write the role lease: {error}"),
        ),
    }
}

enum ServeError {
    Refused(TransferRefusal),
    Election(ElectionError),
}

impl From<TransferRefusal> for ServeError {
    fn from(refusal: TransferRefusal) -> Self {
        ServeError::Refused(refusal)
    }
}

impl From<elk_nats::NatsError> for ServeError {
    fn from(error: elk_nats::NatsError) -> Self {
        ServeError::Election(error.into())
    }
}

async fn handle(
    resources: &Resources,
    view: Option<&MembershipView>,
    metrics: &ElectionMetrics,
    payload: &[u8],
) -> Result<Transferred, ServeError> {
    let request: AdminRequest =
        decode(payload).map_err(|error| TransferRefusal::BadRequest(error.to_string()))?;
    let AdminCommand::Transfer { role, to } = request.command else {
        let verb = request.command.verb();
        return Err(TransferRefusal::WrongVerb { verb }.into());
    };
    let view = view.ok_or(TransferRefusal::NoView)?;
    let key = role.lease_key();
    for _ in 0..MAX_CONFLICTS {
        let entry = read_entry(&resources.leases, key).await?;
        let deleted = entry.as_ref().is_some_and(|entry| entry.deleted);
        let (stored, revision) = match entry.filter(|entry| !entry.deleted) {
            None => (None, None),
            Some(entry) => {
                let lease = decode::<RoleLease>(&entry.value).map_err(|_| {
                    TransferRefusal::Undecodable {
                        role: role.as_str(),
                    }
                })?;
                (Some(lease), Some(entry.revision))
            }
        };
        let previous = stored.as_ref().and_then(|lease| lease.holder.clone());
        let floor = match stored {
            None if deleted => Epoch(last_revision(&resources.leases).await?.get()),
            _ => Epoch(0),
        };
        let Some(next) = transfer_lease(role, stored.as_ref(), view, to.as_ref(), floor)? else {
            let lease = stored.expect("a holder was found in it");
            return Ok(Transferred {
                role,
                holder: lease.holder.clone().expect("held"),
                previous,
                epoch: lease.epoch,
            });
        };
        let outcome = cas_write(
            &resources.jetstream,
            &resources.leases,
            key,
            Bytes::from(encode(&next)),
            revision,
            None,
        )
        .await?;
        if let CasOutcome::Written(_) = outcome {
            metrics.role_changed(role);
            let holder = next.holder.clone().expect("a transfer names a holder");
            tracing::info!(
                role = role.as_str(),
                from = ?previous.as_ref().map(|holder| holder.id.as_str()),
                to = %holder.id,
                epoch = %next.epoch,
                "role leadership transferred on request"
            );
            return Ok(Transferred {
                role,
                previous,
                holder,
                epoch: next.epoch,
            });
        }
    }
    Err(TransferRefusal::Contended.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use elk_protocol::messages::{MemberRole, ViewMember};
    use elk_types::{Capacity, Generation, Incarnation};

    fn view(members: &[(&str, MemberRole)]) -> MembershipView {
        let mut members: Vec<ViewMember> = members
            .iter()
            .map(|(id, role)| ViewMember {
                id: MemberId::new(*id).unwrap(),
                role: *role,
                incarnation: Incarnation(7),
                capacity: Capacity(0),
                jobs: Vec::new(),
            })
            .collect();
        members.sort_by(|a, b| a.id.cmp(&b.id));
        MembershipView {
            schema: SCHEMA_VERSION,
            generation: Generation(12),
            members,
        }
    }

    fn held_by(id: &str, epoch: u64) -> RoleLease {
        RoleLease {
            schema: SCHEMA_VERSION,
            holder: Some(MemberRef {
                id: MemberId::new(id).unwrap(),
                incarnation: Incarnation(7),
            }),
            epoch: Epoch(epoch),
            generation: Generation(3),
        }
    }

    fn holder(lease: &RoleLease) -> &str {
        lease.holder.as_ref().unwrap().id.as_str()
    }

    #[test]
    fn without_a_target_the_next_replica_after_the_holder_takes_the_role() {
        let view = view(&[
            ("a", MemberRole::Assigner),
            ("b", MemberRole::Assigner),
            ("c", MemberRole::Assigner),
            ("s", MemberRole::Scaler),
        ]);
        let next = transfer_lease(
            ControlRole::Assigner,
            Some(&held_by("b", 4)),
            &view,
            None,
            Epoch(0),
        )
        .unwrap()
        .unwrap();
        assert_eq!(holder(&next), "c");
        assert_eq!(next.epoch, Epoch(5));
        assert_eq!(next.generation, Generation(12));
        // Wraps around.
        let next = transfer_lease(
            ControlRole::Assigner,
            Some(&held_by("c", 5)),
            &view,
            None,
            Epoch(0),
        )
        .unwrap()
        .unwrap();
        assert_eq!(holder(&next), "a");
    }

    #[test]
    fn a_named_target_must_be_a_live_member_of_the_role() {
        let view = view(&[("a", MemberRole::Assigner), ("s", MemberRole::Scaler)]);
        let stored = held_by("a", 2);
        let to = MemberId::new("s").unwrap();
        let refused = transfer_lease(
            ControlRole::Assigner,
            Some(&stored),
            &view,
            Some(&to),
            Epoch(0),
        );
        assert!(matches!(
            refused,
            Err(TransferRefusal::UnknownMember { .. })
        ));
        assert_eq!(refused.unwrap_err().code(), AdminErrorCode::UnknownMember);
        let to = MemberId::new("a").unwrap();
        assert_eq!(
            transfer_lease(
                ControlRole::Assigner,
                Some(&stored),
                &view,
                Some(&to),
                Epoch(0)
            ),
            Ok(None),
            "the holder itself: nothing to write"
        );
    }

    #[test]
    fn a_lone_holder_has_nobody_to_hand_over_to() {
        let view = view(&[("a", MemberRole::Scaler)]);
        let refused = transfer_lease(
            ControlRole::Scaler,
            Some(&held_by("a", 1)),
            &view,
            None,
            Epoch(0),
        );
        assert_eq!(
            refused,
            Err(TransferRefusal::NoCandidate { role: "scaler" })
        );
        assert_eq!(refused.unwrap_err().code(), AdminErrorCode::InvalidState);
    }
}
