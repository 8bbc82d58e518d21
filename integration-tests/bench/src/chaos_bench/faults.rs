//! Choosing and applying the faults of a chaos run, from one seeded random generator.
//!
//! Kinds (the keys of `faults_by_kind`):
//! - `worker_kill`: SIGKILL of a worker, started again with the same member id after 0–2 s (it
//!   waits for its old key to expire before it can join);
//! - `<role>_kill_active` / `<role>_kill_standby` for `election`, `assigner`, `scaler`: SIGKILL of
//!   the replica that holds the role (the election lease, `role.assigner`, `role.scaler`) or of
//!   one that does not, started again after 0–2 s;
//! - `network_cut_worker` / `network_cut_service`: the process's proxy closes its connections and
//!   holds new ones for 0.3 s – 2.5 × the member TTL (shorter than the fence deadline or long
//!   enough for the key to expire), then heals;
//! - `nats_restart`: SIGKILL of the nats-server, started again on the same port and store after
//!   0.2–1.5 s.
//!
//! The run opens with one fault of every category in random order (worker kill, worker cut,
//! service cut, the active replica of each role killed, a nats-server restart), so even a quick
//! run covers all of them; after that, categories are drawn by weight.

use super::fleet::{Fleet, Kind};
use elk_nats::Resources;
use elk_protocol::decode;
use elk_protocol::messages::{ElectionLease, RoleLease};
use elk_protocol::names::{ControlRole, ELECTION_KEY};
use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use std::time::{Duration, SystemTime};

/// One injected fault, for the log and for attributing repeats.
#[derive(Debug, Clone)]
pub(crate) struct FaultRecord {
    pub kind: String,
    /// The process it hit (none for the nats-server).
    pub target: Option<String>,
    pub at: SystemTime,
    /// Until when it can still explain a lost membership: downtime or cut, plus the member TTL
    /// (an expiry follows at most one TTL later), plus a second for the view and reclaim.
    pub effect_until: SystemTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Category {
    WorkerKill,
    WorkerCut,
    ServiceCut,
    ServiceKill(Kind, Which),
    NatsRestart,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Active,
    Any,
}

/// Draws and applies faults.
pub(crate) struct Injector {
    rng: StdRng,
    opening: Vec<Category>,
    member_ttl: Duration,
    pub log: Vec<FaultRecord>,
}

impl Injector {
    pub fn new(rng: StdRng, member_ttl: Duration) -> Self {
        let mut injector = Self {
            rng,
            opening: vec![
                Category::WorkerKill,
                Category::WorkerCut,
                Category::ServiceCut,
                Category::ServiceKill(Kind::Election, Which::Active),
                Category::ServiceKill(Kind::Assigner, Which::Active),
                Category::ServiceKill(Kind::Scaler, Which::Active),
                Category::NatsRestart,
            ],
            member_ttl,
            log: Vec::new(),
        };
        let mut opening = std::mem::take(&mut injector.opening);
        opening.shuffle(&mut injector.rng);
        injector.opening = opening;
        injector
    }

    /// A random pause before the next fault, uniform in `range`.
    pub fn pause(&mut self, range: (Duration, Duration)) -> Duration {
        let (low, high) = range;
        low + (high - low).mul_f64(self.rng.random::<f64>())
    }

    fn next_category(&mut self) -> Category {
        if let Some(category) = self.opening.pop() {
            return category;
        }
        let roll = self.rng.random_range(0..100);
        let role = [Kind::Election, Kind::Assigner, Kind::Scaler][self.rng.random_range(0..3)];
        match roll {
            0..30 => Category::WorkerKill,
            30..45 => Category::WorkerCut,
            45..57 => Category::ServiceCut,
            57..92 => Category::ServiceKill(role, Which::Any),
            _ => Category::NatsRestart,
        }
    }

    /// Injects one fault; `None` when no process fits the drawn category right now (all
    /// candidates down or cut), in which case nothing happened.
    pub async fn inject(
        &mut self,
        fleet: &mut Fleet,
        resources: &Resources,
    ) -> anyhow::Result<Option<FaultRecord>> {
        let category = self.next_category();
        let ttl = self.member_ttl;
        let restart_after = Duration::from_millis(self.rng.random_range(0..2_000));
        let record = match category {
            Category::NatsRestart => {
                if fleet.nats_is_down() {
                    return Ok(None);
                }
                let downtime = Duration::from_millis(self.rng.random_range(200..1_500));
                fleet.stop_nats(downtime);
                self.record("nats_restart", None, downtime)
            }
            Category::WorkerKill => {
                let Some(index) = self.pick(fleet, |m| m.kind == Kind::Worker && !m.is_cut())
                else {
                    return Ok(None);
                };
                fleet.kill(index, restart_after).await;
                let name = fleet.members[index].name.clone();
                self.record("worker_kill", Some(name), restart_after)
            }
            Category::WorkerCut | Category::ServiceCut => {
                let workers = category == Category::WorkerCut;
                let Some(index) = self.pick(fleet, |m| {
                    m.kind.is_service() != workers && m.is_running() && !m.is_cut()
                }) else {
                    return Ok(None);
                };
                let longest = ttl.mul_f64(2.5).as_millis() as u64;
                let duration = Duration::from_millis(self.rng.random_range(300..longest.max(301)));
                fleet.cut(index, duration);
                let name = fleet.members[index].name.clone();
                let kind = if workers {
                    "network_cut_worker"
                } else {
                    "network_cut_service"
                };
                self.record(kind, Some(name), duration)
            }
            Category::ServiceKill(kind, which) => {
                let holder = if fleet.nats_is_down() {
                    None
                } else {
                    role_holder(resources, kind).await
                };
                let index = match which {
                    Which::Active => holder.as_ref().and_then(|holder| {
                        fleet
                            .members
                            .iter()
                            .position(|m| &m.name == holder && m.is_running())
                    }),
                    Which::Any => self.pick(fleet, |m| m.kind == kind && m.is_running()),
                };
                let Some(index) = index else {
                    return Ok(None);
                };
                fleet.kill(index, restart_after).await;
                let name = fleet.members[index].name.clone();
                let active = holder.as_deref() == Some(name.as_str());
                let role = match kind {
                    Kind::Election => "election",
                    Kind::Assigner => "assigner",
                    Kind::Scaler => "scaler",
                    Kind::Worker => unreachable!("services only"),
                };
                let label = format!("{role}_kill_{}", if active { "active" } else { "standby" });
                self.record(&label, Some(name), restart_after)
            }
        };
        Ok(Some(record))
    }

    /// A random member satisfying `eligible`.
    fn pick(
        &mut self,
        fleet: &Fleet,
        eligible: impl Fn(&super::fleet::Member) -> bool,
    ) -> Option<usize> {
        let candidates: Vec<usize> = (0..fleet.members.len())
            .filter(|&index| eligible(&fleet.members[index]))
            .collect();
        (!candidates.is_empty()).then(|| candidates[self.rng.random_range(0..candidates.len())])
    }

    fn record(&mut self, kind: &str, target: Option<String>, lasting: Duration) -> FaultRecord {
        let at = SystemTime::now();
        let record = FaultRecord {
            kind: kind.to_owned(),
            target,
            at,
            effect_until: at + lasting + self.member_ttl + Duration::from_secs(1),
        };
        self.log.push(record.clone());
        record
    }
}

/// The member id holding `kind`'s role now, read from the leases bucket (`None` if unknown).
async fn role_holder(resources: &Resources, kind: Kind) -> Option<String> {
    let key = match kind {
        Kind::Election => ELECTION_KEY,
        Kind::Assigner => ControlRole::Assigner.lease_key(),
        Kind::Scaler => ControlRole::Scaler.lease_key(),
        Kind::Worker => return None,
    };
    let read = elk_nats::read_entry(&resources.leases, key);
    let entry = tokio::time::timeout(Duration::from_millis(500), read)
        .await
        .ok()?
        .ok()??;
    if entry.deleted {
        return None;
    }
    match kind {
        Kind::Election => decode::<ElectionLease>(&entry.value)
            .ok()
            .map(|lease| lease.holder.to_string()),
        _ => decode::<RoleLease>(&entry.value)
            .ok()?
            .holder
            .map(|holder| holder.id.to_string()),
    }
}
