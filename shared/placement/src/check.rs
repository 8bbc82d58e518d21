//! The minimum number of moves, and the post-conditions of a solution.
//!
//! Both are computed from the input alone, independently of the solver's phases, so they can
//! check it: `verify` is what the property tests and `solve`'s `debug_assert!` rely on.

use crate::assignment::{Assignment, PreviousOwner};
use crate::error::PlacementError;
use crate::index::{IndexedProblem, NO_OWNER, index_problem};
use crate::model::{Partition, Quota, Worker, quota, quota_parts};
use std::fmt;
use std::hash::Hash;

/// The fewest moves that bring every worker within `[floor(quota), ceil(quota)]` from the
/// previous owners carried by `partitions` (see the crate README for the derivation).
///
/// Orphans of a gone worker always count; first placements of partitions without a previous
/// owner never do. `solve` always moves exactly this many partitions.
///
/// # Errors
///
/// As [`solve`](crate::solve).
///
/// ```
/// use elk_placement::{Partition, Worker, min_moves};
///
/// // Four partitions on worker-a; worker-b joins: two must move.
/// let workers = [Worker::new("worker-a", 1), Worker::new("worker-b", 1)];
/// let partitions: Vec<_> = (0..4).map(|id| Partition::new(id, Some("worker-a"))).collect();
/// assert_eq!(min_moves(&workers, &partitions), Ok(2));
/// ```
pub fn min_moves<K: Ord + Hash>(
    workers: &[Worker<K>],
    partitions: &[Partition<K>],
) -> Result<u64, PlacementError> {
    let problem = index_problem(workers, partitions)?;
    Ok(min_moves_indexed(&problem))
}

fn min_moves_indexed(problem: &IndexedProblem) -> u64 {
    let partition_count = problem.partition_count();
    let total_capacity = problem.total_capacity();
    let had_owner = problem
        .slots
        .iter()
        .filter(|slot| slot.previous != NO_OWNER)
        .count();

    let mut max_kept = 0u64;
    let mut sum_of_floors = 0u64;
    let mut extra_slot_saves_a_move = 0u64;
    for (&capacity, &held) in problem.capacities.iter().zip(&problem.held) {
        let (floor, remainder) = quota_parts(partition_count, capacity, total_capacity);
        sum_of_floors += floor;
        max_kept += held.min(floor);
        if remainder > 0 && held > floor {
            extra_slot_saves_a_move += 1;
        }
    }
    let extra_slots = if total_capacity == 0 {
        0
    } else {
        partition_count - sum_of_floors
    };
    max_kept += extra_slots.min(extra_slot_saves_a_move);
    had_owner as u64 - max_kept
}

/// A broken post-condition of a solution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    InvalidInput(PlacementError),
    /// The assignment was computed for other workers or partitions.
    NotForThisInput,
    /// A partition has no owner although some worker has capacity.
    Lost {
        partition: usize,
    },
    /// A partition is owned by a worker without capacity, or by no existing worker.
    BadOwner {
        partition: usize,
        owner: usize,
    },
    /// The reported load of a worker is not the number of partitions it owns.
    LoadMismatch {
        worker: usize,
        reported: u64,
        counted: u64,
    },
    /// A worker ends outside `[floor(quota), ceil(quota)]`.
    OutsideQuota {
        worker: usize,
        load: u64,
        quota: Quota,
    },
    /// A worker both lost and gained partitions: the partitions it lost moved needlessly.
    NeedlessMove {
        worker: usize,
        shed: u64,
        gained: u64,
    },
    /// The reported number of moves is not the counted one.
    MovedMismatch {
        reported: u64,
        counted: u64,
    },
    /// More moves than the minimum.
    NotMinimal {
        moved: u64,
        min_moves: u64,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidInput(error) => write!(formatter, "invalid input: {error}"),
            Self::NotForThisInput => {
                write!(formatter, "the assignment was computed for another input")
            }
            Self::Lost { partition } => write!(formatter, "partitions[{partition}] has no owner"),
            Self::BadOwner { partition, owner } => write!(
                formatter,
                "partitions[{partition}] is owned by workers[{owner}], which cannot take it"
            ),
            Self::LoadMismatch {
                worker,
                reported,
                counted,
            } => write!(
                formatter,
                "workers[{worker}] reports load {reported} but owns {counted} partitions"
            ),
            Self::OutsideQuota {
                worker,
                load,
                quota,
            } => write!(
                formatter,
                "workers[{worker}] has load {load} outside its quota [{}, {}]",
                quota.floor, quota.ceil
            ),
            Self::NeedlessMove {
                worker,
                shed,
                gained,
            } => write!(
                formatter,
                "workers[{worker}] shed {shed} partitions and gained {gained}"
            ),
            Self::MovedMismatch { reported, counted } => {
                write!(formatter, "{reported} moves reported, {counted} counted")
            }
            Self::NotMinimal { moved, min_moves } => {
                write!(formatter, "{moved} moves where {min_moves} suffice")
            }
        }
    }
}

impl std::error::Error for Violation {}

/// Checks every post-condition of `assignment` as a solution for `workers` and `partitions`:
/// nothing lost or duplicated, every load within its quota, no needless move, and exactly
/// [`min_moves`] moves. `O(P + W log W)`.
///
/// # Errors
///
/// The first [`Violation`] found.
///
/// ```
/// use elk_placement::{Partition, Worker, solve, verify};
///
/// let workers = [Worker::new(1u32, 3), Worker::new(2u32, 1)];
/// let partitions: Vec<Partition<u32>> = (0..10).map(Partition::unassigned).collect();
/// let assignment = solve(&workers, &partitions).unwrap();
/// assert_eq!(verify(&workers, &partitions, &assignment), Ok(()));
/// ```
pub fn verify<K: Ord + Hash>(
    workers: &[Worker<K>],
    partitions: &[Partition<K>],
    assignment: &Assignment,
) -> Result<(), Violation> {
    let problem = index_problem(workers, partitions).map_err(Violation::InvalidInput)?;
    if assignment.partition_count() != partitions.len()
        || assignment.worker_count() != workers.len()
    {
        return Err(Violation::NotForThisInput);
    }

    let total_capacity = problem.total_capacity();
    let mut counted_loads = vec![0u64; workers.len()];
    let mut kept = vec![0u64; workers.len()];
    let mut counted_moves = 0u64;
    for (partition, (owner, slot)) in assignment.owners().zip(&problem.slots).enumerate() {
        let previous_owner = assignment.previous_owner(partition);
        let expected_previous = match slot.previous {
            NO_OWNER => PreviousOwner::None,
            position if (position as usize) < workers.len() => {
                PreviousOwner::Worker(position as usize)
            }
            _ => PreviousOwner::Gone,
        };
        if previous_owner != expected_previous {
            return Err(Violation::NotForThisInput);
        }
        match owner {
            None if total_capacity > 0 => return Err(Violation::Lost { partition }),
            None => {}
            Some(owner) => {
                if owner >= workers.len() || workers[owner].capacity == 0 {
                    return Err(Violation::BadOwner { partition, owner });
                }
                counted_loads[owner] += 1;
            }
        }
        match (previous_owner, owner) {
            (PreviousOwner::Worker(previous), Some(owner)) if previous == owner => {
                kept[owner] += 1;
            }
            (PreviousOwner::None, _) => {}
            _ => counted_moves += 1,
        }
    }

    let partition_count = partitions.len() as u64;
    for (worker, (&reported, &counted)) in assignment.loads().iter().zip(&counted_loads).enumerate()
    {
        if reported != counted {
            return Err(Violation::LoadMismatch {
                worker,
                reported,
                counted,
            });
        }
        let worker_quota = quota(partition_count, workers[worker].capacity, total_capacity);
        if counted < worker_quota.floor || counted > worker_quota.ceil {
            return Err(Violation::OutsideQuota {
                worker,
                load: counted,
                quota: worker_quota,
            });
        }
        let shed = problem.held[worker] - kept[worker];
        let gained = counted - kept[worker];
        if shed > 0 && gained > 0 {
            return Err(Violation::NeedlessMove {
                worker,
                shed,
                gained,
            });
        }
    }

    if counted_moves != assignment.moved() {
        return Err(Violation::MovedMismatch {
            reported: assignment.moved(),
            counted: counted_moves,
        });
    }
    let minimum = min_moves_indexed(&problem);
    if counted_moves > minimum {
        return Err(Violation::NotMinimal {
            moved: counted_moves,
            min_moves: minimum,
        });
    }
    Ok(())
}
