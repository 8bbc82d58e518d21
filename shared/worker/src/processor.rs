//! The user-facing processing contract: a [`Processor`] (async) or a [`BlockingProcessor`]
//! (synchronous, CPU-bound or blocking I/O) receives one [`PartitionWork`] per granted partition and
//! processes the IDs from [`PartitionWork::resume_from`] to the end of [`PartitionWork::range`],
//! recording progress with [`PartitionWork::checkpoint`] and stopping promptly when
//! [`PartitionWork::is_cancelled`] turns true.
//!
//! Contract (what makes hand-over exact):
//! * `checkpoint(id)` means "every ID up to and including `id` is done"; it only records in memory
//!   (the worker flushes it to NATS every `checkpoint_interval`), so calling it per ID is fine.
//! * After noticing cancellation the processor returns [`ProcessOutcome::Interrupted`] having
//!   checkpointed exactly what it finished: the next owner resumes at `checkpoint + 1`, so nothing
//!   is repeated and nothing is skipped.
//! * [`ProcessOutcome::Completed`] means the whole range is done.
//! * An `Err` is reported as a failure of the partition with the last checkpoint
//!   ([`ProcessError`]: transient, or permanent to park it at once).
//!
//! Processors never share a thread with the worker's coordination (connection, membership
//! renewal, assignment watch, progress publishing): that runs on a runtime of its own, so a
//! processor may block or spin as long as it likes without costing the worker its membership. What
//! a processor must do is *look*: `is_cancelled()` also turns true by itself once the membership's
//! fence deadline has passed, even if nothing else could run since.

use crate::ProcessError;
use elk_nats::LeaseDeadline;
use elk_types::{IdRange, JobName, PartitionId, PartitionLeaseToken};
use std::future::Future;
use std::sync::{Arc, Mutex};
use tokio::runtime::Handle;
use tokio::task::{Id as TaskId, JoinSet};
use tokio_util::sync::CancellationToken;

/// Processes the IDs of granted partitions with async code. One instance serves every partition of
/// the worker, up to `capacity` of them concurrently, so it is shared (`&self`).
///
/// Each partition runs as a task on the runtime that called [`crate::WorkerBuilder::start`] (or
/// the one given to [`crate::WorkerBuilder::processor_runtime`]). The worker's coordination runs
/// elsewhere, so a processor cannot starve it. For CPU-bound or blocking code, prefer
/// [`BlockingProcessor`], which runs on the blocking thread pool instead of occupying a runtime
/// worker thread.
///
/// # Example
///
/// ```no_run
/// use elk_worker::{Namespace, MemberId, PartitionWork, ProcessError, ProcessOutcome, Processor, Worker};
///
/// struct Checksum;
///
/// impl Processor for Checksum {
///     async fn process(&self, work: PartitionWork) -> Result<ProcessOutcome, ProcessError> {
///         let mut checksum = 0u64;
///         for id in work.resume_from()..=work.range().last() {
///             if work.is_cancelled() {
///                 return Ok(ProcessOutcome::Interrupted);
///             }
///             checksum = checksum.wrapping_mul(31).wrapping_add(id);
///             work.checkpoint(id);
///         }
///         tracing::debug!(checksum, "partition done");
///         Ok(ProcessOutcome::Completed)
///     }
/// }
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let worker = Worker::builder(Namespace::new("demo")?, MemberId::new("worker-1")?)
///     .nats_url("nats://127.0.0.1:4222")
///     .capacity(4)
///     .start(Checksum)
///     .await?;
/// // ... later, hand every partition back and leave the membership:
/// worker.shutdown().await?;
/// # Ok(())
/// # }
/// ```
pub trait Processor: Send + Sync + 'static {
    /// Processes `work.resume_from()..=work.range().last()`; see the module contract.
    fn process(
        &self,
        work: PartitionWork,
    ) -> impl Future<Output = Result<ProcessOutcome, ProcessError>> + Send;
}

/// Processes the IDs of granted partitions with synchronous code: CPU-bound work, a blocking
/// database driver, a C library. Same contract as [`Processor`]; each partition runs through
/// `spawn_blocking` on the processors' runtime, so it may block its thread for as long as it needs.
///
/// A blocking call cannot be interrupted from outside: check [`PartitionWork::is_cancelled`]
/// between units of work (it also turns true by itself at the membership's fence deadline). When
/// the worker self-fences, a blocking run that has not returned is abandoned — its result and any
/// later checkpoint are refused — and the same partition is not started again in this process
/// until it has returned.
///
/// # Example
///
/// ```no_run
/// use elk_worker::{BlockingProcessor, Namespace, MemberId, PartitionWork, ProcessError, ProcessOutcome, Worker};
///
/// struct Compress;
///
/// impl BlockingProcessor for Compress {
///     fn process(&self, work: PartitionWork) -> Result<ProcessOutcome, ProcessError> {
///         for id in work.resume_from()..=work.range().last() {
///             if work.is_cancelled() {
///                 return Ok(ProcessOutcome::Interrupted);
///             }
///             std::fs::write(format!("/tmp/{id}.out"), id.to_le_bytes())?; // blocking I/O is fine
///             work.checkpoint(id);
///         }
///         Ok(ProcessOutcome::Completed)
///     }
/// }
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let worker = Worker::builder(Namespace::new("demo")?, MemberId::new("compress-1")?)
///     .capacity(8)
///     .start_blocking(Compress)
///     .await?;
/// worker.shutdown().await?;
/// # Ok(())
/// # }
/// ```
pub trait BlockingProcessor: Send + Sync + 'static {
    /// Processes `work.resume_from()..=work.range().last()`; see the module contract.
    fn process(&self, work: PartitionWork) -> Result<ProcessOutcome, ProcessError>;
}

/// How a processor finished a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessOutcome {
    /// Every ID of the range is processed.
    Completed,
    /// Cancellation was noticed; the checkpoint says exactly what was finished.
    Interrupted,
}

/// What one processor run returns to the worker.
pub(crate) type ProcessResult = Result<ProcessOutcome, ProcessError>;

/// One processor run, ready to be spawned: a task, or a closure for the blocking pool.
pub(crate) enum Run {
    Async(futures::future::BoxFuture<'static, ProcessResult>),
    Blocking(Box<dyn FnOnce() -> ProcessResult + Send>),
}

impl Run {
    /// Spawns the run into `tasks`, on `runtime` (the processors' runtime or its blocking pool).
    pub(crate) fn spawn(self, tasks: &mut JoinSet<ProcessResult>, runtime: &Handle) -> TaskId {
        match self {
            Run::Async(future) => tasks.spawn_on(future, runtime).id(),
            Run::Blocking(call) => tasks.spawn_blocking_on(call, runtime).id(),
        }
    }
}

/// Turns a granted partition into a [`Run`] of the user's processor, async or blocking.
pub(crate) trait Runner: Send + Sync + 'static {
    fn run(&self, work: PartitionWork) -> Run;
}

/// Runs a [`Processor`] as a task.
pub(crate) struct AsyncRunner<P>(pub(crate) Arc<P>);

impl<P: Processor> Runner for AsyncRunner<P> {
    fn run(&self, work: PartitionWork) -> Run {
        let processor = self.0.clone();
        Run::Async(Box::pin(async move { processor.process(work).await }))
    }
}

/// Runs a [`BlockingProcessor`] on the blocking pool.
pub(crate) struct BlockingRunner<P>(pub(crate) Arc<P>);

impl<P: BlockingProcessor> Runner for BlockingRunner<P> {
    fn run(&self, work: PartitionWork) -> Run {
        let processor = self.0.clone();
        Run::Blocking(Box::new(move || processor.process(work)))
    }
}

/// The in-memory checkpoint of one running partition, shared by the processor (writer) and the
/// worker (periodic flusher).
#[derive(Debug)]
pub(crate) struct CheckpointCell {
    range: IdRange,
    last_done: Mutex<Option<u64>>,
}

impl CheckpointCell {
    /// A cell whose starting checkpoint is the ID just before `resume_from` (none at the start).
    pub(crate) fn new(range: IdRange, resume_from: u64) -> Self {
        let initial = (resume_from > range.first()).then(|| (resume_from - 1).min(range.last()));
        Self {
            range,
            last_done: Mutex::new(initial),
        }
    }

    pub(crate) fn get(&self) -> Option<u64> {
        *self
            .last_done
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn advance(&self, last_done: u64) {
        if !self.range.contains(last_done) {
            tracing::warn!(last_done, range = %self.range, "ignoring checkpoint outside the range");
            return;
        }
        let mut guard = self
            .last_done
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if guard.is_none_or(|current| last_done > current) {
            *guard = Some(last_done);
        }
    }
}

/// One granted partition handed to [`Processor::process`] or [`BlockingProcessor::process`].
#[derive(Debug, Clone)]
pub struct PartitionWork {
    job: JobName,
    partition: PartitionId,
    range: IdRange,
    resume_from: u64,
    token: PartitionLeaseToken,
    cancellation: CancellationToken,
    /// The fence deadline of the membership this grant belongs to.
    lease: LeaseDeadline,
    checkpoint: Arc<CheckpointCell>,
}

/// Where a grant came from and how it is stopped: everything [`PartitionWork`] needs besides
/// the grant itself.
pub(crate) struct WorkControl {
    pub(crate) cancellation: CancellationToken,
    pub(crate) lease: LeaseDeadline,
    pub(crate) checkpoint: Arc<CheckpointCell>,
}

impl PartitionWork {
    pub(crate) fn new(grant: &elk_protocol::messages::Grant, control: WorkControl) -> Self {
        Self {
            job: grant.job.clone(),
            partition: grant.partition,
            range: grant.range,
            resume_from: grant.resume_from,
            token: grant.token,
            cancellation: control.cancellation,
            lease: control.lease,
            checkpoint: control.checkpoint,
        }
    }

    pub fn job(&self) -> &JobName {
        &self.job
    }

    pub fn partition(&self) -> PartitionId {
        self.partition
    }

    /// The whole inclusive range of the partition.
    pub fn range(&self) -> IdRange {
        self.range
    }

    /// First ID to process (IDs before it were done by a previous owner).
    pub fn resume_from(&self) -> u64 {
        self.resume_from
    }

    /// The lease token of this grant (for logs; the worker attaches it to every report).
    pub fn token(&self) -> PartitionLeaseToken {
        self.token
    }

    /// Whether this partition must stop: the worker asked it to (revoke, shutdown, self-fence),
    /// or the membership's fence deadline has passed. The deadline is read from an atomic and
    /// compared with the monotonic clock, so this turns true on time even when nothing else could
    /// run since (a processor that blocked its thread through the deadline sees it at once).
    pub fn is_cancelled(&self) -> bool {
        self.cancellation.is_cancelled() || !self.lease.is_valid()
    }

    /// Completes when [`PartitionWork::is_cancelled`] turns true: on the worker's signal, or at the
    /// membership's fence deadline at the latest.
    pub async fn cancelled(&self) {
        loop {
            let Some(deadline) = self.lease.valid_until() else {
                return;
            };
            if self.is_cancelled() {
                return;
            }
            tokio::select! {
                () = self.cancellation.cancelled() => return,
                () = tokio::time::sleep_until(deadline.into()) => {}
            }
            // A renewal moved the deadline meanwhile: wait for the new one. Otherwise the timer
            // says the deadline has passed (trusted as is, so paused test clocks work too).
            if self.lease.valid_until() == Some(deadline) {
                return;
            }
        }
    }

    /// The worker's cancellation signal, e.g. to pass on to sub-tasks. It is cancelled on revoke,
    /// shutdown and self-fence by the worker's own thread; [`PartitionWork::is_cancelled`] also
    /// checks the fence deadline directly and is the one to poll.
    pub fn cancellation(&self) -> CancellationToken {
        self.cancellation.clone()
    }

    /// Records that every ID up to and including `last_done` is processed. Cheap (memory only);
    /// IDs outside the range and backward moves are ignored, and so is everything once the
    /// membership's fence deadline has passed (the partition may already belong to another
    /// worker; what this one still finishes is not reported).
    pub fn checkpoint(&self, last_done: u64) {
        if self.lease.is_valid() {
            self.checkpoint.advance(last_done);
        }
    }

    /// The last checkpoint recorded (or inherited from the previous owner).
    pub fn last_checkpoint(&self) -> Option<u64> {
        self.checkpoint.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn checkpoint_starts_before_resume_point_and_only_moves_forward() {
        let range = IdRange::new(10, 20).unwrap();
        assert_eq!(CheckpointCell::new(range, 10).get(), None);
        let cell = CheckpointCell::new(range, 15);
        assert_eq!(cell.get(), Some(14));
        cell.advance(16);
        cell.advance(12);
        cell.advance(21);
        assert_eq!(cell.get(), Some(16));
    }

    fn work_until(deadline: Instant) -> (PartitionWork, CancellationToken) {
        let range = IdRange::new(1, 100).unwrap();
        let grant = elk_protocol::messages::Grant {
            job: JobName::new("job").unwrap(),
            partition: PartitionId(1),
            range,
            resume_from: 1,
            token: PartitionLeaseToken(7),
            traceparent: None,
            unsampled: false,
        };
        let cancellation = CancellationToken::new();
        let control = WorkControl {
            cancellation: cancellation.clone(),
            lease: LeaseDeadline::new(deadline),
            checkpoint: Arc::new(CheckpointCell::new(range, 1)),
        };
        (PartitionWork::new(&grant, control), cancellation)
    }

    #[test]
    fn the_lease_deadline_cancels_and_refuses_checkpoints_without_any_task_running() {
        let (work, _cancellation) = work_until(Instant::now() + Duration::from_millis(30));
        work.checkpoint(5);
        assert!(!work.is_cancelled());
        // The processor's thread is busy past the deadline; no timer or task runs meanwhile.
        std::thread::sleep(Duration::from_millis(40));
        assert!(work.is_cancelled(), "the deadline alone cancels");
        work.checkpoint(9);
        assert_eq!(
            work.last_checkpoint(),
            Some(5),
            "late checkpoints are refused"
        );
    }

    #[tokio::test]
    async fn the_cancellation_future_completes_at_the_deadline_or_on_the_signal() {
        let (work, _cancellation) = work_until(Instant::now() + Duration::from_millis(20));
        tokio::time::timeout(Duration::from_secs(10), work.cancelled())
            .await
            .expect("completes at the lease deadline");
        assert!(work.is_cancelled());

        let (work, cancellation) = work_until(Instant::now() + Duration::from_secs(3600));
        cancellation.cancel();
        tokio::time::timeout(Duration::from_secs(10), work.cancelled())
            .await
            .expect("completes on the worker's signal");
    }
}
