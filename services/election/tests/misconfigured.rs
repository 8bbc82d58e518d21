//! Issue 9 item 4 (defence in depth), the election's part: what a misconfigured server lets any
//! client write into `leases` and `members` must not freeze or rewind the election. Every hostile
//! write here is a plain KV put or delete from a raw client (no TTL unless stated), against a real
//! nats-server:
//!
//! * a role lease at epoch `u64::MAX`: refused (no wrap, no panic), the other role still served;
//! * a deleted or garbled role lease: rewritten with an epoch above every epoch used before;
//! * an election lease without a TTL (decodable or garbage): a replica takes it over;
//! * a member key without a TTL: never in the view (a fake member), or dropped after the silence
//!   limit (a live member's record copied without a TTL after it died);
//! * garbage over a live member key: the member leaves the view, and re-joins over the garbage;
//! * a member announcing capacity `u32::MAX`: listed with `election.max_member_capacity`.

use bytes::Bytes;
use elk_election::{ElectionConfig, ElectionError, ElectionSettings};
use elk_nats::{
    MemberLease, NatsConfig, ProvisionConfig, Resources, Versioned, connect, follow_key,
    new_incarnation, provision,
};
use elk_protocol::admin::{
    AdminCommand, AdminErrorCode, AdminReply, AdminRequest, ELECTION_SERVICE,
};
use elk_protocol::messages::{
    ElectionLease, MemberRecord, MemberRef, MemberRole, MembershipView, RoleLease,
};
use elk_protocol::names::{ControlRole, ELECTION_KEY, Names, VIEW_KEY};
use elk_protocol::{SCHEMA_VERSION, decode, encode};
use elk_runtime::ServiceCommon;
use elk_testkit::{NatsServer, wait_until};
use elk_types::{Capacity, Epoch, Generation, Incarnation, MemberId, Namespace};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

const DEADLINE: Duration = Duration::from_secs(20);
/// The replicas' silence limit: a member key not rewritten for this long leaves the view.
const SILENCE: Duration = Duration::from_secs(3);

/// Panics anywhere in this test process (the replicas run in-process).
static PANICS: AtomicU64 = AtomicU64::new(0);

fn count_panics() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            default(info);
        }));
    });
}

fn namespace() -> Namespace {
    Namespace::new("misconf").unwrap()
}

fn id(value: &str) -> MemberId {
    MemberId::new(value).unwrap()
}

async fn resources(server: &NatsServer) -> Resources {
    let client = connect(&NatsConfig::new(server.url(), "misconfigured-test"))
        .await
        .unwrap();
    provision(client, Names::new(namespace()), &ProvisionConfig::default())
        .await
        .unwrap()
}

struct Replica {
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ElectionError>>,
}

impl Replica {
    fn start(server: &NatsServer, member_id: &str) -> Replica {
        count_panics();
        let service = ServiceCommon::new(
            NatsConfig::new(server.url(), member_id),
            namespace(),
            id(member_id),
        )
        .with_member_ttl(Duration::from_secs(2));
        let config = ElectionConfig {
            service,
            election: ElectionSettings {
                election_ttl: Duration::from_secs(2),
                standby_retry: Duration::from_millis(200),
                role_resync: Duration::from_millis(300),
                member_silence_limit: SILENCE,
                ..ElectionSettings::default()
            },
        };
        let (shutdown, signal) = oneshot::channel::<()>();
        let task = tokio::spawn(elk_election::run(config, async move {
            let _ = signal.await;
        }));
        Replica {
            shutdown: Some(shutdown),
            task,
        }
    }

    async fn stop(mut self) {
        let _ = self.shutdown.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("graceful shutdown within 10 s")
            .unwrap()
            .unwrap();
    }
}

fn record(role: MemberRole, capacity: u32) -> MemberRecord {
    MemberRecord {
        schema: SCHEMA_VERSION,
        role,
        incarnation: new_incarnation(),
        capacity: Capacity(capacity),
        jobs: Vec::new(),
        labels: Default::default(),
        version: "test".to_owned(),
    }
}

async fn join(resources: &Resources, member_id: &str, role: MemberRole) -> MemberLease {
    let capacity = if role == MemberRole::Worker { 4 } else { 0 };
    MemberLease::join(
        &resources.member_keys,
        id(member_id),
        record(role, capacity),
        Duration::from_secs(2),
    )
    .await
    .unwrap()
}

type Followed<M> = watch::Receiver<Option<Versioned<M>>>;

fn current<M: Clone>(receiver: &Followed<M>) -> Option<M> {
    receiver.borrow().as_ref().map(|held| held.value.clone())
}

fn lists(view: &Followed<MembershipView>, member_id: &str) -> bool {
    current(view).is_some_and(|view| view.member(&id(member_id)).is_some())
}

fn generation(view: &Followed<MembershipView>) -> Generation {
    current(view).map_or(Generation(0), |view| view.generation)
}

fn lease_of(lease: &Followed<RoleLease>) -> Option<(Option<String>, Epoch)> {
    current(lease).map(|lease| {
        (
            lease.holder.map(|holder| holder.id.to_string()),
            lease.epoch,
        )
    })
}

async fn wait_for(what: &str, condition: impl Fn() -> bool) {
    wait_until(what, DEADLINE, || std::future::ready(condition()))
        .await
        .unwrap();
}

/// A raw put, as a misconfigured client does it: no TTL, no compare-and-set.
async fn put(store: &async_nats::jetstream::kv::Store, key: &str, value: impl Into<Bytes>) {
    store.put(key, value.into()).await.unwrap();
}

async fn role_lease(resources: &Resources, role: ControlRole) -> Option<RoleLease> {
    let entry = resources.leases.entry(role.lease_key()).await.unwrap()?;
    decode::<RoleLease>(&entry.value).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_and_garbled_role_leases_continue_above_every_epoch_used() {
    let server = NatsServer::start();
    let resources = resources(&server).await;
    let key = ControlRole::Assigner.lease_key();
    let role = follow_key::<RoleLease>(&resources.leases, key)
        .await
        .unwrap();
    let replica = Replica::start(&server, "election-1");
    let _assigner = join(&resources, "assigner-1", MemberRole::Assigner).await;
    wait_for("assigner-1 designated", || {
        lease_of(&role).is_some_and(|(holder, _)| holder.as_deref() == Some("assigner-1"))
    })
    .await;
    let first = lease_of(&role).unwrap().1;

    // Deleted: the election designates again, above the deleted epoch (not at 1 again).
    resources.leases.delete(key).await.unwrap();
    wait_for("role lease rewritten after its deletion", || {
        lease_of(&role).is_some_and(|(_, epoch)| epoch != first)
    })
    .await;
    let after_delete = lease_of(&role).unwrap().1;
    assert!(
        after_delete > first,
        "epoch after a delete {after_delete} must exceed {first}"
    );

    // Garbled: repaired (rewritten decodable), again above every epoch used.
    put(&resources.leases, key, &b"\xc1 not a lease"[..]).await;
    wait_until("garbled role lease repaired", DEADLINE, || async {
        role_lease(&resources, ControlRole::Assigner)
            .await
            .is_some_and(|lease| lease.epoch > after_delete)
    })
    .await
    .unwrap();
    let repaired = role_lease(&resources, ControlRole::Assigner).await.unwrap();
    assert_eq!(repaired.holder.unwrap().id.as_str(), "assigner-1");
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_epoch_at_the_maximum_is_refused_without_wrapping_or_panicking() {
    let server = NatsServer::start();
    let resources = resources(&server).await;
    // A forged lease at the last epoch naming a member that is not live.
    let forged = RoleLease {
        schema: SCHEMA_VERSION,
        holder: Some(MemberRef {
            id: id("ghost"),
            incarnation: Incarnation(1),
        }),
        epoch: Epoch(u64::MAX),
        generation: Generation(1),
    };
    put(
        &resources.leases,
        ControlRole::Assigner.lease_key(),
        encode(&forged),
    )
    .await;
    let view = follow_key::<MembershipView>(&resources.leases, VIEW_KEY)
        .await
        .unwrap();
    let scaler_role = follow_key::<RoleLease>(&resources.leases, ControlRole::Scaler.lease_key())
        .await
        .unwrap();
    let panics_before = PANICS.load(Ordering::SeqCst);
    let replica = Replica::start(&server, "election-1");
    let _assigner = join(&resources, "assigner-1", MemberRole::Assigner).await;
    let _scaler = join(&resources, "scaler-1", MemberRole::Scaler).await;
    wait_for("the scaler role is still designated", || {
        lease_of(&scaler_role).is_some_and(|(holder, _)| holder.as_deref() == Some("scaler-1"))
    })
    .await;
    wait_for("the view lists both members", || {
        lists(&view, "assigner-1") && lists(&view, "scaler-1")
    })
    .await;
    // Several resyncs later the assigner lease still stands at the maximum: refused, not wrapped.
    let generation_then = generation(&view);
    let _late = join(&resources, "worker-1", MemberRole::Worker).await;
    wait_for("a later view", || generation(&view) > generation_then).await;
    let stored = role_lease(&resources, ControlRole::Assigner).await.unwrap();
    assert_eq!(stored, forged, "the lease at u64::MAX is never rewritten");

    // A transfer request is answered with an error (the active task does not die on it).
    let request = AdminRequest::new(AdminCommand::Transfer {
        role: ControlRole::Assigner,
        to: Some(id("assigner-1")),
    });
    let names = Names::new(namespace());
    let reply = resources
        .client
        .request(
            names.admin_subject(ELECTION_SERVICE, "transfer"),
            Bytes::from(encode(&request)),
        )
        .await
        .unwrap();
    let reply: AdminReply = decode(&reply.payload).unwrap();
    let error = reply.error.expect("an error reply");
    assert_eq!(error.code, AdminErrorCode::Internal, "{error:?}");
    assert!(error.message.contains("wrap"), "{}", error.message);
    assert_eq!(
        PANICS.load(Ordering::SeqCst),
        panics_before,
        "no panic in the election"
    );
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_election_lease_without_a_ttl_is_taken_over() {
    let server = NatsServer::start();
    let resources = resources(&server).await;
    let view = follow_key::<MembershipView>(&resources.leases, VIEW_KEY)
        .await
        .unwrap();
    // A decodable lease for a holder that does not exist, written without a TTL: it never expires.
    let fake = ElectionLease {
        schema: SCHEMA_VERSION,
        holder: id("nobody"),
        incarnation: Incarnation(1),
    };
    put(&resources.leases, ELECTION_KEY, encode(&fake)).await;
    let replica = Replica::start(&server, "election-1");
    wait_for("a replica became active (a view is written)", || {
        lists(&view, "election-1")
    })
    .await;
    let holder = resources.leases.entry(ELECTION_KEY).await.unwrap().unwrap();
    let lease: ElectionLease = decode(&holder.value).unwrap();
    assert_eq!(lease.holder.as_str(), "election-1");

    // Garbage without a TTL over the live key: the replica loses it and takes it back.
    let generation_then = generation(&view);
    put(&resources.leases, ELECTION_KEY, &b"garbage"[..]).await;
    wait_until("the election lease is held again", DEADLINE, || async {
        let entry = resources.leases.entry(ELECTION_KEY).await.unwrap();
        entry.is_some_and(|entry| decode::<ElectionLease>(&entry.value).is_ok())
    })
    .await
    .unwrap();
    let _member = join(&resources, "worker-1", MemberRole::Worker).await;
    wait_for("the active replica still writes views", || {
        generation(&view) > generation_then && lists(&view, "worker-1")
    })
    .await;
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_keys_without_a_ttl_are_not_members() {
    let server = NatsServer::start();
    let resources = resources(&server).await;
    let view = follow_key::<MembershipView>(&resources.leases, VIEW_KEY)
        .await
        .unwrap();
    let replica = Replica::start(&server, "election-1");
    wait_for("active", || lists(&view, "election-1")).await;

    // A fake worker with a huge capacity and no TTL joins: never listed.
    put(
        &resources.members,
        "fake",
        encode(&record(MemberRole::Worker, u32::MAX)),
    )
    .await;
    let _real = join(&resources, "real", MemberRole::Worker).await;
    wait_for("the real worker is listed", || lists(&view, "real")).await;
    assert!(
        !lists(&view, "fake"),
        "a TTL-less member key is not a member"
    );

    // A live member's record copied over its key without a TTL after it died: the key never
    // expires, but the member leaves the view after the silence limit.
    let lease = join(&resources, "copied", MemberRole::Worker).await;
    wait_for("copied is listed", || lists(&view, "copied")).await;
    let stored = resources.members.entry("copied").await.unwrap().unwrap();
    drop(lease);
    put(&resources.members, "copied", stored.value).await;
    wait_for("copied leaves the view", || !lists(&view, "copied")).await;
    let entry = resources.members.entry("copied").await.unwrap().unwrap();
    assert!(
        entry.operation == async_nats::jetstream::kv::Operation::Put,
        "the TTL-less key is still there; only the view ignores it"
    );
    assert!(lists(&view, "real"), "a renewing member stays");
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_announcing_a_huge_capacity_is_listed_with_the_maximum() {
    let server = NatsServer::start();
    let resources = resources(&server).await;
    let view = follow_key::<MembershipView>(&resources.leases, VIEW_KEY)
        .await
        .unwrap();
    let replica = Replica::start(&server, "election-1");
    let _greedy = MemberLease::join(
        &resources.member_keys,
        id("greedy"),
        record(MemberRole::Worker, u32::MAX),
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    wait_for("greedy listed", || lists(&view, "greedy")).await;
    let listed = current(&view)
        .unwrap()
        .member(&id("greedy"))
        .unwrap()
        .capacity;
    assert_eq!(
        listed,
        Capacity(elk_election::DEFAULT_MAX_MEMBER_CAPACITY),
        "capacity clamped to election.max_member_capacity"
    );
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_over_a_member_key_drops_it_and_the_member_rejoins_over_it() {
    let server = NatsServer::start();
    let resources = resources(&server).await;
    let view = follow_key::<MembershipView>(&resources.leases, VIEW_KEY)
        .await
        .unwrap();
    let replica = Replica::start(&server, "election-1");
    let lease = join(&resources, "worker-1", MemberRole::Worker).await;
    wait_for("worker-1 listed", || lists(&view, "worker-1")).await;
    let lost = lease.lost();

    put(&resources.members, "worker-1", &b"\x00garbage"[..]).await;
    wait_for("worker-1 leaves the view", || !lists(&view, "worker-1")).await;
    tokio::time::timeout(DEADLINE, lost.cancelled())
        .await
        .expect("the worker sees its key lost");

    // Re-joining with the same id works over the TTL-less garbage.
    let again = join(&resources, "worker-1", MemberRole::Worker).await;
    wait_for("worker-1 listed again", || {
        current(&view).is_some_and(|view| {
            view.member(&id("worker-1"))
                .is_some_and(|member| member.incarnation == again.incarnation())
        })
    })
    .await;
    replica.stop().await;
}
