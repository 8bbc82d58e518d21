//! Issue 9 item 5, bounded work per request, on real NATS and a real assigner:
//!
//! * a fixed job over `1..=2^64−2` with partition size 1 holds no more partition keys in KV than
//!   `[assigner] max_job_backlog`, while a smaller fixed job larger than the bound still completes
//!   exactly (every ID once);
//! * on a server whose maximum payload is 64 KiB, 300 jobs (more than one reply can carry) are
//!   listed in pages that each fit, and the admin client (what `elkctl job list` uses) follows
//!   them to every job exactly once;
//! * finished jobs (completed, cancelled) are removed with their partition keys once a short
//!   `finished_job_retention` has passed, and their names can be used again.

use elk_integration_tests::{Ledger, RecordingProcessor, Stack};
use elk_protocol::admin::{AdminErrorCode, MAX_PAGE};
use elk_protocol::messages::JobState;
use elk_testkit::{NatsServer, wait_until};
use elk_types::{IdRange, JobName};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(60);

/// Partition keys of `job` in the partitions bucket (deleted keys are not listed).
async fn partition_keys(stack: &Stack, job: &str) -> usize {
    let keys = stack.resources.partitions.keys().await.unwrap();
    let keys: Vec<String> = futures::TryStreamExt::try_collect(keys).await.unwrap();
    let prefix = format!("{job}.");
    keys.iter().filter(|key| key.starts_with(&prefix)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_fixed_job_holds_at_most_the_backlog_bound_of_keys() {
    const BOUND: u64 = 100;
    let stack = Stack::new().await.unwrap();
    let election = stack.election("election-1");
    let assigner = stack.assigner_configured(&stack.url(), "assigner-1", Arc::default(), |s| {
        s.max_job_backlog = BOUND;
    });
    // No worker processes `vast`: nothing of it completes, so its cut partitions all stay. (Its
    // name sorts after `small`: grantable partitions are offered to the fleet in key order, and
    // a job no worker processes would hold the first slots of the round's active set.)
    let vast = stack
        .create_job("vast", IdRange::new(1, u64::MAX - 1).unwrap(), 1)
        .await
        .unwrap();
    assert_eq!(vast.partitions_total, 0);
    wait_until("vast is cut up to the bound", DEADLINE, || async {
        stack
            .job("vast")
            .await
            .unwrap()
            .is_some_and(|job| job.partitions_total == BOUND)
    })
    .await
    .unwrap();

    // A job of 300 partitions, three times the bound, runs meanwhile (and drives many rounds).
    let range = IdRange::new(1, 3_000).unwrap();
    let ledger = Ledger::new(range);
    let worker = stack
        .worker_with(
            "worker-1",
            4,
            &["small"],
            RecordingProcessor::new(ledger.clone()),
        )
        .await
        .unwrap();
    stack.create_job("small", range, 10).await.unwrap();
    let peak_small = AtomicUsize::new(0);
    wait_until("small completes", DEADLINE, || async {
        peak_small.fetch_max(partition_keys(&stack, "small").await, Ordering::SeqCst);
        let job = stack.job("small").await.unwrap().unwrap();
        job.state == elk_protocol::messages::JobState::Completed
    })
    .await
    .unwrap();
    let small = stack.job("small").await.unwrap().unwrap();
    assert_eq!(
        (small.partitions_total, small.partitions_completed),
        (300, 300)
    );
    assert_eq!(small.ids_completed, 3_000);
    assert!(
        ledger.missing().is_empty(),
        "missing: {:?}",
        ledger.missing()
    );
    assert!(ledger.duplicates().is_empty(), "{:?}", ledger.duplicates());
    let peak_small = peak_small.into_inner() as u64;
    assert!(peak_small <= BOUND, "small held {peak_small} keys");

    // Dozens of rounds later, `vast` still has exactly the bound: cut no further.
    let vast = stack.job("vast").await.unwrap().unwrap();
    assert_eq!(vast.partitions_total, BOUND);
    assert_eq!(vast.cursor, BOUND + 1);
    assert_eq!(partition_keys(&stack, "vast").await as u64, BOUND);

    worker.shutdown().await.unwrap();
    assigner.stop().await;
    election.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_listings_page_within_the_server_s_maximum_payload() {
    const MAX_PAYLOAD: usize = 64 * 1024;
    const JOBS: usize = 300;
    let server = NatsServer::builder()
        .config(format!("max_payload: {MAX_PAYLOAD}"))
        .start()
        .unwrap();
    let stack = Stack::on_server(server).await.unwrap();
    let election = stack.election("election-1");
    let assigner = stack.assigner("assigner-1");
    let client = stack.admin_client();
    let mut created = Vec::new();
    for index in 0..JOBS {
        let name = format!("listed-job-with-a-long-name-{index:04}");
        // One partition each: the test is about job records.
        let range = IdRange::new(1, 1_000).unwrap();
        created.push(stack.create_job(&name, range, 1_000).await.unwrap());
    }
    // Everything in one reply would not fit in one message.
    let all_bytes: usize = created
        .iter()
        .map(|job| elk_protocol::encode(job).len())
        .sum();
    assert!(all_bytes > MAX_PAYLOAD, "{all_bytes} bytes of jobs");

    // The largest page asked for is cut to fit.
    let (page, next) = client.list_jobs_page(None, Some(MAX_PAGE)).await.unwrap();
    assert!(!page.is_empty() && page.len() < JOBS, "{} jobs", page.len());
    assert_eq!(next.as_ref(), Some(&page.last().unwrap().name));
    let (second, _) = client.list_jobs_page(next, Some(MAX_PAGE)).await.unwrap();
    assert!(second.first().unwrap().name > page.last().unwrap().name);
    // The default page is 100 jobs.
    let (page, next) = client.list_jobs_page(None, None).await.unwrap();
    assert_eq!(page.len(), 100);
    assert!(next.is_some());
    // Following the pages lists every job once, in name order.
    let listed: Vec<String> = client
        .list_jobs()
        .await
        .unwrap()
        .into_iter()
        .map(|job| job.name.to_string())
        .collect();
    let mut expected: Vec<String> = created.iter().map(|job| job.name.to_string()).collect();
    expected.sort();
    assert_eq!(listed, expected);

    assigner.stop().await;
    election.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_jobs_are_removed_after_a_short_retention() {
    const RETENTION: Duration = Duration::from_secs(2);
    let stack = Stack::new().await.unwrap();
    let election = stack.election("election-1");
    let assigner = stack.assigner_configured(&stack.url(), "assigner-1", Arc::default(), |s| {
        s.finished_job_retention = RETENTION;
    });
    let range = IdRange::new(1, 2_000).unwrap();
    let ledger = Ledger::new(range);
    let worker = stack
        .worker_with(
            "worker-1",
            2,
            &["done"],
            RecordingProcessor::new(ledger.clone()),
        )
        .await
        .unwrap();
    stack.create_job("done", range, 100).await.unwrap();
    // Nobody processes `stopped`: its partitions stay pending until it is cancelled.
    stack.create_job("stopped", range, 100).await.unwrap();
    let done = stack.wait_job_completed("done", DEADLINE).await.unwrap();
    assert_eq!(done.ids_completed, 2_000);
    assert!(ledger.missing().is_empty() && ledger.duplicates().is_empty());
    let cancelled = stack
        .admin_client()
        .cancel_job(JobName::new("stopped").unwrap())
        .await
        .unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled);
    assert!(cancelled.cancelled_unix_ms.is_some());
    // Both still listed right after they ended...
    assert!(
        stack
            .admin_client()
            .get_job(JobName::new("done").unwrap())
            .await
            .is_ok()
    );

    // ...then removed: record and partition keys.
    for job in ["done", "stopped"] {
        let removed = wait_until(&format!("{job} is removed"), DEADLINE, || async {
            stack.job(job).await.unwrap().is_none() && partition_keys(&stack, job).await == 0
        })
        .await;
        if removed.is_err() {
            panic!(
                "{job} not removed: {:?}, {} keys",
                stack.job(job).await.unwrap(),
                partition_keys(&stack, job).await
            );
        }
        let refused = stack
            .admin_client()
            .get_job(JobName::new(job).unwrap())
            .await
            .unwrap_err();
        assert_eq!(refused.refusal().unwrap().code, AdminErrorCode::UnknownJob);
    }
    let ended = done.completed_unix_ms.unwrap();
    let removed_after = elk_protocol::messages::unix_ms_now().saturating_sub(ended);
    assert!(
        removed_after >= RETENTION.as_millis() as u64,
        "{removed_after} ms"
    );
    // The name is free again.
    let again = stack.create_job("done", range, 100).await.unwrap();
    assert_eq!((again.state, again.ids_completed), (JobState::Active, 0));

    worker.shutdown().await.unwrap();
    assigner.stop().await;
    election.stop().await;
}
