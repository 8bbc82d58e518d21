//! Fixtures for scenario tests over real NATS: an in-process control plane (election, assigner,
//! scaler) on a private nats-server (on the test backend `ELK_TEST_BACKEND` picks) or a private
//! JetStream cluster, workers with a recording processor, helpers to create jobs and wait for
//! them, a worker fleet that follows the scaler (`fleet`); components as processes of their own
//! ([`nodes`]). The scenarios live in `tests/`.

pub mod nodes;

pub mod secure;

use anyhow::Context;
use elk_auth::Role;
use elk_nats::{AdminClient, NatsConfig, ProvisionConfig, Resources};
use elk_protocol::admin::{
    ASSIGNER_SERVICE, AdminCommand, AdminReply, AdminRequest, AdminResult, AdminStats,
};
use elk_protocol::decode;
use elk_protocol::messages::{JobRecord, JobSpec, JobState, MemberRecord, MemberRef, RoleLease};
use elk_protocol::names::Names;
use elk_runtime::ServiceCommon;
use elk_testkit::{NatsCluster, NatsServer, wait_until};
use elk_types::{IdRange, JobName, MemberId, Namespace};
use elk_worker::{PartitionWork, ProcessError, ProcessOutcome, Processor, Worker, WorkerHandle};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Member TTL used by the scenarios: short, so expiry-driven paths finish quickly.
pub const TEST_MEMBER_TTL: Duration = Duration::from_secs(2);
/// How long an admin request of a scenario waits for an assigner leader.
pub const ADMIN_PATIENCE: Duration = Duration::from_secs(60);
/// Where test endpoints listen: a free loopback port.
const LOOPBACK_ANY_PORT: &str = "127.0.0.1:0";

pub mod browser;
pub mod fleet;
pub mod hostile;
pub mod scrape;

/// One in-process service replica that can be stopped gracefully or aborted.
pub struct ServiceHandle {
    pub name: String,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl ServiceHandle {
    fn spawn<F>(name: &str, run: impl FnOnce(CancellationToken) -> F) -> Self
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(stop.clone()));
        Self {
            name: name.to_owned(),
            stop,
            task,
        }
    }

    /// Graceful stop: the replica hands its leases back and leaves.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }

    /// Whether the replica is still running (it has not returned, failed or panicked).
    pub fn is_running(&self) -> bool {
        !self.task.is_finished()
    }

    /// Abrupt stop: the task is dropped mid-flight; its keys expire by TTL.
    pub async fn abort(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// The NATS a [`Stack`] runs on.
pub enum StackServer {
    /// One server, on the test backend (a process or a container).
    Single(NatsServer),
    /// A JetStream cluster of server processes.
    Cluster(NatsCluster),
}

impl StackServer {
    /// What clients are given: the server's URL, or every node's URL comma-separated.
    pub fn url(&self) -> &str {
        match self {
            StackServer::Single(server) => server.url(),
            StackServer::Cluster(cluster) => cluster.urls(),
        }
    }

    /// Kills the single server and starts it again on the same port and store.
    ///
    /// # Panics
    /// On a cluster stack, whose nodes restart one at a time ([`StackServer::cluster_mut`]).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        match self {
            StackServer::Single(server) => Ok(server.restart()?),
            StackServer::Cluster(_) => panic!("a cluster stack restarts one node at a time"),
        }
    }

    /// The store of a single server process (see [`NatsServer::store_dir`]).
    pub fn store_dir(&self) -> Option<std::path::PathBuf> {
        match self {
            StackServer::Single(server) => server.store_dir(),
            StackServer::Cluster(_) => None,
        }
    }

    /// `GET <monitoring>/<path>` of the single server process (e.g. `varz`: its message
    /// counters); `None` on a cluster, in a container, or on failure.
    pub fn monitor(&self, path: &str) -> Option<String> {
        match self {
            StackServer::Single(server) => server.monitor(path),
            StackServer::Cluster(_) => None,
        }
    }

    /// The log file of the single server process (a secured stack's always is one).
    ///
    /// # Panics
    /// On a cluster stack or a server in a container.
    pub fn log_file(&self) -> std::path::PathBuf {
        match self {
            StackServer::Single(server) => server.log_file(),
            StackServer::Cluster(_) => None,
        }
        .expect("the log of a single server process")
    }

    /// The cluster of a cluster stack.
    ///
    /// # Panics
    /// On a single-server stack.
    pub fn cluster_mut(&mut self) -> &mut NatsCluster {
        match self {
            StackServer::Cluster(cluster) => cluster,
            StackServer::Single(_) => panic!("this stack runs on a single server"),
        }
    }
}

/// A private nats-server (or cluster) plus the namespace's resources.
pub struct Stack {
    pub server: StackServer,
    pub namespace: Namespace,
    pub resources: Resources,
    /// Member TTL (and election lease TTL) of every service replica and worker this stack starts:
    /// [`TEST_MEMBER_TTL`] unless changed with [`Stack::with_member_ttl`].
    pub member_ttl: Duration,
    /// With [`Stack::secured`]: TLS and per-role credentials for every component.
    pub secure: Option<Arc<secure::SecureNats>>,
    /// With [`Stack::secured`]: the connection admin requests go through (an operator identity).
    operator: Option<async_nats::Client>,
    /// Replicas and workers started from now on serve metrics and probes on a free port
    /// ([`Stack::with_endpoints`]), and assigners the HTTP API.
    pub endpoints: bool,
    /// The `replicas` setting of every service replica this stack starts (`None`: unset).
    pub replicas: Option<usize>,
}

impl Stack {
    /// A stack on one server, started on the backend `ELK_TEST_BACKEND` picks.
    pub async fn new() -> anyhow::Result<Self> {
        Self::on(StackServer::Single(NatsServer::builder().start()?), None).await
    }

    /// A stack on `server` (e.g. one with `sync_always`).
    pub async fn on_server(server: NatsServer) -> anyhow::Result<Self> {
        Self::on(StackServer::Single(server), None).await
    }

    /// A stack on `cluster` whose buckets and stream have one replica per server: provisioned
    /// so, and the services are configured so (`replicas`).
    pub async fn on_cluster(cluster: NatsCluster) -> anyhow::Result<Self> {
        let replicas = cluster.size();
        Self::on(StackServer::Cluster(cluster), Some(replicas)).await
    }

    async fn on(server: StackServer, replicas: Option<usize>) -> anyhow::Result<Self> {
        elk_testkit::capture_service_logs();
        let namespace = Namespace::new("it")?;
        let client = elk_nats::connect(&NatsConfig::new(server.url(), "integration-test")).await?;
        let provisioning = ProvisionConfig {
            replicas,
            assignments_history: elk_testkit::auditor::ASSIGNMENTS_HISTORY,
            ..ProvisionConfig::default()
        };
        let resources =
            elk_nats::provision(client, Names::new(namespace.clone()), &provisioning).await?;
        Ok(Self {
            server,
            namespace,
            resources,
            member_ttl: TEST_MEMBER_TTL,
            secure: None,
            operator: None,
            endpoints: false,
            replicas,
        })
    }

    /// A stack on a server that requires TLS (with client certificates) and decentralized JWT
    /// auth; the namespace is provisioned by an admin identity, and every replica and worker
    /// this stack starts connects with credentials of its own role named after its member id.
    /// `resources` (what the test itself reads) use the admin identity; admin requests go
    /// through an operator identity.
    pub async fn secured() -> anyhow::Result<Self> {
        elk_testkit::capture_service_logs();
        let namespace = Namespace::new("it")?;
        let secure = secure::SecureNats::new(&namespace)?;
        let server = StackServer::Single(secure.start_server()?);
        let names = Names::new(namespace.clone());
        let admin = secure.config(server.url(), Role::Admin, "provisioner")?;
        let admin = elk_nats::connect(&admin).await?;
        let provisioning = ProvisionConfig {
            assignments_history: elk_testkit::auditor::ASSIGNMENTS_HISTORY,
            ..ProvisionConfig::default()
        };
        let resources = elk_nats::provision(admin, names, &provisioning).await?;
        let operator = secure.config(server.url(), Role::Operator, "test-operator")?;
        let operator = elk_nats::connect(&operator).await?;
        Ok(Self {
            server,
            namespace,
            resources,
            member_ttl: TEST_MEMBER_TTL,
            secure: Some(Arc::new(secure)),
            operator: Some(operator),
            endpoints: false,
            replicas: None,
        })
    }

    /// The connection of `role` `name` to `url`: plain, or with its own credentials and TLS on a
    /// [`Stack::secured`] stack.
    pub fn nats_config(&self, url: &str, role: Role, name: &str) -> NatsConfig {
        match &self.secure {
            Some(secure) => secure
                .config(url, role, name)
                .expect("issuing test credentials"),
            None => NatsConfig::new(url, name),
        }
    }

    /// Every replica and worker started afterwards serves `/metrics`, `/healthz` and `/readyz`
    /// on a free loopback port, and every assigner its HTTP API (the addresses are in their
    /// metrics handles: `endpoint`, `http_api`; a worker's in `WorkerHandle::metrics_address`).
    pub fn with_endpoints(mut self) -> Self {
        self.endpoints = true;
        self
    }

    /// Uses `ttl` instead of [`TEST_MEMBER_TTL`] for the replicas and workers started afterwards.
    pub fn with_member_ttl(mut self, ttl: Duration) -> Self {
        self.member_ttl = ttl;
        self
    }

    pub fn url(&self) -> String {
        self.server.url().to_owned()
    }

    /// The common section of a replica `id` of this stack reaching NATS at `url`.
    fn service_common(&self, url: &str, role: Role, id: &str) -> ServiceCommon {
        let common = ServiceCommon::new(
            self.nats_config(url, role, id),
            self.namespace.clone(),
            MemberId::new(id).expect("valid id"),
        )
        .with_member_ttl(self.member_ttl);
        let common = match self.replicas {
            Some(replicas) => common.with_replicas(replicas),
            None => common,
        };
        if self.endpoints {
            common.with_metrics_listen(LOOPBACK_ANY_PORT)
        } else {
            common
        }
    }

    pub fn election(&self, id: &str) -> ServiceHandle {
        self.election_with_metrics(id, Arc::default())
    }

    /// An election replica whose metrics the test reads.
    pub fn election_with_metrics(
        &self,
        id: &str,
        metrics: Arc<elk_election::ElectionMetrics>,
    ) -> ServiceHandle {
        let mut config =
            elk_election::ElectionConfig::new(self.service_common(&self.url(), Role::Election, id));
        config.election.election_ttl = self.member_ttl;
        let name = id.to_owned();
        ServiceHandle::spawn(id, move |stop| async move {
            let stopped = stop.cancelled_owned();
            if let Err(error) = elk_election::run_with_metrics(config, metrics, stopped).await {
                tracing::warn!(%name, %error, "election replica stopped");
            }
        })
    }

    pub fn assigner(&self, id: &str) -> ServiceHandle {
        self.assigner_with_metrics(id, Arc::new(elk_assigner::AssignerMetrics::default()))
    }

    /// An assigner replica whose counters (revocations, gaps, rejected progress...) the test reads.
    pub fn assigner_with_metrics(
        &self,
        id: &str,
        metrics: Arc<elk_assigner::AssignerMetrics>,
    ) -> ServiceHandle {
        self.assigner_at(&self.url(), id, metrics)
    }

    /// An assigner replica that reaches NATS at `url` (e.g. through a proxy the test can cut).
    pub fn assigner_at(
        &self,
        url: &str,
        id: &str,
        metrics: Arc<elk_assigner::AssignerMetrics>,
    ) -> ServiceHandle {
        self.assigner_configured(url, id, metrics, |_| {})
    }

    /// An assigner replica whose `[assigner]` settings `configure` changes (e.g. `tails`, bounds,
    /// retention).
    pub fn assigner_configured(
        &self,
        url: &str,
        id: &str,
        metrics: Arc<elk_assigner::AssignerMetrics>,
        configure: impl FnOnce(&mut elk_assigner::AssignerSettings),
    ) -> ServiceHandle {
        let mut config =
            elk_assigner::AssignerConfig::new(self.service_common(url, Role::Assigner, id));
        configure(&mut config.assigner);
        if self.endpoints {
            config.assigner.http_listen = Some(LOOPBACK_ANY_PORT.to_owned());
            // The scenarios with endpoints read the API without tokens (its guard has its own
            // tests: http_security.rs).
            config.assigner.http.allow_unauthenticated = true;
        }
        let name = id.to_owned();
        ServiceHandle::spawn(id, move |stop| async move {
            if let Err(error) =
                elk_assigner::run_with_metrics(config, metrics, stop.cancelled_owned()).await
            {
                tracing::warn!(%name, %error, "assigner replica stopped");
            }
        })
    }

    pub fn scaler(&self, id: &str) -> ServiceHandle {
        self.scaler_with_metrics(id, Arc::default())
    }

    /// A scaler replica whose metrics the test reads.
    pub fn scaler_with_metrics(
        &self,
        id: &str,
        metrics: Arc<elk_scaler::ScalerMetrics>,
    ) -> ServiceHandle {
        self.scaler_with(id, elk_scaler::ScalerSettings::default(), metrics)
    }

    /// A scaler replica with its own `[scaler]` settings (policy pace, bounds) and metrics.
    pub fn scaler_with(
        &self,
        id: &str,
        settings: elk_scaler::ScalerSettings,
        metrics: Arc<elk_scaler::ScalerMetrics>,
    ) -> ServiceHandle {
        let mut config =
            elk_scaler::ScalerConfig::new(self.service_common(&self.url(), Role::Scaler, id));
        config.scaler = settings;
        let name = id.to_owned();
        ServiceHandle::spawn(id, move |stop| async move {
            let stopped = stop.cancelled_owned();
            if let Err(error) = elk_scaler::run_with_metrics(config, metrics, stopped).await {
                tracing::warn!(%name, %error, "scaler replica stopped");
            }
        })
    }

    /// Starts a worker with `capacity` that records every ID it processes in `ledger`.
    pub async fn worker(
        &self,
        id: &str,
        capacity: u32,
        processor: RecordingProcessor,
    ) -> anyhow::Result<WorkerHandle> {
        self.worker_with(id, capacity, &[], processor).await
    }

    /// Starts a worker with any processor that only processes `jobs` (empty: every job).
    pub async fn worker_with<P: Processor>(
        &self,
        id: &str,
        capacity: u32,
        jobs: &[&str],
        processor: P,
    ) -> anyhow::Result<WorkerHandle> {
        self.worker_at(self.server.url(), id, capacity, jobs, processor)
            .await
    }

    /// Starts a worker that reaches NATS at `url` (e.g. through a [`elk_testkit::TcpProxy`]).
    pub async fn worker_at<P: Processor>(
        &self,
        url: &str,
        id: &str,
        capacity: u32,
        jobs: &[&str],
        processor: P,
    ) -> anyhow::Result<WorkerHandle> {
        let jobs = jobs
            .iter()
            .map(|job| JobName::new(*job))
            .collect::<Result<Vec<_>, _>>()?;
        let mut builder = Worker::builder(self.namespace.clone(), MemberId::new(id)?)
            .nats(self.nats_config(url, Role::Worker, id))
            .capacity(capacity)
            .jobs(jobs)
            .member_ttl(self.member_ttl)
            .checkpoint_interval(Duration::from_millis(200));
        if self.endpoints {
            builder = builder.metrics_listen(LOOPBACK_ANY_PORT);
        }
        Ok(builder.start(processor).await?)
    }

    /// The typed admin client of this stack's namespace; it waits up to 60 s for an assigner
    /// leader (the scenarios start one right before their first request).
    pub fn admin_client(&self) -> AdminClient {
        let client = self.operator.as_ref().unwrap_or(&self.resources.client);
        AdminClient::new(client.clone(), self.resources.names.clone()).with_patience(ADMIN_PATIENCE)
    }

    /// Sends an admin command to the active assigner and returns its result; a refusal is an
    /// `Err` holding the [`elk_nats::AdminClientError`] with its code.
    pub async fn admin(&self, command: AdminCommand) -> anyhow::Result<AdminResult> {
        Ok(self.admin_client().request(command).await?)
    }

    /// Creates a fixed-range job through the active assigner.
    pub async fn create_job(
        &self,
        name: &str,
        range: IdRange,
        partition_size: u64,
    ) -> anyhow::Result<JobRecord> {
        self.create_job_with(name, JobSpec::fixed(range, partition_size))
            .await
    }

    /// Creates a job with a full spec (open-ended, retry settings...).
    pub async fn create_job_with(&self, name: &str, spec: JobSpec) -> anyhow::Result<JobRecord> {
        let name = JobName::new(name)?;
        Ok(self.admin_client().create_job(name, spec).await?)
    }

    pub async fn job(&self, name: &str) -> anyhow::Result<Option<JobRecord>> {
        let entry = elk_nats::read_entry(&self.resources.jobs, name).await?;
        Ok(match entry.filter(|e| !e.deleted) {
            Some(entry) => Some(decode(&entry.value)?),
            None => None,
        })
    }

    /// The `role.assigner` lease, if it exists and decodes.
    pub async fn assigner_lease(&self) -> Option<RoleLease> {
        let entry = self
            .resources
            .leases
            .entry(elk_protocol::names::ControlRole::Assigner.lease_key())
            .await
            .ok()??;
        decode(&entry.value).ok()
    }

    /// The epoch of the `role.assigner` lease, if it exists and decodes.
    pub async fn assigner_epoch(&self) -> Option<elk_types::Epoch> {
        self.assigner_lease().await.map(|lease| lease.epoch)
    }

    /// Member `id` as it stands in the members bucket (its current incarnation), if its key is
    /// live and decodes.
    pub async fn member_ref(&self, id: &str) -> Option<MemberRef> {
        let entry = elk_nats::read_entry(&self.resources.members, id)
            .await
            .ok()??;
        if entry.deleted {
            return None;
        }
        let record = decode::<MemberRecord>(&entry.value).ok()?;
        Some(MemberRef {
            id: MemberId::new(id).ok()?,
            incarnation: record.incarnation,
        })
    }

    /// One `stats` request to whichever assigner replica leads, without retries: `None` if
    /// nobody answered within `timeout` (unlike [`Stack::admin`], which waits for a leader).
    pub async fn assigner_stats_once(&self, timeout: Duration) -> Option<AdminStats> {
        let command = AdminCommand::Stats;
        let subject = self
            .resources
            .names
            .admin_subject(ASSIGNER_SERVICE, command.verb());
        let request = bytes::Bytes::from(elk_protocol::encode(&AdminRequest::new(command)));
        let reply = tokio::time::timeout(timeout, self.resources.client.request(subject, request))
            .await
            .ok()?
            .ok()?;
        match decode::<AdminReply>(&reply.payload).ok()?.result? {
            AdminResult::Stats { stats } => Some(stats),
            _ => None,
        }
    }

    /// Waits until the membership view lists every worker of `ids`: a short job created before
    /// a late joiner is in the view can be done before that worker is ever granted anything.
    pub async fn wait_workers_in_view(
        &self,
        ids: &[&str],
        deadline: Duration,
    ) -> anyhow::Result<()> {
        let ids = ids
            .iter()
            .map(|id| MemberId::new(*id))
            .collect::<Result<Vec<_>, _>>()?;
        wait_until("every worker in the membership view", deadline, || async {
            let Ok(Some(entry)) =
                elk_nats::read_entry(&self.resources.leases, elk_protocol::names::VIEW_KEY).await
            else {
                return false;
            };
            let Ok(view) = decode::<elk_protocol::messages::MembershipView>(&entry.value) else {
                return false;
            };
            ids.iter()
                .all(|id| view.members.iter().any(|member| &member.id == id))
        })
        .await?;
        Ok(())
    }

    /// Waits until the job is completed and returns its final record.
    pub async fn wait_job_completed(
        &self,
        name: &str,
        deadline: Duration,
    ) -> anyhow::Result<JobRecord> {
        wait_until(&format!("job {name} completed"), deadline, || async {
            matches!(self.job(name).await, Ok(Some(job)) if job.state == JobState::Completed)
        })
        .await?;
        self.job(name).await?.context("job vanished")
    }
}

/// Counts how often each ID of a range was processed, across all workers.
pub struct Ledger {
    first: u64,
    counts: Vec<AtomicU32>,
    processed: AtomicU64,
}

impl Ledger {
    pub fn new(range: IdRange) -> Arc<Self> {
        Arc::new(Self {
            first: range.first(),
            counts: (0..range.len()).map(|_| AtomicU32::new(0)).collect(),
            processed: AtomicU64::new(0),
        })
    }

    pub fn record(&self, id: u64) {
        self.counts[(id - self.first) as usize].fetch_add(1, Ordering::Relaxed);
        self.processed.fetch_add(1, Ordering::Relaxed);
    }

    /// How many IDs the ledger's range has.
    pub fn len(&self) -> u64 {
        self.counts.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// First ID of the ledger's range.
    pub fn first(&self) -> u64 {
        self.first
    }

    /// Processing count per ID (`counts[i]` is ID `first + i`).
    pub fn counts(&self) -> Vec<u32> {
        self.counts
            .iter()
            .map(|count| count.load(Ordering::Relaxed))
            .collect()
    }

    pub fn processed(&self) -> u64 {
        self.processed.load(Ordering::Relaxed)
    }

    /// IDs never processed.
    pub fn missing(&self) -> Vec<u64> {
        self.ids_where(|count| count == 0)
    }

    /// IDs processed more than once.
    pub fn duplicates(&self) -> Vec<u64> {
        self.ids_where(|count| count > 1)
    }

    fn ids_where(&self, predicate: impl Fn(u32) -> bool) -> Vec<u64> {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, count)| predicate(count.load(Ordering::Relaxed)))
            .map(|(index, _)| self.first + index as u64)
            .collect()
    }
}

/// A processor doing real work per ID (a checksum fold) that records what it processed and
/// pauses briefly every `pause_every` IDs so scenarios can act while a job is running.
#[derive(Clone)]
pub struct RecordingProcessor {
    pub ledger: Arc<Ledger>,
    pub pause_every: u64,
    pub pause: Duration,
}

impl RecordingProcessor {
    pub fn new(ledger: Arc<Ledger>) -> Self {
        Self {
            ledger,
            pause_every: 0,
            pause: Duration::ZERO,
        }
    }

    pub fn paced(ledger: Arc<Ledger>, pause_every: u64, pause: Duration) -> Self {
        Self {
            ledger,
            pause_every,
            pause,
        }
    }
}

impl Processor for RecordingProcessor {
    async fn process(&self, work: PartitionWork) -> Result<ProcessOutcome, ProcessError> {
        let mut checksum = 0u64;
        for id in work.resume_from()..=work.range().last() {
            if work.is_cancelled() {
                return Ok(ProcessOutcome::Interrupted);
            }
            checksum = checksum.rotate_left(5) ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            self.ledger.record(id);
            work.checkpoint(id);
            if self.pause_every > 0 && id % self.pause_every == 0 {
                tokio::time::sleep(self.pause).await;
            } else if id % 512 == 0 {
                tokio::task::yield_now().await;
            }
        }
        std::hint::black_box(checksum);
        Ok(ProcessOutcome::Completed)
    }
}

/// Checks invariants 1–5 of ARCHITECTURE §6 for `job` after it completed: every ID processed,
/// no overlap, no acknowledged checkpoint lost, no grant taking effect under an older epoch once
/// a newer one did, repetition only after crashes and only beyond the last checkpoint.
pub async fn assert_invariants(
    auditor: &elk_testkit::OwnershipAuditor,
    job: &str,
    ledger: &Ledger,
) {
    let report = auditor.check().await;
    // A report of an auditor that had not caught up would blame missed holds on the system.
    assert!(
        report.settled,
        "the ownership auditor did not catch up: {report}"
    );
    let counts = ledger.counts();
    elk_testkit::assert_full_coverage(ledger.first(), &counts);
    report.assert_no_overlap();
    report.assert_durable_progress();
    report.assert_fencing();
    let job = JobName::new(job).expect("valid job name");
    report.assert_bounded_repetition(&job, ledger.first(), &counts);
}
