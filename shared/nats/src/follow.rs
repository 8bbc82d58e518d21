//! Follow one key: a background task keeps a `tokio::sync::watch` channel holding the key's latest
//! decoded value. Used to follow role leases (`leases/role.*`) and the membership view.
//!
//! The KV watch alone is not trusted to stay live: its ordered consumer lives on one server, and
//! when that server dies (or the stream changes leader) the watch can stay silent for minutes
//! while async-nats recreates it (found by `nats_durability`: an assigner never saw its own
//! designation after the partitions leader was killed, and the job stopped). So the task also
//! re-reads the key directly every [`RESYNC_INTERVAL`] and at once after a watch error, and
//! re-opens a watch that ended. Every value is applied only if its revision is newer than the one
//! held, so the two sources never move the channel backwards.

use crate::error::NatsError;
use crate::kv::KvEntry;
use async_nats::jetstream::kv::{Entry, Operation, Store, Watch, WatcherError};
use elk_protocol::codec::Message;
use elk_protocol::decode;
use elk_types::Revision;
use futures::StreamExt;
use std::time::Duration;
use tokio::sync::watch;

/// How often a follower re-reads its key whatever the watch says (one direct get per followed
/// key and interval: a handful per service replica).
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(1);

/// A decoded value with the revision it was read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<M> {
    pub revision: Revision,
    pub value: M,
}

/// Starts following `key` in `store`. The channel holds `None` while the key is absent or deleted.
/// A value that fails to decode is logged and skipped (the previous value stays). The task ends
/// when every receiver is dropped.
pub async fn follow_key<M>(
    store: &Store,
    key: &str,
) -> Result<watch::Receiver<Option<Versioned<M>>>, NatsError>
where
    M: Message + Send + Sync + 'static,
{
    let entries = store
        .watch_with_history(key)
        .await
        .map_err(|error| NatsError::watch(&store.name, error))?;
    let mut follower = Follower::<M> {
        store: store.clone(),
        key: key.to_owned(),
        held: 0,
        sender: watch::channel(None).0,
    };
    let initial = crate::kv::read_entry(store, key).await?;
    follower.apply_read(initial);
    let receiver = follower.sender.subscribe();
    tokio::spawn(follower.run(entries));
    Ok(receiver)
}

struct Follower<M> {
    store: Store,
    key: String,
    /// Revision of the newest value or delete applied (0: none yet).
    held: u64,
    sender: watch::Sender<Option<Versioned<M>>>,
}

impl<M: Message + Send + Sync + 'static> Follower<M> {
    async fn run(mut self, entries: Watch) {
        let mut entries = Some(entries);
        let mut resync = tokio::time::interval(RESYNC_INTERVAL);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next = tokio::select! {
                _ = self.sender.closed() => return,
                _ = resync.tick() => {
                    self.resync().await;
                    if entries.is_none() {
                        entries = self.reopen().await;
                    }
                    continue;
                }
                next = next_entry(&mut entries) => next,
            };
            match next {
                None => {
                    // Re-opened at the next tick: a watch that keeps ending is not spun on.
                    tracing::warn!(bucket = %self.store.name, key = %self.key, "key watch ended: re-opening it");
                    entries = None;
                }
                Some(Err(error)) => {
                    tracing::warn!(bucket = %self.store.name, key = %self.key, %error, "key watch error: re-reading the key");
                    self.resync().await;
                }
                Some(Ok(entry)) => self.apply_entry(entry),
            }
        }
    }

    async fn resync(&mut self) {
        match crate::kv::read_entry(&self.store, &self.key).await {
            Ok(read) => self.apply_read(read),
            Err(error) => {
                tracing::debug!(bucket = %self.store.name, key = %self.key, %error, "re-reading a followed key failed");
            }
        }
    }

    async fn reopen(&self) -> Option<Watch> {
        match self.store.watch_with_history(&self.key).await {
            Ok(watch) => Some(watch),
            Err(error) => {
                // Tried again at the next resync tick.
                tracing::debug!(bucket = %self.store.name, key = %self.key, %error, "re-opening a key watch failed");
                None
            }
        }
    }

    fn apply_read(&mut self, read: Option<KvEntry>) {
        match read {
            Some(entry) if entry.deleted => self.apply(entry.revision.get(), None),
            Some(entry) => {
                let revision = entry.revision.get();
                if let Some(value) = self.decode(&entry.value) {
                    self.apply(
                        revision,
                        Some(Versioned {
                            revision: entry.revision,
                            value,
                        }),
                    );
                }
            }
            // Absent (never written, or purged without a marker): nothing newer to compare.
            None => {
                if self.sender.borrow().is_some() {
                    self.sender.send_replace(None);
                }
            }
        }
    }

    fn apply_entry(&mut self, entry: Entry) {
        let update = match entry.operation {
            Operation::Put => match self.decode(&entry.value) {
                Some(value) => Some(Versioned {
                    revision: Revision(entry.revision),
                    value,
                }),
                None => return,
            },
            Operation::Delete | Operation::Purge => None,
        };
        self.apply(entry.revision, update);
    }

    /// Never goes back to an older revision than the one already held.
    fn apply(&mut self, revision: u64, update: Option<Versioned<M>>) {
        if revision <= self.held {
            return;
        }
        self.held = revision;
        if update.is_some() || self.sender.borrow().is_some() {
            self.sender.send_replace(update);
        }
    }

    fn decode(&self, value: &[u8]) -> Option<M> {
        decode::<M>(value)
            .inspect_err(|error| {
                tracing::warn!(bucket = %self.store.name, key = %self.key, %error, "ignoring undecodable value");
            })
            .ok()
    }
}

/// The watch's next entry; never resolves while there is no watch.
async fn next_entry(entries: &mut Option<Watch>) -> Option<Result<Entry, WatcherError>> {
    match entries {
        Some(watch) => watch.next().await,
        None => std::future::pending().await,
    }
}
