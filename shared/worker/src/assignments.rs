//! The worker's view of its own key `elk_<ns>_assignments/<id>`: a KV watch, checked by direct
//! re-reads so that a watch that stalls silently cannot leave the worker on an old record.
//!
//! A watch is an ordered push consumer. After a nats-server restart, or when the server lost the
//! consumer, a client may keep waiting on a subscription nothing feeds anymore (seen with another
//! client library; async-nats recovers after two missed 5 s heartbeats). So the feed re-reads the
//! key whenever the watch has delivered nothing for `resync` (default 10 s), and at once after a
//! watch error or end. A re-read that finds a revision the watch never delivered proves the watch
//! stalled: the entry is delivered from the read, and the watch is re-created (its replay of the
//! current record is then skipped, by revision).

use crate::stats::StatsCounters;
use elk_nats::{KeyBucket, KeyWatch, KvEntry, NatsError};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Waits between failed attempts to (re-)create the watch.
const REWATCH_BACKOFF: Duration = Duration::from_millis(200);

/// The assignment key's entries, in revision order, each delivered once.
pub(crate) struct AssignmentFeed {
    store: KeyBucket,
    key: String,
    watch: Option<KeyWatch>,
    /// Highest revision delivered (from the watch or a re-read).
    delivered: u64,
    /// When the watch last delivered anything (or was last checked by a re-read).
    last_activity: Instant,
    resync: Duration,
    stats: Arc<StatsCounters>,
}

impl AssignmentFeed {
    /// Starts watching `key` (the current record, if any, is delivered first).
    pub(crate) async fn open(
        store: KeyBucket,
        key: String,
        resync: Duration,
        stats: Arc<StatsCounters>,
    ) -> Result<Self, NatsError> {
        let watch = watch(&store, &key).await?;
        Ok(Self {
            store,
            key,
            watch: Some(watch),
            delivered: 0,
            last_activity: Instant::now(),
            resync,
            stats,
        })
    }

    /// The next entry newer than every entry delivered so far (delete markers included).
    pub(crate) async fn next(&mut self) -> KvEntry {
        loop {
            let Some(watch) = self.watch.as_mut() else {
                match watch(&self.store, &self.key).await {
                    Ok(created) => self.watch = Some(created),
                    Err(error) => {
                        tracing::warn!(%error, "cannot watch the assignment key; retrying");
                        tokio::time::sleep(REWATCH_BACKOFF).await;
                    }
                }
                // Whatever changed meanwhile is replayed by the new watch, or found by a re-read.
                continue;
            };
            let idle_until = self.last_activity + self.resync;
            let item = tokio::select! {
                item = watch.next() => Some(item),
                () = tokio::time::sleep_until(idle_until) => None,
            };
            let Some(item) = item else {
                if let Some(entry) = self.reread("the watch was silent").await {
                    return entry;
                }
                continue;
            };
            match item {
                Some(Ok(entry)) => {
                    self.last_activity = Instant::now();
                    if entry.revision.get() <= self.delivered {
                        continue;
                    }
                    self.delivered = entry.revision.get();
                    return entry;
                }
                Some(Err(error)) => {
                    tracing::warn!(%error, "assignment watch error; re-reading the key");
                    if let Some(entry) = self.reread("the watch failed").await {
                        return entry;
                    }
                }
                None => {
                    tracing::warn!("assignment watch ended; watching again");
                    self.watch = None;
                    if let Some(entry) = self.reread("the watch ended").await {
                        return entry;
                    }
                }
            }
        }
    }

    /// Reads the key directly. Returns its entry if it is newer than anything delivered, in which
    /// case the watch missed it and is re-created.
    async fn reread(&mut self, why: &'static str) -> Option<KvEntry> {
        self.last_activity = Instant::now();
        let entry = match elk_nats::read_entry(&self.store, &self.key).await {
            Ok(entry) => entry?,
            Err(error) => {
                tracing::debug!(%error, why, "re-reading the assignment key failed");
                return None;
            }
        };
        if entry.revision.get() <= self.delivered {
            return None;
        }
        tracing::warn!(
            why,
            revision = %entry.revision,
            delivered = self.delivered,
            "assignment watch missed a record: applying it from a re-read and watching again"
        );
        StatsCounters::bump(&self.stats.assignment_resyncs);
        self.delivered = entry.revision.get();
        self.watch = None;
        Some(entry)
    }
}

/// A watch of the worker's own key only: the consumer's filter is that key (see
/// [`KeyBucket::watch_key`]), all a worker's permissions allow.
async fn watch(store: &KeyBucket, key: &str) -> Result<KeyWatch, NatsError> {
    store.watch_key(key).await
}
