//! Gap detection: `elk_coverage::Coverage` against a linear scan of the sorted range list.
//!
//! The job: `P` partitions of 1,000 ids, alternately live and completed so that completed
//! intervals cannot merge (the worst case for the structure: it holds `P` entries), and every
//! 1,000th partition missing (gaps for the audit to find).
//! - `full`: elk audits the whole job (`Coverage::audit`, `O(n)`); naive re-runs the
//!   predecessor's round, checking each partition against the sorted list of the ones before it
//!   (`O(n²)`).
//! - `incremental`: cost per new partition appended to a job of `P` partitions: elk
//!   `check_new` + `insert_live` (`O(log n)`); naive scans the whole sorted list, then appends.

use super::NaiveCalibration;
use crate::measure::{RepeatPolicy, median_micros, time};
use elk_coverage::{Coverage, IdRange};
use serde::Serialize;
use std::time::Duration;

#[derive(Debug, Serialize)]
pub struct GapsRow {
    bench: &'static str,
    partitions: usize,
    mode: &'static str,
    elk_us: f64,
    naive_us: Option<f64>,
}

const PARTITION_SIZE: u64 = 1_000;
/// New partitions per incremental measurement (fewer for the smallest jobs).
const INCREMENTAL_BATCH: usize = 1_000;

fn partition_range(index: u64) -> IdRange {
    IdRange::new(
        index * PARTITION_SIZE,
        index * PARTITION_SIZE + PARTITION_SIZE - 1,
    )
    .expect("ordered bounds")
}

/// The job's partitions in id order, with every 1,000th one missing.
fn job_partitions(partition_count: usize) -> Vec<IdRange> {
    (0..partition_count as u64)
        .map(|index| index + index / 999)
        .map(partition_range)
        .collect()
}

fn build_coverage(partitions: &[IdRange]) -> anyhow::Result<Coverage> {
    let mut coverage = Coverage::new(0);
    for partition in partitions {
        coverage.insert_live(*partition)?;
    }
    for partition in partitions.iter().skip(1).step_by(2) {
        coverage.complete(*partition)?;
    }
    Ok(coverage)
}

/// What the predecessor did for each new partition: scan every known range for an overlap and
/// for the highest covered id, then append. Returns whether it overlapped and the gap before it.
fn naive_check_and_append(ranges: &mut Vec<IdRange>, new: IdRange) -> (bool, Option<(u64, u64)>) {
    let mut overlaps = false;
    let mut frontier: Option<u64> = None;
    for range in ranges.iter() {
        overlaps |= range.overlaps(new);
        frontier = frontier.max(Some(range.last()));
    }
    let next = frontier.map_or(0, |frontier| frontier + 1);
    let gap = (new.first() > next).then(|| (next, new.first() - 1));
    if !overlaps {
        ranges.push(new);
    }
    (overlaps, gap)
}

fn naive_full(partitions: &[IdRange]) -> usize {
    let mut ranges = Vec::with_capacity(partitions.len());
    let mut gaps = 0;
    for partition in partitions {
        let (_, gap) = naive_check_and_append(&mut ranges, *partition);
        gaps += usize::from(gap.is_some());
    }
    gaps
}

pub fn bench_size(
    partition_count: usize,
    calibration: &NaiveCalibration,
) -> anyhow::Result<Vec<GapsRow>> {
    let partitions = job_partitions(partition_count);
    let coverage = build_coverage(&partitions)?;
    let up_to = partitions.last().map_or(0, |last| last.last());
    let mut rows = Vec::new();

    eprintln!("gaps {partition_count} full");
    let elk_full = median_micros(RepeatPolicy::DEFAULT, || time(|| coverage.audit(up_to)).0);
    let full_scans = (partition_count as f64).powi(2) / 2.0;
    let naive_full_us = calibration
        .affordable(full_scans)
        .then(|| median_micros(RepeatPolicy::DEFAULT, || time(|| naive_full(&partitions)).0));
    rows.push(GapsRow {
        bench: "gaps",
        partitions: partition_count,
        mode: "full",
        elk_us: elk_full,
        naive_us: naive_full_us,
    });

    eprintln!("gaps {partition_count} incremental");
    let batch = partition_count.clamp(1, INCREMENTAL_BATCH);
    let next_index = partitions.len() as u64 + partitions.len() as u64 / 999 + 1;
    // Appended partitions, one gap among them so that the gap path is exercised too.
    let new_partitions: Vec<IdRange> = (0..batch as u64)
        .map(|offset| partition_range(next_index + offset + u64::from(offset >= batch as u64 / 2)))
        .collect();

    let mut growing = coverage;
    let elk_total = median_micros(RepeatPolicy::DEFAULT, || {
        let (duration, ()) = time(|| {
            for partition in &new_partitions {
                let gap = growing
                    .insert_live(*partition)
                    .expect("appended partitions never overlap");
                std::hint::black_box(gap);
            }
        });
        for partition in &new_partitions {
            growing.remove_live(*partition).expect("just inserted");
        }
        duration
    });

    let mut naive_ranges = partitions.clone();
    let incremental_scans = batch as f64 * partition_count as f64;
    let naive_total = calibration.affordable(incremental_scans).then(|| {
        median_micros(RepeatPolicy::DEFAULT, || {
            let (duration, ()) = time(|| {
                for partition in &new_partitions {
                    std::hint::black_box(naive_check_and_append(&mut naive_ranges, *partition));
                }
            });
            naive_ranges.truncate(partitions.len());
            duration
        })
    });
    rows.push(GapsRow {
        bench: "gaps",
        partitions: partition_count,
        mode: "incremental",
        elk_us: per_partition(elk_total, batch),
        naive_us: naive_total.map(|total| per_partition(total, batch)),
    });
    Ok(rows)
}

fn per_partition(total_micros: f64, batch: usize) -> f64 {
    crate::measure::round_micros(total_micros / batch as f64)
}

/// Nanoseconds per range scanned by the naive check, on a 20,000-range list.
pub fn calibrate_naive() -> NaiveCalibration {
    let partitions = job_partitions(20_000);
    let micros = median_micros(RepeatPolicy::DEFAULT, || {
        let (duration, _) = time(|| naive_full(&partitions));
        duration.max(Duration::from_nanos(1))
    });
    let scans = (partitions.len() as f64).powi(2) / 2.0;
    NaiveCalibration {
        nanos_per_scan: micros * 1_000.0 / scans,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn naive_and_elk_find_the_same_gaps() {
        let partitions = job_partitions(5_000);
        let coverage = build_coverage(&partitions).unwrap();
        let audit = coverage.audit(partitions.last().unwrap().last());
        assert_eq!(audit.gaps.len(), 5);
        assert!(audit.overlaps.is_empty());
        assert_eq!(naive_full(&partitions), audit.gaps.len());
    }
}
