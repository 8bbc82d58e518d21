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
//! decision and a flag (`unsampled` in the record and its grants, no `traceparent`), which
//! downstream processes honour.

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

/// The trace decision for a partition's root (its cut).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Root {
    /// This process does not trace: the record carries no trace field.
    Untraced,
    /// Not sampled: only the flag is kept (`PartitionRecord::unsampled`), no `traceparent`.
    Unsampled,
    /// Sampled: the root's `traceparent`.
    Sampled(String),
}

impl Root {
    /// Stores the decision in `record`.
    pub(super) fn store_in(self, record: &mut PartitionRecord) {
        let (traceparent, unsampled) = match self {
            Root::Untraced => (None, false),
            Root::Unsampled => (None, true),
            Root::Sampled(traceparent) => (Some(traceparent), false),
        };
        record.traceparent = traceparent;
        record.unsampled = unsampled;
    }
}

/// The trace root of a new partition (its cut), linked to the job's creation span: the sampler's
/// decision, and for a sampled root its `traceparent`.
pub(super) fn cut(record: &PartitionRecord, job_traceparent: Option<&str>) -> Root {
    if !trace::enabled() {
        return Root::Untraced;
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
    if !span.span_context().is_sampled() {
        // 99 % of partitions at 1 % sampling: nothing to record, nothing to carry but the flag.
        return Root::Unsampled;
    }
    if span.is_recording() {
        let mut attributes = partition_attributes(record);
        attributes.push(KeyValue::new("elk.range.min", record.range.first() as i64));
        attributes.push(KeyValue::new("elk.range.max", record.range.last() as i64));
        attributes.push(KeyValue::new("elk.epoch", record.epoch.get() as i64));
        span.set_attributes(attributes);
    }
    let context = span.span_context().clone();
    span.end();
    trace::traceparent_of(&context).map_or(Root::Untraced, Root::Sampled)
}

/// The span of a grant of `record` (as it stands before the grant) to `worker`: sets the
/// record's `grant_traceparent` to the context the worker's processing continues (the grant
/// span's), or to nothing when the trace is not sampled (the record's `unsampled` flag, copied
/// into the grant, carries that decision). Links to the span that ended the previous ownership,
/// if any (a hand-over). A root without a decision yet (cut before this process traced) is
/// decided now.
pub(super) fn grant(record: &mut PartitionRecord, worker: &str, token: u64, resume_from: u64) {
    if !trace::enabled() {
        // Not tracing now (whatever an earlier leader stored): no context on the grant; an
        // `unsampled` flag stays, so the worker still starts no trace of its own.
        record.grant_traceparent = None;
        return;
    }
    if record.traceparent.is_none() && !record.unsampled {
        cut(record, None).store_in(record);
    }
    let parent = record
        .traceparent
        .as_deref()
        .and_then(trace::parse_traceparent);
    let Some(parent) = parent.filter(SpanContext::is_sampled) else {
        // Not sampled (a record of an older build may keep that as an unsampled root context:
        // it becomes the flag).
        record.traceparent = None;
        record.grant_traceparent = None;
        record.unsampled = true;
        return;
    };
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
    record.grant_traceparent = trace::traceparent_of(&context);
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
