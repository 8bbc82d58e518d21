//! `elk-bench tails` (issue 14 item 5): the makespan of a job with **skewed per-ID cost** on a
//! fixed fleet, with straggler splitting and adaptive partition size **on** and **off**, side by
//! side in one run (each on its own nats-server, election and assigner, in this process).
//!
//! The job covers `1..=ids` in partitions of `partition_ids`. Every ID costs `base_us` of wall
//! time, except `dense_ranges` ranges of `dense_ids` IDs, evenly spaced over the job and not
//! aligned to partitions, whose IDs cost `dense_factor ×` as much (the stated distribution is
//! printed in the line). The processor sleeps until an absolute instant (its start + the cost of
//! the IDs done), in steps of at most `STEP_US` of cost, checkpointing after each step and
//! stopping at once when revoked; it records every ID it finished in a ledger (repeats and
//! misses are reported). The work is known exactly, so the ideal makespan is
//! `total cost ÷ (workers × capacity)`; the makespan runs from sending `create_job` to seeing the
//! job `completed` (polled every 10 ms). `makespan_ratio = makespan ÷ ideal`.
//!
//! One line: `{"bench":"tails","makespan_ratio_on":f,"makespan_ratio_off":f,...}`.

use crate::lifecycle_bench::{print_line, round};
use anyhow::Context;
use elk_assigner::{AssignerMetrics, TailSettings};
use elk_integration_tests::{Ledger, Stack};
use elk_protocol::messages::JobState;
use elk_types::IdRange;
use elk_worker::{PartitionWork, ProcessError, ProcessOutcome, Processor};
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};

const JOB: &str = "tails";
/// Largest cost (µs) of one processing step (one sleep, one checkpoint).
const STEP_US: u64 = 50_000;

#[derive(Debug, clap::Args)]
pub struct TailsArgs {
    /// Workers of the fixed fleet [default: 8; 4 with --quick].
    #[arg(long)]
    workers: Option<u32>,
    /// Partitions run at once per worker.
    #[arg(long, default_value_t = 1)]
    capacity: u32,
    /// IDs of the job [default: 800,000; 200,000 with --quick].
    #[arg(long)]
    ids: Option<u64>,
    /// The job's partition_size (the size before any measurement) [default: 20,000; 10,000
    /// with --quick].
    #[arg(long)]
    partition_ids: Option<u64>,
    /// Cost of an ordinary ID, in microseconds.
    #[arg(long, default_value_t = 50)]
    base_us: u64,
    /// Cost of a dense ID, in multiples of `base_us`.
    #[arg(long, default_value_t = 50)]
    dense_factor: u64,
    /// Dense ranges, evenly spaced.
    #[arg(long, default_value_t = 2)]
    dense_ranges: u64,
    /// IDs per dense range [default: 30,000; 10,000 with --quick].
    #[arg(long)]
    dense_ids: Option<u64>,
    /// Smoke run: 4 workers, 200,000 IDs (ideal ≈ 7 s per side).
    #[arg(long)]
    quick: bool,
}

/// The per-ID cost of the job: `base_us`, or `base_us × dense_factor` inside a dense range.
#[derive(Debug, Clone, Serialize)]
struct CostModel {
    base_us: u64,
    dense_factor: u64,
    dense: Vec<IdRange>,
}

impl CostModel {
    fn new(ids: u64, base_us: u64, dense_factor: u64, ranges: u64, dense_ids: u64) -> Self {
        // Centred at ids × k ÷ (ranges + 1), shifted by a third of a range so that they straddle
        // partition boundaries as real hot ranges do.
        let dense = (1..=ranges)
            .filter_map(|k| {
                let centre = ids * k / (ranges + 1) + dense_ids / 3;
                let first = centre.saturating_sub(dense_ids / 2).max(1);
                IdRange::new(first, (first + dense_ids - 1).min(ids)).ok()
            })
            .collect();
        Self {
            base_us,
            dense_factor,
            dense,
        }
    }

    fn cost_us(&self, id: u64) -> u64 {
        if self.dense.iter().any(|range| range.contains(id)) {
            self.base_us * self.dense_factor
        } else {
            self.base_us
        }
    }

    /// The cost of `range` (µs).
    fn total_us(&self, range: IdRange) -> u64 {
        let dense: u64 = self
            .dense
            .iter()
            .filter_map(|dense| {
                let first = dense.first().max(range.first());
                let last = dense.last().min(range.last());
                (first <= last).then(|| last - first + 1)
            })
            .sum();
        range.len() * self.base_us + dense * self.base_us * (self.dense_factor - 1)
    }
}

/// Sleeps the cost of each ID, in steps of at most [`STEP_US`], checkpointing after each step;
/// a revoke interrupts the step in progress (its IDs are not recorded, the next owner does them).
#[derive(Clone)]
struct SkewedWork {
    cost: Arc<CostModel>,
    ledger: Arc<Ledger>,
}

impl Processor for SkewedWork {
    async fn process(&self, work: PartitionWork) -> Result<ProcessOutcome, ProcessError> {
        let started = tokio::time::Instant::now();
        let mut spent_us = 0u64;
        let mut next = work.resume_from();
        let last = work.range().last();
        while next <= last {
            let mut end = next;
            let mut step_us = self.cost.cost_us(next);
            while end < last && step_us + self.cost.cost_us(end + 1) <= STEP_US {
                end += 1;
                step_us += self.cost.cost_us(end);
            }
            spent_us += step_us;
            let due = started + Duration::from_micros(spent_us);
            tokio::select! {
                () = work.cancelled() => return Ok(ProcessOutcome::Interrupted),
                () = tokio::time::sleep_until(due) => {}
            }
            for id in next..=end {
                self.ledger.record(id);
            }
            work.checkpoint(end);
            next = end + 1;
        }
        Ok(ProcessOutcome::Completed)
    }
}

/// One side of the comparison.
#[derive(Debug, Serialize)]
struct Side {
    makespan_s: f64,
    makespan_ratio: f64,
    /// Partitions the job ended with (more than cut up front when stragglers were split).
    partitions: u64,
    split_revocations: u64,
    revocations: u64,
    ids_repeated: usize,
    ids_missing: usize,
}

#[derive(Debug, Serialize)]
struct Line {
    bench: &'static str,
    makespan_ratio_on: f64,
    makespan_ratio_off: f64,
    /// `makespan_off ÷ makespan_on`.
    speedup: f64,
    ideal_s: f64,
    workers: u32,
    capacity: u32,
    ids: u64,
    partition_ids: u64,
    distribution: String,
    cost: CostModel,
    tails_on: String,
    on: Side,
    off: Side,
    quick: bool,
}

/// The `[assigner.tails]` of the "on" side: split as soon as a rate is measured (0.5 s, the
/// workers checkpoint every 200 ms) and more than 1 s remains; adaptive size aiming at 2 s.
fn tails_on() -> TailSettings {
    TailSettings {
        split: true,
        split_min_remaining: Duration::from_secs(1),
        observe_min: Duration::from_millis(500),
        split_min_ids: 100,
        split_max_pieces: 16,
        splits_per_round: 8,
        target_partition_time: Some(Duration::from_secs(2)),
        min_partition_ids: 1_000,
        max_partition_ids: 100_000,
    }
}

pub fn run(arguments: &TailsArgs) -> anyhow::Result<()> {
    crate::init_logging();
    let quick = arguments.quick;
    let workers = arguments
        .workers
        .unwrap_or(if quick { 4 } else { 8 })
        .max(1);
    let capacity = arguments.capacity.max(1);
    let ids = arguments
        .ids
        .unwrap_or(if quick { 200_000 } else { 800_000 })
        .max(1_000);
    let partition_ids = arguments
        .partition_ids
        .unwrap_or(if quick { 10_000 } else { 20_000 })
        .max(1);
    let dense_ids = arguments
        .dense_ids
        .unwrap_or(if quick { 10_000 } else { 30_000 })
        .max(1);
    let cost = Arc::new(CostModel::new(
        ids,
        arguments.base_us.max(1),
        arguments.dense_factor.max(1),
        arguments.dense_ranges,
        dense_ids,
    ));
    let range = IdRange::new(1, ids)?;
    let slots = u64::from(workers) * u64::from(capacity);
    let ideal = Duration::from_micros(cost.total_us(range) / slots);
    let distribution = format!(
        "{} IDs at {} µs each, except {} ranges of {} IDs at {}× ({} µs): {:.0} % of the IDs, {:.0} % of the work",
        ids,
        cost.base_us,
        cost.dense.len(),
        dense_ids,
        cost.dense_factor,
        cost.base_us * cost.dense_factor,
        cost.dense.iter().map(|r| r.len()).sum::<u64>() as f64 * 100.0 / ids as f64,
        cost.dense.iter().map(|r| cost.total_us(*r)).sum::<u64>() as f64 * 100.0
            / cost.total_us(range) as f64,
    );
    eprintln!(
        "tails: {workers} workers × {capacity}, partitions of {partition_ids}; {distribution}; ideal {:.1} s",
        ideal.as_secs_f64()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let setup = Setup {
        workers,
        capacity,
        range,
        partition_ids,
        cost,
        ideal,
    };
    eprintln!("== tails: splitting and adaptive size on ==");
    let on = runtime.block_on(measure(&setup, Some(tails_on())))?;
    eprintln!("== tails: off ==");
    let off = runtime.block_on(measure(&setup, None))?;
    runtime.shutdown_timeout(Duration::from_secs(1));
    print_line(&Line {
        bench: "tails",
        makespan_ratio_on: on.makespan_ratio,
        makespan_ratio_off: off.makespan_ratio,
        speedup: round(off.makespan_s / on.makespan_s.max(1e-9), 3),
        ideal_s: round(ideal.as_secs_f64(), 3),
        workers,
        capacity,
        ids,
        partition_ids,
        distribution,
        cost: (*setup.cost).clone(),
        tails_on: format!("{:?}", tails_on()),
        on,
        off,
        quick,
    })
}

struct Setup {
    workers: u32,
    capacity: u32,
    range: IdRange,
    partition_ids: u64,
    cost: Arc<CostModel>,
    ideal: Duration,
}

async fn measure(setup: &Setup, tails: Option<TailSettings>) -> anyhow::Result<Side> {
    let stack = Stack::new()
        .await
        .context("start nats-server and provision")?
        .with_member_ttl(Duration::from_secs(3));
    let election = stack.election("election-1");
    let metrics = Arc::new(AssignerMetrics::default());
    let assigner =
        stack.assigner_configured(&stack.url(), "assigner-1", metrics.clone(), |settings| {
            if let Some(tails) = tails {
                settings.tails = tails;
            }
        });
    let ledger = Ledger::new(setup.range);
    let processor = SkewedWork {
        cost: setup.cost.clone(),
        ledger: ledger.clone(),
    };
    let mut handles = Vec::new();
    for index in 1..=setup.workers {
        let worker = stack
            .worker_with(
                &format!("w-{index}"),
                setup.capacity,
                &[],
                processor.clone(),
            )
            .await?;
        handles.push(worker);
    }
    // Every worker is in the view before the clock starts (a fleet that is already running).
    let workers = setup.workers as usize;
    crate::kv_reads::wait_for_view_workers(&stack.resources, workers).await?;
    let started = Instant::now();
    stack
        .create_job(JOB, setup.range, setup.partition_ids)
        .await?;
    elk_testkit::wait_until(
        "the job completed",
        setup.ideal * 10 + Duration::from_secs(60),
        || async {
            stack
                .job(JOB)
                .await
                .is_ok_and(|job| job.is_some_and(|job| job.state == JobState::Completed))
        },
    )
    .await?;
    let makespan = started.elapsed();
    let job = stack.job(JOB).await?.context("job record")?;
    for worker in handles {
        worker.shutdown().await?;
    }
    assigner.stop().await;
    election.stop().await;
    let makespan_s = makespan.as_secs_f64();
    eprintln!(
        "tails: makespan {makespan_s:.2} s, {} partitions, {} split revocations",
        job.partitions_total,
        metrics.revocations_by("split")
    );
    Ok(Side {
        makespan_s: round(makespan_s, 3),
        makespan_ratio: round(makespan_s / setup.ideal.as_secs_f64().max(1e-9), 3),
        partitions: job.partitions_total,
        split_revocations: metrics.revocations_by("split"),
        revocations: metrics.revocations(),
        ids_repeated: ledger.duplicates().len(),
        ids_missing: ledger.missing().len(),
    })
}
