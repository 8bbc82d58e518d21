//! Issue 9: the whole stack on a nats-server that requires TLS (client certificates) and
//! decentralized JWT auth, every component under the permissions of its own role.

use elk_integration_tests::{Ledger, RecordingProcessor, Stack, assert_invariants};
use elk_protocol::messages::JobState;
use elk_testkit::OwnershipAuditor;
use elk_types::IdRange;
use std::time::Duration;

/// Every permission violation the server logged.
fn violations(stack: &Stack) -> Vec<String> {
    let log = std::fs::read_to_string(stack.server.log_file()).unwrap_or_default();
    log.lines()
        .filter(|line| line.contains("Violation"))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_to_exact_completion_with_every_component_authenticated_over_tls() {
    let mut stack = Stack::secured().await.unwrap();
    let audit = OwnershipAuditor::start_on(stack.resources.clone())
        .await
        .unwrap();
    let election = stack.election("election-1");
    let assigner = stack.assigner("assigner-1");
    let scaler = stack.scaler("scaler-1");
    let range = IdRange::new(1, 20_000).unwrap();
    let ledger = Ledger::new(range);
    let mut workers = Vec::new();
    let mut processor = RecordingProcessor::new(ledger.clone());
    processor.pause_every = 200;
    processor.pause = Duration::from_millis(10);
    for index in 1..=2 {
        let processor = processor.clone();
        workers.push(
            stack
                .worker(&format!("worker-{index}"), 2, processor)
                .await
                .unwrap(),
        );
    }
    let created = stack.create_job("secured", range, 1_000).await.unwrap();
    assert_eq!(created.state, JobState::Active);
    // A server restart mid-job: every component reconnects with its credentials and re-creates
    // its watches (ordered consumers) within its permissions.
    elk_testkit::wait_until("some progress", Duration::from_secs(30), || async {
        ledger.processed() > 2_000
    })
    .await
    .unwrap();
    stack.server.restart().unwrap();
    let job = stack
        .wait_job_completed("secured", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(job.ids_completed, 20_000);
    // Every ID processed; across the restart a worker may repeat the IDs after its last
    // acknowledged checkpoint (at-least-once), never more, and ownership never overlaps.
    assert_invariants(&audit, "secured", &ledger).await;
    for worker in workers {
        worker.shutdown().await.unwrap();
    }
    scaler.stop().await;
    assigner.stop().await;
    election.stop().await;
    let log = std::fs::read_to_string(stack.server.log_file()).unwrap();
    assert_eq!(
        log.matches("Starting nats-server").count(),
        2,
        "one log across the restart"
    );
    let violations = violations(&stack);
    assert!(violations.is_empty(), "{violations:#?}");
}

/// A planner that reports a fixed highest ID.
struct FixedTable(u64);

impl elk_worker::Planner for FixedTable {
    async fn next_max_id(
        &self,
        _job: &elk_types::JobName,
        _cursor: u64,
        _wanted: u64,
    ) -> Result<Option<u64>, elk_worker::PlanError> {
        Ok(Some(self.0))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planner_reclaim_and_failover_need_no_more_than_each_role_s_permissions() {
    let stack = Stack::secured().await.unwrap();
    let election = stack.election("election-1");
    let first = stack.assigner("assigner-1");
    let standby = stack.assigner("assigner-2");
    let scaler = stack.scaler("scaler-1");
    let job = elk_types::JobName::new("growing").unwrap();
    let planner_config = stack.nats_config(stack.server.url(), elk_auth::Role::Planner, "growing");
    let planner = elk_worker::serve_planner(
        planner_config,
        stack.namespace.clone(),
        job,
        FixedTable(30_000),
    )
    .await
    .unwrap();
    let range = IdRange::new(1, 30_000).unwrap();
    let ledger = Ledger::new(range);
    let mut processor = RecordingProcessor::new(ledger.clone());
    processor.pause_every = 200;
    processor.pause = Duration::from_millis(10);
    let victim = stack
        .worker("worker-a", 2, processor.clone())
        .await
        .unwrap();
    let survivor = stack.worker("worker-b", 2, processor).await.unwrap();
    let spec = elk_protocol::messages::JobSpec {
        lookahead: 2,
        ..elk_protocol::messages::JobSpec::open_ended(1, 1_000)
    };
    stack.create_job_with("growing", spec).await.unwrap();
    elk_testkit::wait_until("a third is processed", Duration::from_secs(60), || async {
        ledger.processed() > 10_000
    })
    .await
    .unwrap();
    // A worker dies (its partitions are reclaimed behind the progress barrier), then the leading
    // assigner (the standby loads everything and takes over under a higher epoch).
    victim.kill().await;
    first.abort().await;
    elk_testkit::wait_until("every ID is processed", Duration::from_secs(90), || async {
        ledger.missing().is_empty()
    })
    .await
    .unwrap();
    survivor.shutdown().await.unwrap();
    planner.shutdown().await.unwrap();
    scaler.stop().await;
    standby.stop().await;
    election.stop().await;
    let violations = violations(&stack);
    assert!(violations.is_empty(), "{violations:#?}");
}
