//! Starting a worker ([`Worker::builder`] → [`WorkerBuilder::start`]) and controlling it through
//! its [`WorkerHandle`]: graceful [`WorkerHandle::shutdown`] or abrupt [`WorkerHandle::kill`].

use crate::WorkerError;
use crate::config::{
    DEFAULT_CHECKPOINT_INTERVAL, DEFAULT_MEMBER_TTL, DEFAULT_STOP_GRACE, WorkerConfig,
};
use crate::processor::Processor;
use crate::progress::ProgressPublisher;
use crate::stats::{StatsCounters, WorkerStats};
use crate::supervisor::{Session, Supervisor};
use elk_nats::{NatsConfig, ProvisionConfig};
use elk_protocol::names::Names;
use elk_types::{Capacity, Incarnation, JobName, MemberId, Namespace};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Entry point of the SDK; see [`Worker::builder`].
#[derive(Debug)]
pub struct Worker;

impl Worker {
    /// Starts configuring a worker with member id `id` in `namespace`.
    pub fn builder(nats: NatsConfig, namespace: Namespace, id: MemberId) -> WorkerBuilder {
        WorkerBuilder {
            config: WorkerConfig {
                nats,
                namespace,
                id,
                capacity: Capacity(1),
                jobs: Vec::new(),
                labels: BTreeMap::new(),
                member_ttl: DEFAULT_MEMBER_TTL,
                checkpoint_interval: DEFAULT_CHECKPOINT_INTERVAL,
                stop_grace: DEFAULT_STOP_GRACE,
                provision: ProvisionConfig::default(),
            },
        }
    }
}

/// Configures and starts a worker.
#[derive(Debug, Clone)]
pub struct WorkerBuilder {
    config: WorkerConfig,
}

impl WorkerBuilder {
    /// Partitions processed at once (default 1); placement quotas are proportional to it.
    pub fn capacity(mut self, capacity: u32) -> Self {
        self.config.capacity = Capacity(capacity);
        self
    }

    /// Jobs this worker processes (default: every job).
    pub fn jobs(mut self, jobs: impl IntoIterator<Item = JobName>) -> Self {
        self.config.jobs = jobs.into_iter().collect();
        self
    }

    /// Free-form labels published in the member record.
    pub fn labels(
        mut self,
        labels: impl IntoIterator<Item = (impl Into<String>, impl Into<String>)>,
    ) -> Self {
        self.config.labels = labels
            .into_iter()
            .map(|(key, value)| (key.into(), value.into()))
            .collect();
        self
    }

    /// TTL of the member key (default 3 s, at least 1 s); renewed every third of it.
    pub fn member_ttl(mut self, ttl: Duration) -> Self {
        self.config.member_ttl = ttl;
        self
    }

    /// How often advanced checkpoints are published (default 1 s).
    pub fn checkpoint_interval(mut self, interval: Duration) -> Self {
        self.config.checkpoint_interval = interval;
        self
    }

    /// How long processors get to return after cancellation on graceful shutdown or revoke
    /// before they are aborted (default 30 s). A self-fence aborts them at once.
    pub fn stop_grace(mut self, grace: Duration) -> Self {
        self.config.stop_grace = grace;
        self
    }

    /// Provisioning settings used when the worker makes sure the namespace's resources exist.
    pub fn provision_config(mut self, provision: ProvisionConfig) -> Self {
        self.config.provision = provision;
        self
    }

    /// Connects, provisions the namespace (idempotent), joins as a member and starts applying
    /// assignment records. Fails with [`WorkerError::IdTaken`] when a live member has the id.
    pub async fn start<P: Processor>(self, processor: P) -> Result<WorkerHandle, WorkerError> {
        let config = self.config;
        config
            .validate()
            .map_err(|reason| WorkerError::InvalidConfig { reason })?;
        let client = elk_nats::connect(&config.nats).await?;
        let names = Names::new(config.namespace.clone());
        let resources = elk_nats::provision(client, names, &config.provision).await?;
        let session = Session::open(&resources, &config).await?;
        let incarnation = Arc::new(AtomicU64::new(session.incarnation().get()));
        let stats = Arc::new(StatsCounters::default());
        let (publisher, publisher_task) = ProgressPublisher::spawn(
            resources.jetstream.clone(),
            resources.names.progress_subject(&config.id),
            stats.clone(),
        );
        let shutdown = CancellationToken::new();
        let id = config.id.clone();
        let supervisor = Supervisor::new(
            Arc::new(config),
            resources,
            Arc::new(processor),
            publisher,
            stats.clone(),
            incarnation.clone(),
            shutdown.clone(),
        );
        let supervisor_task = tokio::spawn(supervisor.run(session));
        Ok(WorkerHandle {
            id,
            incarnation,
            stats,
            shutdown,
            tasks: Some(Tasks {
                supervisor: supervisor_task,
                publisher: publisher_task,
            }),
        })
    }
}

struct Tasks {
    supervisor: JoinHandle<Result<(), WorkerError>>,
    publisher: JoinHandle<()>,
}

/// Controls a running worker. Dropping it without [`WorkerHandle::shutdown`] aborts the worker
/// like [`WorkerHandle::kill`] (without waiting).
pub struct WorkerHandle {
    id: MemberId,
    incarnation: Arc<AtomicU64>,
    stats: Arc<StatsCounters>,
    shutdown: CancellationToken,
    tasks: Option<Tasks>,
}

impl std::fmt::Debug for WorkerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerHandle")
            .field("id", &self.id)
            .field("incarnation", &self.incarnation())
            .finish()
    }
}

impl WorkerHandle {
    pub fn id(&self) -> &MemberId {
        &self.id
    }

    /// The current incarnation (changes after a self-fence and re-join).
    pub fn incarnation(&self) -> Incarnation {
        Incarnation(self.incarnation.load(Ordering::Relaxed))
    }

    /// A snapshot of the worker's counters.
    pub fn stats(&self) -> WorkerStats {
        self.stats.snapshot()
    }

    /// Graceful stop: applies no new record, cancels every processor and waits for it, publishes
    /// `Released` for every partition (running and queued) with its checkpoint and waits for the
    /// acks, then deletes the member key and closes the connection. Returns the final counters.
    pub async fn shutdown(mut self) -> Result<WorkerStats, WorkerError> {
        self.shutdown.cancel();
        let Some(tasks) = self.tasks.take() else {
            return Ok(self.stats());
        };
        let outcome = match tasks.supervisor.await {
            Ok(outcome) => outcome,
            Err(error) => Err(WorkerError::TaskFailed {
                reason: error.to_string(),
            }),
        };
        // The supervisor held the last queue sender: the publisher has drained and ends now.
        if let Err(error) = tasks.publisher.await {
            tracing::warn!(%error, "progress publisher ended abnormally");
        }
        outcome.map(|()| self.stats())
    }

    /// Abrupt stop, as `kill -9` would: aborts every task at once, publishes nothing, does not
    /// leave (the member key expires by its TTL) and drops the NATS connection.
    pub async fn kill(mut self) {
        let Some(tasks) = self.tasks.take() else {
            return;
        };
        tasks.supervisor.abort();
        tasks.publisher.abort();
        // Aborted tasks end at once; awaiting them makes sure nothing runs after `kill` returns.
        let _ = tasks.supervisor.await;
        let _ = tasks.publisher.await;
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        if let Some(tasks) = self.tasks.take() {
            tasks.supervisor.abort();
            tasks.publisher.abort();
        }
    }
}
