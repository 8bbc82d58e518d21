//! The leader's view of the jobs bucket: one watch (the bucket's snapshot, then every change)
//! kept in memory for the term, so a round reads no KV at all — the scaler used to list every
//! job key and read each one every `interval`. If the watch fails or ends it is re-created from
//! a fresh snapshot (the map is replaced, so nothing is missed or kept stale).

use elk_nats::{Resources, WatchSnapshot, watch_snapshot};
use elk_protocol::decode;
use elk_protocol::messages::JobRecord;
use elk_runtime::RepeatLimiter;
use futures::StreamExt;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;

/// Pause before re-creating a failed watch.
const REWATCH_DELAY: Duration = Duration::from_secs(1);
/// An undecodable job record is reported at most once per minute per key.
static UNDECODABLE: RepeatLimiter = RepeatLimiter::new(Duration::from_secs(60));

type Records = Arc<Mutex<BTreeMap<String, JobRecord>>>;

/// The decodable job records, kept current by a background watch (aborted on drop).
pub(crate) struct JobsCache {
    records: Records,
    task: JoinHandle<()>,
}

impl Drop for JobsCache {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl JobsCache {
    /// Reads the bucket once (so the first round sees every job), then follows it.
    pub(crate) async fn start(resources: &Resources) -> Result<Self, elk_nats::NatsError> {
        let snapshot = watch_snapshot(&resources.jobs).await?;
        let records: Records = Arc::default();
        let first = apply_snapshot(&records, snapshot);
        let store = resources.jobs.clone();
        let task = tokio::spawn(follow(store, Arc::clone(&records), first));
        Ok(Self { records, task })
    }

    /// Every decodable job record, in key order.
    pub(crate) fn records(&self) -> Vec<JobRecord> {
        lock(&self.records).values().cloned().collect()
    }
}

fn lock(records: &Records) -> std::sync::MutexGuard<'_, BTreeMap<String, JobRecord>> {
    records
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Replaces the map with the snapshot's records and returns its watch.
fn apply_snapshot(records: &Records, snapshot: WatchSnapshot) -> async_nats::jetstream::kv::Watch {
    let WatchSnapshot { entries, watch } = snapshot;
    let decoded = entries
        .into_iter()
        .filter_map(|(key, entry)| Some((key.clone(), decode_job(&key, &entry.value)?)))
        .collect();
    *lock(records) = decoded;
    watch
}

fn decode_job(key: &str, value: &[u8]) -> Option<JobRecord> {
    match decode::<JobRecord>(value) {
        Ok(job) => Some(job),
        Err(error) => {
            if let Some(suppressed) = UNDECODABLE.check(key) {
                tracing::warn!(%key, %error, suppressed, "ignoring undecodable job record");
            }
            None
        }
    }
}

/// Applies every change of the watch; re-creates it from a snapshot when it fails or ends.
async fn follow(
    store: async_nats::jetstream::kv::Store,
    records: Records,
    mut watch: async_nats::jetstream::kv::Watch,
) {
    use async_nats::jetstream::kv::Operation;
    loop {
        while let Some(event) = watch.next().await {
            let entry = match event {
                Ok(entry) => entry,
                Err(error) => {
                    tracing::warn!(%error, "jobs watch failed; re-reading the bucket");
                    break;
                }
            };
            let decoded = match entry.operation {
                Operation::Put => decode_job(&entry.key, &entry.value),
                Operation::Delete | Operation::Purge => None,
            };
            let mut records = lock(&records);
            match decoded {
                Some(job) => records.insert(entry.key, job),
                None => records.remove(&entry.key),
            };
        }
        loop {
            tokio::time::sleep(REWATCH_DELAY).await;
            match watch_snapshot(&store).await {
                Ok(snapshot) => {
                    watch = apply_snapshot(&records, snapshot);
                    break;
                }
                Err(error) => tracing::warn!(%error, "cannot re-watch the jobs bucket"),
            }
        }
    }
}
