//! Every NATS subject, KV bucket and key name used by ELK Coordinator, in one place.
//!
//! | resource | name |
//! |---|---|
//! | members bucket (per-key TTL) | `elk_<ns>_members`, key `<member_id>` |
//! | leases bucket | `elk_<ns>_leases`, keys `election`, `role.assigner`, `role.scaler`, `view` |
//! | jobs bucket | `elk_<ns>_jobs`, key `<job>` |
//! | partitions bucket | `elk_<ns>_partitions`, key `<job>.<partition_id>` |
//! | assignments bucket | `elk_<ns>_assignments`, key `<worker_id>` |
//! | fleet bucket | `elk_<ns>_fleet`, keys `desired` (scaler), `placement` (assigner) |
//! | progress stream | `ELK_<ns>_PROGRESS`, subjects `elk.<ns>.progress.<worker_id>` |
//! | admin request/reply | `elk.<ns>.admin.<service>.<verb>` |
//!
//! All tokens spliced in here are validated newtypes, so no name can contain a wildcard.

use elk_types::{JobName, MemberId, Namespace, PartitionId};

/// Key of the election service's own active/standby lease in the leases bucket.
pub const ELECTION_KEY: &str = "election";
/// Key of the membership view in the leases bucket.
pub const VIEW_KEY: &str = "view";
/// Key of the scaler's desired worker count in the fleet bucket.
pub const DESIRED_WORKERS_KEY: &str = "desired";
/// Key of the assigner's placement levers (freeze, requested drains) in the fleet bucket.
pub const PLACEMENT_KEY: &str = "placement";
/// Name of the assigner's durable consumer on the progress stream.
pub const PROGRESS_CONSUMER: &str = "assigner";

/// A control-plane role led by exactly one member at a time (`"assigner"`, `"scaler"` on the
/// wire).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum ControlRole {
    Assigner,
    Scaler,
}

impl ControlRole {
    pub const ALL: [ControlRole; 2] = [ControlRole::Assigner, ControlRole::Scaler];

    /// Key of this role's lease in the leases bucket.
    pub const fn lease_key(self) -> &'static str {
        match self {
            ControlRole::Assigner => "role.assigner",
            ControlRole::Scaler => "role.scaler",
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            ControlRole::Assigner => "assigner",
            ControlRole::Scaler => "scaler",
        }
    }

    /// The role named `name` (`assigner`, `scaler`).
    pub fn parse(name: &str) -> Option<ControlRole> {
        Self::ALL.into_iter().find(|role| role.as_str() == name)
    }
}

/// Names of every NATS resource of one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    namespace: Namespace,
}

impl Names {
    pub fn new(namespace: Namespace) -> Self {
        Self { namespace }
    }

    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    fn bucket(&self, what: &str) -> String {
        format!("elk_{}_{what}", self.namespace)
    }

    pub fn members_bucket(&self) -> String {
        self.bucket("members")
    }

    pub fn leases_bucket(&self) -> String {
        self.bucket("leases")
    }

    pub fn jobs_bucket(&self) -> String {
        self.bucket("jobs")
    }

    pub fn partitions_bucket(&self) -> String {
        self.bucket("partitions")
    }

    pub fn assignments_bucket(&self) -> String {
        self.bucket("assignments")
    }

    pub fn fleet_bucket(&self) -> String {
        self.bucket("fleet")
    }

    pub fn progress_stream(&self) -> String {
        format!("ELK_{}_PROGRESS", self.namespace)
    }

    /// Subject a worker publishes its progress reports on.
    pub fn progress_subject(&self, worker: &MemberId) -> String {
        format!("elk.{}.progress.{worker}", self.namespace)
    }

    /// Filter covering every worker's progress subject.
    pub fn progress_subjects(&self) -> String {
        format!("elk.{}.progress.>", self.namespace)
    }

    /// The per-worker subject carrying that worker's assignment record (the KV key's subject).
    pub fn assignment_subject(&self, worker: &MemberId) -> String {
        format!("$KV.{}.{worker}", self.assignments_bucket())
    }

    /// Request/reply subject of an admin verb served by `service`.
    pub fn admin_subject(&self, service: &str, verb: &str) -> String {
        format!("elk.{}.admin.{service}.{verb}", self.namespace)
    }

    /// Subject an open-ended job's planner serves.
    pub fn plan_subject(&self, job: &JobName) -> String {
        format!("elk.{}.plan.{job}", self.namespace)
    }

    /// Key of one partition in the partitions bucket.
    pub fn partition_key(job: &JobName, partition: PartitionId) -> String {
        format!("{job}.{partition}")
    }

    /// Inverse of [`Names::partition_key`]; `None` for a key of another shape.
    pub fn parse_partition_key(key: &str) -> Option<(JobName, PartitionId)> {
        let (job, id) = key.split_once('.')?;
        let job = JobName::new(job).ok()?;
        let id = id.parse::<u64>().ok()?;
        Some((job, PartitionId(id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Names {
        Names::new(Namespace::new("prod").unwrap())
    }

    #[test]
    fn resource_names() {
        let names = names();
        let worker = MemberId::new("w-1").unwrap();
        assert_eq!(names.members_bucket(), "elk_prod_members");
        assert_eq!(names.leases_bucket(), "elk_prod_leases");
        assert_eq!(names.jobs_bucket(), "elk_prod_jobs");
        assert_eq!(names.partitions_bucket(), "elk_prod_partitions");
        assert_eq!(names.assignments_bucket(), "elk_prod_assignments");
        assert_eq!(names.progress_stream(), "ELK_prod_PROGRESS");
        assert_eq!(names.progress_subject(&worker), "elk.prod.progress.w-1");
        assert_eq!(names.progress_subjects(), "elk.prod.progress.>");
        assert_eq!(
            names.assignment_subject(&worker),
            "$KV.elk_prod_assignments.w-1"
        );
        assert_eq!(
            names.admin_subject("assigner", "create_job"),
            "elk.prod.admin.assigner.create_job"
        );
        assert_eq!(ControlRole::Assigner.lease_key(), "role.assigner");
    }

    #[test]
    fn partition_keys_round_trip() {
        let job = JobName::new("backfill").unwrap();
        let key = Names::partition_key(&job, PartitionId(42));
        assert_eq!(key, "backfill.42");
        assert_eq!(
            Names::parse_partition_key(&key),
            Some((job, PartitionId(42)))
        );
        assert_eq!(Names::parse_partition_key("backfill"), None);
        assert_eq!(Names::parse_partition_key("a.b"), None);
        assert_eq!(Names::parse_partition_key("a*.1"), None);
    }
}
