//! Who holds which partition, from the assignment records alone: a watch on the assignments
//! bucket keeps, per worker, the partitions its latest record grants, and per partition its
//! owner. Only the changed record is decoded per event, so following 10,000 records of hundreds
//! of grants stays cheap. Every condition a phase waits for is decided from this copy, at the
//! moment the change was delivered.

use anyhow::{Context, bail};
use async_nats::jetstream::kv::{Operation, Store, Watch};
use elk_protocol::decode;
use elk_protocol::messages::AssignmentRecord;
use futures::StreamExt;
use std::collections::HashMap;
use std::time::Instant;

use crate::follow::Follows;

pub(crate) struct GrantTally {
    watch: Watch,
    /// Worker id → index into the vectors below.
    index: HashMap<String, usize>,
    held: Vec<Vec<u64>>,
    /// Size of each worker's latest record.
    record_bytes: Vec<usize>,
    alive: Vec<bool>,
    /// `owner[p]`: the worker whose record grants partition `p` (1-based; slot 0 unused).
    owner: Vec<Option<usize>>,
    /// Partitions granted by the records of live workers.
    granted_live: usize,
    /// Partitions being followed after a kill: when each was first granted to a live worker.
    reclaimed: HashMap<u64, Option<Instant>>,
}

impl GrantTally {
    /// Follows `assignments` for a job of `partitions` partitions.
    pub async fn follow(assignments: &Store, partitions: u64) -> anyhow::Result<Self> {
        let snapshot = elk_nats::watch_snapshot(assignments)
            .await
            .context("watch the assignments bucket")?;
        anyhow::ensure!(
            snapshot.entries.is_empty(),
            "the assignments bucket is not empty"
        );
        Ok(Self {
            watch: snapshot.watch,
            index: HashMap::new(),
            held: Vec::new(),
            record_bytes: Vec::new(),
            alive: Vec::new(),
            owner: vec![None; partitions as usize + 1],
            granted_live: 0,
            reclaimed: HashMap::new(),
        })
    }

    fn worker(&mut self, id: &str) -> usize {
        if let Some(&index) = self.index.get(id) {
            return index;
        }
        let index = self.held.len();
        self.index.insert(id.to_owned(), index);
        self.held.push(Vec::new());
        self.record_bytes.push(0);
        self.alive.push(true);
        index
    }

    async fn apply_next_change(&mut self) -> anyhow::Result<()> {
        let Some(entry) = self.watch.next().await else {
            bail!("the assignments watch ended");
        };
        let entry = entry.context("assignments watch")?;
        let worker = self.worker(&entry.key);
        let grants: Vec<u64> = match entry.operation {
            Operation::Put => decode::<AssignmentRecord>(&entry.value)
                .with_context(|| format!("assignment record of {}", entry.key))?
                .grants
                .iter()
                .map(|grant| grant.partition.get())
                .collect(),
            Operation::Delete | Operation::Purge => Vec::new(),
        };
        self.record_bytes[worker] = entry.value.len();
        let previous = std::mem::take(&mut self.held[worker]);
        for partition in &previous {
            if let Some(slot) = self.owner.get_mut(*partition as usize)
                && *slot == Some(worker)
            {
                *slot = None;
            }
        }
        let now = Instant::now();
        for &partition in &grants {
            if let Some(slot) = self.owner.get_mut(partition as usize) {
                *slot = Some(worker);
            }
            if self.alive[worker]
                && let Some(seen @ None) = self.reclaimed.get_mut(&partition)
            {
                *seen = Some(now);
            }
        }
        if self.alive[worker] {
            self.granted_live = self.granted_live + grants.len() - previous.len();
        }
        self.held[worker] = grants;
        Ok(())
    }

    /// Every partition is granted to a live worker and each of the `live_workers` holds
    /// `floor(P / live)` or `ceil(P / live)` of them: the placement's balance for equal
    /// capacities.
    pub fn balanced(&self, live_workers: usize) -> bool {
        let partitions = self.owner.len() - 1;
        if self.granted_live != partitions {
            return false;
        }
        let live_workers = live_workers.max(1);
        let (floor, ceiling) = (partitions / live_workers, partitions.div_ceil(live_workers));
        let mut at_least_floor = 0;
        for (held, alive) in self.held.iter().zip(&self.alive) {
            if !alive {
                continue;
            }
            if held.len() > ceiling {
                return false;
            }
            if held.len() >= floor {
                at_least_floor += 1;
            }
        }
        at_least_floor >= live_workers
            && self.owner[1..]
                .iter()
                .all(|owner| owner.is_some_and(|worker| self.alive[worker]))
    }

    /// Mean size of the live workers' latest records, in bytes.
    pub fn record_bytes_mean(&self) -> usize {
        let live: Vec<usize> = self
            .record_bytes
            .iter()
            .zip(&self.alive)
            .filter(|(_, alive)| **alive)
            .map(|(bytes, _)| *bytes)
            .collect();
        live.iter().sum::<usize>() / live.len().max(1)
    }

    /// The owner of every partition now (index 0 unused).
    pub fn owners(&self) -> Vec<Option<usize>> {
        self.owner.clone()
    }

    /// Partitions whose owner differs between `before` and now.
    pub fn moved_since(&self, before: &[Option<usize>]) -> usize {
        before
            .iter()
            .zip(&self.owner)
            .skip(1)
            .filter(|(then, now)| then.is_some() && then != now)
            .count()
    }

    /// Marks `ids` dead (killed) and starts following the partitions they held; returns how
    /// many partitions that is.
    pub fn kill(&mut self, ids: &[String]) -> usize {
        self.reclaimed.clear();
        for id in ids {
            let worker = self.worker(id);
            if !self.alive[worker] {
                continue;
            }
            self.alive[worker] = false;
            self.granted_live -= self.held[worker].len();
            for &partition in &self.held[worker] {
                self.reclaimed.insert(partition, None);
            }
        }
        self.reclaimed.len()
    }

    /// Every followed partition is granted to a live worker again.
    pub fn all_reclaimed(&self) -> bool {
        self.reclaimed.values().all(Option::is_some)
    }

    /// When each followed partition was granted to a live worker again.
    pub fn reclaim_times(&self) -> Vec<Instant> {
        self.reclaimed.values().filter_map(|seen| *seen).collect()
    }
}

impl Follows for GrantTally {
    async fn apply_next(&mut self) -> anyhow::Result<()> {
        self.apply_next_change().await
    }

    fn state(&self) -> String {
        format!(
            "{} of {} partitions granted to live workers",
            self.granted_live,
            self.owner.len() - 1
        )
    }
}
