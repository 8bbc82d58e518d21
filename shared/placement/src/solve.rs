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

    // Phase 3: keep every partition whose previous owner is present and below its target.
    let mut loads = vec![0u64; problem.worker_count()];
    let mut owners = vec![NO_OWNER; problem.previous.len()];
    let mut pool: Vec<u32> = Vec::new();
    let mut moved = 0u64;
    for (partition, (&previous_owner, owner)) in
        problem.previous.iter().zip(owners.iter_mut()).enumerate()
    {
        if previous_owner < GONE_OWNER {
            let position = previous_owner as usize;
            if loads[position] < targets[position] {
                loads[position] += 1;
                *owner = previous_owner;
                continue;
            }
        }
        if previous_owner != NO_OWNER {
            moved += 1;
        }
        pool.push(partition as u32);
    }

    // Phase 4: fill deficits in worker-id order. A worker that shed in phase 3 is at its target
    // and receives nothing, so no partition returns to the owner it was just taken from.
    let mut next_in_pool = 0usize;
    for &position in &problem.positions_by_id {
        let position_index = position as usize;
        let deficit = targets[position_index] - loads[position_index];
        let remaining = pool.len() - next_in_pool;
        let taken = usize::try_from(deficit).map_or(remaining, |deficit| deficit.min(remaining));
        for &partition in &pool[next_in_pool..next_in_pool + taken] {
            owners[partition as usize] = position;
        }
        loads[position_index] += taken as u64;
        next_in_pool += taken;
    }
    debug_assert!(
        next_in_pool == pool.len() || problem.total_capacity() == 0,
        "targets sum to the partition count, so the pool drains"
    );

    Assignment::new(owners, problem.previous, loads, targets, moved)
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
