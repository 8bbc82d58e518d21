//! elk-worker: the SDK a user process links to become an ELK Coordinator worker.
//!
//! Role: run the ID ranges (partitions) the assigner grants to this worker, through a
//! user-supplied [`Processor`], and report what happened on the progress stream.
//!
//! Contract with the coordinator (ARCHITECTURE §3–4):
//! 1. **Join**: create `elk_<ns>_members/<id>` with a per-key TTL (default 3 s), renewed by CAS
//!    every TTL/3; an id held by a live member is refused ([`WorkerError::IdTaken`]).
//! 2. **Assignments**: watch the worker's own key `elk_<ns>_assignments/<id>`. Each record is the
//!    complete set of grants; records of another incarnation, of an older epoch (a deposed
//!    assigner) or not newer in `(epoch, seq)` are ignored.
//! 3. **Run**: new grants start FIFO within a window of `capacity` processors. A grant missing
//!    from the latest record is revoked: cancelled, awaited, then `Released` with its checkpoint
//!    and the old token.
//! 4. **Report** on `elk.<ns>.progress.<id>` (JetStream, acked): `Checkpoint` every
//!    `checkpoint_interval` when advanced, then exactly one of `Completed`, `Failed`, `Released`.
//! 5. **Self-fence**: when the member key cannot be renewed in time, every processor is cancelled
//!    and the work dropped without any report (it has been given away), then the worker re-joins
//!    with a new incarnation.
//! 6. **Leave**: [`WorkerHandle::shutdown`] releases everything (acked) *before* deleting the
//!    member key, so the coordinator can hand the partitions over at once.
//!
//! See [`Processor`] for an example.
//!
//! **Planners.** An open-ended job's ID space grows; the assigner asks the job's [`Planner`]
//! (served by any user process with [`serve_planner`] on `elk.<ns>.plan.<job>`) for the highest ID
//! that exists now. See [`Planner`] for an example.

mod config;
mod error;
mod planner;
mod processor;
mod progress;
mod stats;
mod supervisor;
mod worker;

pub use config::{DEFAULT_CHECKPOINT_INTERVAL, DEFAULT_MEMBER_TTL, DEFAULT_STOP_GRACE};
pub use error::WorkerError;
pub use planner::{
    PLANNER_QUEUE_GROUP, PlanError, Planner, PlannerHandle, PlannerStats, serve_planner,
    serve_planner_with_client,
};
pub use processor::{PartitionWork, ProcessError, ProcessOutcome, Processor};
pub use stats::WorkerStats;
pub use worker::{Worker, WorkerBuilder, WorkerHandle};
