//! `elk-bench chaos`: the real binaries as separate OS processes under random faults (issue 10,
//! item 2). Two replicas of every service (`elk-election`, `elk-assigner`, `elk-scaler`), five
//! `elk-recording-worker` processes that record every ID they process in files of their own, one
//! nats-server, each process behind a `TcpProxy` of its own; faults drawn from a seeded generator
//! (the seed is printed, `--seed` replays the same draw): SIGKILL of workers and of active and
//! standby service replicas (all started again), nats-server restarts on the same store, network
//! cuts. An `OwnershipAuditor` follows the namespace from before the first job.
//!
//! At the end (every fault healed, every process up, the job completed) it prints one line:
//! `{"bench":"chaos","faults":n,"faults_by_kind":{..},"ids_missing":n,"ids_repeated":n,
//!   "repeats_unexplained":n,"self_crashes":n,"auditor_violations":n,"job_seconds":f,...}` and
//! exits non-zero unless missing, unexplained repeats, self-crashes and auditor violations are
//! all 0 (see `verdict` for what explains a repeat). Progress goes to stderr; with `--keep-dir`
//! the processes' logs and record files stay on disk.

mod faults;
mod fleet;
mod verdict;

use crate::kv_reads::{read_job, read_lease};
use crate::procs::{Binaries, BinaryArgs};
use anyhow::{Context, bail};
use elk_nats::{AdminClient, NatsConfig, ProvisionConfig, Resources};
use elk_protocol::messages::{JobSpec, JobState, MembershipView, RoleLease};
use elk_protocol::names::{ControlRole, Names, VIEW_KEY};
use elk_testkit::OwnershipAuditor;
use elk_types::{IdRange, JobName, MemberId, Namespace};
use faults::Injector;
use fleet::{Fleet, FleetConfig};
use rand::SeedableRng;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

const NAMESPACE: &str = "chaos";
const CAPACITY: u32 = 2;

#[derive(Debug, clap::Args)]
pub struct ChaosArgs {
    /// CI run: at least 20 faults, 200,000 IDs in 50 partitions, about a minute.
    #[arg(long)]
    quick: bool,
    /// Seed of the fault draw [default: from the clock; printed either way].
    #[arg(long)]
    seed: Option<u64>,
    /// Faults to inject [default: 100; 20 with --quick].
    #[arg(long)]
    faults: Option<usize>,
    /// Worker processes (at least 5 for the run).
    #[arg(long, default_value_t = 5)]
    workers: usize,
    /// Replicas of every service.
    #[arg(long, default_value_t = 2)]
    replicas: usize,
    /// IDs of the first job [default: 1,000,000; 200,000 with --quick].
    #[arg(long)]
    ids: Option<u64>,
    /// IDs per partition [default: 10,000; 4,000 with --quick].
    #[arg(long)]
    partition_size: Option<u64>,
    /// Member TTL of every process (and the election lease TTL), whole seconds.
    #[arg(long, default_value_t = 2)]
    member_ttl_secs: u64,
    /// Mean pause between two faults, in milliseconds [default: 1,500; 1,000 with --quick];
    /// each pause is drawn uniformly between a third of it and 5/3 of it.
    #[arg(long)]
    fault_interval_ms: Option<u64>,
    /// Keep the run directory (process logs, record files) instead of deleting it.
    #[arg(long)]
    keep_dir: bool,
    #[command(flatten)]
    binaries: BinaryArgs,
}

/// The final line.
#[derive(Debug, Serialize)]
struct Line {
    bench: &'static str,
    faults: usize,
    faults_by_kind: BTreeMap<String, usize>,
    ids_missing: u64,
    ids_repeated: u64,
    repeats_unexplained: u64,
    self_crashes: usize,
    auditor_violations: u64,
    job_seconds: f64,
    seed: u64,
    quick: bool,
    jobs: usize,
    ids: u64,
    partitions: u64,
    workers: usize,
    replicas_per_service: usize,
    member_ttl_s: u64,
    extra_processings: u64,
    repeat_windows: u64,
    repeat_windows_explained: u64,
    repeats_by_cause: BTreeMap<String, u64>,
    overlaps: u64,
    lost_checkpoints: u64,
    auditor_settled: bool,
    auditor_problems: usize,
    run_seconds: f64,
}

/// The jobs of a run, created one after another while faults remain to inject.
struct Jobs {
    created: Vec<(JobName, IdRange)>,
    partition_size: u64,
}

pub fn run(arguments: &ChaosArgs) -> anyhow::Result<()> {
    let line = crate::procs::run_with_binaries(&arguments.binaries, |binaries| async move {
        run_chaos(arguments, &binaries).await
    })?;
    let mut output = std::io::stdout().lock();
    writeln!(output, "{}", serde_json::to_string(&line)?)?;
    output.flush()?;
    let mut failures = Vec::new();
    if line.ids_missing > 0 {
        failures.push(format!("{} IDs missing", line.ids_missing));
    }
    if line.repeats_unexplained > 0 {
        failures.push(format!("{} unexplained repeats", line.repeats_unexplained));
    }
    if line.self_crashes > 0 {
        failures.push(format!("{} self-crashes", line.self_crashes));
    }
    if line.auditor_violations > 0 {
        failures.push(format!("{} auditor violations", line.auditor_violations));
    }
    if !line.auditor_settled {
        failures.push("the auditor did not catch up".to_owned());
    }
    let wanted = fault_target(arguments);
    if line.faults < wanted {
        failures.push(format!("only {} of {wanted} faults", line.faults));
    }
    if !failures.is_empty() {
        bail!(
            "chaos run failed (seed {}): {}",
            line.seed,
            failures.join(", ")
        );
    }
    Ok(())
}

fn fault_target(arguments: &ChaosArgs) -> usize {
    arguments
        .faults
        .unwrap_or(if arguments.quick { 20 } else { 100 })
}

async fn run_chaos(arguments: &ChaosArgs, binaries: &Binaries) -> anyhow::Result<Line> {
    let started = Instant::now();
    let quick = arguments.quick;
    let seed = arguments.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    let target = fault_target(arguments);
    let interval = Duration::from_millis(arguments.fault_interval_ms.unwrap_or(if quick {
        1_000
    } else {
        1_500
    }));
    let pauses = (interval / 3, interval * 5 / 3);
    let ids = arguments
        .ids
        .unwrap_or(if quick { 200_000 } else { 1_000_000 });
    let partition_size = arguments
        .partition_size
        .unwrap_or(if quick { 4_000 } else { 10_000 });
    let member_ttl = Duration::from_secs(arguments.member_ttl_secs.max(1));
    // Pace the workers so the first job lasts about 80 % of the fault schedule at full capacity
    // (kills slow it down); should it finish first, the next job takes the remaining faults.
    let slots = arguments.workers as f64 * f64::from(CAPACITY);
    let schedule = interval.as_secs_f64() * target as f64;
    let id_cost_us = slots * schedule * 0.8 * 1e6 / ids as f64;
    eprintln!(
        "chaos: seed {seed}, {target} faults about every {interval:?}, {} workers × {CAPACITY}, \
         {} replicas per service, member TTL {member_ttl:?}, {ids} IDs in partitions of \
         {partition_size} at {id_cost_us:.0} µs per ID",
        arguments.workers, arguments.replicas
    );

    let run_dir = tempfile::Builder::new().prefix("elk-chaos-").tempdir()?;
    let config = FleetConfig {
        namespace: NAMESPACE.to_owned(),
        workers: arguments.workers,
        replicas: arguments.replicas,
        capacity: CAPACITY,
        member_ttl,
        id_cost_us,
    };
    let mut fleet = Fleet::new(&config, binaries, run_dir.path())?;
    let namespace = Namespace::new(NAMESPACE)?;
    let client = elk_nats::connect(&NatsConfig::new(fleet.server.url(), "elk-bench-chaos")).await?;
    let resources = elk_nats::provision(
        client,
        Names::new(namespace.clone()),
        &ProvisionConfig::default(),
    )
    .await?;
    // The auditor reaches the server directly (never cut) and follows from before any work.
    let auditor = OwnershipAuditor::start(fleet.server.url(), &namespace).await?;
    fleet.start_all()?;
    wait_ready(&resources, arguments.workers, Duration::from_secs(120)).await?;
    eprintln!(
        "chaos: {} processes up after {:.1} s",
        fleet.members.len(),
        started.elapsed().as_secs_f64()
    );

    let admin = AdminClient::new(resources.client.clone(), resources.names.clone())
        .with_patience(Duration::from_secs(60));
    let mut jobs = Jobs {
        created: Vec::new(),
        partition_size,
    };
    create_job(&admin, &mut jobs, ids).await?;

    let mut injector = Injector::new(rand::rngs::StdRng::seed_from_u64(seed), member_ttl);
    let mut next_fault = Instant::now() + injector.pause(pauses);
    let mut next_job_check = Instant::now();
    let mut last_report = Instant::now();
    // Generous: the whole schedule, then the job at a fraction of its pace, plus start-ups.
    let deadline = Instant::now() + Duration::from_secs_f64(schedule * 4.0 + 300.0);
    loop {
        fleet.tick()?;
        let now = Instant::now();
        let done = injector.log.len() >= target;
        if !done && now >= next_fault {
            if let Some(fault) = injector.inject(&mut fleet, &resources).await? {
                eprintln!(
                    "[{:>6.1} s] fault {}: {} {}",
                    started.elapsed().as_secs_f64(),
                    injector.log.len(),
                    fault.kind,
                    fault.target.as_deref().unwrap_or("")
                );
                if injector.log.len() >= target {
                    eprintln!("chaos: {target} faults injected; healing everything");
                    fleet.heal_all()?;
                }
            }
            next_fault = Instant::now() + injector.pause(pauses);
        }
        if now >= next_job_check && !fleet.nats_is_down() {
            next_job_check = now + Duration::from_millis(500);
            let (name, _) = jobs.created.last().expect("a job exists").clone();
            if let Some(job) = read_job(&resources, name.as_str()).await {
                if job.state == JobState::Completed {
                    eprintln!(
                        "[{:>6.1} s] job {name} completed",
                        started.elapsed().as_secs_f64()
                    );
                    if done {
                        break;
                    }
                    let remaining = (target - injector.log.len()) as f64 / target as f64;
                    let next_ids = ((ids as f64 * remaining) as u64).max(10 * partition_size);
                    create_job(&admin, &mut jobs, next_ids).await?;
                } else if last_report.elapsed() >= Duration::from_secs(10) {
                    last_report = Instant::now();
                    eprintln!(
                        "[{:>6.1} s] job {name}: {} of {} partitions completed, {} faults so far",
                        started.elapsed().as_secs_f64(),
                        job.partitions_completed,
                        job.partitions_total,
                        injector.log.len()
                    );
                }
            }
        }
        if now >= deadline {
            fleet.kill_all().await;
            bail!("chaos run did not finish in time (seed {seed})");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let job_seconds = job_seconds(&resources, &jobs).await?;

    let report = auditor.check().await;
    eprintln!("chaos: {}", report.summary());
    fleet.kill_all().await;
    let counts = verdict::read_records(&fleet.record_dir, &jobs.created)?;
    let verdict = verdict::judge(&counts, &report, &injector.log);
    for (job, id, count) in &verdict.unexplained_sample {
        eprintln!("unexplained: job {job} id {id} processed {count} times");
    }
    for overlap in report.overlaps.iter().take(5) {
        eprintln!("overlap: {}", report.describe_overlap(overlap));
    }
    for crash in &fleet.self_crashes {
        let at = crash
            .at
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        eprintln!(
            "self-crash: {} ({}) at unix {:.3}",
            crash.name,
            crash.status,
            at.as_secs_f64()
        );
    }
    for problem in report.problems.iter().take(5) {
        eprintln!("auditor problem: {problem}");
    }
    let mut faults_by_kind = BTreeMap::new();
    for fault in &injector.log {
        *faults_by_kind.entry(fault.kind.clone()).or_default() += 1;
    }
    if arguments.keep_dir {
        let kept = run_dir.keep();
        eprintln!("chaos: logs and records kept in {}", kept.display());
    }
    Ok(Line {
        bench: "chaos",
        faults: injector.log.len(),
        faults_by_kind,
        ids_missing: verdict.ids_missing,
        ids_repeated: verdict.ids_repeated,
        repeats_unexplained: verdict.repeats_unexplained,
        self_crashes: fleet.self_crashes.len(),
        auditor_violations: verdict.overlaps + verdict.lost_checkpoints,
        job_seconds,
        seed,
        quick,
        jobs: jobs.created.len(),
        ids: jobs.created.iter().map(|(_, range)| range.len()).sum(),
        partitions: jobs
            .created
            .iter()
            .map(|(_, range)| range.len().div_ceil(jobs.partition_size))
            .sum(),
        workers: arguments.workers,
        replicas_per_service: arguments.replicas,
        member_ttl_s: member_ttl.as_secs(),
        extra_processings: verdict.extra_processings,
        repeat_windows: verdict.repeat_windows,
        repeat_windows_explained: verdict.repeat_windows_explained,
        repeats_by_cause: verdict.repeats_by_cause,
        overlaps: verdict.overlaps,
        lost_checkpoints: verdict.lost_checkpoints,
        auditor_settled: report.settled,
        auditor_problems: report.problems.len(),
        run_seconds: (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    })
}

/// Waits until the view lists every worker and both roles have a holder.
async fn wait_ready(
    resources: &Resources,
    workers: usize,
    deadline: Duration,
) -> anyhow::Result<()> {
    let wanted: Vec<MemberId> = (1..=workers)
        .map(|index| MemberId::new(format!("worker-{index}")))
        .collect::<Result<_, _>>()?;
    elk_testkit::wait_until("every process joined", deadline, || async {
        let view = read_lease::<MembershipView>(resources, VIEW_KEY).await;
        let roles_held = futures::future::join_all(
            ControlRole::ALL.map(|role| read_lease::<RoleLease>(resources, role.lease_key())),
        )
        .await
        .into_iter()
        .all(|lease| lease.is_some_and(|lease| lease.holder.is_some()));
        roles_held && view.is_some_and(|view| wanted.iter().all(|id| view.member(id).is_some()))
    })
    .await?;
    Ok(())
}

async fn create_job(admin: &AdminClient, jobs: &mut Jobs, ids: u64) -> anyhow::Result<()> {
    let first = jobs.created.last().map_or(1, |(_, range)| range.last() + 1);
    let range = IdRange::new(first, first + ids - 1)?;
    let name = JobName::new(format!("chaos-{}", jobs.created.len() + 1))?;
    admin
        .create_job(name.clone(), JobSpec::fixed(range, jobs.partition_size))
        .await
        .with_context(|| format!("create job {name}"))?;
    eprintln!("chaos: job {name} created over {range}");
    jobs.created.push((name, range));
    Ok(())
}

/// From the first job's creation to the last one's completion, by the assigner's clock.
async fn job_seconds(resources: &Resources, jobs: &Jobs) -> anyhow::Result<f64> {
    let (first, _) = jobs.created.first().context("no job")?;
    let (last, _) = jobs.created.last().context("no job")?;
    let created = read_job(resources, first.as_str())
        .await
        .context("first job record")?
        .created_unix_ms;
    let completed = read_job(resources, last.as_str())
        .await
        .and_then(|job| job.completed_unix_ms)
        .context("last job not completed")?;
    Ok(completed.saturating_sub(created) as f64 / 1_000.0)
}
