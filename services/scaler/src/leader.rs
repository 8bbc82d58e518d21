//! Leader-only work: every `interval`, one round —
//!
//! 1. the backlog from the jobs bucket (a watch kept in memory for the term, `jobs.rs`: a round
//!    reads no job key), the members (with their progress counters, drain states
//!    and whether placement is frozen) from the assigner's `members` command;
//! 2. the throughput estimate (`throughput.rs`) and the policy's decision (`policy.rs`);
//! 3. the scale-in plan (`fleet.rs`): drain / undrain requests to the assigner;
//! 4. `fleet/desired` (desired, replicas, draining, retire, inputs) when it changed;
//! 5. with `[scaler.kubernetes]`, the worker Deployment's pods of retired workers marked and its
//!    `scale` set to the replicas (`kube.rs`).
//!
//! Without an answer from the assigner (no leader) the round still decides and publishes, but
//! drains nothing and never asks for fewer replicas than there are live workers. Before each
//! write or request the task checks that its term is current (the role lease still names this
//! incarnation under the same epoch and its membership is not lost); the supervisor also cancels
//! and awaits this task on demotion, so nothing is written once another holder exists. A failed
//! round is logged and retried at the next tick: the task itself never fails.

use crate::ScalerConfig;
use crate::ScalerError;
use crate::fleet::{FleetPlan, plan_fleet};
use crate::jobs::JobsCache;
use crate::kube::KubeActuator;
use crate::metrics::ScalerMetrics;
use crate::policy::{Inputs, Policy, backlog_of};
use crate::throughput::Throughput;
use bytes::Bytes;
use elk_nats::{
    AdminClient, CasOutcome, KvEntry, LeaderTerm, LeaderWork, Resources, TermEnd, Versioned,
    cas_write, read_entry,
};
use elk_protocol::messages::{DesiredWorkers, DrainSource, MembershipView, unix_ms_now};
use elk_protocol::names::DESIRED_WORKERS_KEY;
use elk_protocol::{SCHEMA_VERSION, decode, encode};
use elk_runtime::RepeatLimiter;
use elk_types::Revision;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

/// Failed rounds, by error: one warning per minute each.
static ROUND_FAILED: RepeatLimiter = RepeatLimiter::new(std::time::Duration::from_secs(60));

/// What the scaler's leader work needs besides its term.
pub(crate) struct ScalerLeader {
    pub(crate) resources: Resources,
    pub(crate) config: ScalerConfig,
    pub(crate) view: watch::Receiver<Option<Versioned<MembershipView>>>,
    pub(crate) metrics: Arc<ScalerMetrics>,
}

/// The `desired` key as last written or read by this leader.
struct Published {
    revision: Option<Revision>,
    value: Option<DesiredWorkers>,
}

/// What one term remembers between rounds.
struct Term {
    started: Instant,
    published: Published,
    policy: Policy,
    throughput: Throughput,
    admin: AdminClient,
    kube: Option<KubeActuator>,
    jobs: JobsCache,
}

impl LeaderWork for ScalerLeader {
    type Error = ScalerError;

    /// Runs until `cancel` fires; errors of one round are logged and retried next round.
    async fn lead(
        &self,
        term: LeaderTerm,
        cancel: CancellationToken,
    ) -> Result<TermEnd, ScalerError> {
        tracing::info!(epoch = %term.epoch(), "scaler leader: sizing the fleet");
        // Whatever ends the term (cancel, or the task being dropped), its numbers stop being
        // exported.
        let _not_leading = NotLeading(&self.metrics);
        let settings = &self.config.scaler;
        let mut ticker = tokio::time::interval(settings.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut state: Option<Term> = None;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return Ok(TermEnd::Cancelled),
                _ = ticker.tick() => {}
            }
            let round = tokio::select! {
                () = cancel.cancelled() => return Ok(TermEnd::Cancelled),
                round = self.round(&term, &mut state) => round,
            };
            if let Err(error) = round {
                // The same failure repeats every round while it lasts: logged once a minute.
                if let Some(suppressed) = ROUND_FAILED.check(&error.to_string()) {
                    tracing::warn!(%error, suppressed, "scaler round failed; retrying next round");
                }
            }
        }
    }
}

impl ScalerLeader {
    /// The term's memory, starting from the stored desired count.
    async fn start_term(&self) -> Result<Term, ScalerError> {
        let settings = &self.config.scaler;
        let published = adopt(read_entry(&self.resources.fleet, DESIRED_WORKERS_KEY).await?);
        let current = published
            .value
            .as_ref()
            .map_or(settings.min_workers, |stored| stored.desired);
        let admin = AdminClient::new(self.resources.client.clone(), self.resources.names.clone())
            // One round's worth: without an assigner the round goes on without members.
            .with_patience(settings.interval)
            .with_request_timeout(settings.interval.max(std::time::Duration::from_secs(2)));
        let jobs = JobsCache::start(&self.resources).await?;
        Ok(Term {
            jobs,
            started: Instant::now(),
            published,
            policy: Policy::new(settings.policy(), current, 0),
            throughput: Throughput::new(settings.rate_smoothing),
            admin,
            kube: None,
        })
    }

    async fn round(&self, term: &LeaderTerm, state: &mut Option<Term>) -> Result<(), ScalerError> {
        if state.is_none() {
            *state = Some(self.start_term().await?);
        }
        let state = state.as_mut().expect("set above");
        let settings = &self.config.scaler;
        let backlog = backlog_of(&state.jobs.records());
        let members = match state.admin.members().await {
            Ok(members) => Some(members),
            Err(error) => {
                tracing::debug!(%error, "no members from the assigner this round");
                None
            }
        };
        let rate = match &members {
            Some(members) => state.throughput.observe(members),
            None => state.throughput.estimate(),
        };
        let (live_workers, slots_per_worker) = self.live_workers();
        let desired = state.policy.decide(&Inputs {
            now_ms: state.started.elapsed().as_millis() as u64,
            backlog,
            worker_rate: rate,
            slots_per_worker,
        });
        let plan = match &members {
            Some(members) if settings.drain_before_remove => {
                let plan = plan_fleet(desired, &members.members, members.frozen);
                self.request_drains(term, state, &plan).await;
                plan
            }
            // Nobody to drain through: never below what runs now.
            _ => FleetPlan {
                replicas: desired.max(live_workers),
                ..FleetPlan::default()
            },
        };
        let record = DesiredWorkers {
            schema: SCHEMA_VERSION,
            epoch: term.epoch(),
            desired,
            live_workers,
            backlog_ids: backlog.ids,
            backlog_partitions: backlog.partitions,
            computed_unix_ms: unix_ms_now(),
            replicas: plan.replicas,
            draining: plan.draining.clone(),
            retire: plan.retire.clone(),
            worker_ids_per_second: rate.map(|rate| rate.round() as u64),
        };
        self.metrics.computed(&record);
        self.publish(term, &mut state.published, record).await?;
        if let Some(kubernetes) = &settings.kubernetes
            && term.is_current()
        {
            if state.kube.is_none() {
                match KubeActuator::connect(kubernetes).await {
                    Ok(actuator) => state.kube = Some(actuator),
                    Err(error) => {
                        self.metrics.kubernetes_errors.inc();
                        tracing::warn!(%error, "cannot reach Kubernetes; retrying next round");
                    }
                }
            }
            if let Some(actuator) = state.kube.as_mut()
                && let Err(error) = actuator.actuate(plan.replicas, &plan.retire).await
            {
                self.metrics.kubernetes_errors.inc();
                tracing::warn!(%error, "cannot scale the worker Deployment; retrying next round");
            }
        }
        Ok(())
    }

    /// Live workers in the view, and their average capacity (at least 1).
    fn live_workers(&self) -> (u32, u32) {
        let view = self.view.borrow();
        let Some(view) = view.as_ref() else {
            return (0, 1);
        };
        let (count, slots) = view
            .value
            .workers()
            .fold((0u64, 0u64), |(count, slots), worker| {
                (count + 1, slots + u64::from(worker.capacity.get()))
            });
        let average = slots.checked_div(count).unwrap_or(1).max(1);
        (
            u32::try_from(count).unwrap_or(u32::MAX),
            u32::try_from(average).unwrap_or(u32::MAX),
        )
    }

    async fn request_drains(&self, term: &LeaderTerm, state: &Term, plan: &FleetPlan) {
        for worker in &plan.drain {
            if !term.is_current() {
                return;
            }
            match state.admin.drain(worker.clone(), DrainSource::Scaler).await {
                Ok(_) => {
                    self.metrics.drain_request("drain");
                    tracing::info!(%worker, "scale-in: worker asked to drain");
                }
                Err(error) => tracing::warn!(%worker, %error, "cannot drain worker"),
            }
        }
        for worker in &plan.undrain {
            if !term.is_current() {
                return;
            }
            match state.admin.undrain(worker.clone()).await {
                Ok(_) => {
                    self.metrics.drain_request("undrain");
                    tracing::info!(%worker, "load came back: worker undrained");
                }
                Err(error) => tracing::warn!(%worker, %error, "cannot undrain worker"),
            }
        }
    }

    /// Writes `desired` to `fleet/desired` when it differs from the stored one (apart from its
    /// time).
    async fn publish(
        &self,
        term: &LeaderTerm,
        known: &mut Published,
        desired: DesiredWorkers,
    ) -> Result<(), ScalerError> {
        if known
            .value
            .as_ref()
            .is_some_and(|stored| same_apart_from_time(stored, &desired))
        {
            return Ok(());
        }
        if !term.is_current() {
            return Ok(());
        }
        let outcome = cas_write(
            &self.resources.jetstream,
            &self.resources.fleet,
            DESIRED_WORKERS_KEY,
            Bytes::from(encode(&desired)),
            known.revision,
            None,
        )
        .await?;
        match outcome {
            CasOutcome::Written(revision) => {
                self.metrics.desired_writes.inc();
                tracing::info!(
                    desired = desired.desired,
                    replicas = desired.replicas,
                    live_workers = desired.live_workers,
                    draining = desired.draining.len(),
                    retire = desired.retire.len(),
                    backlog_ids = desired.backlog_ids,
                    worker_ids_per_second = ?desired.worker_ids_per_second,
                    "desired worker count published"
                );
                *known = Published {
                    revision: Some(revision),
                    value: Some(desired),
                };
            }
            CasOutcome::Conflict { current } => {
                tracing::debug!(
                    "desired worker count changed under us; re-read, retrying next round"
                );
                *known = adopt(current);
            }
        }
        Ok(())
    }
}

/// Clears the leader's exported numbers when dropped (the term is over).
struct NotLeading<'a>(&'a ScalerMetrics);

impl Drop for NotLeading<'_> {
    fn drop(&mut self) {
        self.0.not_leading();
    }
}

fn adopt(stored: Option<KvEntry>) -> Published {
    match stored.filter(|entry| !entry.deleted) {
        None => Published {
            revision: None,
            value: None,
        },
        Some(entry) => Published {
            revision: Some(entry.revision),
            value: decode::<DesiredWorkers>(&entry.value).ok(),
        },
    }
}

fn same_apart_from_time(stored: &DesiredWorkers, computed: &DesiredWorkers) -> bool {
    let comparable = DesiredWorkers {
        computed_unix_ms: stored.computed_unix_ms,
        ..computed.clone()
    };
    *stored == comparable
}
