//! Metric building blocks shared by the services and the worker SDK (`prometheus-client`, one
//! [`Registry`] per instance — never a global one — served by [`crate::metrics_http`]):
//!
//! * [`instance_registry`]: a registry with `elk_build_info{component, version}`;
//! * [`replica_status`]: the membership and role gauges every process exports, read from its
//!   [`ReplicaStatus`] at scrape time (`elk_member_up`, `elk_role_holder{role}`,
//!   `elk_role_epoch{role}`), and the histogram of its lease renewals
//!   (`elk_member_renewal_duration_seconds`);
//! * [`GaugeSnapshot`]: a labelled gauge whose whole set of series is replaced at once (per-job
//!   values published once per round, so a finished job's series disappear with it);
//! * [`latency_buckets`] / [`duration_buckets`]: the histogram layouts.
//!
//! Names follow the Prometheus conventions: an `elk_` prefix, base units in the name
//! (`_seconds`), counters registered without `_total` (the encoder appends it). Labels are
//! bounded: a role, a job, a status, a reason; never a partition or a token.

use crate::ServiceCommon;
use crate::metrics_http::{BoundAddress, Health, MetricsEndpoint, MetricsListenError};
use elk_nats::{NatsError, ReplicaStatus, Resources};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::sync::{Arc, Mutex};

/// The label set of a [`GaugeSnapshot`] series: `(name, value)` pairs.
pub type Labels = Vec<(&'static str, String)>;

/// A registry for one instance of `component` (`election`, `assigner`, `scaler`, `worker`),
/// holding `elk_build_info{component, version}` = 1.
pub fn instance_registry(component: &'static str) -> Registry {
    let mut registry = Registry::default();
    register_build_info(&mut registry, component);
    registry
}

/// Registers `elk_build_info{component, version}` = 1 (for a registry the caller provides).
pub fn register_build_info(registry: &mut Registry, component: &'static str) {
    let info = Info::new(vec![
        ("component", component.to_owned()),
        ("version", env!("CARGO_PKG_VERSION").to_owned()),
    ]);
    registry.register("elk_build", "Build of this ELK process (always 1)", info);
}

/// A [`ReplicaStatus`] whose membership and role state is exported by `registry`
/// (`elk_member_up`, `elk_role_holder`, `elk_role_epoch`) and whose lease renewals feed
/// `elk_member_renewal_duration_seconds`.
pub fn replica_status(registry: &mut Registry) -> ReplicaStatus {
    let renewals = Histogram::new(latency_buckets());
    registry.register(
        "elk_member_renewal_duration_seconds",
        "Round trip of successful member key renewals (compare-and-set with TTL)",
        renewals.clone(),
    );
    let status = ReplicaStatus::with_renewal_observer(Arc::new(move |elapsed| {
        renewals.observe(elapsed.as_secs_f64());
    }));
    registry.register_collector(Box::new(StatusCollector {
        status: status.clone(),
    }));
    status
}

/// What one service instance (or worker) exports while it is being set up: its registry, to which
/// the component adds its own metrics, and its [`ReplicaStatus`] (already exported).
#[derive(Debug)]
pub struct InstanceMetrics {
    pub registry: Registry,
    pub status: ReplicaStatus,
}

impl InstanceMetrics {
    /// [`instance_registry`] with [`replica_status`] registered.
    pub fn new(component: &'static str) -> Self {
        let mut registry = instance_registry(component);
        let status = replica_status(&mut registry);
        Self { registry, status }
    }

    /// Starts serving the registry and the probes on `listen` (when set; before connecting, so
    /// liveness answers during a slow start) and reports the address to `published`. Hand the
    /// NATS connection to the returned [`Health`] once there is one; keep the endpoint alive as
    /// long as the instance runs.
    pub async fn serve(
        self,
        listen: Option<&str>,
        published: &BoundAddress,
    ) -> Result<(Option<MetricsEndpoint>, Health), MetricsListenError> {
        let health = Health::new(self.status);
        let registry = Arc::new(self.registry);
        let endpoint =
            MetricsEndpoint::start_if_configured(listen, registry, health.clone(), published)
                .await?;
        Ok((endpoint, health))
    }
}

/// A service replica's start: a registry for `component` (`election`, `assigner`, `scaler`) with
/// the membership and role metrics and whatever `register` adds, served with the probes on
/// `common.metrics_listen` (when set; before connecting, so liveness answers during a slow start,
/// and reported to `published`); then the connection as `elk-<component>` and the provisioning
/// (`ServiceCommon::open`), which readiness follows. Returns the resources, the status to give the
/// replica's membership and role supervision, and the endpoint (keep it alive while the replica
/// runs; `None` when `metrics_listen` is unset).
pub async fn open_replica<E>(
    component: &'static str,
    common: &ServiceCommon,
    register: impl FnOnce(&mut Registry),
    published: &BoundAddress,
) -> Result<(Resources, ReplicaStatus, Option<MetricsEndpoint>), E>
where
    E: From<MetricsListenError> + From<NatsError>,
{
    let mut instance = InstanceMetrics::new(component);
    register(&mut instance.registry);
    let status = instance.status.clone();
    let (endpoint, health) = instance
        .serve(common.metrics_listen.as_deref(), published)
        .await?;
    let resources = common.open(&format!("elk-{component}")).await?;
    health.watch_connection(&resources.client);
    Ok((resources, status, endpoint))
}

/// Encodes a [`ReplicaStatus`] on each scrape.
#[derive(Debug)]
struct StatusCollector {
    status: ReplicaStatus,
}

impl Collector for StatusCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let member_up = i64::from(self.status.is_member());
        let gauge = ConstGauge::new(member_up);
        gauge.encode(encoder.encode_descriptor(
            "elk_member_up",
            "1 while this process holds a live membership (member key renewed in time).",
            None,
            gauge.metric_type(),
        )?)?;
        let Some(role) = self.status.role() else {
            return Ok(());
        };
        let labels = [("role", role.as_str())];
        let holder = ConstGauge::new(i64::from(self.status.leading().is_some()));
        let mut family = encoder.encode_descriptor(
            "elk_role_holder",
            "1 while this replica holds the role and runs its leader work, else 0.",
            None,
            holder.metric_type(),
        )?;
        holder.encode(family.encode_family(&labels)?)?;
        if let Some(epoch) = self.status.lease_epoch() {
            let epoch = ConstGauge::new(epoch.get());
            let mut family = encoder.encode_descriptor(
                "elk_role_epoch",
                "Epoch of the role lease as this replica last saw it (grows on every change of holder).",
                None,
                epoch.metric_type(),
            )?;
            epoch.encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// A labelled gauge whose series are replaced as a whole by [`GaugeSnapshot::replace`]: what is
/// not in the latest set is not exported any more. Cheap to clone; register it once.
#[derive(Debug, Clone)]
pub struct GaugeSnapshot {
    inner: Arc<SnapshotInner>,
}

#[derive(Debug)]
struct SnapshotInner {
    name: &'static str,
    help: &'static str,
    series: Mutex<Vec<(Labels, f64)>>,
}

impl GaugeSnapshot {
    /// A gauge called `name` (with its unit suffix, e.g. `_seconds`), without series yet.
    pub fn new(name: &'static str, help: &'static str) -> Self {
        Self {
            inner: Arc::new(SnapshotInner {
                name,
                help,
                series: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Exports this gauge from `registry` (several registries may export the same one).
    pub fn register(&self, registry: &mut Registry) {
        registry.register_collector(Box::new(self.clone()));
    }

    /// Replaces every series.
    pub fn replace(&self, series: Vec<(Labels, f64)>) {
        *self.lock() = series;
    }

    /// The series as last replaced.
    pub fn series(&self) -> Vec<(Labels, f64)> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Labels, f64)>> {
        self.inner
            .series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Collector for GaugeSnapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let series = self.lock();
        if series.is_empty() {
            return Ok(());
        }
        let mut family = encoder.encode_descriptor(
            self.inner.name,
            self.inner.help,
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (labels, value) in series.iter() {
            ConstGauge::new(*value).encode(family.encode_family(labels)?)?;
        }
        Ok(())
    }
}

/// Buckets for network round trips and short operations: 1 ms to about 16 s.
pub fn latency_buckets() -> Vec<f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 15).collect()
}

/// Buckets for durations of seconds to minutes (hand-overs, reclaims): 10 ms to about 10 min.
pub fn duration_buckets() -> Vec<f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.01, 2.0, 17).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use elk_protocol::names::ControlRole;
    use elk_types::Epoch;

    fn encode(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, registry).unwrap();
        text
    }

    #[test]
    fn the_status_is_read_at_scrape_time() {
        let mut registry = instance_registry("assigner");
        let status = replica_status(&mut registry);
        let text = encode(&registry);
        assert!(
            text.contains("elk_build_info{component=\"assigner\",version=\""),
            "{text}"
        );
        assert!(text.contains("elk_member_up 0"), "{text}");
        assert!(
            !text.contains("elk_role_holder"),
            "not a role follower: {text}"
        );
        status.follows(ControlRole::Assigner);
        status.set_lease_epoch(Epoch(7));
        status.set_leading(Some(Epoch(7)));
        let text = encode(&registry);
        assert!(
            text.contains("elk_role_holder{role=\"assigner\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("elk_role_epoch{role=\"assigner\"} 7"),
            "{text}"
        );
        status.set_leading(None);
        assert!(encode(&registry).contains("elk_role_holder{role=\"assigner\"} 0"));
    }

    #[test]
    fn a_snapshot_replaces_every_series() {
        let mut registry = Registry::default();
        let gauge = GaugeSnapshot::new("elk_test_items", "Items");
        gauge.register(&mut registry);
        assert!(
            !encode(&registry).contains("elk_test_items"),
            "empty: no family"
        );
        gauge.replace(vec![
            (vec![("job", "a".to_owned())], 1.0),
            (vec![("job", "b".to_owned())], 2.5),
        ]);
        let text = encode(&registry);
        assert!(text.contains("# TYPE elk_test_items gauge"), "{text}");
        assert!(text.contains("elk_test_items{job=\"b\"} 2.5"), "{text}");
        gauge.replace(vec![(vec![("job", "b".to_owned())], 3.0)]);
        let text = encode(&registry);
        assert!(
            !text.contains("job=\"a\""),
            "a replaced series is gone: {text}"
        );
        assert_eq!(gauge.series().len(), 1);
    }
}
