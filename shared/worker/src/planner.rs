//! The planner SDK: a user process tells the assigner how far an open-ended job's data goes.
//!
//! For an open-ended job the assigner does not know the last ID. Whenever it wants more
//! partitions it sends a [`PlanRequest`] on `elk.<ns>.plan.<job>` (core NATS request/reply) and
//! the job's planner answers with a [`PlanReply`]: the highest ID that exists now, or `None` when
//! there is nothing yet. The assigner then cuts partitions up to that ID; while the answer does
//! not move past the job's cursor the job waits, and asks again later.
//!
//! [`serve_planner`] subscribes in the queue group [`PLANNER_QUEUE_GROUP`], so several planner
//! processes may serve the same job (each request is answered by one of them).

use crate::WorkerError;
use crate::trace_context::Continuation;
use elk_nats::NatsConfig;
use elk_protocol::admin::{PlanReply, PlanRequest};
use elk_protocol::names::Names;
use elk_protocol::{SCHEMA_VERSION, decode, encode};
use elk_types::{JobName, Namespace};
use futures::{FutureExt, StreamExt};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

/// Queue group of planner subscriptions: one of the processes serving a job answers a request.
pub const PLANNER_QUEUE_GROUP: &str = "planner";

/// Requests a planner answers at once; further requests wait in the subscription.
const MAX_IN_FLIGHT: usize = 16;
/// How long the server gets to confirm a subscription.
const ROUND_TRIP_TIMEOUT: Duration = Duration::from_secs(10);

/// Tells the assigner how far an open-ended job's ID space goes right now (the predecessor's
/// `GetNextMaxID`).
///
/// Return the highest ID that exists now (`Some(max)`), or `None` when there is nothing yet. The
/// answer may stay the same for a while (the job then waits) and should never shrink: IDs the
/// assigner already cut into partitions are processed regardless. `cursor` is the first ID not yet
/// covered by a partition and `wanted` how many IDs the assigner would like to plan now; both are
/// hints (e.g. to bound a query), the answer does not have to respect them.
///
/// An `Err` (or a panic) is logged and answered like `None`: the job waits and asks again.
///
/// Answer promptly: the assigner waits 2 s for a reply, and while a job has no new data it asks
/// again about once a second. A server answers up to 16 requests concurrently, hence `&self`.
///
/// # Example
///
/// ```no_run
/// use elk_worker::{JobName, NatsConfig, Namespace, PlanError, Planner, serve_planner};
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU64, Ordering};
///
/// /// Plans up to the newest row id of a table, kept up to date by the application.
/// struct NewestRow {
///     newest: Arc<AtomicU64>,
/// }
///
/// impl Planner for NewestRow {
///     async fn next_max_id(
///         &self,
///         _job: &JobName,
///         _cursor: u64,
///         _wanted: u64,
///     ) -> Result<Option<u64>, PlanError> {
///         // e.g. `SELECT max(id) FROM events`; 0 means the table is still empty.
///         match self.newest.load(Ordering::Relaxed) {
///             0 => Ok(None),
///             newest => Ok(Some(newest)),
///         }
///     }
/// }
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let newest = Arc::new(AtomicU64::new(0));
/// let planner = serve_planner(
///     NatsConfig::new("nats://127.0.0.1:4222", "events-planner"),
///     Namespace::new("prod")?,
///     JobName::new("events")?,
///     NewestRow { newest: newest.clone() },
/// )
/// .await?;
/// newest.store(250_000, Ordering::Relaxed); // new rows arrived
/// // ... later:
/// planner.shutdown().await?;
/// # Ok(())
/// # }
/// ```
pub trait Planner: Send + Sync + 'static {
    /// The highest ID of `job` that exists now; `None` if nothing exists yet.
    fn next_max_id(
        &self,
        job: &JobName,
        cursor: u64,
        wanted: u64,
    ) -> impl Future<Output = Result<Option<u64>, PlanError>> + Send;
}

impl<P: Planner> Planner for Arc<P> {
    fn next_max_id(
        &self,
        job: &JobName,
        cursor: u64,
        wanted: u64,
    ) -> impl Future<Output = Result<Option<u64>, PlanError>> + Send {
        P::next_max_id(self, job, cursor, wanted)
    }
}

/// A planner's failure to answer; logged, and answered as "nothing new" (`max_id: None`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PlanError {
    message: String,
}

impl PlanError {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

/// A snapshot of a planner server's counters (monotonic since start).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlannerStats {
    /// Requests received (well-formed or not).
    pub requests: u64,
    /// Replies carrying `Some(max_id)`.
    pub answered_some: u64,
    /// Replies carrying `None` because the planner had nothing yet.
    pub answered_none: u64,
    /// Undecodable requests, or requests for another job (answered with `None`).
    pub malformed: u64,
    /// Planner errors and panics (answered with `None`).
    pub errors: u64,
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    answered_some: AtomicU64,
    answered_none: AtomicU64,
    malformed: AtomicU64,
    errors: AtomicU64,
    malformed_logged: AtomicBool,
}

impl Counters {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> PlannerStats {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        PlannerStats {
            requests: read(&self.requests),
            answered_some: read(&self.answered_some),
            answered_none: read(&self.answered_none),
            malformed: read(&self.malformed),
            errors: read(&self.errors),
        }
    }
}

/// Connects to NATS and serves `planner` for `job` on `elk.<namespace>.plan.<job>` (queue group
/// [`PLANNER_QUEUE_GROUP`]) until [`PlannerHandle::shutdown`]. The subscription is registered on
/// the server when this returns.
pub async fn serve_planner<P: Planner>(
    nats: NatsConfig,
    namespace: Namespace,
    job: JobName,
    planner: P,
) -> Result<PlannerHandle, WorkerError> {
    let client = elk_nats::connect(&nats).await?;
    serve_planner_with_client(client, namespace, job, planner).await
}

/// Like [`serve_planner`] on an existing connection (which stays open after shutdown).
pub async fn serve_planner_with_client<P: Planner>(
    client: async_nats::Client,
    namespace: Namespace,
    job: JobName,
    planner: P,
) -> Result<PlannerHandle, WorkerError> {
    let subject = Names::new(namespace).plan_subject(&job);
    let subscribe_error = |source: elk_nats::BoxError| WorkerError::Subscribe {
        subject: subject.clone(),
        source,
    };
    let subscriber = client
        .queue_subscribe(subject.clone(), PLANNER_QUEUE_GROUP.to_owned())
        .await
        .map_err(|error| subscribe_error(error.into()))?;
    // Make sure the server knows the subscription before anyone relies on it.
    round_trip(&client).await.map_err(subscribe_error)?;
    let counters = Arc::new(Counters::default());
    let shutdown = CancellationToken::new();
    let server = Server {
        client,
        job: job.clone(),
        planner: Arc::new(planner),
        counters: counters.clone(),
    };
    tracing::info!(%subject, "planner serving");
    let task = tokio::spawn(server.run(subscriber, shutdown.clone()));
    Ok(PlannerHandle {
        job,
        counters,
        shutdown,
        task: Some(task),
    })
}

/// Controls a running planner server. Dropping it without [`PlannerHandle::shutdown`] stops
/// serving at once (in-flight requests are not answered).
pub struct PlannerHandle {
    job: JobName,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for PlannerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlannerHandle")
            .field("job", &self.job)
            .field("stats", &self.stats())
            .finish()
    }
}

impl PlannerHandle {
    /// The job this planner serves.
    pub fn job(&self) -> &JobName {
        &self.job
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> PlannerStats {
        self.counters.snapshot()
    }

    /// Stops taking requests (unsubscribes), answers the ones in flight, flushes the replies and
    /// returns the final counters.
    pub async fn shutdown(mut self) -> Result<PlannerStats, WorkerError> {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.map_err(|error| WorkerError::TaskFailed {
                reason: error.to_string(),
            })?;
        }
        Ok(self.stats())
    }
}

impl Drop for PlannerHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A message through the server and back on `client`'s connection. The server handles a
/// connection's protocol in order, so once it returns every earlier `SUB`/`UNSUB` is in effect
/// (`Client::flush` only empties the local write buffer).
async fn round_trip(client: &async_nats::Client) -> Result<(), elk_nats::BoxError> {
    let inbox = client.new_inbox();
    let mut echo = client.subscribe(inbox.clone()).await?;
    client.publish(inbox, bytes::Bytes::new()).await?;
    client.flush().await?;
    let outcome = match tokio::time::timeout(ROUND_TRIP_TIMEOUT, echo.next()).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err("no round trip to the server: connection closed".into()),
        Err(_) => Err(format!(
            "no round trip to the server: no echo within {ROUND_TRIP_TIMEOUT:?}"
        )
        .into()),
    };
    let _ = echo.unsubscribe().await;
    outcome
}

struct Server<P> {
    client: async_nats::Client,
    job: JobName,
    planner: Arc<P>,
    counters: Arc<Counters>,
}

impl<P: Planner> Server<P> {
    async fn run(self, mut subscriber: async_nats::Subscriber, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let mut in_flight = JoinSet::new();
        loop {
            if in_flight.len() >= MAX_IN_FLIGHT {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = in_flight.join_next() => continue,
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                message = subscriber.next() => match message {
                    Some(message) => {
                        let this = this.clone();
                        in_flight.spawn(async move { this.handle(message).await });
                    }
                    None => break,
                },
            }
        }
        if let Err(error) = subscriber.unsubscribe().await {
            tracing::debug!(%error, "planner unsubscribe failed");
        }
        // Once the server confirms, no request is routed to this subscription any more.
        if let Err(error) = round_trip(&this.client).await {
            tracing::debug!(%error, "no round trip after unsubscribing");
        }
        while in_flight.join_next().await.is_some() {}
        if let Err(error) = this.client.flush().await {
            tracing::warn!(%error, "could not flush the last planner replies");
        }
        tracing::info!(job = %this.job, "planner stopped");
    }

    async fn handle(&self, message: async_nats::Message) {
        Counters::bump(&self.counters.requests);
        let Some(reply_to) = message.reply else {
            tracing::debug!(subject = %message.subject, "plan message without a reply subject");
            return;
        };
        let remote = elk_nats::trace::from_headers(message.headers.as_ref());
        let trace = Continuation::of(remote, || {
            tracing::info_span!(
                parent: None,
                "elk.plan.answer",
                otel.kind = "server",
                elk.job = %self.job,
            )
        });
        let max_id = match decode::<PlanRequest>(&message.payload) {
            Ok(request) if request.job == self.job => trace.run(self.ask(&request)).await,
            Ok(request) => {
                self.malformed(format!(
                    "request for job '{}' on the subject of job '{}'",
                    request.job, self.job
                ));
                None
            }
            Err(error) => {
                self.malformed(error.to_string());
                None
            }
        };
        let reply = PlanReply {
            schema: SCHEMA_VERSION,
            max_id,
        };
        if let Err(error) = self.client.publish(reply_to, encode(&reply).into()).await {
            tracing::warn!(job = %self.job, %error, "could not send a plan reply");
        }
    }

    async fn ask(&self, request: &PlanRequest) -> Option<u64> {
        let answer = AssertUnwindSafe(self.planner.next_max_id(
            &self.job,
            request.cursor,
            request.wanted,
        ))
        .catch_unwind()
        .await;
        match answer {
            Ok(Ok(Some(max))) => {
                Counters::bump(&self.counters.answered_some);
                tracing::debug!(job = %self.job, cursor = request.cursor, max, "planned");
                Some(max)
            }
            Ok(Ok(None)) => {
                Counters::bump(&self.counters.answered_none);
                None
            }
            Ok(Err(error)) => {
                Counters::bump(&self.counters.errors);
                tracing::warn!(job = %self.job, %error, "planner failed; answering 'nothing new'");
                None
            }
            Err(_) => {
                Counters::bump(&self.counters.errors);
                tracing::error!(job = %self.job, "planner panicked; answering 'nothing new'");
                None
            }
        }
    }

    /// Counts a malformed request; logs the first one at warn, later ones at debug.
    fn malformed(&self, reason: String) {
        Counters::bump(&self.counters.malformed);
        if !self.counters.malformed_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(job = %self.job, %reason, "malformed plan request (further ones are logged at debug)");
        } else {
            tracing::debug!(job = %self.job, %reason, "malformed plan request");
        }
    }
}
