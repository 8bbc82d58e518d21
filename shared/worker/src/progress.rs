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
//! A report of a sampled trace (its run's context, see `crate::trace_context`) is published
//! inside a span `elk.progress.publish` (kind producer, retries included) whose context travels
//! as the W3C `traceparent` / `tracestate` headers; the assigner's apply span is its child.
//! Other reports carry no headers.

use crate::metrics::AckedCheckpoints;
use crate::stats::StatsCounters;
use bytes::Bytes;
use elk_nats::trace::{self, OtelSpan};
use elk_nats::{LeaseDeadline, NatsError};
use elk_protocol::encode;
use elk_protocol::messages::{ProgressEvent, ProgressReport};
use futures::StreamExt;
use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanContext, SpanKind};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Most un-acked publishes at once.
pub(crate) const MAX_IN_FLIGHT: usize = 1_024;
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
        let task = tokio::spawn(publish_loop(jetstream, subject, stats, acked, receiver));
        (ProgressPublisher { commands }, PublisherTask(task))
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

async fn publish_loop(
    jetstream: async_nats::jetstream::Context,
    subject: String,
    stats: Arc<StatsCounters>,
    acked: AckedCheckpoints,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let target = Target {
        jetstream: &jetstream,
        subject: &subject,
        stats: &stats,
        acked: &acked,
    };
    while let Some(command) = commands.recv().await {
        match command {
            Command::Flush(done) => {
                let _ = done.send(());
            }
            Command::Publish {
                reports,
                membership,
            } => {
                futures::stream::iter(reports)
                    .map(|report| target.deliver(report, &membership))
                    .buffer_unordered(MAX_IN_FLIGHT)
                    .collect::<()>()
                    .await;
            }
        }
    }
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
    /// Publishes a report inside its `elk.progress.publish` span (sampled traces only).
    async fn deliver(self, outgoing: Outgoing, membership: &LeaseDeadline) {
        let Outgoing { report, trace } = outgoing;
        let Some(parent) = trace else {
            self.deliver_report(&report, None, membership).await;
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
        let outcome = self.deliver_report(&report, headers, membership).await;
        span.set_attribute(KeyValue::new("elk.outcome", outcome));
        span.end();
    }

    /// Publishes `report` until acked, under the rules of the module comment; says how it ended
    /// (`acked`, `moot`, `given_up`).
    async fn deliver_report(
        self,
        report: &ProgressReport,
        headers: Option<async_nats::HeaderMap>,
        membership: &LeaseDeadline,
    ) -> &'static str {
        let terminal = !matches!(report.event, ProgressEvent::Checkpoint { .. });
        let payload = Bytes::from(encode(report));
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 0u32;
        loop {
            if !membership.is_valid() {
                StatsCounters::bump(&self.stats.reports_moot);
                tracing::info!(
                    job = %report.job,
                    partition = %report.partition,
                    event = ?report.event,
                    "membership lost: report is moot, dropped unsent"
                );
                return "moot";
            }
            attempt += 1;
            let error = match self.publish_once(payload.clone(), headers.clone()).await {
                Ok(()) => {
                    StatsCounters::bump(&self.stats.reports_published);
                    if let ProgressEvent::Checkpoint { last_done } = report.event {
                        let grant = (report.job.clone(), report.partition, report.token);
                        self.acked.acked(grant, last_done);
                    }
                    return "acked";
                }
                Err(error) => error,
            };
            if !terminal && attempt >= CHECKPOINT_ATTEMPTS {
                StatsCounters::bump(&self.stats.reports_lost);
                tracing::warn!(
                    subject = %self.subject,
                    job = %report.job,
                    partition = %report.partition,
                    %error,
                    "checkpoint given up after retries; the next report carries its progress"
                );
                return "given_up";
            }
            StatsCounters::bump(&self.stats.publish_retries);
            if terminal && attempt == WARN_AFTER_ATTEMPTS {
                tracing::warn!(
                    subject = %self.subject,
                    job = %report.job,
                    partition = %report.partition,
                    event = ?report.event,
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
