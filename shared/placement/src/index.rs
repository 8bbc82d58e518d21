//! Phase 1: map worker ids to dense indices, and previous owners to those indices.
//!
//! Everything after this phase works on `u32` positions into the caller's `workers` slice, so no
//! worker id is hashed or compared again.

use crate::error::PlacementError;
use crate::hash::FastHashMap;
use crate::model::{Partition, Worker};
use std::hash::Hash;

/// `previous[p]`: the partition had no previous owner.
pub(crate) const NO_OWNER: u32 = u32::MAX;
/// `previous[p]`: the previous owner is not among the workers any more.
pub(crate) const GONE_OWNER: u32 = u32::MAX - 1;
pub(crate) const MAX_WORKERS: usize = (u32::MAX - 2) as usize;
pub(crate) const MAX_PARTITIONS: usize = u32::MAX as usize;

/// One partition in dense form. Previous and new owner side by side: the solver reads one and
/// writes the other in the same cache line, and the result is one allocation, not two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    /// Position of the previous owner, `NO_OWNER` or `GONE_OWNER`.
    pub(crate) previous: u32,
    /// Position of the new owner, or `NO_OWNER`; `NO_OWNER` until solved.
    pub(crate) owner: u32,
}

/// The problem in dense form.
#[derive(Debug)]
pub(crate) struct IndexedProblem {
    /// Worker positions sorted by worker id: the deterministic tie-break order.
    pub(crate) positions_by_id: Vec<u32>,
    /// One slot per partition, in input order.
    pub(crate) slots: Vec<Slot>,
    /// For each worker position, how many partitions it held before.
    pub(crate) held: Vec<u64>,
    /// Capacity of each worker position.
    pub(crate) capacities: Vec<u32>,
}

impl IndexedProblem {
    pub(crate) fn worker_count(&self) -> usize {
        self.capacities.len()
    }

    pub(crate) fn partition_count(&self) -> u64 {
        self.slots.len() as u64
    }

    pub(crate) fn total_capacity(&self) -> u64 {
        self.capacities
            .iter()
            .map(|&capacity| u64::from(capacity))
            .sum()
    }
}

pub(crate) fn index_problem<K: Ord + Hash>(
    workers: &[Worker<K>],
    partitions: &[Partition<K>],
) -> Result<IndexedProblem, PlacementError> {
    if workers.len() > MAX_WORKERS {
        return Err(PlacementError::TooManyWorkers {
            count: workers.len(),
        });
    }
    if partitions.len() > MAX_PARTITIONS {
        return Err(PlacementError::TooManyPartitions {
            count: partitions.len(),
        });
    }

    let mut position_of_id: FastHashMap<&K, u32> = FastHashMap::default();
    position_of_id.reserve(workers.len());
    for (position, worker) in workers.iter().enumerate() {
        if let Some(&first_position) = position_of_id.get(&worker.id) {
            return Err(PlacementError::DuplicateWorker {
                first_position: first_position as usize,
                duplicate_position: position,
            });
        }
        position_of_id.insert(&worker.id, position as u32);
    }

    let mut positions_by_id: Vec<u32> = (0..workers.len() as u32).collect();
    positions_by_id.sort_unstable_by(|&left, &right| {
        workers[left as usize].id.cmp(&workers[right as usize].id)
    });

    let mut held = vec![0u64; workers.len()];
    // Neighbouring partitions usually share their owner (phase 4 hands out runs): remember the
    // last lookup and skip the hash when the id repeats.
    let mut last_lookup: Option<(&K, u32)> = None;
    let slots: Vec<Slot> = partitions
        .iter()
        .map(|partition| {
            let Some(owner_id) = &partition.previous_owner else {
                return Slot {
                    previous: NO_OWNER,
                    owner: NO_OWNER,
                };
            };
            let position = match last_lookup {
                Some((last_id, last_position)) if last_id == owner_id => last_position,
                _ => {
                    let position = position_of_id.get(owner_id).copied().unwrap_or(GONE_OWNER);
                    last_lookup = Some((owner_id, position));
                    position
                }
            };
            if position != GONE_OWNER {
                held[position as usize] += 1;
            }
            Slot {
                previous: position,
                owner: NO_OWNER,
            }
        })
        .collect();

    let capacities = workers.iter().map(|worker| worker.capacity).collect();
    Ok(IndexedProblem {
        positions_by_id,
        slots,
        held,
        capacities,
    })
}
