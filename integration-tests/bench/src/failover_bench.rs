//! `elk-bench failover`: recovery latencies on a real nats-server with the real election,
//! assigner and worker SDK running in this process (issue 4, ARCHITECTURE §5).
//!
//! Prints one JSON object per scenario:
//! `{"bench":"failover","scenario":S,"trials":n,"p50_ms":f,"p99_ms":f,"member_ttl_s":f,
//!   "min_ms":f,"max_ms":f,"workers":n,"partitions":n,"quick":b}`.
//!
//! Every trial is timed from the fault (a kill, an abort, a graceful stop, a join) to the
//! recovery condition, and the condition is observed by watching the KV buckets (a watch per
//! bucket, never a poll or a sleep): see each scenario module. Percentiles are nearest-rank, so
//! with fewer than 100 trials `p99_ms` is the slowest trial.

mod assigner;
mod join;
mod mirror;
mod worker_fault;

use anyhow::Context;
use elk_integration_tests::Stack;
use elk_types::MemberId;
use elk_worker::{PartitionWork, ProcessError, ProcessOutcome, Processor, Worker, WorkerHandle};
use serde::Serialize;
use std::io::Write;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// A worker holding partitions is killed → every partition it held is granted elsewhere.
    #[value(name = "worker_kill")]
    WorkerKill,
    /// A worker holding partitions is cut off from NATS by a TCP proxy → every partition it
    /// held is granted elsewhere.
    #[value(name = "worker_cut")]
    WorkerCut,
    /// The leading assigner is aborted with 10,000 partitions → the standby leads and grants.
    #[value(name = "assigner_kill_10k")]
    AssignerKill10k,
    /// The same with 100,000 partitions.
    #[value(name = "assigner_kill_100k")]
    AssignerKill100k,
    /// The leading assigner stops gracefully → the standby leads and grants.
    #[value(name = "graceful_handoff")]
    GracefulHandoff,
    /// A worker joins while 500 (`--workers`) are live → its first grant.
    #[value(name = "join_first_grant_500")]
    JoinFirstGrant500,
    /// The election is asked to hand the assigner role to the standby (`elkctl transfer`) → the
    /// standby leads and grants (issue 13: hand-off ≤ 200 ms).
    #[value(name = "leader_transfer")]
    LeaderTransfer,
}

impl Scenario {
    const ALL: [Scenario; 7] = [
        Scenario::WorkerKill,
        Scenario::WorkerCut,
        Scenario::AssignerKill10k,
        Scenario::AssignerKill100k,
        Scenario::GracefulHandoff,
        Scenario::JoinFirstGrant500,
        Scenario::LeaderTransfer,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::WorkerKill => "worker_kill",
            Scenario::WorkerCut => "worker_cut",
            Scenario::AssignerKill10k => "assigner_kill_10k",
            Scenario::AssignerKill100k => "assigner_kill_100k",
            Scenario::GracefulHandoff => "graceful_handoff",
            Scenario::JoinFirstGrant500 => "join_first_grant_500",
            Scenario::LeaderTransfer => "leader_transfer",
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct FailoverArgs {
    /// Trials per scenario (default 20; 3 with --quick). With fewer than 100 trials, p99 is the
    /// slowest trial.
    #[arg(long)]
    trials: Option<usize>,
    /// Member TTL of every worker and service replica (and the election lease TTL), whole seconds.
    #[arg(long, default_value_t = 3)]
    member_ttl_secs: u64,
    /// Scenario to run (repeatable); default: all of them.
    #[arg(long = "scenario", value_enum)]
    scenarios: Vec<Scenario>,
    /// Live workers in `join_first_grant_500` (default 500; 50 with --quick).
    #[arg(long)]
    workers: Option<usize>,
    /// Smoke run: 3 trials, 1,000 partitions instead of 10,000/100,000, 50 live workers.
    #[arg(long)]
    quick: bool,
}

/// What one scenario run needs to know.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub trials: usize,
    pub member_ttl: Duration,
    pub workers: usize,
    pub quick: bool,
}

impl Settings {
    /// A generous bound for one wait: nothing in a healthy run takes this long.
    pub fn deadline(&self) -> Duration {
        self.member_ttl * 10 + Duration::from_secs(30)
    }
}

/// One output line.
#[derive(Debug, Serialize)]
struct Line {
    bench: &'static str,
    scenario: &'static str,
    trials: usize,
    p50_ms: f64,
    p99_ms: f64,
    member_ttl_s: f64,
    min_ms: f64,
    max_ms: f64,
    workers: usize,
    partitions: u64,
    quick: bool,
}

/// What a scenario measured, plus the size it ran at.
#[derive(Debug)]
pub(crate) struct Measured {
    pub durations: Vec<Duration>,
    pub workers: usize,
    pub partitions: u64,
}

pub fn run(arguments: &FailoverArgs) -> anyhow::Result<()> {
    init_logging();
    let settings = Settings {
        trials: arguments
            .trials
            .unwrap_or(if arguments.quick { 3 } else { 20 })
            .max(1),
        member_ttl: Duration::from_secs(arguments.member_ttl_secs.max(1)),
        workers: arguments
            .workers
            .unwrap_or(if arguments.quick { 50 } else { 500 }),
        quick: arguments.quick,
    };
    let scenarios = if arguments.scenarios.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        arguments.scenarios.clone()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let mut failed = Vec::new();
    for scenario in scenarios {
        eprintln!("== failover {} ==", scenario.name());
        let outcome = runtime.block_on(run_scenario(scenario, settings));
        match outcome {
            Ok(measured) => print_line(scenario, &settings, measured)?,
            Err(error) => {
                eprintln!("failover {} failed: {error:#}", scenario.name());
                failed.push(scenario.name());
            }
        }
    }
    // Stray tasks of aborted replicas must not keep the process alive.
    runtime.shutdown_timeout(Duration::from_secs(1));
    anyhow::ensure!(failed.is_empty(), "scenarios failed: {failed:?}");
    Ok(())
}

async fn run_scenario(scenario: Scenario, settings: Settings) -> anyhow::Result<Measured> {
    let stack = Stack::new()
        .await
        .context("start nats-server and provision")?
        .with_member_ttl(settings.member_ttl);
    let small = 1_000;
    match scenario {
        Scenario::WorkerKill => {
            worker_fault::run(&stack, settings, worker_fault::Fault::Kill).await
        }
        Scenario::WorkerCut => worker_fault::run(&stack, settings, worker_fault::Fault::Cut).await,
        Scenario::AssignerKill10k => {
            let partitions = if settings.quick { small } else { 10_000 };
            assigner::run(&stack, settings, partitions, assigner::Fault::Abort).await
        }
        Scenario::AssignerKill100k => {
            let partitions = if settings.quick { small } else { 100_000 };
            assigner::run(&stack, settings, partitions, assigner::Fault::Abort).await
        }
        Scenario::GracefulHandoff => {
            assigner::run(&stack, settings, small, assigner::Fault::GracefulStop).await
        }
        Scenario::JoinFirstGrant500 => join::run(&stack, settings).await,
        Scenario::LeaderTransfer => {
            assigner::run(&stack, settings, small, assigner::Fault::Transfer).await
        }
    }
}

fn print_line(scenario: Scenario, settings: &Settings, measured: Measured) -> anyhow::Result<()> {
    let mut durations = measured.durations;
    anyhow::ensure!(!durations.is_empty(), "no trial completed");
    durations.sort();
    let millis = |duration: Duration| (duration.as_secs_f64() * 10_000.0).round() / 10.0;
    let line = Line {
        bench: "failover",
        scenario: scenario.name(),
        trials: durations.len(),
        p50_ms: millis(percentile(&durations, 50.0)),
        p99_ms: millis(percentile(&durations, 99.0)),
        member_ttl_s: settings.member_ttl.as_secs_f64(),
        min_ms: millis(durations[0]),
        max_ms: millis(durations[durations.len() - 1]),
        workers: measured.workers,
        partitions: measured.partitions,
        quick: settings.quick,
    };
    let mut output = std::io::stdout().lock();
    writeln!(output, "{}", serde_json::to_string(&line)?)?;
    output.flush()?;
    Ok(())
}

/// Nearest-rank percentile of sorted durations: the smallest value with at least `p` % of the
/// values at or below it.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error,async_nats=off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// A pause before the fault of `trial`, spread evenly over one renewal interval (TTL / 3) by a
/// Weyl sequence. Without it every fault would hit the same phase of the victim's renewal cycle:
/// the trials start in lockstep with the periodic renewal and checkpoint timers (they start when
/// the KV goes quiet), which biased the first runs towards one expiry delay. Not measured.
pub(crate) fn fault_phase(settings: &Settings, trial: usize) -> Duration {
    let fraction = (trial as f64 * 0.618_033_988_749_895).fract();
    settings.member_ttl.div_f64(3.0).mul_f64(fraction)
}

/// Logs one trial on stderr.
pub(crate) fn log_trial(scenario: &str, trial: usize, duration: Duration, detail: &str) {
    eprintln!(
        "{scenario} trial {trial}: {:.1} ms {detail}",
        duration.as_secs_f64() * 1_000.0
    );
}

/// A processor that holds its partition until the worker cancels it. With `step`, it also
/// "processes" one ID per `step` and checkpoints it (so checkpoints flow as in real work);
/// without, it does nothing at all (the cheapest possible live worker).
#[derive(Debug, Clone, Copy)]
pub(crate) struct HoldProcessor {
    pub step: Option<Duration>,
}

impl Processor for HoldProcessor {
    async fn process(&self, work: PartitionWork) -> Result<ProcessOutcome, ProcessError> {
        let Some(step) = self.step else {
            work.cancelled().await;
            return Ok(ProcessOutcome::Interrupted);
        };
        let mut next = work.resume_from();
        while next <= work.range().last() {
            tokio::select! {
                _ = work.cancelled() => return Ok(ProcessOutcome::Interrupted),
                _ = tokio::time::sleep(step) => {
                    work.checkpoint(next);
                    next += 1;
                }
            }
        }
        Ok(ProcessOutcome::Completed)
    }
}

/// Starts a worker connecting to `url` with the stack's member TTL and the default checkpoint
/// interval.
pub(crate) async fn start_worker(
    stack: &Stack,
    url: &str,
    id: &str,
    capacity: u32,
    processor: HoldProcessor,
) -> anyhow::Result<WorkerHandle> {
    let worker = Worker::builder(stack.namespace.clone(), MemberId::new(id)?)
        .nats_url(url)
        .capacity(capacity)
        .member_ttl(stack.member_ttl)
        .stop_grace(Duration::from_secs(5))
        .start(processor)
        .await
        .with_context(|| format!("start worker {id}"))?;
    Ok(worker)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<Duration> = (1..=20).map(Duration::from_millis).collect();
        assert_eq!(percentile(&values, 50.0), Duration::from_millis(10));
        assert_eq!(percentile(&values, 99.0), Duration::from_millis(20));
        let values: Vec<Duration> = (1..=200).map(Duration::from_millis).collect();
        assert_eq!(percentile(&values, 99.0), Duration::from_millis(198));
        assert_eq!(percentile(&values[..1], 50.0), Duration::from_millis(1));
    }
}
