//! A live copy of some KV buckets, fed by one watch per bucket. The scenarios decide "recovered"
//! from what this copy shows, so every measured moment is when a change was observed on NATS.

use anyhow::{Context, bail};
use async_nats::jetstream::kv::{Operation, Store, Watch};
use bytes::Bytes;
use elk_protocol::codec::Message;
use elk_protocol::decode;
use futures::StreamExt;
use futures::stream::SelectAll;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::follow::Follows;

pub(crate) struct KvMirror {
    buckets: HashMap<String, BTreeMap<String, Bytes>>,
    events: SelectAll<Watch>,
}

impl KvMirror {
    /// Snapshots every store and keeps following it.
    pub async fn follow(stores: &[&Store]) -> anyhow::Result<Self> {
        let mut buckets = HashMap::new();
        let mut events = SelectAll::new();
        for store in stores {
            let snapshot = elk_nats::watch_snapshot(store)
                .await
                .with_context(|| format!("watch {}", store.name))?;
            let entries = snapshot
                .entries
                .into_iter()
                .map(|(key, entry)| (key, entry.value))
                .collect();
            buckets.insert(store.name.clone(), entries);
            events.push(snapshot.watch);
        }
        Ok(Self { buckets, events })
    }

    /// Applies the next change of any followed bucket.
    async fn apply_next_change(&mut self) -> anyhow::Result<()> {
        let Some(entry) = self.events.next().await else {
            bail!("every KV watch ended");
        };
        let entry = entry.context("KV watch error")?;
        let bucket = self.buckets.entry(entry.bucket).or_default();
        match entry.operation {
            Operation::Put => {
                bucket.insert(entry.key, entry.value);
            }
            Operation::Delete | Operation::Purge => {
                bucket.remove(&entry.key);
            }
        }
        Ok(())
    }

    /// Applies changes until none arrived for `quiet` (so the copy is current).
    pub async fn settle(&mut self, quiet: Duration) -> anyhow::Result<()> {
        while let Ok(applied) = tokio::time::timeout(quiet, self.apply_next_change()).await {
            applied?;
        }
        Ok(())
    }

    /// The decoded value of `key` (`None` when absent or undecodable).
    pub fn get<M: Message>(&self, store: &Store, key: &str) -> Option<M> {
        let value = self.buckets.get(&store.name)?.get(key)?;
        decode(value).ok()
    }

    /// Every decodable value of the bucket, by key.
    pub fn values<'a, M: Message>(
        &'a self,
        store: &Store,
    ) -> impl Iterator<Item = (&'a String, M)> + 'a {
        self.buckets
            .get(&store.name)
            .into_iter()
            .flat_map(|bucket| bucket.iter())
            .filter_map(|(key, value)| decode(value).ok().map(|decoded| (key, decoded)))
    }
}

impl Follows for KvMirror {
    async fn apply_next(&mut self) -> anyhow::Result<()> {
        self.apply_next_change().await
    }
}
