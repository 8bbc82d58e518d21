//! Log output: `tracing` events on stderr, filtered by `RUST_LOG` (default `info`), as plain text
//! — with ANSI colours only when stderr is a terminal and `NO_COLOR` is unset, so log files and
//! collectors get plain text — or as one JSON object per line (`--log-format json`,
//! `ELK_LOG_FORMAT=json`) carrying the W3C `trace_id` and `span_id` of the span the event
//! happened in, so a log line leads to its trace (and a trace to its log lines).
//!
//! The layers themselves are assembled by [`crate::telemetry::init`], next to the trace export.

use opentelemetry::trace::TraceContextExt;
use serde::{Deserialize, Serialize};
use std::io::IsTerminal;
use tracing::Subscriber;
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable text (colours only on a terminal).
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields` (with `message`),
    /// `span` and `spans` (names and fields), and `trace_id` / `span_id` inside a traced span.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("unknown log format '{other}': use text or json")),
        }
    }
}

/// The stderr log layer in `format`, filtered by `RUST_LOG` (else `default_filter`).
pub(crate) fn layer<S>(
    format: LogFormat,
    default_filter: &str,
) -> Box<dyn Layer<S> + Send + Sync + 'static>
where
    S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let base = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Text => base
            .with_ansi(colours_wanted(
                std::io::stderr().is_terminal(),
                std::env::var_os("NO_COLOR").is_some_and(|value| !value.is_empty()),
            ))
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => base
            .with_ansi(false)
            .fmt_fields(JsonFields::new())
            .event_format(JsonWithTrace::default())
            .with_filter(filter)
            .boxed(),
    }
}

fn colours_wanted(stderr_is_terminal: bool, no_color: bool) -> bool {
    stderr_is_terminal && !no_color
}

/// `tracing-subscriber`'s JSON lines with the OpenTelemetry `trace_id` and `span_id` of the
/// current span added (when it has a valid context).
pub(crate) struct JsonWithTrace {
    inner: format::Format<format::Json>,
}

impl Default for JsonWithTrace {
    fn default() -> Self {
        Self {
            inner: format::format()
                .json()
                .with_current_span(true)
                .with_span_list(true),
        }
    }
}

impl<S, N> FormatEvent<S, N> for JsonWithTrace
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    FormattedFields<N>: 'static,
{
    fn format_event(
        &self,
        context: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        // The OpenTelemetry context of the innermost entered span (the layer attaches it on
        // enter), read before any span extension is borrowed below.
        let ids = opentelemetry::Context::map_current(|current| {
            let span = current.span();
            let context = span.span_context();
            context
                .is_valid()
                .then(|| (context.trace_id(), context.span_id()))
        });
        let Some((trace_id, span_id)) = ids else {
            return self.inner.format_event(context, writer, event);
        };
        let mut line = String::with_capacity(256);
        self.inner
            .format_event(context, Writer::new(&mut line), event)?;
        let object = line.trim_end();
        match object.strip_suffix('}') {
            Some(open) => {
                writeln!(
                    writer,
                    "{open},\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\"}}"
                )
            }
            None => writer.write_str(&line),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        assert!(colours_wanted(true, false));
        assert!(!colours_wanted(false, false));
        assert!(!colours_wanted(true, true));
    }

    #[test]
    fn log_formats_parse() {
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert_eq!(" Text ".parse::<LogFormat>(), Ok(LogFormat::Text));
        assert!("xml".parse::<LogFormat>().unwrap_err().contains("xml"));
    }

    /// Collects what the layer writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_carry_the_trace_and_span_ids_of_the_current_span() {
        use opentelemetry::trace::TracerProvider as _;
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(move || writer.clone())
                    .fmt_fields(JsonFields::new())
                    .event_format(JsonWithTrace::default()),
            )
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let (trace_id, span_id) = tracing::subscriber::with_default(subscriber, || {
            tracing::info!(outside = true, "before any span");
            let span = tracing::info_span!("elk.partition.process", job = "j", partition = 3);
            let context = elk_nats::trace::span_context(&span);
            span.in_scope(|| tracing::info!(last_done = 7, "checkpoint"));
            (context.trace_id(), context.span_id())
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].get("trace_id").is_none(), "no span, no ids");
        assert_eq!(lines[0]["fields"]["message"], "before any span");
        let inside = &lines[1];
        assert_eq!(inside["trace_id"], trace_id.to_string());
        assert_eq!(inside["span_id"], span_id.to_string());
        assert_eq!(inside["fields"]["last_done"], 7);
        assert_eq!(inside["span"]["name"], "elk.partition.process");
        assert_eq!(inside["span"]["partition"], 3);
        assert_eq!(inside["level"], "INFO");
    }
}
