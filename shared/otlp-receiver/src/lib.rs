//! An OTLP trace receiver that runs inside a test or a benchmark: OTLP/gRPC
//! (`opentelemetry.proto.collector.trace.v1.TraceService/Export`, tonic) and OTLP/HTTP protobuf
//! (`POST /v1/traces`, axum), each on a random loopback port. It decodes every request with the
//! real protobuf definitions (`opentelemetry-proto`) and keeps the spans with their resource's
//! `service.name`, so a test can check which process sent which span and how spans chain.
//!
//! Jaeger (which takes OTLP natively) cannot be installed on the build machines; this receiver
//! stands in for it: exporters configured with [`OtlpReceiver::grpc_endpoint`] or
//! [`OtlpReceiver::http_endpoint`] talk to it exactly as they would to Jaeger or a collector.

use axum::http::{HeaderMap, StatusCode, header};
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How a span reached the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Grpc,
    Http,
}

/// One event of a span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedEvent {
    pub name: String,
    pub attributes: BTreeMap<String, String>,
}

/// A link from a span to another span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedLink {
    pub trace_id: String,
    pub span_id: String,
}

/// One span as exported, ids in lower-case hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedSpan {
    pub transport: Transport,
    /// The resource's `service.name`.
    pub service_name: String,
    /// The resource's `service.instance.id`, if set.
    pub service_instance: Option<String>,
    /// The instrumentation scope's name.
    pub scope: String,
    pub trace_id: String,
    pub span_id: String,
    /// `None` for a trace root.
    pub parent_span_id: Option<String>,
    pub name: String,
    /// The OTLP span kind (1 internal, 2 server, 3 client, 4 producer, 5 consumer).
    pub kind: i32,
    /// Attribute values rendered as text (strings as they are, numbers and booleans formatted).
    pub attributes: BTreeMap<String, String>,
    pub events: Vec<ReceivedEvent>,
    pub links: Vec<ReceivedLink>,
    /// The status says error.
    pub error: bool,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
}

impl ReceivedSpan {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// What the listeners share.
struct Store {
    /// Keep every span (tests) or only count them (benchmarks).
    keep: bool,
    spans: Mutex<Vec<ReceivedSpan>>,
    span_count: AtomicU64,
    grpc_requests: AtomicU64,
    http_requests: AtomicU64,
}

impl Store {
    fn accept(&self, transport: Transport, request: ExportTraceServiceRequest) {
        let counter = match transport {
            Transport::Grpc => &self.grpc_requests,
            Transport::Http => &self.http_requests,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let mut spans = Vec::new();
        let mut count = 0;
        for resource_spans in request.resource_spans {
            let resource = resource_spans
                .resource
                .map(|resource| attributes(&resource.attributes))
                .unwrap_or_default();
            let service_name = resource.get("service.name").cloned().unwrap_or_default();
            let service_instance = resource.get("service.instance.id").cloned();
            for scope_spans in resource_spans.scope_spans {
                let scope = scope_spans.scope.map(|s| s.name).unwrap_or_default();
                count += scope_spans.spans.len() as u64;
                if !self.keep {
                    continue;
                }
                for span in scope_spans.spans {
                    spans.push(ReceivedSpan {
                        transport,
                        service_name: service_name.clone(),
                        service_instance: service_instance.clone(),
                        scope: scope.clone(),
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: (!span.parent_span_id.is_empty())
                            .then(|| hex(&span.parent_span_id)),
                        name: span.name,
                        kind: span.kind,
                        attributes: attributes(&span.attributes),
                        events: span
                            .events
                            .into_iter()
                            .map(|event| ReceivedEvent {
                                attributes: attributes(&event.attributes),
                                name: event.name,
                            })
                            .collect(),
                        links: span
                            .links
                            .into_iter()
                            .map(|link| ReceivedLink {
                                trace_id: hex(&link.trace_id),
                                span_id: hex(&link.span_id),
                            })
                            .collect(),
                        // 2 = STATUS_CODE_ERROR
                        error: span.status.is_some_and(|status| status.code == 2),
                        start_unix_nano: span.start_time_unix_nano,
                        end_unix_nano: span.end_time_unix_nano,
                    });
                }
            }
        }
        self.span_count.fetch_add(count, Ordering::Relaxed);
        if !spans.is_empty() {
            self.spans
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .extend(spans);
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn attributes(pairs: &[KeyValue]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|pair| (pair.key.clone(), render(pair.value.as_ref())))
        .collect()
}

fn render(value: Option<&AnyValue>) -> String {
    match value.and_then(|value| value.value.as_ref()) {
        Some(any_value::Value::StringValue(text)) => text.clone(),
        Some(any_value::Value::BoolValue(flag)) => flag.to_string(),
        Some(any_value::Value::IntValue(number)) => number.to_string(),
        Some(any_value::Value::DoubleValue(number)) => number.to_string(),
        Some(any_value::Value::ArrayValue(array)) => {
            let items: Vec<String> = array.values.iter().map(|v| render(Some(v))).collect();
            format!("[{}]", items.join(","))
        }
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

struct GrpcService(Arc<Store>);

#[tonic::async_trait]
impl TraceService for GrpcService {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.accept(Transport::Grpc, request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

async fn http_export(
    axum::extract::State(store): axum::extract::State<Arc<Store>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, [(header::HeaderName, &'static str); 1], Vec<u8>) {
    let protobuf = [(header::CONTENT_TYPE, "application/x-protobuf")];
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    if !content_type.starts_with("application/x-protobuf") {
        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, protobuf, Vec::new());
    }
    match ExportTraceServiceRequest::decode(body) {
        Ok(request) => {
            store.accept(Transport::Http, request);
            let reply = ExportTraceServiceResponse {
                partial_success: None,
            };
            (StatusCode::OK, protobuf, reply.encode_to_vec())
        }
        Err(_) => (StatusCode::BAD_REQUEST, protobuf, Vec::new()),
    }
}

/// A running receiver; both listeners stop when it is dropped.
pub struct OtlpReceiver {
    grpc: SocketAddr,
    http: SocketAddr,
    store: Arc<Store>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for OtlpReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpReceiver")
            .field("grpc", &self.grpc)
            .field("http", &self.http)
            .finish_non_exhaustive()
    }
}

impl OtlpReceiver {
    /// Starts both listeners on random loopback ports and keeps every span it receives.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_with(true).await
    }

    /// Starts both listeners; spans are decoded and counted but not kept (for long benchmarks).
    pub async fn counting() -> std::io::Result<Self> {
        Self::start_with(false).await
    }

    async fn start_with(keep: bool) -> std::io::Result<Self> {
        let store = Arc::new(Store {
            keep,
            spans: Mutex::new(Vec::new()),
            span_count: AtomicU64::new(0),
            grpc_requests: AtomicU64::new(0),
            http_requests: AtomicU64::new(0),
        });
        let stop = CancellationToken::new();

        let grpc_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let grpc = grpc_listener.local_addr()?;
        let service = TraceServiceServer::new(GrpcService(store.clone()));
        let grpc_stop = stop.clone();
        let grpc_task = tokio::spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(grpc_listener);
            let served = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, grpc_stop.cancelled_owned())
                .await;
            if let Err(error) = served {
                tracing::warn!(%error, "OTLP gRPC receiver stopped");
            }
        });

        let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let http = http_listener.local_addr()?;
        let router = axum::Router::new()
            .route("/v1/traces", axum::routing::post(http_export))
            .with_state(store.clone());
        let http_stop = stop.clone();
        let http_task = tokio::spawn(async move {
            let served = axum::serve(http_listener, router)
                .with_graceful_shutdown(http_stop.cancelled_owned())
                .await;
            if let Err(error) = served {
                tracing::warn!(%error, "OTLP HTTP receiver stopped");
            }
        });

        Ok(Self {
            grpc,
            http,
            store,
            stop,
            tasks: vec![grpc_task, http_task],
        })
    }

    /// `OTEL_EXPORTER_OTLP_ENDPOINT` for OTLP/gRPC (`http://127.0.0.1:<port>`).
    pub fn grpc_endpoint(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// `OTEL_EXPORTER_OTLP_ENDPOINT` for OTLP/HTTP protobuf (`http://127.0.0.1:<port>`; the
    /// exporter appends `/v1/traces`).
    pub fn http_endpoint(&self) -> String {
        format!("http://{}", self.http)
    }

    /// Every span received so far (empty for a [`OtlpReceiver::counting`] receiver).
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.store
            .spans
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    /// The spans of one trace.
    pub fn trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        self.spans()
            .into_iter()
            .filter(|span| span.trace_id == trace_id)
            .collect()
    }

    /// Spans received so far.
    pub fn span_count(&self) -> u64 {
        self.store.span_count.load(Ordering::Relaxed)
    }

    /// Export requests received over `transport`.
    pub fn requests(&self, transport: Transport) -> u64 {
        match transport {
            Transport::Grpc => self.store.grpc_requests.load(Ordering::Relaxed),
            Transport::Http => self.store.http_requests.load(Ordering::Relaxed),
        }
    }

    /// Stops both listeners and waits for them.
    pub async fn stop(mut self) {
        self.stop.cancel();
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.stop.cancel();
        for task in &self.tasks {
            task.abort();
        }
    }
}
