//! Phases 2 to 4 of the solver: targets, keep, fill (see the crate README).

use crate::assignment::Assignment;
use crate::check::verify;
use crate::error::PlacementError;
use crate::index::{GONE_OWNER, IndexedProblem, NO_OWNER, index_problem};
use crate::model::{Partition, Worker, quota_parts};
use std::cmp::Reverse;
use std::hash::Hash;

/// Places `partitions` on `workers`: balanced by capacity, sticky, with the fewest possible moves.
///
/// The previous assignment travels with the partitions (`Partition::previous_owner`), so it can
/// never disagree with the set of partitions. The result is indexed by position: owner of
/// `partitions[p]` is `workers[assignment.owner(p)?]`.
///
/// Time `O(P + W log W)`, memory `O(P + W)`. Post-conditions are checked by [`verify`] in debug
/// builds.
///
/// # Errors
///
/// [`PlacementError`] when two workers share an id, or when there are more than `u32::MAX - 2`
/// workers or `u32::MAX` partitions.
///
/// # Example
///
/// The assigner borrows ids from its membership view and partition records:
///
/// ```
/// use elk_placement::{Partition, Worker, solve};
///
/// let workers = [Worker::new("worker-a", 1), Worker::new("worker-b", 1), Worker::new("worker-c", 2)];
/// // Partitions 1..=4 were on worker-a and worker-gone; 5..=8 are new.
/// let partitions: Vec<Partition<&str>> = (1..=8)
///     .map(|id| match id {
///         1..=2 => Partition::new(id, Some("worker-a")),
///         3..=4 => Partition::new(id, Some("worker-gone")),
///         _ => Partition::unassigned(id),
///     })
///     .collect();
///
/// let assignment = solve(&workers, &partitions).unwrap();
///
/// // Quotas 2, 2 and 4: worker-a keeps its two partitions, the orphans and new ones fill the rest.
/// assert_eq!(assignment.loads(), &[2, 2, 4]);
/// assert_eq!(assignment.owner(0), Some(0));
/// assert_eq!(assignment.owner(1), Some(0));
/// // Only the two orphans of worker-gone moved; placing new partitions is not a move.
/// assert_eq!(assignment.moved(), 2);
///
/// // Solving again from this result changes nothing.
/// let next = assignment.to_partitions(&workers, &partitions);
/// let again = solve(&workers, &next).unwrap();
/// assert_eq!(again.moved(), 0);
/// assert!(again.owners().eq(assignment.owners()));
/// ```
pub fn solve<K: Ord + Hash>(
    workers: &[Worker<K>],
    partitions: &[Partition<K>],
) -> Result<Assignment, PlacementError> {
    let problem = index_problem(workers, partitions)?;
    let assignment = solve_indexed(problem);
    debug_assert_eq!(verify(workers, partitions, &assignment), Ok(()));
    Ok(assignment)
}

fn solve_indexed(problem: IndexedProblem) -> Assignment {
    let targets = compute_targets(&problem);
    let total_capacity = problem.total_capacity();
    let IndexedProblem {
        positions_by_id,
        mut slots,
        held,
        ..
    } = problem;

    // Phases 3 and 4 in one pass. Phase 3 keeps the first `min(held, target)` partitions of each
    // present owner, so every deficit is known up front and the pool never needs to be stored:
    // each partition that is not kept goes straight to the next worker, in id order, that still
    // has a deficit. A worker that sheds is at its target, so it has no deficit and receives
    // nothing: no partition returns to the owner it was just taken from.
    let mut kept = vec![0u64; held.len()];
    let mut fill = FillCursor::new(&positions_by_id, &held, &targets);
    let mut moved = 0u64;
    for slot in &mut slots {
        let previous_owner = slot.previous;
        if previous_owner < GONE_OWNER {
            let position = previous_owner as usize;
            if kept[position] < targets[position] {
                kept[position] += 1;
                slot.owner = previous_owner;
                continue;
            }
        }
        if previous_owner != NO_OWNER {
            moved += 1;
        }
        slot.owner = fill.next_owner();
    }
    debug_assert!(
        fill.is_exhausted() || total_capacity == 0,
        "targets sum to the partition count, so the deficits absorb every unkept partition"
    );

    let mut loads = kept;
    for (load, filled) in loads.iter_mut().zip(fill.filled) {
        *load += filled;
    }
    Assignment::new(slots, loads, targets, moved)
}

/// Phase 4: hands out owners to the workers with a deficit, in worker-id order.
struct FillCursor<'a> {
    positions_by_id: &'a [u32],
    /// `target - min(held, target)`: what phase 3 leaves each worker short of its target.
    deficits: Vec<u64>,
    filled: Vec<u64>,
    /// Index in `positions_by_id` of the worker being filled.
    next_in_order: usize,
}

impl<'a> FillCursor<'a> {
    fn new(positions_by_id: &'a [u32], held: &[u64], targets: &[u64]) -> Self {
        let deficits = targets
            .iter()
            .zip(held)
            .map(|(&target, &held)| target - held.min(target))
            .collect();
        Self {
            positions_by_id,
            deficits,
            filled: vec![0; targets.len()],
            next_in_order: 0,
        }
    }

    /// The next owner for a partition that was not kept, `NO_OWNER` once every deficit is
    /// filled (which only happens when no worker has capacity).
    #[inline]
    fn next_owner(&mut self) -> u32 {
        while let Some(&position) = self.positions_by_id.get(self.next_in_order) {
            let position_index = position as usize;
            if self.filled[position_index] < self.deficits[position_index] {
                self.filled[position_index] += 1;
                return position;
            }
            self.next_in_order += 1;
        }
        NO_OWNER
    }

    fn is_exhausted(&self) -> bool {
        self.positions_by_id[self.next_in_order.min(self.positions_by_id.len())..]
            .iter()
            .all(|&position| self.filled[position as usize] == self.deficits[position as usize])
    }
}

/// Phase 2: each worker's target, `floor(quota)` or `ceil(quota)`, summing to the partition count.
fn compute_targets(problem: &IndexedProblem) -> Vec<u64> {
    let partition_count = problem.partition_count();
    let total_capacity = problem.total_capacity();
    let mut targets = Vec::with_capacity(problem.worker_count());
    let mut fractional: Vec<(u32, u64)> = Vec::new();
    let mut sum_of_floors = 0u64;
    for (position, &capacity) in problem.capacities.iter().enumerate() {
        let (floor, remainder) = quota_parts(partition_count, capacity, total_capacity);
        targets.push(floor);
        sum_of_floors += floor;
        if remainder > 0 {
            fractional.push((position as u32, remainder));
        }
    }
    if total_capacity == 0 {
        return targets;
    }
    let extra_slots = partition_count - sum_of_floors;
    if extra_slots == 0 {
        return targets;
    }
    debug_assert!(
        fractional.len() as u64 >= extra_slots,
        "the fractional parts sum to the extra slots, each is below one"
    );

    let mut id_rank = vec![0u32; problem.worker_count()];
    for (rank, &position) in problem.positions_by_id.iter().enumerate() {
        id_rank[position as usize] = rank as u32;
    }
    // Preference: saves a move, then closest to its ceiling, then smallest id.
    fractional.sort_unstable_by_key(|&(position, remainder)| {
        let position_index = position as usize;
        let saves_a_move = problem.held[position_index] > targets[position_index];
        (
            Reverse(saves_a_move),
            Reverse(remainder),
            id_rank[position_index],
        )
    });
    for &(position, _) in fractional.iter().take(extra_slots as usize) {
        targets[position as usize] += 1;
    }
    targets
}
