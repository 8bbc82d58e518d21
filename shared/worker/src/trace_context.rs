//! How the SDK continues the traces the coordinator starts (`docs/protocol.md` §11).
//!
//! A grant may carry the `traceparent` of the assigner's grant span, a planner request the W3C
//! headers of the assigner's request span. When the context is **sampled**, the work runs inside
//! a `tracing` span that is its child (`elk.partition.process`, `elk.plan.answer`), so the user's
//! own spans and log lines nest under it; checkpoints, a revoke and the outcome are events of
//! that span, and the progress reports it produces carry its context. When the context is **not
//! sampled**, no span is built: the context is only attached around the work, so spans the user
//! starts inside inherit "not sampled" instead of starting traces of their own. Without a context
//! nothing is done at all.
//!
//! This needs no setup in the worker process beyond an OpenTelemetry layer in its `tracing`
//! subscriber (e.g. `elk_runtime::telemetry::init`); without one, spans are plain `tracing` spans.

use crate::processor::Run;
use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanContext, Status};
use std::future::Future;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// How a unit of work continues a remote trace.
#[derive(Debug, Clone, Default)]
pub(crate) enum Continuation {
    /// No trace context came with the work.
    #[default]
    Untraced,
    /// A sampled trace: the span the work runs in, and its context (for the reports it causes).
    Sampled {
        span: tracing::Span,
        context: SpanContext,
    },
    /// An unsampled trace: the context attached around the work.
    Unsampled(opentelemetry::Context),
}

impl Continuation {
    /// Continues `remote` (if any): `make_span` builds the span, called only for a sampled one.
    pub(crate) fn of(
        remote: Option<SpanContext>,
        make_span: impl FnOnce() -> tracing::Span,
    ) -> Self {
        let Some(remote) = remote.filter(SpanContext::is_valid) else {
            return Continuation::Untraced;
        };
        if !remote.is_sampled() {
            return Continuation::Unsampled(elk_nats::trace::remote_context(&remote));
        }
        let span = make_span();
        elk_nats::trace::set_remote_parent(&span, &remote);
        let context = elk_nats::trace::span_context(&span);
        if !context.is_valid() {
            // No OpenTelemetry layer here: a plain `tracing` span, nothing to propagate.
            return Continuation::Untraced;
        }
        Continuation::Sampled { span, context }
    }

    /// The context the reports of this work carry (sampled traces only).
    pub(crate) fn report_context(&self) -> Option<SpanContext> {
        match self {
            Continuation::Sampled { context, .. } => Some(context.clone()),
            _ => None,
        }
    }

    /// Adds an event to the span of a sampled trace.
    pub(crate) fn event(&self, name: &'static str, attributes: Vec<KeyValue>) {
        if let Continuation::Sampled { span, .. } = self {
            span.add_event(name, attributes);
        }
    }

    /// Marks the span of a sampled trace as failed.
    pub(crate) fn fail(&self, message: &str) {
        if let Continuation::Sampled { span, .. } = self {
            span.set_status(Status::error(message.to_owned()));
        }
    }

    /// Runs `future` under this continuation.
    pub(crate) async fn run<F: Future>(&self, future: F) -> F::Output {
        use opentelemetry::context::FutureExt as _;
        match self {
            Continuation::Untraced => future.await,
            Continuation::Sampled { span, .. } => future.instrument(span.clone()).await,
            Continuation::Unsampled(context) => future.with_context(context.clone()).await,
        }
    }

    /// `future` running under this continuation.
    pub(crate) fn wrap<F>(&self, future: F) -> futures::future::BoxFuture<'static, F::Output>
    where
        F: Future + Send + 'static,
    {
        use opentelemetry::context::FutureExt as _;
        match self.clone() {
            Continuation::Untraced => Box::pin(future),
            Continuation::Sampled { span, .. } => Box::pin(future.instrument(span)),
            Continuation::Unsampled(context) => Box::pin(future.with_context(context)),
        }
    }

    /// A processor run under this continuation.
    pub(crate) fn wrap_run(&self, run: Run) -> Run {
        match (self.clone(), run) {
            (Continuation::Untraced, run) => run,
            (_, Run::Async(future)) => Run::Async(self.wrap(future)),
            (Continuation::Sampled { span, .. }, Run::Blocking(call)) => {
                Run::Blocking(Box::new(move || span.in_scope(call)))
            }
            (Continuation::Unsampled(context), Run::Blocking(call)) => {
                Run::Blocking(Box::new(move || {
                    let _attached = context.attach();
                    call()
                }))
            }
        }
    }
}
