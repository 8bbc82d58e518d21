//! Persisting a round: partitions first, then job records, then compaction deletes, then the
//! assignment records that point at the partitions. Every write is a compare-and-set on the
//! revision this leader last saw; a conflict with a record of a newer epoch deposes it.

use crate::AssignerError;
use crate::leader::AssignerMetrics;
use crate::state::{AssignerState, PartitionKey, Stored};
use bytes::Bytes;
use elk_nats::{CasOutcome, Resources, cas_write};
use elk_protocol::messages::{AssignmentRecord, JobRecord, PartitionRecord};
use elk_protocol::names::Names;
use elk_protocol::{decode, encode};
use elk_types::{Epoch, MemberId, Revision};
use futures::StreamExt;
use std::sync::atomic::Ordering;

/// Writes in flight at once during a flush (well below the client's 5,000 ack limit).
const WRITE_WINDOW: usize = 256;
/// How long the purge marker of a compacted partition key stays in the bucket.
const COMPACTION_MARKER_TTL: std::time::Duration = std::time::Duration::from_secs(60);

enum WriteTarget {
    Partition(PartitionKey),
    Completed,
    Job(elk_types::JobName),
    Assignment(MemberId, AssignmentRecord),
}

/// Persists everything dirty: partitions first, then jobs, then assignment records.
pub(crate) async fn flush(
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
    delete_compacted(state, resources, metrics).await?;

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
    .await?;
    prune_departed_assignments(state, resources).await
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

/// Deletes the keys of completed partitions now covered by their job's low watermark (the job
/// records saying so were written just before).
async fn delete_compacted(
    state: &mut AssignerState,
    resources: &Resources,
    metrics: &AssignerMetrics,
) -> Result<(), AssignerError> {
    let deletes = std::mem::take(&mut state.compaction_deletes);
    if deletes.is_empty() {
        return Ok(());
    }
    let store = &resources.partitions;
    let results: Vec<Result<(), String>> = futures::stream::iter(deletes)
        .map(|(job, id)| async move {
            let key = Names::partition_key(&job, id);
            // The purge marker itself expires, so compacted keys leave nothing behind.
            store
                .purge_with_ttl(&key, COMPACTION_MARKER_TTL)
                .await
                .map_err(|e| format!("{key}: {e}"))
        })
        .buffer_unordered(WRITE_WINDOW)
        .collect()
        .await;
    metrics
        .kv_writes
        .fetch_add(results.len() as u64, Ordering::Relaxed);
    for result in results {
        // A failed delete leaves a completed key behind; the next leader's load compacts it.
        if let Err(error) = result {
            tracing::warn!(%error, "compaction delete failed");
        }
    }
    Ok(())
}

/// Deletes the (empty) assignment records of workers that left, so the bucket holds one key per
/// live worker, not one per worker id ever seen. Compare-and-set on the revision last written.
async fn prune_departed_assignments(
    state: &mut AssignerState,
    resources: &Resources,
) -> Result<(), AssignerError> {
    let departed: Vec<(MemberId, Revision)> = state
        .assignments
        .iter()
        .filter(|(id, stored)| !state.workers.contains_key(*id) && stored.value.grants.is_empty())
        .filter_map(|(id, stored)| stored.revision.map(|revision| (id.clone(), revision)))
        .collect();
    for (id, revision) in departed {
        let deleted = resources
            .assignments
            .delete_expect_revision(id.as_str(), Some(revision.get()))
            .await;
        match deleted {
            Ok(()) => {
                state.assignments.remove(&id);
            }
            // Someone else wrote it (a newer leader): leave it to them.
            Err(error) => tracing::debug!(worker = %id, %error, "assignment record not pruned"),
        }
    }
    Ok(())
}
