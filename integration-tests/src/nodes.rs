//! ELK components as processes of their own (the `elk-node` binary of this package), for the
//! scenarios that need one process per component: the trace tests, where each process exports
//! with its own `service.name` and only a real exit shows that queued spans are flushed.

use std::time::Duration;
use tokio::process::{Child, Command};

/// How long a node may take to stop after SIGTERM.
const STOP_DEADLINE: Duration = Duration::from_secs(60);

/// A component process (`ELK_NODE` = `election`, `assigner` or `worker`); killed if dropped
/// without [`Node::stop`].
pub struct Node {
    child: Child,
}

/// Where a node connects and exports.
#[derive(Debug, Clone, Copy)]
pub struct NodeTarget<'a> {
    /// The `elk-node` binary (`env!("CARGO_BIN_EXE_elk-node")` in a test).
    pub binary: &'a str,
    pub nats_url: &'a str,
    pub namespace: &'a str,
}

impl Node {
    /// Starts `node` as member `member` with the extra environment `env` (e.g. the `OTEL_*`
    /// variables). Member TTL 2 s; logs at `warn`.
    pub fn start(target: NodeTarget<'_>, node: &str, member: &str, env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(target.binary);
        command
            .env("ELK_NODE", node)
            .env("ELK_NATS_URL", target.nats_url)
            .env("ELK_NAMESPACE", target.namespace)
            .env("ELK_MEMBER_ID", member)
            .env("ELK_MEMBER_TTL", "2s")
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .kill_on_drop(true);
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().expect("elk-node starts");
        Self { child }
    }

    /// How the process ended, if it has (a crashed worker's test restarts it).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("wait for the node")
    }

    /// SIGTERM, then waits for a clean exit (graceful stop, queued spans exported).
    pub async fn stop(mut self) {
        let pid = self.child.id().expect("running");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM {pid}");
        let exit = tokio::time::timeout(STOP_DEADLINE, self.child.wait())
            .await
            .expect("the node stops within the deadline")
            .expect("wait for the node");
        assert!(exit.success(), "node exited with {exit}");
    }
}

/// The environment that makes a node export to `endpoint` over `protocol` (`grpc` or
/// `http/protobuf`), batches sent within 100 ms.
pub fn otlp_env<'a>(endpoint: &'a str, protocol: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ]
}
