//! Property tests of the placement goals (see README): balance, stickiness, minimal movement,
//! idempotence, determinism, and the movement bound on join, leave and capacity change of one
//! worker and of 10 % of the workers.

use elk_placement::{Assignment, Partition, Worker, min_moves, quota, solve, verify};
use proptest::prelude::*;
use proptest::sample::Index;

/// Worker `i`'s id: distinct for `i < 10_007`, and not in the order of positions.
fn worker_id(position: usize) -> u32 {
    (position as u32 * 7_919) % 10_007
}

/// An id that names no worker of the scenario.
fn gone_id(code: usize) -> u32 {
    20_000 + code as u32
}

#[derive(Debug, Clone)]
struct Scenario {
    workers: Vec<Worker<u32>>,
    partitions: Vec<Partition<u32>>,
}

/// Up to 12 workers (capacity 0 to 4, mostly non-zero) and 150 partitions whose previous owner is
/// a present worker, a gone one, or nobody.
fn scenario() -> impl Strategy<Value = Scenario> {
    let capacity = prop_oneof![1 => Just(0u32), 6 => 1u32..=4];
    (prop::collection::vec(capacity, 0..=12), 0usize..=150).prop_flat_map(
        |(capacities, partition_count)| {
            let worker_count = capacities.len();
            let owner_code = 0..worker_count + 3;
            prop::collection::vec(owner_code, partition_count).prop_map(move |owner_codes| {
                let workers = capacities
                    .iter()
                    .enumerate()
                    .map(|(position, &capacity)| Worker::new(worker_id(position), capacity))
                    .collect();
                let partitions = owner_codes
                    .iter()
                    .enumerate()
                    .map(|(id, &code)| {
                        let previous_owner = match code {
                            code if code < worker_count => Some(worker_id(code)),
                            code if code == worker_count => None,
                            code => Some(gone_id(code)),
                        };
                        Partition::new(id as u64 * 10, previous_owner)
                    })
                    .collect();
                Scenario {
                    workers,
                    partitions,
                }
            })
        },
    )
}

/// A scenario already balanced by `solve`, as the assigner holds it between two events.
fn balanced() -> impl Strategy<Value = Scenario> {
    scenario().prop_map(|scenario| {
        let assignment = solve(&scenario.workers, &scenario.partitions).unwrap();
        let partitions = assignment.to_partitions(&scenario.workers, &scenario.partitions);
        Scenario {
            workers: scenario.workers,
            partitions,
        }
    })
}

fn owner_ids(workers: &[Worker<u32>], assignment: &Assignment) -> Vec<Option<u32>> {
    assignment
        .owners()
        .map(|owner| owner.map(|position| workers[position].id))
        .collect()
}

/// Solves after an event and checks every post-condition plus the 1.1 × movement bound.
fn solve_event(workers: &[Worker<u32>], partitions: &[Partition<u32>]) -> Assignment {
    let assignment = solve(workers, partitions).unwrap();
    assert_eq!(verify(workers, partitions, &assignment), Ok(()));
    let minimum = min_moves(workers, partitions).unwrap();
    assert!(
        assignment.moved() * 10 <= minimum * 11,
        "moved {} > 1.1 × min_moves {minimum}",
        assignment.moved()
    );
    assert_eq!(
        assignment.moved(),
        minimum,
        "solve reaches the minimum exactly"
    );
    assignment
}

fn ceil_of_quota(workers: &[Worker<u32>], partition_count: usize, position: usize) -> u64 {
    let total_capacity = workers
        .iter()
        .map(|worker| u64::from(worker.capacity))
        .sum();
    quota(
        partition_count as u64,
        workers[position].capacity,
        total_capacity,
    )
    .ceil
}

/// How many workers a "10 %" event touches: a tenth, rounded up, at least one.
fn ten_percent(worker_count: usize) -> usize {
    worker_count.div_ceil(10).max(1)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_post_condition_holds(scenario in scenario()) {
        let Scenario { workers, partitions } = scenario;
        let assignment = solve(&workers, &partitions).unwrap();
        prop_assert_eq!(verify(&workers, &partitions, &assignment), Ok(()));

        let has_capacity = workers.iter().any(|worker| worker.capacity > 0);
        prop_assert_eq!(assignment.partition_count(), partitions.len());
        for (partition, owner) in assignment.owners().enumerate() {
            // Nothing lost: exactly one owner (the result has one slot per partition).
            prop_assert_eq!(owner.is_some(), has_capacity, "partition {}", partition);
        }
        for (position, &load) in assignment.loads().iter().enumerate() {
            prop_assert!(load <= ceil_of_quota(&workers, partitions.len(), position));
        }
        prop_assert_eq!(assignment.moved(), min_moves(&workers, &partitions).unwrap());
    }

    #[test]
    fn sticky_partitions_stay_unless_owner_gone_or_over_quota(scenario in scenario()) {
        let Scenario { workers, partitions } = scenario;
        let assignment = solve(&workers, &partitions).unwrap();
        for (partition, input) in partitions.iter().enumerate() {
            let Some(previous_id) = input.previous_owner else { continue };
            let Some(previous) = workers.iter().position(|worker| worker.id == previous_id) else {
                continue;
            };
            if assignment.owner(partition) != Some(previous) {
                // It moved: its owner must have held more than it ends with (over quota).
                let held = partitions.iter().filter(|p| p.previous_owner == Some(previous_id)).count();
                prop_assert!((held as u64) > assignment.loads()[previous]);
            }
        }
    }

    #[test]
    fn solve_is_idempotent(scenario in scenario()) {
        let Scenario { workers, partitions } = scenario;
        let first = solve(&workers, &partitions).unwrap();
        let next_partitions = first.to_partitions(&workers, &partitions);
        let second = solve(&workers, &next_partitions).unwrap();
        prop_assert_eq!(second.moved(), 0);
        prop_assert!(second.owners().eq(first.owners()));
        prop_assert_eq!(second.loads(), first.loads());
    }

    #[test]
    fn nothing_moves_when_already_balanced(scenario in balanced(), seed in any::<u64>()) {
        // Any assignment with balanced loads is kept as is, not only the ones `solve` produced:
        // shuffle which partitions each worker holds, keeping the loads.
        let Scenario { workers, mut partitions } = scenario;
        let mut owners: Vec<Option<u32>> =
            partitions.iter().map(|partition| partition.previous_owner).collect();
        let mut state = seed | 1;
        for index in (1..owners.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            owners.swap(index, (state % (index as u64 + 1)) as usize);
        }
        for (partition, owner) in partitions.iter_mut().zip(owners) {
            partition.previous_owner = owner;
        }
        let assignment = solve_event(&workers, &partitions);
        prop_assert_eq!(assignment.moved(), 0);
        prop_assert_eq!(assignment.changes().count(), 0);
    }

    #[test]
    fn result_does_not_depend_on_worker_order(scenario in scenario()) {
        let Scenario { workers, partitions } = scenario;
        let forward = solve(&workers, &partitions).unwrap();
        let again = solve(&workers, &partitions).unwrap();
        prop_assert_eq!(&again, &forward);

        let reversed: Vec<Worker<u32>> = workers.iter().rev().cloned().collect();
        let backward = solve(&reversed, &partitions).unwrap();
        prop_assert_eq!(owner_ids(&reversed, &backward), owner_ids(&workers, &forward));
    }

    #[test]
    fn string_ids_behave_like_integer_ids(scenario in scenario()) {
        let Scenario { workers, partitions } = scenario;
        let names: Vec<String> = (0..30_000).map(|id| format!("w{id}")).collect();
        let named_workers: Vec<Worker<&str>> = workers
            .iter()
            .map(|worker| Worker::new(names[worker.id as usize].as_str(), worker.capacity))
            .collect();
        let named_partitions: Vec<Partition<&str>> = partitions
            .iter()
            .map(|partition| Partition::new(
                partition.id,
                partition.previous_owner.map(|id| names[id as usize].as_str()),
            ))
            .collect();
        let named = solve(&named_workers, &named_partitions).unwrap();
        prop_assert_eq!(verify(&named_workers, &named_partitions, &named), Ok(()));
        let numbered = solve(&workers, &partitions).unwrap();
        prop_assert_eq!(named.loads().iter().sum::<u64>(), numbered.loads().iter().sum::<u64>());
        prop_assert_eq!(named.moved(), numbered.moved());
    }

    #[test]
    fn one_worker_joins(scenario in balanced(), capacity in 1u32..=4) {
        let Scenario { mut workers, partitions } = scenario;
        workers.push(Worker::new(50_000, capacity));
        let assignment = solve_event(&workers, &partitions);
        // Moves only feed the newcomer, plus what integer rounding shifts.
        let newcomer = workers.len() - 1;
        prop_assert!(assignment.loads()[newcomer] <= ceil_of_quota(&workers, partitions.len(), newcomer));
    }

    #[test]
    fn one_worker_leaves(scenario in balanced(), leaver in any::<Index>()) {
        let Scenario { mut workers, partitions } = scenario;
        prop_assume!(!workers.is_empty());
        let gone = workers.remove(leaver.index(workers.len()));
        let orphans = partitions.iter().filter(|p| p.previous_owner == Some(gone.id)).count();
        let assignment = solve_event(&workers, &partitions);
        prop_assert!(assignment.moved() >= orphans as u64);
    }

    #[test]
    fn one_worker_changes_capacity(
        scenario in balanced(),
        changed in any::<Index>(),
        capacity in 0u32..=6,
    ) {
        let Scenario { mut workers, partitions } = scenario;
        prop_assume!(!workers.is_empty());
        let position = changed.index(workers.len());
        workers[position].capacity = capacity;
        solve_event(&workers, &partitions);
    }

    #[test]
    fn ten_percent_join(scenario in balanced(), capacity in 1u32..=4) {
        let Scenario { mut workers, partitions } = scenario;
        let joining = ten_percent(workers.len());
        for newcomer in 0..joining {
            workers.push(Worker::new(50_000 + newcomer as u32, capacity));
        }
        solve_event(&workers, &partitions);
    }

    #[test]
    fn ten_percent_leave(scenario in balanced(), first in any::<Index>()) {
        let Scenario { mut workers, partitions } = scenario;
        prop_assume!(!workers.is_empty());
        let leaving = ten_percent(workers.len());
        for _ in 0..leaving {
            workers.remove(first.index(workers.len()));
        }
        solve_event(&workers, &partitions);
    }

    #[test]
    fn ten_percent_change_capacity(scenario in balanced(), first in any::<Index>(), capacity in 0u32..=6) {
        let Scenario { mut workers, partitions } = scenario;
        prop_assume!(!workers.is_empty());
        let start = first.index(workers.len());
        let changing = ten_percent(workers.len());
        let worker_count = workers.len();
        for offset in 0..changing {
            workers[(start + offset) % worker_count].capacity = capacity;
        }
        solve_event(&workers, &partitions);
    }
}

/// The same events at a scale where rounding is negligible: moves track the quota shift.
#[test]
fn events_at_scale_move_about_the_shifted_quota() {
    let workers: Vec<Worker<u32>> = (0..200).map(|id| Worker::new(id, 1 + id % 3)).collect();
    let unassigned: Vec<Partition<u32>> = (0..20_000).map(Partition::unassigned).collect();
    let cold = solve(&workers, &unassigned).unwrap();
    assert_eq!(cold.moved(), 0);
    let balanced = cold.to_partitions(&workers, &unassigned);

    let mut joined = workers.clone();
    joined.push(Worker::new(1_000, 2));
    let join = solve_event(&joined, &balanced);
    let newcomer_ceil = ceil_of_quota(&joined, balanced.len(), joined.len() - 1);
    assert!(
        join.moved() <= newcomer_ceil + 1,
        "join moved {}",
        join.moved()
    );

    let left: Vec<Worker<u32>> = workers[1..].to_vec();
    let orphans = balanced
        .iter()
        .filter(|p| p.previous_owner == Some(0))
        .count() as u64;
    let leave = solve_event(&left, &balanced);
    assert!(
        leave.moved() >= orphans && leave.moved() <= orphans + 1,
        "leave moved {}",
        leave.moved()
    );

    let mut grown: Vec<Worker<u32>> = workers.clone();
    for newcomer in 0..20 {
        grown.push(Worker::new(2_000 + newcomer, 2));
    }
    solve_event(&grown, &balanced);
    solve_event(&workers[20..], &balanced);
}

#[test]
fn duplicate_worker_ids_are_rejected() {
    let workers = [
        Worker::new("a", 1),
        Worker::new("b", 1),
        Worker::new("a", 2),
    ];
    let partitions: Vec<Partition<&str>> = vec![Partition::unassigned(1)];
    assert_eq!(
        solve(&workers, &partitions),
        Err(elk_placement::PlacementError::DuplicateWorker {
            first_position: 0,
            duplicate_position: 2
        })
    );
}

#[test]
fn no_capacity_leaves_everything_unassigned() {
    let workers = [Worker::new("draining", 0)];
    let partitions = vec![
        Partition::new(1, Some("draining")),
        Partition::unassigned(2),
    ];
    let assignment = solve(&workers, &partitions).unwrap();
    assert_eq!(assignment.owners().collect::<Vec<_>>(), vec![None, None]);
    assert_eq!(assignment.moved(), 1);
    let no_workers: [Worker<&str>; 0] = [];
    let assignment = solve(&no_workers, &partitions).unwrap();
    assert_eq!(assignment.moved(), 1);
}
