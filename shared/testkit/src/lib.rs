//! Test fixtures for ELK Coordinator: a real `nats-server` per test, condition polling, fault
//! injection and invariant checks.
//!
//! * [`NatsServer`] (re-exported from `elk-nats-server`) starts `nats-server` (from
//!   `NATS_SERVER_BIN`, else `PATH`) on a random loopback port with a temporary store, and kills
//!   it and removes the store when dropped; `stop` and `restart` (same port, same store) simulate
//!   a NATS outage. A missing or too old binary is an error that says how to install one, never a
//!   silent skip.
//! * [`wait_until`] polls an async condition until it holds or a deadline passes; tests never
//!   sleep to wait.
//! * [`TcpProxy`] sits between a client and the server so a test can cut the client off (a
//!   network partition) and heal it.
//! * [`OwnershipAuditor`] follows a namespace and reports ownership overlaps (invariant 2), lost
//!   checkpoints (invariant 3) and unexplained repetition (invariant 5); the [`coverage`]
//!   helpers check a per-ID processing counter (invariant 1).

pub mod auditor;
pub mod coverage;
mod proxy;
mod wait;

pub use auditor::{AuditReport, AuditorError, OwnershipAuditor};
pub use coverage::{CoverageReport, IdSummary, assert_exact_coverage, assert_full_coverage};
pub use elk_nats_server::{
    NatsCluster, NatsClusterBuilder, NatsServer, NatsServerBuilder, ServerError,
    check_binary_version, resolve_nats_server_binary,
};
pub use proxy::TcpProxy;
pub use wait::{TimedOut, wait_until};
