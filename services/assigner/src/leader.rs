//! The leader loop: load the namespace's state from KV, then react to membership views, progress
//! reports, admin requests and a resync tick. Every iteration ends with one idempotent
//! `reconcile` (plan partitions, plan grants) and a flush that persists partitions before the
//! assignment records pointing at them; progress messages are acked only after that flush.

use crate::AssignerError;
use crate::state::{AssignerState, PartitionKey, Policy, Stored};
use async_nats::jetstream::consumer::PullConsumer;
use bytes::Bytes;
use elk_nats::{CasOutcome, Resources, Versioned, cas_write, watch_snapshot};
use elk_protocol::admin::{AdminReply, CreateJobRequest};
use elk_protocol::messages::{
    AssignmentRecord, JobRecord, JobState, MemberRef, MembershipView, PartitionRecord,
    ProgressReport, RoleLease, unix_ms_now,
};
use elk_protocol::names::{Names, PROGRESS_CONSUMER};
use elk_protocol::{SCHEMA_VERSION, decode, encode};
use elk_types::{Epoch, MemberId, PartitionId, Revision};
use futures::{FutureExt, StreamExt};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Writes in flight at once during a flush (well below the client's 5,000 ack limit).
const WRITE_WINDOW: usize = 256;
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
    let admin_subject = resources.names.admin_subject(
        elk_protocol::admin::ASSIGNER_SERVICE,
        elk_protocol::admin::CREATE_JOB_VERB,
    );
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
            _ = tick.tick() => {}
        }

        for message in &batch {
            apply_progress_message(&mut state, message, &inputs.metrics);
        }
        let mut admin_reply = None;
        if let Some(request) = admin_request {
            admin_reply = Some((
                request.reply.clone(),
                create_job(&mut state, &resources, &request.payload).await,
            ));
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

        state.plan_partitions();
        state.plan_grants();
        ensure_still_leader(&inputs)?;
        flush(&mut state, &resources, &inputs.metrics).await?;
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
    match decode::<ProgressReport>(&message.payload) {
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

async fn create_job(
    state: &mut AssignerState,
    resources: &Resources,
    payload: &[u8],
) -> AdminReply {
    let fail = |message: String| AdminReply {
        schema: SCHEMA_VERSION,
        job: None,
        error: Some(message),
    };
    let request: CreateJobRequest = match decode(payload) {
        Ok(request) => request,
        Err(error) => return fail(format!("bad request: {error}")),
    };
    if request.partition_size == 0 {
        return fail("partition_size must be at least 1".to_owned());
    }
    if request.range.last() == u64::MAX {
        return fail("the range must end below u64::MAX".to_owned());
    }
    if state.jobs.contains_key(&request.name) {
        return fail(format!("job '{}' already exists", request.name));
    }
    let record = JobRecord {
        schema: SCHEMA_VERSION,
        name: request.name.clone(),
        spec: elk_protocol::messages::JobSpec {
            range: request.range,
            partition_size: request.partition_size,
        },
        state: JobState::Active,
        cursor: request.range.first(),
        next_partition: PartitionId(1),
        partitions_total: 0,
        partitions_completed: 0,
        ids_completed: 0,
        created_unix_ms: unix_ms_now(),
        completed_unix_ms: None,
        epoch: state.epoch,
    };
    let written = cas_write(
        &resources.jetstream,
        &resources.jobs,
        request.name.as_str(),
        Bytes::from(encode(&record)),
        None,
        None,
    )
    .await;
    match written {
        Ok(CasOutcome::Written(revision)) => {
            state.jobs.insert(
                request.name,
                Stored {
                    value: record.clone(),
                    revision: Some(revision),
                },
            );
            AdminReply {
                schema: SCHEMA_VERSION,
                job: Some(record),
                error: None,
            }
        }
        Ok(CasOutcome::Conflict { .. }) => fail(format!("job '{}' already exists", request.name)),
        Err(error) => fail(format!("could not store the job: {error}")),
    }
}

/// Reads jobs, live partitions and assignment records from KV.
async fn load_state(
    resources: &Resources,
    epoch: Epoch,
    policy: Policy,
) -> Result<AssignerState, AssignerError> {
    let mut state = AssignerState::new(epoch, policy);
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

enum WriteTarget {
    Partition(PartitionKey),
    Completed,
    Job(elk_types::JobName),
    Assignment(MemberId, AssignmentRecord),
}

/// Persists everything dirty: partitions first, then jobs, then assignment records.
async fn flush(
    state: &mut AssignerState,
    resources: &Resources,
    metrics: &AssignerMetrics,
) -> Result<(), AssignerError> {
    let mut partition_writes: Vec<(WriteTarget, String, Bytes, Option<Revision>)> = Vec::new();
    for key in std::mem::take(&mut state.dirty_partitions) {
        if let Some(stored) = state.partitions.get(&key) {
            let name = Names::partition_key(&key.0, key.1);
            partition_writes.push((
                WriteTarget::Partition(key),
                name,
                Bytes::from(encode(&stored.value)),
                stored.revision,
            ));
        }
    }
    for stored in &state.completed_to_write {
        let name = Names::partition_key(&stored.value.job, stored.value.id);
        partition_writes.push((
            WriteTarget::Completed,
            name,
            Bytes::from(encode(&stored.value)),
            stored.revision,
        ));
    }
    write_all(
        state,
        resources,
        &resources.partitions,
        partition_writes,
        metrics,
    )
    .await?;
    state.completed_to_write.clear();

    let mut job_writes = Vec::new();
    let epoch = state.epoch;
    for name in std::mem::take(&mut state.dirty_jobs) {
        if let Some(stored) = state.jobs.get_mut(&name) {
            stored.value.epoch = epoch;
            job_writes.push((
                WriteTarget::Job(name.clone()),
                name.to_string(),
                Bytes::from(encode(&stored.value)),
                stored.revision,
            ));
        }
    }
    write_all(state, resources, &resources.jobs, job_writes, metrics).await?;

    let mut assignment_writes = Vec::new();
    for worker in std::mem::take(&mut state.dirty_assignments) {
        if let Some(record) = state.desired_assignment(&worker) {
            let revision = state
                .assignments
                .get(&worker)
                .and_then(|stored| stored.revision);
            let value = Bytes::from(encode(&record));
            assignment_writes.push((
                WriteTarget::Assignment(worker.clone(), record),
                worker.to_string(),
                value,
                revision,
            ));
        }
    }
    write_all(
        state,
        resources,
        &resources.assignments,
        assignment_writes,
        metrics,
    )
    .await
}

async fn write_all(
    state: &mut AssignerState,
    resources: &Resources,
    store: &async_nats::jetstream::kv::Store,
    writes: Vec<(WriteTarget, String, Bytes, Option<Revision>)>,
    metrics: &AssignerMetrics,
) -> Result<(), AssignerError> {
    if writes.is_empty() {
        return Ok(());
    }
    let jetstream = &resources.jetstream;
    let results: Vec<(
        WriteTarget,
        Result<CasOutcome, elk_nats::NatsError>,
        String,
        Bytes,
    )> = futures::stream::iter(writes)
        .map(|(target, key, value, revision)| async move {
            let outcome = cas_write(jetstream, store, &key, value.clone(), revision, None).await;
            (target, outcome, key, value)
        })
        .buffer_unordered(WRITE_WINDOW)
        .collect()
        .await;
    metrics
        .kv_writes
        .fetch_add(results.len() as u64, Ordering::Relaxed);
    for (target, outcome, key, value) in results {
        let revision = match outcome.map_err(AssignerError::Nats)? {
            CasOutcome::Written(revision) => revision,
            CasOutcome::Conflict { current } => {
                // Only the leader writes these keys: a conflict means another (older or newer)
                // assigner wrote. A newer epoch deposes us; an older one is overwritten.
                let current_revision = current.as_ref().map(|entry| entry.revision);
                if let Some(entry) = &current
                    && stored_epoch(&target, &entry.value).is_some_and(|e| e > state.epoch)
                {
                    return Err(AssignerError::Deposed { epoch: state.epoch });
                }
                match cas_write(
                    &resources.jetstream,
                    store,
                    &key,
                    value,
                    current_revision,
                    None,
                )
                .await
                .map_err(AssignerError::Nats)?
                {
                    CasOutcome::Written(revision) => revision,
                    CasOutcome::Conflict { .. } => {
                        return Err(AssignerError::Deposed { epoch: state.epoch });
                    }
                }
            }
        };
        match target {
            WriteTarget::Partition(key) => {
                if let Some(stored) = state.partitions.get_mut(&key) {
                    stored.revision = Some(revision);
                }
            }
            WriteTarget::Completed => {}
            WriteTarget::Job(name) => {
                if let Some(stored) = state.jobs.get_mut(&name) {
                    stored.revision = Some(revision);
                }
            }
            WriteTarget::Assignment(worker, record) => {
                state.assignments.insert(
                    worker,
                    Stored {
                        value: record,
                        revision: Some(revision),
                    },
                );
            }
        }
    }
    Ok(())
}

fn stored_epoch(target: &WriteTarget, value: &[u8]) -> Option<Epoch> {
    match target {
        WriteTarget::Partition(_) | WriteTarget::Completed => decode::<PartitionRecord>(value)
            .ok()
            .map(|record| record.epoch),
        WriteTarget::Assignment(..) => decode::<AssignmentRecord>(value).ok().map(|r| r.epoch),
        WriteTarget::Job(_) => decode::<JobRecord>(value).ok().map(|record| record.epoch),
    }
}
