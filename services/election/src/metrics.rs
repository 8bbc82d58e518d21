//! The election replica's metrics (Prometheus, `docs/observability.md`), shared with whoever
//! started the replica: registered into the instance's registry by `run`, updated by the active
//! task, read by tests.

use elk_protocol::messages::{MemberRole, MembershipView};
use elk_protocol::names::ControlRole;
use elk_runtime::BoundAddress;
use elk_runtime::metrics::{GaugeSnapshot, latency_buckets};
use elk_runtime::prometheus_client::metrics::counter::Counter;
use elk_runtime::prometheus_client::metrics::family::Family;
use elk_runtime::prometheus_client::metrics::gauge::Gauge;
use elk_runtime::prometheus_client::metrics::histogram::Histogram;
use elk_runtime::prometheus_client::registry::Registry;

/// What an election replica exports. Cheap to share (`Arc`); every field is a handle on a
/// registered metric.
#[derive(Debug)]
pub struct ElectionMetrics {
    /// Where the replica serves `/metrics` once bound (`metrics_listen`).
    pub endpoint: BoundAddress,
    /// 1 while this replica is the active one.
    pub active: Gauge,
    /// Generation of the last view this replica wrote (while active).
    pub view_generation: Gauge,
    /// Views written.
    pub view_writes: Counter,
    /// Role lease writes (a new holder or a cleared one), by role.
    pub role_changes: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// From the first membership change of a burst (its server timestamp: a join, a leave, a TTL
    /// expiry marker) to the view that includes it being written.
    pub view_latency: Histogram,
    /// Live members in the last view written, by member role.
    members: GaugeSnapshot,
}

impl Default for ElectionMetrics {
    fn default() -> Self {
        Self {
            endpoint: BoundAddress::default(),
            active: Gauge::default(),
            view_generation: Gauge::default(),
            view_writes: Counter::default(),
            role_changes: Family::default(),
            view_latency: Histogram::new(latency_buckets()),
            members: GaugeSnapshot::new(
                "elk_view_members",
                "Live members in the last membership view this replica wrote, by role (role=\"worker\": live workers).",
            ),
        }
    }
}

impl ElectionMetrics {
    pub(crate) fn register(&self, registry: &mut Registry) {
        let gauges = [
            (
                "elk_election_active",
                "1 while this replica is the active election replica (holds leases/election)",
                &self.active,
            ),
            (
                "elk_view_generation",
                "Generation of the last membership view this replica wrote",
                &self.view_generation,
            ),
        ];
        for (name, help, gauge) in gauges {
            registry.register(name, help, gauge.clone());
        }
        let writes = self.view_writes.clone();
        registry.register(
            "elk_election_view_writes",
            "Membership views written",
            writes,
        );
        registry.register(
            "elk_election_role_changes",
            "Role lease writes (new holder, or holder cleared), by role",
            self.role_changes.clone(),
        );
        registry.register(
            "elk_election_view_latency_seconds",
            "From the first member change of a burst (server time: join, leave, TTL expiry) to the view including it",
            self.view_latency.clone(),
        );
        self.members.register(registry);
    }

    /// A view was written.
    pub(crate) fn view_written(&self, view: &MembershipView) {
        self.view_writes.inc();
        self.view_generation
            .set(i64::try_from(view.generation.get()).unwrap_or(i64::MAX));
        let roles = [
            (MemberRole::Worker, "worker"),
            (MemberRole::Election, "election"),
            (MemberRole::Assigner, "assigner"),
            (MemberRole::Scaler, "scaler"),
        ];
        self.members.replace(
            roles
                .into_iter()
                .map(|(role, name)| {
                    let count = view.members.iter().filter(|m| m.role == role).count();
                    (vec![("role", name.to_owned())], count as f64)
                })
                .collect(),
        );
    }

    /// A role lease was written.
    pub(crate) fn role_changed(&self, role: ControlRole) {
        self.role_changes
            .get_or_create(&vec![("role", role.as_str())])
            .inc();
    }

    /// Live members per role in the last view written (tests).
    pub fn live_members(&self, role: &str) -> Option<u64> {
        self.members
            .series()
            .into_iter()
            .find(|(labels, _)| labels.iter().any(|(_, value)| value == role))
            .map(|(_, count)| count as u64)
    }
}
