//! Workers and their assignment records: the live set from the membership view (draining kept
//! across views and leader changes), and the record each worker should hold.

use super::assignment::{grants_digest, revokes_digest};
use super::live::LivePartition;
use super::{AssignerState, PartitionKey, WorkerInfo};
use elk_protocol::SCHEMA_VERSION;
use elk_protocol::messages::{
    AssignmentRecord, Grant, MemberRef, MembershipView, PartitionRecord, PartitionStatus,
};
use elk_types::{IdRange, Incarnation, MemberId, ViewSeq};
use std::collections::{BTreeMap, BTreeSet};

impl AssignerState {
    /// Replaces the set of live workers from a membership view. Returns the members (with the
    /// incarnation that held partitions) that are no longer live: their partitions may only be
    /// reclaimed once every progress report they published before leaving has been applied.
    pub(crate) fn apply_view(&mut self, view: &MembershipView) -> Vec<MemberRef> {
        let mut next = BTreeMap::new();
        for member in view.workers() {
            // Draining survives a leader change through the `drain` flag of the worker's record
            // (unless the flag is there for a requested drain, which `fleet/placement` holds).
            let me = MemberRef {
                id: member.id.clone(),
                incarnation: member.incarnation,
            };
            let draining = self
                .workers
                .get(&member.id)
                .is_some_and(|w| w.incarnation == member.incarnation && w.draining)
                || self.assignments.get(&member.id).is_some_and(|record| {
                    record.value.incarnation == member.incarnation
                        && record.value.drain
                        && !self.drain_requested(&me)
                });
            next.insert(
                member.id.clone(),
                WorkerInfo {
                    incarnation: member.incarnation,
                    capacity: member.capacity,
                    jobs: member.jobs.clone(),
                    draining,
                    drain: None,
                },
            );
        }
        self.note_departed_capacities(&next);
        self.workers = next;
        self.levers_follow_view(view);
        let mut gone = BTreeSet::new();
        for stored in self.partitions.values() {
            if let Some(owner) = &stored.value.owner
                && !self.is_live(owner)
                && stored.value.status != PartitionStatus::Pending
            {
                gone.insert((owner.id.clone(), owner.incarnation));
            }
        }
        for (id, stored) in &self.assignments {
            let live = self
                .workers
                .get(id)
                .is_some_and(|w| w.incarnation == stored.value.incarnation);
            if !live && !stored.value.no_grants() {
                gone.insert((id.clone(), stored.value.incarnation));
            }
        }
        for (id, worker) in &self.workers {
            let stale = self
                .assignments
                .get(id)
                .is_none_or(|a| a.value.incarnation != worker.incarnation);
            if stale {
                self.dirty_assignments.insert(id.clone());
            }
        }
        gone.into_iter()
            .map(|(id, incarnation)| MemberRef { id, incarnation })
            .collect()
    }

    pub(super) fn is_live(&self, member: &MemberRef) -> bool {
        self.workers
            .get(&member.id)
            .is_some_and(|w| w.incarnation == member.incarnation)
    }

    /// Marks every live worker's record for rewriting (a new leader re-stamps them with its epoch).
    pub(crate) fn restamp_all_assignments(&mut self) {
        let ids: Vec<MemberId> = self.workers.keys().cloned().collect();
        self.dirty_assignments.extend(ids);
    }

    /// The assignment record `worker` should hold now (its granted partitions), if it changed.
    #[cfg(test)]
    pub(super) fn desired_assignment(&self, worker: &MemberId) -> Option<AssignmentRecord> {
        self.desired_assignment_among(worker, &self.revoking_by_owner())
    }

    /// [`Self::desired_assignment`], given the pending revokes grouped by owner (computed once
    /// for all the records of a round: scanning every revoke per record cost revokes × workers,
    /// 9,000 × 500 per round in a 10 % join of 500 workers).
    pub(super) fn desired_assignment_among(
        &self,
        worker: &MemberId,
        revoking_by_owner: &RevokingByOwner<'_>,
    ) -> Option<AssignmentRecord> {
        let live = self.workers.get(worker);
        let grants: Vec<Grant> = match live {
            Some(info) => self
                .grants_by_worker
                .get(worker)
                .into_iter()
                .flatten()
                .filter_map(|key| Some((key, self.partitions.get(key)?)))
                .filter(|(_, stored)| {
                    stored
                        .value
                        .owner
                        .as_ref()
                        .is_some_and(|o| o.incarnation == info.incarnation)
                })
                .map(|(key, stored)| grant_of(key, &stored.value))
                .collect(),
            None => Vec::new(),
        };
        let incarnation = match (live, self.assignments.get(worker)) {
            (Some(info), _) => info.incarnation,
            (None, Some(existing)) => existing.value.incarnation,
            (None, None) => return None,
        };
        let drain = live.is_some_and(|info| !info.takes_grants());
        let revoking = revoking_by_owner
            .get(&(worker, incarnation))
            .cloned()
            .unwrap_or_default();
        let previous = self.assignments.get(worker);
        // The lean path announces progress batches; the baseline stays the design before them.
        // Fixed for a term, and every record is rewritten at a term's start (new epoch): no
        // comparison with the stored record needed.
        let progress_batches = self.policy.write_path == super::WritePath::Lean;
        if let Some(previous) = previous {
            // By digest (`assignment.rs`); revokes by token only: a revoking partition's
            // checkpoints move its `resume_from`, which is no reason to rewrite the record.
            let same = previous.value.incarnation == incarnation
                && previous.value.epoch == self.epoch
                && previous.value.drain == drain
                && previous.value.grant_count == grants.len()
                && previous.value.grants == grants_digest(&grants)
                && previous.value.revoking == revokes_digest(&revoking);
            if same {
                return None;
            }
        } else if grants.is_empty() && live.is_none() {
            return None;
        }
        // Workers order records by (epoch, seq): a new epoch may restart at 1, the same epoch must
        // grow, and a forged `u64::MAX` under our own epoch is refused rather than wrapped.
        let seq = match previous.map(|p| (p.value.epoch, p.value.seq.next())) {
            None => ViewSeq(1),
            Some((_, Ok(seq))) => seq,
            Some((epoch, Err(_))) if epoch < self.epoch => ViewSeq(1),
            Some((_, Err(exhausted))) => {
                tracing::error!(%worker, %exhausted, "cannot rewrite the assignment record");
                return None;
            }
        };
        Some(AssignmentRecord {
            schema: SCHEMA_VERSION,
            incarnation,
            epoch: self.epoch,
            seq,
            grants,
            drain,
            revoking,
            progress_batches,
        })
    }

    /// The partitions revoked from each owner incarnation that wait for its release, as grants
    /// with their current token (sorted by job and partition, as the revoking index is).
    pub(super) fn revoking_by_owner(&self) -> RevokingByOwner<'_> {
        let mut by_owner: RevokingByOwner<'_> = BTreeMap::new();
        for (key, stored) in self
            .revoking_since
            .keys()
            .filter_map(|key| Some((key, self.partitions.get(key)?)))
        {
            if let Some(owner) = &stored.value.owner {
                by_owner
                    .entry((&owner.id, owner.incarnation))
                    .or_default()
                    .push(grant_of(key, &stored.value));
            }
        }
        by_owner
    }
}

/// Pending revokes per owner incarnation (see [`AssignerState::revoking_by_owner`]).
pub(super) type RevokingByOwner<'a> = BTreeMap<(&'a MemberId, Incarnation), Vec<Grant>>;

/// The first ID the next run of `record` processes: after its checkpoint, or its first ID.
pub(super) fn resume_point(record: &PartitionRecord) -> u64 {
    resume_after(record.range, record.checkpoint)
}

/// The first ID of `range` to process after `checkpoint`.
pub(super) fn resume_after(range: IdRange, checkpoint: Option<u64>) -> u64 {
    match checkpoint {
        Some(done) if done >= range.first() => done + 1,
        _ => range.first(),
    }
}

fn grant_of(key: &PartitionKey, partition: &LivePartition) -> Grant {
    Grant {
        job: key.job.clone(),
        partition: key.partition,
        range: partition.range,
        resume_from: partition.resume_point(),
        token: partition.token,
        traceparent: partition.grant_traceparent().map(str::to_owned),
        unsampled: partition.unsampled,
    }
}
