//! Progress reports in, and the reclaim barrier: a member that left the view gets its partitions
//! taken back only once every report it published before leaving has been applied.

use crate::error::AssignerError;
use crate::error::JetstreamOperation;
use crate::metrics::AssignerMetrics;
use crate::model::{AssignerState, Rejection};
use async_nats::jetstream::Message;
use async_nats::jetstream::consumer::PullConsumer;
use elk_nats::Resources;
use elk_nats::trace::{self, OtelSpan};
use elk_protocol::messages::{
    MemberRef, MembershipView, ProgressEvent, ProgressReport, decode_progress,
};
use elk_runtime::RepeatLimiter;
use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanContext, SpanKind};
use std::time::Instant;

/// Malformed progress reports, by reason: one warning per minute each.
static MALFORMED: RepeatLimiter = RepeatLimiter::new(std::time::Duration::from_secs(60));

/// Validates one message and applies its reports to the model, in order: a single report or a
/// batch (protocol §4.3), each report as if it had been published alone. Malformed and stale
/// reports are counted and dropped (their message is acked like the others).
pub(super) fn apply_message(
    state: &mut AssignerState,
    message: &Message,
    metrics: &AssignerMetrics,
) {
    let reports = match decode_progress(&message.payload) {
        Ok(reports) => reports,
        Err(error) => return malformed(message, metrics, "undecodable", error.to_string()),
    };
    // Reports of unsampled traces carry no context: nothing is parsed or built for them.
    let context = if trace::enabled() {
        trace::from_headers(message.headers.as_ref())
    } else {
        None
    };
    let from_subject = message.subject.rsplit('.').next().unwrap_or_default();
    for report in &reports {
        // A report must come from the subject of the worker it names: with per-worker publish
        // permissions, no client can speak for another worker.
        if from_subject != report.worker.as_str() {
            let error = format!(
                "report names worker {} but came from {}",
                report.worker, message.subject
            );
            malformed(message, metrics, "wrong_subject", error);
            continue;
        }
        apply_traced(state, report, context.as_ref(), metrics);
    }
}

/// Counts a malformed message (or report of a batch) and warns about it.
fn malformed(message: &Message, metrics: &AssignerMetrics, reason: &'static str, error: String) {
    // A misbehaving publisher could otherwise flood the log: one warning per reason and minute,
    // with the count held back (all of them are counted in the metric).
    if let Some(suppressed) = MALFORMED.check(reason) {
        tracing::warn!(subject = %message.subject, %error, suppressed, "malformed progress report dropped");
    }
    metrics.progress("malformed", reason);
}

/// Applies one validated report inside its apply span (sampled traces only) and counts it.
fn apply_traced(
    state: &mut AssignerState,
    report: &ProgressReport,
    context: Option<&SpanContext>,
    metrics: &AssignerMetrics,
) {
    let mut span = context
        .filter(|context| context.is_sampled())
        .map(|context| apply_span(context, report));
    let outcome = apply_report(state, report, context);
    if let Some(span) = &mut span {
        let outcome = match outcome {
            Ok(()) => "applied",
            Err(Rejection::UnknownPartition) => "rejected_unknown_partition",
            Err(Rejection::StaleToken) => "rejected_stale",
            Err(Rejection::OutOfRange) => "rejected_out_of_range",
        };
        span.set_attribute(KeyValue::new("elk.outcome", outcome));
        span.end();
    }
    match outcome {
        Ok(()) => metrics.progress("applied", event_reason(&report.event)),
        Err(rejection) => {
            metrics.progress("rejected", rejection.reason());
            tracing::debug!(?rejection, worker = %report.worker, job = %report.job, partition = %report.partition, "stale progress rejected");
        }
    }
}

/// Applies `report`; a release or failure that carried a trace context keeps it in the
/// partition record for the next grant to link to.
fn apply_report(
    state: &mut AssignerState,
    report: &ProgressReport,
    context: Option<&SpanContext>,
) -> Result<(), Rejection> {
    let ends_ownership = matches!(
        report.event,
        ProgressEvent::Released { .. } | ProgressEvent::Failed { .. }
    );
    let traceparent = context
        .filter(|_| ends_ownership)
        .map(trace::format_traceparent);
    state.apply_traced_progress(report, traceparent.as_deref())
}

/// The span of applying one report of a sampled trace: a child of the worker's publish span.
fn apply_span(context: &SpanContext, report: &ProgressReport) -> trace::BoxedSpan {
    let attributes = vec![
        KeyValue::new("elk.job", report.job.to_string()),
        KeyValue::new("elk.partition", report.partition.get() as i64),
        KeyValue::new("elk.worker", report.worker.to_string()),
        KeyValue::new("elk.event", event_reason(&report.event)),
    ];
    trace::start_span(
        "elk.progress.apply",
        SpanKind::Consumer,
        Some(context),
        attributes,
        &[],
    )
}

/// The `reason` label of an applied report, and its span's `elk.event`: its event.
fn event_reason(event: &ProgressEvent) -> &'static str {
    match event {
        ProgressEvent::Checkpoint { .. } => "checkpoint",
        ProgressEvent::Completed => "completed",
        ProgressEvent::Failed { .. } => "failed",
        ProgressEvent::Released { .. } => "released",
    }
}

/// A member that left the view, whose partitions wait until the progress stream has been applied
/// up to `barrier` (everything it published before leaving).
struct PendingReclaim {
    member: MemberRef,
    barrier: u64,
    /// When the view without the member was applied (reclaim latency).
    since: Instant,
}

/// The departed members waiting for their barrier.
#[derive(Default)]
pub(super) struct Reclaims {
    pending: Vec<PendingReclaim>,
}

impl Reclaims {
    /// Applies a membership view; members that left are queued behind the progress stream's last
    /// sequence.
    pub(super) async fn apply_view(
        &mut self,
        state: &mut AssignerState,
        view: &MembershipView,
        resources: &Resources,
    ) -> Result<(), AssignerError> {
        // A scan of every live partition (owners that left): off the runtime like a round.
        let gone = super::off_the_runtime(|| state.apply_view(view));
        if gone.is_empty() {
            return Ok(());
        }
        let barrier = resources
            .progress
            .get_info()
            .await
            .map_err(|e| AssignerError::jetstream(JetstreamOperation::ProgressInfo, e))?
            .state
            .last_sequence;
        for member in gone {
            if !self.pending.iter().any(|pending| pending.member == member) {
                self.pending.push(PendingReclaim {
                    member,
                    barrier,
                    since: Instant::now(),
                });
            }
        }
        Ok(())
    }

    /// Departed members still waiting for their barrier.
    pub(super) fn waiting(&self) -> usize {
        self.pending.len()
    }

    /// Reclaims the partitions of members whose barrier the consumer's ack floor has reached.
    pub(super) async fn release_caught_up(
        &mut self,
        state: &mut AssignerState,
        consumer: &PullConsumer,
        metrics: &AssignerMetrics,
    ) {
        if self.pending.is_empty() {
            return;
        }
        // The ack floor is contiguous (every report up to it is applied); the highest sequence
        // seen is not, since redelivered reports may arrive after newer ones.
        let caught_up = consumer_ack_floor(consumer).await;
        self.pending.retain(|pending| {
            if pending.barrier > caught_up {
                return true;
            }
            let count = state.reclaim(&pending.member);
            if count > 0 {
                tracing::info!(member = %pending.member.id, partitions = count, "reclaimed partitions of a departed worker");
                metrics.reclaimed(count as u64, pending.since.elapsed());
            }
            false
        });
    }
}

async fn consumer_ack_floor(consumer: &PullConsumer) -> u64 {
    let mut consumer = consumer.clone();
    match consumer.info().await {
        Ok(info) => {
            if info.num_pending == 0 && info.num_ack_pending == 0 {
                u64::MAX
            } else {
                info.ack_floor.stream_sequence
            }
        }
        Err(_) => 0,
    }
}
