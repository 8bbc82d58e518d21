//! W3C trace context on ELK's messages, and the spans that start or continue a trace.
//!
//! A trace context travels as the W3C headers `traceparent` / `tracestate` on every NATS
//! request/reply and JetStream publish that ELK makes on behalf of a traced operation (admin
//! requests, planner requests, progress reports), and as a `traceparent` string inside records
//! that a KV watch delivers without headers (grants; see `docs/protocol.md` §11).
//!
//! Everything here is cheap when tracing is off: [`enabled`] is one atomic load, nothing is
//! formatted or allocated for a context that is not valid, and the spans of a partition's life
//! are built only when their parent is sampled (an unsampled decision travels on as the parent's
//! own `traceparent`, so downstream processes drop their spans too).
//!
//! Two kinds of spans are used: `tracing` spans where code runs inside them (a processor, an
//! admin request), so that logs and user spans nest under them; and OpenTelemetry spans built
//! directly with the [`tracer`] for short partition events in hot loops (the assigner's cut,
//! grant and apply), which cost nothing in the `tracing` registry.

use async_nats::HeaderMap;
use opentelemetry::trace::{
    Link, SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer,
};
use opentelemetry::{Context, KeyValue};
use std::str::FromStr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub use opentelemetry::global::BoxedSpan;
pub use opentelemetry::trace::Span as OtelSpan;

/// Header (and record field) carrying the W3C `traceparent`.
pub const TRACEPARENT: &str = "traceparent";
/// Header carrying the W3C `tracestate`.
pub const TRACESTATE: &str = "tracestate";
/// Instrumentation scope of the spans ELK builds directly.
const SCOPE: &str = "elk";

static ENABLED: AtomicBool = AtomicBool::new(false);
static TRACER: OnceLock<opentelemetry::global::BoxedTracer> = OnceLock::new();

/// Says that spans are exported in this process: an OpenTelemetry layer is installed in the
/// `tracing` subscriber and the global tracer provider exports. `elk_runtime::telemetry::init`
/// calls it; a process that installs its own OpenTelemetry setup calls it afterwards to have ELK
/// start traces (continuing traces started elsewhere needs nothing).
pub fn enable() {
    let _ = TRACER.set(opentelemetry::global::tracer(SCOPE));
    ENABLED.store(true, Ordering::Release);
}

/// Whether this process starts traces (see [`enable`]). One atomic load.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Acquire)
}

/// The tracer of ELK's own spans (the global provider's, scope `elk`).
fn tracer() -> &'static opentelemetry::global::BoxedTracer {
    TRACER.get_or_init(|| opentelemetry::global::tracer(SCOPE))
}

/// Parses a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`; later versions by their first four
/// fields). `None` for anything malformed, version `ff`, or all-zero ids.
pub fn parse_traceparent(value: &str) -> Option<SpanContext> {
    parse_with_state(value, TraceState::default())
}

fn parse_with_state(value: &str, state: TraceState) -> Option<SpanContext> {
    let value = value.trim();
    let mut parts = value.splitn(5, '-');
    let (version, trace_id, span_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let rest = parts.next();
    let lower_hex = |text: &str, len: usize| {
        text.len() == len
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !lower_hex(version, 2) || version == "ff" || (version == "00" && rest.is_some()) {
        return None;
    }
    if !lower_hex(trace_id, 32) || !lower_hex(span_id, 16) || !lower_hex(flags, 2) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace_id).ok()?;
    let span_id = SpanId::from_hex(span_id).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let context = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags & TraceFlags::SAMPLED.to_u8()),
        true,
        state,
    );
    context.is_valid().then_some(context)
}

/// A remote, **not sampled** span context standing for a decision that travelled as a flag
/// (a grant's `unsampled`) instead of a `traceparent`: attached around work, it makes the spans
/// started inside inherit "not sampled". Its ids are derived from `seed` (the grant), never
/// zero, so they are valid; nothing is ever recorded under them.
pub fn unsampled_context(seed: &impl std::hash::Hash) -> SpanContext {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    let hash =
        |salt: u64| BuildHasherDefault::<DefaultHasher>::default().hash_one((salt, seed)) | 1;
    let (high, low, span) = (hash(1), hash(2), hash(3));
    SpanContext::new(
        TraceId::from(((high as u128) << 64) | low as u128),
        SpanId::from(span),
        TraceFlags::default(),
        true,
        TraceState::default(),
    )
}

/// The W3C `traceparent` of `context` (version 00).
pub fn format_traceparent(context: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        context.trace_id(),
        context.span_id(),
        context.trace_flags().to_u8() & TraceFlags::SAMPLED.to_u8()
    )
}

/// The `traceparent` of `context`, if it is a valid one.
pub fn traceparent_of(context: &SpanContext) -> Option<String> {
    context.is_valid().then(|| format_traceparent(context))
}

/// Adds `context` to `headers` (`traceparent`, and `tracestate` when it has entries).
fn insert_headers(headers: &mut HeaderMap, context: &SpanContext) {
    if !context.is_valid() {
        return;
    }
    headers.insert(TRACEPARENT, format_traceparent(context).as_str());
    let state = context.trace_state().header();
    if !state.is_empty() {
        headers.insert(TRACESTATE, state.as_str());
    }
}

/// Headers carrying `context`; `None` when it is not valid (nothing allocated).
pub fn headers_for(context: &SpanContext) -> Option<HeaderMap> {
    if !context.is_valid() {
        return None;
    }
    let mut headers = HeaderMap::new();
    insert_headers(&mut headers, context);
    Some(headers)
}

/// The remote span context a message's headers carry, if any (a malformed one is ignored).
pub fn from_headers(headers: Option<&HeaderMap>) -> Option<SpanContext> {
    let headers = headers?;
    let traceparent = headers.get(TRACEPARENT)?;
    let state = headers
        .get(TRACESTATE)
        .and_then(|value| TraceState::from_str(value.as_str()).ok())
        .unwrap_or_default();
    parse_with_state(traceparent.as_str(), state)
}

/// The span context of a `tracing` span: invalid without an OpenTelemetry layer (or for a
/// disabled span). Starts the span on the OpenTelemetry side if it was not yet.
pub fn span_context(span: &tracing::Span) -> SpanContext {
    if span.is_disabled() {
        return SpanContext::empty_context();
    }
    span.context().span().span_context().clone()
}

/// Makes `parent` (a remote context) the parent of `span`, which must not have been entered yet.
/// Does nothing without an OpenTelemetry layer.
pub fn set_remote_parent(span: &tracing::Span, parent: &SpanContext) {
    let _ = span.set_parent(Context::new().with_remote_span_context(parent.clone()));
}

/// An OpenTelemetry context holding only `parent`: attached around code that runs under a remote
/// decision without a span of its own (an unsampled partition), so spans started inside inherit
/// it instead of starting traces of their own.
pub fn remote_context(parent: &SpanContext) -> Context {
    Context::new().with_remote_span_context(parent.clone())
}

/// Starts a span of ELK's tracer named `name`: a child of `parent` when given (a new trace root
/// otherwise; the sampler decides), with `attributes` and links to `links`. End it with
/// [`OtelSpan::end`] (or drop it).
pub fn start_span(
    name: &'static str,
    kind: SpanKind,
    parent: Option<&SpanContext>,
    attributes: Vec<KeyValue>,
    links: &[SpanContext],
) -> BoxedSpan {
    let tracer = tracer();
    let links: Vec<Link> = links
        .iter()
        .filter(|link| link.is_valid())
        .map(|link| Link::with_context(link.clone()))
        .collect();
    let mut builder = tracer
        .span_builder(name)
        .with_kind(kind)
        .with_attributes(attributes);
    if !links.is_empty() {
        builder = builder.with_links(links);
    }
    let parent = match parent {
        Some(parent) => Context::new().with_remote_span_context(parent.clone()),
        None => Context::new(),
    };
    tracer.build_with_context(builder, &parent)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn an_unsampled_flag_becomes_a_valid_remote_context_that_is_not_sampled() {
        let context = unsampled_context(&("job", 7u64, 3u64));
        assert!(context.is_valid());
        assert!(context.is_remote());
        assert!(!context.is_sampled());
        // The same grant gives the same ids; another grant others.
        assert_eq!(context, unsampled_context(&("job", 7u64, 3u64)));
        assert_ne!(
            context.trace_id(),
            unsampled_context(&("job", 8u64, 3u64)).trace_id()
        );
    }

    #[test]
    fn traceparents_round_trip_and_malformed_ones_are_refused() {
        let context = parse_traceparent(SAMPLE).unwrap();
        assert!(context.is_sampled());
        assert!(context.is_remote());
        assert_eq!(
            context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(format_traceparent(&context), SAMPLE);
        let unsampled = SAMPLE.replace("-01", "-00");
        assert!(!parse_traceparent(&unsampled).unwrap().is_sampled());
        // Unknown flag bits are dropped, a later version with more fields is read.
        let flags = SAMPLE.replace("-01", "-03");
        assert_eq!(
            format_traceparent(&parse_traceparent(&flags).unwrap()),
            SAMPLE
        );
        let later = SAMPLE.replacen("00-", "01-", 1) + "-future";
        assert!(parse_traceparent(&later).is_some());
        for bad in [
            "",
            "00",
            &SAMPLE.replacen("00-", "ff-", 1),
            &SAMPLE.to_uppercase(),
            &(SAMPLE.to_owned() + "-extra"),
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad:?} accepted");
        }
    }

    #[test]
    fn headers_carry_the_context_and_its_state() {
        let state = TraceState::from_str("vendor=abc,other=1").unwrap();
        let context = parse_with_state(SAMPLE, state).unwrap();
        let headers = headers_for(&context).unwrap();
        assert_eq!(headers.get(TRACEPARENT).unwrap().as_str(), SAMPLE);
        assert_eq!(
            headers.get(TRACESTATE).unwrap().as_str(),
            "vendor=abc,other=1"
        );
        let back = from_headers(Some(&headers)).unwrap();
        assert_eq!(back, context);
        assert!(headers_for(&SpanContext::empty_context()).is_none());
        assert!(from_headers(None).is_none());
        let mut garbage = HeaderMap::new();
        garbage.insert(TRACEPARENT, "nonsense");
        assert!(from_headers(Some(&garbage)).is_none());
    }

    #[test]
    fn without_an_opentelemetry_layer_spans_have_no_context() {
        let span = tracing::info_span!("untraced");
        assert!(!span_context(&span).is_valid());
        assert!(traceparent_of(&span_context(&span)).is_none());
        assert!(!enabled());
    }
}
