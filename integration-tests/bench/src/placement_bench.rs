//! `elk-bench placement`: the assigner's pure algorithms against the predecessor's.
//!
//! Prints, one JSON object per line:
//! - `{"bench":"assign","workers":W,"partitions":P,"event":E,"elk_us":f,"naive_us":f|null,
//!   "moved":n,"min_moves":n,"max_over_quota":f}` for the events `cold`, `join1`, `leave1`,
//!   `join10pct`, `leave10pct`;
//! - `{"bench":"gaps","partitions":P,"mode":"full"|"incremental","elk_us":f,"naive_us":f|null}`.
//!
//! Every figure is the median of repeated runs in this process. The naive references reproduce
//! the predecessor: assignment places each partition by a linear scan over all workers for the
//! least loaded (and never rebalances); gap detection scans the whole sorted range list for each
//! new partition. A naive run estimated above 10 s is not run and prints `null`; the estimate
//! comes from a calibration run of the same code on a smaller input.

mod assign;
mod gaps;

use std::io::Write;

/// Workers × partitions: the predecessor's table (10 partitions per worker), then the targets'.
const PREDECESSOR_SIZES: [(usize, usize); 4] = [(10, 100), (50, 500), (100, 1_000), (500, 5_000)];
const LARGE_SIZES: [(usize, usize); 2] = [(1_000, 100_000), (10_000, 1_000_000)];

/// A naive run estimated above this is reported as `null`.
const NAIVE_LIMIT_SECONDS: f64 = 10.0;

#[derive(Debug, clap::Args)]
pub struct PlacementArgs {
    /// Only the predecessor's sizes (up to 500 workers × 5,000 partitions): a smoke test.
    #[arg(long)]
    quick: bool,
}

pub fn run(arguments: &PlacementArgs) -> anyhow::Result<()> {
    let mut sizes = PREDECESSOR_SIZES.to_vec();
    if !arguments.quick {
        sizes.extend(LARGE_SIZES);
    }
    let mut output = std::io::stdout().lock();

    let assign_calibration = assign::calibrate_naive();
    eprintln!(
        "naive assign: {:.2} ns per worker scanned",
        assign_calibration.nanos_per_scan
    );
    for &(worker_count, partition_count) in &sizes {
        for row in assign::bench_size(worker_count, partition_count, &assign_calibration)? {
            writeln!(output, "{}", serde_json::to_string(&row)?)?;
            output.flush()?;
        }
    }

    let gaps_calibration = gaps::calibrate_naive();
    eprintln!(
        "naive gaps: {:.2} ns per range scanned",
        gaps_calibration.nanos_per_scan
    );
    for &(_, partition_count) in &sizes {
        for row in gaps::bench_size(partition_count, &gaps_calibration)? {
            writeln!(output, "{}", serde_json::to_string(&row)?)?;
            output.flush()?;
        }
    }
    Ok(())
}

/// Cost model of a naive reference: its inner loop dominates.
#[derive(Debug, Clone, Copy)]
struct NaiveCalibration {
    nanos_per_scan: f64,
}

impl NaiveCalibration {
    /// Whether `scans` inner-loop steps stay under the `null` limit.
    fn affordable(&self, scans: f64) -> bool {
        scans * self.nanos_per_scan / 1e9 <= NAIVE_LIMIT_SECONDS
    }
}
