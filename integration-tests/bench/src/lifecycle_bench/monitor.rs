//! Runs the benchmark job and watches it from the outside: the job record every 100 ms (with the
//! assigner's counters and CPU use at the same instant), every write of the job record (one per
//! leader round that completed something), and the latency of one probe KV write every 100 ms
//! (how long any write waits in nats-server at that moment).

use super::cpu::{CpuSnapshot, find_nats_server};
use super::{JOB, job, job_deadline};
use anyhow::Context;
use async_nats::jetstream::kv;
use bytes::Bytes;
use elk_integration_tests::Stack;
use elk_protocol::decode;
use elk_protocol::messages::{JobRecord, JobState};
use elk_types::IdRange;
use futures::StreamExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// One observation of the running job.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    pub completed: u64,
    /// Partition keys that should exist: created minus compacted.
    pub live_keys: u64,
    pub kv_writes: u64,
    /// The assigner's KV writes by kind ([`WRITE_KINDS`]).
    pub kv_writes_by_kind: [u64; WRITE_KINDS.len()],
    pub progress_applied: u64,
    /// nats-server's message counters (`varz`): messages it received from clients, and sent to
    /// them; `None` when its monitoring port cannot be read.
    pub server_messages: Option<(u64, u64)>,
    pub cpu: CpuSnapshot,
}

/// The kinds of KV writes the throughput line breaks down, as (name, bucket, operation or
/// partition write kind).
pub(crate) const WRITE_KINDS: [&str; 8] = [
    "partitions_create",
    "partitions_update",
    "partitions_completed",
    "partitions_purge",
    "partitions_purge_range",
    "jobs_put",
    "assignments_put",
    "assignments_delete",
];

fn kv_writes_by_kind(metrics: &elk_assigner::AssignerMetrics) -> [u64; WRITE_KINDS.len()] {
    [
        metrics.partition_writes_of("create"),
        metrics.partition_writes_of("update"),
        metrics.partition_writes_of("completed"),
        metrics.kv_writes_of("partitions", "purge"),
        metrics.kv_writes_of("partitions", "purge_range"),
        metrics.kv_writes_of("jobs", "put"),
        metrics.kv_writes_of("assignments", "put"),
        metrics.kv_writes_of("assignments", "delete"),
    ]
}

/// `in_msgs` and `out_msgs` of the server's `varz`.
fn server_messages(stack: &Stack) -> Option<(u64, u64)> {
    let body = tokio::task::block_in_place(|| stack.server.monitor("varz"))?;
    let varz: serde_json::Value = serde_json::from_str(&body).ok()?;
    Some((varz["in_msgs"].as_u64()?, varz["out_msgs"].as_u64()?))
}

/// Everything observed while the job ran.
pub(crate) struct JobRun {
    pub started: Instant,
    pub samples: Vec<Sample>,
    /// When each write of the job record was seen, with its `partitions_completed`.
    pub rounds: Vec<(Instant, u64)>,
    /// Probe write latencies.
    pub probes: Vec<Duration>,
    pub job: JobRecord,
}

/// Creates the job (`partitions` one-ID partitions) and follows it until it is completed.
pub(crate) async fn run_job(
    stack: &Stack,
    metrics: &elk_assigner::AssignerMetrics,
    partitions: u64,
) -> anyhow::Result<JobRun> {
    let nats_pid = stack
        .server
        .store_dir()
        .and_then(|store| find_nats_server(&store));
    if nats_pid.is_none() {
        eprintln!("  (nats-server process not found: its CPU reads 0)");
    }
    let rounds = Arc::new(Mutex::new(Vec::new()));
    let mut watch = stack
        .resources
        .jobs
        .watch(JOB)
        .await
        .context("watch the job record")?;
    let round_log = rounds.clone();
    let watcher = tokio::spawn(async move {
        while let Some(Ok(entry)) = watch.next().await {
            if let Ok(record) = decode::<JobRecord>(&entry.value) {
                round_log
                    .lock()
                    .expect("round log")
                    .push((Instant::now(), record.partitions_completed));
                if record.state == JobState::Completed {
                    break;
                }
            }
        }
    });
    let probe_store = stack
        .resources
        .jetstream
        .create_key_value(kv::Config {
            bucket: "elk_bench_probe".to_owned(),
            history: 1,
            storage: async_nats::jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await
        .context("probe bucket")?;
    let probes = Arc::new(Mutex::new(Vec::new()));
    let probe_log = probes.clone();
    let prober = tokio::spawn(async move {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        loop {
            tick.tick().await;
            let started = Instant::now();
            if probe_store
                .put("probe", Bytes::from_static(b"x"))
                .await
                .is_ok()
            {
                probe_log.lock().expect("probe log").push(started.elapsed());
            }
        }
    });

    let sample = |record: &JobRecord| Sample {
        completed: record.partitions_completed,
        live_keys: record
            .partitions_total
            .saturating_sub(record.partitions_compacted),
        kv_writes: metrics.kv_write_count(),
        kv_writes_by_kind: kv_writes_by_kind(metrics),
        progress_applied: metrics.progress_reports("applied"),
        server_messages: server_messages(stack),
        cpu: CpuSnapshot::take(nats_pid),
    };
    let started = Instant::now();
    stack
        .create_job(JOB, IdRange::new(1, partitions)?, 1)
        .await
        .context("create the job")?;
    let deadline = started + job_deadline(partitions);
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    let mut reported = Instant::now();
    let outcome = loop {
        tick.tick().await;
        let Some(record) = job(stack).await? else {
            continue;
        };
        samples.push(sample(&record));
        if record.state == JobState::Completed {
            break Ok(record);
        }
        if Instant::now() > deadline {
            break Err(anyhow::anyhow!(
                "job not completed in time: {} of {partitions} partitions",
                record.partitions_completed
            ));
        }
        if reported.elapsed() >= Duration::from_secs(10) {
            eprintln!(
                "  {} of {partitions} completed after {:.1} s",
                record.partitions_completed,
                started.elapsed().as_secs_f64()
            );
            reported = Instant::now();
        }
    };
    prober.abort();
    let job = match outcome {
        Ok(job) => job,
        Err(error) => {
            watcher.abort();
            return Err(error);
        }
    };
    // The watcher ends on the completed record; never wait long for it.
    let _ = tokio::time::timeout(Duration::from_secs(5), watcher).await;
    let rounds = std::mem::take(&mut *rounds.lock().expect("round log"));
    let probes = std::mem::take(&mut *probes.lock().expect("probe log"));
    Ok(JobRun {
        started,
        samples,
        rounds,
        probes,
        job,
    })
}

/// Seconds from the job's creation to its completion, by the assigner's clock.
pub(crate) fn job_seconds(job: &JobRecord) -> Option<f64> {
    job.completed_unix_ms
        .map(|done| done.saturating_sub(job.created_unix_ms) as f64 / 1_000.0)
}
