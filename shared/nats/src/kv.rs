//! Compare-and-set writes (optionally with a per-key TTL) and snapshot-then-follow watches.
//!
//! Every write ELK makes to a shared key goes through [`cas_write`]: it succeeds only if the key is
//! still at the revision the writer last saw. A timed-out write is ambiguous (it may have been
//! applied), so the key is re-read and the outcome decided from what is stored, never assumed.

use crate::error::NatsError;
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::kv::{Operation, Store, Watch};
use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;
use elk_types::Revision;
use futures::StreamExt;
use std::collections::BTreeMap;
use std::time::Duration;

/// A key's current state as read from a bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEntry {
    pub key: String,
    pub value: Bytes,
    pub revision: Revision,
    /// The latest operation on the key is a delete, purge or TTL-expiry marker.
    pub deleted: bool,
}

/// Result of a compare-and-set write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CasOutcome {
    /// Our value is stored at this revision.
    Written(Revision),
    /// Someone else wrote first; `current` is what the key holds now (`None`: absent or deleted).
    Conflict { current: Option<KvEntry> },
}

/// A KV bucket as [`cas_write`] and [`read_entry`] need it: a name and a way to read one key.
/// Implemented by async-nats' `kv::Store` (services, which may bind whole buckets) and by
/// [`KeyBucket`](crate::KeyBucket) (workers, allowed single keys only).
pub trait Bucket: Sync {
    fn bucket_name(&self) -> &str;

    /// The key's latest entry including delete markers (`None` if it never existed or was purged
    /// away).
    fn read_key(
        &self,
        key: &str,
    ) -> impl std::future::Future<Output = Result<Option<KvEntry>, NatsError>> + Send;
}

impl Bucket for Store {
    fn bucket_name(&self) -> &str {
        &self.name
    }

    async fn read_key(&self, key: &str) -> Result<Option<KvEntry>, NatsError> {
        let entry = self
            .entry(key.to_owned())
            .await
            .map_err(|error| NatsError::kv("read", &self.name, key, error))?;
        Ok(entry.map(|entry| KvEntry {
            key: entry.key,
            value: entry.value,
            revision: Revision(entry.revision),
            deleted: !matches!(entry.operation, Operation::Put),
        }))
    }
}

fn kv_error(
    operation: &'static str,
    bucket: &impl Bucket,
    key: &str,
    source: impl Into<crate::error::BoxError>,
) -> NatsError {
    NatsError::kv(operation, bucket.bucket_name(), key, source)
}

/// Reads a key including delete markers (`None` if it never existed or was purged away).
pub async fn read_entry(bucket: &impl Bucket, key: &str) -> Result<Option<KvEntry>, NatsError> {
    bucket.read_key(key).await
}

/// The bucket's last revision: the stream sequence of the newest message ever stored in it. It only
/// grows (deleting or purging keys does not lower it), so a counter written into the bucket that
/// grows by one per write, starting at 1, never exceeds it: after such a counter's key was deleted
/// or garbled, `last_revision + 1` is above every value the counter ever had.
pub async fn last_revision(store: &Store) -> Result<Revision, NatsError> {
    let info = store
        .stream
        .get_info()
        .await
        .map_err(|error| NatsError::kv("stream info", &store.name, "", error))?;
    Ok(Revision(info.state.last_sequence))
}

/// Writes `value` to `key` only if the key is at `expected` (`None`: the key must be absent or
/// deleted), optionally with a per-key TTL (whole seconds, at least one).
pub async fn cas_write(
    jetstream: &async_nats::jetstream::Context,
    store: &impl Bucket,
    key: &str,
    value: Bytes,
    expected: Option<Revision>,
    ttl: Option<Duration>,
) -> Result<CasOutcome, NatsError> {
    let mut expected_sequence = expected.map_or(0, Revision::get);
    // One extra round for "create" over a delete marker, whose revision we learn on conflict.
    for _ in 0..2 {
        match publish_expecting(jetstream, store, key, value.clone(), expected_sequence, ttl).await
        {
            Ok(revision) => return Ok(CasOutcome::Written(revision)),
            Err(PublishFailure::WrongRevision) => {
                let current = read_entry(store, key).await?;
                match current {
                    Some(entry) if expected.is_none() && entry.deleted => {
                        expected_sequence = entry.revision.get();
                    }
                    current => {
                        return Ok(CasOutcome::Conflict {
                            current: live(current),
                        });
                    }
                }
            }
            Err(PublishFailure::Ambiguous(reason)) => {
                let current = read_entry(store, key).await?;
                return match current {
                    // Ours only if the stored value is ours AND newer than what we expected:
                    // a renewal re-sends identical bytes, so equality alone proves nothing.
                    Some(entry)
                        if !entry.deleted
                            && entry.value == value
                            && entry.revision.get() > expected_sequence =>
                    {
                        Ok(CasOutcome::Written(entry.revision))
                    }
                    // Not applied: the publish failed, and says why.
                    Some(entry) if entry.revision.get() == expected_sequence => {
                        Err(kv_error("write", store, key, reason))
                    }
                    current => Ok(CasOutcome::Conflict {
                        current: live(current),
                    }),
                };
            }
            Err(PublishFailure::Other(error)) => {
                return Err(kv_error("write", store, key, error));
            }
        }
    }
    let current = read_entry(store, key).await?;
    Ok(CasOutcome::Conflict {
        current: live(current),
    })
}

fn live(entry: Option<KvEntry>) -> Option<KvEntry> {
    entry.filter(|entry| !entry.deleted)
}

enum PublishFailure {
    WrongRevision,
    /// Timed out or the connection broke: the write may or may not have been applied.
    Ambiguous(PublishError),
    Other(PublishError),
}

async fn publish_expecting(
    jetstream: &async_nats::jetstream::Context,
    store: &impl Bucket,
    key: &str,
    value: Bytes,
    expected_sequence: u64,
    ttl: Option<Duration>,
) -> Result<Revision, PublishFailure> {
    let subject = format!("$KV.{}.{key}", store.bucket_name());
    let mut message = PublishMessage::build()
        .payload(value)
        .expected_last_subject_sequence(expected_sequence);
    if let Some(ttl) = ttl {
        message = message.ttl(ttl.max(Duration::from_secs(1)));
    }
    let classify = |error: PublishError| match error.kind() {
        PublishErrorKind::WrongLastSequence => PublishFailure::WrongRevision,
        PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe => {
            PublishFailure::Ambiguous(error)
        }
        _ => PublishFailure::Other(error),
    };
    let ack_future = jetstream
        .send_publish(subject, message)
        .await
        .map_err(classify)?;
    let ack = ack_future.await.map_err(classify)?;
    Ok(Revision(ack.sequence))
}

/// The live keys of a bucket at one moment, and a watch delivering every change after it.
pub struct WatchSnapshot {
    pub entries: BTreeMap<String, KvEntry>,
    pub watch: Watch,
}

/// Watches every key of `store`, first collecting the current value of each live key.
///
/// The watch is created before the snapshot is read, so no change can fall between the two.
pub async fn watch_snapshot(store: &Store) -> Result<WatchSnapshot, NatsError> {
    let watch_error = |source: crate::error::BoxError| NatsError::watch(&store.name, source);
    let mut watch = store
        .watch_with_history(">")
        .await
        .map_err(|error| watch_error(error.into()))?;
    let stored_messages = store
        .stream
        .get_info()
        .await
        .map_err(|error| watch_error(error.into()))?
        .state
        .messages;
    let mut entries = BTreeMap::new();
    if stored_messages == 0 {
        return Ok(WatchSnapshot { entries, watch });
    }
    loop {
        // If every stored message expired between the info call and the watch, nothing arrives:
        // the quiet period ends the snapshot (it is then genuinely empty).
        let next = tokio::time::timeout(Duration::from_secs(2), watch.next()).await;
        let Ok(Some(entry)) = next else { break };
        let entry = entry.map_err(|error| watch_error(error.into()))?;
        let caught_up = entry.delta == 0;
        if matches!(entry.operation, Operation::Put) {
            let kv_entry = KvEntry {
                key: entry.key.clone(),
                value: entry.value,
                revision: Revision(entry.revision),
                deleted: false,
            };
            entries.insert(entry.key, kv_entry);
        } else {
            entries.remove(&entry.key);
        }
        if caught_up {
            break;
        }
    }
    Ok(WatchSnapshot { entries, watch })
}
