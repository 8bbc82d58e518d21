//! The ownership auditor: follows a namespace's assignment records, member keys and progress
//! reports with their **server** timestamps and checks invariant 2 of ARCHITECTURE §6 (no two
//! workers hold a valid token for the same partition at the same time), plus durable progress
//! (invariant 3) and bounded repetition (invariant 5) against a per-ID counter.
//!
//! Start it **before** the workload: the progress stream has interest retention, so reports acked
//! by the assigner before the auditor's consumer exists are gone, and the KV buckets keep only the
//! latest value of each key.
//!
//! # What it records
//!
//! * every put of `assignments/<worker>` (watch with history), timestamped with the entry's
//!   server time (`Entry.created`);
//! * every change of `members/<id>`: puts (the incarnation), deletes and TTL-expiry markers
//!   (purges), same timestamps;
//! * every report on the progress stream, through the auditor's own durable pull consumer
//!   (`DeliverPolicy::All`, explicit ack after recording, deduplicated by stream sequence),
//!   timestamped with the JetStream `published` time. A durable consumer rather than an ordered
//!   one, so the auditor's interest (and its position) survives a NATS restart.
//!
//! # The hold rule (invariant 2)
//!
//! Events are replayed in server-time order (exact ties: member changes, then progress, then
//! assignment records). A *holder* is a `(worker, incarnation)`. A hold is
//! `(holder, job, partition, token)`:
//!
//! 1. **Start.** An assignment record for `worker` with `incarnation` *applies* when
//!    * its `(epoch, seq)` is greater than that of the last applied record of the same
//!      `(worker, incarnation)` (older or equal ones are ignored, as the worker ignores them), and
//!    * that incarnation is alive: the member key `members/<worker>` currently holds exactly that
//!      incarnation. A member id the auditor has never seen any key event for counts as alive
//!      (conservative: records written without membership are still audited). A record for an
//!      incarnation that is dead or replaced is ignored: such a worker has self-fenced and holds
//!      nothing.
//!
//!    Every grant in an applying record that `(worker, incarnation)` does not already hold, and
//!    whose `(job, partition, token)` it has not ended before, starts a hold at the record's time.
//! 2. **Dropping a partition from the record does not end the hold**: the worker may still run it
//!    until it reports. Neither does a `drain` record.
//! 3. **End.** The first of:
//!    * the holder publishes `completed`, `failed` or `released` with that job, partition and
//!      token (a terminal report also prevents the same token from ever starting again for it);
//!    * the member key of the worker is deleted or expires (TTL marker / purge) while it holds
//!      that incarnation;
//!    * the member key is put with another incarnation (the worker re-joined).
//! 4. **Overlap.** When a hold starts while another `(worker, incarnation)` holds the same
//!    `(job, partition)` (any token), that is a violation. Two holds of the same holder (a re-grant
//!    with a new token while the old run winds down) are not an overlap.
//!
//! # Durable progress (invariant 3)
//!
//! A `checkpoint` (or the `last_done` of `released`/`failed`, or the range end for `completed`)
//! published by a holder *during* its hold is a durable checkpoint. When a new token of a
//! partition starts its first hold, its `resume_from` must be greater than every durable
//! checkpoint published before: otherwise acknowledged progress was lost ([`LostCheckpoint`]).
//!
//! # Bounded repetition (invariant 5)
//!
//! For every hold of a partition after its first, if the previous hold ended in anything but
//! `released`/`completed` (a crash: member expiry, deletion or replacement, a failure, or the
//! previous hold still open), the IDs `resume_from ..= range.max` of the new hold may be processed
//! once more. Any ID processed more often than `1 + windows covering it` is unexplained.

use crate::coverage::{CoverageReport, IdSummary, coverage};
use crate::wait::{TimedOut, wait_until};
use async_nats::jetstream::consumer::{self, PullConsumer};
use async_nats::jetstream::kv::{self, Operation};
use elk_nats::{NatsConfig, NatsError, ProvisionConfig, Resources};
use elk_protocol::decode;
use elk_protocol::messages::{AssignmentRecord, MemberRecord, ProgressEvent, ProgressReport};
use elk_protocol::names::Names;
use elk_types::{
    Epoch, IdRange, Incarnation, JobName, MemberId, Namespace, PartitionId, PartitionLeaseToken,
    ViewSeq,
};
use futures::StreamExt;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::task::JoinHandle;

/// Why the auditor could not start.
#[derive(Debug, thiserror::Error)]
pub enum AuditorError {
    #[error(transparent)]
    Nats(#[from] NatsError),
    #[error("auditor setup failed ({what}): {message}")]
    Setup { what: &'static str, message: String },
}

fn setup(what: &'static str) -> impl FnOnce(String) -> AuditorError {
    move |message| AuditorError::Setup { what, message }
}

/// One recorded event, with its server timestamp.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    /// Server time of the KV entry or JetStream message.
    pub at: SystemTime,
    /// Stream sequence within its source (KV revision or progress stream sequence).
    pub seq: u64,
    pub kind: AuditEventKind,
}

#[derive(Debug, Clone)]
pub enum AuditEventKind {
    MemberPut {
        member: MemberId,
        incarnation: Incarnation,
    },
    /// `members/<id>` deleted (graceful leave).
    MemberDeleted {
        member: MemberId,
    },
    /// `members/<id>` expired (TTL delete marker) or purged.
    MemberExpired {
        member: MemberId,
    },
    Assignment {
        worker: MemberId,
        record: AssignmentRecord,
    },
    Progress(ProgressReport),
}

impl AuditEventKind {
    /// Tie-break rank for events with the same server timestamp.
    fn rank(&self) -> u8 {
        match self {
            AuditEventKind::MemberPut { .. }
            | AuditEventKind::MemberDeleted { .. }
            | AuditEventKind::MemberExpired { .. } => 0,
            AuditEventKind::Progress(_) => 1,
            AuditEventKind::Assignment { .. } => 2,
        }
    }
}

#[derive(Default)]
struct Recorded {
    events: Vec<AuditEvent>,
    progress_seqs: HashSet<u64>,
    members_seq: u64,
    assignments_seq: u64,
    /// Values that did not decode, and watch errors.
    problems: Vec<String>,
}

/// Follows a namespace and checks ownership invariants; see the module docs.
pub struct OwnershipAuditor {
    resources: Resources,
    consumer: PullConsumer,
    consumer_name: String,
    recorded: Arc<Mutex<Recorded>>,
    tasks: Vec<JoinHandle<()>>,
}

impl fmt::Debug for OwnershipAuditor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnershipAuditor")
            .field("namespace", self.resources.names.namespace())
            .field("consumer", &self.consumer_name)
            .finish()
    }
}

fn entry_time(entry: &kv::Entry) -> SystemTime {
    to_system_time(entry.created.unix_timestamp_nanos())
}

fn to_system_time(nanos: i128) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(u64::try_from(nanos).unwrap_or(0))
}

impl OwnershipAuditor {
    /// Connects its own client to `url`, provisions `namespace` and starts following it. Every
    /// watch and the progress consumer exist when this returns.
    pub async fn start(url: &str, namespace: &Namespace) -> Result<Self, AuditorError> {
        let client = elk_nats::connect(&NatsConfig::new(url, "elk-testkit-auditor")).await?;
        let resources = elk_nats::provision(
            client,
            Names::new(namespace.clone()),
            &ProvisionConfig::default(),
        )
        .await?;
        Self::start_on(resources).await
    }

    /// Follows the namespace of already provisioned `resources`.
    pub async fn start_on(resources: Resources) -> Result<Self, AuditorError> {
        let recorded = Arc::new(Mutex::new(Recorded::default()));
        let members = resources
            .members
            .watch_with_history(">")
            .await
            .map_err(|e| setup("members watch")(e.to_string()))?;
        let assignments = resources
            .assignments
            .watch_with_history(">")
            .await
            .map_err(|e| setup("assignments watch")(e.to_string()))?;
        let consumer_name = unique_consumer_name();
        let consumer: PullConsumer = resources
            .progress
            .create_consumer(consumer::pull::Config {
                durable_name: Some(consumer_name.clone()),
                deliver_policy: consumer::DeliverPolicy::All,
                ack_policy: consumer::AckPolicy::Explicit,
                // Short: after a NATS restart the consumer may have lost its last acks, and
                // `settle` waits for their redelivery (deduplicated by stream sequence).
                ack_wait: Duration::from_secs(1),
                max_ack_pending: 100_000,
                inactive_threshold: Duration::from_secs(3600),
                ..Default::default()
            })
            .await
            .map_err(|e| setup("progress consumer")(e.to_string()))?;
        let tasks = vec![
            tokio::spawn(follow_kv(members, recorded.clone(), Source::Members)),
            tokio::spawn(follow_kv(
                assignments,
                recorded.clone(),
                Source::Assignments,
            )),
            tokio::spawn(follow_progress(consumer.clone(), recorded.clone())),
        ];
        Ok(Self {
            resources,
            consumer,
            consumer_name,
            recorded,
            tasks,
        })
    }

    /// Every event recorded so far, in arrival order.
    pub fn events(&self) -> Vec<AuditEvent> {
        self.recorded.lock().expect("auditor lock").events.clone()
    }

    /// Waits until everything stored in the buckets and the stream *now* has been recorded.
    pub async fn settle(&self, deadline: Duration) -> Result<(), TimedOut> {
        let members_last = last_sequence(&self.resources.members).await;
        let assignments_last = last_sequence(&self.resources.assignments).await;
        wait_until("the ownership auditor caught up", deadline, || async {
            let (members_seq, assignments_seq) = {
                let recorded = self.recorded.lock().expect("auditor lock");
                (recorded.members_seq, recorded.assignments_seq)
            };
            if members_seq < members_last || assignments_seq < assignments_last {
                return false;
            }
            matches!(
                self.consumer.get_info().await,
                Ok(info) if info.num_pending == 0 && info.num_ack_pending == 0
            )
        })
        .await
    }

    /// Settles (up to 10 s) and analyses everything recorded. `settled` in the report says
    /// whether the auditor had caught up.
    pub async fn check(&self) -> AuditReport {
        let settled = self.settle(Duration::from_secs(10)).await.is_ok();
        let mut report = self.report_now();
        report.settled = settled;
        report
    }

    /// Analyses what is recorded so far, without waiting.
    pub fn report_now(&self) -> AuditReport {
        let (events, problems) = {
            let recorded = self.recorded.lock().expect("auditor lock");
            (recorded.events.clone(), recorded.problems.clone())
        };
        let mut report = AuditReport::from_events(events);
        report.problems = problems;
        report
    }

    /// Stops following and deletes the auditor's progress consumer (so it holds no interest).
    pub async fn stop(mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
        let _ = self
            .resources
            .progress
            .delete_consumer(&self.consumer_name)
            .await;
    }
}

impl Drop for OwnershipAuditor {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn unique_consumer_name() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "elk-testkit-auditor-{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

async fn last_sequence(store: &kv::Store) -> u64 {
    store
        .stream
        .get_info()
        .await
        .map(|info| info.state.last_sequence)
        .unwrap_or(0)
}

#[derive(Clone, Copy)]
enum Source {
    Members,
    Assignments,
}

async fn follow_kv(mut watch: kv::Watch, recorded: Arc<Mutex<Recorded>>, source: Source) {
    while let Some(entry) = watch.next().await {
        let entry = match entry {
            Ok(entry) => entry,
            Err(error) => {
                let mut recorded = recorded.lock().expect("auditor lock");
                recorded.problems.push(format!("watch error: {error}"));
                continue;
            }
        };
        let at = entry_time(&entry);
        let seq = entry.revision;
        let kind = kv_event(source, &entry);
        let mut recorded = recorded.lock().expect("auditor lock");
        match source {
            Source::Members => recorded.members_seq = recorded.members_seq.max(seq),
            Source::Assignments => recorded.assignments_seq = recorded.assignments_seq.max(seq),
        }
        match kind {
            Ok(Some(kind)) => recorded.events.push(AuditEvent { at, seq, kind }),
            Ok(None) => {}
            Err(problem) => recorded.problems.push(problem),
        }
    }
    recorded
        .lock()
        .expect("auditor lock")
        .problems
        .push("a KV watch ended".to_owned());
}

fn kv_event(source: Source, entry: &kv::Entry) -> Result<Option<AuditEventKind>, String> {
    let id = MemberId::new(entry.key.as_str())
        .map_err(|e| format!("{} key '{}': {e}", entry.bucket, entry.key))?;
    let undecodable = |e: elk_protocol::DecodeError| {
        format!("{}/{} rev {}: {e}", entry.bucket, entry.key, entry.revision)
    };
    Ok(match (source, entry.operation) {
        (Source::Members, Operation::Put) => {
            let record: MemberRecord = decode(&entry.value).map_err(undecodable)?;
            Some(AuditEventKind::MemberPut {
                member: id,
                incarnation: record.incarnation,
            })
        }
        (Source::Members, Operation::Delete) => Some(AuditEventKind::MemberDeleted { member: id }),
        (Source::Members, Operation::Purge) => Some(AuditEventKind::MemberExpired { member: id }),
        (Source::Assignments, Operation::Put) => {
            let record: AssignmentRecord = decode(&entry.value).map_err(undecodable)?;
            Some(AuditEventKind::Assignment { worker: id, record })
        }
        (Source::Assignments, _) => None,
    })
}

async fn follow_progress(consumer: PullConsumer, recorded: Arc<Mutex<Recorded>>) {
    loop {
        let mut messages = match consumer.messages().await {
            Ok(messages) => messages,
            Err(error) => {
                tracing::debug!(%error, "auditor: cannot pull progress; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        while let Some(message) = messages.next().await {
            let message = match message {
                Ok(message) => message,
                Err(error) => {
                    tracing::debug!(%error, "auditor: progress pull error");
                    continue;
                }
            };
            let Ok(info) = message.info() else { continue };
            let seq = info.stream_sequence;
            let at = to_system_time(info.published.unix_timestamp_nanos());
            {
                let mut recorded = recorded.lock().expect("auditor lock");
                if recorded.progress_seqs.insert(seq) {
                    match decode::<ProgressReport>(&message.payload) {
                        Ok(report) => recorded.events.push(AuditEvent {
                            at,
                            seq,
                            kind: AuditEventKind::Progress(report),
                        }),
                        Err(error) => recorded
                            .problems
                            .push(format!("progress seq {seq} ({}): {error}", message.subject)),
                    }
                }
            }
            let _ = message.ack().await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Analysis
// ---------------------------------------------------------------------------------------------

/// A worker incarnation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Holder {
    pub worker: MemberId,
    pub incarnation: Incarnation,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (incarnation {})", self.worker, self.incarnation)
    }
}

/// How a hold ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldEnd {
    Completed,
    Failed {
        last_done: Option<u64>,
    },
    Released {
        last_done: Option<u64>,
    },
    MemberDeleted,
    MemberExpired,
    /// The member key now holds another incarnation.
    Replaced {
        by: Incarnation,
    },
}

impl HoldEnd {
    /// The holder handed the partition back cleanly (no IDs can be processed twice).
    pub fn is_clean(&self) -> bool {
        matches!(self, HoldEnd::Completed | HoldEnd::Released { .. })
    }
}

impl fmt::Display for HoldEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HoldEnd::Completed => f.write_str("completed"),
            HoldEnd::Failed { last_done } => write!(f, "failed (last_done {last_done:?})"),
            HoldEnd::Released { last_done } => write!(f, "released (last_done {last_done:?})"),
            HoldEnd::MemberDeleted => f.write_str("member key deleted"),
            HoldEnd::MemberExpired => f.write_str("member key expired"),
            HoldEnd::Replaced { by } => write!(f, "member re-joined as incarnation {by}"),
        }
    }
}

/// One holder's hold of one grant, from the record that first listed it until it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub holder: Holder,
    pub job: JobName,
    pub partition: PartitionId,
    pub token: PartitionLeaseToken,
    pub range: IdRange,
    pub resume_from: u64,
    /// Epoch of the record that started the hold.
    pub epoch: Epoch,
    pub from: SystemTime,
    pub until: Option<(SystemTime, HoldEnd)>,
}

/// Two different holders holding the same partition at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlap {
    pub job: JobName,
    pub partition: PartitionId,
    /// The hold already in place.
    pub earlier: Hold,
    /// The hold whose start created the overlap.
    pub later: Hold,
    /// When the overlap began (the later hold's start).
    pub at: SystemTime,
    /// When the first of the two holds ended (`None`: still overlapping at the end of the audit).
    pub until: Option<SystemTime>,
}

/// A new grant resuming at or before a durable checkpoint (acknowledged progress lost).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostCheckpoint {
    pub job: JobName,
    pub partition: PartitionId,
    /// The new grant.
    pub hold: Hold,
    /// The highest durable checkpoint published before it.
    pub checkpoint: u64,
    pub checkpoint_by: Holder,
    pub checkpoint_at: SystemTime,
}

/// A durable checkpoint: progress reported by the holder during its hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurableCheckpoint {
    pub at: SystemTime,
    pub holder: Holder,
    pub token: PartitionLeaseToken,
    pub last_done: u64,
}

/// IDs of a partition that may be processed once more, because the previous hold ended without
/// a clean hand-back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepeatWindow {
    pub partition: PartitionId,
    pub token: PartitionLeaseToken,
    pub first_id: u64,
    pub last_id: u64,
    /// How the previous hold ended (`None`: it had not ended).
    pub after: Option<HoldEnd>,
}

/// Invariant 5 checked against a per-ID counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepetitionReport {
    pub job: JobName,
    pub coverage: CoverageReport,
    pub windows: Vec<RepeatWindow>,
    /// IDs processed more often than `1 + windows covering them`.
    pub unexplained: IdSummary,
}

/// Result of [`OwnershipAuditor::check`] / [`AuditReport::from_events`].
#[derive(Debug, Clone, Default)]
pub struct AuditReport {
    /// Invariant 2 violations.
    pub overlaps: Vec<Overlap>,
    /// Invariant 3 violations.
    pub lost_checkpoints: Vec<LostCheckpoint>,
    /// Holds started (grants that took effect).
    pub grants_seen: u64,
    pub releases_seen: u64,
    pub completions_seen: u64,
    pub failures_seen: u64,
    pub checkpoints_seen: u64,
    /// Member keys that expired (TTL marker) or were purged.
    pub expiries_seen: u64,
    /// Member keys deleted (graceful leaves).
    pub member_deletes_seen: u64,
    /// Assignment records ignored: stale `(epoch, seq)` or for a dead/replaced incarnation.
    pub records_ignored: u64,
    /// Progress reports from someone not holding that grant at that time (stale token, zombie).
    pub unheld_reports: u64,
    /// Every hold, in start order.
    pub holds: Vec<Hold>,
    /// Whether the auditor had caught up with the server when the report was made.
    pub settled: bool,
    /// Undecodable values and watch errors.
    pub problems: Vec<String>,
    checkpoints: BTreeMap<(JobName, PartitionId), Vec<DurableCheckpoint>>,
    origin: Option<SystemTime>,
}

type HoldKey = (Holder, JobName, PartitionId, PartitionLeaseToken);

#[derive(Default)]
struct Replay {
    report: AuditReport,
    /// Alive incarnation per member id that has been seen (`None`: deleted or expired).
    members: HashMap<MemberId, Option<Incarnation>>,
    last_applied: HashMap<Holder, (Epoch, ViewSeq)>,
    /// Open holds by key → index into `report.holds`.
    open: HashMap<HoldKey, usize>,
    /// Open hold indices per partition.
    open_by_partition: HashMap<(JobName, PartitionId), Vec<usize>>,
    ended: HashSet<HoldKey>,
    /// Overlaps as (earlier, later, at).
    overlaps: Vec<(usize, usize, SystemTime)>,
    /// Tokens that already had a hold, per partition (first hold of a token checks durability).
    tokens_seen: HashSet<(JobName, PartitionId, PartitionLeaseToken)>,
}

impl Replay {
    fn start_hold(&mut self, hold: Hold) {
        let key = (
            hold.holder.clone(),
            hold.job.clone(),
            hold.partition,
            hold.token,
        );
        if self.open.contains_key(&key) || self.ended.contains(&key) {
            return;
        }
        let partition = (hold.job.clone(), hold.partition);
        if self
            .tokens_seen
            .insert((hold.job.clone(), hold.partition, hold.token))
            && let Some(best) = self
                .report
                .checkpoints
                .get(&partition)
                .and_then(|cps| cps.iter().max_by_key(|cp| cp.last_done))
            && hold.resume_from <= best.last_done
        {
            self.report.lost_checkpoints.push(LostCheckpoint {
                job: hold.job.clone(),
                partition: hold.partition,
                hold: hold.clone(),
                checkpoint: best.last_done,
                checkpoint_by: best.holder.clone(),
                checkpoint_at: best.at,
            });
        }
        let index = self.report.holds.len();
        let open = self.open_by_partition.entry(partition).or_default();
        for &other in open.iter() {
            if self.report.holds[other].holder != hold.holder {
                self.overlaps.push((other, index, hold.from));
            }
        }
        open.push(index);
        self.open.insert(key, index);
        self.report.holds.push(hold);
        self.report.grants_seen += 1;
    }

    fn end_hold(&mut self, key: &HoldKey, at: SystemTime, end: HoldEnd) -> bool {
        self.ended.insert(key.clone());
        let Some(index) = self.open.remove(key) else {
            return false;
        };
        self.report.holds[index].until = Some((at, end));
        if let Some(open) = self.open_by_partition.get_mut(&(key.1.clone(), key.2)) {
            open.retain(|&i| i != index);
        }
        true
    }

    fn end_holder(&mut self, holder: &Holder, at: SystemTime, end: HoldEnd) {
        let keys: Vec<HoldKey> = self
            .open
            .keys()
            .filter(|key| &key.0 == holder)
            .cloned()
            .collect();
        for key in keys {
            self.end_hold(&key, at, end.clone());
        }
    }

    fn holds(&self, key: &HoldKey) -> bool {
        self.open.contains_key(key)
    }

    fn apply(&mut self, event: AuditEvent) {
        let at = event.at;
        let expired = matches!(event.kind, AuditEventKind::MemberExpired { .. });
        match event.kind {
            AuditEventKind::MemberPut {
                member,
                incarnation,
            } => {
                let previous = self.members.insert(member.clone(), Some(incarnation));
                if let Some(Some(old)) = previous
                    && old != incarnation
                {
                    let holder = Holder {
                        worker: member,
                        incarnation: old,
                    };
                    self.end_holder(&holder, at, HoldEnd::Replaced { by: incarnation });
                }
            }
            AuditEventKind::MemberDeleted { member } | AuditEventKind::MemberExpired { member } => {
                let end = if expired {
                    self.report.expiries_seen += 1;
                    HoldEnd::MemberExpired
                } else {
                    self.report.member_deletes_seen += 1;
                    HoldEnd::MemberDeleted
                };
                if let Some(Some(old)) = self.members.insert(member.clone(), None) {
                    let holder = Holder {
                        worker: member,
                        incarnation: old,
                    };
                    self.end_holder(&holder, at, end);
                }
            }
            AuditEventKind::Assignment { worker, record } => {
                let holder = Holder {
                    worker: worker.clone(),
                    incarnation: record.incarnation,
                };
                let alive = match self.members.get(&worker) {
                    None => true,
                    Some(current) => *current == Some(record.incarnation),
                };
                let version = (record.epoch, record.seq);
                let fresh = self
                    .last_applied
                    .get(&holder)
                    .is_none_or(|last| version > *last);
                if !alive || !fresh {
                    self.report.records_ignored += 1;
                    return;
                }
                self.last_applied.insert(holder.clone(), version);
                for grant in record.grants {
                    self.start_hold(Hold {
                        holder: holder.clone(),
                        job: grant.job,
                        partition: grant.partition,
                        token: grant.token,
                        range: grant.range,
                        resume_from: grant.resume_from,
                        epoch: record.epoch,
                        from: at,
                        until: None,
                    });
                }
            }
            AuditEventKind::Progress(report) => self.apply_progress(at, report),
        }
    }

    fn apply_progress(&mut self, at: SystemTime, report: ProgressReport) {
        let holder = Holder {
            worker: report.worker,
            incarnation: report.incarnation,
        };
        let key: HoldKey = (holder, report.job, report.partition, report.token);
        let held = self.holds(&key);
        let range_end = self
            .open
            .get(&key)
            .map(|&i| self.report.holds[i].range.last());
        let (durable, end) = match &report.event {
            ProgressEvent::Checkpoint { last_done } => {
                self.report.checkpoints_seen += 1;
                (Some(*last_done), None)
            }
            ProgressEvent::Completed => {
                self.report.completions_seen += 1;
                (range_end, Some(HoldEnd::Completed))
            }
            ProgressEvent::Failed { last_done, .. } => {
                self.report.failures_seen += 1;
                (
                    *last_done,
                    Some(HoldEnd::Failed {
                        last_done: *last_done,
                    }),
                )
            }
            ProgressEvent::Released { last_done } => {
                self.report.releases_seen += 1;
                (
                    *last_done,
                    Some(HoldEnd::Released {
                        last_done: *last_done,
                    }),
                )
            }
        };
        if !held {
            self.report.unheld_reports += 1;
        } else if let Some(last_done) = durable {
            self.report
                .checkpoints
                .entry((key.1.clone(), key.2))
                .or_default()
                .push(DurableCheckpoint {
                    at,
                    holder: key.0.clone(),
                    token: key.3,
                    last_done,
                });
        }
        if let Some(end) = end {
            self.end_hold(&key, at, end);
        }
    }
}

impl AuditReport {
    /// Replays `events` (any order; sorted here by server time) under the hold rule of the module
    /// docs.
    pub fn from_events(mut events: Vec<AuditEvent>) -> AuditReport {
        events.sort_by_key(|event| (event.at, event.kind.rank(), event.seq));
        let mut replay = Replay::default();
        replay.report.origin = events.first().map(|event| event.at);
        replay.report.settled = true;
        for event in events {
            replay.apply(event);
        }
        let Replay {
            mut report,
            overlaps,
            ..
        } = replay;
        report.overlaps = overlaps
            .into_iter()
            .map(|(earlier, later, at)| {
                let earlier = report.holds[earlier].clone();
                let later = report.holds[later].clone();
                let until = match (&earlier.until, &later.until) {
                    (Some((a, _)), Some((b, _))) => Some(*a.min(b)),
                    (Some((a, _)), None) | (None, Some((a, _))) => Some(*a),
                    (None, None) => None,
                };
                Overlap {
                    job: earlier.job.clone(),
                    partition: earlier.partition,
                    earlier,
                    later,
                    at,
                    until,
                }
            })
            .collect();
        report
    }

    /// Time relative to the first recorded event, for messages.
    fn rel(&self, at: SystemTime) -> String {
        let origin = self.origin.unwrap_or(at);
        match at.duration_since(origin) {
            Ok(d) => format!("+{:.3}s", d.as_secs_f64()),
            Err(e) => format!("-{:.3}s", e.duration().as_secs_f64()),
        }
    }

    fn describe_hold(&self, hold: &Hold) -> String {
        let until = match &hold.until {
            Some((at, end)) => format!("until {} ({end})", self.rel(*at)),
            None => "still held at the end".to_owned(),
        };
        format!(
            "{} token {} (epoch {}, resume_from {}) from {} {until}",
            hold.holder,
            hold.token,
            hold.epoch,
            hold.resume_from,
            self.rel(hold.from)
        )
    }

    /// Human-readable description of an overlap.
    pub fn describe_overlap(&self, overlap: &Overlap) -> String {
        let until = overlap
            .until
            .map_or_else(|| "the end of the audit".to_owned(), |at| self.rel(at));
        format!(
            "job {} partition {} held twice from {} to {}:\n    held by    {}\n    granted to {}",
            overlap.job,
            overlap.partition,
            self.rel(overlap.at),
            until,
            self.describe_hold(&overlap.earlier),
            self.describe_hold(&overlap.later)
        )
    }

    /// Panics describing every overlap (invariant 2), if any.
    pub fn assert_no_overlap(&self) {
        if self.overlaps.is_empty() {
            return;
        }
        let details: Vec<String> = self
            .overlaps
            .iter()
            .take(10)
            .map(|overlap| format!("  - {}", self.describe_overlap(overlap)))
            .collect();
        panic!(
            "ownership overlap (invariant 2): {} overlaps{}\n{}\n{}",
            self.overlaps.len(),
            if self.overlaps.len() > 10 {
                " (first 10 shown)"
            } else {
                ""
            },
            details.join("\n"),
            self.summary()
        );
    }

    /// Panics if a new grant resumed at or before a durable checkpoint (invariant 3).
    pub fn assert_durable_progress(&self) {
        if self.lost_checkpoints.is_empty() {
            return;
        }
        let details: Vec<String> = self
            .lost_checkpoints
            .iter()
            .take(10)
            .map(|lost| {
                format!(
                    "  - job {} partition {}: checkpoint {} by {} at {} lost: {}",
                    lost.job,
                    lost.partition,
                    lost.checkpoint,
                    lost.checkpoint_by,
                    self.rel(lost.checkpoint_at),
                    self.describe_hold(&lost.hold)
                )
            })
            .collect();
        panic!(
            "durable progress violated (invariant 3): {} grants resumed at or before an acknowledged checkpoint\n{}",
            self.lost_checkpoints.len(),
            details.join("\n")
        );
    }

    /// Durable checkpoints of a partition (`last_done` values, in server-time order): progress
    /// its holders published while holding it, including `released`/`failed` `last_done` and the
    /// range end on `completed`.
    pub fn checkpoints_of(&self, job: &JobName, partition: PartitionId) -> Vec<u64> {
        self.durable_checkpoints_of(job, partition)
            .iter()
            .map(|cp| cp.last_done)
            .collect()
    }

    /// [`AuditReport::checkpoints_of`] with who published each and when.
    pub fn durable_checkpoints_of(
        &self,
        job: &JobName,
        partition: PartitionId,
    ) -> &[DurableCheckpoint] {
        self.checkpoints
            .get(&(job.clone(), partition))
            .map_or(&[], Vec::as_slice)
    }

    /// The highest durable checkpoint of every partition that has one.
    pub fn highest_checkpoints(&self) -> BTreeMap<(JobName, PartitionId), u64> {
        self.checkpoints
            .iter()
            .filter_map(|(key, cps)| Some((key.clone(), cps.iter().map(|cp| cp.last_done).max()?)))
            .collect()
    }

    /// Every hold of a partition, in start order.
    pub fn holds_of(&self, job: &JobName, partition: PartitionId) -> Vec<&Hold> {
        self.holds
            .iter()
            .filter(|hold| &hold.job == job && hold.partition == partition)
            .collect()
    }

    /// Where IDs of `job` may legitimately be processed again (see the module docs).
    pub fn repeat_windows(&self, job: &JobName) -> Vec<RepeatWindow> {
        let mut by_partition: BTreeMap<PartitionId, Vec<&Hold>> = BTreeMap::new();
        for hold in self.holds.iter().filter(|hold| &hold.job == job) {
            by_partition.entry(hold.partition).or_default().push(hold);
        }
        let mut windows = Vec::new();
        for (partition, holds) in by_partition {
            for pair in holds.windows(2) {
                let (previous, next) = (pair[0], pair[1]);
                let after = previous.until.as_ref().map(|(_, end)| end.clone());
                if after.as_ref().is_some_and(HoldEnd::is_clean) {
                    continue;
                }
                if next.resume_from > next.range.last() {
                    continue;
                }
                windows.push(RepeatWindow {
                    partition,
                    token: next.token,
                    first_id: next.resume_from.max(next.range.first()),
                    last_id: next.range.last(),
                    after,
                });
            }
        }
        windows
    }

    /// Checks a per-ID counter of `job` (`counts[i]` = times ID `first_id + i` was processed)
    /// against the repeat windows (invariant 5).
    pub fn repetition(&self, job: &JobName, first_id: u64, counts: &[u32]) -> RepetitionReport {
        let windows = self.repeat_windows(job);
        let mut allowed = vec![1u32; counts.len()];
        let last_index = counts.len() as u64;
        for window in &windows {
            let from = window.first_id.saturating_sub(first_id);
            let to = window
                .last_id
                .saturating_sub(first_id)
                .saturating_add(1)
                .min(last_index);
            if window.last_id < first_id || from >= to {
                continue;
            }
            for slot in &mut allowed[from as usize..to as usize] {
                *slot += 1;
            }
        }
        let unexplained = IdSummary::from_sorted_ids(
            counts
                .iter()
                .zip(&allowed)
                .enumerate()
                .filter(|(_, (count, allowed))| count > allowed)
                .map(|(i, _)| first_id + i as u64),
        );
        RepetitionReport {
            job: job.clone(),
            coverage: coverage(first_id, counts),
            windows,
            unexplained,
        }
    }

    /// Panics if some ID of `job` was processed more often than crashes allow (invariant 5).
    pub fn assert_bounded_repetition(&self, job: &JobName, first_id: u64, counts: &[u32]) {
        let report = self.repetition(job, first_id, counts);
        if report.unexplained.is_empty() {
            return;
        }
        let windows: Vec<String> = report
            .windows
            .iter()
            .take(10)
            .map(|w| {
                let after = w
                    .after
                    .as_ref()
                    .map_or_else(|| "an open hold".to_owned(), ToString::to_string);
                format!(
                    "partition {} token {}: {}-{} after {after}",
                    w.partition, w.token, w.first_id, w.last_id
                )
            })
            .collect();
        panic!(
            "bounded repetition violated (invariant 5) for job {job}: unexplained repeats: {}\n  {}\n  allowed windows ({}): {}",
            report.unexplained,
            report.coverage,
            report.windows.len(),
            if windows.is_empty() {
                "none".to_owned()
            } else {
                windows.join("; ")
            }
        );
    }

    /// One line of counters.
    pub fn summary(&self) -> String {
        format!(
            "audit: {} grants, {} releases, {} completions, {} failures, {} checkpoints, {} expiries, {} member deletes, {} records ignored, {} unheld reports, {} overlaps, {} lost checkpoints{}{}",
            self.grants_seen,
            self.releases_seen,
            self.completions_seen,
            self.failures_seen,
            self.checkpoints_seen,
            self.expiries_seen,
            self.member_deletes_seen,
            self.records_ignored,
            self.unheld_reports,
            self.overlaps.len(),
            self.lost_checkpoints.len(),
            if self.settled { "" } else { " (NOT settled)" },
            if self.problems.is_empty() {
                String::new()
            } else {
                format!("; problems: {:?}", self.problems)
            }
        )
    }
}

impl fmt::Display for AuditReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary())?;
        for overlap in &self.overlaps {
            write!(f, "\n  - {}", self.describe_overlap(overlap))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use elk_protocol::SCHEMA_VERSION;
    use elk_protocol::messages::Grant;

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000) + Duration::from_millis(ms)
    }

    fn id(name: &str) -> MemberId {
        MemberId::new(name).unwrap()
    }

    fn job() -> JobName {
        JobName::new("job").unwrap()
    }

    fn put(ms: u64, member: &str, incarnation: u64) -> AuditEvent {
        AuditEvent {
            at: at(ms),
            seq: ms,
            kind: AuditEventKind::MemberPut {
                member: id(member),
                incarnation: Incarnation(incarnation),
            },
        }
    }

    fn record(
        ms: u64,
        worker: &str,
        incarnation: u64,
        (epoch, seq): (u64, u64),
        grants: &[(u64, u64, u64)],
    ) -> AuditEvent {
        AuditEvent {
            at: at(ms),
            seq: ms,
            kind: AuditEventKind::Assignment {
                worker: id(worker),
                record: AssignmentRecord {
                    schema: SCHEMA_VERSION,
                    incarnation: Incarnation(incarnation),
                    epoch: Epoch(epoch),
                    seq: ViewSeq(seq),
                    grants: grants
                        .iter()
                        .map(|&(partition, token, resume_from)| Grant {
                            job: job(),
                            partition: PartitionId(partition),
                            range: IdRange::new(partition * 100 - 99, partition * 100).unwrap(),
                            resume_from,
                            token: PartitionLeaseToken(token),
                        })
                        .collect(),
                    drain: false,
                },
            },
        }
    }

    fn progress(
        ms: u64,
        worker: &str,
        incarnation: u64,
        (partition, token): (u64, u64),
        event: ProgressEvent,
    ) -> AuditEvent {
        AuditEvent {
            at: at(ms),
            seq: ms,
            kind: AuditEventKind::Progress(ProgressReport {
                schema: SCHEMA_VERSION,
                worker: id(worker),
                incarnation: Incarnation(incarnation),
                job: job(),
                partition: PartitionId(partition),
                token: PartitionLeaseToken(token),
                event,
            }),
        }
    }

    #[test]
    fn a_rejoin_as_a_new_incarnation_ends_the_old_holds() {
        let report = AuditReport::from_events(vec![
            put(0, "a", 1),
            put(1, "b", 1),
            record(10, "a", 1, (1, 1), &[(1, 100, 1)]),
            put(20, "a", 2),
            record(30, "b", 1, (1, 1), &[(1, 101, 1)]),
        ]);
        report.assert_no_overlap();
        assert_eq!(
            report.holds[0].until,
            Some((at(20), HoldEnd::Replaced { by: Incarnation(2) }))
        );
        // The old incarnation was not cleanly handed back: partition 1 may repeat from 1.
        let windows = report.repeat_windows(&job());
        assert_eq!(windows.len(), 1);
        assert_eq!((windows[0].first_id, windows[0].last_id), (1, 100));
    }

    #[test]
    fn stale_records_are_ignored_and_events_are_replayed_in_server_time_order() {
        // Given out of order: sorting by server time matters.
        let report = AuditReport::from_events(vec![
            record(40, "b", 1, (2, 1), &[(1, 201, 51)]),
            put(0, "a", 1),
            put(1, "b", 1),
            record(10, "a", 1, (2, 5), &[(1, 200, 1)]),
            progress(
                20,
                "a",
                1,
                (1, 200),
                ProgressEvent::Released {
                    last_done: Some(50),
                },
            ),
            // An older epoch's late write granting it again: ignored.
            record(30, "a", 1, (1, 9), &[(1, 300, 1)]),
            // Same (epoch, seq) again: ignored too.
            record(35, "a", 1, (2, 5), &[(1, 301, 1)]),
        ]);
        report.assert_no_overlap();
        report.assert_durable_progress();
        assert_eq!(report.records_ignored, 2);
        assert_eq!(report.grants_seen, 2);
    }

    #[test]
    fn records_for_never_seen_members_count_as_held() {
        let report = AuditReport::from_events(vec![
            record(10, "a", 1, (1, 1), &[(1, 100, 1)]),
            record(20, "b", 1, (1, 1), &[(1, 101, 1)]),
        ]);
        assert_eq!(report.overlaps.len(), 1);
        let text = std::panic::catch_unwind(|| report.assert_no_overlap())
            .unwrap_err()
            .downcast::<String>()
            .unwrap();
        assert!(
            text.contains("from +0.010s to the end of the audit"),
            "{text}"
        );
        assert!(
            text.contains("granted to b (incarnation 1) token 101"),
            "{text}"
        );
    }

    #[test]
    fn a_failure_allows_repetition_after_its_checkpoint_only() {
        let report = AuditReport::from_events(vec![
            put(0, "a", 1),
            record(10, "a", 1, (1, 1), &[(1, 100, 1)]),
            progress(
                20,
                "a",
                1,
                (1, 100),
                ProgressEvent::Checkpoint { last_done: 40 },
            ),
            progress(
                30,
                "a",
                1,
                (1, 100),
                ProgressEvent::Failed {
                    error: "boom".into(),
                    last_done: Some(40),
                },
            ),
            record(40, "a", 1, (1, 2), &[(1, 101, 41)]),
            progress(50, "a", 1, (1, 101), ProgressEvent::Completed),
        ]);
        report.assert_no_overlap();
        report.assert_durable_progress();
        assert_eq!(report.failures_seen, 1);
        assert_eq!(
            report.checkpoints_of(&job(), PartitionId(1)),
            vec![40, 40, 100]
        );
        let mut counts = vec![1u32; 100];
        counts[40..60].fill(2);
        report.assert_bounded_repetition(&job(), 1, &counts);
        counts[39] = 2;
        let repetition = report.repetition(&job(), 1, &counts);
        assert_eq!(repetition.unexplained.first_ranges, vec![(40, 40)]);
    }
}
