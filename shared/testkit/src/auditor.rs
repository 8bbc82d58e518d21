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
//!   server time (`Entry.created`). The bucket must keep superseded records until the watch has
//!   delivered them: [`OwnershipAuditor::start_on`] raises its history to
//!   [`ASSIGNMENTS_HISTORY`] (production keeps 1 revision per key);
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
//!      (conservative: records written without membership are still audited). So does an
//!      incarnation whose put was never seen and that is newer than the current one (the members
//!      bucket keeps one revision, so a put replaced before the watch delivered it is lost): the
//!      record counts as its put, ending the older incarnation's holds. A record for an
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
//!    * the member key is put with another incarnation (the worker re-joined);
//!    * at the latest, when one of those is seen after the member's lease ran out (its last
//!      put + that put's `Nats-TTL`), the hold ended when the lease ran out: the worker fenced
//!      itself before then and the election may drop it, whenever the server removes the key (a
//!      new stream leader can expire keys seconds late, and a watch blind meanwhile never sees
//!      the delete marker that the next incarnation's put replaced). Renewals a blind watch
//!      missed (the bucket keeps one revision per key) can place that end early: the auditor is
//!      exact only while its watches deliver every revision.
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

mod events;
mod replay;
mod report;

pub use events::{AuditEvent, AuditEventKind};
pub use report::{
    AuditReport, DurableCheckpoint, Hold, HoldEnd, Holder, LostCheckpoint, Overlap, RepeatWindow,
    RepetitionReport,
};

use crate::wait::{TimedOut, wait_until};
use async_nats::jetstream::consumer::{self, PullConsumer};
use async_nats::jetstream::kv;
use elk_nats::{NatsConfig, NatsError, NatsErrorKind, ProvisionConfig, Resources};
use elk_protocol::names::Names;
use elk_types::Namespace;
use events::{Recorded, Source, follow_kv, follow_progress};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::task::JoinHandle;

/// Why the auditor could not start.
#[derive(Debug, thiserror::Error)]
pub enum AuditorError {
    #[error(transparent)]
    Nats(#[from] NatsError),
    #[error("auditor setup failed ({what}): {source}")]
    Setup {
        what: &'static str,
        #[source]
        source: elk_nats::BoxError,
    },
}

fn setup<E: Into<elk_nats::BoxError>>(what: &'static str) -> impl FnOnce(E) -> AuditorError {
    move |error| AuditorError::Setup {
        what,
        source: error.into(),
    }
}

/// As the NATS client's error says (a timeout passes, a refusal does not).
impl elk_nats::Retryable for AuditorError {
    fn is_retryable(&self) -> bool {
        match self {
            AuditorError::Nats(error) => error.is_retryable(),
            AuditorError::Setup { source, .. } => {
                elk_nats::classify(source.as_ref(), NatsErrorKind::Refused)
                    == NatsErrorKind::Unavailable
            }
        }
    }
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

impl OwnershipAuditor {
    /// Connects its own client to `url`, provisions `namespace` and starts following it. Every
    /// watch and the progress consumer exist when this returns.
    pub async fn start(url: &str, namespace: &Namespace) -> Result<Self, AuditorError> {
        let client = elk_nats::connect(&NatsConfig::new(url, "elk-testkit-auditor")).await?;
        let resources = elk_nats::provision(
            client,
            Names::new(namespace.clone()),
            &ProvisionConfig {
                assignments_history: ASSIGNMENTS_HISTORY,
                ..ProvisionConfig::default()
            },
        )
        .await?;
        Self::start_on(resources).await
    }

    /// Follows the namespace of already provisioned `resources`, raising the assignments
    /// bucket's history to [`ASSIGNMENTS_HISTORY`] if it keeps fewer revisions.
    pub async fn start_on(resources: Resources) -> Result<Self, AuditorError> {
        keep_assignment_history(&resources).await?;
        let recorded = Arc::new(Mutex::new(Recorded::default()));
        let members = resources
            .members
            .watch_with_history(">")
            .await
            .map_err(setup("members watch"))?;
        let assignments = resources
            .assignments
            .watch_with_history(">")
            .await
            .map_err(setup("assignments watch"))?;
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
            .map_err(setup("progress consumer"))?;
        // Everything stored before the consumer existed is not the auditor's to wait for.
        recorded.lock().expect("auditor lock").progress_seq = resources
            .progress
            .get_info()
            .await
            .map_err(setup("progress stream info"))?
            .state
            .last_sequence;
        let tasks = vec![
            tokio::spawn(follow_kv(
                resources.members.clone(),
                members,
                resources.client.clone(),
                recorded.clone(),
                Source::Members,
            )),
            tokio::spawn(follow_kv(
                resources.assignments.clone(),
                assignments,
                resources.client.clone(),
                recorded.clone(),
                Source::Assignments,
            )),
            tokio::spawn(follow_progress(
                resources.progress.clone(),
                consumer.clone(),
                recorded.clone(),
            )),
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
        // The consumer's pending counts alone are not enough: the server updates them after a
        // publish is acked, so right after one they may still say 0 (a report went unrecorded
        // in `auditor.rs` tests under load). Wait for the stream's last message itself.
        let progress_last = self
            .resources
            .progress
            .get_info()
            .await
            .map(|info| info.state.last_sequence)
            .unwrap_or(0);
        wait_until("the ownership auditor caught up", deadline, || async {
            let (members_seq, assignments_seq, progress_seq) = {
                let recorded = self.recorded.lock().expect("auditor lock");
                (
                    recorded.members_seq,
                    recorded.assignments_seq,
                    recorded.progress_seq,
                )
            };
            if members_seq < members_last
                || assignments_seq < assignments_last
                || progress_seq < progress_last
            {
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

/// Revisions of each assignment record the audited bucket keeps. With the production default
/// of 1, a record replaced before the auditor's watch delivered it is gone from the stream, and
/// the grant it carried was never seen (a missed hold: `auditor.rs` tests failed under load).
pub const ASSIGNMENTS_HISTORY: i64 = 64;

async fn keep_assignment_history(resources: &Resources) -> Result<(), AuditorError> {
    let mut stream = resources.assignments.stream.clone();
    let info = stream
        .info()
        .await
        .map_err(setup("assignments bucket info"))?;
    if info.config.max_messages_per_subject >= ASSIGNMENTS_HISTORY {
        return Ok(());
    }
    let config = async_nats::jetstream::stream::Config {
        max_messages_per_subject: ASSIGNMENTS_HISTORY,
        ..info.config.clone()
    };
    resources
        .jetstream
        .update_stream(config)
        .await
        .map_err(setup("assignments bucket history"))?;
    Ok(())
}

async fn last_sequence(store: &kv::Store) -> u64 {
    store
        .stream
        .get_info()
        .await
        .map(|info| info.state.last_sequence)
        .unwrap_or(0)
}
