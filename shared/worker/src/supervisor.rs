//! The worker's actor: one task owns every partition slot, the membership lease and the assignment
//! watch, and reacts to five triggers — shutdown, lease loss, a new assignment record, a processor
//! returning, and the checkpoint flush tick.
//!
//! Per-partition lifecycle (key = job, partition, lease token):
//!
//! ```text
//!   record grants it ──▶ Queued ──(window has room, no other grant of the
//!                          │        same partition running)──▶ Running
//!                          │                                     │ processor returns:
//!                          │                                     │   Completed ─▶ publish Completed
//!                          │                                     │   Err        ─▶ publish Failed
//!                          │ record drops it                     │ record drops it / other token
//!                          ▼                                     ▼
//!          publish Released(resume_from - 1)              Revoking (cancelled)
//!                                                                │ processor returns
//!                                                                ▼
//!                                                 publish Released(checkpoint)
//!
//!   lease lost (self-fence): every slot is cancelled and dropped, nothing is published
//!   shutdown: every slot is cancelled, awaited, then Released(checkpoint), then leave
//! ```
//!
//! Checkpoints of running slots are flushed every `checkpoint_interval` when they advanced. A
//! terminal event is queued only after the slot is removed, so nothing follows it.

use crate::WorkerError;
use crate::config::WorkerConfig;
use crate::processor::{CheckpointCell, PartitionWork, ProcessError, ProcessOutcome, Processor};
use crate::progress::ProgressPublisher;
use crate::stats::StatsCounters;
use async_nats::jetstream::kv::{Entry, Operation, Watch, WatcherError};
use elk_nats::{MemberLease, NatsError, Resources, new_incarnation};
use elk_protocol::messages::{
    AssignmentRecord, Grant, MemberRecord, MemberRole, ProgressEvent, ProgressReport,
};
use elk_protocol::{SCHEMA_VERSION, decode};
use elk_types::{Epoch, Incarnation, JobName, PartitionId, PartitionLeaseToken, ViewSeq};
use futures::StreamExt;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::task::{Id as TaskId, JoinSet};
use tokio_util::sync::CancellationToken;

/// Identifies one grant: the same partition granted again gets a new token.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct GrantKey {
    job: JobName,
    partition: PartitionId,
    token: PartitionLeaseToken,
}

impl GrantKey {
    fn of(grant: &Grant) -> Self {
        Self {
            job: grant.job.clone(),
            partition: grant.partition,
            token: grant.token,
        }
    }

    fn same_partition(&self, other: &GrantKey) -> bool {
        self.job == other.job && self.partition == other.partition
    }
}

enum SlotState {
    Queued,
    Running {
        cancellation: CancellationToken,
        /// The record no longer grants it: release when the processor returns.
        revoked: bool,
    },
}

struct Slot {
    grant: Grant,
    checkpoint: Arc<CheckpointCell>,
    last_flushed: Option<u64>,
    state: SlotState,
}

/// One life of the worker: its membership lease and its assignment watch.
pub(crate) struct Session {
    lease: MemberLease,
    assignments: Watch,
}

impl Session {
    /// Joins with a fresh incarnation and starts watching the worker's own assignment key.
    pub(crate) async fn open(
        resources: &Resources,
        config: &WorkerConfig,
    ) -> Result<Session, WorkerError> {
        let record = MemberRecord {
            schema: SCHEMA_VERSION,
            role: MemberRole::Worker,
            incarnation: new_incarnation(),
            capacity: config.capacity,
            jobs: config.jobs.clone(),
            labels: config.labels.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        let lease =
            MemberLease::join(resources, config.id.clone(), record, config.member_ttl).await?;
        match watch_assignments(resources, config).await {
            Ok(assignments) => Ok(Session { lease, assignments }),
            Err(error) => {
                if let Err(leave_error) = lease.leave().await {
                    tracing::warn!(%leave_error, "leave after a failed watch failed");
                }
                Err(error.into())
            }
        }
    }

    pub(crate) fn incarnation(&self) -> Incarnation {
        self.lease.incarnation()
    }
}

async fn watch_assignments(
    resources: &Resources,
    config: &WorkerConfig,
) -> Result<Watch, NatsError> {
    resources
        .assignments
        .watch_with_history(config.id.as_str())
        .await
        .map_err(|error| NatsError::Watch {
            bucket: resources.assignments.name.clone(),
            message: error.to_string(),
        })
}

/// Everything the actor owns.
pub(crate) struct Supervisor<P: Processor> {
    pub(crate) config: Arc<WorkerConfig>,
    pub(crate) resources: Resources,
    pub(crate) processor: Arc<P>,
    pub(crate) publisher: ProgressPublisher,
    pub(crate) stats: Arc<StatsCounters>,
    pub(crate) current_incarnation: Arc<AtomicU64>,
    pub(crate) shutdown: CancellationToken,
    slots: HashMap<GrantKey, Slot>,
    /// Queued grants in arrival order (FIFO start).
    queue: VecDeque<GrantKey>,
    tasks: JoinSet<Result<ProcessOutcome, ProcessError>>,
    task_keys: HashMap<TaskId, GrantKey>,
    /// Grants that already ended here but may still appear in the record until the assigner
    /// catches up; never started twice. Pruned to the latest record.
    finished: HashSet<GrantKey>,
    /// Highest assigner epoch seen: older epochs are from a deposed assigner.
    highest_epoch: Epoch,
    /// `(epoch, seq)` of the record applied last in this incarnation.
    last_applied: Option<(Epoch, ViewSeq)>,
}

/// What ends a session.
enum SessionEnd {
    Shutdown,
    Fenced,
}

impl<P: Processor> Supervisor<P> {
    pub(crate) fn new(
        config: Arc<WorkerConfig>,
        resources: Resources,
        processor: Arc<P>,
        publisher: ProgressPublisher,
        stats: Arc<StatsCounters>,
        current_incarnation: Arc<AtomicU64>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            config,
            resources,
            processor,
            publisher,
            stats,
            current_incarnation,
            shutdown,
            slots: HashMap::new(),
            queue: VecDeque::new(),
            tasks: JoinSet::new(),
            task_keys: HashMap::new(),
            finished: HashSet::new(),
            highest_epoch: Epoch(0),
            last_applied: None,
        }
    }

    /// Runs sessions until shutdown: a lost lease fences and re-joins with a new incarnation.
    pub(crate) async fn run(mut self, first: Session) -> Result<(), WorkerError> {
        let mut session = first;
        loop {
            self.current_incarnation
                .store(session.incarnation().get(), Ordering::Relaxed);
            tracing::info!(
                worker = %self.config.id,
                incarnation = %session.incarnation(),
                "worker joined"
            );
            match self.run_session(&mut session).await {
                SessionEnd::Shutdown => return self.shut_down(session).await,
                SessionEnd::Fenced => {
                    self.fence(session).await;
                    match self.rejoin().await {
                        Some(next) => session = next,
                        None => {
                            self.publisher.flush().await;
                            return Ok(());
                        }
                    }
                }
            }
        }
    }

    async fn run_session(&mut self, session: &mut Session) -> SessionEnd {
        let lost = session.lease.lost();
        let mut flush_tick = tokio::time::interval(self.config.checkpoint_interval);
        flush_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return SessionEnd::Shutdown,
                _ = lost.cancelled() => return SessionEnd::Fenced,
                Some(joined) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    let (key, result) = self.identify(joined);
                    self.on_processor_returned(key, result);
                }
                next = session.assignments.next() => {
                    self.on_watch_item(next, session).await;
                }
                _ = flush_tick.tick() => self.flush_checkpoints(),
            }
        }
    }

    /// Maps a joined task to its grant; a panic becomes an error of the partition.
    fn identify(
        &mut self,
        joined: Result<(TaskId, Result<ProcessOutcome, ProcessError>), tokio::task::JoinError>,
    ) -> (Option<GrantKey>, Result<ProcessOutcome, ProcessError>) {
        match joined {
            Ok((id, result)) => (self.task_keys.remove(&id), result),
            Err(error) => {
                let key = self.task_keys.remove(&error.id());
                let reason = match error.try_into_panic() {
                    Ok(payload) => {
                        let message = payload
                            .downcast_ref::<&str>()
                            .map(|text| (*text).to_owned())
                            .or_else(|| payload.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "non-string payload".to_owned());
                        format!("processor panicked: {message}")
                    }
                    Err(_) => "processor task was cancelled".to_owned(),
                };
                (key, Err(ProcessError::new(reason)))
            }
        }
    }

    async fn on_watch_item(
        &mut self,
        next: Option<Result<Entry, WatcherError>>,
        session: &mut Session,
    ) {
        let entry = match next {
            Some(Ok(entry)) => entry,
            Some(Err(error)) => {
                tracing::warn!(%error, "assignment watch error");
                return;
            }
            None => {
                tracing::warn!("assignment watch ended; watching again");
                if let Some(assignments) = self.rewatch().await {
                    session.assignments = assignments;
                }
                return;
            }
        };
        if !matches!(entry.operation, Operation::Put) {
            StatsCounters::bump(&self.stats.records_ignored);
            tracing::debug!(
                revision = entry.revision,
                "ignoring assignment delete marker"
            );
            return;
        }
        match decode::<AssignmentRecord>(&entry.value) {
            Ok(record) => self.apply_record(record, session.incarnation()),
            Err(error) => {
                StatsCounters::bump(&self.stats.records_ignored);
                tracing::warn!(revision = entry.revision, %error, "ignoring undecodable assignment");
            }
        }
    }

    async fn rewatch(&self) -> Option<Watch> {
        let mut backoff = Duration::from_millis(100);
        loop {
            match watch_assignments(&self.resources, &self.config).await {
                Ok(watch) => return Some(watch),
                Err(error) => tracing::warn!(%error, "cannot watch assignments; retrying"),
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return None,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// Reconciles the slots with `record`, the complete set of grants of this worker.
    fn apply_record(&mut self, record: AssignmentRecord, incarnation: Incarnation) {
        if record.incarnation != incarnation {
            StatsCounters::bump(&self.stats.records_ignored);
            tracing::debug!(
                record_incarnation = %record.incarnation,
                %incarnation,
                "ignoring assignment record of another incarnation"
            );
            return;
        }
        if record.epoch < self.highest_epoch {
            StatsCounters::bump(&self.stats.records_ignored);
            tracing::warn!(
                epoch = %record.epoch,
                highest_epoch = %self.highest_epoch,
                "ignoring assignment record of a deposed assigner"
            );
            return;
        }
        if self
            .last_applied
            .is_some_and(|applied| (record.epoch, record.seq) <= applied)
        {
            StatsCounters::bump(&self.stats.records_ignored);
            tracing::debug!(epoch = %record.epoch, seq = %record.seq, "ignoring stale assignment");
            return;
        }
        self.highest_epoch = record.epoch;
        self.last_applied = Some((record.epoch, record.seq));
        StatsCounters::bump(&self.stats.records_applied);

        let grants = if record.drain {
            Vec::new()
        } else {
            record.grants
        };
        let wanted: HashSet<GrantKey> = grants.iter().map(GrantKey::of).collect();
        let dropped: Vec<GrantKey> = self
            .slots
            .keys()
            .filter(|key| !wanted.contains(key))
            .cloned()
            .collect();
        for key in dropped {
            self.revoke(key);
        }
        self.finished.retain(|key| wanted.contains(key));
        for grant in grants {
            let key = GrantKey::of(&grant);
            if self.slots.contains_key(&key) || self.finished.contains(&key) {
                continue;
            }
            self.enqueue(key, grant);
        }
        self.start_queued();
    }

    fn enqueue(&mut self, key: GrantKey, mut grant: Grant) {
        grant.resume_from = grant.resume_from.max(grant.range.first());
        let checkpoint = Arc::new(CheckpointCell::new(grant.range, grant.resume_from));
        let slot = Slot {
            last_flushed: checkpoint.get(),
            checkpoint,
            grant,
            state: SlotState::Queued,
        };
        self.slots.insert(key.clone(), slot);
        self.queue.push_back(key);
    }

    fn revoke(&mut self, key: GrantKey) {
        let Some(slot) = self.slots.get_mut(&key) else {
            return;
        };
        if let SlotState::Running {
            cancellation,
            revoked,
        } = &mut slot.state
        {
            if !*revoked {
                tracing::info!(job = %key.job, partition = %key.partition, "revoking partition");
                *revoked = true;
                cancellation.cancel();
            }
            return;
        }
        // Never started: hand it back at once with the checkpoint it came with.
        self.queue.retain(|queued| queued != &key);
        if let Some(slot) = self.slots.remove(&key) {
            let last_done = slot.checkpoint.get();
            self.finish(key, &slot, ProgressEvent::Released { last_done });
        }
    }

    /// Starts queued grants, oldest first, while the window has room. A grant whose partition is
    /// still running under another token waits for it.
    fn start_queued(&mut self) {
        let capacity = self.config.capacity.get() as usize;
        while self.tasks.len() < capacity {
            let startable = self.queue.iter().position(|queued| {
                !self.slots.iter().any(|(key, slot)| {
                    matches!(slot.state, SlotState::Running { .. }) && key.same_partition(queued)
                })
            });
            let Some(position) = startable else { return };
            let Some(key) = self.queue.remove(position) else {
                return;
            };
            self.start(key);
        }
    }

    fn start(&mut self, key: GrantKey) {
        let Some(slot) = self.slots.get_mut(&key) else {
            return;
        };
        let cancellation = CancellationToken::new();
        let work = PartitionWork::new(
            slot.grant.job.clone(),
            slot.grant.partition,
            slot.grant.range,
            slot.grant.resume_from,
            slot.grant.token,
            cancellation.clone(),
            slot.checkpoint.clone(),
        );
        slot.state = SlotState::Running {
            cancellation,
            revoked: false,
        };
        tracing::debug!(job = %key.job, partition = %key.partition, "starting partition");
        let processor = self.processor.clone();
        let handle = self
            .tasks
            .spawn(async move { processor.process(work).await });
        self.task_keys.insert(handle.id(), key);
        StatsCounters::bump(&self.stats.partitions_started);
    }

    fn on_processor_returned(
        &mut self,
        key: Option<GrantKey>,
        result: Result<ProcessOutcome, ProcessError>,
    ) {
        let Some(key) = key else {
            tracing::error!("a processor returned for an unknown partition");
            return;
        };
        let Some(slot) = self.slots.remove(&key) else {
            return;
        };
        let revoked = matches!(slot.state, SlotState::Running { revoked: true, .. });
        let last_done = slot.checkpoint.get();
        let event = match result {
            Ok(ProcessOutcome::Completed) => ProgressEvent::Completed,
            Ok(ProcessOutcome::Interrupted) if revoked => ProgressEvent::Released { last_done },
            Ok(ProcessOutcome::Interrupted) => ProgressEvent::Failed {
                error: "processor returned Interrupted without being cancelled".to_owned(),
                last_done,
            },
            Err(error) => ProgressEvent::Failed {
                error: error.message().to_owned(),
                last_done,
            },
        };
        self.finish(key, &slot, event);
        self.start_queued();
    }

    /// Queues the terminal event of a slot that was just removed.
    fn finish(&mut self, key: GrantKey, slot: &Slot, event: ProgressEvent) {
        let counter = match &event {
            ProgressEvent::Completed => &self.stats.partitions_completed,
            ProgressEvent::Failed { error, .. } => {
                tracing::warn!(job = %key.job, partition = %key.partition, %error, "partition failed");
                &self.stats.partitions_failed
            }
            ProgressEvent::Released { .. } => &self.stats.partitions_released,
            ProgressEvent::Checkpoint { .. } => {
                debug_assert!(false, "a checkpoint is not a terminal event");
                return;
            }
        };
        StatsCounters::bump(counter);
        tracing::debug!(job = %key.job, partition = %key.partition, ?event, "partition ended");
        let report = self.report(&slot.grant, event);
        self.publisher.publish(vec![report]);
        self.finished.insert(key);
    }

    fn report(&self, grant: &Grant, event: ProgressEvent) -> ProgressReport {
        ProgressReport {
            schema: SCHEMA_VERSION,
            worker: self.config.id.clone(),
            incarnation: Incarnation(self.current_incarnation.load(Ordering::Relaxed)),
            job: grant.job.clone(),
            partition: grant.partition,
            token: grant.token,
            event,
        }
    }

    /// Publishes the checkpoints that advanced since the last flush.
    fn flush_checkpoints(&mut self) {
        let mut reports = Vec::new();
        let mut advanced = Vec::new();
        for slot in self.slots.values_mut() {
            if !matches!(slot.state, SlotState::Running { .. }) {
                continue;
            }
            let current = slot.checkpoint.get();
            if current == slot.last_flushed {
                continue;
            }
            slot.last_flushed = current;
            if let Some(last_done) = current {
                advanced.push((slot.grant.clone(), last_done));
            }
        }
        for (grant, last_done) in advanced {
            reports.push(self.report(&grant, ProgressEvent::Checkpoint { last_done }));
        }
        self.publisher.publish(reports);
    }

    /// Self-fence: the coordinator may already have given this work away, so stop everything at
    /// once and publish nothing for it.
    async fn fence(&mut self, session: Session) {
        StatsCounters::bump(&self.stats.fences);
        tracing::warn!(
            worker = %self.config.id,
            incarnation = %session.incarnation(),
            running = self.tasks.len(),
            queued = self.queue.len(),
            "membership lost: self-fencing, dropping every partition without releasing"
        );
        drop(session);
        self.cancel_running();
        self.queue.clear();
        // No grace here: another worker may get these partitions as soon as the member key
        // expires, so every processor is stopped at its next await point (results are dropped,
        // nothing is reported under the fenced incarnation).
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        self.slots.clear();
        self.finished.clear();
        self.last_applied = None;
    }

    /// Re-joins with a new incarnation, retrying until it works or the worker shuts down.
    async fn rejoin(&mut self) -> Option<Session> {
        let mut backoff = Duration::from_millis(100);
        loop {
            match Session::open(&self.resources, &self.config).await {
                Ok(session) => return Some(session),
                Err(error) => tracing::warn!(%error, "re-join failed; retrying"),
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return None,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(self.config.member_ttl);
        }
    }

    fn cancel_running(&mut self) {
        for slot in self.slots.values() {
            if let SlotState::Running { cancellation, .. } = &slot.state {
                cancellation.cancel();
            }
        }
    }

    /// Waits up to `stop_grace` for every processor to return (calling `on_return` for each),
    /// then aborts the rest.
    async fn await_processors(
        &mut self,
        mut on_return: impl FnMut(GrantKey, Result<ProcessOutcome, ProcessError>),
    ) {
        let grace = tokio::time::sleep(self.config.stop_grace);
        tokio::pin!(grace);
        loop {
            tokio::select! {
                joined = self.tasks.join_next_with_id() => {
                    let Some(joined) = joined else { return };
                    if let (Some(key), result) = self.identify(joined) {
                        on_return(key, result);
                    }
                }
                _ = &mut grace => {
                    tracing::warn!(
                        still_running = self.tasks.len(),
                        "processors did not stop within the grace period; aborting them"
                    );
                    self.tasks.abort_all();
                    self.tasks.detach_all();
                    self.task_keys.clear();
                    return;
                }
            }
        }
    }

    /// Graceful shutdown: stop, release everything with its checkpoint (acked), then leave.
    async fn shut_down(&mut self, session: Session) -> Result<(), WorkerError> {
        tracing::info!(
            worker = %self.config.id,
            running = self.tasks.len(),
            queued = self.queue.len(),
            "shutting down: releasing partitions"
        );
        self.cancel_running();
        let mut returned = Vec::new();
        self.await_processors(|key, result| returned.push((key, result)))
            .await;
        for (key, result) in returned {
            let Some(slot) = self.slots.remove(&key) else {
                continue;
            };
            let last_done = slot.checkpoint.get();
            let event = match result {
                Ok(ProcessOutcome::Completed) => ProgressEvent::Completed,
                Ok(ProcessOutcome::Interrupted) => ProgressEvent::Released { last_done },
                Err(error) => ProgressEvent::Failed {
                    error: error.message().to_owned(),
                    last_done,
                },
            };
            self.finish(key, &slot, event);
        }
        // Queued grants, and processors that had to be aborted: hand back what is checkpointed.
        let remaining: Vec<GrantKey> = self.slots.keys().cloned().collect();
        let mut releases = Vec::new();
        for key in remaining {
            if let Some(slot) = self.slots.remove(&key) {
                let last_done = slot.checkpoint.get();
                StatsCounters::bump(&self.stats.partitions_released);
                releases.push(self.report(&slot.grant, ProgressEvent::Released { last_done }));
            }
        }
        self.queue.clear();
        self.publisher.publish(releases);
        self.publisher.flush().await;
        let Session { lease, assignments } = session;
        drop(assignments);
        lease.leave().await?;
        if let Err(error) = self.resources.client.flush().await {
            tracing::debug!(%error, "final flush failed");
        }
        tracing::info!(worker = %self.config.id, "worker left");
        Ok(())
    }
}
