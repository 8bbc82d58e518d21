//! The churn budget (issue 14 item 4): with a cap, a round revokes at most `cap` partitions to
//! even out load (hand-overs of earlier rounds still in flight included), each from the most
//! loaded worker; the fleet still reaches the balance, in `ceil(minimum moves / cap) + 1` rounds,
//! moving exactly the minimum (no partition twice); reclaims and drains are never capped. Costs
//! are counted (moves, rounds), never timed.

use super::*;
use crate::model::churn::{Source, choose_moves};
use crate::model::{RebalancePolicy, RebalanceRound};
use elk_placement::{Partition, Worker, min_moves, quota};
use elk_protocol::messages::{DrainSource, PartitionStatus};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

const IDS_PER_PARTITION: u64 = 100;

fn capped(max_moves_per_round: Option<u64>, max_moves_fraction: Option<f64>) -> Policy {
    Policy {
        rebalance: RebalancePolicy {
            max_moves_per_round,
            max_moves_fraction,
        },
        ..policy()
    }
}

fn id(worker: &str) -> MemberId {
    MemberId::new(worker).unwrap()
}

/// A model that loaded `owners.len()` granted partitions (partition `i + 1` held by
/// `owners[i]`, incarnation 1) of one fixed job cut to its end, with `workers` (name, capacity)
/// in the view.
fn placed(policy: Policy, owners: &[&str], workers: &[(&str, u32)]) -> AssignerState {
    let count = owners.len() as u64;
    let range = IdRange::new(1, count * IDS_PER_PARTITION).unwrap();
    let mut job = fixed_job(range, IDS_PER_PARTITION);
    job.cursor = range.last() + 1;
    job.next_partition = PartitionId(count + 1);
    job.partitions_total = count;
    let partitions = owners
        .iter()
        .enumerate()
        .map(|(index, owner)| {
            let number = index as u64 + 1;
            let first = index as u64 * IDS_PER_PARTITION + 1;
            let range = IdRange::new(first, first + IDS_PER_PARTITION - 1).unwrap();
            let mut record =
                PartitionRecord::pending(job_name(), PartitionId(number), range, EPOCH);
            record.status = PartitionStatus::Granted;
            record.owner = Some(MemberRef {
                id: id(owner),
                incarnation: Incarnation(1),
            });
            record.token = PartitionLeaseToken(1_000 + number);
            (record, Revision(number + 1))
        })
        .collect();
    let mut state = AssignerState::load(
        EPOCH,
        policy,
        0,
        Snapshot {
            jobs: vec![(job, Revision(1))],
            partitions,
            ..Snapshot::default()
        },
    );
    let members: Vec<(&str, u64, u32)> = workers
        .iter()
        .map(|(name, capacity)| (*name, 1, *capacity))
        .collect();
    state.apply_view(&view(&members));
    state
}

/// Every revoking partition released by its owner; returns their keys.
fn release_revoked(state: &mut AssignerState) -> Vec<PartitionKey> {
    let revoking: Vec<(PartitionKey, MemberRef, PartitionLeaseToken)> = state
        .partitions
        .iter()
        .filter(|(_, p)| p.value.status == PartitionStatus::Revoking)
        .map(|(key, p)| (key.clone(), p.value.owner.clone().unwrap(), p.value.token))
        .collect();
    for (key, owner, token) in &revoking {
        let event = ProgressEvent::Released { last_done: None };
        let partition = key.partition.get();
        state
            .apply_progress(&report(owner.id.as_str(), 1, partition, *token, event))
            .unwrap();
    }
    revoking.into_iter().map(|(key, _, _)| key).collect()
}

fn rebalance_revokes(state: &AssignerState) -> u64 {
    let counters = state.counters();
    counters.revocations
        - counters.revocations_drain
        - counters.revocations_split
        - counters.revocations_job_stopped
}

/// Partitions held per worker (granted; revoking ones are off the owner's record).
fn loads(state: &AssignerState, workers: &[(&str, u32)]) -> BTreeMap<String, u64> {
    workers
        .iter()
        .map(|(name, _)| (name.to_string(), state.granted_to(name) as u64))
        .collect()
}

/// Every partition granted, none moving, every worker within `[floor, ceil]` of its quota by
/// slots — checked against `elk_placement::quota`, not the solver's own targets.
fn balanced(state: &AssignerState, workers: &[(&str, u32)], partitions: u64) -> bool {
    let total_slots: u64 = workers.iter().map(|(_, c)| u64::from(*c) * 2).sum();
    state.pending_count() == 0
        && state.revoking_keys().next().is_none()
        && workers.iter().all(|(name, capacity)| {
            let bounds = quota(partitions, capacity * 2, total_slots);
            let held = state.granted_to(name) as u64;
            (bounds.floor..=bounds.ceil).contains(&held)
        })
}

/// The fewest moves from the loaded placement to a balance (the solver's own lower bound).
fn minimum_moves(owners: &[&str], workers: &[(&str, u32)]) -> u64 {
    let workers: Vec<Worker<&str>> = workers
        .iter()
        .map(|(name, capacity)| Worker::new(*name, capacity * 2))
        .collect();
    let partitions: Vec<Partition<&str>> = owners
        .iter()
        .enumerate()
        .map(|(index, owner)| Partition::new(index as u64 + 1, Some(*owner)))
        .collect();
    min_moves(&workers, &partitions).unwrap()
}

/// What a simulated run of rounds showed.
struct Run {
    rounds: u64,
    moves: u64,
    /// `(moves, cap)` of every round.
    per_round: Vec<(u64, u64)>,
}

/// Rounds until balanced (each followed by the owners releasing what was revoked), checking in
/// every round that the moves stay within the budget's cap, that no partition moves twice, and
/// that no worker kept its excess while a less loaded one (per slot) was made to shed.
fn run_to_balance(
    state: &mut AssignerState,
    workers: &[(&str, u32)],
    partitions: u64,
    max_rounds: u64,
) -> Run {
    let slots: BTreeMap<String, u64> = workers
        .iter()
        .map(|(name, capacity)| (name.to_string(), u64::from(*capacity) * 2))
        .collect();
    let total_slots: u64 = slots.values().sum();
    let mut moved_keys = BTreeSet::new();
    let mut per_round = Vec::new();
    let mut rounds = 0;
    while !balanced(state, workers, partitions) {
        assert!(
            rounds < max_rounds,
            "not balanced after {rounds} rounds: {:?}",
            loads(state, workers)
        );
        rounds += 1;
        let before = loads(state, workers);
        let granted: u64 = before.values().sum();
        let cap = state.policy.rebalance.cap(granted).unwrap_or(u64::MAX);
        let revokes_before = rebalance_revokes(state);
        state.reconcile(rounds);
        let moved = rebalance_revokes(state) - revokes_before;
        assert!(moved <= cap, "round {rounds} moved {moved} > cap {cap}");
        per_round.push((moved, cap));
        let after = loads(state, workers);
        let over = |name: &str| {
            let bounds = quota(partitions, slots[name] as u32, total_slots);
            after[name] > bounds.ceil
        };
        for (shed, held_after) in &after {
            if *held_after >= before[shed] {
                continue;
            }
            for (other, other_after) in &after {
                assert!(
                    !over(other)
                        || u128::from(*other_after) * u128::from(slots[shed])
                            <= u128::from(held_after + 1) * u128::from(slots[other]),
                    "round {rounds}: {shed} shed to {held_after} while {other} kept {other_after}"
                );
            }
        }
        for key in release_revoked(state) {
            assert!(moved_keys.insert(key.clone()), "{key} moved twice");
        }
    }
    Run {
        rounds,
        moves: rebalance_revokes(state),
        per_round,
    }
}

#[test]
fn a_capped_join_moves_the_cap_per_round_from_the_most_loaded_worker() {
    // a holds 12, b 8 (equal slots of 20, quotas 5 each once c and d join): 10 moves needed.
    let mut owners = vec!["a"; 12];
    owners.extend(["b"; 8]);
    let workers = [("a", 10), ("b", 10), ("c", 10), ("d", 10)];
    let mut state = placed(capped(Some(2), None), &owners, &workers);
    assert_eq!(minimum_moves(&owners, &workers), 10);

    state.reconcile(1);
    assert_eq!(rebalance_revokes(&state), 2);
    assert_eq!(
        (state.granted_to("a"), state.granted_to("b")),
        (10, 8),
        "both moves from the most loaded worker"
    );
    assert_eq!(
        state.take_rebalance_rounds(),
        vec![RebalanceRound {
            moved: 2,
            deferred: 8
        }]
    );
    release_revoked(&mut state);
    state.reconcile(2);
    assert_eq!((state.granted_to("a"), state.granted_to("b")), (8, 8));
    assert_eq!(
        state.granted_to("c") + state.granted_to("d"),
        2,
        "last round's moves granted"
    );
    release_revoked(&mut state);

    let run = run_to_balance(&mut state, &workers, 20, 10);
    assert_eq!(run.moves, 10, "exactly the minimum, no partition twice");
    // 5 waves of 2, and one round to grant the last wave: rounds 1 and 2 above, 4 more here.
    assert_eq!(run.rounds, 4);
    assert!(run.per_round.iter().all(|(moved, _)| *moved <= 2));
    let loads = loads(&state, &workers);
    assert!(loads.values().all(|load| *load == 5), "{loads:?}");
}

#[test]
fn uncapped_the_balance_moves_everything_in_one_round() {
    let mut owners = vec!["a"; 12];
    owners.extend(["b"; 8]);
    let workers = [("a", 10), ("b", 10), ("c", 10), ("d", 10)];
    let mut state = placed(policy(), &owners, &workers);
    let run = run_to_balance(&mut state, &workers, 20, 10);
    assert_eq!((run.moves, run.rounds), (10, 2));
    assert_eq!(run.per_round[0].0, 10, "one wave");
}

#[test]
fn hand_overs_in_flight_spend_the_budget_until_released_or_overdue() {
    let owners = vec!["a"; 8];
    let workers = [("a", 2), ("b", 2)];
    let mut state = placed(capped(Some(3), None), &owners, &workers);
    state.reconcile(1);
    assert_eq!(rebalance_revokes(&state), 3);
    // Nothing released yet: the three hand-overs still fill the budget.
    state.reconcile(2);
    assert_eq!(
        rebalance_revokes(&state),
        3,
        "no new wave before the last lands"
    );
    assert_eq!(
        state.take_rebalance_rounds().len(),
        1,
        "a waiting round records nothing"
    );
    // An owner that never answers must not stop the balance: overdue revokes stop counting.
    state.reconcile(2 + state.policy.revoke_timeout_ms + 1);
    assert_eq!(rebalance_revokes(&state), 4, "the fourth and last move");
    assert_eq!(state.granted_to("a"), 4);
}

#[test]
fn reclaims_and_drains_are_never_capped() {
    // Cap 1, but c's departure frees 6 partitions and the drain of b revokes all 4 of b's at once.
    let mut owners = vec!["a"; 2];
    owners.extend(["b"; 4]);
    owners.extend(["c"; 6]);
    let workers = [("a", 4), ("b", 4), ("c", 4)];
    let mut state = placed(capped(Some(1), None), &owners, &workers);
    let gone = state.apply_view(&view(&[("a", 1, 4), ("b", 1, 4), ("d", 1, 4)]));
    assert_eq!(state.reclaim(&gone[0]), 6);
    state.drain(&id("b"), DrainSource::Operator).unwrap();
    state.reconcile(1);
    assert_eq!(
        state.counters().revocations_drain,
        4,
        "every drained partition"
    );
    assert_eq!(rebalance_revokes(&state), 0);
    assert_eq!(
        state.pending_count(),
        0,
        "every reclaimed partition granted at once"
    );
    assert_eq!(
        state.granted_to("a") + state.granted_to("d"),
        8,
        "a and d hold the 2 kept and the 6 reclaimed"
    );
}

#[test]
fn choose_moves_takes_from_the_most_loaded_per_slot_and_reports_the_rest() {
    let key = |n: u64| PartitionKey::new(job_name(), PartitionId(n));
    let source = |worker: &str, load: u64, slots: u64, sheds: &[u64]| Source {
        worker: id(worker),
        load,
        slots,
        sheds: sheds.iter().map(|n| key(*n)).collect(),
    };
    // x: 9 of 10 slots, y: 16 of 20 (less loaded per slot), z: 3 of 4 (0.75).
    let sources = vec![
        source("x", 9, 10, &[1, 2, 3]),
        source("y", 16, 20, &[4, 5, 6, 7]),
        source("z", 3, 4, &[8]),
    ];
    let (chosen, deferred) = choose_moves(sources, Some(4));
    let order: Vec<(u64, &str)> = chosen
        .iter()
        .map(|(key, worker)| (key.partition.get(), worker.as_str()))
        .collect();
    // x 0.9 → 8/10 ties y's 16/20 (y has more to shed) → y 15/20 → x 8/10 → y 15/20 ties z's
    // 3/4 (y has more to shed).
    assert_eq!(order, vec![(1, "x"), (4, "y"), (2, "x"), (5, "y")]);
    let deferred: Vec<(&str, u64)> = deferred.iter().map(|(w, n)| (w.as_str(), *n)).collect();
    assert_eq!(deferred, vec![("x", 1), ("y", 2), ("z", 1)]);
    let (all, none) = choose_moves(vec![source("x", 9, 10, &[1, 2])], None);
    assert_eq!((all.len(), none.len()), (2, 0), "uncapped: every move");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// From random skewed placements (some workers holding everything, others joining empty),
    /// a cap of `k` moves at most `k` per round, balances the fleet within
    /// `ceil(minimum moves / k) + 1` rounds and moves exactly the minimum.
    #[test]
    fn capped_rebalancing_converges_with_the_fewest_moves(
        capacities in proptest::collection::vec(1u32..4, 2..7),
        holders in 1usize..4,
        skew in proptest::collection::vec(1u32..8, 3),
        fill in 20u64..=100,
        cap in 1u64..8,
        fraction in proptest::option::of(0.05f64..0.6),
        seed in any::<u64>(),
    ) {
        let names = ["w1", "w2", "w3", "w4", "w5", "w6"];
        let workers: Vec<(&str, u32)> = names.iter().copied().zip(capacities).collect();
        let total_slots: u64 = workers.iter().map(|(_, c)| u64::from(*c) * 2).sum();
        let partitions = (total_slots * fill / 100).max(1);
        // The first `holders` workers hold everything, weighted by `skew`; the rest join empty.
        let holders = holders.min(workers.len() - 1);
        let weights: Vec<u32> = skew.iter().take(holders).copied().collect();
        let total_weight: u32 = weights.iter().sum();
        let mut random = seed | 1;
        let owners: Vec<&str> = (0..partitions)
            .map(|_| {
                random ^= random << 13;
                random ^= random >> 7;
                random ^= random << 17;
                let mut pick = (random % u64::from(total_weight)) as u32;
                let holder = weights
                    .iter()
                    .position(|w| {
                        let hit = pick < *w;
                        pick = pick.saturating_sub(*w);
                        hit
                    })
                    .unwrap();
                workers[holder].0
            })
            .collect();
        let needed = minimum_moves(&owners, &workers);
        let policy = capped(Some(cap), fraction);
        // The smallest cap any round can have: granted partitions are never fewer than the
        // total minus one wave.
        let largest = policy.rebalance.cap(partitions).unwrap();
        let smallest = policy.rebalance.cap(partitions.saturating_sub(largest)).unwrap();
        let bound = needed.div_ceil(smallest) + 1;
        let mut state = placed(policy, &owners, &workers);
        let run = run_to_balance(&mut state, &workers, partitions, bound);
        prop_assert_eq!(run.moves, needed, "moves beyond the minimum: {:?}", run.per_round);
        prop_assert!(run.rounds <= bound, "{} rounds > {}", run.rounds, bound);
        prop_assert!(run.per_round.iter().all(|(moved, cap)| moved <= cap));
    }
}
