//! The user-facing processing contract: a [`Processor`] receives one [`PartitionWork`] per granted
//! partition and processes the IDs from [`PartitionWork::resume_from`] to the end of
//! [`PartitionWork::range`], recording progress with [`PartitionWork::checkpoint`] and stopping
//! promptly when [`PartitionWork::is_cancelled`] turns true.
//!
//! Contract (what makes hand-over exact):
//! * `checkpoint(id)` means "every ID up to and including `id` is done"; it only records in memory
//!   (the worker flushes it to NATS every `checkpoint_interval`), so calling it per ID is fine.
//! * After noticing cancellation the processor returns [`ProcessOutcome::Interrupted`] having
//!   checkpointed exactly what it finished: the next owner resumes at `checkpoint + 1`, so nothing
//!   is repeated and nothing is skipped.
//! * [`ProcessOutcome::Completed`] means the whole range is done.
//! * An `Err` is reported as a failure of the partition with the last checkpoint.

use elk_types::{IdRange, JobName, PartitionId, PartitionLeaseToken};
use std::future::Future;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// Processes the IDs of granted partitions. One instance serves every partition of the worker, up
/// to `capacity` of them concurrently, so it is shared (`&self`).
///
/// Each partition runs as its own tokio task next to the worker's membership renewal. CPU-heavy
/// processors must yield regularly (or move the work to `spawn_blocking`): a task that never
/// reaches an `.await` can starve the renewal, and a worker that cannot renew self-fences.
///
/// # Example
///
/// ```no_run
/// use elk_worker::{PartitionWork, ProcessError, ProcessOutcome, Processor, Worker};
/// use elk_nats::NatsConfig;
/// use elk_types::{MemberId, Namespace};
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
///             if id % 1024 == 0 {
///                 tokio::task::yield_now().await;
///             }
///         }
///         tracing::debug!(checksum, "partition done");
///         Ok(ProcessOutcome::Completed)
///     }
/// }
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let worker = Worker::builder(
///     NatsConfig::new("nats://127.0.0.1:4222", "worker-1"),
///     Namespace::new("demo")?,
///     MemberId::new("worker-1")?,
/// )
/// .capacity(4)
/// .start(Checksum)
/// .await?;
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

/// How a processor finished a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessOutcome {
    /// Every ID of the range is processed.
    Completed,
    /// Cancellation was noticed; the checkpoint says exactly what was finished.
    Interrupted,
}

/// A processor's failure on a partition; reported to the coordinator with the last checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ProcessError {
    message: String,
}

impl ProcessError {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    pub fn message(&self) -> &str {
        &self.message
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

/// One granted partition handed to [`Processor::process`].
#[derive(Debug, Clone)]
pub struct PartitionWork {
    job: JobName,
    partition: PartitionId,
    range: IdRange,
    resume_from: u64,
    token: PartitionLeaseToken,
    cancellation: CancellationToken,
    checkpoint: Arc<CheckpointCell>,
}

impl PartitionWork {
    pub(crate) fn new(
        job: JobName,
        partition: PartitionId,
        range: IdRange,
        resume_from: u64,
        token: PartitionLeaseToken,
        cancellation: CancellationToken,
        checkpoint: Arc<CheckpointCell>,
    ) -> Self {
        Self {
            job,
            partition,
            range,
            resume_from,
            token,
            cancellation,
            checkpoint,
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

    /// Whether the worker asked this partition to stop (revoke, shutdown or self-fence).
    pub fn is_cancelled(&self) -> bool {
        self.cancellation.is_cancelled()
    }

    /// Completes when the worker asks this partition to stop.
    pub async fn cancelled(&self) {
        self.cancellation.cancelled().await;
    }

    /// The cancellation signal itself, e.g. to pass on to sub-tasks.
    pub fn cancellation(&self) -> CancellationToken {
        self.cancellation.clone()
    }

    /// Records that every ID up to and including `last_done` is processed. Cheap (memory only);
    /// IDs outside the range and backward moves are ignored.
    pub fn checkpoint(&self, last_done: u64) {
        self.checkpoint.advance(last_done);
    }

    /// The last checkpoint recorded (or inherited from the previous owner).
    pub fn last_checkpoint(&self) -> Option<u64> {
        self.checkpoint.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
