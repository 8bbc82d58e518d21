//! Starting a worker ([`Worker::builder`] → [`WorkerBuilder::start`] or
//! [`WorkerBuilder::start_blocking`]) and controlling it through its [`WorkerHandle`]: graceful
//! [`WorkerHandle::shutdown`], abrupt [`WorkerHandle::kill`], counters and lifecycle events.
//!
//! `start` captures the caller's runtime for the processors, then hands everything else to the
//! worker's [`CoordinationRuntime`] (a dedicated thread): the connection is opened there, so the
//! NATS client's I/O, the membership renewal, the assignment feed, the supervisor and the progress
//! publisher never wait for a thread that user code holds.

use crate::WorkerError;
use crate::config::{
    DEFAULT_ASSIGNMENT_RESYNC, DEFAULT_CHECKPOINT_INTERVAL, DEFAULT_MEMBER_TTL, DEFAULT_NATS_URL,
    DEFAULT_STOP_GRACE, WorkerConfig,
};
use crate::coordination::CoordinationRuntime;
use crate::events::{Lifecycle, WorkerEvents};
use crate::metrics::WorkerMetrics;
use crate::processor::{AsyncRunner, BlockingProcessor, BlockingRunner, Processor, Runner};
use crate::progress::ProgressPublisher;
use crate::stats::{StatsCounters, WorkerStats};
use crate::supervisor::{Session, Supervisor, SupervisorParts};
use elk_nats::{NatsConfig, ProvisionConfig};
use elk_protocol::names::Names;
use elk_runtime::{BoundAddress, Health, MetricsEndpoint};
use elk_types::{Capacity, Incarnation, JobName, MemberId, Namespace};
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// Entry point of the SDK; see [`Worker::builder`].
#[derive(Debug)]
pub struct Worker;

impl Worker {
    /// Starts configuring a worker with member id `id` in `namespace`. It connects to
    /// `nats://127.0.0.1:4222` unless told otherwise ([`WorkerBuilder::nats_url`],
    /// [`WorkerBuilder::nats`]); the member id doubles as the connection name.
    ///
    /// ```no_run
    /// use elk_worker::{MemberId, Namespace, PartitionWork, ProcessError, ProcessOutcome, Processor, Worker};
    /// # struct Noop;
    /// # impl Processor for Noop {
    /// #     async fn process(&self, _work: PartitionWork) -> Result<ProcessOutcome, ProcessError> {
    /// #         Ok(ProcessOutcome::Completed)
    /// #     }
    /// # }
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let worker = Worker::builder(Namespace::new("prod")?, MemberId::new("worker-7")?)
    ///     .nats_url("nats://nats.internal:4222")
    ///     .capacity(8)
    ///     .start(Noop)
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn builder(namespace: Namespace, id: MemberId) -> WorkerBuilder {
        WorkerBuilder {
            config: WorkerConfig {
                nats: NatsConfig::new(DEFAULT_NATS_URL, id.as_str()),
                namespace,
                id,
                capacity: Capacity(1),
                jobs: Vec::new(),
                labels: BTreeMap::new(),
                member_ttl: DEFAULT_MEMBER_TTL,
                checkpoint_interval: DEFAULT_CHECKPOINT_INTERVAL,
                stop_grace: DEFAULT_STOP_GRACE,
                assignment_resync: DEFAULT_ASSIGNMENT_RESYNC,
                provision: ProvisionConfig::default(),
                metrics_listen: None,
            },
            processors: None,
            coordination: None,
            user_metrics: None,
        }
    }
}

/// Registers a user's own metrics into the worker's registry.
type RegisterMetrics = Arc<dyn Fn(&mut Registry) + Send + Sync>;

/// Configures and starts a worker.
#[derive(Clone)]
pub struct WorkerBuilder {
    config: WorkerConfig,
    processors: Option<Handle>,
    coordination: Option<CoordinationRuntime>,
    user_metrics: Option<RegisterMetrics>,
}

impl std::fmt::Debug for WorkerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerBuilder")
            .field("config", &self.config)
            .field("processors", &self.processors)
            .field("coordination", &self.coordination)
            .field("user_metrics", &self.user_metrics.is_some())
            .finish()
    }
}

impl WorkerBuilder {
    /// The NATS server to connect to (default `nats://127.0.0.1:4222`; a comma-separated list of
    /// servers is accepted).
    pub fn nats_url(mut self, url: impl Into<String>) -> Self {
        self.config.nats.url = url.into();
        self
    }

    /// The whole connection configuration (credentials, ...). An unset connection name is
    /// the member id.
    pub fn nats(mut self, config: NatsConfig) -> Self {
        self.config.nats = config.named_if_unset(self.config.id.to_string());
        self
    }

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

    /// How long processors get to return after cancellation on graceful shutdown before they are
    /// abandoned (default 30 s). A self-fence does not wait at all.
    pub fn stop_grace(mut self, grace: Duration) -> Self {
        self.config.stop_grace = grace;
        self
    }

    /// How long the assignment watch may stay silent before the worker re-reads its assignment
    /// key directly to make sure the watch has not stalled (default 10 s).
    pub fn assignment_resync(mut self, idle: Duration) -> Self {
        self.config.assignment_resync = idle;
        self
    }

    /// Provisioning settings used when the worker makes sure the namespace's resources exist.
    pub fn provision_config(mut self, provision: ProvisionConfig) -> Self {
        self.config.provision = provision;
        self
    }

    /// Serves the worker's Prometheus metrics on `address` (`HOST:PORT`, e.g. `0.0.0.0:9464`;
    /// port 0 picks a free one, see [`WorkerHandle::metrics_address`]) at `/metrics`, with the
    /// probes `/healthz` (liveness: the worker's coordination runtime answers) and `/readyz`
    /// (readiness: connected to NATS and holding a live membership). Served from the worker's
    /// coordination runtime, so a busy processor runtime does not delay a probe. Off by default;
    /// [`WorkerHandle::encode_metrics`] works either way.
    pub fn metrics_listen(mut self, address: impl Into<String>) -> Self {
        self.config.metrics_listen = Some(address.into());
        self
    }

    /// Adds the application's own metrics to the worker's registry, served and encoded with the
    /// SDK's (`register` is called once, at start).
    ///
    /// ```no_run
    /// use elk_worker::prometheus_client::metrics::counter::Counter;
    /// # fn builder(builder: elk_worker::WorkerBuilder) -> elk_worker::WorkerBuilder {
    /// let rows: Counter = Counter::default();
    /// builder.register_metrics(move |registry| {
    ///     registry.register("myapp_rows", "Rows written by the processor", rows.clone());
    /// })
    /// # }
    /// ```
    pub fn register_metrics(
        mut self,
        register: impl Fn(&mut Registry) + Send + Sync + 'static,
    ) -> Self {
        self.user_metrics = Some(Arc::new(register));
        self
    }

    /// The runtime processors run on (default: the runtime that calls `start`).
    pub fn processor_runtime(mut self, runtime: Handle) -> Self {
        self.processors = Some(runtime);
        self
    }

    /// Runs this worker's coordination on `runtime`, shared with other workers of the process,
    /// instead of on a thread of its own (the default).
    pub fn coordination_runtime(mut self, runtime: CoordinationRuntime) -> Self {
        self.coordination = Some(runtime);
        self
    }

    /// Connects, provisions the namespace (idempotent), joins as a member and starts applying
    /// assignment records; `processor` runs the granted partitions as async tasks. Fails with
    /// [`WorkerError::IdTaken`] when a live member has the id.
    pub async fn start<P: Processor>(self, processor: P) -> Result<WorkerHandle, WorkerError> {
        self.launch(Arc::new(AsyncRunner(Arc::new(processor))))
            .await
    }

    /// Like [`WorkerBuilder::start`], for a synchronous [`BlockingProcessor`]: each partition runs
    /// on the blocking thread pool of the processors' runtime.
    pub async fn start_blocking<P: BlockingProcessor>(
        self,
        processor: P,
    ) -> Result<WorkerHandle, WorkerError> {
        self.launch(Arc::new(BlockingRunner(Arc::new(processor))))
            .await
    }

    async fn launch(self, runner: Arc<dyn Runner>) -> Result<WorkerHandle, WorkerError> {
        let invalid = |reason: String| WorkerError::InvalidConfig { reason };
        self.config.validate().map_err(invalid)?;
        let processors = match self.processors {
            Some(handle) => handle,
            None => Handle::try_current().map_err(|_| {
                invalid("start the worker inside a tokio runtime: its processors run there".into())
            })?,
        };
        let coordination = match self.coordination {
            Some(runtime) => runtime,
            None => CoordinationRuntime::start("elk-worker").map_err(|error| {
                WorkerError::TaskFailed {
                    reason: format!("cannot start the coordination thread: {error}"),
                }
            })?,
        };
        let stats = Arc::new(StatsCounters::default());
        let mut registry = Registry::default();
        if let Some(register) = &self.user_metrics {
            register(&mut registry);
        }
        let metrics =
            WorkerMetrics::register(&mut registry, stats.clone(), self.config.capacity.get());
        let shared = Arc::new(Shared {
            stats,
            incarnation: AtomicU64::new(0),
            lifecycle: Lifecycle::new(),
            metrics,
            registry: Arc::new(registry),
            metrics_address: BoundAddress::default(),
        });
        let control = Control::default();
        let (joined, joined_wait) = oneshot::channel();
        let (done, done_wait) = oneshot::channel();
        let id = self.config.id.clone();
        let start = Start {
            config: Arc::new(self.config),
            runner,
            processors,
            shared: shared.clone(),
            control: control.clone(),
        };
        coordination.handle().spawn(async move {
            let outcome = tokio::select! {
                biased;
                () = start.control.kill.cancelled() => Ok(()),
                outcome = start.clone().coordinate(joined) => outcome,
            };
            let _ = done.send(outcome);
        });
        match joined_wait.await {
            Ok(Ok(())) => Ok(WorkerHandle {
                id,
                shared,
                control,
                done: Some(done_wait),
                _coordination: coordination,
            }),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(WorkerError::TaskFailed {
                reason: "the coordination task ended before the worker joined".to_owned(),
            }),
        }
    }
}

/// What the worker's coordination task shares with its handle.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) stats: Arc<StatsCounters>,
    /// The current incarnation (0 before the first join).
    pub(crate) incarnation: AtomicU64,
    pub(crate) lifecycle: Lifecycle,
    pub(crate) metrics: WorkerMetrics,
    registry: Arc<Registry>,
    metrics_address: BoundAddress,
}

/// How the handle stops the coordination task.
#[derive(Debug, Clone, Default)]
struct Control {
    /// Graceful: release everything, leave.
    shutdown: CancellationToken,
    /// Abrupt: drop everything where it stands.
    kill: CancellationToken,
}

/// Everything the coordination task starts from.
#[derive(Clone)]
struct Start {
    config: Arc<WorkerConfig>,
    runner: Arc<dyn Runner>,
    processors: Handle,
    shared: Arc<Shared>,
    control: Control,
}

impl Start {
    /// Runs on the coordination runtime: connect, join (reported through `joined`), then
    /// supervise until shutdown. Dropping this future (kill) drops the connection, stops the
    /// renewal and aborts the publisher and the processors.
    async fn coordinate(
        self,
        joined: oneshot::Sender<Result<(), WorkerError>>,
    ) -> Result<(), WorkerError> {
        let config = self.config;
        let shared = &self.shared;
        let health = Health::new(shared.metrics.status.clone());
        // Up before connecting, so liveness answers while the connection is made.
        let endpoint = MetricsEndpoint::start_if_configured(
            config.metrics_listen.as_deref(),
            shared.registry.clone(),
            health.clone(),
            &shared.metrics_address,
        );
        let connected = async {
            let _endpoint = endpoint.await?;
            let client = elk_nats::connect(&config.nats).await?;
            health.watch_connection(&client);
            let names = Names::new(config.namespace.clone());
            let resources = elk_nats::provision(client, names, &config.provision).await?;
            let session = Session::open(&resources, &config, shared).await?;
            Ok::<_, WorkerError>((resources, session, _endpoint))
        };
        // Boxed: these futures are large, and the coordination thread's stack is not.
        let (resources, session, _endpoint) = match Box::pin(connected).await {
            Ok(started) => started,
            Err(error) => {
                let _ = joined.send(Err(error));
                return Ok(());
            }
        };
        let (publisher, _publisher_task) = ProgressPublisher::spawn(
            resources.jetstream.clone(),
            resources.names.progress_subject(&config.id),
            self.shared.stats.clone(),
            self.shared.metrics.acked.clone(),
        );
        let mut supervisor = Supervisor::new(SupervisorParts {
            config,
            resources,
            runner: self.runner,
            processors: self.processors,
            publisher,
            shared: self.shared,
            shutdown: self.control.shutdown.clone(),
        });
        // The handle must see the incarnation (and subscribers `Joined`) once `start` returns.
        supervisor.begin(&session, None);
        let run = Box::pin(supervisor.run(session));
        // `start` was abandoned before it learned of the join: nobody will ever stop this worker,
        // so it leaves at once.
        if joined.send(Ok(())).is_err() {
            self.control.shutdown.cancel();
        }
        run.await
    }
}

/// Controls a running worker. Dropping it without [`WorkerHandle::shutdown`] aborts the worker
/// like [`WorkerHandle::kill`] (without waiting).
pub struct WorkerHandle {
    id: MemberId,
    shared: Arc<Shared>,
    control: Control,
    done: Option<oneshot::Receiver<Result<(), WorkerError>>>,
    /// Keeps the coordination thread alive while the worker runs.
    _coordination: CoordinationRuntime,
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
        Incarnation(self.shared.incarnation.load(Ordering::Relaxed))
    }

    /// A snapshot of the worker's counters.
    pub fn stats(&self) -> WorkerStats {
        self.shared.stats.snapshot()
    }

    /// Where the metrics endpoint listens ([`WorkerBuilder::metrics_listen`]), if it does.
    pub fn metrics_address(&self) -> Option<std::net::SocketAddr> {
        self.shared.metrics_address.get()
    }

    /// The worker's metrics in the Prometheus text format (what `/metrics` serves), for an
    /// application that serves them itself.
    pub fn encode_metrics(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.shared.registry)
            .expect("writing to a String cannot fail");
        text
    }

    /// Subscribes to the worker's lifecycle events. The first call sees every event since the
    /// worker started (`Joined` included); later calls see events from the moment they subscribe.
    ///
    /// ```no_run
    /// # async fn run(worker: elk_worker::WorkerHandle) {
    /// use elk_worker::WorkerEvent;
    ///
    /// let mut events = worker.events();
    /// while let Some(event) = events.recv().await {
    ///     match event {
    ///         WorkerEvent::Fenced { incarnation, .. } => eprintln!("lost membership {incarnation}"),
    ///         WorkerEvent::Left => break,
    ///         other => eprintln!("{other:?}"),
    ///     }
    /// }
    /// # }
    /// ```
    pub fn events(&self) -> WorkerEvents {
        self.shared.lifecycle.subscribe()
    }

    /// Graceful stop: applies no new record, cancels every processor and waits for it (up to the
    /// stop grace), publishes `Released` for every partition (running and queued) with its
    /// checkpoint and waits for the acks, then deletes the member key and closes the connection.
    /// Returns the final counters.
    pub async fn shutdown(mut self) -> Result<WorkerStats, WorkerError> {
        self.control.shutdown.cancel();
        let Some(done) = self.done.take() else {
            return Ok(self.stats());
        };
        let outcome = done.await.unwrap_or_else(|_| {
            Err(WorkerError::TaskFailed {
                reason: "the coordination task ended abnormally".to_owned(),
            })
        });
        outcome.map(|()| self.stats())
    }

    /// Abrupt stop, as `kill -9` would: drops the connection at once, publishes nothing, does not
    /// leave (the member key expires by its TTL) and aborts every processor (async ones at their
    /// next await; a blocking one runs on until it returns, its result dropped).
    pub async fn kill(mut self) {
        self.control.kill.cancel();
        if let Some(done) = self.done.take() {
            let _ = done.await;
        }
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        if self.done.is_some() {
            self.control.kill.cancel();
        }
    }
}
