//! elk-worker against a real nats-server: the test plays the assigner, writing assignment records
//! and reading the worker's progress reports from the stream.

mod support;

use elk_protocol::decode;
use elk_protocol::messages::{MemberRecord, MemberRole, ProgressEvent};
use elk_testkit::wait_until;
use elk_types::{Capacity, Incarnation, PartitionId, PartitionLeaseToken, ViewSeq};
use elk_worker::WorkerError;
use std::time::Duration;
use support::{DEADLINE, Harness, RecordingProcessor, grant, record};

#[tokio::test]
async fn joins_with_a_ttl_and_on_shutdown_releases_before_leaving() {
    let harness = Harness::start().await;
    let processor = RecordingProcessor::new(Duration::from_millis(2));
    let recorder = processor.recorder.clone();
    let worker = harness
        .builder("w1")
        .capacity(1)
        .start(processor)
        .await
        .unwrap();

    let entry = harness.member_entry("w1").await.expect("member key exists");
    let member: MemberRecord = decode(&entry.value).unwrap();
    assert_eq!(member.role, MemberRole::Worker);
    assert_eq!(member.incarnation, worker.incarnation());
    assert_eq!(member.capacity, Capacity(1));
    let raw = harness
        .resources
        .members
        .stream
        .get_last_raw_message_by_subject("$KV.elk_test_members.w1")
        .await
        .unwrap();
    assert!(
        raw.headers.get("Nats-TTL").is_some(),
        "member key carries a per-key TTL: {:?}",
        raw.headers
    );

    // One long partition running, one queued behind it (capacity 1), resuming mid-range.
    let grants = vec![grant(1, 1, 1_000_000, 1), grant(2, 1, 100, 40)];
    harness
        .assign("w1", &record(worker.incarnation(), 1, 1, grants))
        .await;
    wait_until("a checkpoint of partition 1", DEADLINE, || async {
        harness
            .events(1)
            .iter()
            .any(|event| matches!(event, ProgressEvent::Checkpoint { .. }))
    })
    .await
    .unwrap();

    worker.shutdown().await.unwrap();
    // Stored before shutdown returned; the test's own consumer may still be catching up.
    harness.wait_for_terminal(&[1, 2]).await;

    let processed = recorder.processed(1);
    let last = *processed.last().unwrap();
    assert_eq!(processed, (1..=last).collect::<Vec<_>>());
    assert_eq!(
        harness.terminal(1),
        Some(ProgressEvent::Released {
            last_done: Some(last)
        })
    );
    assert_eq!(
        harness.terminal(2),
        Some(ProgressEvent::Released {
            last_done: Some(39)
        })
    );
    assert!(recorder.processed(2).is_empty());

    let marker = harness.member_entry("w1").await.expect("delete marker");
    assert!(marker.deleted, "member key deleted on leave");
    let delete = harness
        .resources
        .members
        .stream
        .get_last_raw_message_by_subject("$KV.elk_test_members.w1")
        .await
        .unwrap();
    let deleted_at = delete.time.unix_timestamp_nanos();
    for received in harness.reports() {
        assert!(
            received.published_ns < deleted_at,
            "every report is stored before the member key is deleted: {received:?}"
        );
    }
}

#[tokio::test]
async fn a_taken_member_id_is_refused() {
    let harness = Harness::start().await;
    let first = harness
        .builder("w1")
        .start(RecordingProcessor::new(Duration::ZERO))
        .await
        .unwrap();
    let error = harness
        .builder("w1")
        .start(RecordingProcessor::new(Duration::ZERO))
        .await
        .unwrap_err();
    assert!(matches!(error, WorkerError::IdTaken { .. }), "{error}");
    assert!(error.to_string().contains("w1"), "{error}");
    first.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_granted_partitions_and_reports_completed_with_exact_coverage() {
    let harness = Harness::start().await;
    let processor = RecordingProcessor::new(Duration::ZERO);
    let recorder = processor.recorder.clone();
    let worker = harness
        .builder("w1")
        .capacity(3)
        .start(processor)
        .await
        .unwrap();

    let mut grants: Vec<_> = (0..10u64)
        .map(|index| {
            grant(
                index + 1,
                index * 100 + 1,
                index * 100 + 100,
                index * 100 + 1,
            )
        })
        .collect();
    grants.push(grant(11, 1001, 1100, 1051));
    harness
        .assign("w1", &record(worker.incarnation(), 1, 1, grants))
        .await;
    let partitions: Vec<u64> = (1..=11).collect();
    harness.wait_for_terminal(&partitions).await;

    for index in 0..10u64 {
        let partition = index + 1;
        assert_eq!(harness.terminal(partition), Some(ProgressEvent::Completed));
        let expected: Vec<u64> = (index * 100 + 1..=index * 100 + 100).collect();
        assert_eq!(
            recorder.processed(partition),
            expected,
            "partition {partition}"
        );
    }
    assert_eq!(recorder.processed(11), (1051..=1100).collect::<Vec<_>>());
    assert_eq!(harness.terminal(11), Some(ProgressEvent::Completed));
    for received in harness.reports() {
        assert_eq!(received.report.worker.as_str(), "w1");
        assert_eq!(received.report.incarnation, worker.incarnation());
        assert_eq!(
            received.report.token.get(),
            1000 + received.report.partition.get()
        );
    }
    assert_eq!(worker.stats().partitions_completed, 11);
    worker.shutdown().await.unwrap();
}

#[tokio::test]
async fn never_runs_more_than_capacity_partitions_at_once() {
    let harness = Harness::start().await;
    let processor = RecordingProcessor::new(Duration::from_millis(3));
    let recorder = processor.recorder.clone();
    let worker = harness
        .builder("w1")
        .capacity(2)
        .start(processor)
        .await
        .unwrap();

    let grants = (0..6u64)
        .map(|index| grant(index + 1, index * 20 + 1, index * 20 + 20, index * 20 + 1))
        .collect();
    harness
        .assign("w1", &record(worker.incarnation(), 1, 1, grants))
        .await;
    harness.wait_for_terminal(&[1, 2, 3, 4, 5, 6]).await;

    assert_eq!(
        recorder.max_running(),
        2,
        "the window of 2 is used, never exceeded"
    );
    assert_eq!(worker.stats().partitions_completed, 6);
    worker.shutdown().await.unwrap();
}

#[tokio::test]
async fn revoke_releases_with_the_checkpoint_of_the_last_processed_id() {
    let harness = Harness::start().await;
    let processor = RecordingProcessor::new(Duration::from_millis(1));
    let recorder = processor.recorder.clone();
    let worker = harness
        .builder("w1")
        .capacity(1)
        .start(processor)
        .await
        .unwrap();
    let incarnation = worker.incarnation();

    let grants = vec![
        grant(1, 1, 1_000_000, 1),
        grant(2, 1, 100, 1),
        grant(3, 1, 100, 60),
    ];
    harness
        .assign("w1", &record(incarnation, 1, 1, grants))
        .await;
    wait_until("partition 1 processed 30 ids", DEADLINE, || async {
        recorder.processed_count(1) >= 30
    })
    .await
    .unwrap();
    // Partition 2 stays granted; 1 and 3 are taken away.
    harness
        .assign("w1", &record(incarnation, 1, 2, vec![grant(2, 1, 100, 1)]))
        .await;
    harness.wait_for_terminal(&[1, 2, 3]).await;

    let processed = recorder.processed(1);
    let last = *processed.last().unwrap();
    assert_eq!(
        processed,
        (1..=last).collect::<Vec<_>>(),
        "no gap, no repeat"
    );
    let events = harness.events(1);
    assert_eq!(
        events.last(),
        Some(&ProgressEvent::Released {
            last_done: Some(last)
        }),
        "released with the last processed id, and nothing after it"
    );
    for event in &events[..events.len() - 1] {
        let ProgressEvent::Checkpoint { last_done } = event else {
            panic!("only checkpoints precede the release: {events:?}");
        };
        assert!(*last_done <= last);
    }
    assert_eq!(
        harness.terminal(3),
        Some(ProgressEvent::Released {
            last_done: Some(59)
        }),
        "a queued grant is released at its resume point"
    );
    assert!(recorder.processed(3).is_empty());
    assert_eq!(harness.terminal(2), Some(ProgressEvent::Completed));
    assert_eq!(recorder.processed(2), (1..=100).collect::<Vec<_>>());
    assert_eq!(
        recorder.processed(1).len() as u64,
        last,
        "nothing processed after release"
    );
    let stats = worker.stats();
    assert_eq!(
        (stats.partitions_released, stats.partitions_completed),
        (2, 1)
    );
    worker.shutdown().await.unwrap();
}

#[tokio::test]
async fn records_of_an_older_epoch_or_another_incarnation_are_ignored() {
    let harness = Harness::start().await;
    let processor = RecordingProcessor::new(Duration::ZERO);
    let recorder = processor.recorder.clone();
    let worker = harness
        .builder("w1")
        .capacity(2)
        .start(processor)
        .await
        .unwrap();
    let incarnation = worker.incarnation();

    harness
        .assign("w1", &record(incarnation, 5, 1, vec![grant(1, 1, 50, 1)]))
        .await;
    harness.wait_for_terminal(&[1]).await;
    // A deposed assigner (epoch 4), a record for a previous life, and a replay of seq 1. Each is
    // seen before the next is written: the key keeps one revision, so a record written before
    // the watch delivered its predecessor replaces it (the worker then never sees that one).
    let other_life = Incarnation(incarnation.get() - 1);
    let ignored_records = [
        record(incarnation, 4, 9, vec![grant(2, 1, 50, 1)]),
        record(other_life, 6, 1, vec![grant(3, 1, 50, 1)]),
        record(incarnation, 5, 1, vec![grant(5, 1, 50, 1)]),
    ];
    for (seen, ignored) in (1..).zip(&ignored_records) {
        harness.assign("w1", ignored).await;
        wait_until("the worker saw the record", DEADLINE, || async {
            worker.stats().records_ignored >= seen
        })
        .await
        .unwrap();
    }
    // Then a valid record that still lists the completed partition 1 (same token) and adds 4.
    let grants = vec![grant(1, 1, 50, 1), grant(4, 1, 50, 1)];
    harness
        .assign("w1", &record(incarnation, 5, 2, grants))
        .await;
    harness.wait_for_terminal(&[4]).await;

    for ignored in [2, 3, 5] {
        assert!(
            recorder.processed(ignored).is_empty(),
            "partition {ignored} ran"
        );
        assert!(
            harness.events(ignored).is_empty(),
            "partition {ignored} reported"
        );
    }
    assert_eq!(
        recorder.processed(1),
        (1..=50).collect::<Vec<_>>(),
        "ran once"
    );
    assert_eq!(harness.terminal(4), Some(ProgressEvent::Completed));
    let stats = worker.stats();
    assert_eq!((stats.records_applied, stats.records_ignored), (2, 3));
    worker.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_processor_error_or_panic_is_reported_as_failed_with_its_checkpoint() {
    let harness = Harness::start().await;
    let mut processor = RecordingProcessor::new(Duration::ZERO);
    processor.fail = Some((2, 110));
    processor.panic = Some((3, 205));
    let worker = harness
        .builder("w1")
        .capacity(2)
        .start(processor)
        .await
        .unwrap();

    let grants = vec![
        grant(1, 1, 100, 1),
        grant(2, 101, 200, 101),
        grant(3, 201, 300, 201),
    ];
    harness
        .assign("w1", &record(worker.incarnation(), 1, 1, grants))
        .await;
    harness.wait_for_terminal(&[1, 2, 3]).await;

    assert_eq!(harness.terminal(1), Some(ProgressEvent::Completed));
    assert_eq!(
        harness.terminal(2),
        Some(ProgressEvent::Failed {
            error: "boom at 110".to_owned(),
            last_done: Some(110),
            permanent: false,
        })
    );
    assert_eq!(
        harness.terminal(3),
        Some(ProgressEvent::Failed {
            error: "processor panicked: kaboom at 205".to_owned(),
            last_done: Some(205),
            permanent: false,
        })
    );
    assert_eq!(worker.stats().partitions_failed, 2);
    worker.shutdown().await.unwrap();
}

#[tokio::test]
async fn kill_publishes_nothing_more_and_the_member_key_expires() {
    let harness = Harness::start().await;
    let processor = RecordingProcessor::new(Duration::from_millis(1));
    let recorder = processor.recorder.clone();
    let worker = harness
        .builder("w1")
        .capacity(1)
        .member_ttl(Duration::from_secs(1))
        .start(processor)
        .await
        .unwrap();
    harness
        .assign(
            "w1",
            &record(worker.incarnation(), 1, 1, vec![grant(1, 1, 1_000_000, 1)]),
        )
        .await;
    wait_until("a checkpoint of partition 1", DEADLINE, || async {
        !harness.events(1).is_empty()
    })
    .await
    .unwrap();

    worker.kill().await;
    let processed_at_kill = recorder.processed_count(1);
    let reports_at_kill = harness.reports().len();

    wait_until("member key expired", DEADLINE, || async {
        !harness.member_is_live("w1").await
    })
    .await
    .unwrap();
    assert_eq!(
        recorder.processed_count(1),
        processed_at_kill,
        "processor stopped"
    );
    assert_eq!(
        harness.reports().len(),
        reports_at_kill,
        "nothing published after kill"
    );
    assert!(
        harness
            .events(1)
            .iter()
            .all(|event| matches!(event, ProgressEvent::Checkpoint { .. })),
        "no release on kill"
    );
}

#[tokio::test]
async fn a_lost_membership_fences_without_releasing_and_rejoins_with_a_new_incarnation() {
    let harness = Harness::start().await;
    let processor = RecordingProcessor::new(Duration::from_millis(1));
    let recorder = processor.recorder.clone();
    let worker = harness
        .builder("w1")
        .capacity(1)
        .member_ttl(Duration::from_secs(1))
        .start(processor)
        .await
        .unwrap();
    let first_life = worker.incarnation();
    harness
        .assign(
            "w1",
            &record(first_life, 1, 1, vec![grant(1, 1, 1_000_000, 1)]),
        )
        .await;
    wait_until("partition 1 running", DEADLINE, || async {
        recorder.processed_count(1) > 10
    })
    .await
    .unwrap();

    // Someone else's view: the key is gone (as after an expiry); the next renewal fails.
    harness.resources.members.delete("w1").await.unwrap();
    wait_until("fenced and re-joined", DEADLINE, || async {
        worker.stats().fences == 1 && worker.incarnation() != first_life
    })
    .await
    .unwrap();
    let second_life = worker.incarnation();
    wait_until("new member record", DEADLINE, || async {
        harness.member_entry("w1").await.is_some_and(|entry| {
            !entry.deleted
                && decode::<MemberRecord>(&entry.value).unwrap().incarnation == second_life
        })
    })
    .await
    .unwrap();
    let processed_at_fence = recorder.processed_count(1);

    harness
        .assign("w1", &record(second_life, 1, 2, vec![grant(2, 1, 20, 1)]))
        .await;
    harness.wait_for_terminal(&[2]).await;
    assert_eq!(
        recorder.processed_count(1),
        processed_at_fence,
        "fenced work stopped"
    );
    assert!(
        harness
            .events(1)
            .iter()
            .all(|event| matches!(event, ProgressEvent::Checkpoint { .. })),
        "nothing but checkpoints for fenced work"
    );
    assert_eq!(harness.terminal(2), Some(ProgressEvent::Completed));
    worker.shutdown().await.unwrap();
}

/// A revoke of a grant the worker never held (it missed the record granting it, or a new
/// assigner changed its token before writing one) is answered with `released` at once — or, when
/// the partition still runs here under another token, right after that run ends — and only once.
/// Without it the assigner waited for that release for as long as the worker lived (found by
/// `faults::the_standby_assigner_resumes_a_rebalance_under_a_higher_epoch`: a job never done).
#[tokio::test]
async fn revokes_of_grants_never_held_are_released_once_and_after_the_partitions_run() {
    let harness = Harness::start().await;
    let processor = RecordingProcessor::new(Duration::from_millis(1));
    let recorder = processor.recorder.clone();
    let worker = harness
        .builder("w1")
        .capacity(1)
        .start(processor)
        .await
        .unwrap();
    let incarnation = worker.incarnation();
    harness
        .assign(
            "w1",
            &record(incarnation, 1, 1, vec![grant(1, 1, 1_000_000, 1)]),
        )
        .await;
    wait_until("partition 1 processed 30 ids", DEADLINE, || async {
        recorder.processed_count(1) >= 30
    })
    .await
    .unwrap();

    // Partition 5 was never granted here; partition 1 runs under token 1001, and the record
    // revokes it under the token a new assigner gave it.
    let never_seen = grant(5, 1, 100, 1);
    let mut retokened = grant(1, 1, 1_000_000, 1);
    retokened.token = PartitionLeaseToken(2001);
    let mut revoking = record(incarnation, 2, 1, Vec::new());
    revoking.revoking = vec![retokened, never_seen];
    harness.assign("w1", &revoking).await;
    let released = |partition: u64, token: u64| {
        harness
            .reports()
            .into_iter()
            .filter(|received| {
                received.report.partition == PartitionId(partition)
                    && received.report.token == PartitionLeaseToken(token)
                    && matches!(received.report.event, ProgressEvent::Released { .. })
            })
            .map(|received| received.report.event)
            .collect::<Vec<_>>()
    };
    wait_until("every revoke answered", DEADLINE, || async {
        !released(5, 1005).is_empty() && !released(1, 2001).is_empty()
    })
    .await
    .unwrap();
    assert_eq!(
        released(5, 1005),
        vec![ProgressEvent::Released { last_done: None }],
        "never held: released with no checkpoint of its own"
    );
    assert!(recorder.processed(5).is_empty());
    // The run under the old token ended first (released with its checkpoint), then the revoke
    // of the new token was answered: never two runs of partition 1 at once.
    let order: Vec<u64> = harness
        .reports()
        .into_iter()
        .filter(|received| {
            received.report.partition == PartitionId(1)
                && matches!(received.report.event, ProgressEvent::Released { .. })
        })
        .map(|received| received.report.token.get())
        .collect();
    assert_eq!(order, vec![1001, 2001]);
    assert_eq!(
        released(1, 2001),
        vec![ProgressEvent::Released { last_done: None }]
    );

    // The same record again (the assigner has not applied the releases yet): no second answer.
    let mut again = revoking.clone();
    again.seq = ViewSeq(2);
    harness.assign("w1", &again).await;
    // Then a record with partition 2 granted: once it completes, the record before it was
    // applied too (records apply in order).
    let mut next = record(incarnation, 2, 3, vec![grant(2, 1, 10, 1)]);
    next.revoking = again.revoking.clone();
    harness.assign("w1", &next).await;
    harness.wait_for_terminal(&[2]).await;
    assert_eq!(released(5, 1005).len(), 1);
    assert_eq!(released(1, 2001).len(), 1);
    worker.shutdown().await.unwrap();
}
