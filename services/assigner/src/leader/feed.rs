//! The leader's progress feed: the durable consumer of the progress stream and its message
//! stream, kept alive for the whole term. When the consumer disappears (deleted by any client the
//! server lets use the JetStream API, or lost with a server's store) or its message stream ends
//! or fails, the feed re-attaches to it or re-creates it with provisioning's own configuration
//! ([`elk_nats::progress_consumer_config`]) and resumes — with a back-off, a warning and
//! `elk_assigner_progress_consumer_recreated_total` — instead of ending the term. Nothing is
//! lost meanwhile: the stream keeps every report whether a consumer exists or not (limits
//! retention), and the re-created consumer starts from the stream's first report, which no
//! later than the first one not yet applied, since only applied reports are trimmed.
//!
//! The feed also trims the stream ([`ProgressFeed::trim`]): it purges the reports below the
//! lowest ack floor of the stream's consumers, so the stream holds what some consumer has not
//! acknowledged yet (what interest retention kept, without its discarding reports nobody
//! consumed), and counts the reports that vanished before the leader saw them
//! (`elk_assigner_progress_lost_total`: stream sequences skipped by fresh deliveries).

use crate::error::{AssignerError, JetstreamOperation};
use crate::metrics::AssignerMetrics;
use async_nats::jetstream::Message;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::consumer::pull::Stream as Messages;
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::stream::{RetentionPolicy, Stream};
use elk_protocol::names::PROGRESS_CONSUMER;
use elk_runtime::RepeatLimiter;
use futures::{FutureExt, StreamExt, TryStreamExt};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The first pause before re-opening the feed after a failed attempt; doubles up to
/// [`MAX_REOPEN_PAUSE`].
const FIRST_REOPEN_PAUSE: Duration = Duration::from_millis(100);
const MAX_REOPEN_PAUSE: Duration = Duration::from_secs(5);
/// How often the feed trims applied reports at most (two JetStream requests each time).
const TRIM_INTERVAL: Duration = Duration::from_secs(1);
/// The feed's warnings (a client deleting the consumer in a loop must not flood the log): one
/// per kind and minute, with the count held back; the metrics count every event.
static WARNINGS: RepeatLimiter = RepeatLimiter::new(Duration::from_secs(60));
/// Idle heartbeat of the pull: missing two of them means the consumer or the server is gone.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// The durable progress consumer and its messages, re-created when they disappear.
pub(super) struct ProgressFeed {
    stream: Stream,
    consumer: PullConsumer,
    /// `None` after the message stream ended or failed: the next [`ProgressFeed::next_batch`]
    /// re-opens it (not before `reopen_at`).
    messages: Option<Messages>,
    reopen_at: Option<Instant>,
    pause: Duration,
    gaps: SequenceGaps,
    /// Whether the stream keeps reports after they are acked (limits retention): then the feed
    /// trims them. A stream still on interest retention (provisioned by an earlier version and
    /// not migrated) is trimmed by the server.
    trims: bool,
    acked_since_trim: bool,
    last_trim: Instant,
    metrics: Arc<AssignerMetrics>,
}

impl ProgressFeed {
    /// Binds the durable consumer (re-creating it if it is missing) and opens its messages.
    pub(super) async fn open(
        stream: Stream,
        metrics: Arc<AssignerMetrics>,
        batch: usize,
    ) -> Result<Self, AssignerError> {
        let info = stream
            .get_info()
            .await
            .map_err(|e| AssignerError::jetstream(JetstreamOperation::ProgressInfo, e))?;
        let retention = info.config.retention;
        if retention == RetentionPolicy::Interest {
            tracing::warn!(
                "the progress stream has interest retention: reports published while the \
                 assigner's consumer is missing are discarded; run `elkctl provision` to move it \
                 to limits retention"
            );
        }
        let consumer = attach(&stream, &metrics)
            .await
            .map_err(|e| AssignerError::jetstream(JetstreamOperation::ProgressConsumer, e))?;
        let delivered = consumer.cached_info().delivered.stream_sequence;
        // Reports below the stream's first one were trimmed (applied) or removed before this
        // term: only what vanishes from now on is this term's to count.
        let gaps = SequenceGaps::after(delivered.max(info.state.first_sequence.saturating_sub(1)));
        let messages = pull(&consumer, batch)
            .await
            .map_err(|e| AssignerError::jetstream(JetstreamOperation::ProgressPull, e))?;
        Ok(Self {
            stream,
            consumer,
            messages: Some(messages),
            reopen_at: None,
            pause: FIRST_REOPEN_PAUSE,
            gaps,
            trims: retention == RetentionPolicy::Limits,
            acked_since_trim: false,
            last_trim: Instant::now(),
            metrics,
        })
    }

    /// The durable consumer as last bound (its ack floor is the reclaim barrier).
    pub(super) fn consumer(&self) -> &PullConsumer {
        &self.consumer
    }

    /// The next reports: waits for one (re-opening the feed as often as needed), then takes what
    /// else is ready, up to `batch`. Cancel-safe: dropped at any await, the next call resumes.
    pub(super) async fn next_batch(&mut self, batch: usize) -> Vec<Message> {
        loop {
            let Some(messages) = self.messages.as_mut() else {
                self.reopen(batch).await;
                continue;
            };
            match messages.next().await {
                Some(Ok(message)) => {
                    let mut reports = vec![message];
                    let mut ended = None;
                    while reports.len() < batch {
                        match messages.next().now_or_never() {
                            Some(Some(Ok(message))) => reports.push(message),
                            Some(Some(Err(error))) => {
                                ended = Some(error.to_string());
                                break;
                            }
                            Some(None) => {
                                ended = Some("the message stream ended".to_owned());
                                break;
                            }
                            None => break,
                        }
                    }
                    for message in &reports {
                        self.note_delivery(message);
                    }
                    if let Some(reason) = ended {
                        self.lost_messages(reason);
                    }
                    return reports;
                }
                Some(Err(error)) => self.lost_messages(error.to_string()),
                None => self.lost_messages("the message stream ended".to_owned()),
            }
        }
    }

    /// The message stream failed or ended (the consumer deleted, missed heartbeats, a failed
    /// pull): the next call re-opens it.
    fn lost_messages(&mut self, reason: String) {
        if let Some(suppressed) = WARNINGS.check("reopen") {
            tracing::warn!(%reason, suppressed, "progress feed interrupted; re-opening it");
        }
        self.messages = None;
    }

    /// Re-attaches to the durable consumer (re-creating it if it is gone) and re-opens its
    /// messages; after a failure, waits for the back-off first.
    async fn reopen(&mut self, batch: usize) {
        if let Some(at) = self.reopen_at {
            tokio::time::sleep_until(at).await;
        }
        let reopened = match attach(&self.stream, &self.metrics).await {
            Ok(consumer) => match pull(&consumer, batch).await {
                Ok(messages) => Ok((consumer, messages)),
                Err(error) => Err(async_nats::Error::from(error)),
            },
            Err(error) => Err(error),
        };
        match reopened {
            Ok((consumer, messages)) => {
                self.consumer = consumer;
                self.messages = Some(messages);
                self.reopen_at = None;
                self.pause = FIRST_REOPEN_PAUSE;
            }
            Err(error) => {
                if let Some(suppressed) = WARNINGS.check("reopen_failed") {
                    tracing::warn!(%error, pause = ?self.pause, suppressed, "cannot re-open the progress feed; trying again");
                }
                self.reopen_at = Some(Instant::now() + self.pause);
                self.pause = (self.pause * 2).min(MAX_REOPEN_PAUSE);
            }
        }
    }

    fn note_delivery(&mut self, message: &Message) {
        let Ok(info) = message.info() else { return };
        let lost = self.gaps.deliver(info.stream_sequence);
        if lost > 0 {
            self.metrics.progress_lost.inc_by(lost);
            if let Some(suppressed) = WARNINGS.check("lost") {
                tracing::error!(
                    lost,
                    before = info.stream_sequence,
                    suppressed,
                    "progress reports vanished from the stream before they were applied (age \
                     limit, or removed by another client)"
                );
            }
        }
    }

    /// Notes that reports were acked: the next [`ProgressFeed::trim`] has work.
    pub(super) fn acked(&mut self) {
        self.acked_since_trim = true;
    }

    /// At most once per [`TRIM_INTERVAL`] after acks: purges the reports below the lowest ack
    /// floor of the stream's consumers (with the leader's own among them: without it, nothing is
    /// known to be applied). A consumer that lags holds the trimming back, as it would hold an
    /// interest stream's; the stream's `max_bytes` bounds what that can cost.
    pub(super) async fn trim(&mut self) {
        if !self.trims || !self.acked_since_trim || self.last_trim.elapsed() < TRIM_INTERVAL {
            return;
        }
        self.last_trim = Instant::now();
        self.acked_since_trim = false;
        let consumers: Result<Vec<_>, _> = self.stream.consumers().try_collect().await;
        let consumers = match consumers {
            Ok(consumers) => consumers,
            Err(error) => {
                tracing::debug!(%error, "cannot list the progress stream's consumers; not trimming");
                return;
            }
        };
        if !consumers.iter().any(|info| info.name == PROGRESS_CONSUMER) {
            return;
        }
        let Some(floor) = consumers
            .iter()
            .map(|info| info.ack_floor.stream_sequence)
            .min()
        else {
            return;
        };
        if floor == 0 {
            return;
        }
        // Keeps every report from `floor + 1` on: all below are acknowledged by every consumer.
        match self.stream.purge().sequence(floor + 1).await {
            Ok(purged) => {
                self.metrics.progress_trimmed.inc_by(purged.purged);
            }
            Err(error) => tracing::debug!(%error, "cannot trim the progress stream"),
        }
    }
}

/// The durable progress consumer: bound if it exists, else created with provisioning's config
/// (counted and logged: someone deleted it, or the server lost it).
async fn attach(
    stream: &Stream,
    metrics: &AssignerMetrics,
) -> Result<PullConsumer, async_nats::Error> {
    match stream.consumer_info(PROGRESS_CONSUMER).await {
        Ok(_) => Ok(stream.get_consumer(PROGRESS_CONSUMER).await?),
        Err(error) if error.kind() == ConsumerInfoErrorKind::NotFound => {
            let consumer = stream
                .create_consumer(elk_nats::progress_consumer_config())
                .await?;
            metrics.progress_consumer_recreated.inc();
            if let Some(suppressed) = WARNINGS.check("recreated") {
                tracing::warn!(
                    consumer = PROGRESS_CONSUMER,
                    suppressed,
                    "the progress consumer was missing: re-created it; it delivers every report \
                     still in the stream"
                );
            }
            Ok(consumer)
        }
        Err(error) => Err(error.into()),
    }
}

async fn pull(
    consumer: &PullConsumer,
    batch: usize,
) -> Result<Messages, async_nats::jetstream::consumer::StreamError> {
    consumer
        .stream()
        .max_messages_per_batch(batch)
        .heartbeat(HEARTBEAT)
        .expires(Duration::from_secs(30))
        .messages()
        .await
}

/// Stream sequences the leader's deliveries skipped: the consumer delivers the stream in order
/// (first deliveries; redeliveries go back), so a fresh delivery above the highest seen plus one
/// means the reports in between were removed before anyone delivered them to the leader.
#[derive(Debug, Clone, Copy)]
pub(super) struct SequenceGaps {
    highest: u64,
}

impl SequenceGaps {
    /// Gaps after stream sequence `seen` (everything up to it is accounted for).
    pub(super) fn after(seen: u64) -> Self {
        Self { highest: seen }
    }

    /// Notes a delivery of `sequence`; returns how many reports were skipped before it.
    pub(super) fn deliver(&mut self, sequence: u64) -> u64 {
        if sequence <= self.highest {
            return 0;
        }
        let skipped = sequence - self.highest - 1;
        self.highest = sequence;
        skipped
    }
}

#[cfg(test)]
mod tests {
    use super::SequenceGaps;

    #[test]
    fn in_order_deliveries_and_redeliveries_lose_nothing() {
        let mut gaps = SequenceGaps::after(0);
        assert_eq!(gaps.deliver(1), 0);
        assert_eq!(gaps.deliver(2), 0);
        // A redelivery (an ack that did not arrive), and a re-created consumer starting over.
        assert_eq!(gaps.deliver(1), 0);
        assert_eq!(gaps.deliver(2), 0);
        assert_eq!(gaps.deliver(3), 0);
    }

    #[test]
    fn skipped_sequences_are_counted_once() {
        let mut gaps = SequenceGaps::after(10);
        assert_eq!(gaps.deliver(11), 0);
        assert_eq!(gaps.deliver(15), 3);
        assert_eq!(gaps.deliver(12), 0, "below the highest: a redelivery");
        assert_eq!(gaps.deliver(16), 0);
        assert_eq!(gaps.deliver(100), 83);
    }
}
