//! The leader loop: load the namespace's state from KV, then react to membership views, progress
//! reports, admin requests and a resync tick. Every iteration ends with one idempotent
//! `reconcile` (plan partitions, plan grants) and a flush that persists partitions before the
//! assignment records pointing at them; progress messages are acked only after that flush.

use crate::state::{AssignerState, Policy, Stored};
use crate::{AssignerError, admin, flush};
use async_nats::jetstream::consumer::PullConsumer;
use bytes::Bytes;
use elk_nats::{Resources, Versioned, watch_snapshot};
use elk_protocol::admin::{PlanReply, PlanRequest};
use elk_protocol::messages::{
    AssignmentRecord, JobRecord, MemberRef, MembershipView, PartitionRecord, ProgressReport,
    RoleLease, unix_ms_now,
};
use elk_protocol::names::PROGRESS_CONSUMER;
use elk_protocol::{decode, encode};
use elk_types::{Epoch, MemberId};
use futures::{FutureExt, StreamExt};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How long the assigner waits for a planner's answer.
const PLANNER_TIMEOUT: Duration = Duration::from_secs(2);
/// Progress reports applied per iteration at most.
const PROGRESS_BATCH: usize = 1_000;

/// Counters exported by the assigner (read by tests and `elkctl`).
#[derive(Debug, Default)]
pub struct AssignerMetrics {
    pub progress_applied: AtomicU64,
    pub progress_rejected: AtomicU64,
    pub progress_malformed: AtomicU64,
    pub partitions_reclaimed: AtomicU64,
    pub kv_writes: AtomicU64,
    /// Gaps found (full audit at leader start, or in front of a new partition).
    pub gaps_detected: AtomicU64,
    /// Partitions created to fill gaps.
    pub gaps_repaired: AtomicU64,
    /// Overlapping partitions found or refused.
    pub overlaps_detected: AtomicU64,
    /// Partitions revoked from over-quota workers to rebalance.
    pub revocations: AtomicU64,
    /// Revokes not answered within the revoke timeout.
    pub revokes_overdue: AtomicU64,
    pub leader_terms: AtomicU64,
}

pub(crate) struct LeaderInputs {
    pub resources: Resources,
    pub me: MemberRef,
    pub epoch: Epoch,
    pub policy: Policy,
    pub tick: Duration,
    pub view: watch::Receiver<Option<Versioned<MembershipView>>>,
    pub role: watch::Receiver<Option<Versioned<RoleLease>>>,
    pub cancel: CancellationToken,
    pub metrics: Arc<AssignerMetrics>,
}

/// A member that left the view, whose partitions wait until the progress stream has been applied
/// up to `barrier` (everything it published before leaving).
struct PendingReclaim {
    member: MemberRef,
    barrier: u64,
}

pub(crate) async fn lead(mut inputs: LeaderInputs) -> Result<(), AssignerError> {
    let resources = inputs.resources.clone();
    inputs.metrics.leader_terms.fetch_add(1, Ordering::Relaxed);
    let mut state = load_state(&resources, inputs.epoch, inputs.policy.clone()).await?;
    tracing::info!(
        epoch = %inputs.epoch,
        jobs = state.jobs.len(),
        live_partitions = state.partitions.len(),
        "assigner leading"
    );
    let consumer: PullConsumer = resources
        .progress
        .get_consumer(PROGRESS_CONSUMER)
        .await
        .map_err(|e| AssignerError::nats("progress consumer", e))?;
    let mut progress = consumer
        .stream()
        .max_messages_per_batch(PROGRESS_BATCH)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .map_err(|e| AssignerError::nats("progress stream", e))?;
    let admin_subject = resources
        .names
        .admin_subject(elk_protocol::admin::ASSIGNER_SERVICE, ">");
    let mut admin = resources
        .client
        // A queue group: during a leader change only one replica answers a request.
        .queue_subscribe(admin_subject, "assigner".to_owned())
        .await
        .map_err(|e| AssignerError::nats("admin subscription", e))?;

    let mut reclaims: Vec<PendingReclaim> = Vec::new();
    let view = inputs.view.borrow_and_update().clone();
    if let Some(view) = view {
        queue_reclaims(&mut state, &view.value, &resources, &mut reclaims).await?;
    }
    state.restamp_all_assignments();
    // Planner answers come back through this channel from short-lived request tasks.
    let (plan_sender, mut plan_answers) = tokio::sync::mpsc::unbounded_channel();
    let mut tick = tokio::time::interval(inputs.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        let mut batch = Vec::new();
        let mut admin_request = None;
        tokio::select! {
            biased;
            _ = inputs.cancel.cancelled() => return Ok(()),
            changed = inputs.view.changed() => {
                if changed.is_err() {
                    return Err(AssignerError::Stopped("membership view follower ended".into()));
                }
                let view = inputs.view.borrow_and_update().clone();
                if let Some(view) = view {
                    queue_reclaims(&mut state, &view.value, &resources, &mut reclaims).await?;
                }
            }
            message = progress.next() => {
                match message {
                    Some(Ok(message)) => batch.push(message),
                    Some(Err(error)) => tracing::warn!(%error, "progress stream error"),
                    None => return Err(AssignerError::Stopped("progress stream ended".into())),
                }
                while batch.len() < PROGRESS_BATCH {
                    match progress.next().now_or_never() {
                        Some(Some(Ok(message))) => batch.push(message),
                        _ => break,
                    }
                }
            }
            request = admin.next() => admin_request = request,
            Some((job, max_id)) = plan_answers.recv() => state.apply_plan_answer(&job, max_id),
            _ = tick.tick() => {}
        }
        state.now_ms = unix_ms_now();

        for message in &batch {
            apply_progress_message(&mut state, message, &inputs.metrics);
        }
        let mut admin_reply = None;
        if let Some(request) = admin_request {
            let reply =
                admin::handle(&mut state, &resources, &inputs.metrics, &request.payload).await;
            admin_reply = Some((request.reply.clone(), reply));
        }
        if !reclaims.is_empty() {
            // The ack floor is contiguous (every report up to it is applied); the highest
            // sequence seen is not, since redelivered reports may arrive after newer ones.
            let caught_up = consumer_ack_floor(&consumer).await;
            reclaims.retain(|pending| {
                if pending.barrier > caught_up {
                    return true;
                }
                let count = state.reclaim(&pending.member);
                if count > 0 {
                    tracing::info!(member = %pending.member.id, partitions = count, "reclaimed partitions of a departed worker");
                }
                inputs.metrics.partitions_reclaimed.fetch_add(count as u64, Ordering::Relaxed);
                false
            });
        }

        state.release_due_retries();
        state.report_overdue_revokes();
        state.plan_partitions();
        for question in state.plan_questions() {
            ask_planner(&resources, question, plan_sender.clone());
        }
        state.plan_grants();
        state.compact();
        state.clear_cancelled();
        ensure_still_leader(&inputs)?;
        flush::flush(&mut state, &resources, &inputs.metrics).await?;
        for message in &batch {
            if let Err(error) = message.ack().await {
                tracing::debug!(%error, "progress ack failed; the report will be redelivered");
            }
        }
        if let Some((Some(reply), outcome)) = admin_reply {
            let _ = resources
                .client
                .publish(reply, Bytes::from(encode(&outcome)))
                .await;
        }
        publish_counters(&state, &inputs.metrics);
    }
}

/// Copies the state's counters of this term into the shared metrics.
fn publish_counters(state: &AssignerState, metrics: &AssignerMetrics) {
    let relaxed = Ordering::Relaxed;
    metrics
        .progress_rejected
        .store(state.rejected_progress, relaxed);
    metrics.gaps_detected.store(state.gaps_detected, relaxed);
    metrics.gaps_repaired.store(state.gaps_repaired, relaxed);
    metrics
        .overlaps_detected
        .store(state.overlaps_detected, relaxed);
    metrics.revocations.store(state.revocations, relaxed);
    metrics
        .revokes_overdue
        .store(state.revokes_overdue, relaxed);
}

/// Asks an open-ended job's planner in the background; the answer (or `None` after a failure or
/// timeout) comes back to the leader loop.
fn ask_planner(
    resources: &Resources,
    question: crate::state::PlanQuestion,
    answers: tokio::sync::mpsc::UnboundedSender<(elk_types::JobName, Option<u64>)>,
) {
    let client = resources.client.clone();
    let subject = resources.names.plan_subject(&question.job);
    let request = PlanRequest {
        schema: elk_protocol::SCHEMA_VERSION,
        job: question.job.clone(),
        cursor: question.cursor,
        wanted: question.wanted,
    };
    tokio::spawn(async move {
        let reply = tokio::time::timeout(
            PLANNER_TIMEOUT,
            client.request(subject, Bytes::from(encode(&request))),
        )
        .await;
        let max_id = match reply {
            Ok(Ok(message)) => match decode::<PlanReply>(&message.payload) {
                Ok(reply) => reply.max_id,
                Err(error) => {
                    tracing::warn!(job = %question.job, %error, "malformed planner reply");
                    None
                }
            },
            Ok(Err(error)) => {
                tracing::debug!(job = %question.job, %error, "planner not reachable");
                None
            }
            Err(_) => None,
        };
        let _ = answers.send((question.job, max_id));
    });
}

fn ensure_still_leader(inputs: &LeaderInputs) -> Result<(), AssignerError> {
    let role = inputs.role.borrow();
    let still = role.as_ref().is_some_and(|lease| {
        lease.value.holder.as_ref() == Some(&inputs.me) && lease.value.epoch == inputs.epoch
    });
    if still {
        Ok(())
    } else {
        Err(AssignerError::Deposed {
            epoch: inputs.epoch,
        })
    }
}

async fn consumer_ack_floor(consumer: &PullConsumer) -> u64 {
    let mut consumer = consumer.clone();
    match consumer.info().await {
        Ok(info) => {
            if info.num_pending == 0 && info.num_ack_pending == 0 {
                u64::MAX
            } else {
                info.ack_floor.stream_sequence
            }
        }
        Err(_) => 0,
    }
}

async fn queue_reclaims(
    state: &mut AssignerState,
    view: &MembershipView,
    resources: &Resources,
    reclaims: &mut Vec<PendingReclaim>,
) -> Result<(), AssignerError> {
    let gone = state.apply_view(view);
    if gone.is_empty() {
        return Ok(());
    }
    let barrier = resources
        .progress
        .get_info()
        .await
        .map_err(|e| AssignerError::nats("progress stream info", e))?
        .state
        .last_sequence;
    for member in gone {
        if !reclaims.iter().any(|pending| pending.member == member) {
            reclaims.push(PendingReclaim { member, barrier });
        }
    }
    Ok(())
}

fn apply_progress_message(
    state: &mut AssignerState,
    message: &async_nats::jetstream::Message,
    metrics: &AssignerMetrics,
) {
    let decoded = decode::<ProgressReport>(&message.payload).map_err(|e| e.to_string());
    // A report must come from the subject of the worker it names: with per-worker publish
    // permissions, no client can speak for another worker.
    let checked = decoded.and_then(|report| {
        let from_subject = message.subject.rsplit('.').next().unwrap_or_default();
        if from_subject == report.worker.as_str() {
            Ok(report)
        } else {
            Err(format!(
                "report names worker {} but came from {}",
                report.worker, message.subject
            ))
        }
    });
    match checked {
        Ok(report) => match state.apply_progress(&report) {
            Ok(()) => {
                metrics.progress_applied.fetch_add(1, Ordering::Relaxed);
            }
            Err(rejection) => {
                tracing::debug!(?rejection, worker = %report.worker, job = %report.job, partition = %report.partition, "stale progress rejected");
            }
        },
        Err(error) => {
            if metrics.progress_malformed.fetch_add(1, Ordering::Relaxed) == 0 {
                tracing::warn!(subject = %message.subject, %error, "malformed progress report dropped");
            }
        }
    }
}

/// Reads jobs, live partitions and assignment records from KV.
async fn load_state(
    resources: &Resources,
    epoch: Epoch,
    policy: Policy,
) -> Result<AssignerState, AssignerError> {
    let mut state = AssignerState::new(epoch, policy);
    // The clock first, so that revokes found at load are timed from now, not from 1970.
    state.now_ms = unix_ms_now();
    let jobs = watch_snapshot(&resources.jobs)
        .await
        .map_err(AssignerError::Nats)?;
    for (key, entry) in jobs.entries {
        match decode::<JobRecord>(&entry.value) {
            Ok(job) => {
                state.jobs.insert(
                    job.name.clone(),
                    Stored {
                        value: job,
                        revision: Some(entry.revision),
                    },
                );
            }
            Err(error) => tracing::warn!(%key, %error, "skipping undecodable job record"),
        }
    }
    let partitions = watch_snapshot(&resources.partitions)
        .await
        .map_err(AssignerError::Nats)?;
    let mut loaded = Vec::with_capacity(partitions.entries.len());
    for (key, entry) in partitions.entries {
        match decode::<PartitionRecord>(&entry.value) {
            Ok(record) => {
                state.load_partition(record.clone(), entry.revision);
                loaded.push(record);
            }
            Err(error) => tracing::warn!(%key, %error, "skipping undecodable partition record"),
        }
    }
    state.build_coverage(loaded);
    let assignments = watch_snapshot(&resources.assignments)
        .await
        .map_err(AssignerError::Nats)?;
    for (key, entry) in assignments.entries {
        let Ok(worker) = MemberId::new(key.clone()) else {
            continue;
        };
        match decode::<AssignmentRecord>(&entry.value) {
            Ok(record) => {
                if record.epoch > epoch {
                    return Err(AssignerError::Deposed { epoch });
                }
                state.assignments.insert(
                    worker,
                    Stored {
                        value: record,
                        revision: Some(entry.revision),
                    },
                );
            }
            Err(error) => tracing::warn!(%key, %error, "skipping undecodable assignment record"),
        }
    }
    Ok(state)
}
