//! The HTTP JSON admin API in front of a real assigner: create a job, watch it complete, read it
//! back, ask about an ID and the stats, and get clear errors for bad input and for the assigner's
//! refusals (their codes mapped to 404, 409 and 422).

use elk_integration_tests::{Ledger, RecordingProcessor, Stack};
use elk_types::IdRange;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// The admin token the API is started with.
const TOKEN: &str = "test-admin-token-0123456789";

/// One HTTP/1.1 request with `Connection: close`; returns the status code and the JSON body.
async fn call(
    address: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let body = body.map(|value| value.to_string()).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let json_body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    (
        status,
        serde_json::from_str(json_body).unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_api_drives_a_job_end_to_end() {
    let stack = Stack::new().await.unwrap();
    let election = stack.election("election-1");
    let assigner = stack.assigner("assigner-1");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let security = elk_assigner::http::HttpSecurity::load_with_env(
        &elk_assigner::HttpSettings::default(),
        |name| (name == elk_assigner::http::ADMIN_TOKENS_ENV).then(|| TOKEN.to_owned()),
    )
    .unwrap();
    let server = tokio::spawn(elk_assigner::http::serve_http(
        listener,
        stack.resources.clone(),
        security,
        stop.clone(),
    ));
    let range = IdRange::new(1, 20_000).unwrap();
    let ledger = Ledger::new(range);
    let worker = stack
        .worker("worker-a", 2, RecordingProcessor::new(ledger.clone()))
        .await
        .unwrap();

    let (status, created) = call(
        address,
        "POST",
        "/v1/jobs",
        Some(json!({"name": "web", "start": 1, "end": 20_000, "partition_size": 1_000})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let job = stack
        .wait_job_completed("web", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(job.partitions_completed, 20);
    assert!(ledger.missing().is_empty() && ledger.duplicates().is_empty());

    let (status, body) = call(address, "GET", "/v1/jobs/web", None).await;
    assert_eq!(status, 200);
    assert_eq!(body["job"]["state"], "completed", "{body}");
    let (status, body) = call(address, "GET", "/v1/jobs/web/ids/777", None).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"]["state"], "completed", "{body}");
    let (status, body) = call(address, "GET", "/v1/stats", None).await;
    assert_eq!(status, 200);
    assert!(
        body["stats"]["progress_applied"].as_u64().unwrap() >= 20,
        "{body}"
    );

    let (status, body) = call(address, "GET", "/v1/jobs/nope", None).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "unknown_job", "{body}");
    // The assigner's own refusals keep their code through the bridge and get its status.
    let (status, body) = call(
        address,
        "POST",
        "/v1/jobs",
        Some(json!({"name": "web", "start": 1, "end": 10, "partition_size": 5})),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "already_exists", "{body}");
    let (status, body) = call(address, "POST", "/v1/jobs/web/pause", None).await;
    assert_eq!(status, 409, "a completed job cannot be paused: {body}");
    assert_eq!(body["error"]["code"], "invalid_state", "{body}");
    // Well-formed for the bridge, refused by the assigner: partitions of at most 2^40 IDs.
    let (status, body) = call(
        address,
        "POST",
        "/v1/jobs",
        Some(json!({"name": "huge", "start": 1, "end": 10, "partition_size": 1_u64 << 41})),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid_spec", "{body}");
    let (status, body) = call(address, "GET", "/v1/jobs/huge", None).await;
    assert_eq!(status, 404, "nothing was created: {body}");
    let (status, body) = call(
        address,
        "POST",
        "/v1/jobs",
        Some(json!({"name": "bad", "start": 10, "end": 1, "partition_size": 5})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "bad_request", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("end"), "{body}");

    stop.cancel();
    server.await.unwrap().unwrap();
    worker.shutdown().await.unwrap();
    assigner.stop().await;
    election.stop().await;
}
