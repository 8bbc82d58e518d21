//! Trace context for the HTTP admin API: every request is a span `elk.http.request` (kind server)
//! that continues the caller's W3C `traceparent` / `tracestate` headers, so a trace started by an
//! HTTP client goes on through the bridge's `AdminClient` request into the leader's handling.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

/// Runs the request inside its span (axum middleware).
pub(crate) async fn traced(request: Request, next: Next) -> Response {
    let span = tracing::info_span!(
        "elk.http.request",
        otel.kind = "server",
        otel.name = %format!("{} {}", request.method(), request.uri().path()),
        http.request.method = %request.method(),
        url.path = %request.uri().path(),
        http.response.status_code = tracing::field::Empty,
    );
    if let Some(remote) = remote_context(request.headers()) {
        elk_nats::trace::set_remote_parent(&span, &remote);
    }
    let response = next.run(request).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    response
}

/// The caller's span context from the W3C headers, if valid.
fn remote_context(headers: &axum::http::HeaderMap) -> Option<opentelemetry::trace::SpanContext> {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let traceparent = header(elk_nats::trace::TRACEPARENT)?;
    let mut nats_headers = async_nats::HeaderMap::new();
    nats_headers.insert(elk_nats::trace::TRACEPARENT, traceparent);
    if let Some(state) = header(elk_nats::trace::TRACESTATE) {
        nats_headers.insert(elk_nats::trace::TRACESTATE, state);
    }
    elk_nats::trace::from_headers(Some(&nats_headers))
}
