//! elk-worker: the SDK a user process links to become an ELK Coordinator worker. It is the only
//! crate a worker needs: the connection config, ids, names and ranges are re-exported here.
//!
//! Role: run the ID ranges (partitions) the assigner grants to this worker, through a
//! user-supplied [`Processor`] (async) or [`BlockingProcessor`] (synchronous), and report what
//! happened on the progress stream.
//!
//! ```no_run
//! use elk_worker::{MemberId, Namespace, PartitionWork, ProcessError, ProcessOutcome, Processor, Worker};
//!
//! struct Print;
//!
//! impl Processor for Print {
//!     async fn process(&self, work: PartitionWork) -> Result<ProcessOutcome, ProcessError> {
//!         for id in work.resume_from()..=work.range().last() {
//!             if work.is_cancelled() {
//!                 return Ok(ProcessOutcome::Interrupted);
//!             }
//!             println!("{} {id}", work.job());
//!             work.checkpoint(id);
//!         }
//!         Ok(ProcessOutcome::Completed)
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let worker = Worker::builder(Namespace::new("demo")?, MemberId::new("printer-1")?)
//!         .nats_url("nats://127.0.0.1:4222")
//!         .capacity(4)
//!         .start(Print)
//!         .await?;
//!     tokio::signal::ctrl_c().await?;
//!     worker.shutdown().await?; // hands every partition back, then leaves
//!     Ok(())
//! }
//! ```
//!
//! **Metrics and probes**: [`WorkerBuilder::metrics_listen`] serves `/metrics` (Prometheus:
//! running and queued partitions, checkpoint lag, fences, renewal latency, …), `/healthz` and
//! `/readyz` from the worker's coordination thread; [`WorkerBuilder::register_metrics`] adds the
//! application's own metrics next to them (`docs/observability.md`).
//!
//! Contract with the coordinator (ARCHITECTURE §3–4, `docs/protocol.md` §5):
//! 1. **Join**: create `elk_<ns>_members/<id>` with a per-key TTL (default 3 s), renewed by CAS
//!    every TTL/3; an id held by a live member is refused ([`WorkerError::IdTaken`]).
//! 2. **Assignments**: watch the worker's own key `elk_<ns>_assignments/<id>` (re-read directly
//!    when the watch stays silent, so a stalled watch cannot hide a record). Each record is the
//!    complete set of grants; records of another incarnation, of an older epoch (a deposed
//!    assigner) or not newer in `(epoch, seq)` are ignored.
//! 3. **Run**: new grants start FIFO within a window of `capacity` processors. A grant missing
//!    from the latest record is revoked: cancelled, awaited, then `Released` with its checkpoint
//!    and the old token.
//! 4. **Report** on `elk.<ns>.progress.<id>` (JetStream, acked): `Checkpoint` every
//!    `checkpoint_interval` when advanced, then exactly one of `Completed`, `Failed`, `Released`,
//!    retried until acknowledged for as long as the membership lives.
//! 5. **Self-fence**: when the member key cannot be renewed in time, every processor is cancelled
//!    and the work dropped without any report (it has been given away), then the worker re-joins
//!    with a new incarnation. [`PartitionWork::is_cancelled`] turns true at the fence deadline by
//!    itself, whatever the processor's thread was doing.
//! 6. **Leave**: [`WorkerHandle::shutdown`] releases everything (acked) *before* deleting the
//!    member key, so the coordinator can hand the partitions over at once.
//!
//! **Isolation.** The connection, the membership renewal, the assignment feed, the supervisor and
//! the progress publisher run on a runtime of their own, on a dedicated thread
//! ([`CoordinationRuntime`]); processors run on the caller's runtime (async) or its blocking pool
//! ([`BlockingProcessor`]). A processor may block or compute for as long as it likes: it cannot
//! make the worker miss a renewal.
//!
//! **Lifecycle.** [`WorkerHandle::events`] streams [`WorkerEvent`]s: joined, fenced, re-joined,
//! revoked, draining, left.
//!
//! **Planners.** An open-ended job's ID space grows; the assigner asks the job's [`Planner`]
//! (served by any user process with [`serve_planner`] on `elk.<ns>.plan.<job>`) for the highest ID
//! that exists now. See [`Planner`] for an example.

mod assignments;
mod config;
mod coordination;
mod error;
mod events;
mod metrics;
mod planner;
mod process_error;
mod processor;
mod progress;
mod stats;
mod supervisor;
mod trace_context;
mod worker;

pub use config::{
    DEFAULT_ASSIGNMENT_RESYNC, DEFAULT_CHECKPOINT_INTERVAL, DEFAULT_MEMBER_TTL, DEFAULT_NATS_URL,
    DEFAULT_STOP_GRACE,
};
pub use coordination::CoordinationRuntime;
pub use error::WorkerError;
pub use events::{DrainCause, EVENT_BUFFER, WorkerEvent, WorkerEvents};
pub use planner::{
    PLANNER_QUEUE_GROUP, PlanError, Planner, PlannerHandle, PlannerStats, serve_planner,
    serve_planner_with_client,
};
pub use process_error::{BoxError, ProcessError};
pub use processor::{BlockingProcessor, PartitionWork, ProcessOutcome, Processor};
pub use stats::WorkerStats;
pub use worker::{Worker, WorkerBuilder, WorkerHandle};

// What a worker process needs besides the SDK itself, so `elk-worker` is the only dependency.
pub use elk_nats::{NatsConfig, ProvisionConfig};
pub use elk_types::{
    Capacity, IdRange, Incarnation, JobName, MemberId, Namespace, PartitionId, PartitionLeaseToken,
};
/// The metrics library the worker's registry comes from ([`WorkerBuilder::register_metrics`]).
pub use prometheus_client;
