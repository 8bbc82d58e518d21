//! An in-process worker fleet that follows the scaler the way the worker Deployment does under
//! the scaler's Kubernetes actuation (`services/scaler/src/kube.rs`): every `tick` it reads
//! `fleet/desired` and runs `replicas` SDK workers, stopping exactly the `retire`d (drained)
//! workers first — the pods marked with the lowest deletion cost — and only then, if still too
//! many, the newest (counted as unplanned: they may hold work). It integrates worker-seconds,
//! counts replica changes and keeps their history (for `flaps`, direction reversals) for
//! `elk-bench autoscale`.

use crate::{RecordingProcessor, Stack};
use elk_protocol::decode;
use elk_protocol::messages::DesiredWorkers;
use elk_protocol::names::DESIRED_WORKERS_KEY;
use elk_worker::WorkerHandle;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// What the fleet did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FleetStats {
    /// Σ running workers × time (seconds).
    pub worker_seconds: f64,
    /// Changes of the replica count the fleet followed.
    pub replica_changes: u64,
    /// Workers started.
    pub started: u64,
    /// Workers stopped because the scaler retired them (drained: holding nothing).
    pub retired_stops: u64,
    /// Partitions the retired workers had handed back while draining (work they were running
    /// when the scale-in began; 0 when every retired worker was idle).
    pub retired_released: u64,
    /// Workers stopped without being retired (the newest, when the count dropped below the
    /// running workers otherwise).
    pub unplanned_stops: u64,
    /// The most workers running at once.
    pub peak: usize,
}

/// SDK workers of one capacity, started and stopped by [`Fleet::follow`].
pub struct Fleet {
    prefix: String,
    capacity: u32,
    processor: RecordingProcessor,
    /// Running workers by member id (ids are `<prefix>-<n>`, n growing: newest last).
    workers: BTreeMap<u64, WorkerHandle>,
    next: u64,
    target: Option<u32>,
    /// Every replica count followed, with when (the first one included).
    history: Vec<(Instant, u32)>,
    since: Instant,
    stats: FleetStats,
}

impl Fleet {
    pub fn new(prefix: &str, capacity: u32, processor: RecordingProcessor) -> Self {
        Self {
            prefix: prefix.to_owned(),
            capacity,
            processor,
            workers: BTreeMap::new(),
            next: 1,
            target: None,
            history: Vec::new(),
            since: Instant::now(),
            stats: FleetStats::default(),
        }
    }

    /// Running workers.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// The statistics, worker-seconds counted up to now.
    pub fn stats(&mut self) -> FleetStats {
        self.account();
        self.stats
    }

    /// Every replica count the fleet followed, in order, with when it changed to it.
    pub fn history(&self) -> &[(Instant, u32)] {
        &self.history
    }

    fn account(&mut self) {
        let now = Instant::now();
        self.stats.worker_seconds +=
            self.workers.len() as f64 * now.duration_since(self.since).as_secs_f64();
        self.since = now;
    }

    /// Runs exactly `count` workers (a fixed fleet, or the scaler's count applied by hand).
    pub async fn scale_to(&mut self, stack: &Stack, count: u32) -> anyhow::Result<()> {
        self.reconcile(stack, count, &[]).await
    }

    /// One reconcile against the stored `fleet/desired` (nothing to do without one).
    pub async fn follow(&mut self, stack: &Stack) -> anyhow::Result<()> {
        let Some(entry) = elk_nats::read_entry(&stack.resources.fleet, DESIRED_WORKERS_KEY).await?
        else {
            return Ok(());
        };
        if entry.deleted {
            return Ok(());
        }
        let desired: DesiredWorkers = decode(&entry.value)?;
        // Records of scalers without a drain plan carry replicas 0: `desired` is the count.
        let replicas = if desired.replicas == 0 {
            desired.desired
        } else {
            desired.replicas
        };
        let retire: Vec<String> = desired.retire.iter().map(|id| id.to_string()).collect();
        self.reconcile(stack, replicas, &retire).await
    }

    async fn reconcile(
        &mut self,
        stack: &Stack,
        replicas: u32,
        retire: &[String],
    ) -> anyhow::Result<()> {
        self.account();
        if self.target != Some(replicas) {
            if self.target.is_some() {
                self.stats.replica_changes += 1;
            }
            self.target = Some(replicas);
            self.history.push((Instant::now(), replicas));
        }
        let replicas = replicas as usize;
        // The retired (drained) ones first, as the lowest pod-deletion-cost makes the ReplicaSet do.
        let retired: Vec<u64> = self
            .workers
            .iter()
            .filter(|(_, worker)| retire.iter().any(|id| id == worker.id().as_str()))
            .map(|(n, _)| *n)
            .collect();
        for n in retired {
            if self.workers.len() <= replicas {
                break;
            }
            let worker = self.workers.remove(&n).expect("listed above");
            self.stats.retired_released += worker.shutdown().await?.partitions_released;
            self.stats.retired_stops += 1;
        }
        while self.workers.len() > replicas {
            let (_, worker) = self.workers.pop_last().expect("more than zero");
            worker.shutdown().await?;
            self.stats.unplanned_stops += 1;
        }
        while self.workers.len() < replicas {
            let id = format!("{}-{}", self.prefix, self.next);
            let worker = stack
                .worker(&id, self.capacity, self.processor.clone())
                .await?;
            self.workers.insert(self.next, worker);
            self.next += 1;
            self.stats.started += 1;
        }
        self.stats.peak = self.stats.peak.max(self.workers.len());
        Ok(())
    }

    /// Stops every worker gracefully and returns the final statistics.
    pub async fn shutdown(mut self) -> anyhow::Result<FleetStats> {
        self.account();
        for (_, worker) in std::mem::take(&mut self.workers) {
            worker.shutdown().await?;
        }
        Ok(self.stats)
    }
}

/// Flapping in a replica history: how often the direction of change reversed (up then down, or
/// down then up) less than `within` after the previous change with no change of the load in
/// between (`load_changes`: when the load changed, e.g. a burst of jobs arrived). A fleet that
/// scales in after a burst and out again because the next burst arrived follows the load, however
/// soon the burst came; one that goes 5 → 6 → 5 within a stabilization window on the same load
/// flaps.
pub fn flaps(history: &[(Instant, u32)], within: Duration, load_changes: &[Instant]) -> u64 {
    let mut flaps = 0;
    let mut previous: Option<(Instant, bool)> = None;
    for pair in history.windows(2) {
        let ((_, before), (at, after)) = (pair[0], pair[1]);
        if before == after {
            continue;
        }
        let up = after > before;
        if let Some((last_at, last_up)) = previous
            && last_up != up
            && at.duration_since(last_at) < within
            && !load_changes
                .iter()
                .any(|change| *change > last_at && *change <= at)
        {
            flaps += 1;
        }
        previous = Some((at, up));
    }
    flaps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(steps: &[(u64, u32)]) -> Vec<(Instant, u32)> {
        let start = Instant::now();
        steps
            .iter()
            .map(|(ms, n)| (start + Duration::from_millis(*ms), *n))
            .collect()
    }

    #[test]
    fn reversals_within_the_window_on_the_same_load_are_flaps() {
        let window = Duration::from_secs(3);
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        // A burst: up, up, down, down to zero, then the next burst 20 s later.
        let bursts = history(&[
            (0, 0),
            (200, 4),
            (400, 6),
            (7_000, 5),
            (10_000, 0),
            (20_000, 4),
        ]);
        assert_eq!(flaps(&bursts, window, &[]), 0);
        // 6 → 5 and back to 6 within a second, then down again a second later.
        let flapping = history(&[(0, 6), (1_000, 5), (2_000, 6), (3_000, 5)]);
        assert_eq!(flaps(&flapping, window, &[]), 2);
        // Down to zero, and up again right after because new work arrived: following the load.
        let next_burst = history(&[(0, 6), (5_000, 0), (5_400, 4)]);
        assert_eq!(flaps(&next_burst, window, &[]), 1);
        assert_eq!(flaps(&next_burst, window, &[at(5_300)]), 0);
        assert_eq!(
            flaps(&next_burst, window, &[at(4_000)]),
            1,
            "load changed before"
        );
    }
}
