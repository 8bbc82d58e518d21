//! `ServiceMember::join` against a real nats-server: a replica restarted under the id of its
//! previous run, whose key has not expired yet, waits for the key to go away instead of failing,
//! and says so once in the log however often it tries again; a replica starting while its link
//! is cut waits the outage out instead of failing (a chaos run saw an election replica, restarted
//! right after a nats-server restart, exit on one timed-out join).

use bytes::Bytes;
use elk_nats::{
    NatsConfig, ProvisionConfig, ReplicaStatus, Resources, Retryable, ServiceMember, cas_write,
    connect, provision, read_entry,
};
use elk_protocol::messages::MemberRole;
use elk_protocol::names::Names;
use elk_testkit::{NatsServer, TcpProxy};
use elk_types::{MemberId, Namespace};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::layer::SubscriberExt;

/// Counts the warnings `elk_nats::membership` logs about one member id. Installed as the global
/// subscriber (once per test binary): a thread-scoped one (`set_default`) raced with the other
/// test of this file over tracing's global callsite-interest cache and, under CI load, saw none
/// of the warnings ("the wait is logged once": 0).
#[derive(Clone)]
struct MembershipWarnings {
    member: &'static str,
    count: Arc<AtomicUsize>,
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for MembershipWarnings {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let metadata = event.metadata();
        if *metadata.level() != tracing::Level::WARN || metadata.target() != "elk_nats::membership"
        {
            return;
        }
        let mut member = MemberField(None);
        event.record(&mut member);
        if member.0.as_deref() == Some(self.member) {
            self.count.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// The `member` field of an event.
struct MemberField(Option<String>);

impl tracing::field::Visit for MemberField {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "member" {
            self.0 = Some(format!("{value:?}"));
        }
    }
}

/// The number of membership warnings about `assigner-a` this process logged so far.
fn assigner_a_warnings() -> Arc<AtomicUsize> {
    static COUNT: std::sync::OnceLock<Arc<AtomicUsize>> = std::sync::OnceLock::new();
    COUNT
        .get_or_init(|| {
            let count = Arc::new(AtomicUsize::new(0));
            let layer = MembershipWarnings {
                member: "assigner-a",
                count: count.clone(),
            };
            tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
                .expect("the only global subscriber of this test binary");
            count
        })
        .clone()
}

async fn resources(server: &NatsServer) -> Resources {
    let client = connect(&NatsConfig::new(server.url(), "test"))
        .await
        .unwrap();
    let names = Names::new(Namespace::new("member").unwrap());
    provision(client, names, &ProvisionConfig::default())
        .await
        .unwrap()
}

/// `ServiceMember::join` of `id` on a task of its own (retrying every 100 ms), so the test can
/// act while it waits.
fn spawn_join(
    resources: &Resources,
    id: &MemberId,
    role: MemberRole,
    ttl: Duration,
    stop: &CancellationToken,
    status: &ReplicaStatus,
) -> tokio::task::JoinHandle<Result<Option<elk_nats::MemberLease>, elk_nats::JoinError>> {
    let (resources, id, stop, status) =
        (resources.clone(), id.clone(), stop.clone(), status.clone());
    tokio::spawn(async move {
        let member = ServiceMember {
            resources: &resources,
            id: &id,
            role,
            ttl,
            retry: Duration::from_millis(100),
            stop: &stop,
            status: &status,
        };
        member.join().await
    })
}

#[tokio::test]
async fn a_restarted_replica_waits_for_its_previous_key_to_expire() {
    let warnings = assigner_a_warnings();
    let server = NatsServer::start();
    let resources = resources(&server).await;
    let id = MemberId::new("assigner-a").unwrap();
    // The previous run's key: written with a 3 s TTL and never renewed (the process died). The
    // new run's TTL is 1 s, so it tries again (at least) once a second until the key is gone.
    let previous = Bytes::from_static(b"previous run");
    cas_write(
        &resources.jetstream,
        &resources.members,
        id.as_str(),
        previous.clone(),
        None,
        Some(Duration::from_secs(3)),
    )
    .await
    .unwrap();

    let stop = CancellationToken::new();
    let status = ReplicaStatus::default();
    let joining = spawn_join(
        &resources,
        &id,
        MemberRole::Assigner,
        Duration::from_secs(1),
        &stop,
        &status,
    );
    // Until the old key is gone, the join cannot have succeeded (it would have replaced it).
    loop {
        let finished = joining.is_finished();
        let entry = read_entry(&resources.members, id.as_str()).await.unwrap();
        let old_key_live = entry.is_some_and(|e| !e.deleted && e.value == previous);
        if old_key_live {
            assert!(!finished, "joined while the previous key was still live");
            assert!(!status.is_member(), "not a member while waiting");
        }
        if finished {
            break;
        }
        tokio::task::yield_now().await;
    }
    let lease = joining
        .await
        .unwrap()
        .expect("no NATS error")
        .expect("not stopped");
    let stored = read_entry(&resources.members, id.as_str())
        .await
        .unwrap()
        .unwrap();
    assert!(!stored.deleted);
    assert_ne!(stored.value, previous, "the new incarnation's record");
    assert!(status.is_member(), "the join is reported to the status");
    assert_eq!(
        warnings.load(Ordering::SeqCst),
        1,
        "the wait is logged once"
    );
    lease.leave().await.unwrap();
    assert!(!status.is_member(), "left: no longer a member");
}

#[tokio::test]
async fn a_join_waiting_on_a_live_holder_ends_when_stopped() {
    let server = NatsServer::start();
    let resources = resources(&server).await;
    let id = MemberId::new("scaler-a").unwrap();
    let never = CancellationToken::new();
    let status = ReplicaStatus::default();
    let holder_member = ServiceMember {
        resources: &resources,
        id: &id,
        role: MemberRole::Scaler,
        ttl: Duration::from_secs(2),
        retry: Duration::from_millis(100),
        stop: &never,
        status: &status,
    };
    let holder = holder_member.join().await.unwrap().unwrap();

    // A second process configured with the same id waits; stopping it ends the wait cleanly.
    let stopped = CancellationToken::new();
    stopped.cancel();
    let second = ServiceMember {
        stop: &stopped,
        ..holder_member
    };
    assert!(second.join().await.unwrap().is_none());
    assert!(
        !holder.lost().is_cancelled(),
        "the live holder keeps its key"
    );
    holder.leave().await.unwrap();
}

/// The link is cut for longer than a JetStream request timeout while the replica joins: the join
/// (spawned first) has had a request time out by the time a one-shot join through the same cut
/// link gives up, and it still joins once the link is healed.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_joining_during_a_network_cut_waits_it_out() {
    let server = NatsServer::start();
    let direct = resources(&server).await;
    let proxy = TcpProxy::start(server.url());
    let client = connect(&NatsConfig::new(proxy.url(), "cut")).await.unwrap();
    let resources = elk_nats::open(client, direct.names.clone(), &ProvisionConfig::default())
        .await
        .unwrap();
    proxy.cut();

    let id = MemberId::new("scaler-cut").unwrap();
    let stop = CancellationToken::new();
    let status = ReplicaStatus::default();
    let joining = spawn_join(
        &resources,
        &id,
        MemberRole::Scaler,
        Duration::from_secs(3),
        &stop,
        &status,
    );
    // The clock: a single attempt through the same cut link, started after the join's first.
    let record = elk_protocol::messages::MemberRecord {
        schema: elk_protocol::SCHEMA_VERSION,
        role: MemberRole::Scaler,
        incarnation: elk_nats::new_incarnation(),
        capacity: elk_types::Capacity(0),
        jobs: Vec::new(),
        labels: Default::default(),
        version: "test".to_owned(),
    };
    let once = elk_nats::MemberLease::join(
        &resources.member_keys,
        MemberId::new("scaler-once").unwrap(),
        record,
        Duration::from_secs(3),
    )
    .await;
    let error = once.expect_err("a join through a cut link fails");
    assert!(error.is_retryable(), "{error}");
    assert!(!joining.is_finished(), "the join gave up during the cut");
    assert!(!status.is_member());

    proxy.heal();
    let lease = tokio::time::timeout(Duration::from_secs(60), joining)
        .await
        .expect("the join completes after the heal")
        .unwrap()
        .unwrap_or_else(|error| panic!("join after the heal: {error}"))
        .expect("not stopped");
    assert!(status.is_member());
    let entry = read_entry(&direct.members, id.as_str()).await.unwrap();
    assert!(
        entry.is_some_and(|entry| !entry.deleted),
        "the member key is written"
    );
    lease.leave().await.unwrap();
}
