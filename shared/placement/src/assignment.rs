//! The result of `solve`: an owner per partition, indexed by position.

use crate::index::{GONE_OWNER, NO_OWNER, Slot};
use crate::model::{Partition, Worker};

/// Who held a partition before the solution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PreviousOwner {
    /// The partition had no owner (new, or released and never re-granted).
    None,
    /// Its owner is no longer among the workers.
    Gone,
    /// `workers[position]`.
    Worker(usize),
}

/// A partition whose owner differs from its previous owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Change {
    /// Position of the partition in the `partitions` given to `solve`.
    pub partition: usize,
    pub previous_owner: PreviousOwner,
    /// Position of the new owner in `workers`; `None` only when no worker has any capacity.
    pub owner: Option<usize>,
}

/// An owner for every partition, plus the per-worker figures the solver reached.
///
/// Positions refer to the slices given to [`solve`](crate::solve): partition `p` is
/// `partitions[p]`, worker `w` is `workers[w]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// Per partition: previous and new owner.
    slots: Vec<Slot>,
    loads: Vec<u64>,
    targets: Vec<u64>,
    moved: u64,
}

impl Assignment {
    pub(crate) fn new(slots: Vec<Slot>, loads: Vec<u64>, targets: Vec<u64>, moved: u64) -> Self {
        Self {
            slots,
            loads,
            targets,
            moved,
        }
    }

    pub fn partition_count(&self) -> usize {
        self.slots.len()
    }

    pub fn worker_count(&self) -> usize {
        self.loads.len()
    }

    /// The worker position that owns `partitions[partition]`, `None` when no worker has capacity.
    ///
    /// # Panics
    ///
    /// When `partition` is out of range.
    pub fn owner(&self, partition: usize) -> Option<usize> {
        decode_owner(self.slots[partition].owner)
    }

    /// The owner of every partition, in partition order.
    pub fn owners(&self) -> impl ExactSizeIterator<Item = Option<usize>> + '_ {
        self.slots.iter().map(|slot| decode_owner(slot.owner))
    }

    /// Who held `partitions[partition]` before.
    ///
    /// # Panics
    ///
    /// When `partition` is out of range.
    pub fn previous_owner(&self, partition: usize) -> PreviousOwner {
        match self.slots[partition].previous {
            NO_OWNER => PreviousOwner::None,
            GONE_OWNER => PreviousOwner::Gone,
            position => PreviousOwner::Worker(position as usize),
        }
    }

    /// Number of partitions each worker owns, by worker position.
    pub fn loads(&self) -> &[u64] {
        &self.loads
    }

    /// The integer quota each worker was filled to (`floor` or `ceil` of its quota), by position.
    pub fn targets(&self) -> &[u64] {
        &self.targets
    }

    /// Partitions that had an owner (present or gone) and now have another one.
    pub fn moved(&self) -> u64 {
        self.moved
    }

    /// Every partition whose owner is not its previous owner: moves and first placements. This
    /// is what the assigner turns into revokes and grants.
    pub fn changes(&self) -> impl Iterator<Item = Change> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, slot)| slot.owner != slot.previous)
            .map(|(partition, slot)| Change {
                partition,
                previous_owner: self.previous_owner(partition),
                owner: decode_owner(slot.owner),
            })
    }

    /// Positions of the partitions owned by `workers[worker]`, in partition order. `O(P)`.
    pub fn partitions_of(&self, worker: usize) -> impl Iterator<Item = usize> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(move |&(_, slot)| decode_owner(slot.owner) == Some(worker))
            .map(|(partition, _)| partition)
    }

    /// This assignment as the previous one of the next `solve`: the same partitions, each with
    /// its new owner as `previous_owner`.
    ///
    /// # Panics
    ///
    /// When `workers` and `partitions` are not the slices this assignment was computed from.
    pub fn to_partitions<K: Clone>(
        &self,
        workers: &[Worker<K>],
        partitions: &[Partition<K>],
    ) -> Vec<Partition<K>> {
        assert_eq!(
            partitions.len(),
            self.slots.len(),
            "not the partitions that were solved"
        );
        assert_eq!(
            workers.len(),
            self.loads.len(),
            "not the workers that were solved"
        );
        partitions
            .iter()
            .zip(self.owners())
            .map(|(partition, owner)| Partition {
                id: partition.id,
                previous_owner: owner.map(|position| workers[position].id.clone()),
            })
            .collect()
    }
}

fn decode_owner(owner: u32) -> Option<usize> {
    (owner != NO_OWNER).then_some(owner as usize)
}
