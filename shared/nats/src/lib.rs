//! NATS plumbing shared by every ELK component: connecting (and refusing servers that cannot run
//! ELK), idempotent provisioning of the buckets and the progress stream, compare-and-set writes
//! with per-key TTL, watching a bucket from a consistent snapshot, and the typed client of the
//! assigner's admin surface ([`AdminClient`]).

pub mod admin_client;
mod connect;
mod error;
mod follow;
mod keys;
mod kv;
pub mod membership;
mod provision;
mod replicas;
mod reply;
pub mod role;
mod status;
pub mod trace;

pub use admin_client::{AdminClient, AdminClientError, Members, PartitionPage, PartitionQuery};
pub use connect::{
    DEFAULT_NATS_URL, MIN_SERVER_VERSION, NatsConfig, check_server_version, connect, parse_version,
};
pub use error::{BoxError, NatsError, NatsErrorKind, Retryable, classify, report};
pub use follow::{RESYNC_INTERVAL, Versioned, follow_key};
pub use keys::{KeyBucket, KeyWatch, MAX_LEASE_TTL, honoured_ttl, stored_ttl};
pub use kv::{
    Bucket, CasOutcome, KvEntry, WatchSnapshot, cas_write, last_revision, read_entry,
    watch_snapshot,
};
pub use membership::{
    JoinError, LeaseDeadline, MemberLease, MembershipExit, ServiceMember, new_incarnation,
};
pub use provision::{
    MemberResources, PROGRESS_MAX_BYTES, ProvisionConfig, Resources, STREAM_MAX_CONSUMERS, bind,
    open, open_member, progress_consumer_config, provision,
};
pub use replicas::MAX_REPLICAS;
pub use reply::send_admin_reply;
pub use role::{LeaderTerm, LeaderWork, RestartPolicy, RoleError, RoleSupervisor, TermEnd};
pub use status::{RenewalObserver, ReplicaStatus};
