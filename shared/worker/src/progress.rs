//! Publishing progress reports on `elk.<ns>.progress.<worker_id>` with JetStream acks.
//!
//! One task owns publishing. It takes batches in the order the worker queued them and publishes a
//! batch completely (acks included) before starting the next one. A batch never holds two reports
//! for the same partition, so per-partition order (checkpoints, then one terminal event) is the
//! queueing order. Within a batch, publishes are pipelined, at most [`MAX_IN_FLIGHT`] un-acked at
//! once (async-nats stalls near 5,000). A failed publish is retried a few times with backoff, then
//! counted as lost and logged: the assigner re-grants a partition whose owner went silent.

use crate::stats::StatsCounters;
use bytes::Bytes;
use elk_protocol::encode;
use elk_protocol::messages::ProgressReport;
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Most un-acked publishes at once.
pub(crate) const MAX_IN_FLIGHT: usize = 1_024;
const PUBLISH_ATTEMPTS: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(50);

enum Command {
    Publish(Vec<ProgressReport>),
    Flush(oneshot::Sender<()>),
}

/// Queues reports for the publishing task; cheap to clone.
#[derive(Clone)]
pub(crate) struct ProgressPublisher {
    commands: mpsc::UnboundedSender<Command>,
}

impl ProgressPublisher {
    /// Starts the publishing task; it ends once every `ProgressPublisher` is dropped and the queue
    /// is drained.
    pub(crate) fn spawn(
        jetstream: async_nats::jetstream::Context,
        subject: String,
        stats: Arc<StatsCounters>,
    ) -> (ProgressPublisher, JoinHandle<()>) {
        let (commands, receiver) = mpsc::unbounded_channel();
        let task = tokio::spawn(publish_loop(jetstream, subject, stats, receiver));
        (ProgressPublisher { commands }, task)
    }

    /// Queues one batch; at most one report per partition (see the module comment).
    pub(crate) fn publish(&self, reports: Vec<ProgressReport>) {
        if reports.is_empty() {
            return;
        }
        debug_assert!(
            {
                let mut partitions: Vec<_> =
                    reports.iter().map(|r| (&r.job, r.partition)).collect();
                let before = partitions.len();
                partitions.sort();
                partitions.dedup();
                before == partitions.len()
            },
            "a batch holds at most one report per partition"
        );
        if self.commands.send(Command::Publish(reports)).is_err() {
            tracing::warn!("progress publisher stopped; report dropped");
        }
    }

    /// Waits until everything queued before this call is acked (or given up on).
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
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    while let Some(command) = commands.recv().await {
        match command {
            Command::Flush(done) => {
                let _ = done.send(());
            }
            Command::Publish(reports) => {
                futures::stream::iter(reports)
                    .map(|report| publish_with_retry(&jetstream, &subject, &stats, report))
                    .buffer_unordered(MAX_IN_FLIGHT)
                    .collect::<()>()
                    .await;
            }
        }
    }
}

async fn publish_with_retry(
    jetstream: &async_nats::jetstream::Context,
    subject: &str,
    stats: &StatsCounters,
    report: ProgressReport,
) {
    let payload = Bytes::from(encode(&report));
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=PUBLISH_ATTEMPTS {
        let outcome = match jetstream.publish(subject.to_owned(), payload.clone()).await {
            Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(error) => Err(error.to_string()),
        };
        match outcome {
            Ok(()) => {
                StatsCounters::bump(&stats.reports_published);
                return;
            }
            Err(error) if attempt < PUBLISH_ATTEMPTS => {
                tracing::debug!(%subject, attempt, %error, "progress publish failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            Err(error) => {
                StatsCounters::bump(&stats.reports_lost);
                tracing::error!(
                    %subject,
                    job = %report.job,
                    partition = %report.partition,
                    event = ?report.event,
                    %error,
                    "progress report lost after retries"
                );
            }
        }
    }
}
