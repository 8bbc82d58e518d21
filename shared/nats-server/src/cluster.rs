//! [`NatsCluster`]: a JetStream cluster of `nats-server` processes on loopback, for tests of
//! replicated resources and of a server crashing under a running job.
//!
//! Every node gets a random client port, a route port, its own temporary store and the name
//! `n<index>`; each one is given the route ports of all nodes, so the full mesh (and the
//! JetStream meta group of all of them) forms whatever order they start in, and a restarted
//! node finds its peers again. Route ports are picked by binding port 0 and releasing it just
//! before the servers start; a port taken in between makes the start fail, and it is retried
//! with new ports.

use crate::server::ClusterSeat;
use crate::{NatsServer, NatsServerBuilder, ServerError};
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

/// How long a new cluster (or a restarted node) has to elect a meta leader and catch up.
const HEALTHY_DEADLINE: Duration = Duration::from_secs(60);
/// Attempts at starting a cluster when a picked route port was taken meanwhile.
const START_ATTEMPTS: usize = 3;

/// Options for [`NatsCluster`]: its size, and the options every server gets.
#[derive(Debug, Clone)]
pub struct NatsClusterBuilder {
    size: usize,
    node: NatsServerBuilder,
}

impl Default for NatsClusterBuilder {
    fn default() -> Self {
        Self {
            size: 3,
            node: NatsServerBuilder::default(),
        }
    }
}

impl NatsClusterBuilder {
    /// How many servers (default 3).
    pub fn size(mut self, size: usize) -> Self {
        self.size = size;
        self
    }

    /// [`NatsServerBuilder::sync_always`] for every server.
    pub fn sync_always(mut self, enabled: bool) -> Self {
        self.node = self.node.sync_always(enabled);
        self
    }

    /// [`NatsServerBuilder::binary`] for every server.
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.node = self.node.binary(path);
        self
    }

    /// Starts every server and waits until each one is healthy (a JetStream meta leader
    /// elected and known to all).
    pub fn start(self) -> Result<NatsCluster, ServerError> {
        if self.size == 0 {
            return Err(ServerError::EmptyCluster(self.size));
        }
        let mut attempt = 1;
        loop {
            match self.start_once() {
                Err(ServerError::NotReady { .. }) if attempt < START_ATTEMPTS => attempt += 1,
                other => return other,
            }
        }
    }

    fn start_once(&self) -> Result<NatsCluster, ServerError> {
        let route_ports = free_ports(self.size)?;
        let name = format!("elk-test-{}", std::process::id());
        let mut nodes = Vec::with_capacity(self.size);
        for (index, route_port) in route_ports.iter().enumerate() {
            let seat = ClusterSeat {
                server_name: format!("n{index}"),
                cluster_name: name.clone(),
                route_port: *route_port,
                route_ports: route_ports.clone(),
            };
            nodes.push(self.node.clone().seat(seat).start()?);
        }
        let urls = nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",");
        let cluster = NatsCluster { name, nodes, urls };
        cluster.wait_healthy(HEALTHY_DEADLINE)?;
        Ok(cluster)
    }
}

/// `count` distinct loopback ports that were free a moment ago.
fn free_ports(count: usize) -> std::io::Result<Vec<u16>> {
    // All listeners are held until every port is known, so the ports are distinct.
    let listeners = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|listener| listener.local_addr().map(|address| address.port()))
        .collect()
}

/// A running JetStream cluster on loopback; every node is killed and its store removed on drop.
pub struct NatsCluster {
    name: String,
    nodes: Vec<NatsServer>,
    urls: String,
}

impl std::fmt::Debug for NatsCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsCluster")
            .field("name", &self.name)
            .field("urls", &self.urls)
            .finish()
    }
}

impl NatsCluster {
    pub fn builder() -> NatsClusterBuilder {
        NatsClusterBuilder::default()
    }

    /// Starts a healthy cluster of `size` servers; panics with the reason if it cannot.
    pub fn start(size: usize) -> Self {
        Self::builder()
            .size(size)
            .start()
            .unwrap_or_else(|error| panic!("cannot start a nats-server cluster: {error}"))
    }

    /// Every node's client URL, comma-separated: what a client is given, so it can reach the
    /// cluster whichever node is down.
    pub fn urls(&self) -> &str {
        &self.urls
    }

    /// The cluster's name (`cluster_name`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The number of servers.
    pub fn size(&self) -> usize {
        self.nodes.len()
    }

    /// Node `index` (0-based).
    pub fn node(&self, index: usize) -> &NatsServer {
        &self.nodes[index]
    }

    /// The index of the node whose server name is `name` (as stream info names a leader).
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes
            .iter()
            .position(|node| node.server_name() == Some(name))
    }

    /// Kills node `index` with SIGKILL (its store is kept).
    pub fn kill(&mut self, index: usize) {
        self.nodes[index].stop();
    }

    /// Starts node `index` again on its ports and store; it re-joins the cluster through its
    /// routes. Does not wait for it to catch up (see [`NatsCluster::wait_healthy`]).
    pub fn restart(&mut self, index: usize) -> Result<(), ServerError> {
        self.nodes[index].restart()
    }

    /// Waits until every running node answers `/healthz` with ok: a meta leader is known and
    /// the node's stream and consumer replicas are current.
    pub fn wait_healthy(&self, deadline: Duration) -> Result<(), ServerError> {
        self.nodes
            .iter()
            .filter(|node| node.is_running())
            .try_for_each(|node| node.wait_healthy(deadline))
    }
}
