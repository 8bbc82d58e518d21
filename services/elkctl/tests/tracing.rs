//! `elkctl` exports its command's trace and the assigner continues it: the `elkctl` binary runs
//! with the standard `OTEL_EXPORTER_OTLP_*` variables (gRPC) against a control plane in this
//! process, which exports as `elk-assigner` over OTLP/HTTP; both reach a real OTLP receiver.
//! The command span is the trace's root, the admin request its child, the assigner's handling a
//! child of the request — and elkctl's spans are there as soon as it exits (flushed on exit).
//! The HTTP admin API does the same for a caller's `traceparent` header.

use elk_nats::NatsConfig;
use elk_otlp_receiver::{OtlpReceiver, Transport};
use elk_runtime::ServiceCommon;
use elk_runtime::telemetry::OtlpProtocol;
use elk_testkit::{NatsServer, wait_until};
use elk_types::{MemberId, Namespace};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// A caller's span context, as an HTTP client would send it.
const CALLER_TRACE: &str = "5c1a6f0e9b2d4c3a8e7f6d5c4b3a2918";
const CALLER_SPAN: &str = "a1b2c3d4e5f60718";

const NAMESPACE: &str = "traced-cli";
const DEADLINE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_elkctl_command_and_the_assigner_s_handling_are_one_trace() {
    let receiver = OtlpReceiver::start().await.expect("receiver starts");
    let config = elk_runtime::TracingConfig {
        otlp_endpoint: Some(receiver.http_endpoint()),
        otlp_protocol: Some(OtlpProtocol::HttpProtobuf),
        ..elk_runtime::TracingConfig::default()
    };
    let mut options = elk_runtime::TelemetryOptions::new("elk-assigner", &config);
    options.default_log_filter = "warn";
    let telemetry = elk_runtime::telemetry::init(options).expect("telemetry");

    let server = NatsServer::start();
    let url = server.url().to_owned();
    let service = |id: &str| {
        ServiceCommon::new(
            NatsConfig::new(&url, id),
            Namespace::new(NAMESPACE).unwrap(),
            MemberId::new(id).unwrap(),
        )
    };
    let election = elk_election::ElectionConfig::new(service("election-1"));
    let assigner = elk_assigner::AssignerConfig::new(service("assigner-1"));
    let stop = CancellationToken::new();
    let election = tokio::spawn(elk_election::run(election, stop.clone().cancelled_owned()));
    let assigner = tokio::spawn(elk_assigner::run(assigner, stop.clone().cancelled_owned()));

    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_elkctl"))
        .args([
            "job",
            "create",
            "traced",
            "--start",
            "1",
            "--end",
            "100",
            "--partition-size",
            "10",
            "--wait",
            "30",
        ])
        .env("ELK_NATS_URL", &url)
        .env("ELK_NAMESPACE", NAMESPACE)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.grpc_endpoint())
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .env("NO_COLOR", "1")
        .output()
        .await
        .expect("elkctl runs");
    assert!(
        output.status.success(),
        "elkctl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // elkctl flushed before it exited: its spans are at the receiver already.
    let spans = receiver.spans();
    let command = spans
        .iter()
        .find(|span| span.name == "elkctl job create")
        .expect("the command's span was exported before elkctl exited");
    assert_eq!(command.service_name, "elkctl");
    assert!(command.parent_span_id.is_none(), "the command is the root");
    assert_eq!(command.transport, Transport::Grpc);
    let request = spans
        .iter()
        .find(|span| span.name == "elk.admin.request")
        .expect("the admin request span");
    assert_eq!(request.service_name, "elkctl");
    assert_eq!(request.trace_id, command.trace_id);
    assert_eq!(
        request.parent_span_id.as_deref(),
        Some(command.span_id.as_str())
    );

    // An HTTP client's trace goes on through the bridge into the leader's handling.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let client = elk_nats::connect(&NatsConfig::new(&url, "http-bridge"))
        .await
        .unwrap();
    let names = elk_protocol::names::Names::new(Namespace::new(NAMESPACE).unwrap());
    let resources = elk_nats::provision(client, names, &elk_nats::ProvisionConfig::default())
        .await
        .unwrap();
    // No tokens (the guard is tested in http_security.rs); the request's Host is `test`.
    let settings = elk_assigner::HttpSettings {
        allow_unauthenticated: true,
        allowed_hosts: vec!["test".to_owned()],
        ..elk_assigner::HttpSettings::default()
    };
    let security = elk_assigner::http::HttpSecurity::load_with_env(&settings, |_| None).unwrap();
    let bridge = tokio::spawn(elk_assigner::http::serve_http(
        listener,
        resources,
        security,
        stop.clone(),
    ));
    let http_request = format!(
        "GET /v1/stats HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\
         traceparent: 00-{CALLER_TRACE}-{CALLER_SPAN}-01\r\n\r\n"
    );
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(http_request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    stop.cancel();
    let _ = bridge.await;
    election
        .await
        .expect("joins")
        .expect("election stopped cleanly");
    assigner
        .await
        .expect("joins")
        .expect("assigner stopped cleanly");
    telemetry.shutdown().await;
    wait_until("the assigner's handling exported", DEADLINE, || async {
        receiver
            .spans()
            .iter()
            .any(|span| span.name == "elk.admin.handle")
    })
    .await
    .expect("the assigner's span");
    let spans = receiver.spans();
    let handle = spans
        .iter()
        .find(|span| span.name == "elk.admin.handle")
        .unwrap();
    assert_eq!(handle.service_name, "elk-assigner");
    assert_eq!(handle.transport, Transport::Http);
    assert_eq!(handle.trace_id, command.trace_id, "one trace");
    assert_eq!(
        handle.parent_span_id.as_deref(),
        Some(request.span_id.as_str())
    );
    assert_eq!(handle.attribute("elk.verb"), Some("create_job"));

    let http = spans
        .iter()
        .find(|span| span.name == "GET /v1/stats")
        .expect("the HTTP request's span");
    assert_eq!(http.trace_id, CALLER_TRACE);
    assert_eq!(http.parent_span_id.as_deref(), Some(CALLER_SPAN));
    assert_eq!(http.attribute("http.response.status_code"), Some("200"));
    let forwarded = spans
        .iter()
        .find(|span| {
            span.name == "elk.admin.request"
                && span.parent_span_id.as_deref() == Some(http.span_id.as_str())
        })
        .expect("the bridge's admin request under the HTTP span");
    let stats = spans
        .iter()
        .find(|span| span.name == "elk.admin.handle" && span.attribute("elk.verb") == Some("stats"))
        .expect("the leader's handling of stats");
    assert_eq!(stats.trace_id, CALLER_TRACE);
    assert_eq!(
        stats.parent_span_id.as_deref(),
        Some(forwarded.span_id.as_str())
    );
}
