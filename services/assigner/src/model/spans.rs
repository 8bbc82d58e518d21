//! The assigner's side of a partition's trace (`docs/observability.md` §8). One partition's life
//! is one trace, rooted at its cut:
//!
//! ```text
//!   elk.partition (root: the cut; links to the job's create_job span)
//!    ├─ elk.partition.grant (per grant: worker, token; links to the span that ended the
//!    │    │                   previous ownership: a release/failure report or a reclaim)
//!    │    └─ (worker) elk.partition.process → elk.progress.publish → elk.progress.apply
//!    ├─ elk.partition.revoke  (child of the grant it takes back)
//!    └─ elk.partition.reclaim (child of the grant of a departed owner)
//! ```
//!
//! The contexts live in the partition record (`traceparent`: the root; `grant_traceparent`: the
//! current grant, then what ended it), so a new leader continues the same traces. Spans are
//! OpenTelemetry spans ended at once (events, not durations), built only when this process
//! traces ([`elk_nats::trace::enabled`]) and — except for the root, whose sampling the sampler
//! decides — only when the partition's trace is sampled; an unsampled trace costs one root
//! decision and its `traceparent` (with the flag off), which downstream processes honour.

use elk_nats::trace::{self, OtelSpan};
use elk_protocol::messages::PartitionRecord;
use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanContext, SpanKind};

/// The attributes naming a partition.
fn partition_attributes(record: &PartitionRecord) -> Vec<KeyValue> {
    vec![
        KeyValue::new("elk.job", record.job.to_string()),
        KeyValue::new("elk.partition", record.id.get() as i64),
    ]
}

/// The trace root of a new partition (its cut), linked to the job's creation span. Returns the
/// root's `traceparent`, sampled or not; `None` when this process does not trace.
pub(super) fn cut(record: &PartitionRecord, job_traceparent: Option<&str>) -> Option<String> {
    if !trace::enabled() {
        return None;
    }
    let links: Vec<SpanContext> = job_traceparent
        .and_then(trace::parse_traceparent)
        .into_iter()
        .collect();
    let mut span = trace::start_span(
        "elk.partition",
        SpanKind::Internal,
        None,
        Vec::new(),
        &links,
    );
    if span.is_recording() {
        let mut attributes = partition_attributes(record);
        attributes.push(KeyValue::new("elk.range.min", record.range.first() as i64));
        attributes.push(KeyValue::new("elk.range.max", record.range.last() as i64));
        attributes.push(KeyValue::new("elk.epoch", record.epoch.get() as i64));
        span.set_attributes(attributes);
    }
    let context = span.span_context().clone();
    span.end();
    trace::traceparent_of(&context)
}

/// The span of a grant of `record` (as it stands before the grant) to `worker`; returns the
/// context the worker's processing continues: the grant span's, or the root's when the trace
/// is not sampled (the decision travels on). Links to the span that ended the previous
/// ownership, if any (a hand-over).
pub(super) fn grant(
    record: &PartitionRecord,
    worker: &str,
    token: u64,
    resume_from: u64,
) -> Option<String> {
    if !trace::enabled() {
        // Not tracing now (whatever an earlier leader stored): no context on the grant.
        return None;
    }
    let root = record.traceparent.as_deref()?;
    let parent = trace::parse_traceparent(root)?;
    if !parent.is_sampled() {
        return Some(root.to_owned());
    }
    let previous: Vec<SpanContext> = record
        .grant_traceparent
        .as_deref()
        .and_then(trace::parse_traceparent)
        .into_iter()
        .collect();
    let mut attributes = partition_attributes(record);
    attributes.push(KeyValue::new("elk.worker", worker.to_owned()));
    attributes.push(KeyValue::new("elk.token", token as i64));
    attributes.push(KeyValue::new("elk.resume_from", resume_from as i64));
    attributes.push(KeyValue::new("elk.handover", !previous.is_empty()));
    let mut span = trace::start_span(
        "elk.partition.grant",
        SpanKind::Internal,
        Some(&parent),
        attributes,
        &previous,
    );
    let context = span.span_context().clone();
    span.end();
    trace::traceparent_of(&context)
}

/// A partition event under its current grant (`elk.partition.revoke`, `elk.partition.reclaim`),
/// when the trace is sampled. Returns the event span's `traceparent`.
pub(super) fn grant_event(
    name: &'static str,
    record: &PartitionRecord,
    reason: &'static str,
) -> Option<String> {
    if !trace::enabled() {
        return None;
    }
    let parent = record
        .grant_traceparent
        .as_deref()
        .and_then(trace::parse_traceparent)?;
    if !parent.is_sampled() {
        return None;
    }
    let mut attributes = partition_attributes(record);
    if let Some(owner) = &record.owner {
        attributes.push(KeyValue::new("elk.worker", owner.id.to_string()));
    }
    attributes.push(KeyValue::new("elk.reason", reason));
    let mut span = trace::start_span(name, SpanKind::Internal, Some(&parent), attributes, &[]);
    let context = span.span_context().clone();
    span.end();
    trace::traceparent_of(&context)
}
