//! Writing a round's change set. First the placement levers (`fleet/placement`, so a drain or
//! freeze is stored before the records it causes). Then, on the **baseline** write path, four
//! sequential phases: partitions (completed ones included), job records, purges of compacted
//! keys, assignment records. On the **lean** path (the default), two: partitions together with
//! job records, then purges together with assignment records. The orderings that remain are the
//! ones safety needs:
//!
//! * a purge of a compacted (or cancelled job's) partition key after the job record that accounts
//!   for it, so a crash in between leaves an extra key (compacted again by the next leader),
//!   never IDs that neither a key nor the job record's summary covers;
//! * an assignment record after the partition records it points at, so a worker never runs a
//!   grant whose partition record (owner, token) is not stored — a new leader would not know it;
//! * a finished job's record purged after its partition keys, deletes of departed workers' empty
//!   assignment records after their last put (at its revision).
//!
//! Up to [`WRITE_WINDOW`] writes are in flight per step. Every write is a
//! compare-and-set on the revision this leader last saw; a conflict with a record written under a
//! newer epoch deposes it (if the role lease has reached that epoch: otherwise the record is
//! forged, see [`newer_term_exists`]), one written under its own or an older epoch is overwritten
//! (compare-and-set on the revision just read). The new revisions are
//! returned for [`crate::model::AssignerState::record_written`].

use crate::error::AssignerError;
use crate::faults::Faults;
use crate::metrics::AssignerMetrics;
use crate::model::{ChangeSet, PartitionKey, Put, RangePurge, WritePath, Written};
use bytes::Bytes;
use elk_nats::{CasOutcome, Resources, cas_write, read_entry};
use elk_protocol::codec::Message;
use elk_protocol::messages::{
    AssignmentRecord, JobRecord, PartitionRecord, PlacementControl, RoleLease,
};
use elk_protocol::names::{ControlRole, Names, PLACEMENT_KEY};
use elk_protocol::{decode, encode};
use elk_types::{Epoch, JobName, MemberId, Revision};
use futures::StreamExt;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Writes in flight at once during a flush (well below the client's 5,000 ack limit).
const WRITE_WINDOW: usize = 256;
/// How long the purge marker of a compacted partition key stays in the bucket.
const COMPACTION_MARKER_TTL: Duration = Duration::from_secs(60);

/// A record stamped with the epoch of the assigner that wrote it (the fencing of its writes).
trait Fenced: Message {
    fn epoch(&self) -> Epoch;
}

impl Fenced for PartitionRecord {
    fn epoch(&self) -> Epoch {
        self.epoch
    }
}

impl Fenced for JobRecord {
    fn epoch(&self) -> Epoch {
        self.epoch
    }
}

impl Fenced for AssignmentRecord {
    fn epoch(&self) -> Epoch {
        self.epoch
    }
}

impl Fenced for PlacementControl {
    fn epoch(&self) -> Epoch {
        self.epoch
    }
}

/// Writes `changes` under `epoch` and returns what was written: in four sequential phases on
/// the baseline write path, in two on the lean one (see the module header).
pub(crate) async fn write_changes(
    changes: ChangeSet,
    epoch: Epoch,
    write_path: WritePath,
    range_purges_allowed: &AtomicBool,
    faults: &Faults,
    resources: &Resources,
    metrics: &AssignerMetrics,
) -> Result<Written, AssignerError> {
    let ChangeSet {
        partitions,
        completed,
        jobs,
        purges,
        range_purges,
        job_deletes,
        assignments,
        prunes,
        placement,
    } = changes;
    let writer = Writer {
        resources,
        metrics,
        epoch,
    };
    let placement = writer
        .put_all(
            "fleet",
            &resources.fleet,
            placement,
            |()| PLACEMENT_KEY.to_owned(),
            drop,
        )
        .await?
        .into_iter()
        .map(|((), (), revision)| revision)
        .next();
    let partition_key = |key: &PartitionKey| Names::partition_key(&key.job, key.partition);
    count_partition_writes(metrics, &partitions, &completed);
    let partition_puts = partitions.into_iter().chain(completed).collect();
    let partition_purges = purges.iter().map(partition_key).collect();
    let job_name = |name: &JobName| name.to_string();
    let worker_key = |worker: &MemberId| worker.to_string();
    let compaction_marker = Some(COMPACTION_MARKER_TTL);
    let (partitions, jobs, assignments) = match write_path {
        WritePath::Baseline => {
            let partitions = writer
                .put_all(
                    "partitions",
                    &resources.partitions,
                    partition_puts,
                    partition_key,
                    drop,
                )
                .await?;
            let jobs = writer
                .put_all("jobs", &resources.jobs, jobs, job_name, drop)
                .await?;
            writer
                .purge_all(
                    "partitions",
                    &resources.partitions,
                    partition_purges,
                    compaction_marker,
                )
                .await;
            let assignments = writer
                .put_all(
                    "assignments",
                    &resources.assignments,
                    assignments,
                    worker_key,
                    std::convert::identity,
                )
                .await?;
            (partitions, jobs, assignments)
        }
        WritePath::Lean => {
            // Partition records and job records do not wait for each other: no completed
            // record is written (so none must precede the job record counting it), and a crash
            // between a cut partition and the job record advancing the cursor is recovered
            // either way (a key past the cursor: `catch_up_cursors`; a cursor past a missing
            // key: a gap the audit repairs).
            let (partitions, jobs) = futures::join!(
                writer.put_all(
                    "partitions",
                    &resources.partitions,
                    partition_puts,
                    partition_key,
                    drop,
                ),
                writer.put_all("jobs", &resources.jobs, jobs, job_name, drop),
            );
            let (partitions, jobs) = (partitions?, jobs?);
            // Then, together: purges of keys the job records just written account for (by range
            // where the model could, `model/range_purge.rs`), and the assignment records pointing
            // at the partition records just written.
            let ((), (), assignments) = futures::join!(
                writer.purge_all(
                    "partitions",
                    &resources.partitions,
                    partition_purges,
                    compaction_marker,
                ),
                writer.purge_ranges(
                    &resources.partitions,
                    range_purges,
                    range_purges_allowed,
                    faults.range_purges_refused(),
                    compaction_marker
                ),
                writer.put_all(
                    "assignments",
                    &resources.assignments,
                    assignments,
                    worker_key,
                    std::convert::identity,
                ),
            );
            (partitions, jobs, assignments?)
        }
    };
    // The jobs bucket has no per-message TTL: a removed job leaves its purge marker (a header,
    // replaced when the name is used again). After the partition purges: a job's record goes
    // after its keys.
    let job_purges = job_deletes.iter().map(JobName::to_string).collect();
    writer
        .purge_all("jobs", &resources.jobs, job_purges, None)
        .await;
    let written_now: BTreeMap<&MemberId, Revision> = assignments
        .iter()
        .map(|(worker, _, revision)| (worker, *revision))
        .collect();
    let mut pruned = Vec::new();
    for prune in prunes {
        let Some(revision) = prune
            .expected
            .or_else(|| written_now.get(&prune.worker).copied())
        else {
            continue;
        };
        let deleted = resources
            .assignments
            .delete_expect_revision(prune.worker.as_str(), Some(revision.get()))
            .await;
        metrics.kv_writes("assignments", "delete", 1);
        match deleted {
            Ok(()) => pruned.push(prune.worker),
            // Someone else wrote it (a newer leader): leave it to them.
            Err(error) => {
                tracing::debug!(worker = %prune.worker, %error, "assignment record not pruned");
            }
        }
    }
    Ok(Written {
        partitions: partitions
            .into_iter()
            .map(|(key, (), revision)| (key, revision))
            .collect(),
        jobs: jobs
            .into_iter()
            .map(|(name, (), revision)| (name, revision))
            .collect(),
        assignments,
        pruned,
        placement,
    })
}

/// Counts partition puts by kind: `create` (a new key, possibly granted at once), `update` (a
/// grant, revoke, checkpoint, release, failure of an existing key), `completed` (baseline only).
fn count_partition_writes(
    metrics: &AssignerMetrics,
    partitions: &[Put<PartitionKey, PartitionRecord>],
    completed: &[Put<PartitionKey, PartitionRecord>],
) {
    let created = partitions
        .iter()
        .filter(|put| put.expected.is_none())
        .count() as u64;
    let updated = partitions.len() as u64 - created;
    metrics.partition_writes("create", created);
    metrics.partition_writes("update", updated);
    metrics.partition_writes("completed", completed.len() as u64);
}

/// Whether a record stamped with `epoch` (above this leader's) comes from a real newer term: the
/// role lease, which the election alone writes, has reached that epoch. Otherwise the record is
/// forged (a misconfigured server let someone write it) and must not depose the rightful leader:
/// it is overwritten like a record of an older epoch.
pub(crate) async fn newer_term_exists(
    resources: &Resources,
    epoch: Epoch,
) -> Result<bool, AssignerError> {
    let key = ControlRole::Assigner.lease_key();
    let lease = read_entry(&resources.leases, key)
        .await?
        .filter(|entry| !entry.deleted)
        .and_then(|entry| decode::<RoleLease>(&entry.value).ok());
    let newer = lease.is_some_and(|lease| lease.epoch >= epoch);
    if !newer {
        tracing::warn!(%epoch, "a record carries an epoch the assigner role never had: forged, overwritten");
    }
    Ok(newer)
}

struct Writer<'a> {
    resources: &'a Resources,
    metrics: &'a AssignerMetrics,
    epoch: Epoch,
}

impl Writer<'_> {
    /// Writes every put (at most [`WRITE_WINDOW`] in flight) and returns their keys with what
    /// `keep` keeps of each value and the new revisions. Partition and job records are dropped
    /// once written (`drop`): the model holds them; keeping 100,000 written partition records
    /// until the flush ended doubled a cold start's peak memory.
    async fn put_all<K, V: Fenced, T>(
        &self,
        bucket: &'static str,
        store: &async_nats::jetstream::kv::Store,
        puts: Vec<Put<K, V>>,
        key_name: impl Fn(&K) -> String,
        keep: impl Fn(V) -> T,
    ) -> Result<Vec<(K, T, Revision)>, AssignerError> {
        if puts.is_empty() {
            return Ok(Vec::new());
        }
        let count = puts.len() as u64;
        let keep = &keep;
        let written: Vec<Result<(K, T, Revision), AssignerError>> = futures::stream::iter(puts)
            .map(|put| {
                let name = key_name(&put.key);
                async move {
                    let bytes = Bytes::from(encode(&put.value));
                    let revision = self.put::<V>(store, &name, bytes, put.expected).await?;
                    Ok((put.key, keep(put.value), revision))
                }
            })
            .buffer_unordered(WRITE_WINDOW)
            .collect()
            .await;
        self.metrics.kv_writes(bucket, "put", count);
        written.into_iter().collect()
    }

    /// One compare-and-set write, overwriting a record of this or an older epoch on conflict.
    async fn put<V: Fenced>(
        &self,
        store: &async_nats::jetstream::kv::Store,
        key: &str,
        value: Bytes,
        expected: Option<Revision>,
    ) -> Result<Revision, AssignerError> {
        let jetstream = &self.resources.jetstream;
        let current = match cas_write(jetstream, store, key, value.clone(), expected, None).await? {
            CasOutcome::Written(revision) => return Ok(revision),
            CasOutcome::Conflict { current } => current,
        };
        // Only the leader writes these keys: a conflict means another (older or newer) assigner
        // wrote. A newer epoch deposes us; an older one is overwritten.
        if let Some(entry) = &current
            && let Ok(stored) = decode::<V>(&entry.value)
            && stored.epoch() > self.epoch
            && newer_term_exists(self.resources, stored.epoch()).await?
        {
            return Err(AssignerError::Deposed { epoch: self.epoch });
        }
        let current_revision = current.map(|entry| entry.revision);
        match cas_write(jetstream, store, key, value, current_revision, None).await? {
            CasOutcome::Written(revision) => Ok(revision),
            CasOutcome::Conflict { .. } => Err(AssignerError::Deposed { epoch: self.epoch }),
        }
    }

    /// Purges the compacted partition keys of each job below its range's revision, one stream
    /// purge request per job. Where that is refused (an identity provisioned before range
    /// purges lacks the permission; the request then times out), the covered keys are purged one
    /// by one, and so are all of them from then on in this process (`allowed` cleared).
    async fn purge_ranges(
        &self,
        store: &async_nats::jetstream::kv::Store,
        ranges: Vec<RangePurge>,
        allowed: &AtomicBool,
        refused_by_test: bool,
        marker_ttl: Option<Duration>,
    ) {
        if ranges.is_empty() {
            return;
        }
        if !allowed.load(Ordering::Relaxed) {
            let keys = ranges.into_iter().flat_map(|range| range.keys);
            let names = keys.map(|key| Names::partition_key(&key.job, key.partition));
            self.purge_all("partitions", store, names.collect(), marker_ttl)
                .await;
            return;
        }
        let count = ranges.len() as u64;
        let failures: Vec<RangePurge> = futures::stream::iter(ranges)
            .map(|range| async move {
                let subjects = format!("{}{}.>", store.prefix, range.job);
                let purged = if refused_by_test {
                    Err("refused (test hook)".to_owned())
                } else {
                    store
                        .stream
                        .purge()
                        .filter(subjects)
                        .sequence(range.below.get())
                        .await
                        .map_err(|error| error.to_string())
                };
                match purged {
                    Ok(response) => {
                        tracing::trace!(job = %range.job, below = %range.below, keys = range.keys.len(), purged = response.purged, "compacted keys purged by range");
                        None
                    }
                    Err(error) => {
                        tracing::warn!(job = %range.job, below = %range.below, %error, "range purge of compacted partition keys failed: purging them one by one from now on (does the assigner's identity lack `$JS.API.STREAM.PURGE` on the partitions bucket? docs/security.md)");
                        Some(range)
                    }
                }
            })
            .buffer_unordered(WRITE_WINDOW)
            .filter_map(std::future::ready)
            .collect()
            .await;
        self.metrics.kv_writes("partitions", "purge_range", count);
        if !failures.is_empty() {
            allowed.store(false, Ordering::Relaxed);
            let keys = failures.into_iter().flat_map(|range| range.keys);
            let names = keys.map(|key| Names::partition_key(&key.job, key.partition));
            self.purge_all("partitions", store, names.collect(), marker_ttl)
                .await;
        }
    }

    /// Purges keys of `bucket`: compacted partition keys (the job records saying so were written
    /// just before), or the records of jobs past their retention (after their partition keys).
    /// A failed purge leaves the key behind; the next leader's load compacts or expires it again.
    async fn purge_all(
        &self,
        bucket: &'static str,
        store: &async_nats::jetstream::kv::Store,
        keys: Vec<String>,
        marker_ttl: Option<Duration>,
    ) {
        if keys.is_empty() {
            return;
        }
        let count = keys.len() as u64;
        let failures: Vec<String> = futures::stream::iter(keys)
            .map(|name| async move {
                // With a TTL the purge marker itself expires: the key leaves nothing behind.
                let purged = match marker_ttl {
                    Some(ttl) => store.purge_with_ttl(&name, ttl).await,
                    None => store.purge(&name).await,
                };
                purged.err().map(|error| format!("{name}: {error}"))
            })
            .buffer_unordered(WRITE_WINDOW)
            .filter_map(std::future::ready)
            .collect()
            .await;
        self.metrics.kv_writes(bucket, "purge", count);
        for error in failures {
            tracing::warn!(%error, bucket, "purge failed");
        }
    }
}
