//! TTL leases against a real nats-server: a renewal whose earlier attempt was stored behind its
//! back (the lost-ack case, error 10071 on the retry) keeps the lease, another value loses it, and
//! the published fence deadline follows the lease.

use bytes::Bytes;
use elk_nats::{CasOutcome, MemberLease, NatsConfig, ProvisionConfig, Resources, cas_write};
use elk_protocol::messages::{MemberRecord, MemberRole};
use elk_protocol::names::Names;
use elk_protocol::{SCHEMA_VERSION, encode};
use elk_testkit::{NatsServer, wait_until};
use elk_types::{Capacity, Incarnation, MemberId, Namespace, Revision};
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(20);
const TTL: Duration = Duration::from_secs(1);

async fn resources(server: &NatsServer) -> Resources {
    let client = elk_nats::connect(&NatsConfig::new(server.url(), "membership-test"))
        .await
        .unwrap();
    let names = Names::new(Namespace::new("test").unwrap());
    elk_nats::provision(client, names, &ProvisionConfig::default())
        .await
        .unwrap()
}

fn record(incarnation: u64) -> MemberRecord {
    MemberRecord {
        schema: SCHEMA_VERSION,
        role: MemberRole::Worker,
        incarnation: Incarnation(incarnation),
        capacity: Capacity(1),
        jobs: Vec::new(),
        labels: Default::default(),
        version: "test".to_owned(),
    }
}

async fn join(resources: &Resources, incarnation: u64) -> MemberLease {
    MemberLease::join(
        &resources.member_keys,
        MemberId::new("m1").unwrap(),
        record(incarnation),
        TTL,
    )
    .await
    .unwrap()
}

async fn stored_revision(resources: &Resources) -> Revision {
    elk_nats::read_entry(&resources.members, "m1")
        .await
        .unwrap()
        .expect("member key")
        .revision
}

/// Writes `value` over the member key by CAS on its current revision, with the lease's TTL: what a
/// renewal whose ack got lost leaves behind when `value` is the lease's own.
async fn write_behind_the_lease(resources: &Resources, value: Bytes) -> Revision {
    let current = stored_revision(resources).await;
    let outcome = cas_write(
        &resources.jetstream,
        &resources.members,
        "m1",
        value,
        Some(current),
        Some(TTL),
    )
    .await
    .unwrap();
    let CasOutcome::Written(revision) = outcome else {
        panic!("the test's write lost a race with the renewal: {outcome:?}");
    };
    revision
}

#[tokio::test]
async fn a_renewal_stored_without_its_ack_does_not_lose_the_lease() {
    let server = NatsServer::start();
    let resources = resources(&server).await;
    let lease = join(&resources, 7).await;
    let lost = lease.lost();
    assert!(lease.deadline().is_valid());

    // Our own bytes, one revision ahead of what the lease expects: its next renewal gets
    // "wrong last sequence" (10071), exactly as after a renewal whose ack was lost.
    let ours = Bytes::from(encode(&record(7)));
    let behind_its_back = write_behind_the_lease(&resources, ours).await;

    // The lease renews on top of that revision (two renewals later, to be sure the conflict was
    // taken and survived), and never fences.
    wait_until(
        "the lease renewed past the foreign write, or fenced",
        DEADLINE,
        || async {
            lost.is_cancelled()
                || stored_revision(&resources).await.get() >= behind_its_back.get() + 2
        },
    )
    .await
    .unwrap();
    assert!(!lost.is_cancelled(), "the lease was not lost");
    assert!(
        lease.deadline().is_valid(),
        "the fence deadline keeps moving"
    );
    lease.leave().await.unwrap();
    let entry = elk_nats::read_entry(&resources.members, "m1")
        .await
        .unwrap()
        .unwrap();
    assert!(
        entry.deleted,
        "leave deleted the key at the adopted revision"
    );
}

#[tokio::test]
async fn another_value_behind_the_lease_s_back_loses_it_and_expires_the_deadline() {
    let server = NatsServer::start();
    let resources = resources(&server).await;
    let lease = join(&resources, 7).await;
    let deadline = lease.deadline();

    // Another incarnation's record: the key is no longer ours.
    let theirs = Bytes::from(encode(&record(8)));
    write_behind_the_lease(&resources, theirs).await;

    let lost = lease.lost();
    wait_until("the lease is lost", DEADLINE, || async {
        lost.is_cancelled()
    })
    .await
    .unwrap();
    assert!(!deadline.is_valid(), "a lost lease has no deadline ahead");
    assert!(deadline.valid_until().is_none(), "expired for good");
}

#[tokio::test]
async fn leaving_expires_the_deadline() {
    let server = NatsServer::start();
    let resources = resources(&server).await;
    let lease = join(&resources, 7).await;
    let deadline = lease.deadline();
    let first = deadline.valid_until().expect("valid after join");
    wait_until("a renewal moved the deadline", DEADLINE, || async {
        deadline.valid_until().is_some_and(|until| until > first)
    })
    .await
    .unwrap();
    lease.leave().await.unwrap();
    assert!(!deadline.is_valid());
}
