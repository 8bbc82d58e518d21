//! The planner SDK against a real nats-server: the test plays the assigner and sends
//! `PlanRequest`s on `elk.<ns>.plan.<job>`.

use elk_nats::NatsConfig;
use elk_protocol::admin::{PlanReply, PlanRequest};
use elk_protocol::names::Names;
use elk_protocol::{SCHEMA_VERSION, decode, encode};
use elk_testkit::NatsServer;
use elk_types::{JobName, Namespace};
use elk_worker::{PlanError, Planner, PlannerHandle, serve_planner, serve_planner_with_client};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Reports `max` (0 = nothing yet) and records every call's `(cursor, wanted)`.
#[derive(Default)]
struct GrowingPlanner {
    max: AtomicU64,
    calls: Mutex<Vec<(u64, u64)>>,
}

impl Planner for GrowingPlanner {
    async fn next_max_id(
        &self,
        job: &JobName,
        cursor: u64,
        wanted: u64,
    ) -> Result<Option<u64>, PlanError> {
        assert_eq!(job.as_str(), "events");
        self.calls.lock().unwrap().push((cursor, wanted));
        Ok(match self.max.load(Ordering::SeqCst) {
            0 => None,
            max => Some(max),
        })
    }
}

struct FailingPlanner;

impl Planner for FailingPlanner {
    async fn next_max_id(
        &self,
        _: &JobName,
        cursor: u64,
        _: u64,
    ) -> Result<Option<u64>, PlanError> {
        if cursor == 13 {
            panic!("unlucky cursor");
        }
        Err(PlanError::new("database unavailable"))
    }
}

fn namespace() -> Namespace {
    Namespace::new("test").unwrap()
}

fn job() -> JobName {
    JobName::new("events").unwrap()
}

fn subject() -> String {
    Names::new(namespace()).plan_subject(&job())
}

async fn client(server: &NatsServer) -> async_nats::Client {
    async_nats::connect(server.url()).await.expect("connect")
}

async fn serve<P: Planner>(server: &NatsServer, planner: P) -> PlannerHandle {
    serve_planner(
        NatsConfig::new(server.url(), "planner"),
        namespace(),
        job(),
        planner,
    )
    .await
    .expect("planner starts")
}

/// Sends raw bytes on the plan subject and decodes the reply.
async fn ask_raw(client: &async_nats::Client, payload: Vec<u8>) -> PlanReply {
    let reply = tokio::time::timeout(
        Duration::from_secs(5),
        client.request(subject(), payload.into()),
    )
    .await
    .expect("reply in time")
    .expect("a planner answers");
    decode(&reply.payload).expect("valid plan reply")
}

async fn ask(client: &async_nats::Client, cursor: u64, wanted: u64) -> Option<u64> {
    let request = PlanRequest {
        schema: SCHEMA_VERSION,
        job: job(),
        cursor,
        wanted,
    };
    ask_raw(client, encode(&request)).await.max_id
}

#[tokio::test]
async fn answers_plan_requests_with_the_planners_max_id() {
    let server = NatsServer::start();
    let planner = Arc::new(GrowingPlanner::default());
    planner.max.store(5_000, Ordering::SeqCst);
    let handle = serve(&server, planner.clone()).await;
    assert_eq!(handle.job(), &job());

    let client = client(&server).await;
    assert_eq!(ask(&client, 1, 400).await, Some(5_000));
    assert_eq!(planner.calls.lock().unwrap().as_slice(), &[(1, 400)]);

    let stats = handle.shutdown().await.unwrap();
    assert_eq!(stats.requests, 1);
    assert_eq!(stats.answered_some, 1);
    assert_eq!(stats.malformed + stats.errors, 0);

    // After shutdown nobody serves the subject any more.
    let gone = client
        .request(
            subject(),
            encode(&PlanRequest {
                schema: SCHEMA_VERSION,
                job: job(),
                cursor: 1,
                wanted: 1,
            })
            .into(),
        )
        .await;
    assert!(gone.is_err(), "no responders after shutdown: {gone:?}");
}

#[tokio::test]
async fn a_growing_max_is_reported_as_it_grows() {
    let server = NatsServer::start();
    let planner = Arc::new(GrowingPlanner::default());
    let handle = serve(&server, planner.clone()).await;
    let client = client(&server).await;

    assert_eq!(ask(&client, 1, 100).await, None, "nothing exists yet");
    planner.max.store(1_000, Ordering::SeqCst);
    assert_eq!(ask(&client, 1, 100).await, Some(1_000));
    assert_eq!(ask(&client, 1_001, 100).await, Some(1_000), "no new data");
    planner.max.store(2_500, Ordering::SeqCst);
    assert_eq!(ask(&client, 1_001, 100).await, Some(2_500));

    assert_eq!(
        planner.calls.lock().unwrap().as_slice(),
        &[(1, 100), (1, 100), (1_001, 100), (1_001, 100)]
    );
    let stats = handle.shutdown().await.unwrap();
    assert_eq!(
        (stats.requests, stats.answered_some, stats.answered_none),
        (4, 3, 1)
    );
}

#[tokio::test]
async fn malformed_requests_are_answered_with_none_and_counted() {
    let server = NatsServer::start();
    let planner = Arc::new(GrowingPlanner::default());
    planner.max.store(77, Ordering::SeqCst);
    let handle = serve(&server, planner.clone()).await;
    let client = client(&server).await;

    // Not MessagePack at all, an unsupported schema, and a request naming another job.
    assert_eq!(
        ask_raw(&client, b"{not msgpack".to_vec()).await.max_id,
        None
    );
    let future = PlanRequest {
        schema: SCHEMA_VERSION + 1,
        job: job(),
        cursor: 1,
        wanted: 1,
    };
    assert_eq!(ask_raw(&client, encode(&future)).await.max_id, None);
    let other = PlanRequest {
        schema: SCHEMA_VERSION,
        job: JobName::new("other").unwrap(),
        cursor: 1,
        wanted: 1,
    };
    assert_eq!(ask_raw(&client, encode(&other)).await.max_id, None);
    assert!(
        planner.calls.lock().unwrap().is_empty(),
        "planner not asked"
    );

    // The server keeps serving well-formed requests.
    assert_eq!(ask(&client, 1, 10).await, Some(77));
    let stats = handle.shutdown().await.unwrap();
    assert_eq!(stats.requests, 4);
    assert_eq!(stats.malformed, 3);
    assert_eq!(stats.answered_some, 1);
}

#[tokio::test]
async fn planner_errors_and_panics_are_answered_with_none() {
    let server = NatsServer::start();
    let handle = serve(&server, FailingPlanner).await;
    let client = client(&server).await;

    assert_eq!(ask(&client, 1, 10).await, None);
    assert_eq!(ask(&client, 13, 10).await, None, "a panic is answered too");
    assert_eq!(
        ask(&client, 20, 10).await,
        None,
        "and the server survives it"
    );
    let stats = handle.shutdown().await.unwrap();
    assert_eq!((stats.requests, stats.errors), (3, 3));
}

#[tokio::test]
async fn several_planners_share_a_job_through_the_queue_group() {
    let server = NatsServer::start();
    let first = Arc::new(GrowingPlanner::default());
    let second = Arc::new(GrowingPlanner::default());
    first.max.store(900, Ordering::SeqCst);
    second.max.store(900, Ordering::SeqCst);
    let shared = client(&server).await;
    let one = serve(&server, first.clone()).await;
    let two = serve_planner_with_client(shared.clone(), namespace(), job(), second.clone())
        .await
        .unwrap();

    let client = client(&server).await;
    for cursor in 1..=40 {
        assert_eq!(ask(&client, cursor, 1).await, Some(900));
    }
    let asked_first = first.calls.lock().unwrap().len();
    let asked_second = second.calls.lock().unwrap().len();
    assert_eq!(asked_first + asked_second, 40, "each request answered once");

    let stats_one = one.shutdown().await.unwrap();
    let stats_two = two.shutdown().await.unwrap();
    assert_eq!(stats_one.requests + stats_two.requests, 40);
    // The remaining planner takes everything once the other left; the shared connection stays.
    let three = serve_planner_with_client(shared.clone(), namespace(), job(), second.clone())
        .await
        .unwrap();
    assert_eq!(ask(&client, 41, 1).await, Some(900));
    three.shutdown().await.unwrap();
}
