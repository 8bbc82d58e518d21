//! Traces across processes, checked at a real OTLP receiver (`elk-otlp-receiver`, in this test
//! process, gRPC and HTTP/protobuf on random ports): the election, the assigner and two workers
//! run as processes of their own (`elk-node`), each exporting with its own `service.name` (the
//! assigner over gRPC, the others over HTTP); this process creates the job through the
//! `AdminClient`, exporting its own spans over gRPC.
//!
//! Checked: an admin request and the assigner's handling are one trace (server span a child of
//! the client span); every partition's life is one trace with the parent chain
//! `elk.partition` (assigner) → `elk.partition.grant` (assigner) → `elk.partition.process`
//! (worker) → `user.process` (the processor's own span) and → `elk.progress.publish` (worker)
//! → `elk.progress.apply` (assigner), the root linked to the job's creation; checkpoints are
//! events of the processing span; a hand-over (a worker stopped mid-job releases its
//! partitions) links the new grant to the old owner's release; and a planner question is one
//! trace from the assigner into the planner's own code.

use elk_integration_tests::nodes::{Node, NodeTarget, otlp_env};
use elk_nats::AdminClient;
use elk_otlp_receiver::{OtlpReceiver, ReceivedSpan, Transport};
use elk_protocol::messages::{JobSpec, JobState, PartitionStatus};
use elk_protocol::names::Names;
use elk_testkit::{NatsServer, wait_until};
use elk_types::{IdRange, JobName, Namespace};
use std::collections::BTreeMap;
use std::time::Duration;

const NAMESPACE: &str = "traced";
const JOB: &str = "traced-job";
/// An open-ended job whose planner (served by worker-b) says its data ends at [`PLAN_MAX`].
const OPEN_JOB: &str = "traced-open";
const PLAN_MAX: u64 = 30;
const PARTITIONS: u64 = 8;
const PARTITION_SIZE: u64 = 10;
const DEADLINE: Duration = Duration::from_secs(60);

/// This process's telemetry: spans of the admin client, over gRPC.
async fn init_client_telemetry(receiver: &OtlpReceiver) -> elk_runtime::Telemetry {
    let config = elk_runtime::TracingConfig {
        otlp_endpoint: Some(receiver.grpc_endpoint()),
        otlp_protocol: Some(elk_runtime::telemetry::OtlpProtocol::Grpc),
        service_name: Some("elk-test-client".to_owned()),
        ..elk_runtime::TracingConfig::default()
    };
    let mut options = elk_runtime::TelemetryOptions::new("elk-test-client", &config);
    options.default_log_filter = "warn";
    let telemetry = elk_runtime::telemetry::init(options).expect("telemetry starts");
    assert!(telemetry.export().is_some(), "this process exports");
    telemetry
}

fn spans_named<'a>(spans: &'a [ReceivedSpan], name: &str) -> Vec<&'a ReceivedSpan> {
    spans.iter().filter(|span| span.name == name).collect()
}

fn by_id(spans: &[ReceivedSpan]) -> BTreeMap<&str, &ReceivedSpan> {
    spans
        .iter()
        .map(|span| (span.span_id.as_str(), span))
        .collect()
}

/// The parent of `span` (which must exist among `spans`).
fn parent_of<'a>(
    spans: &BTreeMap<&str, &'a ReceivedSpan>,
    span: &ReceivedSpan,
) -> &'a ReceivedSpan {
    let parent = span
        .parent_span_id
        .as_deref()
        .unwrap_or_else(|| panic!("{} has no parent", span.name));
    spans
        .get(parent)
        .unwrap_or_else(|| panic!("parent {parent} of {} was not exported", span.name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_s_partitions_are_traced_across_processes_with_their_hand_overs_linked() {
    let receiver = OtlpReceiver::start().await.expect("receiver starts");
    let telemetry = init_client_telemetry(&receiver).await;
    let server = NatsServer::builder().start().expect("nats-server");
    let nats = server.url().to_owned();
    let target = NodeTarget {
        binary: env!("CARGO_BIN_EXE_elk-node"),
        nats_url: &nats,
        namespace: NAMESPACE,
    };
    let (grpc_endpoint, http_endpoint) = (receiver.grpc_endpoint(), receiver.http_endpoint());
    let grpc = otlp_env(&grpc_endpoint, "grpc");
    let http = otlp_env(&http_endpoint, "http/protobuf");
    let mut worker_env = http.clone();
    worker_env.extend([("ELK_NODE_CAPACITY", "2"), ("ELK_NODE_ID_DELAY_MS", "100")]);
    let plan_max = PLAN_MAX.to_string();
    let mut planner_env = worker_env.clone();
    planner_env.extend([
        ("ELK_NODE_PLAN_JOB", OPEN_JOB),
        ("ELK_NODE_PLAN_MAX", &plan_max),
    ]);

    let election = Node::start(target, "election", "election-1", &http);
    let assigner = Node::start(target, "assigner", "assigner-1", &grpc);
    let worker_a = Node::start(target, "worker", "worker-a", &worker_env);
    let worker_b = Node::start(target, "worker", "worker-b", &planner_env);

    let client = elk_nats::connect(&elk_nats::NatsConfig::new(&nats, "trace-test"))
        .await
        .expect("connect");
    let names = Names::new(Namespace::new(NAMESPACE).unwrap());
    let admin = AdminClient::new(client, names).with_patience(DEADLINE);
    let job = JobName::new(JOB).unwrap();
    // Both workers in the view before the job: each gets half of the partitions.
    wait_until("both workers live", DEADLINE, || async {
        admin
            .stats()
            .await
            .is_ok_and(|stats| stats.live_workers == 2)
    })
    .await
    .expect("both workers live");
    let spec = JobSpec::fixed(
        IdRange::new(1, PARTITIONS * PARTITION_SIZE).unwrap(),
        PARTITION_SIZE,
    );
    admin
        .create_job(job.clone(), spec)
        .await
        .expect("job created");
    let open_job = JobName::new(OPEN_JOB).unwrap();
    admin
        .create_job(open_job.clone(), JobSpec::open_ended(1, PARTITION_SIZE))
        .await
        .expect("open-ended job created");
    wait_until("the planner answered", DEADLINE, || async {
        admin
            .get_job(open_job.clone())
            .await
            .is_ok_and(|record| record.known_max == Some(PLAN_MAX))
    })
    .await
    .expect("the planner answered");

    // Stop worker-a once it has checkpointed: it releases what it holds, worker-b takes over.
    wait_until("worker-a checkpointed", DEADLINE, || async {
        let query = elk_nats::PartitionQuery {
            job: Some(job.clone()),
            statuses: vec![PartitionStatus::Granted],
            ..Default::default()
        };
        admin.list_partitions(query).await.is_ok_and(|page| {
            page.partitions.iter().any(|p| {
                p.owner
                    .as_ref()
                    .is_some_and(|o| o.id.as_str() == "worker-a")
                    && p.checkpoint.is_some()
            })
        })
    })
    .await
    .expect("worker-a checkpointed");
    worker_a.stop().await;
    wait_until("job completed", DEADLINE, || async {
        admin
            .get_job(job.clone())
            .await
            .is_ok_and(|record| record.state == JobState::Completed)
    })
    .await
    .expect("job completed");
    worker_b.stop().await;
    assigner.stop().await;
    election.stop().await;
    telemetry.shutdown().await;
    // Every process flushed at exit; the last applies are exported once the assigner stopped.
    let completed_applies = || {
        spans_named(&receiver.spans(), "elk.progress.apply")
            .iter()
            .filter(|span| {
                span.attribute("elk.event") == Some("completed")
                    && span.attribute("elk.job") == Some(JOB)
            })
            .count() as u64
    };
    wait_until("every completion's apply exported", DEADLINE, || async {
        completed_applies() >= PARTITIONS
    })
    .await
    .expect("every completion's apply exported");
    let spans = receiver.spans();
    let ids = by_id(&spans);

    // The admin request and its handling: one trace, server span under the client span.
    let request = spans_named(&spans, "elk.admin.request")
        .into_iter()
        .find(|span| span.attribute("elk.verb") == Some("create_job"))
        .expect("the client's create_job span");
    assert_eq!(request.service_name, "elk-test-client");
    assert_eq!(request.kind, 3, "client");
    let handle = spans_named(&spans, "elk.admin.handle")
        .into_iter()
        .find(|span| span.trace_id == request.trace_id)
        .expect("the assigner's handling of create_job in the client's trace");
    assert_eq!(handle.service_name, "elk-assigner");
    assert_eq!(
        handle.parent_span_id.as_deref(),
        Some(request.span_id.as_str())
    );
    assert_eq!(handle.kind, 2, "server");
    assert_eq!(handle.transport, Transport::Grpc);
    let flush = spans_named(&spans, "elk.assigner.flush")
        .into_iter()
        .find(|span| span.parent_span_id.as_deref() == Some(handle.span_id.as_str()))
        .expect("the flush of the request's round, under its handling");
    assert_eq!(flush.trace_id, handle.trace_id);

    // One trace per partition, rooted at its cut and linked to the job's creation.
    let roots: Vec<&ReceivedSpan> = spans_named(&spans, "elk.partition")
        .into_iter()
        .filter(|root| root.attribute("elk.job") == Some(JOB))
        .collect();
    assert_eq!(roots.len() as u64, PARTITIONS, "one root per partition");
    let mut handed_over = 0;
    let mut checkpoints = 0;
    for root in &roots {
        let partition = root
            .attribute("elk.partition")
            .expect("partition attribute");
        assert_eq!(root.service_name, "elk-assigner");
        assert!(root.parent_span_id.is_none(), "the cut is the trace's root");
        assert!(
            root.links.iter().any(|link| link.span_id == handle.span_id),
            "partition {partition}'s root links to the create_job handling"
        );
        let trace: Vec<ReceivedSpan> = receiver.trace(&root.trace_id);
        let grants = spans_named(&trace, "elk.partition.grant");
        assert!(!grants.is_empty(), "partition {partition} was granted");
        for grant in &grants {
            assert_eq!(parent_of(&ids, grant).span_id, root.span_id);
            assert_eq!(grant.service_name, "elk-assigner");
        }
        let processes = spans_named(&trace, "elk.partition.process");
        assert!(!processes.is_empty(), "partition {partition} was processed");
        for process in &processes {
            assert_eq!(process.service_name, "elk-worker");
            let grant = parent_of(&ids, process);
            assert_eq!(grant.name, "elk.partition.grant");
            assert_eq!(
                process.service_instance.as_deref(),
                grant.attribute("elk.worker"),
                "processed by the worker it was granted to"
            );
            let user = trace
                .iter()
                .find(|span| {
                    span.name == "user.process"
                        && span.parent_span_id.as_deref() == Some(process.span_id.as_str())
                })
                .unwrap_or_else(|| {
                    panic!("the processor's span under partition {partition}'s processing")
                });
            assert_eq!(user.service_name, "elk-worker");
        }
        // The completion: published by the worker, applied by the assigner, in this trace.
        let apply = spans_named(&trace, "elk.progress.apply")
            .into_iter()
            .find(|span| span.attribute("elk.event") == Some("completed"))
            .unwrap_or_else(|| panic!("partition {partition}'s completion applied"));
        assert_eq!(apply.service_name, "elk-assigner");
        assert_eq!(apply.attribute("elk.outcome"), Some("applied"));
        let publish = parent_of(&ids, apply);
        assert_eq!(publish.name, "elk.progress.publish");
        assert_eq!(publish.service_name, "elk-worker");
        assert_eq!(publish.kind, 4, "producer");
        let finisher = parent_of(&ids, publish);
        assert_eq!(finisher.name, "elk.partition.process");
        assert!(
            finisher
                .events
                .iter()
                .any(|event| event.name == "completed")
        );
        let first: u64 = root.attribute("elk.range.min").unwrap().parse().unwrap();
        let last: u64 = root.attribute("elk.range.max").unwrap().parse().unwrap();
        for process in &processes {
            for checkpoint in process.events.iter().filter(|e| e.name == "checkpoint") {
                let done: u64 = checkpoint.attributes["elk.last_done"].parse().unwrap();
                assert!(
                    (first..=last).contains(&done),
                    "checkpoint {done} of partition {partition}"
                );
                checkpoints += 1;
            }
        }

        // A hand-over: the later grant links to the old owner's release.
        if grants.len() > 1 {
            let released: Vec<&ReceivedSpan> = spans_named(&trace, "elk.progress.publish")
                .into_iter()
                .filter(|span| span.attribute("elk.event") == Some("released"))
                .collect();
            assert!(
                !released.is_empty(),
                "partition {partition} moved without a release"
            );
            let linked = grants.iter().any(|grant| {
                grant.attribute("elk.handover") == Some("true")
                    && grant
                        .links
                        .iter()
                        .any(|link| released.iter().any(|r| r.span_id == link.span_id))
            });
            assert!(
                linked,
                "partition {partition}'s new grant links to the release"
            );
            handed_over += 1;
        }
    }
    assert!(handed_over > 0, "stopping worker-a handed partitions over");
    assert!(
        checkpoints > 0,
        "flushed checkpoints are events of the processing spans"
    );
    // Both transports carried spans.
    assert!(receiver.requests(Transport::Grpc) > 0);
    assert!(receiver.requests(Transport::Http) > 0);

    // A planner question: the assigner's request, the planner's answer, the user's code inside.
    let plan_max = PLAN_MAX.to_string();
    let asked = spans_named(&spans, "elk.plan.request")
        .into_iter()
        .find(|span| span.attribute("elk.max_id") == Some(plan_max.as_str()))
        .expect("the assigner's planner request that got the answer");
    assert_eq!(asked.service_name, "elk-assigner");
    assert_eq!(asked.attribute("elk.job"), Some(OPEN_JOB));
    let answer = spans_named(&spans, "elk.plan.answer")
        .into_iter()
        .find(|span| span.parent_span_id.as_deref() == Some(asked.span_id.as_str()))
        .expect("the planner's answer under the request");
    assert_eq!(answer.service_name, "elk-worker");
    assert_eq!(answer.kind, 2, "server");
    assert!(
        spans.iter().any(|span| span.name == "user.plan"
            && span.parent_span_id.as_deref() == Some(answer.span_id.as_str())),
        "the user's planner code runs inside the answer"
    );
}
