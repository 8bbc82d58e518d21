//! Issue 9: the whole stack on a nats-server that requires TLS (client certificates) and
//! decentralized JWT auth, every component under the permissions of its own role.

use elk_integration_tests::{Ledger, RecordingProcessor, Stack};
use elk_protocol::messages::JobState;
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
    let stack = Stack::secured().await.unwrap();
    let election = stack.election("election-1");
    let assigner = stack.assigner("assigner-1");
    let scaler = stack.scaler("scaler-1");
    let range = IdRange::new(1, 20_000).unwrap();
    let ledger = Ledger::new(range);
    let mut workers = Vec::new();
    for index in 1..=2 {
        let processor = RecordingProcessor::new(ledger.clone());
        workers.push(
            stack
                .worker(&format!("worker-{index}"), 2, processor)
                .await
                .unwrap(),
        );
    }
    let created = stack.create_job("secured", range, 1_000).await.unwrap();
    assert_eq!(created.state, JobState::Active);
    let job = stack
        .wait_job_completed("secured", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(job.ids_completed, 20_000);
    assert!(ledger.missing().is_empty() && ledger.duplicates().is_empty());
    for worker in workers {
        worker.shutdown().await.unwrap();
    }
    scaler.stop().await;
    assigner.stop().await;
    election.stop().await;
    let violations = violations(&stack);
    assert!(violations.is_empty(), "{violations:#?}");
}
