//! `elk-bench memory`: memory that never grows (issue 10, item 5; ARCHITECTURE §5 "memory").
//! Every measured component is a process of its own (the real `elk-election`, two `elk-assigner`
//! replicas, `elk-recording-worker` processes), so each RSS (`VmRSS`) is that component's alone.
//!
//! 1. **Idle worker**: one worker process that joins and gets nothing to do (it only takes a job
//!    that never exists); its highest RSS over 5 s after joining: `idle_worker_rss_bytes`.
//! 2. **Processed partitions**: four no-op workers (capacity 4) process 1,000,000 one-ID
//!    partitions as consecutive jobs of 50,000. After each job the RSS of the leading assigner
//!    and of every worker is read; the first 10 % of the partitions are the warm-up. Drift =
//!    (RSS at the end − RSS after the warm-up) ÷ RSS after the warm-up; `rss_drift_pct` is the
//!    largest of the assigner's and the workers'.
//! 3. **Leader switches**: with a job running (two paced workers checkpointing every second), the
//!    assigner role is moved to the other replica with the election's `transfer` verb, as an
//!    operator would (`--switch-by transfer`, the default); the new holder loads the state and
//!    serves (`stats` answered under the new epoch), then the next switch moves it back. After
//!    every switch the RSS of both replicas is read; `rss_growth_after_switches_bytes` = the
//!    larger replica growth from the median of the 10 readings after the warm-up (10 % of the
//!    switches) to the median of the last 10.
//!    `--switch-by member-loss` forces each switch by deleting the leader's member key instead:
//!    the replica stays up, loses its membership at its next renewal and re-joins under a new
//!    incarnation. A switch is then any new term (higher epoch, another holder incarnation), not
//!    necessarily the other replica: when the deposed replica re-joined before the election
//!    wrote the view without it, the view lists it live, and the designation rule (smallest live
//!    id of the role, `elk_election::roles`) names it again (`releads_by_deposed`). Waiting for
//!    "the other replica" is what made the first version of this benchmark time out.
//!
//! One line: `{"bench":"memory","leader_switches":n,"rss_growth_after_switches_bytes":n,
//! "idle_worker_rss_bytes":n,"rss_drift_pct":f,...}`.

use crate::kv_reads::{read_job, read_lease};
use crate::lifecycle_bench::cpu::find_nats_server;
use crate::lifecycle_bench::{print_line, round};
use crate::procs::{
    ASSIGNER, Binaries, BinaryArgs, ELECTION, Process, RECORDING_WORKER, Spec, rss_bytes,
    service_spec, status_bytes,
};
use anyhow::Context;
use elk_nats::{AdminClient, NatsConfig, ProvisionConfig, Resources};
use elk_protocol::decode;
use elk_protocol::messages::{JobSpec, JobState, MemberRecord, MembershipView, RoleLease};
use elk_protocol::names::{ControlRole, Names, VIEW_KEY};
use elk_testkit::{NatsServer, wait_until};
use elk_types::{IdRange, Incarnation, JobName, MemberId, Namespace};
use serde::Serialize;
use std::time::{Duration, Instant};

const NAMESPACE: &str = "memory";
const ASSIGNERS: [&str; 2] = ["assigner-1", "assigner-2"];
/// Partitions per job of the processing phase.
const JOB_PARTITIONS: u64 = 50_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    /// The idle worker's RSS.
    Idle,
    /// RSS drift across processed partitions.
    Drift,
    /// RSS growth across leader switches.
    Switches,
}

/// How the leader-switch phase moves the assigner role.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum SwitchBy {
    /// `transfer` to the other replica (the election's admin verb, as an operator would):
    /// every switch moves the role to the other process, which loads the state and serves.
    #[default]
    Transfer,
    /// Delete the leader's member key: the replica loses its membership at its next renewal and
    /// re-joins under a new incarnation; the election designates a holder from the view it
    /// writes, which may be the same replica again (counted in `releads_by_deposed`).
    MemberLoss,
}

#[derive(Debug, clap::Args)]
pub struct MemoryArgs {
    /// Phase to run (repeatable) [default: all]; the fields of the others read 0.
    #[arg(long = "phase", value_enum)]
    phases: Vec<Phase>,
    /// Leader switches [default: 1,000; 40 with --quick].
    #[arg(long)]
    switches: Option<usize>,
    /// Partitions processed in the drift phase [default: 1,000,000; 100,000 with --quick].
    #[arg(long)]
    partitions: Option<u64>,
    /// Smoke run: 40 switches, 100,000 partitions.
    #[arg(long)]
    quick: bool,
    /// How a leader switch is forced.
    #[arg(long, value_enum, default_value_t = SwitchBy::Transfer)]
    switch_by: SwitchBy,
    /// Keep the directory of the process logs (it is always kept when the run fails).
    #[arg(long)]
    keep_dir: bool,
    #[command(flatten)]
    binaries: BinaryArgs,
}

#[derive(Debug, Default, Serialize)]
struct Line {
    bench: &'static str,
    leader_switches: usize,
    rss_growth_after_switches_bytes: i64,
    idle_worker_rss_bytes: u64,
    rss_drift_pct: f64,
    idle_worker_rss_anon_bytes: u64,
    idle_worker_rss_file_bytes: u64,
    /// The directory of the measured binaries (`debug`, `release`): code pages count in RSS.
    binaries: String,
    assigner_rss_after_warmup_bytes: u64,
    assigner_rss_after_switches_bytes: u64,
    switch_ms_p50: f64,
    switch_ms_max: f64,
    switch_by: SwitchBy,
    /// `--switch-by member-loss`: switches after which the deposed replica, re-joined under a
    /// new incarnation, was designated again.
    releads_by_deposed: usize,
    processed_partitions: u64,
    assigner_rss_drift_pct: f64,
    worker_rss_drift_pct: f64,
    assigner_rss_processing_bytes: u64,
    worker_rss_processing_bytes: u64,
    nats_rss_drift_pct: Option<f64>,
    quick: bool,
}

pub fn run(arguments: &MemoryArgs) -> anyhow::Result<()> {
    let line = crate::procs::run_with_binaries(&arguments.binaries, |binaries| async move {
        run_all(arguments, &binaries).await
    })?;
    print_line(&line)
}

/// The processes of the run.
struct Cluster {
    server: NatsServer,
    resources: Resources,
    admin: AdminClient,
    binaries: Binaries,
    dir: tempfile::TempDir,
    election: Process,
    assigners: Vec<Process>,
}

impl Cluster {
    fn worker_spec(&self, id: &str, args: &[&str]) -> Spec {
        let mut all = vec![
            "--nats-url",
            self.server.url(),
            "--namespace",
            NAMESPACE,
            "--member-id",
            id,
        ];
        all.extend_from_slice(args);
        Spec {
            binary: self.binaries.path(RECORDING_WORKER),
            args: all.into_iter().map(str::to_owned).collect(),
            env: Vec::new(),
            log: self.dir.path().join(format!("{id}.log")),
        }
    }

    /// The assigner replica leading now, with the role lease.
    async fn leader(&self) -> Option<(usize, RoleLease)> {
        let lease =
            read_lease::<RoleLease>(&self.resources, ControlRole::Assigner.lease_key()).await?;
        let holder = lease.holder.as_ref()?;
        let index = ASSIGNERS.iter().position(|id| *id == holder.id.as_str())?;
        Some((index, lease))
    }
}

async fn run_all(arguments: &MemoryArgs, binaries: &Binaries) -> anyhow::Result<Line> {
    let quick = arguments.quick;
    let switches = arguments.switches.unwrap_or(if quick { 40 } else { 1_000 });
    let partitions = arguments
        .partitions
        .unwrap_or(if quick { 100_000 } else { 1_000_000 });
    let server = NatsServer::builder().start()?;
    let client = elk_nats::connect(&NatsConfig::new(server.url(), "elk-bench-memory")).await?;
    let resources = elk_nats::provision(
        client,
        Names::new(Namespace::new(NAMESPACE)?),
        &ProvisionConfig::default(),
    )
    .await?;
    let admin = AdminClient::new(resources.client.clone(), resources.names.clone())
        .with_patience(Duration::from_secs(60));
    let dir = tempfile::Builder::new().prefix("elk-memory-").tempdir()?;
    let service = |binary: &str, id: &str| {
        service_spec(binaries, binary, server.url(), NAMESPACE, id, dir.path())
    };
    let election = Process::spawn(&service(ELECTION, "election-1"))?;
    // A short member TTL: a deposed replica notices its deleted key within a third of it.
    let assigners = ASSIGNERS
        .iter()
        .map(|id| Process::spawn(&service(ASSIGNER, id).with_args(&["--member-ttl", "1s"])))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let cluster = Cluster {
        resources,
        admin,
        binaries: binaries.clone(),
        dir,
        election,
        assigners,
        server,
    };
    let mut line = Line {
        bench: "memory",
        quick,
        binaries: binaries.dir_name(),
        ..Line::default()
    };
    wait_until("an assigner leader", Duration::from_secs(60), || async {
        cluster.leader().await.is_some()
    })
    .await?;

    let outcome = run_phases(arguments, &cluster, partitions, switches, &mut line).await;
    cluster.election.kill().await;
    for assigner in cluster.assigners {
        assigner.kill().await;
    }
    if outcome.is_err() || arguments.keep_dir {
        let kept = cluster.dir.keep();
        eprintln!("memory: process logs kept in {}", kept.display());
    }
    outcome.map(|()| line)
}

async fn run_phases(
    arguments: &MemoryArgs,
    cluster: &Cluster,
    partitions: u64,
    switches: usize,
    line: &mut Line,
) -> anyhow::Result<()> {
    let runs = |phase: Phase| arguments.phases.is_empty() || arguments.phases.contains(&phase);
    if runs(Phase::Idle) {
        idle_worker_rss(cluster, line).await?;
        eprintln!(
            "memory: idle worker RSS {} bytes (anonymous {}, file-backed {})",
            line.idle_worker_rss_bytes,
            line.idle_worker_rss_anon_bytes,
            line.idle_worker_rss_file_bytes
        );
    }
    if runs(Phase::Drift) {
        processing_drift(cluster, partitions, line).await?;
    }
    if runs(Phase::Switches) {
        line.switch_by = arguments.switch_by;
        leader_switches(cluster, switches, arguments.switch_by, line).await?;
    }
    Ok(())
}

/// Phase 1: the highest RSS of an idle worker process over 5 s after it joined, with its split
/// into anonymous memory (heap, stacks: what the SDK allocates) and file-backed pages (mostly
/// the executable's own code, whose size depends on the build profile) at that reading.
async fn idle_worker_rss(cluster: &Cluster, line: &mut Line) -> anyhow::Result<()> {
    let id = "idle-worker";
    let worker = Process::spawn(&cluster.worker_spec(id, &["--jobs", "never-created"]))?;
    wait_in_view(&cluster.resources, &[id]).await?;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss = worker.rss_bytes().context("idle worker gone")?;
        if rss > line.idle_worker_rss_bytes {
            line.idle_worker_rss_bytes = rss;
            line.idle_worker_rss_anon_bytes =
                status_bytes(worker.pid(), "RssAnon:").unwrap_or_default();
            line.idle_worker_rss_file_bytes =
                status_bytes(worker.pid(), "RssFile:").unwrap_or_default();
        }
    }
    worker.kill().await;
    Ok(())
}

/// Phase 2: RSS of the leading assigner and of the workers across `partitions` processed
/// partitions.
async fn processing_drift(
    cluster: &Cluster,
    partitions: u64,
    line: &mut Line,
) -> anyhow::Result<()> {
    let ids: Vec<String> = (1..=4).map(|n| format!("fast-{n}")).collect();
    let workers = ids
        .iter()
        .map(|id| Process::spawn(&cluster.worker_spec(id, &["--capacity", "4"])))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    wait_in_view(&cluster.resources, &id_refs).await?;
    let nats_pid = cluster
        .server
        .store_dir()
        .and_then(|store| find_nats_server(&store));
    let jobs = partitions.div_ceil(JOB_PARTITIONS);
    let warmup_jobs = (jobs / 10).max(1);
    let mut warm: Option<(u64, u64, Option<u64>)> = None;
    let mut last = (0, 0, None);
    let started = Instant::now();
    for job in 1..=jobs {
        let name = format!("drift-{job}");
        let first = (job - 1) * JOB_PARTITIONS + 1;
        let range = IdRange::new(first, first + JOB_PARTITIONS - 1)?;
        cluster
            .admin
            .create_job(JobName::new(&name)?, JobSpec::fixed(range, 1))
            .await?;
        wait_until(
            &format!("job {name} completed"),
            Duration::from_secs(600),
            || async {
                read_job(&cluster.resources, &name)
                    .await
                    .is_some_and(|job| job.state == JobState::Completed)
            },
        )
        .await?;
        let (leader, _) = cluster.leader().await.context("no assigner leader")?;
        let assigner = cluster.assigners[leader]
            .rss_bytes()
            .context("assigner gone")?;
        let worker = workers
            .iter()
            .filter_map(Process::rss_bytes)
            .max()
            .context("workers gone")?;
        last = (assigner, worker, nats_pid.and_then(rss_bytes));
        eprintln!(
            "memory: {} partitions processed in {:.0} s; RSS assigner {} workers (max) {} nats {:?}",
            job * JOB_PARTITIONS,
            started.elapsed().as_secs_f64(),
            last.0,
            last.1,
            last.2
        );
        if job == warmup_jobs {
            warm = Some(last);
        }
    }
    let warm = warm.context("no warm-up sample")?;
    let drift = |warm: u64, end: u64| round((end as f64 - warm as f64) / warm as f64 * 100.0, 2);
    line.processed_partitions = jobs * JOB_PARTITIONS;
    line.assigner_rss_drift_pct = drift(warm.0, last.0);
    line.worker_rss_drift_pct = drift(warm.1, last.1);
    line.nats_rss_drift_pct = warm.2.zip(last.2).map(|(w, l)| drift(w, l));
    line.rss_drift_pct = line.assigner_rss_drift_pct.max(line.worker_rss_drift_pct);
    line.assigner_rss_processing_bytes = last.0;
    line.worker_rss_processing_bytes = last.1;
    for worker in workers {
        worker.kill().await;
    }
    Ok(())
}

/// Phase 3: `switches` leader switches, each forced the way `switch_by` says.
async fn leader_switches(
    cluster: &Cluster,
    switches: usize,
    switch_by: SwitchBy,
    line: &mut Line,
) -> anyhow::Result<()> {
    let resources = &cluster.resources;
    // A running job so every term loads live partitions and progress keeps flowing.
    let paced: Vec<Process> = ["paced-1", "paced-2"]
        .iter()
        .map(|id| {
            Process::spawn(&cluster.worker_spec(id, &["--capacity", "2", "--id-cost-us", "1000"]))
        })
        .collect::<anyhow::Result<_>>()?;
    wait_in_view(resources, &["paced-1", "paced-2"]).await?;
    cluster
        .admin
        .create_job(
            JobName::new("switching")?,
            JobSpec::fixed(IdRange::new(1, 100_000_000)?, 1_000_000),
        )
        .await?;
    // Polls whether the new leader answers: a request that lands on the deposed replica while
    // it stops goes unanswered, and waiting the default 10 s for it would be counted as switch
    // time (`switch_ms_max` read 10,057 ms in a 40-switch run before this).
    let poll = AdminClient::new(resources.client.clone(), resources.names.clone())
        .with_patience(Duration::from_secs(30))
        .with_request_timeout(Duration::from_millis(500));
    let warmup = (switches / 10).max(10).min(switches.saturating_sub(10));
    let mut samples: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
    let mut durations = Vec::new();
    let started = Instant::now();
    for switch in 1..=switches {
        let (leader, lease) = cluster.leader().await.context("no assigner leader")?;
        let holder = lease.holder.clone().context("no holder")?;
        let switching = Instant::now();
        let relead = match switch_by {
            SwitchBy::Transfer => {
                let other = 1 - leader;
                let to = MemberId::new(ASSIGNERS[other])?;
                let transferred = cluster
                    .admin
                    .transfer(ControlRole::Assigner, Some(to))
                    .await
                    .context("transfer the assigner role")?;
                anyhow::ensure!(
                    transferred.epoch > lease.epoch,
                    "transfer answered epoch {} after {}",
                    transferred.epoch,
                    lease.epoch
                );
                false
            }
            SwitchBy::MemberLoss => {
                resources
                    .members
                    .delete(ASSIGNERS[leader])
                    .await
                    .context("delete the leader's member key")?;
                // Another term under a higher epoch. The holder may be the deposed replica
                // itself under its new incarnation: when it re-joined before the election
                // wrote the view without it, the view shows it live and the smallest live id
                // of the role (see `elk_election::roles`) can be its own.
                wait_until("a new assigner term", Duration::from_secs(30), || async {
                    read_lease::<RoleLease>(resources, ControlRole::Assigner.lease_key())
                        .await
                        .is_some_and(|now| {
                            now.epoch > lease.epoch
                                && now.holder.as_ref().is_some_and(|new| *new != holder)
                        })
                })
                .await?;
                cluster
                    .leader()
                    .await
                    .is_some_and(|(index, _)| index == leader)
            }
        };
        let (_, now) = cluster.leader().await.context("no assigner leader")?;
        // Until the deposed replica notices, it may still answer a read-only request in the
        // queue group, under its old epoch: ask until the new one does.
        wait_until(
            "the new leader answering",
            Duration::from_secs(30),
            || async {
                poll.stats()
                    .await
                    .is_ok_and(|stats| stats.epoch >= now.epoch)
            },
        )
        .await?;
        durations.push(switching.elapsed());
        if relead {
            line.releads_by_deposed += 1;
        }
        if switch_by == SwitchBy::MemberLoss {
            // The deposed replica is back as a standby before the next switch.
            wait_rejoined(resources, ASSIGNERS[leader], holder.incarnation).await?;
        }
        for (index, assigner) in cluster.assigners.iter().enumerate() {
            samples[index].push(assigner.rss_bytes().context("assigner replica gone")?);
        }
        if switch % 50 == 0 || switch == switches {
            eprintln!(
                "memory: {switch} switches in {:.0} s; RSS {} / {}",
                started.elapsed().as_secs_f64(),
                samples[0].last().unwrap_or(&0),
                samples[1].last().unwrap_or(&0)
            );
        }
    }
    let median = |values: &[u64]| {
        let mut sorted = values.to_vec();
        sorted.sort_unstable();
        sorted[sorted.len() / 2]
    };
    let mut growth = i64::MIN;
    for replica in &samples {
        let after_warmup = median(&replica[warmup..(warmup + 10).min(replica.len())]);
        let end = median(&replica[replica.len().saturating_sub(10)..]);
        let grew = end as i64 - after_warmup as i64;
        if grew > growth {
            growth = grew;
            line.assigner_rss_after_warmup_bytes = after_warmup;
            line.assigner_rss_after_switches_bytes = end;
        }
    }
    line.leader_switches = switches;
    line.rss_growth_after_switches_bytes = growth;
    durations.sort();
    line.switch_ms_p50 = round(durations[durations.len() / 2].as_secs_f64() * 1e3, 1);
    line.switch_ms_max = round(durations[durations.len() - 1].as_secs_f64() * 1e3, 1);
    for worker in paced {
        worker.kill().await;
    }
    Ok(())
}

/// Waits until `id`'s member key holds an incarnation other than `old` and the view lists it.
async fn wait_rejoined(resources: &Resources, id: &str, old: Incarnation) -> anyhow::Result<()> {
    let member = MemberId::new(id)?;
    wait_until(
        "the deposed replica back in the view",
        Duration::from_secs(30),
        || async {
            let Ok(Some(entry)) = elk_nats::read_entry(&resources.members, id).await else {
                return false;
            };
            if entry.deleted
                || decode::<MemberRecord>(&entry.value).is_ok_and(|r| r.incarnation == old)
            {
                return false;
            }
            read_lease::<MembershipView>(resources, VIEW_KEY)
                .await
                .and_then(|view| view.member(&member).map(|m| m.incarnation != old))
                .unwrap_or(false)
        },
    )
    .await?;
    Ok(())
}

async fn wait_in_view(resources: &Resources, ids: &[&str]) -> anyhow::Result<()> {
    let members: Vec<MemberId> = ids
        .iter()
        .map(|id| MemberId::new(*id))
        .collect::<Result<_, _>>()?;
    wait_until(
        "the workers in the view",
        Duration::from_secs(60),
        || async {
            read_lease::<MembershipView>(resources, VIEW_KEY)
                .await
                .is_some_and(|view| members.iter().all(|id| view.member(id).is_some()))
        },
    )
    .await?;
    Ok(())
}
