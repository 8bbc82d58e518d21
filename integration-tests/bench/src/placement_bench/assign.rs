//! Assignment: `elk_placement::solve` against a least-loaded linear scan per partition.

use super::NaiveCalibration;
use crate::measure::{RepeatPolicy, median_micros, round_micros, time};
use elk_placement::{Partition, Worker, min_moves, quota, solve};
use serde::Serialize;
use std::collections::HashMap;

#[derive(Debug, Serialize)]
pub struct AssignRow {
    bench: &'static str,
    workers: usize,
    partitions: usize,
    event: &'static str,
    elk_us: f64,
    naive_us: Option<f64>,
    moved: u64,
    min_moves: u64,
    max_over_quota: f64,
}

/// Capacities 1, 2, 3, 4 in turn: weighting is part of what is measured.
fn capacity_of(index: usize) -> u32 {
    1 + (index % 4) as u32
}

fn worker_ids(count: usize, prefix: &str) -> Vec<String> {
    (0..count)
        .map(|index| format!("{prefix}-{index:05}"))
        .collect()
}

fn fleet(ids: &[String]) -> Vec<Worker<&str>> {
    ids.iter()
        .enumerate()
        .map(|(index, id)| Worker::new(id.as_str(), capacity_of(index)))
        .collect()
}

/// The fleet after `event`, starting from `base` (`joiners` holds the ids of newcomers).
fn fleet_after<'a>(
    event: &str,
    base: &[Worker<&'a str>],
    joiners: &'a [String],
) -> Vec<Worker<&'a str>> {
    let tenth = (base.len() / 10).max(1);
    match event {
        "cold" => base.to_vec(),
        "join1" => {
            let mut workers = base.to_vec();
            workers.push(Worker::new(joiners[0].as_str(), 2));
            workers
        }
        "leave1" => {
            let mut workers = base.to_vec();
            workers.remove(base.len() / 2);
            workers
        }
        "join10pct" => {
            let mut workers = base.to_vec();
            workers.extend(
                joiners[..tenth]
                    .iter()
                    .enumerate()
                    .map(|(index, id)| Worker::new(id.as_str(), capacity_of(index))),
            );
            workers
        }
        "leave10pct" => base
            .iter()
            .enumerate()
            .filter(|(index, _)| index % 10 != 3)
            .map(|(_, w)| *w)
            .collect(),
        other => unreachable!("unknown event {other}"),
    }
}

pub fn bench_size(
    worker_count: usize,
    partition_count: usize,
    calibration: &NaiveCalibration,
) -> anyhow::Result<Vec<AssignRow>> {
    let ids = worker_ids(worker_count, "worker");
    let joiner_ids = worker_ids((worker_count / 10).max(1), "joiner");
    let base = fleet(&ids);
    let unassigned: Vec<Partition<&str>> = (0..partition_count as u64)
        .map(Partition::unassigned)
        .collect();
    let balanced = solve(&base, &unassigned)?.to_partitions(&base, &unassigned);

    let mut rows = Vec::new();
    for event in ["cold", "join1", "leave1", "join10pct", "leave10pct"] {
        let workers = fleet_after(event, &base, &joiner_ids);
        let partitions = if event == "cold" {
            &unassigned
        } else {
            &balanced
        };
        eprintln!("assign {worker_count} x {partition_count} {event}");

        let elk_us = median_micros(RepeatPolicy::DEFAULT, || {
            time(|| solve(&workers, partitions)).0
        });
        let assignment = solve(&workers, partitions)?;

        let scans = naive_scans(&workers, partitions) as f64 * workers.len() as f64;
        let naive_us = calibration.affordable(scans).then(|| {
            median_micros(RepeatPolicy::DEFAULT, || {
                time(|| naive_assign(&workers, partitions)).0
            })
        });

        let total_capacity: u64 = workers
            .iter()
            .map(|worker| u64::from(worker.capacity))
            .sum();
        let max_over_quota = workers
            .iter()
            .zip(assignment.loads())
            .map(|(worker, &load)| {
                let ceil = quota(partition_count as u64, worker.capacity, total_capacity).ceil;
                if ceil == 0 {
                    0.0
                } else {
                    load as f64 / ceil as f64
                }
            })
            .fold(0.0, f64::max);

        rows.push(AssignRow {
            bench: "assign",
            workers: workers.len(),
            partitions: partition_count,
            event,
            elk_us,
            naive_us,
            moved: assignment.moved(),
            min_moves: min_moves(&workers, partitions)?,
            max_over_quota: round_micros(max_over_quota),
        });
    }
    Ok(rows)
}

/// Partitions the naive reference places by a scan: those without a present owner.
fn naive_scans(workers: &[Worker<&str>], partitions: &[Partition<&str>]) -> usize {
    let present: std::collections::HashSet<&str> = workers.iter().map(|worker| worker.id).collect();
    partitions
        .iter()
        .filter(|partition| {
            partition
                .previous_owner
                .is_none_or(|owner| !present.contains(owner))
        })
        .count()
}

/// The predecessor's approach: partitions keep a present owner (it never rebalanced); every
/// other partition goes to the least loaded worker (relative to capacity), found by a linear
/// scan over all workers.
pub fn naive_assign(
    workers: &[Worker<&str>],
    partitions: &[Partition<&str>],
) -> Vec<Option<usize>> {
    let position_of: HashMap<&str, usize> = workers
        .iter()
        .enumerate()
        .map(|(position, worker)| (worker.id, position))
        .collect();
    let mut loads = vec![0u64; workers.len()];
    let mut owners = vec![None; partitions.len()];
    let mut orphans = Vec::new();
    for (partition, input) in partitions.iter().enumerate() {
        match input
            .previous_owner
            .and_then(|owner| position_of.get(owner))
        {
            Some(&position) => {
                owners[partition] = Some(position);
                loads[position] += 1;
            }
            None => orphans.push(partition),
        }
    }
    for partition in orphans {
        let mut least_loaded: Option<usize> = None;
        for (position, worker) in workers.iter().enumerate() {
            if worker.capacity == 0 {
                continue;
            }
            // load / capacity < best load / best capacity, without division.
            let better = least_loaded.is_none_or(|best| {
                u64::from(workers[best].capacity) * loads[position]
                    < u64::from(worker.capacity) * loads[best]
            });
            if better {
                least_loaded = Some(position);
            }
        }
        if let Some(position) = least_loaded {
            loads[position] += 1;
        }
        owners[partition] = least_loaded;
    }
    owners
}

/// Nanoseconds per worker scanned by the naive reference, on 500 workers × 20,000 partitions.
pub fn calibrate_naive() -> NaiveCalibration {
    let ids = worker_ids(500, "worker");
    let workers = fleet(&ids);
    let partitions: Vec<Partition<&str>> = (0..20_000).map(Partition::unassigned).collect();
    let micros = median_micros(RepeatPolicy::DEFAULT, || {
        time(|| naive_assign(&workers, &partitions)).0
    });
    let scans = (workers.len() * partitions.len()) as f64;
    NaiveCalibration {
        nanos_per_scan: micros * 1_000.0 / scans,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn naive_reference_places_everything_by_capacity() {
        let ids = worker_ids(8, "worker");
        let workers = fleet(&ids);
        let partitions: Vec<Partition<&str>> = (0..200).map(Partition::unassigned).collect();
        let owners = naive_assign(&workers, &partitions);
        assert!(owners.iter().all(Option::is_some));
        let mut loads = vec![0u64; workers.len()];
        for owner in owners.into_iter().flatten() {
            loads[owner] += 1;
        }
        // Capacities 1, 2, 3, 4, 1, 2, 3, 4 (total 20): 10 partitions per unit of capacity.
        for (worker, load) in workers.iter().zip(loads) {
            assert!(
                load.abs_diff(u64::from(worker.capacity) * 10) <= 1,
                "{worker:?}: {load}"
            );
        }
    }

    #[test]
    fn events_change_the_fleet_as_named() {
        let ids = worker_ids(20, "worker");
        let joiners = worker_ids(2, "joiner");
        let base = fleet(&ids);
        assert_eq!(fleet_after("cold", &base, &joiners).len(), 20);
        assert_eq!(fleet_after("join1", &base, &joiners).len(), 21);
        assert_eq!(fleet_after("leave1", &base, &joiners).len(), 19);
        assert_eq!(fleet_after("join10pct", &base, &joiners).len(), 22);
        assert_eq!(fleet_after("leave10pct", &base, &joiners).len(), 18);
    }
}
