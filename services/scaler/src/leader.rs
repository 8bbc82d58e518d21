//! Leader-only work: every `interval`, compute the desired worker count from the jobs bucket and
//! the membership view, and publish it to `fleet/desired` when it changed.
//!
//! Before each write the task re-checks that the role lease still names this member under the
//! same epoch and that its membership is not lost; the supervisor also cancels and awaits this
//! task on demotion, so nothing is written once another holder exists.

use crate::ScalerConfig;
use crate::ScalerError;
use crate::policy::{backlog_of, desired_workers};
use bytes::Bytes;
use elk_nats::{CasOutcome, KvEntry, Resources, Versioned, cas_write, read_entry};
use elk_protocol::messages::{
    DesiredWorkers, JobRecord, MemberRef, MembershipView, RoleLease, unix_ms_now,
};
use elk_protocol::names::DESIRED_WORKERS_KEY;
use elk_protocol::{SCHEMA_VERSION, decode, encode};
use elk_types::{Epoch, Revision};
use futures::TryStreamExt;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

/// What the leader task needs to decide and to fence its writes.
pub(crate) struct LeaderContext {
    pub(crate) resources: Resources,
    pub(crate) config: ScalerConfig,
    pub(crate) me: MemberRef,
    pub(crate) epoch: Epoch,
    pub(crate) role: watch::Receiver<Option<Versioned<RoleLease>>>,
    pub(crate) view: watch::Receiver<Option<Versioned<MembershipView>>>,
    pub(crate) membership_lost: CancellationToken,
}

/// The `desired` key as last written or read by this leader.
struct Published {
    revision: Option<Revision>,
    value: Option<DesiredWorkers>,
}

/// Runs until `stop` is cancelled; errors of one round are logged and retried next round.
pub(crate) async fn lead(context: LeaderContext, stop: CancellationToken) {
    tracing::info!(epoch = %context.epoch, "scaler leader: publishing desired worker count");
    let mut ticker = tokio::time::interval(context.config.scaler.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut published: Option<Published> = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let round = tokio::select! {
            () = stop.cancelled() => return,
            round = publish_round(&context, &mut published) => round,
        };
        if let Err(error) = round {
            tracing::warn!(%error, "cannot publish desired worker count; retrying next round");
        }
    }
}

/// Still the designated leader under the epoch this task was started for?
pub(crate) fn holds_role(lease: Option<&Versioned<RoleLease>>, me: &MemberRef) -> Option<Epoch> {
    let lease = &lease?.value;
    (lease.holder.as_ref() == Some(me)).then_some(lease.epoch)
}

async fn publish_round(
    context: &LeaderContext,
    published: &mut Option<Published>,
) -> Result<(), ScalerError> {
    let jobs = read_jobs(&context.resources).await?;
    let backlog = backlog_of(&jobs);
    let live_workers = context.view.borrow().as_ref().map_or(0, |view| {
        u32::try_from(view.value.workers().count()).unwrap_or(u32::MAX)
    });
    let config = &context.config;
    let desired = DesiredWorkers {
        schema: SCHEMA_VERSION,
        epoch: context.epoch,
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
    if published.is_none() {
        let stored = read_entry(&context.resources.fleet, DESIRED_WORKERS_KEY).await?;
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
    let still_leader =
        holds_role(context.role.borrow().as_ref(), &context.me) == Some(context.epoch);
    if !still_leader || context.membership_lost.is_cancelled() {
        return Ok(());
    }
    let outcome = cas_write(
        &context.resources.jetstream,
        &context.resources.fleet,
        DESIRED_WORKERS_KEY,
        Bytes::from(encode(&desired)),
        known.revision,
        None,
    )
    .await?;
    match outcome {
        CasOutcome::Written(revision) => {
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
            tracing::debug!("desired worker count changed under us; re-read, retrying next round");
            *known = adopt(current);
        }
    }
    Ok(())
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
