//! Leader-only work: every `interval`, compute the desired worker count from the jobs bucket and
//! the membership view, and publish it to `fleet/desired` when it changed.
//!
//! Before each write the task checks that its term is current (the role lease still names this
//! incarnation under the same epoch and its membership is not lost); the supervisor also cancels
//! and awaits this task on demotion, so nothing is written once another holder exists. A failed
//! round is logged and retried at the next tick: the task itself never fails.

use crate::ScalerConfig;
use crate::ScalerError;
use crate::metrics::ScalerMetrics;
use crate::policy::{backlog_of, desired_workers};
use bytes::Bytes;
use elk_nats::{
    CasOutcome, KvEntry, LeaderTerm, LeaderWork, Resources, TermEnd, Versioned, cas_write,
    read_entry,
};
use elk_protocol::messages::{DesiredWorkers, JobRecord, MembershipView, unix_ms_now};
use elk_protocol::names::DESIRED_WORKERS_KEY;
use elk_protocol::{SCHEMA_VERSION, decode, encode};
use elk_types::Revision;
use futures::TryStreamExt;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

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

impl LeaderWork for ScalerLeader {
    type Error = ScalerError;

    /// Runs until `cancel` fires; errors of one round are logged and retried next round.
    async fn lead(
        &self,
        term: LeaderTerm,
        cancel: CancellationToken,
    ) -> Result<TermEnd, ScalerError> {
        tracing::info!(epoch = %term.epoch(), "scaler leader: publishing desired worker count");
        // Whatever ends the term (cancel, or the task being dropped), its numbers stop being
        // exported.
        let _not_leading = NotLeading(&self.metrics);
        let mut ticker = tokio::time::interval(self.config.scaler.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut published: Option<Published> = None;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return Ok(TermEnd::Cancelled),
                _ = ticker.tick() => {}
            }
            let round = tokio::select! {
                () = cancel.cancelled() => return Ok(TermEnd::Cancelled),
                round = self.publish_round(&term, &mut published) => round,
            };
            if let Err(error) = round {
                tracing::warn!(%error, "cannot publish desired worker count; retrying next round");
            }
        }
    }
}

impl ScalerLeader {
    async fn publish_round(
        &self,
        term: &LeaderTerm,
        published: &mut Option<Published>,
    ) -> Result<(), ScalerError> {
        let jobs = read_jobs(&self.resources).await?;
        let backlog = backlog_of(&jobs);
        let live_workers = self.view.borrow().as_ref().map_or(0, |view| {
            u32::try_from(view.value.workers().count()).unwrap_or(u32::MAX)
        });
        let config = &self.config;
        let desired = DesiredWorkers {
            schema: SCHEMA_VERSION,
            epoch: term.epoch(),
            desired: desired_workers(
                backlog.partitions,
                config.scaler.partitions_per_worker,
                config.scaler.min_workers,
                config.scaler.max_workers,
            ),
            live_workers,
            backlog_ids: backlog.ids,
            backlog_partitions: backlog.partitions,
            computed_unix_ms: unix_ms_now(),
        };
        self.metrics.computed(&desired);
        if published.is_none() {
            let stored = read_entry(&self.resources.fleet, DESIRED_WORKERS_KEY).await?;
            *published = Some(adopt(stored));
        }
        let known = published.as_mut().expect("set above");
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
                    live_workers,
                    backlog_ids = backlog.ids,
                    backlog_partitions = backlog.partitions,
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

/// Every decodable job record; undecodable ones are logged and skipped.
async fn read_jobs(resources: &Resources) -> Result<Vec<JobRecord>, ScalerError> {
    let store = &resources.jobs;
    let list_error = |source: elk_nats::BoxError| {
        ScalerError::Nats(elk_nats::NatsError::kv(
            "list keys",
            &store.name,
            ">",
            source,
        ))
    };
    let keys: Vec<String> = store
        .keys()
        .await
        .map_err(|error| list_error(error.into()))?
        .try_collect()
        .await
        .map_err(|error| list_error(error.into()))?;
    let mut jobs = Vec::with_capacity(keys.len());
    for key in keys {
        let Some(entry) = read_entry(store, &key).await? else {
            continue;
        };
        if entry.deleted {
            continue;
        }
        match decode::<JobRecord>(&entry.value) {
            Ok(job) => jobs.push(job),
            Err(error) => tracing::warn!(%key, %error, "ignoring undecodable job record"),
        }
    }
    Ok(jobs)
}
