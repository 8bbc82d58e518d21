//! The ownership auditor over a real nats-server, fed with hand-written member keys, assignment
//! records and progress reports (no services): clean hand-overs pass, overlaps are caught.

use bytes::Bytes;
use elk_nats::{MemberLease, NatsConfig, ProvisionConfig, Resources};
use elk_protocol::messages::{
    AssignmentRecord, Grant, MemberRecord, MemberRole, ProgressEvent, ProgressReport,
};
use elk_protocol::names::Names;
use elk_protocol::{SCHEMA_VERSION, encode};
use elk_testkit::{AuditReport, NatsServer, OwnershipAuditor, wait_until};
use elk_types::{
    Capacity, Epoch, IdRange, Incarnation, JobName, MemberId, Namespace, PartitionId,
    PartitionLeaseToken, ViewSeq,
};
use std::time::Duration;

const JOB: &str = "backfill";

struct Fixture {
    server: NatsServer,
    resources: Resources,
    auditor: OwnershipAuditor,
}

fn job() -> JobName {
    JobName::new(JOB).unwrap()
}

fn member_record(incarnation: u64) -> MemberRecord {
    MemberRecord {
        schema: SCHEMA_VERSION,
        role: MemberRole::Worker,
        incarnation: Incarnation(incarnation),
        capacity: Capacity(1),
        jobs: Vec::new(),
        labels: Default::default(),
        version: String::new(),
    }
}

fn grant(partition: u64, token: u64, resume_from: u64) -> Grant {
    Grant {
        job: job(),
        partition: PartitionId(partition),
        range: IdRange::new(partition * 1000 - 999, partition * 1000).unwrap(),
        resume_from,
        token: PartitionLeaseToken(token),
        traceparent: None,
        unsampled: false,
    }
}

/// What the auditor provisions (keeping superseded assignment records); the writer's provisioning
/// must not undo it.
fn audited() -> ProvisionConfig {
    ProvisionConfig {
        assignments_history: elk_testkit::auditor::ASSIGNMENTS_HISTORY,
        ..ProvisionConfig::default()
    }
}

impl Fixture {
    async fn new() -> Self {
        let server = NatsServer::start();
        let namespace = Namespace::new("audit").unwrap();
        let auditor = OwnershipAuditor::start(server.url(), &namespace)
            .await
            .unwrap();
        let client = elk_nats::connect(&NatsConfig::new(server.url(), "writer"))
            .await
            .unwrap();
        let resources = elk_nats::provision(client, Names::new(namespace), &audited())
            .await
            .unwrap();
        Self {
            server,
            resources,
            auditor,
        }
    }

    async fn join(&self, worker: &str, incarnation: u64) {
        self.resources
            .members
            .put(worker, Bytes::from(encode(&member_record(incarnation))))
            .await
            .unwrap();
    }

    async fn leave(&self, worker: &str) {
        self.resources.members.delete(worker).await.unwrap();
    }

    async fn assign(&self, worker: &str, incarnation: u64, seq: u64, grants: Vec<Grant>) {
        self.assign_under(1, worker, incarnation, seq, grants).await;
    }

    async fn assign_under(
        &self,
        epoch: u64,
        worker: &str,
        incarnation: u64,
        seq: u64,
        grants: Vec<Grant>,
    ) {
        let record = AssignmentRecord {
            schema: SCHEMA_VERSION,
            incarnation: Incarnation(incarnation),
            epoch: Epoch(epoch),
            seq: ViewSeq(seq),
            grants,
            drain: false,
            revoking: Vec::new(),
            progress_batches: false,
        };
        self.resources
            .assignments
            .put(worker, Bytes::from(encode(&record)))
            .await
            .unwrap();
    }

    async fn report(
        &self,
        worker: &str,
        incarnation: u64,
        partition: u64,
        token: u64,
        event: ProgressEvent,
    ) {
        let worker = MemberId::new(worker).unwrap();
        let report = ProgressReport {
            schema: SCHEMA_VERSION,
            worker: worker.clone(),
            incarnation: Incarnation(incarnation),
            job: job(),
            partition: PartitionId(partition),
            token: PartitionLeaseToken(token),
            event,
        };
        self.resources
            .jetstream
            .publish(
                self.resources.names.progress_subject(&worker),
                Bytes::from(encode(&report)),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    async fn check(&self) -> AuditReport {
        let report = self.auditor.check().await;
        assert!(report.settled, "auditor caught up: {report}");
        assert!(report.problems.is_empty(), "{report}");
        report
    }
}

fn panic_text(report: &AuditReport) -> String {
    let report = report.clone();
    let payload = std::panic::catch_unwind(move || report.assert_no_overlap())
        .expect_err("assert_no_overlap must panic");
    payload
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn a_clean_hand_over_is_no_overlap() {
    let f = Fixture::new().await;
    f.join("w-a", 1).await;
    f.join("w-b", 2).await;
    f.assign("w-a", 1, 1, vec![grant(1, 10, 1)]).await;
    f.report(
        "w-a",
        1,
        1,
        10,
        ProgressEvent::Checkpoint { last_done: 300 },
    )
    .await;
    // Revoke: A's record drops the partition, A releases with its flushed checkpoint.
    f.assign("w-a", 1, 2, vec![]).await;
    f.report(
        "w-a",
        1,
        1,
        10,
        ProgressEvent::Released {
            last_done: Some(420),
        },
    )
    .await;
    f.assign("w-b", 2, 1, vec![grant(1, 11, 421)]).await;
    f.report(
        "w-b",
        2,
        1,
        11,
        ProgressEvent::Checkpoint { last_done: 800 },
    )
    .await;
    f.report("w-b", 2, 1, 11, ProgressEvent::Completed).await;

    let report = f.check().await;
    report.assert_no_overlap();
    report.assert_durable_progress();
    assert_eq!(report.grants_seen, 2, "{report}");
    assert_eq!(report.releases_seen, 1);
    assert_eq!(report.completions_seen, 1);
    assert_eq!(report.unheld_reports, 0);
    assert_eq!(
        report.checkpoints_of(&job(), PartitionId(1)),
        vec![300, 420, 800, 1000]
    );
    let holds = report.holds_of(&job(), PartitionId(1));
    assert_eq!(holds.len(), 2);
    assert!(holds.iter().all(|hold| hold.until.is_some()));
    // A clean hand-over allows no repetition; a counter with every ID once passes.
    report.assert_bounded_repetition(&job(), 1, &[1; 1000]);
    let mut counts = vec![1u32; 1000];
    counts[500] = 2;
    assert!(
        std::panic::catch_unwind(|| report.assert_bounded_repetition(&job(), 1, &counts)).is_err()
    );
}

#[tokio::test]
async fn a_grant_while_the_owner_still_holds_is_an_overlap() {
    let f = Fixture::new().await;
    f.join("w-a", 1).await;
    f.join("w-b", 2).await;
    f.assign("w-a", 1, 1, vec![grant(1, 10, 1), grant(2, 12, 1001)])
        .await;
    f.assign("w-b", 2, 1, vec![grant(1, 11, 1)]).await;

    let report = f.check().await;
    assert_eq!(report.overlaps.len(), 1, "{report}");
    let overlap = &report.overlaps[0];
    assert_eq!(overlap.partition, PartitionId(1));
    assert_eq!(overlap.earlier.holder.worker.as_str(), "w-a");
    assert_eq!(overlap.later.holder.worker.as_str(), "w-b");
    assert_eq!(overlap.until, None);
    let text = panic_text(&report);
    assert!(
        text.contains("job backfill partition 1 held twice")
            && text.contains("w-a")
            && text.contains("w-b"),
        "{text}"
    );
}

#[tokio::test]
async fn a_grant_under_an_older_epoch_after_a_newer_one_breaks_fencing() {
    let f = Fixture::new().await;
    f.join("w-a", 1).await;
    f.join("w-b", 2).await;
    f.join("w-c", 3).await;
    f.assign_under(1, "w-a", 1, 1, vec![grant(1, 10, 1)]).await;
    f.assign_under(2, "w-b", 2, 1, vec![grant(2, 20, 1001)])
        .await;
    let clean = f.check().await;
    assert!(clean.stale_epoch_holds().is_empty(), "{clean}");
    clean.assert_fencing();

    // A deposed leader's late write: w-c never saw epoch 2, so it would apply it.
    f.assign_under(1, "w-c", 3, 1, vec![grant(3, 11, 2001)])
        .await;
    let report = f.check().await;
    let stale = report.stale_epoch_holds();
    assert_eq!(stale.len(), 1, "{report}");
    assert_eq!(stale[0].0.holder.worker.as_str(), "w-c");
    assert_eq!(stale[0].1.holder.worker.as_str(), "w-b");
    let payload = std::panic::catch_unwind(|| report.assert_fencing()).unwrap_err();
    let text = payload
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(
        text.contains("invariant 4") && text.contains("w-c"),
        "{text}"
    );
}

#[tokio::test]
async fn a_deleted_owner_holds_nothing() {
    let f = Fixture::new().await;
    f.join("w-a", 1).await;
    f.join("w-b", 2).await;
    f.assign("w-a", 1, 1, vec![grant(1, 10, 1)]).await;
    f.report(
        "w-a",
        1,
        1,
        10,
        ProgressEvent::Checkpoint { last_done: 200 },
    )
    .await;
    f.leave("w-a").await;
    f.assign("w-b", 2, 1, vec![grant(1, 11, 201)]).await;
    // A zombie report from A after its key is gone does not count as progress.
    f.report(
        "w-a",
        1,
        1,
        10,
        ProgressEvent::Checkpoint { last_done: 250 },
    )
    .await;
    // A late record for A's dead incarnation is ignored.
    f.assign("w-a", 1, 2, vec![grant(1, 10, 1)]).await;

    let report = f.check().await;
    report.assert_no_overlap();
    report.assert_durable_progress();
    assert_eq!(report.member_deletes_seen, 1);
    assert_eq!(report.unheld_reports, 1);
    assert_eq!(report.records_ignored, 1);
    assert_eq!(report.checkpoints_of(&job(), PartitionId(1)), vec![200]);
}

#[tokio::test]
async fn an_expired_owner_holds_nothing_and_its_checkpoint_must_survive() {
    let f = Fixture::new().await;
    let lease = MemberLease::join(
        &f.resources.member_keys,
        MemberId::new("w-a").unwrap(),
        member_record(1),
        Duration::from_secs(1),
    )
    .await
    .unwrap();
    f.join("w-b", 2).await;
    f.assign("w-a", 1, 1, vec![grant(1, 10, 1)]).await;
    f.report(
        "w-a",
        1,
        1,
        10,
        ProgressEvent::Checkpoint { last_done: 600 },
    )
    .await;
    drop(lease); // a crash: no leave, the key expires after its TTL
    wait_until("w-a's key expired", Duration::from_secs(15), || async {
        f.auditor.report_now().expiries_seen >= 1
    })
    .await
    .unwrap();
    // The new owner resumes from the checkpoint; a second one (wrongly) from the start.
    f.assign("w-b", 2, 1, vec![grant(1, 11, 601)]).await;

    let report = f.check().await;
    report.assert_no_overlap();
    report.assert_durable_progress();
    assert_eq!(report.expiries_seen, 1, "{report}");
    let holds = report.holds_of(&job(), PartitionId(1));
    assert!(matches!(
        holds[0].until,
        Some((_, elk_testkit::auditor::HoldEnd::MemberExpired))
    ));
    // After a crash, IDs from the resume point on may be processed twice (once by each owner).
    let mut counts = vec![1u32; 1000];
    for count in &mut counts[600..700] {
        *count = 2;
    }
    report.assert_bounded_repetition(&job(), 1, &counts);
    counts[10] = 2; // before the last checkpoint: not allowed
    let repetition = report.repetition(&job(), 1, &counts);
    assert_eq!(repetition.unexplained.first_ranges, vec![(11, 11)]);

    // A re-grant ignoring the checkpoint loses acknowledged progress.
    f.assign("w-b", 2, 2, vec![grant(1, 11, 601), grant(1, 12, 1)])
        .await;
    let report = f.check().await;
    assert_eq!(report.lost_checkpoints.len(), 1, "{report}");
    assert_eq!(report.lost_checkpoints[0].checkpoint, 600);
    assert!(std::panic::catch_unwind(|| report.assert_durable_progress()).is_err());
}

#[tokio::test]
async fn dropping_from_the_record_without_a_release_still_holds() {
    let f = Fixture::new().await;
    f.join("w-a", 1).await;
    f.join("w-b", 2).await;
    f.assign("w-a", 1, 1, vec![grant(1, 10, 1)]).await;
    f.assign("w-a", 1, 2, vec![]).await; // revoked, but A has not released yet
    f.assign("w-b", 2, 1, vec![grant(1, 11, 1)]).await;
    f.report("w-a", 1, 1, 10, ProgressEvent::Released { last_done: None })
        .await;

    let report = f.check().await;
    assert_eq!(
        report.overlaps.len(),
        1,
        "{report}\n{:#?}",
        f.auditor.events()
    );
    let overlap = &report.overlaps[0];
    assert_eq!(overlap.earlier.holder.worker.as_str(), "w-a");
    assert!(overlap.until.is_some(), "ends with A's late release");
    let text = panic_text(&report);
    assert!(text.contains("released"), "{text}");
}

#[tokio::test]
async fn the_auditor_keeps_following_across_a_nats_restart() {
    let mut f = Fixture::new().await;
    f.join("w-a", 1).await;
    f.assign("w-a", 1, 1, vec![grant(1, 10, 1)]).await;
    f.report(
        "w-a",
        1,
        1,
        10,
        ProgressEvent::Checkpoint { last_done: 100 },
    )
    .await;
    let before = f.check().await;
    assert_eq!(before.checkpoints_seen, 1, "{before}");

    f.server.restart().unwrap();
    // The writer's client reconnects by itself; retry the first write until it does.
    wait_until(
        "the writer reconnected",
        Duration::from_secs(20),
        || async {
            tokio::time::timeout(
                Duration::from_millis(500),
                f.resources
                    .members
                    .put("w-b", Bytes::from(encode(&member_record(2)))),
            )
            .await
            .is_ok_and(|put| put.is_ok())
        },
    )
    .await
    .unwrap();
    f.report(
        "w-a",
        1,
        1,
        10,
        ProgressEvent::Released {
            last_done: Some(150),
        },
    )
    .await;
    f.assign("w-b", 2, 1, vec![grant(1, 11, 151)]).await;
    f.assign("w-a", 1, 2, vec![grant(1, 10, 1)]).await;

    let report = f.auditor.check().await;
    assert!(report.settled, "{report}");
    report.assert_no_overlap();
    report.assert_durable_progress();
    assert_eq!(report.grants_seen, 2, "{report}");
    assert_eq!(report.releases_seen, 1, "{report}");
    assert_eq!(
        report.checkpoints_of(&job(), PartitionId(1)),
        vec![100, 150]
    );
}
