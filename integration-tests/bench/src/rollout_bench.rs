//! `elk-bench rollout` (issue 13, item 4): a rolling restart of a running fleet with zero loss.
//! N workers run a job (the processor sleeps 5 ms every 10 IDs); once the throughput is steady,
//! every worker is restarted one by one as `kubectl rollout restart` does with `maxSurge: 1,
//! maxUnavailable: 0`: a replacement starts and joins, then the old worker gets its SIGTERM
//! (`WorkerHandle::shutdown`: it stops its processors at their next checkpoint, publishes the
//! releases and leaves, so its partitions are granted elsewhere at once, not after the member
//! TTL). Prints
//!
//! `{"bench":"rollout","workers":N,"ids_repeated":n,"ids_missing":n,"throughput_dip_pct":f,...}`
//!
//! Throughput is sampled in windows of 250 ms. `steady_ids_per_s` is the mean over the 2 s before
//! the rollout, `steady_lowest_ids_per_s` the lowest window of those 2 s (the noise floor: what a
//! dip has to be compared with on a shared machine). `throughput_dip_pct`: how far the lowest
//! window from the first restart until 1 s after the last one (when the last released partitions
//! have been granted again) fell below the steady mean (0 when it never fell).
//! `partitions_released` counts the partitions (running and queued) the old workers handed back
//! with their checkpoints from the start of their replacement (the join's rebalance) through their
//! shutdown;
//! `partitions_reclaimed` counts partitions the assigner took back from a departed member when it
//! left the view (at once: a graceful shutdown deletes the member key; these are grants it had not
//! reported released). Targets: 0 repeated, 0 missing; the benchmark exits non-zero (after
//! printing its line) otherwise.

use elk_assigner::AssignerMetrics;
use elk_integration_tests::{Ledger, RecordingProcessor, Stack};
use elk_testkit::wait_until;
use elk_types::IdRange;
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct RolloutArgs {
    /// Workers in the fleet.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Capacity of every worker.
    #[arg(long, default_value_t = 2)]
    capacity: u32,
    /// IDs of the job (default 400,000; 100,000 with --quick), in partitions of 2,000.
    #[arg(long)]
    ids: Option<u64>,
    /// Smoke run: a shorter job.
    #[arg(long)]
    quick: bool,
}

#[derive(Debug, Serialize)]
struct Line {
    bench: &'static str,
    workers: usize,
    ids: u64,
    ids_repeated: usize,
    ids_missing: usize,
    throughput_dip_pct: f64,
    steady_ids_per_s: f64,
    steady_lowest_ids_per_s: f64,
    lowest_ids_per_s: f64,
    restarts: usize,
    shutdown_ms_max: u64,
    rollout_s: f64,
    partitions_reclaimed: u64,
    partitions_released: u64,
}

/// The throughput sampling window: short enough to see a hand-over of a fraction of a second.
const WINDOW: Duration = Duration::from_millis(250);
/// How long the throughput is watched before the rollout (steady) and after its last restart
/// (the last released partitions granted again and running).
const STEADY: Duration = Duration::from_secs(2);
const SETTLE: Duration = Duration::from_secs(1);

/// IDs processed per second over the next `window`.
async fn rate(ledger: &Ledger, window: Duration) -> f64 {
    let before = ledger.processed();
    let started = Instant::now();
    tokio::time::sleep(window).await;
    (ledger.processed() - before) as f64 / started.elapsed().as_secs_f64()
}

/// The mean and the lowest throughput of `WINDOW`-long windows over about `span`.
async fn rates(ledger: &Ledger, span: Duration) -> (f64, f64) {
    let (before, started) = (ledger.processed(), Instant::now());
    let mut lowest = f64::MAX;
    while started.elapsed() < span {
        lowest = lowest.min(rate(ledger, WINDOW).await);
    }
    let mean = (ledger.processed() - before) as f64 / started.elapsed().as_secs_f64();
    (mean, lowest)
}

pub fn run(arguments: &RolloutArgs) -> anyhow::Result<()> {
    crate::lifecycle_bench::init_logging();
    let ids = arguments
        .ids
        .unwrap_or(if arguments.quick { 100_000 } else { 400_000 })
        .max(10_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("elk-bench")
        .enable_all()
        .build()?;
    let line = runtime.block_on(rollout(arguments.workers.max(1), arguments.capacity, ids))?;
    runtime.shutdown_timeout(Duration::from_secs(1));
    crate::lifecycle_bench::print_line(&line)?;
    anyhow::ensure!(
        line.ids_repeated == 0 && line.ids_missing == 0,
        "rollout: {} IDs repeated and {} missing (target 0 and 0)",
        line.ids_repeated,
        line.ids_missing
    );
    Ok(())
}

async fn rollout(workers: usize, capacity: u32, ids: u64) -> anyhow::Result<Line> {
    let stack = Stack::new().await?;
    let election = stack.election("election-1");
    let metrics = Arc::new(AssignerMetrics::default());
    let assigner = stack.assigner_with_metrics("assigner-1", metrics.clone());
    let range = IdRange::new(1, ids)?;
    let ledger = Ledger::new(range);
    let processor = RecordingProcessor::paced(ledger.clone(), 10, Duration::from_millis(5));
    let mut fleet = Vec::new();
    for index in 0..workers {
        let id = format!("worker-{index}-a");
        fleet.push(stack.worker(&id, capacity, processor.clone()).await?);
    }
    stack.create_job("rollout", range, 2_000).await?;
    wait_until("the job is running", Duration::from_secs(60), || async {
        ledger.processed() > ids / 20
    })
    .await?;
    let (steady, steady_lowest) = rates(&ledger, STEADY).await;
    eprintln!(
        "steady: {steady:.0} IDs/s with {workers} workers (lowest {} ms window {steady_lowest:.0})",
        WINDOW.as_millis()
    );

    // The rollout, sampled by a task of its own until `SETTLE` after the last restart.
    let sampling = tokio_util::sync::CancellationToken::new();
    let sampler = {
        let (ledger, stop) = (ledger.clone(), sampling.clone());
        tokio::spawn(async move {
            let mut lowest = f64::MAX;
            while !stop.is_cancelled() {
                lowest = lowest.min(rate(&ledger, WINDOW).await);
            }
            lowest
        })
    };
    let started = Instant::now();
    let mut shutdown_max = Duration::ZERO;
    let mut released = 0;
    for (index, slot) in fleet.iter_mut().enumerate() {
        // Its releases from now on are the rollout's: the replacement's join (a rebalance) and
        // the shutdown.
        let released_before = slot.stats().partitions_released;
        let replacement = stack
            .worker(&format!("worker-{index}-b"), capacity, processor.clone())
            .await?;
        let old = std::mem::replace(slot, replacement);
        let stopping = Instant::now();
        let stats = old.shutdown().await?;
        shutdown_max = shutdown_max.max(stopping.elapsed());
        let released_now = stats.partitions_released - released_before;
        released += released_now;
        eprintln!(
            "restarted worker {index}: shutdown in {} ms, {released_now} partitions released",
            stopping.elapsed().as_millis(),
        );
    }
    let rollout_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(SETTLE).await;
    sampling.cancel();
    let lowest = sampler.await?;
    stack
        .wait_job_completed("rollout", Duration::from_secs(600))
        .await?;
    for worker in fleet {
        worker.shutdown().await?;
    }
    assigner.stop().await;
    election.stop().await;
    let round = crate::lifecycle_bench::round;
    Ok(Line {
        bench: "rollout",
        workers,
        ids,
        ids_repeated: ledger.duplicates().len(),
        ids_missing: ledger.missing().len(),
        throughput_dip_pct: round((100.0 * (1.0 - lowest / steady.max(1e-9))).max(0.0), 1),
        steady_ids_per_s: round(steady, 0),
        steady_lowest_ids_per_s: round(steady_lowest, 0),
        lowest_ids_per_s: round(lowest, 0),
        restarts: workers,
        shutdown_ms_max: shutdown_max.as_millis() as u64,
        rollout_s: round(rollout_s, 3),
        partitions_reclaimed: metrics.partitions_reclaimed.get(),
        partitions_released: released,
    })
}
