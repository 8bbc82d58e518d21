//! `elk-recording-worker`: the worker process the multi-process benchmarks start (`elk-bench
//! chaos`, `memory`). A plain SDK worker whose processor keeps its own record of every ID it
//! processes, **independently of the coordinator**, so a benchmark can tell afterwards which IDs
//! were processed how often, whatever the coordinator believes.
//!
//! ```text
//! elk-recording-worker --nats-url nats://127.0.0.1:<port> --namespace chaos --member-id worker-1 \
//!     --capacity 2 --record-file /tmp/run/worker-1.log --id-cost-us 200
//! ```
//!
//! **The record.** IDs are processed in chunks (`--chunk`, default 100). A chunk is *processed*
//! when its line `<job> <first> <last>\n` has been appended to `--record-file` (one `write(2)` on
//! a file opened with `O_APPEND`, so every process of a benchmark may share a directory and a
//! `kill -9` never leaves half a line behind the kernel). Only then is the chunk checkpointed, so
//! no acknowledged checkpoint ever covers an unrecorded ID; a kill between the write and the next
//! checkpoint flush repeats that chunk, which is the at-least-once window the coordinator allows.
//! Without `--record-file` nothing is written (a no-op worker, for memory measurements).
//!
//! **Pacing.** `--id-cost-us` makes each chunk take `chunk × cost` of wall time (a sleep, so a
//! fleet of workers does not need the CPU), checked against cancellation.
//!
//! **Staying up.** A benchmark restarts a killed worker at once with the same member id, while its
//! previous key is still alive, or while NATS is unreachable: starting is retried every 250 ms
//! until it works (only a configuration error ends the process). SIGTERM / SIGINT hand everything
//! back and leave (exit 0).

use clap::Parser;
use elk_worker::{
    JobName, MemberId, Namespace, NatsConfig, PartitionWork, ProcessError, ProcessOutcome,
    Processor, Worker, WorkerError, WorkerEvent, WorkerHandle,
};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A worker process that records every ID it processes in a file of its own.
#[derive(Debug, Parser)]
#[command(name = "elk-recording-worker", version, about)]
struct Args {
    /// NATS server URL (required: the benchmark that starts this process owns the server and its
    /// random port).
    #[arg(long)]
    nats_url: String,
    /// Namespace (deployment) to join.
    #[arg(long)]
    namespace: String,
    /// Member id (a restarted process reuses it).
    #[arg(long)]
    member_id: String,
    /// Partitions processed at once.
    #[arg(long, default_value_t = 2)]
    capacity: u32,
    /// Only process these jobs (comma-separated) [default: every job].
    #[arg(long, value_delimiter = ',')]
    jobs: Vec<String>,
    /// Member key TTL in whole seconds.
    #[arg(long, default_value_t = 3)]
    member_ttl_secs: u64,
    /// How often checkpoints are flushed, in milliseconds.
    #[arg(long, default_value_t = 1_000)]
    checkpoint_interval_ms: u64,
    /// Append `<job> <first> <last>` for every processed chunk to this file.
    #[arg(long)]
    record_file: Option<PathBuf>,
    /// Wall time per ID, in microseconds (slept per chunk; 0: as fast as possible).
    #[arg(long, default_value_t = 0.0)]
    id_cost_us: f64,
    /// IDs per chunk (recorded and checkpointed together).
    #[arg(long, default_value_t = 100)]
    chunk: u64,
}

/// Appends processed chunks to the record file.
struct Recorder {
    file: Option<Mutex<File>>,
    id_cost: Duration,
    chunk: u64,
}

impl Recorder {
    /// One line, one `write(2)`: the kernel has it once this returns, whatever happens to the
    /// process afterwards.
    fn record(&self, job: &JobName, first: u64, last: u64) -> std::io::Result<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let line = format!("{job} {first} {last}\n");
        let mut file = file.lock().unwrap_or_else(|poison| poison.into_inner());
        file.write_all(line.as_bytes())
    }
}

#[derive(Clone)]
struct RecordingProcessor(Arc<Recorder>);

impl Processor for RecordingProcessor {
    async fn process(&self, work: PartitionWork) -> Result<ProcessOutcome, ProcessError> {
        let recorder = &self.0;
        let last = work.range().last();
        let mut first = work.resume_from();
        while first <= last {
            if work.is_cancelled() {
                return Ok(ProcessOutcome::Interrupted);
            }
            let end = first.saturating_add(recorder.chunk - 1).min(last);
            if !recorder.id_cost.is_zero() {
                let cost = recorder.id_cost.mul_f64((end - first + 1) as f64);
                tokio::select! {
                    () = work.cancelled() => return Ok(ProcessOutcome::Interrupted),
                    () = tokio::time::sleep(cost) => {}
                }
            } else if first % 4096 < recorder.chunk {
                tokio::task::yield_now().await;
            }
            // The fence deadline may have passed during the pause: the partition may be someone
            // else's by now, so this chunk is not processed here.
            if work.is_cancelled() {
                return Ok(ProcessOutcome::Interrupted);
            }
            recorder
                .record(work.job(), first, end)
                .map_err(|error| ProcessError::new(format!("record file: {error}")))?;
            work.checkpoint(end);
            first = end + 1;
        }
        Ok(ProcessOutcome::Completed)
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,elk_recording_worker=info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    if args.chunk == 0 {
        return Err("--chunk must be at least 1".into());
    }
    let namespace = Namespace::new(&args.namespace)?;
    let id = MemberId::new(&args.member_id)?;
    let jobs = args
        .jobs
        .iter()
        .map(JobName::new)
        .collect::<Result<Vec<_>, _>>()?;
    let file = match &args.record_file {
        Some(path) => Some(Mutex::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|error| format!("record file {}: {error}", path.display()))?,
        )),
        None => None,
    };
    let processor = RecordingProcessor(Arc::new(Recorder {
        file,
        id_cost: Duration::from_secs_f64(args.id_cost_us.max(0.0) / 1e6),
        chunk: args.chunk,
    }));
    let worker = start(&args, &namespace, &id, &jobs, processor).await?;
    tracing::info!(member = %id, incarnation = %worker.incarnation(), "worker joined");
    let mut events = worker.events();
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            match event {
                WorkerEvent::Fenced { incarnation, .. } => {
                    tracing::warn!(%incarnation, "membership lost; re-joining");
                }
                WorkerEvent::Rejoined { incarnation, .. } => {
                    tracing::info!(%incarnation, "re-joined");
                }
                _ => {}
            }
        }
    });
    termination_signal().await;
    let stats = worker.shutdown().await?;
    tracing::info!(
        completed = stats.partitions_completed,
        released = stats.partitions_released,
        "left"
    );
    Ok(())
}

/// Starts the worker, retrying until it works: a restarted process finds its previous
/// incarnation's key alive until the TTL expires, and NATS may be unreachable for a while.
async fn start(
    args: &Args,
    namespace: &Namespace,
    id: &MemberId,
    jobs: &[JobName],
    processor: RecordingProcessor,
) -> Result<WorkerHandle, WorkerError> {
    let mut attempts = 0u32;
    loop {
        let started = Worker::builder(namespace.clone(), id.clone())
            .nats(NatsConfig::new(&args.nats_url, id.as_str()))
            .capacity(args.capacity)
            .jobs(jobs.to_vec())
            .member_ttl(Duration::from_secs(args.member_ttl_secs.max(1)))
            .checkpoint_interval(Duration::from_millis(args.checkpoint_interval_ms.max(1)))
            .start(processor.clone())
            .await;
        match started {
            Ok(worker) => return Ok(worker),
            Err(error @ WorkerError::InvalidConfig { .. }) => return Err(error),
            Err(error) => {
                attempts += 1;
                if attempts == 1 || attempts.is_multiple_of(20) {
                    tracing::info!(attempts, %error, "cannot start yet; retrying");
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn termination_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
