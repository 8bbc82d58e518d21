//! `elk-bench overhead`: coordination overhead when partitions take at least a second (issue 10,
//! item 6; ARCHITECTURE §5: ≤ 2 % of wall time).
//!
//! A real nats-server, the election and the assigner (in this process, on the `Stack`), and
//! `workers` SDK workers of `capacity` slots each. Every partition takes `partition_ms` of wall
//! time (a sleep in 100 ms steps, checkpointing after each, as a real processor reports
//! progress), so the work is known exactly: the ideal makespan is `total work ÷ capacity` =
//! `partitions × partition_ms ÷ (workers × capacity)`. The makespan is measured from sending
//! `create_job` to seeing the job record `completed` (polled every 10 ms), so it includes cutting,
//! every grant, report and assignment round trip, and the tail. `overhead_pct` = (makespan −
//! ideal) ÷ makespan × 100.
//!
//! One line: `{"bench":"overhead","workers":n,"capacity":n,"partitions":n,"partition_ms":n,
//! "ideal_s":f,"makespan_s":f,"overhead_pct":f,...}`.

use crate::lifecycle_bench::{print_line, round};
use anyhow::Context;
use elk_integration_tests::Stack;
use elk_protocol::messages::JobState;
use elk_types::{IdRange, MemberId};
use elk_worker::{PartitionWork, ProcessError, ProcessOutcome, Processor, Worker};
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod slots;

const JOB: &str = "overhead";
/// IDs per partition: the work is paced per ID, checkpointed every `STEP_IDS`.
const PARTITION_IDS: u64 = 1_000;
const STEP_IDS: u64 = 100;

#[derive(Debug, clap::Args)]
pub struct OverheadArgs {
    /// Workers [default: 16; 4 with --quick].
    #[arg(long)]
    workers: Option<usize>,
    /// Partitions run at once per worker.
    #[arg(long, default_value_t = 4)]
    capacity: u32,
    /// Wall time of one partition, in milliseconds (at least 1,000 for the target).
    #[arg(long, default_value_t = 1_000)]
    partition_ms: u64,
    /// Waves: the job has `waves × workers × capacity` partitions [default: 20; 5 with --quick].
    #[arg(long)]
    waves: Option<u64>,
    /// Smoke run: 4 workers, 5 waves.
    #[arg(long)]
    quick: bool,
}

#[derive(Debug, Serialize)]
struct Line {
    bench: &'static str,
    workers: usize,
    capacity: u32,
    partitions: u64,
    partition_ms: u64,
    ideal_s: f64,
    makespan_s: f64,
    overhead_pct: f64,
    /// The job record's `completed − created` (the assigner's clock): without the create request
    /// and the observation delay.
    job_record_s: f64,
    member_ttl_s: f64,
    quick: bool,
    /// Grants the workers handed back before the job completed (every one a revoke: running or
    /// still queued); the running ones are `runs_interrupted`.
    released: u64,
    /// Where the idle slot-time went (`slots.rs`).
    #[serde(flatten)]
    idle: slots::IdleSplit,
}

/// Takes `per_id` of wall time per ID, checkpointing every `STEP_IDS`. Steps sleep until an
/// absolute instant (start + IDs done × `per_id`), so timer granularity does not accumulate into
/// the partition's duration. Every run is logged for the idle split.
#[derive(Clone)]
struct TimedWork {
    per_id: Duration,
    worker: usize,
    runs: Arc<Mutex<Vec<slots::Run>>>,
}

impl TimedWork {
    fn log(&self, start: Instant, interrupted: bool) {
        let run = slots::Run {
            worker: self.worker,
            start,
            end: Instant::now(),
            interrupted,
        };
        self.runs.lock().expect("run log").push(run);
    }
}

impl Processor for TimedWork {
    async fn process(&self, work: PartitionWork) -> Result<ProcessOutcome, ProcessError> {
        let started = tokio::time::Instant::now();
        let first = work.resume_from();
        let last = work.range().last();
        let mut next = first;
        while next <= last {
            let end = (next + STEP_IDS - 1).min(last);
            let due = started + self.per_id * u32::try_from(end - first + 1).unwrap_or(u32::MAX);
            tokio::select! {
                () = work.cancelled() => {
                    self.log(started.into_std(), true);
                    return Ok(ProcessOutcome::Interrupted);
                }
                () = tokio::time::sleep_until(due) => {}
            }
            work.checkpoint(end);
            next = end + 1;
        }
        self.log(started.into_std(), false);
        Ok(ProcessOutcome::Completed)
    }
}

pub fn run(arguments: &OverheadArgs) -> anyhow::Result<()> {
    crate::init_logging();
    let quick = arguments.quick;
    let workers = arguments.workers.unwrap_or(if quick { 4 } else { 16 });
    let waves = arguments.waves.unwrap_or(if quick { 5 } else { 20 });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let line = runtime.block_on(measure(
        workers,
        arguments.capacity.max(1),
        arguments.partition_ms,
        waves,
        quick,
    ));
    runtime.shutdown_timeout(Duration::from_secs(1));
    print_line(&line?)
}

async fn measure(
    workers: usize,
    capacity: u32,
    partition_ms: u64,
    waves: u64,
    quick: bool,
) -> anyhow::Result<Line> {
    let stack = Stack::new()
        .await
        .context("start nats-server and provision")?
        .with_member_ttl(Duration::from_secs(3));
    let election = stack.election("election-1");
    let assigner = stack.assigner("assigner-1");
    let per_id = Duration::from_millis(partition_ms) / PARTITION_IDS as u32;
    let runs = Arc::new(Mutex::new(Vec::new()));
    let mut handles = Vec::new();
    for index in 1..=workers {
        let processor = TimedWork {
            per_id,
            worker: index - 1,
            runs: runs.clone(),
        };
        let worker = Worker::builder(
            stack.namespace.clone(),
            MemberId::new(format!("w-{index}"))?,
        )
        .nats_url(stack.url())
        .capacity(capacity)
        .member_ttl(stack.member_ttl)
        .start(processor)
        .await?;
        handles.push(worker);
    }
    let slots = workers as u64 * u64::from(capacity);
    let partitions = waves * slots;
    // Every worker is in the view before the clock starts (a fleet that is already running).
    crate::kv_reads::wait_for_view_workers(&stack.resources, workers).await?;
    let ideal = Duration::from_millis(partition_ms) * u32::try_from(partitions / slots)?;
    eprintln!(
        "overhead: {workers} workers × {capacity}, {partitions} partitions of {partition_ms} ms: ideal {:.1} s",
        ideal.as_secs_f64()
    );
    let started = Instant::now();
    stack
        .create_job(
            JOB,
            IdRange::new(1, partitions * PARTITION_IDS)?,
            PARTITION_IDS,
        )
        .await?;
    elk_testkit::wait_until(
        "the job completed",
        ideal * 3 + Duration::from_secs(60),
        || async {
            stack
                .job(JOB)
                .await
                .is_ok_and(|job| job.is_some_and(|job| job.state == JobState::Completed))
        },
    )
    .await?;
    let seen = Instant::now();
    let makespan = seen - started;
    let job = stack.job(JOB).await?.context("job record")?;
    let job_record_s = job.completed_unix_ms.map_or(0.0, |done| {
        done.saturating_sub(job.created_unix_ms) as f64 / 1e3
    });
    let released = handles
        .iter()
        .map(|worker| worker.stats().partitions_released)
        .sum();
    for worker in handles {
        worker.shutdown().await?;
    }
    assigner.stop().await;
    election.stop().await;
    let makespan_s = makespan.as_secs_f64();
    let idle = slots::split(
        &runs.lock().expect("run log"),
        workers,
        capacity as usize,
        Duration::from_millis(partition_ms) * u32::try_from(partitions)?,
        started,
        seen,
    );
    Ok(Line {
        bench: "overhead",
        workers,
        capacity,
        partitions,
        partition_ms,
        ideal_s: round(ideal.as_secs_f64(), 3),
        makespan_s: round(makespan_s, 3),
        overhead_pct: round((makespan_s - ideal.as_secs_f64()) / makespan_s * 100.0, 2),
        job_record_s: round(job_record_s, 3),
        member_ttl_s: stack.member_ttl.as_secs_f64(),
        quick,
        released,
        idle,
    })
}
