//! elk-worker under NATS faults, each made deterministic on a real server: a progress stream that
//! refuses publishes (its subjects moved away, so every publish fails at once), a member key
//! rewritten behind the lease's back, an assignment watch whose consumer the server lost, and a
//! nats-server restart. The test plays the assigner, as in `worker.rs`.

mod support;

use elk_nats::{CasOutcome, KvEntry};
use elk_protocol::decode;
use elk_protocol::messages::{MemberRecord, ProgressEvent};
use elk_testkit::wait_until;
use elk_worker::{PartitionWork, ProcessError, ProcessOutcome, Processor};
use futures::StreamExt;
use std::time::Duration;
use support::{DEADLINE, Harness, RecordingProcessor, grant, record};
use tokio::sync::watch;

/// Completes each partition at once, but only after the test opens the gate.
#[derive(Clone)]
struct Gated {
    open: watch::Receiver<bool>,
}

impl Processor for Gated {
    async fn process(&self, work: PartitionWork) -> Result<ProcessOutcome, ProcessError> {
        let mut open = self.open.clone();
        tokio::select! {
            opened = open.wait_for(|open| *open) => {
                opened.map_err(|_| ProcessError::new("gate dropped"))?;
            }
            () = work.cancelled() => return Ok(ProcessOutcome::Interrupted),
        }
        work.checkpoint(work.range().last());
        Ok(ProcessOutcome::Completed)
    }
}

/// Moves the progress stream's subjects away (every publish then fails with "no stream") and
/// back.
struct StreamSwitch<'a> {
    harness: &'a Harness,
    original: async_nats::jetstream::stream::Config,
}

impl<'a> StreamSwitch<'a> {
    async fn refuse_publishes(harness: &'a Harness) -> StreamSwitch<'a> {
        let original = harness.resources.progress.get_info().await.unwrap().config;
        let mut moved = original.clone();
        moved.subjects = vec!["elk.test.progress-refused.>".to_owned()];
        harness
            .resources
            .jetstream
            .update_stream(moved)
            .await
            .unwrap();
        StreamSwitch { harness, original }
    }

    async fn accept_publishes(self) {
        self.harness
            .resources
            .jetstream
            .update_stream(self.original)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_terminal_report_is_retried_until_acked_while_the_membership_lives() {
    let harness = Harness::start().await;
    let (gate, open) = watch::channel(false);
    let worker = harness.builder("w1").start(Gated { open }).await.unwrap();
    harness
        .assign(
            "w1",
            &record(worker.incarnation(), 1, 1, vec![grant(1, 1, 100, 1)]),
        )
        .await;
    wait_until("the partition is running", DEADLINE, || async {
        worker.stats().partitions_started == 1
    })
    .await
    .unwrap();

    let switch = StreamSwitch::refuse_publishes(&harness).await;
    gate.send_replace(true);
    // More failed attempts than the 5 after which the SDK used to give a report up.
    wait_until(
        "the completion failed to publish 6 times",
        DEADLINE,
        || async { worker.stats().publish_retries >= 6 },
    )
    .await
    .unwrap();
    assert!(harness.terminal(1).is_none(), "nothing got through yet");
    switch.accept_publishes().await;

    harness.wait_for_terminal(&[1]).await;
    assert_eq!(harness.terminal(1), Some(ProgressEvent::Completed));
    let stats = worker.stats();
    assert_eq!((stats.reports_lost, stats.reports_moot), (0, 0));
    assert_eq!(stats.fences, 0, "the membership lived throughout");
    worker.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_terminal_report_of_a_lost_membership_is_dropped_as_moot() {
    let harness = Harness::start().await;
    let (gate, open) = watch::channel(false);
    let worker = harness
        .builder("w1")
        .member_ttl(Duration::from_secs(1))
        .start(Gated { open })
        .await
        .unwrap();
    let first_life = worker.incarnation();
    harness
        .assign("w1", &record(first_life, 1, 1, vec![grant(1, 1, 100, 1)]))
        .await;
    wait_until("the partition is running", DEADLINE, || async {
        worker.stats().partitions_started == 1
    })
    .await
    .unwrap();
    let switch = StreamSwitch::refuse_publishes(&harness).await;
    gate.send_replace(true);
    wait_until("the completion is being retried", DEADLINE, || async {
        worker.stats().publish_retries >= 1
    })
    .await
    .unwrap();

    // The membership ends (as after an expiry): the stuck report is moot, not retried forever.
    harness.resources.members.delete("w1").await.unwrap();
    wait_until("the report was dropped as moot", DEADLINE, || async {
        worker.stats().reports_moot == 1
    })
    .await
    .unwrap();
    switch.accept_publishes().await;
    wait_until("re-joined", DEADLINE, || async {
        worker.incarnation() != first_life
    })
    .await
    .unwrap();

    // Reports go out in order: once the new life's completion arrives, the old one never will.
    harness
        .assign(
            "w1",
            &record(worker.incarnation(), 1, 2, vec![grant(2, 1, 10, 1)]),
        )
        .await;
    harness.wait_for_terminal(&[2]).await;
    assert!(
        harness.events(1).is_empty(),
        "nothing of the lost membership was published: {:?}",
        harness.events(1)
    );
    assert_eq!(worker.stats().fences, 1);
    worker.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_renewal_stored_without_its_ack_does_not_fence_the_worker() {
    let harness = Harness::start().await;
    let worker = harness
        .builder("w1")
        .member_ttl(Duration::from_secs(1))
        .start(RecordingProcessor::new(Duration::ZERO))
        .await
        .unwrap();
    let incarnation = worker.incarnation();
    let stored = harness.member_entry("w1").await.expect("member key");

    // The worker's own record, written one revision ahead of it: its next renewal fails with
    // "wrong last sequence" (10071), exactly as when a renewal was stored but its ack was lost.
    let outcome = elk_nats::cas_write(
        &harness.resources.jetstream,
        &harness.resources.members,
        "w1",
        stored.value.clone(),
        Some(stored.revision),
        Some(Duration::from_secs(1)),
    )
    .await
    .unwrap();
    let CasOutcome::Written(behind_its_back) = outcome else {
        panic!("the test's write lost a race with a renewal: {outcome:?}");
    };
    wait_until(
        "two renewals on top of it, or a fence",
        DEADLINE,
        || async {
            worker.stats().fences > 0
                || harness
                    .member_entry("w1")
                    .await
                    .is_some_and(|entry: KvEntry| entry.revision.get() >= behind_its_back.get() + 2)
        },
    )
    .await
    .unwrap();
    assert_eq!(worker.stats().fences, 0, "the worker kept its membership");
    assert_eq!(worker.incarnation(), incarnation);
    worker.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_stalled_assignment_watch_is_noticed_and_the_key_re_read() {
    let harness = Harness::start().await;
    let processor = RecordingProcessor::new(Duration::ZERO);
    let recorder = processor.recorder.clone();
    let worker = harness
        .builder("w1")
        // Well below the client library's own recovery (10 s), well above a watch delivery.
        .assignment_resync(Duration::from_secs(2))
        .start(processor)
        .await
        .unwrap();

    // The server loses the watch's consumer (as it may across a restart): nothing feeds the
    // subscription anymore, and the client library only notices after 10 s of missed heartbeats.
    let assignments = &harness.resources.assignments.stream;
    let consumers: Vec<String> = assignments
        .consumer_names()
        .filter_map(|name| async move { name.ok() })
        .collect()
        .await;
    assert_eq!(consumers.len(), 1, "only the worker watches: {consumers:?}");
    for name in &consumers {
        assignments.delete_consumer(name).await.unwrap();
    }

    harness
        .assign(
            "w1",
            &record(worker.incarnation(), 1, 1, vec![grant(1, 1, 50, 1)]),
        )
        .await;
    harness.wait_for_terminal(&[1]).await;
    assert_eq!(recorder.processed(1), (1..=50).collect::<Vec<_>>());
    assert!(
        worker.stats().assignment_resyncs >= 1,
        "the record came from the worker's re-read: {:?}",
        worker.stats()
    );

    // The watch was re-created: the next record arrives through it, with no further re-read.
    let resyncs = worker.stats().assignment_resyncs;
    harness
        .assign(
            "w1",
            &record(worker.incarnation(), 1, 2, vec![grant(2, 1, 50, 1)]),
        )
        .await;
    harness.wait_for_terminal(&[2]).await;
    assert_eq!(worker.stats().assignment_resyncs, resyncs);
    worker.shutdown().await.unwrap();
}

#[tokio::test]
async fn records_written_after_a_nats_server_restart_are_applied() {
    let mut harness = Harness::start().await;
    let processor = RecordingProcessor::new(Duration::ZERO);
    let recorder = processor.recorder.clone();
    let worker = harness
        .builder("w1")
        .assignment_resync(Duration::from_secs(1))
        .start(processor)
        .await
        .unwrap();
    harness
        .assign(
            "w1",
            &record(worker.incarnation(), 1, 1, vec![grant(1, 1, 20, 1)]),
        )
        .await;
    harness.wait_for_terminal(&[1]).await;

    harness.server.restart().unwrap();
    // The worker may have fenced while the server was down; write for whichever life is live.
    wait_until(
        "the worker's member key is live again",
        DEADLINE,
        || async {
            // Reads fail until the test's own client has reconnected.
            let live = elk_nats::read_entry(&harness.resources.members, "w1").await;
            live.ok().flatten().is_some_and(|entry| {
                !entry.deleted
                    && decode::<MemberRecord>(&entry.value)
                        .is_ok_and(|member| member.incarnation == worker.incarnation())
            })
        },
    )
    .await
    .unwrap();
    harness
        .assign(
            "w1",
            &record(worker.incarnation(), 1, 2, vec![grant(2, 1, 20, 1)]),
        )
        .await;
    harness.wait_for_terminal(&[2]).await;
    assert_eq!(recorder.processed(2), (1..=20).collect::<Vec<_>>());
    worker.shutdown().await.unwrap();
}
