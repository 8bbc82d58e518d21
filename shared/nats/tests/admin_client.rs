//! `AdminClient` against a real nats-server, with a scripted stand-in for the assigner leader:
//! no leader at all, a refusal (its code survives), and a leader that appears while a request is
//! already waiting.

use elk_nats::{AdminClient, AdminClientError, Retryable};
use elk_protocol::admin::{
    ASSIGNER_SERVICE, AdminCommand, AdminErrorCode, AdminReply, AdminRequest, AdminResult,
    AdminStats,
};
use elk_protocol::names::Names;
use elk_protocol::{decode, encode};
use elk_testkit::{NatsServer, wait_until};
use elk_types::{JobName, Namespace};
use futures::StreamExt;
use std::sync::atomic::Ordering;
use std::time::Duration;

fn names() -> Names {
    Names::new(Namespace::new("admin").unwrap())
}

/// Answers admin requests like a leader: `stats` with `jobs: 7`, everything else refused as an
/// unknown job. Returns once the subscription is registered with the server.
async fn start_leader(url: &str) -> tokio::task::JoinHandle<()> {
    let client = async_nats::connect(url).await.unwrap();
    let mut requests = client
        .queue_subscribe(
            names().admin_subject(ASSIGNER_SERVICE, "*"),
            ASSIGNER_SERVICE.to_owned(),
        )
        .await
        .unwrap();
    client.flush().await.unwrap();
    tokio::spawn(async move {
        while let Some(message) = requests.next().await {
            let request: AdminRequest = decode(&message.payload).unwrap();
            let reply = match request.command {
                AdminCommand::Stats => AdminReply::ok(AdminResult::Stats {
                    stats: AdminStats {
                        jobs: 7,
                        ..Default::default()
                    },
                }),
                other => AdminReply::error(
                    AdminErrorCode::UnknownJob,
                    format!("unknown job in {}", other.verb()),
                ),
            };
            let reply_to = message.reply.unwrap();
            client
                .publish(reply_to, encode(&reply).into())
                .await
                .unwrap();
        }
    })
}

async fn admin_client(url: &str, patience: Duration) -> AdminClient {
    let client = async_nats::connect(url).await.unwrap();
    AdminClient::new(client, names()).with_patience(patience)
}

#[tokio::test]
async fn without_a_leader_a_request_fails_with_no_leader_after_its_patience() {
    let server = NatsServer::start();
    let admin = admin_client(server.url(), Duration::from_millis(300)).await;
    let sent_before = admin
        .nats()
        .statistics()
        .out_messages
        .load(Ordering::Relaxed);
    let error = admin.stats().await.unwrap_err();
    assert!(
        matches!(error, AdminClientError::NoLeader { verb: "stats", .. }),
        "{error}"
    );
    assert_eq!(error.code(), "no_leader");
    assert!(error.is_retryable());
    assert!(error.to_string().contains("namespace 'admin'"), "{error}");
    let attempts = admin
        .nats()
        .statistics()
        .out_messages
        .load(Ordering::Relaxed)
        - sent_before;
    assert!(
        attempts >= 2,
        "asked again while waiting ({attempts} sends)"
    );
}

#[tokio::test]
async fn a_refusal_keeps_its_code_and_message() {
    let server = NatsServer::start();
    let _leader = start_leader(server.url()).await;
    let admin = admin_client(server.url(), Duration::from_secs(5)).await;
    let error = admin
        .get_job(JobName::new("nope").unwrap())
        .await
        .unwrap_err();
    let refusal = error.refusal().expect("a refusal");
    assert_eq!(refusal.code, AdminErrorCode::UnknownJob);
    assert_eq!(refusal.message, "unknown job in get_job");
    assert_eq!(error.code(), "unknown_job");
    assert!(!error.is_retryable());
    assert_eq!(admin.stats().await.unwrap().jobs, 7);
}

#[tokio::test]
async fn a_request_waits_for_a_leader_that_appears_late() {
    let server = NatsServer::start();
    let admin = admin_client(server.url(), Duration::from_secs(60)).await;
    let sent_before = admin
        .nats()
        .statistics()
        .out_messages
        .load(Ordering::Relaxed);
    let waiting = tokio::spawn({
        let admin = admin.clone();
        async move { admin.stats().await }
    });
    // The request has been refused with no responders and sent again at least once...
    let statistics = admin.nats().statistics();
    wait_until(
        "two attempts without a leader",
        Duration::from_secs(30),
        || {
            let sent = statistics.out_messages.load(Ordering::Relaxed);
            async move { sent >= sent_before + 2 }
        },
    )
    .await
    .unwrap();
    assert!(!waiting.is_finished());
    // ...then a leader starts, and the waiting request gets its answer.
    let _leader = start_leader(server.url()).await;
    let stats = waiting.await.unwrap().unwrap();
    assert_eq!(stats.jobs, 7);
}
