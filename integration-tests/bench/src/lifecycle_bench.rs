//! `elk-bench lifecycle`: what a job costs the coordinator end to end (issue 5, item 7), on a real
//! nats-server with the election, the assigner and the workers in this process.
//!
//! Prints one JSON object per line:
//! - `{"bench":"compaction","partitions":100000,"kv_partition_keys_after":n,"seconds":f,...}`: a
//!   job of 100,000 one-ID partitions, no-op processor, run to completion; the live keys left in
//!   the partitions bucket once compaction settled, and the peak of live partition keys.
//! - `{"bench":"throughput","workers":W,"partitions":P,"completions_per_s":f,...}`: no-op
//!   partitions at several worker counts, measured between 10 % and 90 % of the job, with where
//!   the time goes (KV writes per completion, leader rounds, CPU per component).
//! - `{"bench":"kv_ceiling",...}`: how many compare-and-set writes and purges per second this
//!   nats-server accepts with the assigner's write window (256 in flight), the bound on any
//!   flush; and `{"bench":"flush_model",...}`: the KV side of one leader round emulated on an idle
//!   server (the assigner's four flush phases for 16 and 64 completions).
//!
//! The assigner runs on its own tokio runtime (threads named `elk-assigner-*`) so its CPU can be
//! told apart from the workers'; that mirrors a separate assigner process.
//!
//! Telemetry is set up as in a service (`elk_runtime::telemetry`, `service.name` `elk-bench`):
//! traces are exported when the standard `OTEL_EXPORTER_OTLP_*` variables say so. With
//! `--trace-sampling`, `throughput` runs each variant in a child process and prints them side by
//! side (`trace_overhead.rs`).

mod compaction;
pub(crate) mod cpu;
mod kv_ceiling;
mod monitor;
mod throughput;
mod trace_overhead;

use anyhow::Context;
use elk_integration_tests::{ServiceHandle, Stack};
use elk_protocol::decode;
use elk_protocol::messages::{JobRecord, MembershipView};
use elk_protocol::names::VIEW_KEY;
use elk_worker::{PartitionWork, ProcessError, ProcessOutcome, Processor, WorkerHandle};
use serde::Serialize;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Member TTL of the services and workers (the production default).
const MEMBER_TTL: Duration = Duration::from_secs(3);
/// Capacity of every worker.
const CAPACITY: u32 = 4;
/// The job every scenario runs.
const JOB: &str = "lifecycle";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// 100,000 one-ID partitions run to completion; partition keys left afterwards.
    Compaction,
    /// Completions per second at each `--workers` count.
    Throughput,
    /// Compare-and-set writes and purges per second the nats-server takes at 256 in flight, and
    /// the KV side of one leader round emulated on an idle server.
    #[value(name = "kv_ceiling")]
    KvCeiling,
}

impl Scenario {
    const ALL: [Scenario; 3] = [
        Scenario::KvCeiling,
        Scenario::Compaction,
        Scenario::Throughput,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::Compaction => "compaction",
            Scenario::Throughput => "throughput",
            Scenario::KvCeiling => "kv_ceiling",
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct LifecycleArgs {
    /// Scenario to run (repeatable); default: all of them.
    #[arg(long = "scenario", value_enum)]
    scenarios: Vec<Scenario>,
    /// Worker counts of `throughput` (repeatable; default 4, 16 and 64; 4 with --quick).
    #[arg(long = "workers")]
    workers: Vec<usize>,
    /// Partitions of each `throughput` run (default 50,000; 5,000 with --quick).
    #[arg(long)]
    partitions: Option<u64>,
    /// Runs per worker count of `throughput` (each on a fresh nats-server); the line reports the
    /// median run (default 3; 1 with --quick).
    #[arg(long)]
    runs: Option<usize>,
    /// Partitions of the `compaction` job (default 100,000; 5,000 with --quick).
    #[arg(long)]
    compaction_partitions: Option<u64>,
    /// Workers of the `compaction` run (default 16; 4 with --quick).
    #[arg(long)]
    compaction_workers: Option<usize>,
    /// Smoke run: small sizes, a few seconds per scenario.
    #[arg(long)]
    quick: bool,
    /// `throughput` with tracing `off` and at these parent-based sampling ratios (repeatable,
    /// e.g. `--trace-sampling off --trace-sampling 0.01 --trace-sampling 1`): each run of each
    /// variant in a child process exporting to an OTLP receiver in this one, interleaved.
    #[arg(long = "trace-sampling", value_name = "off|RATIO", value_parser = trace_overhead::Variant::parse)]
    trace_sampling: Vec<trace_overhead::Variant>,
    /// OTLP transport of `--trace-sampling`: grpc or http/protobuf.
    #[arg(long, default_value = "grpc")]
    trace_protocol: String,
    /// The assigner's write path(s) `throughput` runs, interleaved run by run on fresh servers
    /// (repeatable; default both: `lean` and `baseline`, the line then carries
    /// `baseline_completions_per_s` of the same invocation).
    #[arg(long = "write-path", value_parser = parse_write_path)]
    write_paths: Vec<elk_assigner::WritePath>,
}

fn parse_write_path(value: &str) -> Result<elk_assigner::WritePath, String> {
    match value {
        "lean" => Ok(elk_assigner::WritePath::Lean),
        "baseline" => Ok(elk_assigner::WritePath::Baseline),
        other => Err(format!("unknown write path {other:?}: lean or baseline")),
    }
}

/// The name of a write path as `[assigner] write_path` spells it.
pub(crate) fn write_path_name(path: elk_assigner::WritePath) -> &'static str {
    match path {
        elk_assigner::WritePath::Lean => "lean",
        elk_assigner::WritePath::Baseline => "baseline",
    }
}

/// What the scenarios need to know.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub throughput_workers: Vec<usize>,
    pub throughput_partitions: u64,
    pub runs: usize,
    pub compaction_partitions: u64,
    pub compaction_workers: usize,
    pub quick: bool,
    /// Write paths of `throughput`, the first one's line carrying the others' numbers.
    pub write_paths: Vec<elk_assigner::WritePath>,
}

pub fn run(arguments: &LifecycleArgs) -> anyhow::Result<()> {
    let quick = arguments.quick;
    let settings = Settings {
        throughput_workers: if !arguments.workers.is_empty() {
            arguments.workers.clone()
        } else if quick {
            vec![4]
        } else {
            vec![4, 16, 64]
        },
        throughput_partitions: arguments
            .partitions
            .unwrap_or(if quick { 5_000 } else { 50_000 })
            .max(10),
        runs: arguments.runs.unwrap_or(if quick { 1 } else { 3 }).max(1),
        compaction_partitions: arguments
            .compaction_partitions
            .unwrap_or(if quick { 5_000 } else { 100_000 })
            .max(1),
        compaction_workers: arguments
            .compaction_workers
            .unwrap_or(if quick { 4 } else { 16 })
            .max(1),
        quick,
        write_paths: if arguments.write_paths.is_empty() {
            vec![
                elk_assigner::WritePath::Lean,
                elk_assigner::WritePath::Baseline,
            ]
        } else {
            let mut paths = arguments.write_paths.clone();
            paths.dedup();
            paths
        },
    };
    let scenarios = if arguments.scenarios.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        arguments.scenarios.clone()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("elk-bench")
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let tracing_config = elk_runtime::TracingConfig::default();
    let mut options = elk_runtime::TelemetryOptions::new("elk-bench", &tracing_config);
    options.default_log_filter = "error,async_nats=off";
    let telemetry = runtime.block_on(async { elk_runtime::telemetry::init(options) })?;
    // A runtime of its own for the assigner, as if it were its own process on this machine.
    let assigner_runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name(cpu::ASSIGNER_THREAD)
        .enable_all()
        .build()
        .context("assigner runtime")?;
    let mut failed = Vec::new();
    for scenario in scenarios {
        eprintln!("== lifecycle {} ==", scenario.name());
        let outcome = runtime.block_on(async {
            match scenario {
                Scenario::Compaction => compaction::run(&settings, assigner_runtime.handle()).await,
                Scenario::Throughput if !arguments.trace_sampling.is_empty() => {
                    let (variants, protocol) =
                        (&arguments.trace_sampling, &arguments.trace_protocol);
                    trace_overhead::run(&settings, variants, protocol).await
                }
                Scenario::Throughput => throughput::run(&settings, assigner_runtime.handle()).await,
                Scenario::KvCeiling => {
                    kv_ceiling::run(&settings).await?;
                    kv_ceiling::run_flush_model(&settings).await
                }
            }
        });
        if let Err(error) = outcome {
            eprintln!("lifecycle {} failed: {error:#}", scenario.name());
            failed.push(scenario.name());
        }
    }
    assigner_runtime.shutdown_timeout(Duration::from_secs(1));
    runtime.block_on(telemetry.shutdown());
    runtime.shutdown_timeout(Duration::from_secs(1));
    anyhow::ensure!(failed.is_empty(), "scenarios failed: {failed:?}");
    Ok(())
}

pub(crate) fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error,async_nats=off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Prints one JSON line on stdout.
pub(crate) fn print_line(line: &impl Serialize) -> anyhow::Result<()> {
    let mut output = std::io::stdout().lock();
    writeln!(output, "{}", serde_json::to_string(line)?)?;
    output.flush()?;
    Ok(())
}

/// Rounds to `digits` decimals, for readable JSON.
pub(crate) fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

/// The cheapest possible processor: checkpoints nothing and completes at once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NoopProcessor;

impl Processor for NoopProcessor {
    async fn process(&self, _work: PartitionWork) -> Result<ProcessOutcome, ProcessError> {
        Ok(ProcessOutcome::Completed)
    }
}

/// One election replica, one assigner (on `assigner_runtime`, with readable counters) and
/// `workers` no-op workers of capacity [`CAPACITY`], all live in the view.
pub(crate) struct Services {
    pub metrics: Arc<elk_assigner::AssignerMetrics>,
    election: ServiceHandle,
    assigner: ServiceHandle,
    workers: Vec<WorkerHandle>,
}

impl Services {
    pub async fn start(
        stack: &Stack,
        assigner_runtime: &tokio::runtime::Handle,
        workers: usize,
    ) -> anyhow::Result<Self> {
        Self::start_with(stack, assigner_runtime, workers, Default::default()).await
    }

    /// Like [`Services::start`], the assigner on `write_path`.
    pub async fn start_with(
        stack: &Stack,
        assigner_runtime: &tokio::runtime::Handle,
        workers: usize,
        write_path: elk_assigner::WritePath,
    ) -> anyhow::Result<Self> {
        let election = stack.election("election-1");
        let metrics = Arc::new(elk_assigner::AssignerMetrics::default());
        let assigner = {
            let _entered = assigner_runtime.enter();
            stack.assigner_configured(&stack.url(), "assigner-1", metrics.clone(), |settings| {
                settings.write_path = write_path;
            })
        };
        let mut handles = Vec::with_capacity(workers);
        for index in 1..=workers {
            handles.push(
                stack
                    .worker_with(&format!("worker-{index}"), CAPACITY, &[], NoopProcessor)
                    .await
                    .with_context(|| format!("start worker {index}"))?,
            );
        }
        wait_for_view(stack, workers).await?;
        Ok(Self {
            metrics,
            election,
            assigner,
            workers: handles,
        })
    }

    pub async fn stop(self) {
        drop(self.workers);
        self.assigner.abort().await;
        self.election.abort().await;
    }
}

/// Waits until the membership view lists `workers` workers (setup, not measured).
async fn wait_for_view(stack: &Stack, workers: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let entry = elk_nats::read_entry(&stack.resources.leases, VIEW_KEY).await?;
        let live = entry
            .filter(|entry| !entry.deleted)
            .and_then(|entry| decode::<MembershipView>(&entry.value).ok())
            .map_or(0, |view| view.workers().count());
        if live >= workers {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {live} of {workers} workers in the view"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The job record, if stored.
pub(crate) async fn job(stack: &Stack) -> anyhow::Result<Option<JobRecord>> {
    stack.job(JOB).await
}

/// A generous bound on running a job of `partitions` no-op partitions.
pub(crate) fn job_deadline(partitions: u64) -> Duration {
    Duration::from_secs(60 + partitions / 200)
}
