//! Publishing progress reports on `elk.<ns>.progress.<worker_id>` with JetStream acks.
//!
//! One task owns publishing. It takes batches in the order the worker queued them and publishes a
//! batch completely (acks included) before starting the next one. A batch never holds two reports
//! for the same partition, so per-partition order (checkpoints, then one terminal event) is the
//! queueing order. Within a batch, publishes are pipelined, at most [`MAX_IN_FLIGHT`] un-acked at
//! once (async-nats stalls near 5,000).
//!
//! Every batch carries the [`LeaseDeadline`] of the membership (incarnation) that produced it:
//!
//! * a **terminal** report (`completed`, `failed`, `released`) is retried, with backoff, for as
//!   long as that membership is valid — never given up, since a lost `completed` would leave the
//!   partition `granted` and its job unfinished, and a lost `released` would leave it `revoking`;
//! * a **checkpoint** is retried a few times, then counted as lost: a later checkpoint or the
//!   terminal report carries the same progress;
//! * once the membership is lost, every report of it still queued is **moot** and dropped unsent:
//!   the assigner reclaims those partitions from their last acknowledged checkpoint, and would
//!   reject the reports anyway (protocol §5.6).
//!
//! **Batches.** Once the assigner announces that it accepts them (`progress_batches` in the
//! worker's latest assignment record; [`ProgressPublisher::accept_batches`]), reports queued while
//! a message is in flight are coalesced: the next message carries every report queued meanwhile
//! (up to [`MAX_BATCH_REPORTS`]) as one `ProgressBatch`, which the assigner applies in order.
//! Per-partition order holds since one message is applied in order and messages of coalesced
//! batches never run concurrently. Reports of sampled traces are never coalesced: a message has
//! one trace context.
//!
//! A report of a sampled trace (its run's context, see `crate::trace_context`) is published
//! inside a span `elk.progress.publish` (kind producer, retries included) whose context travels
//! as the W3C `traceparent` / `tracestate` headers; the assigner's apply span is its child.
//! Other reports carry no headers.

use crate::metrics::AckedCheckpoints;
use crate::stats::StatsCounters;
use bytes::Bytes;
use elk_nats::trace::{self, OtelSpan};
use elk_nats::{LeaseDeadline, NatsError};
use elk_protocol::messages::{ProgressBatch, ProgressEvent, ProgressReport};
use elk_protocol::{SCHEMA_VERSION, encode};
use futures::StreamExt;
use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanContext, SpanKind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Most un-acked publishes at once.
pub(crate) const MAX_IN_FLIGHT: usize = 1_024;
/// Most reports in one batch message (about 100 bytes each: far below nats-server's 1 MiB
/// default `max_payload`).
pub(crate) const MAX_BATCH_REPORTS: usize = 512;
/// Attempts at a checkpoint before it is given up.
const CHECKPOINT_ATTEMPTS: u32 = 5;
/// Failed attempts at a terminal report before the worker warns that it is still retrying.
const WARN_AFTER_ATTEMPTS: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// One report to publish, with the trace context of the run that produced it (sampled traces
/// only).
pub(crate) struct Outgoing {
    pub(crate) report: ProgressReport,
    pub(crate) trace: Option<SpanContext>,
}

enum Command {
    Publish {
        reports: Vec<Outgoing>,
        membership: LeaseDeadline,
    },
    Flush(oneshot::Sender<()>),
}

/// Queues reports for the publishing task; cheap to clone.
#[derive(Clone)]
pub(crate) struct ProgressPublisher {
    commands: mpsc::UnboundedSender<Command>,
    /// The assigner accepts batch messages (its latest record said so).
    batches: Arc<AtomicBool>,
}

/// Aborts the publishing task when dropped (a killed worker publishes nothing more).
pub(crate) struct PublisherTask(JoinHandle<()>);

impl Drop for PublisherTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl ProgressPublisher {
    /// Starts the publishing task on the current runtime; it ends once every `ProgressPublisher`
    /// is dropped and the queue is drained, or when the returned guard is dropped.
    pub(crate) fn spawn(
        jetstream: async_nats::jetstream::Context,
        subject: String,
        stats: Arc<StatsCounters>,
        acked: AckedCheckpoints,
    ) -> (ProgressPublisher, PublisherTask) {
        let (commands, receiver) = mpsc::unbounded_channel();
        let batches = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(publish_loop(
            Sinks {
                jetstream,
                subject,
                stats,
                acked,
            },
            batches.clone(),
            receiver,
        ));
        (ProgressPublisher { commands, batches }, PublisherTask(task))
    }

    /// Whether the assigner accepts batch messages, as the latest applied assignment record
    /// says: messages published from now on follow it.
    pub(crate) fn accept_batches(&self, accepted: bool) {
        self.batches.store(accepted, Ordering::Relaxed);
    }

    /// Queues one batch produced under `membership`; at most one report per partition (see the
    /// module comment).
    pub(crate) fn publish(&self, reports: Vec<Outgoing>, membership: &LeaseDeadline) {
        if reports.is_empty() {
            return;
        }
        debug_assert!(
            {
                let mut partitions: Vec<_> = reports
                    .iter()
                    .map(|o| (&o.report.job, o.report.partition))
                    .collect();
                let before = partitions.len();
                partitions.sort();
                partitions.dedup();
                before == partitions.len()
            },
            "a batch holds at most one report per partition"
        );
        let command = Command::Publish {
            reports,
            membership: membership.clone(),
        };
        if self.commands.send(command).is_err() {
            tracing::warn!("progress publisher stopped; report dropped");
        }
    }

    /// Waits until everything queued before this call is acked (or moot, or a given-up
    /// checkpoint).
    pub(crate) async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.commands.send(Command::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }
}

/// What the publishing task owns.
struct Sinks {
    jetstream: async_nats::jetstream::Context,
    subject: String,
    stats: Arc<StatsCounters>,
    acked: AckedCheckpoints,
}

async fn publish_loop(
    sinks: Sinks,
    batches: Arc<AtomicBool>,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let target = Target {
        jetstream: &sinks.jetstream,
        subject: &sinks.subject,
        stats: &sinks.stats,
        acked: &sinks.acked,
    };
    // A command taken from the queue while coalescing that could not join the batch.
    let mut held_back = None;
    loop {
        let command = match held_back.take() {
            Some(command) => command,
            None => match commands.recv().await {
                Some(command) => command,
                None => return,
            },
        };
        match command {
            Command::Flush(done) => {
                let _ = done.send(());
            }
            Command::Publish {
                mut reports,
                membership,
            } => {
                let batching = batches.load(Ordering::Relaxed);
                if batching && untraced(&reports) {
                    held_back = coalesce(&mut reports, &mut commands);
                }
                futures::stream::iter(messages(reports, batching))
                    .map(|message| target.deliver(message, &membership))
                    .buffer_unordered(MAX_IN_FLIGHT)
                    .collect::<()>()
                    .await;
            }
        }
    }
}

fn untraced(reports: &[Outgoing]) -> bool {
    reports.iter().all(|outgoing| outgoing.trace.is_none())
}

/// Appends to `reports` the untraced reports of the same incarnation queued behind them (they
/// were produced while the previous message was in flight), up to [`MAX_BATCH_REPORTS`]; returns
/// the first queued command that could not join, to be handled next (order is kept).
fn coalesce(
    reports: &mut Vec<Outgoing>,
    commands: &mut mpsc::UnboundedReceiver<Command>,
) -> Option<Command> {
    let incarnation = reports.first()?.report.incarnation;
    loop {
        let next = commands.try_recv().ok()?;
        let joins = match &next {
            Command::Publish { reports: more, .. } => {
                untraced(more)
                    && more.iter().all(|o| o.report.incarnation == incarnation)
                    && reports.len() + more.len() <= MAX_BATCH_REPORTS
            }
            Command::Flush(_) => false,
        };
        match next {
            Command::Publish { reports: more, .. } if joins => reports.extend(more),
            other => return Some(other),
        }
    }
}

/// One message to publish: a report alone (with its trace context), or several in a batch.
enum OutgoingMessage {
    Single(Outgoing),
    Batch(Vec<ProgressReport>),
}

/// The messages that carry `reports`: one each without batching; with it, every report of a
/// sampled trace alone and the others in batches of up to [`MAX_BATCH_REPORTS`]. Batches are
/// split only when one command held more than that: its reports are of distinct partitions, so
/// publishing the parts concurrently reorders nothing.
fn messages(reports: Vec<Outgoing>, batching: bool) -> Vec<OutgoingMessage> {
    if !batching {
        return reports.into_iter().map(OutgoingMessage::Single).collect();
    }
    let (traced, plain): (Vec<Outgoing>, Vec<Outgoing>) =
        reports.into_iter().partition(|o| o.trace.is_some());
    let mut messages: Vec<OutgoingMessage> =
        traced.into_iter().map(OutgoingMessage::Single).collect();
    let mut plain = plain.into_iter().peekable();
    while plain.peek().is_some() {
        let chunk: Vec<Outgoing> = plain.by_ref().take(MAX_BATCH_REPORTS).collect();
        if chunk.len() == 1 {
            messages.extend(chunk.into_iter().map(OutgoingMessage::Single));
        } else {
            messages.push(OutgoingMessage::Batch(
                chunk.into_iter().map(|o| o.report).collect(),
            ));
        }
    }
    messages
}

/// Where reports go, and the counters publishing bumps.
#[derive(Clone, Copy)]
struct Target<'a> {
    jetstream: &'a async_nats::jetstream::Context,
    subject: &'a str,
    stats: &'a StatsCounters,
    /// Acked checkpoints go here (the worker's checkpoint lag).
    acked: &'a AckedCheckpoints,
}

impl Target<'_> {
    /// Publishes one message: a report inside its `elk.progress.publish` span (sampled traces
    /// only), or a batch.
    async fn deliver(self, message: OutgoingMessage, membership: &LeaseDeadline) {
        let Outgoing { report, trace } = match message {
            OutgoingMessage::Single(outgoing) => outgoing,
            OutgoingMessage::Batch(reports) => {
                let batch = ProgressBatch {
                    schema: SCHEMA_VERSION,
                    reports,
                };
                let payload = Bytes::from(encode(&batch));
                self.deliver_reports(&batch.reports, payload, None, membership)
                    .await;
                return;
            }
        };
        let payload = Bytes::from(encode(&report));
        let reports = std::slice::from_ref(&report);
        let Some(parent) = trace else {
            self.deliver_reports(reports, payload, None, membership)
                .await;
            return;
        };
        let mut span = trace::start_span(
            "elk.progress.publish",
            SpanKind::Producer,
            Some(&parent),
            vec![
                KeyValue::new("elk.job", report.job.to_string()),
                KeyValue::new("elk.partition", report.partition.get() as i64),
                KeyValue::new("elk.event", event_kind(&report.event)),
                KeyValue::new("messaging.system", "nats"),
                KeyValue::new("messaging.destination.name", self.subject.to_owned()),
            ],
            &[],
        );
        let headers = trace::headers_for(span.span_context());
        let outcome = self
            .deliver_reports(reports, payload, headers, membership)
            .await;
        span.set_attribute(KeyValue::new("elk.outcome", outcome));
        span.end();
    }

    /// Publishes `payload` (carrying `reports`) until acked, under the rules of the module
    /// comment — a message holding a terminal report is retried as one — and says how it ended
    /// (`acked`, `moot`, `given_up`).
    async fn deliver_reports(
        self,
        reports: &[ProgressReport],
        payload: Bytes,
        headers: Option<async_nats::HeaderMap>,
        membership: &LeaseDeadline,
    ) -> &'static str {
        let Some(first) = reports.first() else {
            return "acked";
        };
        let count = reports.len() as u64;
        let terminal = reports
            .iter()
            .any(|report| !matches!(report.event, ProgressEvent::Checkpoint { .. }));
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 0u32;
        loop {
            if !membership.is_valid() {
                StatsCounters::add(&self.stats.reports_moot, count);
                tracing::info!(
                    job = %first.job,
                    partition = %first.partition,
                    event = ?first.event,
                    reports = count,
                    "membership lost: report is moot, dropped unsent"
                );
                return "moot";
            }
            attempt += 1;
            let error = match self.publish_once(payload.clone(), headers.clone()).await {
                Ok(()) => {
                    StatsCounters::add(&self.stats.reports_published, count);
                    StatsCounters::bump(&self.stats.progress_messages);
                    for report in reports {
                        if let ProgressEvent::Checkpoint { last_done } = report.event {
                            let grant = (report.job.clone(), report.partition, report.token);
                            self.acked.acked(grant, last_done);
                        }
                    }
                    return "acked";
                }
                Err(error) => error,
            };
            if !terminal && attempt >= CHECKPOINT_ATTEMPTS {
                StatsCounters::add(&self.stats.reports_lost, count);
                tracing::warn!(
                    subject = %self.subject,
                    job = %first.job,
                    partition = %first.partition,
                    reports = count,
                    %error,
                    "checkpoint given up after retries; the next report carries its progress"
                );
                return "given_up";
            }
            StatsCounters::bump(&self.stats.publish_retries);
            if terminal && attempt == WARN_AFTER_ATTEMPTS {
                tracing::warn!(
                    subject = %self.subject,
                    job = %first.job,
                    partition = %first.partition,
                    event = ?first.event,
                    reports = count,
                    %error,
                    "terminal report not acknowledged yet; retrying while the membership lives"
                );
            } else {
                tracing::debug!(subject = %self.subject, attempt, %error, "publish failed; retrying");
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn publish_once(
        self,
        payload: Bytes,
        headers: Option<async_nats::HeaderMap>,
    ) -> Result<(), NatsError> {
        let subject = self.subject.to_owned();
        let sent = match headers {
            Some(headers) => {
                self.jetstream
                    .publish_with_headers(subject, headers, payload)
                    .await
            }
            None => self.jetstream.publish(subject, payload).await,
        };
        let failed = |error| NatsError::publish(self.subject, error);
        let ack = sent.map_err(failed)?;
        ack.await.map(|_| ()).map_err(failed)
    }
}

fn event_kind(event: &ProgressEvent) -> &'static str {
    match event {
        ProgressEvent::Checkpoint { .. } => "checkpoint",
        ProgressEvent::Completed => "completed",
        ProgressEvent::Failed { .. } => "failed",
        ProgressEvent::Released { .. } => "released",
    }
}
