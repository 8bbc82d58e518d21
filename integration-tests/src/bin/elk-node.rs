//! One ELK component in a process of its own, for the scenarios that need several processes
//! (the trace tests: each process exports with its own `service.name`, and only a real exit
//! shows that queued spans are flushed). `ELK_NODE` selects the component:
//!
//! - `election`, `assigner`: the service exactly as its binary runs it
//!   (`elk_runtime::service_main`: config from the `ELK_*` and `OTEL_*` environment, telemetry,
//!   SIGTERM = graceful stop, spans exported before exit);
//! - `worker`: a worker (`ELK_NATS_URL`, `ELK_NAMESPACE`, `ELK_MEMBER_ID`, `ELK_MEMBER_TTL`,
//!   `ELK_NODE_CAPACITY`) whose processor checkpoints every ID, waiting `ELK_NODE_ID_DELAY_MS`
//!   per ID inside a span of its own (`user.process`); with `ELK_NODE_PLAN_JOB` and
//!   `ELK_NODE_PLAN_MAX` it also serves that open-ended job's planner (answering the max ID inside
//!   a span `user.plan`); telemetry as `elk-worker` (or `OTEL_SERVICE_NAME`); SIGTERM = graceful
//!   shutdown (releases), then the spans are flushed. With `ELK_NODE_RECORD_FILE` it appends
//!   `<job> <id> <id>` for every ID it processed to that file (one `write(2)` on an `O_APPEND`
//!   file, before the ID is checkpointed: what a killed process processed is on record); with
//!   `ELK_NODE_ABORT_ON_ID` it aborts the whole process (`std::process::abort`, no report, no
//!   release) when it reaches that ID — a "key of death".

use elk_worker::{
    JobName, MemberId, Namespace, NatsConfig, PartitionWork, PlanError, Planner, ProcessError,
    ProcessOutcome, Processor, Worker, serve_planner,
};
use std::fs::File;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;
use tracing::Instrument;

#[tokio::main]
async fn main() -> ExitCode {
    match std::env::var("ELK_NODE").as_deref() {
        Ok("election") => {
            elk_runtime::service_main(
                "elk-election",
                "ELK election (test process)",
                elk_election::run,
            )
            .await
        }
        Ok("assigner") => {
            elk_runtime::service_main(
                "elk-assigner",
                "ELK assigner (test process)",
                elk_assigner::run,
            )
            .await
        }
        Ok("worker") => worker().await,
        other => {
            eprintln!("elk-node: ELK_NODE must be election, assigner or worker, got {other:?}");
            ExitCode::from(2)
        }
    }
}

/// Checkpoints every ID after a delay, inside the user's own span; records what it processed and
/// aborts on the poison ID when told to.
struct SlowProcessor {
    id_delay: Duration,
    record: Option<Mutex<File>>,
    abort_on: Option<u64>,
}

impl Processor for SlowProcessor {
    async fn process(&self, work: PartitionWork) -> Result<ProcessOutcome, ProcessError> {
        let span = tracing::info_span!("user.process", first = work.resume_from());
        async {
            for id in work.resume_from()..=work.range().last() {
                if self.abort_on == Some(id) {
                    eprintln!("elk-node: id {id} of {} kills this process", work.job());
                    std::process::abort();
                }
                tokio::select! {
                    () = work.cancelled() => return Ok(ProcessOutcome::Interrupted),
                    () = tokio::time::sleep(self.id_delay) => {}
                }
                if let Some(record) = &self.record {
                    let line = format!("{} {id} {id}\n", work.job());
                    let mut file = record.lock().unwrap_or_else(|p| p.into_inner());
                    file.write_all(line.as_bytes())
                        .map_err(|error| ProcessError::new(format!("record file: {error}")))?;
                }
                work.checkpoint(id);
            }
            Ok(ProcessOutcome::Completed)
        }
        .instrument(span)
        .await
    }
}

/// Answers a fixed max ID inside the user's own span.
struct FixedPlanner {
    max_id: u64,
}

impl Planner for FixedPlanner {
    async fn next_max_id(
        &self,
        _job: &JobName,
        cursor: u64,
        _wanted: u64,
    ) -> Result<Option<u64>, PlanError> {
        let _span = tracing::info_span!("user.plan", cursor).entered();
        Ok(Some(self.max_id))
    }
}

fn env(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("{name} is not set"))
}

async fn worker() -> ExitCode {
    let tracing_config = elk_runtime::TracingConfig::default();
    let mut options = elk_runtime::TelemetryOptions::new("elk-worker", &tracing_config);
    let member = std::env::var("ELK_MEMBER_ID").unwrap_or_default();
    options.instance_id = Some(&member);
    let telemetry = match elk_runtime::telemetry::init(options) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("elk-node: {error}");
            return ExitCode::from(2);
        }
    };
    let outcome = run_worker().await;
    telemetry.shutdown().await;
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("elk-node: worker failed: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run_worker() -> Result<(), Box<dyn std::error::Error>> {
    let namespace = Namespace::new(env("ELK_NAMESPACE")?)?;
    let id = MemberId::new(env("ELK_MEMBER_ID")?)?;
    let capacity: u32 = env("ELK_NODE_CAPACITY")?.parse()?;
    let id_delay = Duration::from_millis(env("ELK_NODE_ID_DELAY_MS")?.parse()?);
    let ttl_secs: u64 = env("ELK_MEMBER_TTL")?.trim_end_matches('s').parse()?;
    let record = match std::env::var("ELK_NODE_RECORD_FILE") {
        Ok(path) => Some(Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|error| format!("record file {path}: {error}"))?,
        )),
        Err(_) => None,
    };
    let abort_on = match std::env::var("ELK_NODE_ABORT_ON_ID") {
        Ok(id) => Some(id.parse::<u64>()?),
        Err(_) => None,
    };
    let planner = match std::env::var("ELK_NODE_PLAN_JOB") {
        Ok(job) => {
            let max_id: u64 = env("ELK_NODE_PLAN_MAX")?.parse()?;
            let nats = NatsConfig::new(env("ELK_NATS_URL")?, format!("{id}-planner"));
            let job = JobName::new(job)?;
            Some(serve_planner(nats, namespace.clone(), job, FixedPlanner { max_id }).await?)
        }
        Err(_) => None,
    };
    let worker = Worker::builder(namespace, id)
        .nats_url(env("ELK_NATS_URL")?)
        .capacity(capacity)
        .member_ttl(Duration::from_secs(ttl_secs))
        .start(SlowProcessor {
            id_delay,
            record,
            abort_on,
        })
        .await?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    terminate.recv().await;
    worker.shutdown().await?;
    if let Some(planner) = planner {
        planner.shutdown().await?;
    }
    Ok(())
}
