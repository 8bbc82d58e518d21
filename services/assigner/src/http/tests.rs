//! Tests of the HTTP API: request building and parsing without NATS, then the whole bridge
//! against a real nats-server with a scripted stand-in for the assigner leader.

use super::*;
use elk_protocol::admin::{ASSIGNER_SERVICE, AdminReply, AdminRequest, AdminResult, AdminStats};
use elk_protocol::messages::JobRecord;
use elk_protocol::names::Names;
use elk_protocol::{decode, encode};
use elk_types::{Epoch, Namespace};
use futures::StreamExt;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn job(name: &str) -> JobName {
    JobName::new(name).unwrap()
}

fn create(body: Value) -> Result<AdminCommand, ApiError> {
    create_job_command(body.to_string().as_bytes())
}

fn create_error(body: Value) -> String {
    let error = create(body).unwrap_err();
    assert_eq!(
        (error.status, error.code),
        (StatusCode::BAD_REQUEST, "bad_request")
    );
    error.message
}

fn query(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn create_body_builds_fixed_and_open_ended_specs() {
    let fixed = create(json!({"name": "backfill", "start": 1, "end": 1000, "partition_size": 100}))
        .unwrap();
    assert_eq!(
        fixed,
        AdminCommand::CreateJob {
            name: job("backfill"),
            spec: JobSpec::fixed(IdRange::new(1, 1000).unwrap(), 100),
        }
    );

    let open = create(json!({
        "name": "events", "start": 10, "partition_size": 50,
        "max_attempts": 5, "retry_backoff_ms": 250, "lookahead": 8
    }))
    .unwrap();
    let AdminCommand::CreateJob { name, spec } = open else {
        panic!("not a create: {open:?}");
    };
    assert_eq!(name, job("events"));
    assert!(spec.open_ended);
    assert_eq!(spec.range.first(), 10);
    assert_eq!(
        (
            spec.partition_size,
            spec.max_attempts,
            spec.retry_backoff_ms,
            spec.lookahead
        ),
        (50, 5, 250, 8)
    );
}

#[test]
fn create_body_errors_say_what_is_wrong() {
    let base = |extra: Value| {
        let mut body = json!({"name": "j", "start": 10, "end": 20, "partition_size": 5});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    assert!(create_error(base(json!({"end": 5}))).contains("end 5 is below start 10"));
    assert!(create_error(base(json!({"partition_size": 0}))).contains("partition_size"));
    assert!(create_error(base(json!({"name": "a.b"}))).contains("'.'"));
    assert!(create_error(base(json!({"max_attempts": 0}))).contains("max_attempts"));
    assert!(create_error(base(json!({"lookahead": 3}))).contains("open-ended"));
    assert!(create_error(base(json!({"end": u64::MAX}))).contains("below"));
    assert!(create_error(base(json!({"partitionSize": 5}))).contains("unknown field"));
    assert!(create_error(json!({"name": "j", "start": 1})).contains("partition_size"));
    assert!(create_job_command(b"not json").is_err());
}

#[test]
fn partitions_query_builds_the_listing() {
    let command = partitions_command(&query(&[
        ("job", "backfill"),
        ("status", "failed, pending"),
        ("status", "failed"),
        ("after_job", "backfill"),
        ("after_id", "40"),
        ("limit", "25"),
    ]))
    .unwrap();
    assert_eq!(
        command,
        AdminCommand::ListPartitions {
            job: Some(job("backfill")),
            statuses: vec![PartitionStatus::Failed, PartitionStatus::Pending],
            after: Some((job("backfill"), PartitionId(40))),
            limit: Some(25),
        }
    );
    assert_eq!(
        partitions_command(&[]).unwrap(),
        AdminCommand::ListPartitions {
            job: None,
            statuses: vec![],
            after: None,
            limit: None,
        }
    );
}

#[test]
fn jobs_query_builds_one_page() {
    assert_eq!(
        jobs_command(&query(&[("after", "backfill"), ("limit", "25")])).unwrap(),
        AdminCommand::ListJobs {
            after: Some(job("backfill")),
            limit: Some(25),
        }
    );
    let error = |pairs: &[(&str, &str)]| jobs_command(&query(pairs)).unwrap_err().message;
    assert!(error(&[("limit", "0")]).contains("between 1 and 1000"));
    assert!(error(&[("job", "x")]).contains("unknown query parameter 'job'"));
}

#[test]
fn partitions_query_errors() {
    let error = |pairs: &[(&str, &str)]| partitions_command(&query(pairs)).unwrap_err().message;
    assert!(error(&[("status", "done")]).contains("unknown status 'done'"));
    assert!(error(&[("after_id", "3")]).contains("go together"));
    assert!(error(&[("limit", "0")]).contains("between 1 and 1000"));
    assert!(error(&[("limit", "1001")]).contains("between 1 and 1000"));
    assert!(error(&[("limit", "x")]).contains("not an unsigned"));
    assert!(error(&[("page", "2")]).contains("unknown query parameter 'page'"));
}

#[test]
fn retry_body_selects_all_one_job_or_one_partition() {
    assert_eq!(
        retry_command(b"").unwrap(),
        AdminCommand::Retry {
            job: None,
            partition: None
        }
    );
    assert_eq!(
        retry_command(br#"{"job": "j", "partition": 7}"#).unwrap(),
        AdminCommand::Retry {
            job: Some(job("j")),
            partition: Some(PartitionId(7))
        }
    );
    assert!(
        retry_command(br#"{"partition": 7}"#)
            .unwrap_err()
            .message
            .contains("needs its job")
    );
}

#[test]
fn refusal_codes_map_to_statuses() {
    use elk_protocol::admin::AdminErrorCode as Code;
    let status = |code: Code| refusal_status(code);
    assert_eq!(status(Code::UnknownJob), StatusCode::NOT_FOUND);
    assert_eq!(status(Code::UnknownPartition), StatusCode::NOT_FOUND);
    assert_eq!(status(Code::AlreadyExists), StatusCode::CONFLICT);
    assert_eq!(status(Code::InvalidState), StatusCode::CONFLICT);
    assert_eq!(status(Code::InvalidSpec), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(status(Code::BadRequest), StatusCode::BAD_REQUEST);
    assert_eq!(status(Code::Internal), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(status(Code::Unavailable), StatusCode::SERVICE_UNAVAILABLE);
}

/// Answers admin requests like a leader would, from a script; records the commands.
async fn fake_assigner(client: async_nats::Client, names: &Names) -> Arc<Mutex<Vec<AdminCommand>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut requests = client
        .queue_subscribe(
            names.admin_subject(ASSIGNER_SERVICE, "*"),
            "assigner".to_owned(),
        )
        .await
        .unwrap();
    // A round trip on the same connection: the subscription is registered once it returns.
    let inbox = client.new_inbox();
    let mut echo = client.subscribe(inbox.clone()).await.unwrap();
    client.publish(inbox, "".into()).await.unwrap();
    echo.next().await.unwrap();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Some(message) = requests.next().await {
            let request: AdminRequest = decode(&message.payload).unwrap();
            assert!(message.subject.ends_with(request.command.verb()));
            record.lock().unwrap().push(request.command.clone());
            use elk_protocol::admin::AdminErrorCode as Code;
            let reply = match request.command {
                AdminCommand::ListJobs { .. } => AdminReply::ok(AdminResult::Jobs {
                    jobs: vec![],
                    next_after: None,
                }),
                AdminCommand::CreateJob { name, spec } => AdminReply::ok(AdminResult::Job {
                    job: JobRecord::new(name, spec, Epoch(1), 0),
                }),
                AdminCommand::GetJob { name } => {
                    AdminReply::error(Code::UnknownJob, format!("unknown job '{name}'"))
                }
                AdminCommand::PauseJob { name } => AdminReply::error(
                    Code::InvalidState,
                    format!("job '{name}' is Completed and cannot be paused"),
                ),
                AdminCommand::Stats => AdminReply::ok(AdminResult::Stats {
                    stats: AdminStats::default(),
                }),
                AdminCommand::Retry { .. } => AdminReply::ok(AdminResult::Retried { count: 3 }),
                _ => AdminReply::error(Code::Internal, "could not store the job: boom"),
            };
            let reply_to = message.reply.unwrap();
            client
                .publish(reply_to, encode(&reply).into())
                .await
                .unwrap();
        }
    });
    seen
}

async fn provisioned(client: async_nats::Client, names: &Names) -> Resources {
    elk_nats::provision(client, names.clone(), &elk_nats::ProvisionConfig::default())
        .await
        .unwrap()
}

async fn serve(bridge: Bridge) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router(bridge)).await });
    address
}

/// A minimal HTTP/1.1 client: one request per connection; returns the status and the JSON body.
async fn call(address: SocketAddr, method: &str, path: &str, body: &str) -> (u16, Value) {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8(response).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let json = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, json)
}

#[tokio::test]
async fn routes_are_forwarded_to_the_assigner_and_answers_mapped() {
    let server = elk_testkit::NatsServer::start();
    let client = async_nats::connect(server.url()).await.unwrap();
    let names = Names::new(Namespace::new("test").unwrap());
    let seen = fake_assigner(client.clone(), &names).await;
    let resources = provisioned(client.clone(), &names).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    // The guard is tested on its own (`guard`, integration-tests/tests/http_security.rs):
    // here every request passes it.
    let open = crate::config::HttpSettings {
        allow_unauthenticated: true,
        allowed_hosts: vec!["test".to_owned()],
        ..Default::default()
    };
    let security = HttpSecurity::load_with_env(&open, |_| None).unwrap();
    let served = tokio::spawn(serve_http(listener, resources, security, shutdown.clone()));

    let (status, body) = call(address, "GET", "/healthz", "").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));

    let (status, body) = call(address, "GET", "/v1/jobs", "").await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"kind": "jobs", "jobs": [], "next_after": null})
    );

    let create = r#"{"name": "backfill", "start": 1, "end": 100, "partition_size": 10}"#;
    let (status, body) = call(address, "POST", "/v1/jobs", create).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["kind"], "job");
    assert_eq!(body["job"]["name"], "backfill");
    assert_eq!(body["job"]["spec"]["range"], json!({"min": 1, "max": 100}));
    assert_eq!(body["job"]["state"], "active");

    let (status, body) = call(address, "GET", "/v1/jobs/missing", "").await;
    assert_eq!(
        (status, body),
        (
            404,
            json!({"error": {"code": "unknown_job", "message": "unknown job 'missing'"}})
        )
    );

    let (status, body) = call(address, "POST", "/v1/jobs/done/pause", "").await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "invalid_state");

    let (status, body) = call(address, "POST", "/v1/retry", r#"{"job": "backfill"}"#).await;
    assert_eq!(
        (status, body),
        (200, json!({"kind": "retried", "count": 3}))
    );

    let (status, body) = call(address, "GET", "/v1/stats", "").await;
    assert_eq!((status, &body["kind"]), (200, &json!("stats")));

    // Read from KV by this replica, no leader involved: nothing designated, nobody live yet.
    let (status, body) = call(address, "GET", "/v1/roles", "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["view_generation"], Value::Null);
    assert_eq!(body["roles"][0]["role"], "assigner");
    assert_eq!(body["roles"][0]["holder"], Value::Null);
    assert_eq!(body["roles"][1]["role"], "scaler");
    let (status, body) = call(address, "GET", "/v1/workers", "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"namespace": "test", "view_generation": null, "workers": []})
    );

    let (status, body) = call(address, "GET", "/v1/jobs/backfill/ids/42", "").await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(
        body["error"],
        json!({"code": "internal", "message": "could not store the job: boom"})
    );

    // Rejected before NATS: bad input, unknown routes and methods.
    let (status, body) = call(address, "POST", "/v1/jobs", r#"{"name": "x"}"#).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "bad_request");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("invalid job body"), "{body}");
    let (status, _) = call(address, "GET", "/v1/jobs/a%2Eb", "").await;
    assert_eq!(status, 400);
    let (status, body) = call(address, "GET", "/v1/jobs/j/ids/minus-one", "").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = call(address, "GET", "/v1/partitions?status=weird", "").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = call(address, "GET", "/v2/nothing", "").await;
    assert_eq!(
        (status, body),
        (
            404,
            json!({"error": {"code": "not_found", "message": "no route GET /v2/nothing"}})
        )
    );
    let (status, body) = call(address, "DELETE", "/v1/jobs", "").await;
    assert_eq!(status, 405, "{body}");
    assert_eq!(body["error"]["code"], "method_not_allowed");

    let commands = seen.lock().unwrap().clone();
    assert_eq!(
        commands.iter().map(AdminCommand::verb).collect::<Vec<_>>(),
        [
            "list_jobs",
            "create_job",
            "get_job",
            "pause_job",
            "retry",
            "stats",
            "id_status"
        ]
    );
    assert_eq!(
        commands[1],
        AdminCommand::CreateJob {
            name: job("backfill"),
            spec: JobSpec::fixed(IdRange::new(1, 100).unwrap(), 10),
        }
    );

    shutdown.cancel();
    served.await.unwrap().unwrap();
}

#[tokio::test]
async fn no_assigner_is_a_503_after_the_patience() {
    let server = elk_testkit::NatsServer::start();
    let client = async_nats::connect(server.url()).await.unwrap();
    let names = Names::new(Namespace::new("nobody").unwrap());
    let resources = provisioned(client.clone(), &names).await;
    let address = serve(Bridge {
        admin: AdminClient::new(client, names).with_patience(Duration::from_millis(300)),
        resources,
    })
    .await;
    let (status, body) = call(address, "GET", "/v1/stats", "").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "no_leader", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("no assigner answered"), "{body}");
}
