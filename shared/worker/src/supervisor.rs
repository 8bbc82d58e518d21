//! The worker's actor: one task owns every partition slot, the membership lease and the assignment
//! feed, and reacts to five triggers — shutdown, lease loss, a new assignment record, a processor
//! returning, and the checkpoint flush tick. It runs on the worker's coordination runtime; the
//! processors it starts run on the processors' runtime (see [`crate::coordination`]).
//!
//! Per-partition lifecycle (key = job, partition, lease token):
//!
//! ```text
//!   record grants it ──▶ Queued ──(window has room, no other run of the
//!                          │        same partition in this process)──▶ Running
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
//!   lease lost (self-fence): every slot is cancelled and dropped, nothing is published; runs that
//!     have not returned become orphans (results dropped; their partition is not started again
//!     here until they return)
//!   shutdown: every slot is cancelled, awaited, then Released(checkpoint), then leave
//! ```
//!
//! Checkpoints of running slots are flushed every `checkpoint_interval` when they advanced. A
//! terminal event is queued only after the slot is removed, so nothing follows it.
//!
//! A running grant whose `traceparent` is sampled runs inside a span `elk.partition.process`
//! (child of the assigner's grant span; see `crate::trace_context`): flushed checkpoints, a revoke
//! and the outcome are its events, and its reports carry its context.

mod session;

pub(crate) use session::Session;

use crate::config::WorkerConfig;
use crate::events::{DrainCause, WorkerEvent};
use crate::processor::{
    CheckpointCell, PartitionWork, ProcessOutcome, ProcessResult, Runner, WorkControl,
};
use crate::progress::Outgoing;
use crate::progress::ProgressPublisher;
use crate::stats::StatsCounters;
use crate::trace_context::Continuation;
use crate::worker::Shared;
use crate::{ProcessError, WorkerError};
use elk_nats::{KvEntry, LeaseDeadline, MemberResources};
use elk_protocol::SCHEMA_VERSION;
use elk_protocol::decode;
use elk_protocol::messages::{AssignmentRecord, Grant, ProgressEvent, ProgressReport};
use elk_types::{Epoch, Incarnation, JobName, PartitionId, PartitionLeaseToken, ViewSeq};
use opentelemetry::KeyValue;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::runtime::Handle;
use tokio::task::{Id as TaskId, JoinError, JoinSet};
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
    /// The checkpoint the grant came with (durable already).
    granted_at: Option<u64>,
    state: SlotState,
    /// The trace this run continues (set when it starts).
    trace: Continuation,
}

/// Whose result a processor task carries.
enum TaskOwner {
    /// A grant of the current session.
    Grant(GrantKey),
    /// A run abandoned at a self-fence (an async one until its abort lands, a blocking one until
    /// it returns): its result is dropped, and its partition waits for it.
    Orphan {
        job: JobName,
        partition: PartitionId,
    },
}

impl TaskOwner {
    fn runs(&self, job: &JobName, partition: PartitionId) -> bool {
        match self {
            TaskOwner::Grant(key) => &key.job == job && key.partition == partition,
            TaskOwner::Orphan {
                job: orphan_job,
                partition: orphan_partition,
            } => orphan_job == job && *orphan_partition == partition,
        }
    }
}

/// What ends a session.
enum SessionEnd {
    Shutdown,
    Fenced,
}

/// What the actor works with, handed over by [`crate::WorkerBuilder`].
pub(crate) struct SupervisorParts {
    pub(crate) config: Arc<WorkerConfig>,
    pub(crate) resources: MemberResources,
    pub(crate) runner: Arc<dyn Runner>,
    pub(crate) processors: Handle,
    pub(crate) publisher: ProgressPublisher,
    pub(crate) shared: Arc<Shared>,
    pub(crate) shutdown: CancellationToken,
}

/// Everything the actor owns.
pub(crate) struct Supervisor {
    config: Arc<WorkerConfig>,
    resources: MemberResources,
    runner: Arc<dyn Runner>,
    /// Where processors run (never the coordination runtime).
    processors: Handle,
    publisher: ProgressPublisher,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    /// The fence deadline of the current session's membership.
    membership: LeaseDeadline,
    slots: HashMap<GrantKey, Slot>,
    /// Queued grants in arrival order (FIFO start).
    queue: VecDeque<GrantKey>,
    tasks: JoinSet<ProcessResult>,
    task_owners: HashMap<TaskId, TaskOwner>,
    /// Grants that already ended here but may still appear in the record until the assigner
    /// catches up; never started twice. Pruned to the latest record.
    finished: HashSet<GrantKey>,
    /// Highest assigner epoch seen: older epochs are from a deposed assigner.
    highest_epoch: Epoch,
    /// `(epoch, seq)` of the record applied last in this incarnation.
    last_applied: Option<(Epoch, ViewSeq)>,
    /// A `drain` record was already announced in this incarnation.
    drain_announced: bool,
    /// Revokes of the latest record for grants this worker does not hold, waiting for a run of
    /// the same partition (under another token) to end before they are answered.
    revoke_notices: Vec<Grant>,
}

impl Supervisor {
    pub(crate) fn new(parts: SupervisorParts) -> Self {
        Self {
            config: parts.config,
            resources: parts.resources,
            runner: parts.runner,
            processors: parts.processors,
            publisher: parts.publisher,
            shared: parts.shared,
            shutdown: parts.shutdown,
            membership: LeaseDeadline::expired(),
            slots: HashMap::new(),
            queue: VecDeque::new(),
            tasks: JoinSet::new(),
            task_owners: HashMap::new(),
            finished: HashSet::new(),
            highest_epoch: Epoch(0),
            last_applied: None,
            drain_announced: false,
            revoke_notices: Vec::new(),
        }
    }

    fn stats(&self) -> &StatsCounters {
        &self.shared.stats
    }

    /// Runs sessions until shutdown, starting with `first` (already begun with
    /// [`Supervisor::begin`]): a lost lease fences and re-joins with a new incarnation.
    pub(crate) async fn run(mut self, first: Session) -> Result<(), WorkerError> {
        let mut session = first;
        loop {
            match Box::pin(self.run_session(&mut session)).await {
                SessionEnd::Shutdown => return Box::pin(self.shut_down(session)).await,
                SessionEnd::Fenced => {
                    let previous = session.incarnation();
                    self.fence(session);
                    // Boxed, like every large future on this path: the coordination thread's
                    // stack stays small even in debug builds.
                    match Box::pin(self.rejoin()).await {
                        Some(next) => {
                            self.begin(&next, Some(previous));
                            session = next;
                        }
                        None => {
                            self.publisher.flush().await;
                            self.shared.lifecycle.emit(WorkerEvent::Left);
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
                () = self.shutdown.cancelled() => return SessionEnd::Shutdown,
                () = lost.cancelled() => return SessionEnd::Fenced,
                Some(joined) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    self.on_task_returned(joined);
                }
                entry = session.assignments.next() => {
                    self.on_assignment(entry, session.incarnation());
                }
                _ = flush_tick.tick() => self.flush_checkpoints(),
            }
        }
    }

    fn on_task_returned(&mut self, joined: Result<(TaskId, ProcessResult), JoinError>) {
        let (owner, result) = self.identify(joined);
        match owner {
            Some(TaskOwner::Grant(key)) => self.on_processor_returned(key, result),
            Some(TaskOwner::Orphan { job, partition }) => {
                tracing::debug!(%job, %partition, "a run abandoned at a self-fence returned");
                self.answer_revoke_notices();
                self.start_queued();
            }
            None => tracing::error!("a processor returned for an unknown partition"),
        }
    }

    /// Maps a joined task to its owner; a panic becomes an error of the partition.
    fn identify(
        &mut self,
        joined: Result<(TaskId, ProcessResult), JoinError>,
    ) -> (Option<TaskOwner>, ProcessResult) {
        match joined {
            Ok((id, result)) => (self.task_owners.remove(&id), result),
            Err(error) => {
                let owner = self.task_owners.remove(&error.id());
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
                (owner, Err(ProcessError::new(reason)))
            }
        }
    }

    fn on_assignment(&mut self, entry: KvEntry, incarnation: Incarnation) {
        if entry.deleted {
            StatsCounters::bump(&self.stats().records_ignored);
            tracing::debug!(revision = %entry.revision, "ignoring assignment delete marker");
            return;
        }
        match decode::<AssignmentRecord>(&entry.value) {
            Ok(record) => self.apply_record(record, incarnation),
            Err(error) => {
                StatsCounters::bump(&self.stats().records_ignored);
                tracing::warn!(revision = %entry.revision, %error, "ignoring undecodable assignment");
            }
        }
    }

    /// Reconciles the slots with `record`, the complete set of grants of this worker.
    fn apply_record(&mut self, record: AssignmentRecord, incarnation: Incarnation) {
        if record.incarnation != incarnation {
            StatsCounters::bump(&self.stats().records_ignored);
            tracing::debug!(
                record_incarnation = %record.incarnation,
                %incarnation,
                "ignoring assignment record of another incarnation"
            );
            return;
        }
        if record.epoch < self.highest_epoch {
            StatsCounters::bump(&self.stats().records_ignored);
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
            StatsCounters::bump(&self.stats().records_ignored);
            tracing::debug!(epoch = %record.epoch, seq = %record.seq, "ignoring stale assignment");
            return;
        }
        self.highest_epoch = record.epoch;
        self.last_applied = Some((record.epoch, record.seq));
        // Before this record's consequences are queued: an old assigner cannot read a batch.
        self.publisher.accept_batches(record.progress_batches);
        StatsCounters::bump(&self.stats().records_applied);

        let grants = if record.drain {
            if !self.drain_announced {
                self.drain_announced = true;
                self.shared.lifecycle.emit(WorkerEvent::Draining {
                    cause: DrainCause::Assigner,
                });
            }
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
        let revoking: HashSet<GrantKey> = record.revoking.iter().map(GrantKey::of).collect();
        self.finished
            .retain(|key| wanted.contains(key) || revoking.contains(key));
        for grant in grants {
            let key = GrantKey::of(&grant);
            if self.slots.contains_key(&key) || self.finished.contains(&key) {
                continue;
            }
            self.enqueue(key, grant);
        }
        self.revoke_notices = record.revoking;
        self.answer_revoke_notices();
        self.start_queued();
    }

    /// Releases the revoked grants of the record that this worker never held: it missed the
    /// record that granted them, or a new assigner changed the token before writing one. Without
    /// an answer the assigner would wait for as long as this worker lives (a revoke ends only
    /// with a release or the owner's expiry). A grant it holds is released by its run (see
    /// [`Supervisor::revoke`]); one it already ended was answered; one whose partition still runs
    /// here under another token waits for that run, so the partition is never run twice at once.
    fn answer_revoke_notices(&mut self) {
        let notices = std::mem::take(&mut self.revoke_notices);
        for grant in notices {
            let key = GrantKey::of(&grant);
            if self.slots.contains_key(&key) || self.finished.contains(&key) {
                continue;
            }
            let still_running = self
                .task_owners
                .values()
                .any(|owner| owner.runs(&key.job, key.partition));
            if still_running {
                self.revoke_notices.push(grant);
                continue;
            }
            tracing::info!(job = %key.job, partition = %key.partition, "releasing a revoked grant this worker never held");
            let slot = Slot {
                checkpoint: Arc::new(CheckpointCell::new(grant.range, grant.range.first())),
                last_flushed: None,
                granted_at: None,
                grant,
                state: SlotState::Queued,
                trace: Continuation::Untraced,
            };
            self.shared.lifecycle.emit(WorkerEvent::Revoked {
                job: key.job.clone(),
                partition: key.partition,
                token: key.token,
            });
            // Nothing processed here: the assigner keeps the partition's checkpoint.
            self.finish(key, &slot, ProgressEvent::Released { last_done: None });
        }
    }

    fn enqueue(&mut self, key: GrantKey, mut grant: Grant) {
        grant.resume_from = grant.resume_from.max(grant.range.first());
        let checkpoint = Arc::new(CheckpointCell::new(grant.range, grant.resume_from));
        let slot = Slot {
            last_flushed: checkpoint.get(),
            granted_at: checkpoint.get(),
            checkpoint,
            grant,
            state: SlotState::Queued,
            trace: Continuation::Untraced,
        };
        self.slots.insert(key.clone(), slot);
        self.queue.push_back(key);
    }

    fn revoke(&mut self, key: GrantKey) {
        let Some(slot) = self.slots.get_mut(&key) else {
            return;
        };
        let revoked_event = WorkerEvent::Revoked {
            job: key.job.clone(),
            partition: key.partition,
            token: key.token,
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
                slot.trace.event("revoked", Vec::new());
                self.shared.lifecycle.emit(revoked_event);
            }
            return;
        }
        // Never started: hand it back at once with the checkpoint it came with.
        self.queue.retain(|queued| queued != &key);
        if let Some(slot) = self.slots.remove(&key) {
            self.shared.lifecycle.emit(revoked_event);
            let last_done = slot.checkpoint.get();
            self.finish(key, &slot, ProgressEvent::Released { last_done });
        }
    }

    /// Starts queued grants, oldest first, while the window has room. A grant whose partition is
    /// still running here (under another token, or abandoned at a fence) waits for it.
    fn start_queued(&mut self) {
        let capacity = self.config.capacity.get() as usize;
        while self.tasks.len() < capacity {
            let startable = self.queue.iter().position(|queued| {
                !self
                    .task_owners
                    .values()
                    .any(|owner| owner.runs(&queued.job, queued.partition))
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
        let remote = match (&slot.grant.traceparent, slot.grant.unsampled) {
            (Some(traceparent), _) => elk_nats::trace::parse_traceparent(traceparent),
            // The coordinator traces, this partition is not sampled: start no trace of its own.
            (None, true) => Some(elk_nats::trace::unsampled_context(&(
                slot.grant.job.as_str(),
                slot.grant.partition.get(),
                slot.grant.token.get(),
            ))),
            (None, false) => None,
        };
        let worker = &self.config.id;
        let grant = &slot.grant;
        slot.trace = Continuation::of(remote, || {
            tracing::info_span!(
                parent: None,
                "elk.partition.process",
                otel.kind = "consumer",
                elk.job = %grant.job,
                elk.partition = grant.partition.get(),
                elk.token = grant.token.get(),
                elk.resume_from = grant.resume_from,
                elk.worker = %worker,
            )
        });
        let work = PartitionWork::new(
            &slot.grant,
            WorkControl {
                cancellation: cancellation.clone(),
                lease: self.membership.clone(),
                checkpoint: slot.checkpoint.clone(),
            },
        );
        slot.state = SlotState::Running {
            cancellation,
            revoked: false,
        };
        tracing::debug!(job = %key.job, partition = %key.partition, "starting partition");
        let run = slot.trace.wrap_run(self.runner.run(work));
        let id = run.spawn(&mut self.tasks, &self.processors);
        self.task_owners.insert(id, TaskOwner::Grant(key));
        StatsCounters::bump(&self.shared.stats.partitions_started);
    }

    fn on_processor_returned(&mut self, key: GrantKey, result: ProcessResult) {
        let Some(slot) = self.slots.remove(&key) else {
            return;
        };
        let revoked = matches!(slot.state, SlotState::Running { revoked: true, .. });
        let event = terminal_event(result, revoked, slot.checkpoint.get());
        self.finish(key, &slot, event);
        self.answer_revoke_notices();
        self.start_queued();
    }

    /// Queues the terminal event of a slot that was just removed.
    fn finish(&mut self, key: GrantKey, slot: &Slot, event: ProgressEvent) {
        let stats = &self.shared.stats;
        let counter = match &event {
            ProgressEvent::Completed => &stats.partitions_completed,
            ProgressEvent::Failed {
                error, permanent, ..
            } => {
                tracing::warn!(job = %key.job, partition = %key.partition, %error, permanent, "partition failed");
                &stats.partitions_failed
            }
            ProgressEvent::Released { .. } => &stats.partitions_released,
            ProgressEvent::Checkpoint { .. } => {
                debug_assert!(false, "a checkpoint is not a terminal event");
                return;
            }
        };
        StatsCounters::bump(counter);
        tracing::debug!(job = %key.job, partition = %key.partition, ?event, "partition ended");
        match &event {
            ProgressEvent::Failed { error, .. } => slot.trace.fail(error),
            ProgressEvent::Released { last_done } => slot.trace.event(
                "released",
                last_done
                    .map(|done| vec![KeyValue::new("elk.last_done", done as i64)])
                    .unwrap_or_default(),
            ),
            _ => slot.trace.event("completed", Vec::new()),
        }
        let report = self.outgoing(slot, event);
        self.publisher.publish(vec![report], &self.membership);
        self.finished.insert(key);
    }

    /// `event` of `slot` as a report, with the trace context of its run — or, for a grant that
    /// never ran (released from the queue), of the grant itself when it is sampled.
    fn outgoing(&self, slot: &Slot, event: ProgressEvent) -> Outgoing {
        let trace = slot.trace.report_context().or_else(|| {
            slot.grant
                .traceparent
                .as_deref()
                .and_then(elk_nats::trace::parse_traceparent)
                .filter(|context| context.is_sampled())
        });
        Outgoing {
            report: self.report(&slot.grant, event),
            trace,
        }
    }

    fn report(&self, grant: &Grant, event: ProgressEvent) -> ProgressReport {
        ProgressReport {
            schema: SCHEMA_VERSION,
            worker: self.config.id.clone(),
            incarnation: Incarnation(self.shared.incarnation.load(Ordering::Relaxed)),
            job: grant.job.clone(),
            partition: grant.partition,
            token: grant.token,
            event,
        }
    }

    /// Publishes the checkpoints that advanced since the last flush, and updates the gauges.
    fn flush_checkpoints(&mut self) {
        self.update_gauges();
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
                slot.trace.event(
                    "checkpoint",
                    vec![KeyValue::new("elk.last_done", last_done as i64)],
                );
                advanced.push((slot.grant.clone(), last_done, slot.trace.report_context()));
            }
        }
        let reports = advanced
            .into_iter()
            .map(|(grant, last_done, trace)| Outgoing {
                report: self.report(&grant, ProgressEvent::Checkpoint { last_done }),
                trace,
            })
            .collect();
        self.publisher.publish(reports, &self.membership);
    }

    /// Running and queued partitions, and the checkpoint lag: IDs the running partitions
    /// processed beyond their last acknowledged checkpoint (or the checkpoint they were granted
    /// with).
    fn update_gauges(&self) {
        let metrics = &self.shared.metrics;
        let acked = &metrics.acked;
        acked.retain(|(job, partition, token)| {
            let key = GrantKey {
                job: job.clone(),
                partition: *partition,
                token: *token,
            };
            self.slots.contains_key(&key)
        });
        let mut running = 0;
        let mut lag = 0u64;
        for (key, slot) in &self.slots {
            if !matches!(slot.state, SlotState::Running { .. }) {
                continue;
            }
            running += 1;
            let grant = (key.job.clone(), key.partition, key.token);
            let durable = acked.get(&grant).or(slot.granted_at);
            if let Some(done) = slot.checkpoint.get() {
                lag += match durable {
                    Some(durable) => done.saturating_sub(durable),
                    None => done + 1 - slot.grant.range.first(),
                };
            }
        }
        metrics.running.set(running);
        metrics.queued.set(self.queue.len() as i64);
        metrics
            .checkpoint_lag
            .set(i64::try_from(lag).unwrap_or(i64::MAX));
    }

    fn cancel_running(&mut self) {
        for slot in self.slots.values() {
            if let SlotState::Running { cancellation, .. } = &slot.state {
                cancellation.cancel();
            }
        }
    }
}

/// The terminal event for a processor run that returned `result`.
fn terminal_event(result: ProcessResult, revoked: bool, last_done: Option<u64>) -> ProgressEvent {
    match result {
        Ok(ProcessOutcome::Completed) => ProgressEvent::Completed,
        Ok(ProcessOutcome::Interrupted) if revoked => ProgressEvent::Released { last_done },
        Ok(ProcessOutcome::Interrupted) => ProgressEvent::Failed {
            error: "processor returned Interrupted without being cancelled".to_owned(),
            last_done,
            permanent: false,
        },
        Err(error) => ProgressEvent::Failed {
            error: error.message(),
            last_done,
            permanent: error.is_permanent(),
        },
    }
}
