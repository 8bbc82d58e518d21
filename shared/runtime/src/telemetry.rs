//! Telemetry of an ELK process: logs (see [`crate::logging`]) and OpenTelemetry traces exported
//! over OTLP, gRPC or HTTP/protobuf, to Jaeger or any collector.
//!
//! Export is **off** unless an endpoint is configured: `[service.tracing] otlp_endpoint` (services),
//! else the standard `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`. Off
//! means no exporter, no OpenTelemetry layer and no trace context on messages: ELK's spans of a
//! partition's life are not even built (see `elk_nats::trace`).
//!
//! | setting | config (`[service.tracing]`) | environment (used when the config leaves it unset) | default |
//! |---|---|---|---|
//! | endpoint | `otlp_endpoint` | `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (full URL), `OTEL_EXPORTER_OTLP_ENDPOINT` (base) | off |
//! | protocol | `otlp_protocol` (`grpc`, `http/protobuf`) | `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, `OTEL_EXPORTER_OTLP_PROTOCOL` | `http/protobuf` |
//! | sampling | `sample_ratio` (parent-based ratio, 0–1) | `OTEL_TRACES_SAMPLER` + `OTEL_TRACES_SAMPLER_ARG` | `parentbased_always_on` |
//! | service name | `service_name` | `OTEL_SERVICE_NAME` | the binary's (`elk-assigner`, ...) |
//!
//! `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` turn export off whatever else is set;
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_HEADERS` and the batch processor's
//! `OTEL_BSP_*` variables work as the OpenTelemetry specification says. A base endpoint gets
//! `/v1/traces` appended for HTTP, as the specification says.

use crate::logging::{self, LogFormat};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

/// How long a shutdown waits for the last spans to be exported.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// Timeout of one OTLP/HTTP export request.
const HTTP_EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// `[service.tracing]`: where traces go and how many. Every field is optional; unset ones fall
/// back to the standard `OTEL_*` environment variables (module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TracingConfig {
    /// OTLP endpoint, e.g. `http://jaeger-collector:4318` (HTTP) or `http://jaeger-collector:4317`
    /// (gRPC). Unset: the `OTEL_EXPORTER_OTLP_*` endpoint variables; neither: no export.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// `grpc` or `http/protobuf`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_protocol: Option<OtlpProtocol>,
    /// Share of new traces sampled (0 to 1); a trace started elsewhere keeps its own decision.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_ratio: Option<SampleRatio>,
    /// `service.name` of the spans (default: the binary's name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
}

impl TracingConfig {
    /// Refuses values no exporter can use.
    pub fn validate(&self) -> Result<(), TelemetryError> {
        if let Some(endpoint) = &self.otlp_endpoint {
            check_endpoint("service.tracing.otlp_endpoint", endpoint)?;
        }
        if self
            .service_name
            .as_ref()
            .is_some_and(|name| name.trim().is_empty())
        {
            return Err(TelemetryError::invalid(
                "service.tracing.service_name must not be empty",
            ));
        }
        Ok(())
    }
}

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OtlpProtocol {
    #[serde(rename = "grpc")]
    Grpc,
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

impl OtlpProtocol {
    fn parse(text: &str, source: &str) -> Result<Self, TelemetryError> {
        match text.trim() {
            "grpc" => Ok(OtlpProtocol::Grpc),
            "http/protobuf" => Ok(OtlpProtocol::HttpProtobuf),
            other => Err(TelemetryError::invalid(format!(
                "{source}: unsupported OTLP protocol '{other}' (use grpc or http/protobuf)"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OtlpProtocol::Grpc => "grpc",
            OtlpProtocol::HttpProtobuf => "http/protobuf",
        }
    }
}

/// A sampling ratio in `[0, 1]` (never NaN, so it compares as a whole number would).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct SampleRatio(f64);

impl Eq for SampleRatio {}

impl SampleRatio {
    pub fn new(ratio: f64) -> Result<Self, TelemetryError> {
        if (0.0..=1.0).contains(&ratio) {
            Ok(Self(ratio))
        } else {
            Err(TelemetryError::invalid(format!(
                "sample ratio must be between 0 and 1, got {ratio}"
            )))
        }
    }

    pub fn get(self) -> f64 {
        self.0
    }
}

impl TryFrom<f64> for SampleRatio {
    type Error = TelemetryError;

    fn try_from(ratio: f64) -> Result<Self, Self::Error> {
        SampleRatio::new(ratio)
    }
}

impl From<SampleRatio> for f64 {
    fn from(ratio: SampleRatio) -> f64 {
        ratio.0
    }
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// A setting (config or `OTEL_*` variable) is unusable; the message names it.
    #[error("invalid telemetry configuration: {0}")]
    Invalid(String),
    /// The OTLP exporter could not be built.
    #[error("cannot build the OTLP {protocol} exporter: {source}")]
    Exporter {
        protocol: &'static str,
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    /// Export needs a tokio runtime (its connections run on it).
    #[error("trace export must be started inside a tokio runtime")]
    NoRuntime,
}

impl TelemetryError {
    fn invalid(message: impl Into<String>) -> Self {
        TelemetryError::Invalid(message.into())
    }
}

/// A configuration does not fix itself.
impl elk_nats::Retryable for TelemetryError {
    fn is_retryable(&self) -> bool {
        false
    }
}

/// What [`init`] sets up.
#[derive(Debug, Clone)]
pub struct TelemetryOptions<'a> {
    /// Default `service.name` (`elk-assigner`, `elkctl`, ...).
    pub service_name: &'a str,
    /// `service.instance.id` (a replica's member id), if known.
    pub instance_id: Option<&'a str>,
    pub log_format: LogFormat,
    /// Log filter unless `RUST_LOG` is set (`info` for services, `off` for elkctl).
    pub default_log_filter: &'a str,
    pub tracing: &'a TracingConfig,
}

impl<'a> TelemetryOptions<'a> {
    /// Text logs at `info`, tracing as `tracing` says, for `service_name`.
    pub fn new(service_name: &'a str, tracing: &'a TracingConfig) -> Self {
        Self {
            service_name,
            instance_id: None,
            log_format: LogFormat::Text,
            default_log_filter: "info",
            tracing,
        }
    }
}

/// Where spans are exported, resolved from the config and the environment.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportSettings {
    /// The URL the exporter sends to (HTTP: including `/v1/traces`).
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    pub sampler: SamplerChoice,
    pub service_name: String,
}

/// The sampler, as the standard `OTEL_TRACES_SAMPLER` values name them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerChoice {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
    ParentBasedAlwaysOn,
    ParentBasedAlwaysOff,
    ParentBasedTraceIdRatio(f64),
}

impl SamplerChoice {
    fn sampler(self) -> Sampler {
        match self {
            SamplerChoice::AlwaysOn => Sampler::AlwaysOn,
            SamplerChoice::AlwaysOff => Sampler::AlwaysOff,
            SamplerChoice::TraceIdRatio(ratio) => Sampler::TraceIdRatioBased(ratio),
            SamplerChoice::ParentBasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            SamplerChoice::ParentBasedAlwaysOff => {
                Sampler::ParentBased(Box::new(Sampler::AlwaysOff))
            }
            SamplerChoice::ParentBasedTraceIdRatio(ratio) => {
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)))
            }
        }
    }
}

/// Resolves where traces go from `config` and the environment (`env` looks a variable up);
/// `None`: export is off.
pub fn resolve(
    config: &TracingConfig,
    default_service_name: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<ExportSettings>, TelemetryError> {
    config.validate()?;
    let var = |name: &str| env(name).filter(|value| !value.trim().is_empty());
    if var("OTEL_SDK_DISABLED").is_some_and(|value| value.trim().eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    if let Some(exporter) = var("OTEL_TRACES_EXPORTER") {
        match exporter.trim() {
            "none" => return Ok(None),
            "otlp" => {}
            other => {
                return Err(TelemetryError::invalid(format!(
                    "OTEL_TRACES_EXPORTER: unsupported exporter '{other}' (use otlp or none)"
                )));
            }
        }
    }
    let protocol = match (
        config.otlp_protocol,
        var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"),
        var("OTEL_EXPORTER_OTLP_PROTOCOL"),
    ) {
        (Some(protocol), _, _) => protocol,
        (None, Some(text), _) => OtlpProtocol::parse(&text, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")?,
        (None, None, Some(text)) => OtlpProtocol::parse(&text, "OTEL_EXPORTER_OTLP_PROTOCOL")?,
        (None, None, None) => OtlpProtocol::HttpProtobuf,
    };
    // A base endpoint (config or the generic variable) gets the signal path for HTTP; the
    // traces-specific variable is a full URL already.
    let with_path = |base: &str| match protocol {
        OtlpProtocol::Grpc => base.to_owned(),
        OtlpProtocol::HttpProtobuf => {
            let base = base.trim_end_matches('/');
            if base.ends_with("/v1/traces") {
                base.to_owned()
            } else {
                format!("{base}/v1/traces")
            }
        }
    };
    let endpoint = if let Some(endpoint) = &config.otlp_endpoint {
        with_path(endpoint.trim())
    } else if let Some(endpoint) = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        check_endpoint("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &endpoint)?;
        endpoint.trim().to_owned()
    } else if let Some(endpoint) = var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        check_endpoint("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)?;
        with_path(endpoint.trim())
    } else {
        return Ok(None);
    };
    let sampler = match config.sample_ratio {
        Some(ratio) => SamplerChoice::ParentBasedTraceIdRatio(ratio.get()),
        None => sampler_from_env(var("OTEL_TRACES_SAMPLER"), var("OTEL_TRACES_SAMPLER_ARG"))?,
    };
    let service_name = config
        .service_name
        .clone()
        .or_else(|| var("OTEL_SERVICE_NAME"))
        .unwrap_or_else(|| default_service_name.to_owned());
    Ok(Some(ExportSettings {
        endpoint,
        protocol,
        sampler,
        service_name,
    }))
}

fn check_endpoint(source: &str, endpoint: &str) -> Result<(), TelemetryError> {
    let endpoint = endpoint.trim();
    let scheme_ok = endpoint.starts_with("http://") || endpoint.starts_with("https://");
    if !scheme_ok || endpoint.len() <= "https://".len() {
        return Err(TelemetryError::invalid(format!(
            "{source}: '{endpoint}' is not an http:// or https:// URL"
        )));
    }
    Ok(())
}

fn sampler_from_env(
    name: Option<String>,
    argument: Option<String>,
) -> Result<SamplerChoice, TelemetryError> {
    let ratio = || -> Result<f64, TelemetryError> {
        match &argument {
            None => Ok(1.0),
            Some(text) => text
                .trim()
                .parse::<f64>()
                .ok()
                .and_then(|ratio| SampleRatio::new(ratio).ok())
                .map(SampleRatio::get)
                .ok_or_else(|| {
                    TelemetryError::invalid(format!(
                        "OTEL_TRACES_SAMPLER_ARG: '{text}' is not a ratio between 0 and 1"
                    ))
                }),
        }
    };
    let Some(name) = name else {
        return Ok(SamplerChoice::ParentBasedAlwaysOn);
    };
    Ok(match name.trim() {
        "always_on" => SamplerChoice::AlwaysOn,
        "always_off" => SamplerChoice::AlwaysOff,
        "traceidratio" => SamplerChoice::TraceIdRatio(ratio()?),
        "parentbased_always_on" => SamplerChoice::ParentBasedAlwaysOn,
        "parentbased_always_off" => SamplerChoice::ParentBasedAlwaysOff,
        "parentbased_traceidratio" => SamplerChoice::ParentBasedTraceIdRatio(ratio()?),
        other => {
            return Err(TelemetryError::invalid(format!(
                "OTEL_TRACES_SAMPLER: unsupported sampler '{other}'"
            )));
        }
    })
}

/// The process's telemetry: keep it until the end of `main`, then [`Telemetry::shutdown`] it so
/// the last spans are exported.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    export: Option<ExportSettings>,
}

impl Telemetry {
    /// Where spans go, when they are exported.
    pub fn export(&self) -> Option<&ExportSettings> {
        self.export.as_ref()
    }

    /// Exports the spans still queued and stops the exporter (bounded by 5 s). Runs the blocking
    /// flush off the async threads, so the exporter's own connections keep being driven.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        let flushed =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT))
                .await;
        match flushed {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("trace export: shutdown: {error}"),
            Err(error) => eprintln!("trace export: shutdown task failed: {error}"),
        }
    }
}

/// Starts logging and, when configured, trace export for this process (once: a second call
/// changes nothing and exports nothing). Must run inside a tokio runtime when export is on.
pub fn init(options: TelemetryOptions<'_>) -> Result<Telemetry, TelemetryError> {
    let lookup = |name: &str| std::env::var(name).ok();
    let export = resolve(options.tracing, options.service_name, &lookup)?;
    let provider = match &export {
        Some(settings) => Some(provider(settings, options.instance_id)?),
        None => None,
    };
    let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = vec![logging::layer(
        options.log_format,
        options.default_log_filter,
    )];
    if let Some(provider) = &provider {
        // The same instrumentation scope as ELK's own OpenTelemetry spans (`elk_nats::trace`).
        let tracer = provider.tracer("elk");
        // ELK's spans and the user's are INFO; the exporter's own crates (tonic, hyper, h2)
        // only emit below that, so exporting never traces itself.
        let filter = tracing_subscriber::filter::LevelFilter::INFO;
        layers.push(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                // No busy/idle timing (two clock reads per poll of every instrumented future)
                // and no thread attributes: what a span costs stays what it records.
                .with_tracked_inactivity(false)
                .with_threads(false)
                .with_filter(filter)
                .boxed(),
        );
    }
    if tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .is_err()
    {
        // Someone else's subscriber is installed (a test harness, a second call): leave it, and
        // do not export through a layer nobody sees.
        if let Some(provider) = provider {
            let _ = provider.shutdown();
        }
        return Ok(Telemetry {
            provider: None,
            export: None,
        });
    }
    if let Some(provider) = &provider {
        opentelemetry::global::set_tracer_provider(provider.clone());
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        elk_nats::trace::enable();
    }
    if let Some(settings) = &export {
        tracing::info!(
            endpoint = %settings.endpoint,
            protocol = settings.protocol.as_str(),
            sampler = ?settings.sampler,
            service_name = %settings.service_name,
            "exporting traces over OTLP"
        );
    }
    Ok(Telemetry { provider, export })
}

/// The tracer provider exporting as `settings` say.
fn provider(
    settings: &ExportSettings,
    instance_id: Option<&str>,
) -> Result<SdkTracerProvider, TelemetryError> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| TelemetryError::NoRuntime)?;
    let exporter = match settings.protocol {
        OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(settings.endpoint.clone())
            .build(),
        OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(settings.endpoint.clone())
            .with_http_client(RuntimeHttpClient::new(runtime))
            .build(),
    }
    .map_err(|source| TelemetryError::Exporter {
        protocol: settings.protocol.as_str(),
        source,
    })?;
    let mut resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(settings.service_name.clone())
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ));
    if let Some(instance) = instance_id {
        resource = resource.with_attribute(opentelemetry::KeyValue::new(
            "service.instance.id",
            instance.to_owned(),
        ));
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(settings.sampler.sampler())
        .with_resource(resource.build())
        .build())
}

/// The OTLP/HTTP client: hyper (already in the tree through axum and tonic, unlike reqwest),
/// with every request run on the tokio runtime that started telemetry — the batch exporter calls
/// it from a thread of its own, where hyper would find no runtime.
#[derive(Debug)]
struct RuntimeHttpClient {
    inner: opentelemetry_http::hyper::HyperClient,
    runtime: tokio::runtime::Handle,
}

impl RuntimeHttpClient {
    fn new(runtime: tokio::runtime::Handle) -> Self {
        Self {
            inner: opentelemetry_http::hyper::HyperClient::with_default_connector(
                HTTP_EXPORT_TIMEOUT,
                None,
            ),
            runtime,
        }
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for RuntimeHttpClient {
    async fn send_bytes(
        &self,
        request: opentelemetry_http::Request<bytes::Bytes>,
    ) -> Result<opentelemetry_http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let inner = self.inner.clone();
        self.runtime
            .spawn(async move { inner.send_bytes(request).await })
            .await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn resolve_with(
        config: &TracingConfig,
        vars: &[(&str, &str)],
    ) -> Result<Option<ExportSettings>, TelemetryError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        resolve(config, "elk-test", &|name| vars.get(name).cloned())
    }

    #[test]
    fn export_is_off_without_an_endpoint() {
        let off = resolve_with(&TracingConfig::default(), &[]).unwrap();
        assert!(off.is_none());
        let config = TracingConfig {
            otlp_endpoint: Some("http://collector:4318".to_owned()),
            ..TracingConfig::default()
        };
        for disabled in [
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ] {
            assert!(resolve_with(&config, &[disabled]).unwrap().is_none());
        }
        let error = resolve_with(&config, &[("OTEL_TRACES_EXPORTER", "zipkin")]).unwrap_err();
        assert!(error.to_string().contains("zipkin"), "{error}");
    }

    #[test]
    fn the_standard_variables_apply_and_the_config_wins() {
        let settings = resolve_with(
            &TracingConfig::default(),
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4318/"),
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.01"),
                ("OTEL_SERVICE_NAME", "from-env"),
            ],
        )
        .unwrap()
        .unwrap();
        assert_eq!(settings.endpoint, "http://jaeger:4318/v1/traces");
        assert_eq!(settings.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(
            settings.sampler,
            SamplerChoice::ParentBasedTraceIdRatio(0.01)
        );
        assert_eq!(settings.service_name, "from-env");

        let grpc = resolve_with(
            &TracingConfig::default(),
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ],
        )
        .unwrap()
        .unwrap();
        assert_eq!(grpc.endpoint, "http://jaeger:4317");
        assert_eq!(grpc.protocol, OtlpProtocol::Grpc);
        assert_eq!(grpc.sampler, SamplerChoice::ParentBasedAlwaysOn);
        assert_eq!(grpc.service_name, "elk-test");

        let signal = resolve_with(
            &TracingConfig::default(),
            &[
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://a:1/custom"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://b:2"),
            ],
        )
        .unwrap()
        .unwrap();
        assert_eq!(signal.endpoint, "http://a:1/custom", "used as given");

        let config = TracingConfig {
            otlp_endpoint: Some("http://config:4317".to_owned()),
            otlp_protocol: Some(OtlpProtocol::Grpc),
            sample_ratio: Some(SampleRatio::new(0.25).unwrap()),
            service_name: Some("elk-worker-eu".to_owned()),
        };
        let configured = resolve_with(
            &config,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4318"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                ("OTEL_TRACES_SAMPLER", "always_off"),
                ("OTEL_SERVICE_NAME", "from-env"),
            ],
        )
        .unwrap()
        .unwrap();
        assert_eq!(configured.endpoint, "http://config:4317");
        assert_eq!(configured.protocol, OtlpProtocol::Grpc);
        assert_eq!(
            configured.sampler,
            SamplerChoice::ParentBasedTraceIdRatio(0.25)
        );
        assert_eq!(configured.service_name, "elk-worker-eu");
    }

    #[test]
    fn bad_settings_are_errors_naming_their_source() {
        let endpoint = &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4318")];
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")], "http/json"),
            (&[("OTEL_TRACES_SAMPLER", "sometimes")], "sometimes"),
            (
                &[
                    ("OTEL_TRACES_SAMPLER", "traceidratio"),
                    ("OTEL_TRACES_SAMPLER_ARG", "2"),
                ],
                "OTEL_TRACES_SAMPLER_ARG",
            ),
        ];
        for (vars, expected) in cases {
            let mut all = endpoint.to_vec();
            all.extend_from_slice(vars);
            let error = resolve_with(&TracingConfig::default(), &all).unwrap_err();
            assert!(error.to_string().contains(expected), "{error}");
        }
        let error = resolve_with(
            &TracingConfig::default(),
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "jaeger:4318")],
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("OTEL_EXPORTER_OTLP_ENDPOINT"),
            "{error}"
        );
        let config = TracingConfig {
            otlp_endpoint: Some("collector".to_owned()),
            ..TracingConfig::default()
        };
        assert!(config.validate().is_err());
        assert!(SampleRatio::new(1.5).is_err());
        assert!(SampleRatio::new(f64::NAN).is_err());
        let parsed: Result<TracingConfig, _> = toml::from_str("sample_ratio = 3.0");
        assert!(parsed.is_err());
        let parsed: TracingConfig =
            toml::from_str("otlp_protocol = \"grpc\"\nsample_ratio = 0.5").unwrap();
        assert_eq!(parsed.otlp_protocol, Some(OtlpProtocol::Grpc));
    }
}
