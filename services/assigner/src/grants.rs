//! Granting and balancing with the sticky placement engine (`elk-placement`).
//!
//! Each round solves over the *active set*: every partition granted to a live, non-draining
//! worker plus as many pending partitions (in key order) as the workers have free slots, with each
//! worker's slots (`capacity × grants_per_capacity`) as its weight. The solver keeps every
//! partition where it is unless its owner is over quota, so:
//! * a pending partition placed on a worker is **granted** (fresh token);
//! * a granted partition placed elsewhere is **revoked**: it leaves the owner's record and turns
//!   `revoking`; the owner releases it with its checkpoint, it becomes pending, and a later round
//!   grants it where there is room. It is never granted while the old owner may still run it.
//!
//! Workers that declared jobs only ever receive partitions of those jobs; the balance is computed
//! as if every worker processed every job.

use super::{AssignerState, PartitionKey};
use elk_placement::{Partition, Worker, solve};
use elk_protocol::messages::{MemberRef, PartitionStatus};
use elk_types::MemberId;

impl AssignerState {
    /// Grants pending partitions and revokes from over-quota workers (see the module header).
    pub fn plan_grants(&mut self) {
        let slots_per_capacity = self.policy.grants_per_capacity.max(1);
        let workers: Vec<Worker<MemberId>> = self
            .workers
            .iter()
            .filter(|(_, info)| !info.draining && info.capacity.get() > 0)
            .map(|(id, info)| {
                Worker::new(
                    id.clone(),
                    info.capacity.get().saturating_mul(slots_per_capacity),
                )
            })
            .collect();
        if workers.is_empty() {
            return;
        }
        let total_slots: u64 = workers
            .iter()
            .map(|worker| u64::from(worker.capacity))
            .sum();

        let mut active: Vec<(PartitionKey, Option<MemberId>)> = Vec::new();
        for worker in &workers {
            let incarnation = self.workers[&worker.id].incarnation;
            for key in self.grants_by_worker.get(&worker.id).into_iter().flatten() {
                let current = self.partitions[key].value.owner.as_ref();
                if current.is_some_and(|owner| owner.incarnation == incarnation) {
                    active.push((key.clone(), Some(worker.id.clone())));
                }
            }
        }
        let room = total_slots.saturating_sub(active.len() as u64);
        active.extend(
            self.pending
                .iter()
                .take(room as usize)
                .map(|key| (key.clone(), None)),
        );
        if active.is_empty() {
            return;
        }
        active.sort_by(|a, b| a.0.cmp(&b.0));
        let partitions: Vec<Partition<MemberId>> = active
            .iter()
            .enumerate()
            .map(|(position, (_, owner))| Partition::new(position as u64, owner.clone()))
            .collect();
        let assignment = match solve(&workers, &partitions) {
            Ok(assignment) => assignment,
            Err(error) => {
                tracing::error!(%error, "placement failed; no grants this round");
                return;
            }
        };

        for (position, (key, previous)) in active.into_iter().enumerate() {
            let target = assignment.owner(position).map(|index| &workers[index].id);
            match (previous, target) {
                (Some(previous), Some(target)) if &previous == target => {}
                (Some(_), _) => self.revoke(&key),
                (None, Some(target)) => {
                    if self.workers[target].processes(&key.0) {
                        let target = target.clone();
                        self.grant(&key, target);
                    }
                }
                (None, None) => {}
            }
        }
    }

    fn grant(&mut self, key: &PartitionKey, worker: MemberId) {
        let incarnation = self.workers[&worker].incarnation;
        let token = self.next_token();
        let owner = MemberRef {
            id: worker,
            incarnation,
        };
        self.update_partition(key, |record| {
            record.status = PartitionStatus::Granted;
            record.owner = Some(owner);
            record.token = token;
            record.error = None;
        });
    }

    /// Takes a granted partition off its owner's record; it stays `revoking` (still owned, same
    /// token) until the owner releases it or its membership ends.
    fn revoke(&mut self, key: &PartitionKey) {
        self.revocations += 1;
        self.update_partition(key, |record| record.status = PartitionStatus::Revoking);
    }
}
