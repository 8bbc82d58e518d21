//! NATS plumbing shared by every ELK component: connecting (and refusing servers that cannot run
//! ELK), idempotent provisioning of the buckets and the progress stream, compare-and-set writes
//! with per-key TTL, and watching a bucket from a consistent snapshot.

mod connect;
mod error;
mod follow;
mod kv;
pub mod membership;
mod provision;

pub use connect::{MIN_SERVER_VERSION, NatsConfig, check_server_version, connect, parse_version};
pub use error::{BoxError, NatsError, NatsErrorKind, Retryable, classify, report};
pub use follow::{Versioned, follow_key};
pub use kv::{CasOutcome, KvEntry, WatchSnapshot, cas_write, read_entry, watch_snapshot};
pub use membership::{
    JoinError, LeaseDeadline, MemberLease, MembershipExit, ServiceMember, new_incarnation,
};
pub use provision::{ProvisionConfig, Resources, provision};
