//! `elk-bench autoscale` (issue 13, item 6): a bursty backlog trace run twice at the same time in
//! one process, each on its own nats-server and services — by an in-process fleet that follows the
//! scaler (`elk_integration_tests::fleet`, as the worker Deployment would under
//! `[scaler.kubernetes]`), and by a fixed fleet at the scaler's maximum — and compared:
//!
//! `{"bench":"autoscale","completion_ratio":f,"worker_seconds_ratio":f,"replica_changes":n,...}`
//!
//! `completion_ratio` is the mean time from a burst's job creation to its completion, autoscaled
//! ÷ fixed; `worker_seconds_ratio` the workers × seconds each fleet ran from the first burst to
//! the last completion, autoscaled ÷ fixed; `replica_changes` how often the autoscaled fleet's
//! replica count changed, `flaps` (in each fleet's outcome) how often it reversed direction within
//! one scale-down window of the previous change without a burst arriving in between
//! (`elk_integration_tests::fleet::flaps`). Goal:
//! completion within 1.2× for ≤ 60 % of the worker-seconds, no flapping. The benchmark exits
//! non-zero (after printing its line) when an ID was repeated or missed, a worker was stopped
//! before it was drained, or the autoscaled fleet flapped; the ratios are reported, not enforced
//! (they depend on the machine's load). Each burst is one job over its own ID range; the
//! processor sleeps 5 ms every 10 IDs (I/O-bound work: more workers finish sooner even on a small
//! machine).

use elk_integration_tests::fleet::{Fleet, FleetStats};
use elk_integration_tests::{Ledger, RecordingProcessor, Stack};
use elk_protocol::messages::JobState;
use elk_scaler::ScalerSettings;
use elk_types::IdRange;
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct AutoscaleArgs {
    /// The scaler's max_workers, and the fixed fleet's size.
    #[arg(long, default_value_t = 6)]
    max_workers: u32,
    /// Capacity of every worker.
    #[arg(long, default_value_t = 2)]
    capacity: u32,
    /// Bursts in the trace (default 3; 2 with --quick).
    #[arg(long)]
    bursts: Option<u64>,
    /// IDs per burst (default 120,000; 30,000 with --quick), in partitions of 1,000.
    #[arg(long)]
    ids_per_burst: Option<u64>,
    /// Seconds between bursts (default 20; 8 with --quick).
    #[arg(long)]
    gap_secs: Option<u64>,
    /// Smoke run: a shorter trace.
    #[arg(long)]
    quick: bool,
}

/// One fleet's run of the trace.
#[derive(Debug, Clone, Serialize)]
struct Outcome {
    completion_s_mean: f64,
    makespan_s: f64,
    worker_seconds: f64,
    peak_workers: usize,
    replica_changes: u64,
    flaps: u64,
    retired_stops: u64,
    retired_released: u64,
    unplanned_stops: u64,
    ids_repeated: usize,
    ids_missing: usize,
}

#[derive(Debug, Serialize)]
struct Line {
    bench: &'static str,
    max_workers: u32,
    bursts: u64,
    ids_per_burst: u64,
    gap_secs: u64,
    completion_ratio: f64,
    worker_seconds_ratio: f64,
    replica_changes: u64,
    autoscaled: Outcome,
    fixed: Outcome,
}

struct Trace {
    bursts: u64,
    ids: u64,
    gap: Duration,
}

/// The scale-down window of the trace's scaler, also the horizon of a flap.
const SCALE_DOWN_WINDOW: Duration = Duration::from_secs(3);

/// The scaler's settings for a trace of seconds: decide every 200 ms, drain within 5 s, scale
/// down to the highest recommendation of the last 3 s (none within 3 s of a scale-up), from zero.
fn scaler_settings(max_workers: u32) -> ScalerSettings {
    ScalerSettings {
        interval: Duration::from_millis(200),
        min_workers: 0,
        max_workers,
        target_drain: Duration::from_secs(5),
        scale_down_window: SCALE_DOWN_WINDOW,
        rate_smoothing: Duration::from_secs(3),
        ..ScalerSettings::default()
    }
}

pub fn run(arguments: &AutoscaleArgs) -> anyhow::Result<()> {
    crate::lifecycle_bench::init_logging();
    let quick = arguments.quick;
    let trace = Trace {
        bursts: arguments.bursts.unwrap_or(if quick { 2 } else { 3 }).max(1),
        ids: arguments
            .ids_per_burst
            .unwrap_or(if quick { 30_000 } else { 120_000 })
            .max(1_000),
        gap: Duration::from_secs(arguments.gap_secs.unwrap_or(if quick { 8 } else { 20 })),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("elk-bench")
        .enable_all()
        .build()?;
    let (max, capacity) = (arguments.max_workers.max(1), arguments.capacity.max(1));
    eprintln!(
        "== autoscale: autoscaled fleet (0..={max}) and fixed fleet of {max}, side by side =="
    );
    // Both fleets run the trace at the same time, each on its own nats-server and services: on a
    // shared machine the load changes from minute to minute, and two runs one after the other
    // compared one fleet's quiet minute with the other's busy one (a burst took 9.0 s autoscaled
    // with all 6 workers and 7.0 s fixed a minute later). Side by side both see the same load.
    let (autoscaled, fixed) = runtime.block_on(async {
        tokio::join!(
            run_trace(&trace, max, capacity, true),
            run_trace(&trace, max, capacity, false)
        )
    });
    let (autoscaled, fixed) = (autoscaled?, fixed?);
    runtime.shutdown_timeout(Duration::from_secs(1));
    let ratio = |a: f64, b: f64| crate::lifecycle_bench::round(a / b.max(1e-9), 3);
    let broken: Vec<String> = [("autoscaled", &autoscaled), ("fixed", &fixed)]
        .iter()
        .flat_map(|(fleet, outcome)| {
            [
                ("ids_repeated", outcome.ids_repeated as u64),
                ("ids_missing", outcome.ids_missing as u64),
                ("unplanned_stops", outcome.unplanned_stops),
                ("flaps", outcome.flaps),
            ]
            .into_iter()
            .filter(|(_, value)| *value > 0)
            .map(move |(field, value)| format!("{fleet}.{field} = {value}"))
        })
        .collect();
    crate::lifecycle_bench::print_line(&Line {
        bench: "autoscale",
        max_workers: max,
        bursts: trace.bursts,
        ids_per_burst: trace.ids,
        gap_secs: trace.gap.as_secs(),
        completion_ratio: ratio(autoscaled.completion_s_mean, fixed.completion_s_mean),
        worker_seconds_ratio: ratio(autoscaled.worker_seconds, fixed.worker_seconds),
        replica_changes: autoscaled.replica_changes,
        autoscaled,
        fixed,
    })?;
    anyhow::ensure!(
        broken.is_empty(),
        "autoscale: must be 0: {}",
        broken.join(", ")
    );
    Ok(())
}

async fn run_trace(
    trace: &Trace,
    max: u32,
    capacity: u32,
    autoscaled: bool,
) -> anyhow::Result<Outcome> {
    let stack = Stack::new().await?;
    let election = stack.election("election-1");
    let assigner = stack.assigner("assigner-1");
    let scaler =
        autoscaled.then(|| stack.scaler_with("scaler-1", scaler_settings(max), Arc::default()));
    let range = IdRange::new(1, trace.bursts * trace.ids)?;
    let ledger = Ledger::new(range);
    let processor = RecordingProcessor::paced(ledger.clone(), 10, Duration::from_millis(5));
    let mut fleet = Fleet::new("worker", capacity, processor);
    if !autoscaled {
        fleet.scale_to(&stack, max).await?;
    }
    let started = Instant::now();
    // Per burst: when its job was created and when it completed.
    let mut created: Vec<Instant> = Vec::new();
    let mut completed: Vec<Option<Instant>> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let deadline = started + trace.gap * trace.bursts as u32 + Duration::from_secs(300);
    let mut at_last_completion: Option<FleetStats> = None;
    while at_last_completion.is_none() {
        tick.tick().await;
        anyhow::ensure!(
            Instant::now() < deadline,
            "the trace did not finish in time"
        );
        let burst = created.len() as u64;
        if burst < trace.bursts && started.elapsed() >= trace.gap * burst as u32 {
            let first = burst * trace.ids + 1;
            let job_range = IdRange::new(first, first + trace.ids - 1)?;
            stack
                .create_job(&format!("burst-{burst}"), job_range, 1_000)
                .await?;
            created.push(Instant::now());
            completed.push(None);
        }
        if autoscaled {
            fleet.follow(&stack).await?;
        }
        for (index, done) in completed.iter_mut().enumerate() {
            if done.is_none()
                && stack
                    .job(&format!("burst-{index}"))
                    .await?
                    .is_some_and(|job| job.state == JobState::Completed)
            {
                *done = Some(Instant::now());
                eprintln!(
                    "{} burst {index} completed in {:.1} s with {} workers",
                    if autoscaled { "autoscaled" } else { "fixed" },
                    created[index].elapsed().as_secs_f64(),
                    fleet.len()
                );
            }
        }
        if created.len() as u64 == trace.bursts && completed.iter().all(Option::is_some) {
            at_last_completion = Some(fleet.stats());
        }
    }
    let stats = at_last_completion.expect("loop ends with it");
    let flaps = elk_integration_tests::fleet::flaps(fleet.history(), SCALE_DOWN_WINDOW, &created);
    let makespan = started.elapsed().as_secs_f64();
    let durations: Vec<f64> = created
        .iter()
        .zip(&completed)
        .map(|(start, end)| end.expect("all done").duration_since(*start).as_secs_f64())
        .collect();
    fleet.shutdown().await?;
    if let Some(scaler) = scaler {
        scaler.stop().await;
    }
    assigner.stop().await;
    election.stop().await;
    let round = crate::lifecycle_bench::round;
    Ok(Outcome {
        completion_s_mean: round(durations.iter().sum::<f64>() / durations.len() as f64, 3),
        makespan_s: round(makespan, 3),
        worker_seconds: round(stats.worker_seconds, 2),
        peak_workers: stats.peak,
        replica_changes: stats.replica_changes,
        flaps,
        retired_stops: stats.retired_stops,
        retired_released: stats.retired_released,
        unplanned_stops: stats.unplanned_stops,
        ids_repeated: ledger.duplicates().len(),
        ids_missing: ledger.missing().len(),
    })
}
