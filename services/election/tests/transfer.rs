//! Leadership transfer on request against a real nats-server: the active election replica
//! answers `elk.<ns>.admin.election.transfer` by writing the role lease to the next (or named)
//! live member under epoch + 1 at once — no TTL waited for — and refuses unknown targets and
//! lone holders with their codes.

use elk_election::{ElectionConfig, ElectionSettings};
use elk_nats::{
    AdminClient, AdminClientError, MemberLease, NatsConfig, ProvisionConfig, Resources, connect,
    follow_key, new_incarnation, provision,
};
use elk_protocol::SCHEMA_VERSION;
use elk_protocol::admin::AdminErrorCode;
use elk_protocol::messages::{MemberRecord, MemberRole, RoleLease};
use elk_protocol::names::{ControlRole, Names};
use elk_runtime::ServiceCommon;
use elk_testkit::{NatsServer, wait_until};
use elk_types::{Capacity, Epoch, MemberId, Namespace};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

const DEADLINE: Duration = Duration::from_secs(20);

fn namespace() -> Namespace {
    Namespace::new("transfer").unwrap()
}

fn id(value: &str) -> MemberId {
    MemberId::new(value).unwrap()
}

async fn join(resources: &Resources, member_id: &str, role: MemberRole) -> MemberLease {
    let record = MemberRecord {
        schema: SCHEMA_VERSION,
        role,
        incarnation: new_incarnation(),
        capacity: Capacity(0),
        jobs: Vec::new(),
        labels: Default::default(),
        version: "test".to_owned(),
    };
    MemberLease::join(
        &resources.member_keys,
        id(member_id),
        record,
        Duration::from_secs(5),
    )
    .await
    .unwrap()
}

fn refusal(error: AdminClientError) -> AdminErrorCode {
    match error {
        AdminClientError::Refused { service, error, .. } => {
            assert_eq!(service, "election");
            error.code
        }
        other => panic!("not a refusal: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_moves_the_role_at_once_under_the_next_epoch() {
    let server = NatsServer::start();
    let client = connect(&NatsConfig::new(server.url(), "transfer-test"))
        .await
        .unwrap();
    let resources = provision(
        client.clone(),
        Names::new(namespace()),
        &ProvisionConfig::default(),
    )
    .await
    .unwrap();
    let service = ServiceCommon::new(
        NatsConfig::new(server.url(), "election-1"),
        namespace(),
        id("election-1"),
    )
    .with_member_ttl(Duration::from_secs(2));
    let config = ElectionConfig {
        service,
        election: ElectionSettings {
            election_ttl: Duration::from_secs(2),
            standby_retry: Duration::from_millis(200),
            view_debounce: Duration::from_millis(20),
            role_resync: Duration::from_millis(500),
            ..ElectionSettings::default()
        },
    };
    let (shutdown, shutdown_signal) = oneshot::channel::<()>();
    let election = tokio::spawn(elk_election::run(config, async move {
        let _ = shutdown_signal.await;
    }));
    let _a = join(&resources, "scaler-a", MemberRole::Scaler).await;
    let lease = follow_key::<RoleLease>(&resources.leases, ControlRole::Scaler.lease_key())
        .await
        .unwrap();
    let holder = || {
        lease
            .borrow()
            .as_ref()
            .and_then(|versioned| versioned.value.holder.clone())
            .map(|holder| holder.id.to_string())
    };
    let epoch = || {
        lease
            .borrow()
            .as_ref()
            .map_or(Epoch(0), |versioned| versioned.value.epoch)
    };
    wait_until("scaler-a holds the role", DEADLINE, || async {
        holder().as_deref() == Some("scaler-a")
    })
    .await
    .unwrap();
    let admin =
        AdminClient::new(client, Names::new(namespace())).with_patience(Duration::from_secs(10));

    // Alone: nobody to hand it to.
    let alone = admin.transfer(ControlRole::Scaler, None).await.unwrap_err();
    assert_eq!(refusal(alone), AdminErrorCode::InvalidState);

    let _b = join(&resources, "scaler-b", MemberRole::Scaler).await;
    let _c = join(&resources, "scaler-c", MemberRole::Scaler).await;
    // A target must be a live member of that role.
    let unknown = admin
        .transfer(ControlRole::Scaler, Some(id("assigner-x")))
        .await
        .unwrap_err();
    assert_eq!(refusal(unknown), AdminErrorCode::UnknownMember);

    // Without a target: the next live replica after the holder, under the next epoch. The
    // members' TTL is 5 s: the lease moved on request, not because a holder expired.
    wait_until(
        "scaler-b and scaler-c are in the view",
        DEADLINE,
        || async {
            admin
                .transfer(ControlRole::Scaler, Some(id("scaler-a")))
                .await
                .is_ok()
                && admin
                    .transfer(ControlRole::Scaler, Some(id("scaler-c")))
                    .await
                    .is_ok()
        },
    )
    .await
    .unwrap();
    // The watch may still show an earlier lease than the transfer just answered: read the epoch
    // the next transfer starts from only once it names scaler-c (read early, it was one behind).
    wait_until("the lease names scaler-c", DEADLINE, || async {
        holder().as_deref() == Some("scaler-c")
    })
    .await
    .unwrap();
    let before = epoch();
    let started = Instant::now();
    let moved = admin.transfer(ControlRole::Scaler, None).await.unwrap();
    assert_eq!(moved.previous.unwrap().id.as_str(), "scaler-c");
    assert_eq!(
        moved.holder.id.as_str(),
        "scaler-a",
        "wraps around after the last id"
    );
    assert_eq!(moved.epoch, before.next().unwrap());
    wait_until("the lease names scaler-a", DEADLINE, || async {
        holder().as_deref() == Some("scaler-a") && epoch() == moved.epoch
    })
    .await
    .unwrap();
    println!(
        "transfer: request to the lease naming the new holder in {:?}",
        started.elapsed()
    );

    // To a named member; asking for the current holder writes nothing.
    let named = admin
        .transfer(ControlRole::Scaler, Some(id("scaler-b")))
        .await
        .unwrap();
    assert_eq!(named.holder.id.as_str(), "scaler-b");
    assert_eq!(named.epoch, moved.epoch.next().unwrap());
    let same = admin
        .transfer(ControlRole::Scaler, Some(id("scaler-b")))
        .await
        .unwrap();
    assert_eq!(same.epoch, named.epoch, "already held: nothing written");
    // The role stays with its new live holder (sticky designation).
    wait_until("the lease names scaler-b", DEADLINE, || async {
        holder().as_deref() == Some("scaler-b")
    })
    .await
    .unwrap();

    shutdown.send(()).unwrap();
    election.await.unwrap().unwrap();
}
