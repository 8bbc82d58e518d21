//! `elk-bench scale`: 500 / 1,000 (and, on request, 10,000) live workers and a 100,000-partition
//! job on one local nats-server (issue 10, item 3; ARCHITECTURE §5 "scale").
//!
//! The election and the assigner run as separate processes (the real binaries), so the
//! assigner's RSS is its own; the workers are SDK instances in this process, **each with its own
//! NATS connection**, sharing a few coordination runtimes (`WorkerBuilder::coordination_runtime`).
//! Their processor holds every partition it runs until the benchmark lets them all complete.
//!
//! Phases, each observed on the assignments bucket (`tally`):
//! 1. **fleet start**: N workers join (50 at a time); the view lists them all. Then 5 s of idle
//!    CPU (renewals only) per component.
//! 2. **cold start**: the job is created → every partition granted to a live worker and balanced
//!    (every worker holds `floor(P / N)` or `ceil(P / N)`): `cold_start_ms`; the assigner's RSS
//!    before the job and with every partition live give `assigner_bytes_per_partition` (and 5 s
//!    later, the cold start's transient memory freed, `assigner_settled_bytes_per_partition`). CPU per
//!    component (nats-server, assigner, election, this process) is reported for the idle fleet,
//!    the cold start and the completion.
//! 3. **join**: N/10 workers start at once → balanced over the larger fleet: `join_balanced_ms`,
//!    `join_moves` (partitions whose owner changed) against `join_min_moves`.
//! 4. **kill**: N/10 of the original workers are killed (connection dropped, nothing released) →
//!    each of their partitions granted to a live worker again: `reclaim_p50_ms`, `reclaim_p99_ms`
//!    (from the kill), then balanced: `kill_balanced_ms`, `kill_moves`.
//! 5. **completion**: every processor completes → the job record says `completed`:
//!    `completion_ms`.
//!
//! One line per worker count: `{"bench":"scale","workers":n,"partitions":n,"cold_start_ms":f,
//! "reclaim_p99_ms":f,"assigner_bytes_per_partition":f,...}`. A phase that fails ends the line
//! with `"error"` (so a 10,000-worker attempt reports how far it got and why).

mod tally;

/// How long after the cold start the assigner's RSS is read again (`assigner_rss_settled_bytes`).
const SETTLE: Duration = Duration::from_secs(5);

use crate::follow::Follows;
use crate::kv_reads::{read_job, read_lease};
use crate::lifecycle_bench::cpu::{find_nats_server, process_ticks};
use crate::lifecycle_bench::{print_line, round};
use crate::procs::{ASSIGNER, Binaries, BinaryArgs, ELECTION, Process, rss_bytes, service_spec};
use anyhow::Context;
use elk_nats::{AdminClient, NatsConfig, ProvisionConfig, Resources};
use elk_protocol::messages::{JobSpec, JobState, MembershipView, RoleLease};
use elk_protocol::names::{ControlRole, Names, VIEW_KEY};
use elk_testkit::NatsServer;
use elk_types::{IdRange, JobName, MemberId, Namespace};
use elk_worker::{
    CoordinationRuntime, PartitionWork, ProcessError, ProcessOutcome, Processor, Worker,
    WorkerHandle,
};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use std::path::Path;
use std::time::{Duration, Instant};
use tally::GrantTally;
use tokio::sync::watch;

const NAMESPACE: &str = "scale";
const JOB: &str = "scale";
/// Workers started at once.
const START_CONCURRENCY: usize = 50;
/// Workers per shared coordination runtime (thread).
const WORKERS_PER_RUNTIME: usize = 250;

#[derive(Debug, clap::Args)]
pub struct ScaleArgs {
    /// Live worker counts, one run each (repeatable) [default: 500 and 1,000; 50 with --quick].
    #[arg(long = "workers")]
    workers: Vec<usize>,
    /// Partitions of the job [default: 100,000; 2,000 with --quick].
    #[arg(long)]
    partitions: Option<u64>,
    /// Smoke run: 50 workers, 2,000 partitions.
    #[arg(long)]
    quick: bool,
    /// Longest wait of one phase, in seconds (beyond 100,000 partitions 10 ms more per
    /// partition): a 10,000-worker attempt reports where it stops without waiting 15 minutes.
    #[arg(long, value_name = "SECONDS", default_value_t = 900)]
    phase_timeout: u64,
    /// Member TTL of every worker and service, in seconds: renewals per second are
    /// `3 × workers ÷ TTL`, and a killed worker's partitions are reclaimed about one TTL later.
    #[arg(long, value_name = "SECONDS", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    member_ttl: u64,
    #[command(flatten)]
    binaries: BinaryArgs,
}

/// One output line; `None` fields were not reached.
#[derive(Debug, Default, Serialize)]
struct Line {
    bench: &'static str,
    workers: usize,
    partitions: u64,
    cold_start_ms: Option<f64>,
    reclaim_p99_ms: Option<f64>,
    assigner_bytes_per_partition: Option<f64>,
    /// The same 5 s later, nothing else happening: what the live partitions keep once the cold
    /// start's round (its change set, its writes in flight) is over and freed.
    assigner_settled_bytes_per_partition: Option<f64>,
    worker_capacity: u32,
    fleet_start_s: Option<f64>,
    view_bytes: Option<usize>,
    renewals_per_s: f64,
    /// CPU in cores (1.0 = one core busy) over 5 s with nothing to do but renew memberships,
    /// then during the cold start and during the completion.
    idle_cpu: Option<Cores>,
    cold_start_cpu: Option<Cores>,
    completion_cpu: Option<Cores>,
    /// Mean size of a worker's assignment record with every partition granted.
    record_bytes_mean: Option<usize>,
    join_workers: usize,
    join_balanced_ms: Option<f64>,
    join_moves: Option<usize>,
    join_min_moves: Option<u64>,
    kill_workers: usize,
    kill_orphans: Option<usize>,
    reclaim_p50_ms: Option<f64>,
    reclaim_max_ms: Option<f64>,
    kill_balanced_ms: Option<f64>,
    kill_moves: Option<usize>,
    completion_ms: Option<f64>,
    assigner_rss_idle_bytes: Option<u64>,
    assigner_rss_loaded_bytes: Option<u64>,
    assigner_rss_settled_bytes: Option<u64>,
    assigner_rss_end_bytes: Option<u64>,
    nats_rss_loaded_bytes: Option<u64>,
    nats_rss_end_bytes: Option<u64>,
    worker_sdk_rss_each_bytes: Option<u64>,
    member_ttl_s: u64,
    quick: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

pub fn run(arguments: &ScaleArgs) -> anyhow::Result<()> {
    crate::init_logging();
    let binaries = Binaries::prepare(&arguments.binaries)?;
    let quick = arguments.quick;
    let counts = if !arguments.workers.is_empty() {
        arguments.workers.clone()
    } else if quick {
        vec![50]
    } else {
        vec![500, 1_000]
    };
    let partitions = arguments
        .partitions
        .unwrap_or(if quick { 2_000 } else { 100_000 });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let member_ttl = Duration::from_secs(arguments.member_ttl);
    let mut failed = Vec::new();
    for workers in counts {
        eprintln!("== scale: {workers} workers × {partitions} partitions ==");
        let mut line = Line {
            bench: "scale",
            workers,
            partitions,
            renewals_per_s: workers as f64 * 3.0 / member_ttl.as_secs_f64(),
            member_ttl_s: member_ttl.as_secs(),
            quick,
            ..Line::default()
        };
        let run_dir = tempfile::Builder::new().prefix("elk-scale-").tempdir()?;
        let phase = Duration::from_secs(arguments.phase_timeout);
        let outcome = runtime.block_on(run_one(
            &binaries,
            run_dir.path(),
            phase,
            member_ttl,
            &mut line,
        ));
        if let Err(error) = outcome {
            // The services' logs say why a phase did not finish.
            let kept = run_dir.keep();
            eprintln!(
                "scale {workers}: {error:#} (logs kept in {})",
                kept.display()
            );
            line.error = Some(format!("{error:#}"));
            failed.push(workers);
        }
        print_line(&line)?;
    }
    runtime.shutdown_timeout(Duration::from_secs(2));
    anyhow::ensure!(failed.is_empty(), "scale runs failed at {failed:?} workers");
    Ok(())
}

/// Holds every partition it runs until `finish` turns true (then completes it) or the worker
/// revokes it. Waits on the cancellation token only, with no timer, so 100,000 held partitions
/// cost nothing while they wait.
#[derive(Clone)]
struct HoldUntilFinished {
    finish: watch::Receiver<bool>,
}

impl Processor for HoldUntilFinished {
    async fn process(&self, work: PartitionWork) -> Result<ProcessOutcome, ProcessError> {
        let mut finish = self.finish.clone();
        let cancellation = work.cancellation();
        tokio::select! {
            () = cancellation.cancelled() => Ok(ProcessOutcome::Interrupted),
            _ = finish.wait_for(|finish| *finish) => Ok(ProcessOutcome::Completed),
        }
    }
}

/// The workers of one run and how to start more.
struct Fleet {
    namespace: Namespace,
    url: String,
    capacity: u32,
    member_ttl: Duration,
    processor: HoldUntilFinished,
    runtimes: Vec<CoordinationRuntime>,
    started: usize,
}

impl Fleet {
    /// Starts `count` workers named `worker-<n>`, `START_CONCURRENCY` at a time.
    async fn start(&mut self, count: usize) -> anyhow::Result<Vec<WorkerHandle>> {
        let first = self.started;
        self.started += count;
        let needed = self.started.div_ceil(WORKERS_PER_RUNTIME);
        while self.runtimes.len() < needed {
            let name = format!("elk-worker-{}", self.runtimes.len());
            self.runtimes.push(CoordinationRuntime::start(&name)?);
        }
        let this = &*self;
        futures::stream::iter(first..first + count)
            .map(|index| async move {
                let id = MemberId::new(format!("worker-{index}"))?;
                let worker = Worker::builder(this.namespace.clone(), id)
                    .nats_url(&this.url)
                    .capacity(this.capacity)
                    .member_ttl(this.member_ttl)
                    .coordination_runtime(this.runtimes[index / WORKERS_PER_RUNTIME].clone())
                    .start(this.processor.clone())
                    .await
                    .with_context(|| format!("start worker-{index}"))?;
                if (index + 1) % 500 == 0 {
                    eprintln!("  {} workers started", index + 1);
                }
                anyhow::Ok(worker)
            })
            .buffer_unordered(START_CONCURRENCY)
            .try_collect()
            .await
    }
}

async fn run_one(
    binaries: &Binaries,
    run_dir: &Path,
    phase: Duration,
    member_ttl: Duration,
    line: &mut Line,
) -> anyhow::Result<()> {
    let workers = line.workers;
    let partitions = line.partitions;
    let deadline = |partitions: u64| phase_deadline(phase, partitions);
    let server = NatsServer::builder().start()?;
    let nats_pid = server
        .store_dir()
        .and_then(|store| find_nats_server(&store));
    let client = elk_nats::connect(&NatsConfig::new(server.url(), "elk-bench-scale")).await?;
    let namespace = Namespace::new(NAMESPACE)?;
    let resources = elk_nats::provision(
        client,
        Names::new(namespace.clone()),
        &ProvisionConfig::default(),
    )
    .await?;
    let service = |binary: &str| {
        let id = format!("{}-1", binary.trim_start_matches("elk-"));
        let ttl = format!("{}s", member_ttl.as_secs());
        service_spec(binaries, binary, server.url(), NAMESPACE, &id, run_dir)
            .with_args(&["--member-ttl", &ttl])
    };
    let election = Process::spawn(&service(ELECTION))?;
    // The whole job live at once (the default backlog bound would cut 10,000 keys at a time).
    let backlog = (
        "ELK_ASSIGNER__MAX_JOB_BACKLOG".to_owned(),
        partitions.to_string(),
    );
    let mut assigner_spec = service(ASSIGNER);
    assigner_spec.env.push(backlog);
    let assigner = Process::spawn(&assigner_spec)?;
    let mut tally = GrantTally::follow(&resources.assignments, partitions).await?;

    // Room for every partition even after 10 % of the workers are killed.
    let capacity = (partitions as f64 / (2.0 * 0.85 * workers as f64)).ceil() as u32;
    line.worker_capacity = capacity;
    let (finish, finish_rx) = watch::channel(false);
    let mut fleet = Fleet {
        namespace: namespace.clone(),
        url: server.url().to_owned(),
        capacity,
        member_ttl,
        processor: HoldUntilFinished { finish: finish_rx },
        runtimes: Vec::new(),
        started: 0,
    };
    let rss_before = rss_bytes(std::process::id());
    let starting = Instant::now();
    let mut live = fleet.start(workers).await?;
    wait_view(&resources, workers, phase).await?;
    line.fleet_start_s = Some(round(starting.elapsed().as_secs_f64(), 2));
    line.worker_sdk_rss_each_bytes = rss_before
        .zip(rss_bytes(std::process::id()))
        .map(|(before, after)| after.saturating_sub(before) / workers as u64);
    line.view_bytes = elk_nats::read_entry(&resources.leases, VIEW_KEY)
        .await?
        .map(|entry| entry.value.len());
    eprintln!(
        "  {workers} workers in the view after {:.1} s",
        starting.elapsed().as_secs_f64()
    );
    wait_leader(&resources, Duration::from_secs(60)).await?;
    let cpu = CpuMeter {
        pids: [
            nats_pid.unwrap_or(0),
            assigner.pid(),
            election.pid(),
            std::process::id(),
        ],
    };
    let idle = cpu.sample();
    tokio::time::sleep(Duration::from_secs(5)).await;
    line.idle_cpu = Some(cpu.since(idle));
    line.assigner_rss_idle_bytes = assigner.rss_bytes();

    // Cold start.
    let admin = AdminClient::new(resources.client.clone(), resources.names.clone())
        .with_patience(Duration::from_secs(60));
    let created = Instant::now();
    let cold = cpu.sample();
    admin
        .create_job(
            JobName::new(JOB)?,
            JobSpec::fixed(IdRange::new(1, partitions)?, 1),
        )
        .await?;
    let balanced = tally
        .wait_for(
            "every partition granted and balanced",
            deadline(partitions),
            |t| t.balanced(workers),
        )
        .await?;
    line.cold_start_ms = Some(millis(balanced - created));
    line.cold_start_cpu = Some(cpu.since(cold));
    line.record_bytes_mean = Some(tally.record_bytes_mean());
    eprintln!("  cold start: {:.0} ms", millis(balanced - created));
    line.assigner_rss_loaded_bytes = assigner.rss_bytes();
    line.nats_rss_loaded_bytes = nats_pid.and_then(rss_bytes);
    line.assigner_bytes_per_partition = line
        .assigner_rss_idle_bytes
        .zip(line.assigner_rss_loaded_bytes)
        .map(|(idle, loaded)| round(loaded.saturating_sub(idle) as f64 / partitions as f64, 1));
    // Settled: the same partitions 5 s later, the cold start's transient memory freed.
    tokio::time::sleep(SETTLE).await;
    line.assigner_rss_settled_bytes = assigner.rss_bytes();
    line.assigner_settled_bytes_per_partition = line
        .assigner_rss_idle_bytes
        .zip(line.assigner_rss_settled_bytes)
        .map(|(idle, settled)| round(settled.saturating_sub(idle) as f64 / partitions as f64, 1));

    // 10 % join under load.
    let joining = workers / 10;
    line.join_workers = joining;
    let before = tally.owners();
    let join_started = Instant::now();
    let joined = fleet.start(joining).await?;
    live.extend(joined);
    let balanced = tally
        .wait_for("balanced after the join", deadline(partitions), |t| {
            t.balanced(workers + joining)
        })
        .await?;
    line.join_balanced_ms = Some(millis(balanced - join_started));
    line.join_moves = Some(tally.moved_since(&before));
    // Each newcomer must end up with at least floor(P / live) partitions.
    line.join_min_moves = Some(joining as u64 * (partitions / (workers + joining) as u64));
    eprintln!(
        "  join of {joining}: balanced after {:.0} ms, {} moves",
        millis(balanced - join_started),
        tally.moved_since(&before)
    );

    // 10 % kill under load.
    let killing = workers / 10;
    line.kill_workers = killing;
    let victims: Vec<WorkerHandle> = live.drain(..killing).collect();
    let victim_ids: Vec<String> = victims.iter().map(|w| w.id().to_string()).collect();
    let before = tally.owners();
    let killed = Instant::now();
    futures::future::join_all(victims.into_iter().map(WorkerHandle::kill)).await;
    line.kill_orphans = Some(tally.kill(&victim_ids));
    let live_count = workers + joining - killing;
    tally
        .wait_for(
            "the killed workers' partitions granted again",
            deadline(partitions),
            GrantTally::all_reclaimed,
        )
        .await?;
    let mut reclaims: Vec<f64> = tally
        .reclaim_times()
        .into_iter()
        .map(|at| millis(at - killed))
        .collect();
    reclaims.sort_by(f64::total_cmp);
    line.reclaim_p50_ms = percentile(&reclaims, 50.0);
    line.reclaim_p99_ms = percentile(&reclaims, 99.0);
    line.reclaim_max_ms = reclaims.last().copied();
    let balanced = tally
        .wait_for("balanced after the kill", deadline(partitions), |t| {
            t.balanced(live_count)
        })
        .await?;
    line.kill_balanced_ms = Some(millis(balanced - killed));
    line.kill_moves = Some(tally.moved_since(&before));
    eprintln!(
        "  kill of {killing}: {} orphans, reclaim p99 {:.0} ms, balanced after {:.0} ms",
        line.kill_orphans.unwrap_or(0),
        line.reclaim_p99_ms.unwrap_or(0.0),
        millis(balanced - killed)
    );

    // Completion.
    let released = Instant::now();
    let completing = cpu.sample();
    finish.send_replace(true);
    wait_completed(&resources, deadline(partitions)).await?;
    line.completion_ms = Some(millis(released.elapsed()));
    line.completion_cpu = Some(cpu.since(completing));
    line.assigner_rss_end_bytes = assigner.rss_bytes();
    line.nats_rss_end_bytes = nats_pid.and_then(rss_bytes);
    eprintln!("  completion: {:.0} ms", millis(released.elapsed()));

    drop(live);
    assigner.kill().await;
    election.kill().await;
    Ok(())
}

/// CPU used by each component, in cores.
#[derive(Debug, Clone, Copy, Serialize)]
struct Cores {
    nats: f64,
    assigner: f64,
    election: f64,
    /// This process: the workers (and the benchmark's own watch).
    workers: f64,
}

/// Cumulative CPU ticks of the run's processes, to compute [`Cores`] between two samples.
struct CpuMeter {
    pids: [u32; 4],
}

impl CpuMeter {
    fn sample(&self) -> (Instant, [u64; 4]) {
        let ticks = self
            .pids
            .map(|pid| process_ticks(&format!("/proc/{pid}/stat")).unwrap_or(0));
        (Instant::now(), ticks)
    }

    fn since(&self, (then, before): (Instant, [u64; 4])) -> Cores {
        let (now, after) = self.sample();
        let seconds = (now - then).as_secs_f64().max(1e-3);
        let cores = |index: usize| {
            round(
                after[index].saturating_sub(before[index]) as f64 / 100.0 / seconds,
                3,
            )
        };
        Cores {
            nats: cores(0),
            assigner: cores(1),
            election: cores(2),
            workers: cores(3),
        }
    }
}

async fn wait_view(resources: &Resources, workers: usize, within: Duration) -> anyhow::Result<()> {
    elk_testkit::wait_until("every worker in the view", within, || async {
        read_lease::<MembershipView>(resources, VIEW_KEY)
            .await
            .is_some_and(|view| view.workers().count() >= workers)
    })
    .await?;
    Ok(())
}

async fn wait_leader(resources: &Resources, within: Duration) -> anyhow::Result<()> {
    elk_testkit::wait_until("an assigner leader", within, || async {
        read_lease::<RoleLease>(resources, ControlRole::Assigner.lease_key())
            .await
            .is_some_and(|lease| lease.holder.is_some())
    })
    .await?;
    Ok(())
}

async fn wait_completed(resources: &Resources, within: Duration) -> anyhow::Result<()> {
    elk_testkit::wait_until("the job completed", within, || async {
        read_job(resources, JOB)
            .await
            .is_some_and(|job| job.state == JobState::Completed)
    })
    .await?;
    Ok(())
}

/// The bound of one phase: `phase` (15 minutes by default), and more for jobs beyond 100,000
/// partitions.
fn phase_deadline(phase: Duration, partitions: u64) -> Duration {
    phase + Duration::from_millis(partitions.saturating_sub(100_000) * 10)
}

fn millis(duration: Duration) -> f64 {
    round(duration.as_secs_f64() * 1_000.0, 1)
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}
