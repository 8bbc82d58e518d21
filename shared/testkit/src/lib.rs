//! Test fixtures for ELK Coordinator: a real `nats-server` per test, condition polling, fault
//! injection and invariant checks.
//!
//! * [`NatsServer`] starts a nats-server for one test on a random loopback port with a private
//!   JetStream store, and stops it and removes the store when dropped; `stop` (SIGKILL) and
//!   `restart` (same port, same store) simulate a crash and an outage. The backend comes from
//!   `ELK_TEST_BACKEND` ([`Backend`]): a child process (`NATS_SERVER_BIN`, else `PATH`; the
//!   default), or with `testcontainers` the project's nats-server image in a container through
//!   the `testcontainers` crate (feature `testcontainers`, on Docker or podman's socket; see
//!   [`container`]). A missing binary, engine or image is an error that says how to get one,
//!   never a silent skip.
//! * [`NatsCluster`] (re-exported from `elk-nats-server`) starts a JetStream cluster of server
//!   processes on loopback whose nodes can be killed and restarted one by one.
//! * [`wait_until`] polls an async condition until it holds or a deadline passes; tests never
//!   sleep to wait.
//! * [`TcpProxy`] sits between a client and the server so a test can cut the client off (a
//!   network partition) and heal it.
//! * [`TestCertificates`] generates a CA, a server and a client certificate per test (for
//!   servers started with TLS through [`NatsServerBuilder::config`]).
//! * [`OwnershipAuditor`] follows a namespace and reports ownership overlaps (invariant 2), lost
//!   checkpoints (invariant 3) and unexplained repetition (invariant 5); the [`coverage`]
//!   helpers check a per-ID processing counter (invariant 1).
//! * [`capture_service_logs`] shows the in-process services' warnings with a failed test.
//! * [`KubeApiServer`] runs a real etcd + kube-apiserver (built by
//!   `scripts/ensure-kube-apiserver.sh`) for the scaler's Kubernetes actuation tests.

pub mod auditor;
#[cfg(feature = "testcontainers")]
pub mod container;
pub mod coverage;
mod kube_apiserver;
mod logs;
mod proxy;
mod server;
mod tls;
mod wait;

pub use auditor::{AuditReport, AuditorError, OwnershipAuditor};
pub use coverage::{CoverageReport, IdSummary, assert_exact_coverage, assert_full_coverage};
pub use elk_nats_server::{
    NatsCluster, NatsClusterBuilder, ServerError, check_binary_version, resolve_nats_server_binary,
};
pub use kube_apiserver::{KUBE_APISERVER_VERSION, KubeApiServer, KubeServerError};
pub use logs::capture_service_logs;
pub use proxy::TcpProxy;
pub use server::{BACKEND_ENV, Backend, NatsServer, NatsServerBuilder, TestServerError};
pub use tls::TestCertificates;
pub use wait::{TimedOut, wait_until};
