//! Sampling decisions travel with the work. The assigner traces with a parent-based ratio of 0
//! (it starts every partition's trace, and samples none), the worker with the default
//! `parentbased_always_on`: each grant carries the decision as its `unsampled` flag (no
//! `traceparent`), and the worker honours it — no span of the partition's life is exported by
//! either process, not even the processor's own span (`user.process`), which would otherwise
//! start a sampled trace of its own in the worker.

use elk_integration_tests::nodes::{Node, NodeTarget, otlp_env};
use elk_nats::AdminClient;
use elk_otlp_receiver::OtlpReceiver;
use elk_protocol::decode;
use elk_protocol::messages::{AssignmentRecord, JobSpec, JobState};
use elk_protocol::names::Names;
use elk_testkit::{NatsServer, wait_until};
use elk_types::{IdRange, JobName, Namespace};
use std::sync::Mutex;
use std::time::Duration;

const NAMESPACE: &str = "unsampled";
const DEADLINE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsampled_partition_trace_is_dropped_by_every_process() {
    let receiver = OtlpReceiver::start().await.expect("receiver starts");
    let server = NatsServer::builder().start().expect("nats-server");
    let nats = server.url().to_owned();
    let target = NodeTarget {
        binary: env!("CARGO_BIN_EXE_elk-node"),
        nats_url: &nats,
        namespace: NAMESPACE,
    };
    let endpoint = receiver.http_endpoint();
    let mut assigner_env = otlp_env(&endpoint, "http/protobuf");
    assigner_env.extend([
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "0"),
    ]);
    let mut worker_env = otlp_env(&endpoint, "http/protobuf");
    worker_env.extend([("ELK_NODE_CAPACITY", "2"), ("ELK_NODE_ID_DELAY_MS", "30")]);
    let election = Node::start(target, "election", "election-1", &[]);
    let assigner = Node::start(target, "assigner", "assigner-1", &assigner_env);
    let worker = Node::start(target, "worker", "worker-1", &worker_env);

    let client = elk_nats::connect(&elk_nats::NatsConfig::new(&nats, "sampling-test"))
        .await
        .expect("connect");
    let names = Names::new(Namespace::new(NAMESPACE).unwrap());
    let resources = elk_nats::provision(client.clone(), names.clone(), &Default::default())
        .await
        .expect("provision");
    let admin = AdminClient::new(client, names).with_patience(DEADLINE);
    wait_until("the worker is live", DEADLINE, || async {
        admin
            .stats()
            .await
            .is_ok_and(|stats| stats.live_workers == 1)
    })
    .await
    .expect("the worker is live");
    let job = JobName::new("quiet").unwrap();
    let spec = JobSpec::fixed(IdRange::new(1, 120).unwrap(), 20);
    admin
        .create_job(job.clone(), spec)
        .await
        .expect("job created");

    // The grants carry the decision as a flag, and no trace context.
    let seen = Mutex::new(Vec::new());
    wait_until("a grant", DEADLINE, || async {
        let Ok(Some(entry)) = elk_nats::read_entry(&resources.assignments, "worker-1").await else {
            return false;
        };
        let Ok(record) = decode::<AssignmentRecord>(&entry.value) else {
            return false;
        };
        let found = !record.grants.is_empty();
        *seen.lock().unwrap() = record.grants;
        found
    })
    .await
    .expect("worker-1 gets grants");
    for grant in seen.lock().unwrap().iter() {
        assert!(grant.unsampled, "{grant:?} does not say unsampled");
        assert_eq!(grant.traceparent, None, "{grant:?}");
    }

    wait_until("job completed", DEADLINE, || async {
        admin
            .get_job(job.clone())
            .await
            .is_ok_and(|record| record.state == JobState::Completed)
    })
    .await
    .expect("job completed");
    worker.stop().await;
    assigner.stop().await;
    election.stop().await;

    let spans = receiver.spans();
    let partition_spans: Vec<&str> = spans
        .iter()
        .map(|span| span.name.as_str())
        .filter(|name| name.starts_with("elk.partition") || name.starts_with("elk.progress"))
        .collect();
    assert!(partition_spans.is_empty(), "exported: {partition_spans:?}");
    let user: Vec<_> = spans
        .iter()
        .filter(|span| span.name == "user.process")
        .collect();
    assert!(
        user.is_empty(),
        "the processor's spans inherit the unsampled decision, got {user:?}"
    );
}
