//! The worker's Prometheus metrics (names in `docs/observability.md`): registered into the
//! worker's registry ([`crate::WorkerBuilder::metrics_registry`], or a new one), served on
//! [`crate::WorkerBuilder::metrics_listen`] with the probes, or encoded on demand
//! ([`crate::WorkerHandle::encode_metrics`]).
//!
//! The counters are the worker's [`StatsCounters`], read at scrape time (one source for
//! [`crate::WorkerHandle::stats`] and the metrics); the gauges are set by the supervisor at every
//! checkpoint flush; lease renewals and the membership come from the [`ReplicaStatus`].

use crate::stats::StatsCounters;
use elk_nats::ReplicaStatus;
use elk_types::{JobName, PartitionId, PartitionLeaseToken};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Handles on the worker's gauges and its status; cheap to clone.
#[derive(Debug, Clone, Default)]
pub(crate) struct WorkerMetrics {
    pub(crate) running: Gauge,
    pub(crate) queued: Gauge,
    pub(crate) checkpoint_lag: Gauge,
    pub(crate) status: ReplicaStatus,
    pub(crate) acked: AckedCheckpoints,
}

impl WorkerMetrics {
    /// Registers everything into `registry`: `elk_build_info`, the membership gauges and renewal
    /// histogram, the counters of `stats`, and the supervisor's gauges.
    pub(crate) fn register(
        registry: &mut Registry,
        stats: Arc<StatsCounters>,
        capacity: u32,
    ) -> Self {
        elk_runtime::metrics::register_build_info(registry, "worker");
        let status = elk_runtime::metrics::replica_status(registry);
        let metrics = Self {
            status,
            ..Self::default()
        };
        let capacity_gauge: Gauge = Gauge::default();
        capacity_gauge.set(i64::from(capacity));
        let gauges = [
            (
                "elk_worker_running_partitions",
                "Partitions whose processor is running in this worker",
                &metrics.running,
            ),
            (
                "elk_worker_queued_partitions",
                "Partitions granted to this worker, waiting for a free slot",
                &metrics.queued,
            ),
            (
                "elk_worker_checkpoint_lag_ids",
                "IDs the running partitions processed beyond their last acknowledged checkpoint (what a crash now would repeat)",
                &metrics.checkpoint_lag,
            ),
            (
                "elk_worker_capacity",
                "Partitions this worker processes at once",
                &capacity_gauge,
            ),
        ];
        for (name, help, gauge) in gauges {
            registry.register(name, help, gauge.clone());
        }
        registry.register_collector(Box::new(StatsCollector(stats)));
        metrics
    }
}

/// One grant: job, partition and lease token.
pub(crate) type GrantId = (JobName, PartitionId, PartitionLeaseToken);

/// The last acknowledged checkpoint of each grant, recorded by the progress publisher on every
/// acked checkpoint report and read for the checkpoint lag.
#[derive(Debug, Clone, Default)]
pub(crate) struct AckedCheckpoints {
    inner: Arc<Mutex<HashMap<GrantId, u64>>>,
}

impl AckedCheckpoints {
    pub(crate) fn acked(&self, grant: GrantId, last_done: u64) {
        let mut acked = self.lock();
        let entry = acked.entry(grant).or_insert(last_done);
        *entry = (*entry).max(last_done);
    }

    pub(crate) fn get(&self, grant: &GrantId) -> Option<u64> {
        self.lock().get(grant).copied()
    }

    /// Forgets every grant `keep` refuses (those no longer held).
    pub(crate) fn retain(
        &self,
        keep: impl Fn(&(JobName, PartitionId, PartitionLeaseToken)) -> bool,
    ) {
        self.lock().retain(|grant, _| keep(grant));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<GrantId, u64>> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A counter family read from atomics: name, help, label name, (label value, counter) pairs.
type CounterFamily<'a> = (&'a str, &'a str, &'a str, Vec<(&'a str, &'a AtomicU64)>);

/// Encodes the worker's [`StatsCounters`] as Prometheus counters on each scrape.
#[derive(Debug)]
struct StatsCollector(Arc<StatsCounters>);

impl Collector for StatsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = &self.0;
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let families: [CounterFamily; 4] = [
            (
                "elk_worker_partitions",
                "Partitions that ended in this worker, by outcome (completed, failed, released).",
                "outcome",
                vec![
                    ("completed", &stats.partitions_completed),
                    ("failed", &stats.partitions_failed),
                    ("released", &stats.partitions_released),
                ],
            ),
            (
                "elk_worker_progress_reports",
                "Progress reports by outcome: published (acked), lost (checkpoint given up), moot (membership lost).",
                "outcome",
                vec![
                    ("published", &stats.reports_published),
                    ("lost", &stats.reports_lost),
                    ("moot", &stats.reports_moot),
                ],
            ),
            (
                "elk_worker_assignment_records",
                "Assignment records applied or ignored (other incarnation, older epoch or seq, undecodable).",
                "outcome",
                vec![
                    ("applied", &stats.records_applied),
                    ("ignored", &stats.records_ignored),
                ],
            ),
            (
                "elk_worker_events",
                "Other worker events: partitions started, publish retries, assignment resyncs (stalled watch).",
                "event",
                vec![
                    ("partition_started", &stats.partitions_started),
                    ("publish_retry", &stats.publish_retries),
                    ("assignment_resync", &stats.assignment_resyncs),
                ],
            ),
        ];
        for (name, help, label, series) in families {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (value, counter) in series {
                let labels = [(label, value)];
                ConstCounter::new(read(counter)).encode(family.encode_family(&labels)?)?;
            }
        }
        let fences = ConstCounter::new(read(&stats.fences));
        fences.encode(encoder.encode_descriptor(
            "elk_worker_fences",
            "Times this worker lost its membership and self-fenced.",
            None,
            fences.metric_type(),
        )?)?;
        Ok(())
    }
}
