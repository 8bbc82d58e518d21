//! The scaler's metrics (Prometheus, `docs/observability.md`): what the leader last computed —
//! desired and live workers, replicas, drains in flight, the backlog, the measured throughput —
//! exported only while this replica leads (a follower's stale numbers would otherwise add up with
//! the leader's), and its writes: `fleet/desired`, drain requests, Kubernetes failures.

use elk_protocol::messages::DesiredWorkers;
use elk_runtime::BoundAddress;
use elk_runtime::prometheus_client::collector::Collector;
use elk_runtime::prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use elk_runtime::prometheus_client::metrics::counter::Counter;
use elk_runtime::prometheus_client::metrics::family::Family;
use elk_runtime::prometheus_client::metrics::gauge::ConstGauge;
use elk_runtime::prometheus_client::registry::Registry;
use std::sync::{Arc, Mutex};

/// What a scaler replica exports. Share it with `Arc`.
#[derive(Debug, Default)]
pub struct ScalerMetrics {
    /// Where the replica serves `/metrics` once bound (`metrics_listen`).
    pub endpoint: BoundAddress,
    /// Writes of `fleet/desired` (the desired count or its inputs changed).
    pub desired_writes: Counter,
    /// Drain requests sent to the assigner for scale-ins, by `op` (`drain`, `undrain`).
    pub drain_requests: Family<[(&'static str, &'static str); 1], Counter>,
    /// Kubernetes actuations that failed (connect, annotate, scale).
    pub kubernetes_errors: Counter,
    computed: Arc<Mutex<Option<DesiredWorkers>>>,
}

impl ScalerMetrics {
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "elk_scaler_desired_writes",
            "Writes of fleet/desired by this replica",
            self.desired_writes.clone(),
        );
        // Both ops exist from the start (at 0), so the family is served before the first drain.
        for op in ["drain", "undrain"] {
            let _ = self.drain_requests.get_or_create(&[("op", op)]);
        }
        registry.register(
            "elk_scaler_drain_requests",
            "Drain requests the scaler leader sent to the assigner for scale-ins, by op (drain, undrain)",
            self.drain_requests.clone(),
        );
        registry.register(
            "elk_scaler_kubernetes_errors",
            "Failed Kubernetes actuations (client, pod annotation, scale)",
            self.kubernetes_errors.clone(),
        );
        registry.register_collector(Box::new(Computed(self.computed.clone())));
    }

    /// The leader computed `desired` (exported until [`ScalerMetrics::not_leading`]).
    pub(crate) fn computed(&self, desired: &DesiredWorkers) {
        *self.lock() = Some(desired.clone());
    }

    /// The term ended: this replica's numbers are no longer current.
    pub(crate) fn not_leading(&self) {
        *self.lock() = None;
    }

    /// A drain request of `op` (`drain`, `undrain`) was sent.
    pub(crate) fn drain_request(&self, op: &'static str) {
        self.drain_requests.get_or_create(&[("op", op)]).inc();
    }

    /// What the leader computed last, while it leads (tests).
    pub fn last_computed(&self) -> Option<DesiredWorkers> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<DesiredWorkers>> {
        self.computed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[derive(Debug)]
struct Computed(Arc<Mutex<Option<DesiredWorkers>>>);

impl Collector for Computed {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(desired) = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
        else {
            return Ok(());
        };
        let gauges: [(&str, &str, u64); 6] = [
            (
                "elk_scaler_desired_workers",
                "Desired worker count the scaler leader's policy decided (within min/max workers).",
                u64::from(desired.desired),
            ),
            (
                "elk_scaler_live_workers",
                "Live workers in the membership view, as the scaler leader saw them.",
                u64::from(desired.live_workers),
            ),
            (
                "elk_scaler_backlog_ids",
                "IDs of active jobs not yet processed (known IDs of open-ended jobs).",
                desired.backlog_ids,
            ),
            (
                "elk_scaler_backlog_partitions",
                "Partitions of active jobs not yet completed, including those still to be cut.",
                desired.backlog_partitions,
            ),
            (
                "elk_scaler_replicas",
                "Workers an actuator should run now: desired plus the workers still draining before their removal.",
                u64::from(desired.replicas),
            ),
            (
                "elk_scaler_draining_workers",
                "Workers the scaler asked to drain for a scale-in that still hold partitions.",
                desired.draining.len() as u64,
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(metric)?;
        }
        // Always served (0 before the first measurement), so scrapes see a stable set of series.
        {
            let rate = desired.worker_ids_per_second.unwrap_or(0);
            let gauge = ConstGauge::new(rate as f64);
            let metric = encoder.encode_descriptor(
                "elk_scaler_worker_ids_per_second",
                "Measured IDs per second of one busy worker (smoothed), the policy's input; 0 before a measurement.",
                None,
                gauge.metric_type(),
            )?;
            gauge.encode(metric)?;
        }
        Ok(())
    }
}
