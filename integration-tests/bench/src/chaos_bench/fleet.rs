//! The processes of a chaos run: one nats-server (the testkit's, restarted on the same port and
//! store), and every service replica and worker as a real OS process reaching NATS through a
//! `TcpProxy` of its own, so each can be killed (SIGKILL) or cut off on its own.
//!
//! The fleet also plays the process supervisor (what Kubernetes does for a pod): a killed process
//! is started again with the same arguments after its delay, and a process that exits **by
//! itself** is recorded as a self-crash (with the tail of its log) and started again at once.
//! A process is never restarted into a fault that would make its start-up fail for reasons of
//! the benchmark's making: while its proxy is cut or the nats-server is down, its restart waits.

use crate::procs::{Binaries, ELECTION, Process, RECORDING_WORKER, SCALER, Spec, log_tail};
use elk_testkit::{NatsServer, TcpProxy};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// What a process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Worker,
    Election,
    Assigner,
    Scaler,
}

impl Kind {
    pub fn is_service(self) -> bool {
        self != Kind::Worker
    }
}

/// The sizes and timings the processes are started with.
#[derive(Debug, Clone)]
pub(crate) struct FleetConfig {
    pub namespace: String,
    pub workers: usize,
    pub replicas: usize,
    pub capacity: u32,
    pub member_ttl: Duration,
    /// Wall time per ID of the recording workers, in microseconds.
    pub id_cost_us: f64,
}

/// One process of the fleet and its path to NATS.
pub(crate) struct Member {
    pub name: String,
    pub kind: Kind,
    spec: Spec,
    proxy: TcpProxy,
    process: Option<Process>,
    /// Killed by the benchmark: start again at this instant.
    restart_at: Option<Instant>,
    /// Cut off: heal at this instant.
    heal_at: Option<Instant>,
}

impl Member {
    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    pub fn is_cut(&self) -> bool {
        self.heal_at.is_some()
    }
}

/// A process that exited without being killed (its log tail is printed when it is noticed).
#[derive(Debug, Clone)]
pub(crate) struct SelfCrash {
    pub name: String,
    pub status: String,
    pub at: SystemTime,
}

pub(crate) struct Fleet {
    pub server: NatsServer,
    pub members: Vec<Member>,
    /// The nats-server is down: start it again at this instant.
    nats_restart_at: Option<Instant>,
    pub self_crashes: Vec<SelfCrash>,
    pub record_dir: PathBuf,
}

impl Fleet {
    /// Starts the nats-server and a proxy per member, without starting the members.
    pub fn new(config: &FleetConfig, binaries: &Binaries, run_dir: &Path) -> anyhow::Result<Self> {
        let server = NatsServer::builder().start()?;
        let record_dir = run_dir.join("records");
        let log_dir = run_dir.join("logs");
        std::fs::create_dir_all(&record_dir)?;
        std::fs::create_dir_all(&log_dir)?;
        let mut members = Vec::new();
        let ttl = format!("{}s", config.member_ttl.as_secs());
        let mut add = |name: String, kind: Kind, binary: &str, args: Vec<String>, env| {
            let proxy = TcpProxy::try_start(server.url())?;
            let mut all_args = vec![
                "--nats-url".to_owned(),
                proxy.url(),
                "--namespace".to_owned(),
                config.namespace.clone(),
                "--member-id".to_owned(),
                name.clone(),
            ];
            all_args.extend(args);
            members.push(Member {
                spec: Spec {
                    binary: binaries.path(binary),
                    args: all_args,
                    env,
                    log: log_dir.join(format!("{name}.log")),
                },
                name,
                kind,
                proxy,
                process: None,
                restart_at: None,
                heal_at: None,
            });
            anyhow::Ok(())
        };
        for (kind, binary) in [
            (Kind::Election, ELECTION),
            (Kind::Assigner, crate::procs::ASSIGNER),
            (Kind::Scaler, SCALER),
        ] {
            for replica in 1..=config.replicas {
                let env = match kind {
                    Kind::Election => vec![("ELK_ELECTION__ELECTION_TTL".to_owned(), ttl.clone())],
                    _ => Vec::new(),
                };
                let name = format!("{}-{replica}", binary.trim_start_matches("elk-"));
                add(
                    name,
                    kind,
                    binary,
                    vec!["--member-ttl".into(), ttl.clone()],
                    env,
                )?;
            }
        }
        for index in 1..=config.workers {
            let name = format!("worker-{index}");
            let args = vec![
                "--capacity".to_owned(),
                config.capacity.to_string(),
                "--member-ttl-secs".to_owned(),
                config.member_ttl.as_secs().to_string(),
                "--record-file".to_owned(),
                record_dir
                    .join(format!("{name}.rec"))
                    .to_string_lossy()
                    .into_owned(),
                "--id-cost-us".to_owned(),
                config.id_cost_us.to_string(),
            ];
            add(name, Kind::Worker, RECORDING_WORKER, args, Vec::new())?;
        }
        Ok(Self {
            server,
            members,
            nats_restart_at: None,
            self_crashes: Vec::new(),
            record_dir,
        })
    }

    /// Starts every member.
    pub fn start_all(&mut self) -> anyhow::Result<()> {
        for member in &mut self.members {
            member.process = Some(Process::spawn(&member.spec)?);
        }
        Ok(())
    }

    pub fn nats_is_down(&self) -> bool {
        self.nats_restart_at.is_some()
    }

    /// SIGKILL `index`; it is started again after `restart_after`.
    pub async fn kill(&mut self, index: usize, restart_after: Duration) {
        let member = &mut self.members[index];
        if let Some(process) = member.process.take() {
            let exit = process.kill().await;
            if !exit.killed {
                self.record_crash(index, exit.status, exit.at);
            }
        }
        self.members[index].restart_at = Some(Instant::now() + restart_after);
    }

    /// Cuts `index` off NATS (connections closed, new ones held) for `duration`.
    pub fn cut(&mut self, index: usize, duration: Duration) {
        let member = &mut self.members[index];
        member.proxy.cut();
        member.heal_at = Some(Instant::now() + duration);
    }

    /// Kills the nats-server (SIGKILL) and starts it again on the same port and store after
    /// `downtime`.
    pub fn stop_nats(&mut self, downtime: Duration) {
        tokio::task::block_in_place(|| self.server.stop());
        self.nats_restart_at = Some(Instant::now() + downtime);
    }

    /// Applies what is due: heals, the nats-server restart, restarts of killed members; records
    /// and restarts members that exited by themselves.
    pub fn tick(&mut self) -> anyhow::Result<()> {
        let now = Instant::now();
        if self.nats_restart_at.is_some_and(|at| at <= now) {
            tokio::task::block_in_place(|| self.server.restart())?;
            self.nats_restart_at = None;
        }
        for index in 0..self.members.len() {
            let member = &mut self.members[index];
            if member.heal_at.is_some_and(|at| at <= now) {
                member.proxy.heal();
                member.heal_at = None;
            }
            if let Some(exit) = member.process.as_ref().and_then(Process::exited) {
                member.process = None;
                member.restart_at = Some(now);
                self.record_crash(index, exit.status, exit.at);
            }
        }
        let nats_up = !self.nats_is_down();
        for member in &mut self.members {
            let due = member.restart_at.is_some_and(|at| at <= now);
            if due && nats_up && !member.is_cut() {
                member.process = Some(Process::spawn(&member.spec)?);
                member.restart_at = None;
            }
        }
        Ok(())
    }

    /// Ends every fault now: heals every proxy, starts the nats-server and every killed member.
    pub fn heal_all(&mut self) -> anyhow::Result<()> {
        let now = Instant::now();
        if self.nats_restart_at.is_some() {
            self.nats_restart_at = Some(now);
        }
        for member in &mut self.members {
            if member.heal_at.is_some() {
                member.heal_at = Some(now);
            }
            if member.restart_at.is_some() {
                member.restart_at = Some(now);
            }
        }
        self.tick()
    }

    /// Kills every process (end of the run).
    pub async fn kill_all(&mut self) {
        for index in 0..self.members.len() {
            if let Some(process) = self.members[index].process.take() {
                let exit = process.kill().await;
                if !exit.killed {
                    self.record_crash(index, exit.status, exit.at);
                }
            }
        }
    }

    fn record_crash(&mut self, index: usize, status: String, at: SystemTime) {
        let member = &self.members[index];
        let log_tail = log_tail(&member.spec.log, 15);
        eprintln!(
            "SELF-CRASH: {} exited by itself ({status}); last log lines:\n{log_tail}",
            member.name
        );
        self.self_crashes.push(SelfCrash {
            name: member.name.clone(),
            status,
            at,
        });
    }
}
