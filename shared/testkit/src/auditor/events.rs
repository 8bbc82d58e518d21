//! Recording: the events the auditor keeps and the background tasks that collect them.
//!
//! [`follow_kv`] (one task per bucket: `members`, `assignments`, watched with history) and
//! [`follow_progress`] (the auditor's durable pull consumer on the progress stream) append
//! [`AuditEvent`]s to the shared [`Recorded`] log, each stamped with the **server** time of its KV
//! entry or JetStream message, never the local clock. Progress messages are deduplicated by stream
//! sequence (a NATS restart may redeliver them) and acked only once recorded. Values that do not
//! decode and watch errors become `problems` rather than being dropped. The highest KV revision
//! seen per bucket is kept so `OwnershipAuditor::settle` can tell when the log has caught up.
//! Nothing here interprets the events: that is the replay's job.

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::kv::{self, Operation};
use elk_protocol::decode;
use elk_protocol::messages::{AssignmentRecord, MemberRecord, ProgressReport, decode_progress};
use elk_types::{Incarnation, MemberId};
use futures::StreamExt;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
        /// The put's `Nats-TTL`, when it could be read: the member's lease ends at `at + ttl`
        /// unless renewed, whenever the server removes the key.
        ttl: Option<Duration>,
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
    pub(super) fn rank(&self) -> u8 {
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
pub(super) struct Recorded {
    pub(super) events: Vec<AuditEvent>,
    progress_seqs: HashSet<u64>,
    pub(super) members_seq: u64,
    pub(super) assignments_seq: u64,
    /// Highest progress stream sequence recorded (at start: the stream's last sequence when the
    /// consumer was created, which it never delivers).
    pub(super) progress_seq: u64,
    /// Values that did not decode, and watch errors.
    pub(super) problems: Vec<String>,
}

fn entry_time(entry: &kv::Entry) -> SystemTime {
    to_system_time(entry.created.unix_timestamp_nanos())
}

fn to_system_time(nanos: i128) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(u64::try_from(nanos).unwrap_or(0))
}

/// How often a KV watch is checked against its bucket's last sequence.
const STALL_CHECK: Duration = Duration::from_secs(1);

#[derive(Clone, Copy)]
pub(super) enum Source {
    Members,
    Assignments,
}

/// Follows one bucket from `watch` (opened with history before the auditor starts). The buckets
/// keep one revision per key, so a watch must never be blind for long: its ordered consumer is
/// lost when the nats-server restarts, and async-nats notices only after two missed idle
/// heartbeats (10 s), then resumes from the last revision it delivered — every record
/// overwritten meanwhile is gone (found by `elk-bench chaos`: holds missed, their repeats
/// unexplained). So the watch is opened again from the next revision as soon as the client is
/// connected again; revisions already recorded are skipped. On a cluster the client need not
/// reconnect at all (the consumer died with another node): so the bucket's last sequence is also
/// compared with the last revision recorded every [`STALL_CHECK`], and a watch behind it at two
/// checks in a row is opened again too (found by `nats_durability`: every grant after a node kill
/// missed, their repeats "unexplained").
pub(super) async fn follow_kv(
    store: kv::Store,
    mut watch: kv::Watch,
    client: async_nats::Client,
    recorded: Arc<Mutex<Recorded>>,
    source: Source,
) {
    let mut last_revision = 0;
    let statistics = client.statistics();
    let connects = || {
        statistics
            .connects
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let mut watched_since = connects();
    let mut connection_check = tokio::time::interval(Duration::from_millis(20));
    let mut stall_check = tokio::time::interval(STALL_CHECK);
    // Consecutive checks that found the stream ahead, and the last sequence a re-open was made
    // for (a gap left by an expired delete marker never fills: one re-open for it is enough).
    let mut behind = 0;
    let mut reopened_for = 0;
    let mut lease_ttls = LeaseTtls::default();
    loop {
        let entry = tokio::select! {
            entry = watch.next() => entry,
            _ = stall_check.tick() => {
                let Ok(info) = store.stream.get_info().await else { continue };
                let last = info.state.last_sequence;
                behind = if last > last_revision && last != reopened_for { behind + 1 } else { 0 };
                if behind >= 2 {
                    behind = 0;
                    reopened_for = last;
                    match store.watch_all_from_revision(last_revision + 1).await {
                        Ok(reopened) => watch = reopened,
                        Err(error) => {
                            let mut recorded = recorded.lock().expect("auditor lock");
                            recorded.problems.push(format!("watch reopen error: {error}"));
                        }
                    }
                }
                continue;
            }
            _ = connection_check.tick() => {
                let now = connects();
                if now != watched_since
                    && client.connection_state() == async_nats::connection::State::Connected
                {
                    match store.watch_all_from_revision(last_revision + 1).await {
                        Ok(reopened) => {
                            watch = reopened;
                            watched_since = now;
                        }
                        Err(error) => {
                            // Tried again at the next check.
                            let mut recorded = recorded.lock().expect("auditor lock");
                            recorded.problems.push(format!("watch reopen error: {error}"));
                        }
                    }
                }
                continue;
            }
        };
        let Some(entry) = entry else { break };
        let entry = match entry {
            Ok(entry) => entry,
            Err(error) => {
                let mut recorded = recorded.lock().expect("auditor lock");
                recorded.problems.push(format!("watch error: {error}"));
                continue;
            }
        };
        if entry.revision <= last_revision {
            continue;
        }
        last_revision = entry.revision;
        let at = entry_time(&entry);
        let seq = entry.revision;
        let mut kind = kv_event(source, &entry);
        if let Ok(Some(AuditEventKind::MemberPut {
            member,
            incarnation,
            ttl,
        })) = &mut kind
        {
            *ttl = lease_ttls.read(&store, member, *incarnation, seq).await;
        }
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

/// The TTL each member incarnation's key was written with, read from the stored put's `Nats-TTL`
/// header once per incarnation (a renewal keeps it).
///
/// Why the auditor needs it: a member's lease ends at its last renewal + TTL, which is when the
/// election may drop it and its partitions be granted again (the worker fenced itself before),
/// but the server can remove the key much later, and that removal need not be seen at all. On a
/// cluster whose stream leader was killed, expiry timers restart on the new leader (a key seen
/// removed ~6 s after its TTL), and a watch blind meanwhile sees the member's next incarnation
/// replace a delete marker it never delivered (nats_durability: holds of a fenced worker counted
/// as overlapping the re-grants made after its lease ran out).
#[derive(Default)]
struct LeaseTtls {
    known: HashMap<(MemberId, Incarnation), Duration>,
}

impl LeaseTtls {
    async fn read(
        &mut self,
        store: &kv::Store,
        member: &MemberId,
        incarnation: Incarnation,
        revision: u64,
    ) -> Option<Duration> {
        let key = (member.clone(), incarnation);
        if let Some(ttl) = self.known.get(&key) {
            return Some(*ttl);
        }
        // Already replaced (the watch was behind): the next renewal's put is read instead.
        let message = store.stream.get_raw_message(revision).await.ok()?;
        let ttl = elk_nats::stored_ttl(&message.headers)?;
        self.known.insert(key, ttl);
        Some(ttl)
    }
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
                ttl: None,
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

/// Follows the progress stream through the auditor's durable consumer. Pulls ask for a
/// heartbeat every second, and the stream's last sequence is compared with the last one recorded
/// every [`STALL_CHECK`]: a pull stalled at two checks in a row (its consumer's leader died with
/// a cluster node, and the pull went with it) is replaced by a new one (found by
/// `nats_durability`: 8 completions of 200 recorded after a node kill, the audit never settled).
pub(super) async fn follow_progress(
    stream: async_nats::jetstream::stream::Stream,
    consumer: PullConsumer,
    recorded: Arc<Mutex<Recorded>>,
) {
    let mut stall_check = tokio::time::interval(STALL_CHECK);
    loop {
        let mut messages = match consumer
            .stream()
            .heartbeat(Duration::from_secs(1))
            .expires(Duration::from_secs(5))
            .messages()
            .await
        {
            Ok(messages) => messages,
            Err(error) => {
                tracing::debug!(%error, "auditor: cannot pull progress; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let mut behind = 0;
        loop {
            let message = tokio::select! {
                message = messages.next() => message,
                _ = stall_check.tick() => {
                    let recorded_seq = recorded.lock().expect("auditor lock").progress_seq;
                    let Some(stream_last) = last_stream_sequence(&stream).await else {
                        continue;
                    };
                    behind = if stream_last > recorded_seq { behind + 1 } else { 0 };
                    if behind >= 2 {
                        tracing::debug!(recorded_seq, stream_last, "auditor: progress pull stalled; pulling again");
                        break;
                    }
                    continue;
                }
            };
            let Some(message) = message else { break };
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
                if seq > recorded.progress_seq {
                    behind = 0;
                }
                recorded.progress_seq = recorded.progress_seq.max(seq);
                if recorded.progress_seqs.insert(seq) {
                    // A batch message: its reports in order, under the message's sequence.
                    match decode_progress(&message.payload) {
                        Ok(reports) => {
                            recorded
                                .events
                                .extend(reports.into_iter().map(|report| AuditEvent {
                                    at,
                                    seq,
                                    kind: AuditEventKind::Progress(report),
                                }))
                        }
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

/// The last sequence of `stream`, if the server answers within 2 s.
async fn last_stream_sequence(stream: &async_nats::jetstream::stream::Stream) -> Option<u64> {
    let info = tokio::time::timeout(Duration::from_secs(2), stream.get_info())
        .await
        .ok()?
        .ok()?;
    Some(info.state.last_sequence)
}
