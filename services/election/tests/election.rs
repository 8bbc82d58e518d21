//! elk-election against a real nats-server: one active replica, the membership view (joins,
//! leaves, TTL expiry), role designation with sticky holders and growing epochs, and failover of
//! the active replica (graceful and abrupt) without the generation or any epoch going back.

use elk_election::{ElectionConfig, ElectionError, ElectionSettings};
use elk_nats::{
    MemberLease, NatsConfig, ProvisionConfig, Resources, Versioned, connect, follow_key,
    new_incarnation, provision,
};
use elk_protocol::SCHEMA_VERSION;
use elk_protocol::messages::{ElectionLease, MemberRecord, MemberRole, MembershipView, RoleLease};
use elk_protocol::names::{ControlRole, ELECTION_KEY, Names, VIEW_KEY};
use elk_runtime::ServiceCommon;
use elk_testkit::{NatsServer, wait_until};
use elk_types::{Capacity, Epoch, Generation, MemberId, Namespace};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

const DEADLINE: Duration = Duration::from_secs(20);

fn namespace() -> Namespace {
    Namespace::new("elect").unwrap()
}

fn id(value: &str) -> MemberId {
    MemberId::new(value).unwrap()
}

async fn resources(server: &NatsServer) -> Resources {
    let client = connect(&NatsConfig::new(server.url(), "election-test"))
        .await
        .unwrap();
    provision(client, Names::new(namespace()), &ProvisionConfig::default())
        .await
        .unwrap()
}

/// A running election replica and the switch that shuts it down gracefully.
struct Replica {
    id: MemberId,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ElectionError>>,
}

impl Replica {
    fn start(server: &NatsServer, member_id: &str) -> Replica {
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
                view_debounce: Duration::from_millis(20),
                role_resync: Duration::from_millis(500),
                ..ElectionSettings::default()
            },
        };
        let (shutdown, shutdown_signal) = oneshot::channel::<()>();
        let task = tokio::spawn(elk_election::run(config, async move {
            let _ = shutdown_signal.await;
        }));
        Replica {
            id: id(member_id),
            shutdown: Some(shutdown),
            task,
        }
    }

    async fn stop_gracefully(mut self) {
        let _ = self.shutdown.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("graceful shutdown within 10 s")
            .unwrap()
            .unwrap();
    }

    /// Abrupt stop: the task is dropped mid-flight; its keys are left to expire.
    async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

async fn join_member(
    resources: &Resources,
    member_id: &str,
    role: MemberRole,
    ttl_secs: u64,
) -> MemberLease {
    let record = MemberRecord {
        schema: SCHEMA_VERSION,
        role,
        incarnation: new_incarnation(),
        capacity: Capacity(if role == MemberRole::Worker { 4 } else { 0 }),
        jobs: Vec::new(),
        labels: Default::default(),
        version: "test".to_owned(),
    };
    MemberLease::join(
        &resources.member_keys,
        id(member_id),
        record,
        Duration::from_secs(ttl_secs),
    )
    .await
    .unwrap()
}

type Followed<M> = watch::Receiver<Option<Versioned<M>>>;

fn current<M: Clone>(receiver: &Followed<M>) -> Option<M> {
    receiver
        .borrow()
        .as_ref()
        .map(|versioned| versioned.value.clone())
}

fn generation(view: &Followed<MembershipView>) -> Generation {
    current(view).map_or(Generation(0), |view| view.generation)
}

fn lists(view: &Followed<MembershipView>, member_id: &str) -> bool {
    current(view).is_some_and(|view| view.member(&id(member_id)).is_some())
}

fn holder(lease: &Followed<RoleLease>) -> Option<String> {
    current(lease).and_then(|lease| lease.holder.map(|holder| holder.id.to_string()))
}

fn epoch(lease: &Followed<RoleLease>) -> Epoch {
    current(lease).map_or(Epoch(0), |lease| lease.epoch)
}

fn active(election: &Followed<ElectionLease>) -> Option<String> {
    current(election).map(|lease| lease.holder.to_string())
}

/// Records every value a followed key takes (the channel may coalesce, never reorder).
fn record_all<M, T>(
    mut receiver: Followed<M>,
    project: impl Fn(&M) -> T + Send + 'static,
) -> (Arc<Mutex<Vec<T>>>, JoinHandle<()>)
where
    M: Send + Sync + 'static,
    T: Send + 'static,
{
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            if let Some(versioned) = receiver.borrow_and_update().as_ref() {
                sink.lock().unwrap().push(project(&versioned.value));
            }
            if receiver.changed().await.is_err() {
                return;
            }
        }
    });
    (seen, task)
}

fn assert_monotonic<T: PartialOrd + std::fmt::Debug>(what: &str, values: &[T], strictly: bool) {
    for pair in values.windows(2) {
        let ok = if strictly {
            pair[0] < pair[1]
        } else {
            pair[0] <= pair[1]
        };
        assert!(ok, "{what} went back: {values:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_tracks_members_and_roles_stay_with_live_holders() {
    let server = NatsServer::start();
    let resources = resources(&server).await;
    let election: Followed<ElectionLease> =
        follow_key(&resources.leases, ELECTION_KEY).await.unwrap();
    let view: Followed<MembershipView> = follow_key(&resources.leases, VIEW_KEY).await.unwrap();
    let assigner_role: Followed<RoleLease> =
        follow_key(&resources.leases, ControlRole::Assigner.lease_key())
            .await
            .unwrap();
    let scaler_role: Followed<RoleLease> =
        follow_key(&resources.leases, ControlRole::Scaler.lease_key())
            .await
            .unwrap();
    let (actives, active_recorder) = record_all(election.clone(), |lease| lease.holder.to_string());
    let (generations, generation_recorder) = record_all(view.clone(), |view| view.generation);

    let first = Replica::start(&server, "election-a");
    let second = Replica::start(&server, "election-b");
    wait_until(
        "an active replica and both replicas in the view",
        DEADLINE,
        || async {
            active(&election).is_some() && lists(&view, "election-a") && lists(&view, "election-b")
        },
    )
    .await
    .unwrap();

    // Roles go to a live member of the matching role, epoch >= 1.
    let assigner_b = join_member(&resources, "assigner-b", MemberRole::Assigner, 2).await;
    let scaler = join_member(&resources, "scaler-1", MemberRole::Scaler, 2).await;
    wait_until("both roles designated", DEADLINE, || async {
        holder(&assigner_role).as_deref() == Some("assigner-b")
            && holder(&scaler_role).as_deref() == Some("scaler-1")
    })
    .await
    .unwrap();
    let assigner_epoch = epoch(&assigner_role);
    assert!(assigner_epoch >= Epoch(1) && epoch(&scaler_role) >= Epoch(1));

    // A live holder keeps its role when a better-ranked candidate joins.
    let assigner_a = join_member(&resources, "assigner-a", MemberRole::Assigner, 2).await;
    let worker_steady = join_member(&resources, "worker-steady", MemberRole::Worker, 2).await;
    wait_until("new members listed", DEADLINE, || async {
        lists(&view, "assigner-a") && lists(&view, "worker-steady")
    })
    .await
    .unwrap();
    let after_joins = generation(&view);
    assert_eq!(holder(&assigner_role).as_deref(), Some("assigner-b"));
    assert_eq!(epoch(&assigner_role), assigner_epoch);

    // A member that stops renewing (no leave) expires and disappears.
    let crashing = join_member(&resources, "worker-crash", MemberRole::Worker, 1).await;
    wait_until("crashing worker listed", DEADLINE, || async {
        lists(&view, "worker-crash")
    })
    .await
    .unwrap();
    let with_crashing = generation(&view);
    assert!(with_crashing > after_joins);
    drop(crashing);
    wait_until("expired worker dropped from the view", DEADLINE, || async {
        !lists(&view, "worker-crash")
    })
    .await
    .unwrap();
    assert!(generation(&view) > with_crashing);

    // Heartbeats are not changes: the generation stays put while everyone just renews.
    let quiet = generation(&view);
    // Let the steady worker renew its key three times (each renewal gives its key a new
    // revision), then check: a logical window, not a timed one.
    let renewals = std::sync::Mutex::new((None, 0u32));
    wait_until("three renewals of the steady worker", DEADLINE, || async {
        let revision = elk_nats::read_entry(&resources.members, "worker-steady")
            .await
            .unwrap()
            .map(|entry| entry.revision);
        let mut seen = renewals.lock().unwrap();
        if seen.0.is_some() && seen.0 != revision {
            seen.1 += 1;
        }
        seen.0 = revision;
        seen.1 >= 3
    })
    .await
    .unwrap();
    assert_eq!(
        generation(&view),
        quiet,
        "renewals must not change the view"
    );

    // The holder leaves: the next candidate gets the role under a higher epoch.
    let before_leave = generation(&view);
    assigner_b.leave().await.unwrap();
    wait_until("assigner role moved to assigner-a", DEADLINE, || async {
        holder(&assigner_role).as_deref() == Some("assigner-a")
    })
    .await
    .unwrap();
    assert!(epoch(&assigner_role) > assigner_epoch);
    assert!(generation(&view) > before_leave);
    assert!(!lists(&view, "assigner-b"));

    // Exactly one replica was active the whole time.
    let distinct_actives: std::collections::BTreeSet<String> =
        actives.lock().unwrap().iter().cloned().collect();
    assert_eq!(distinct_actives.len(), 1, "{distinct_actives:?}");
    assert_monotonic("view generation", &generations.lock().unwrap(), true);

    active_recorder.abort();
    generation_recorder.abort();
    drop((assigner_a, scaler, worker_steady));
    first.stop_gracefully().await;
    second.stop_gracefully().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_takes_over_when_the_active_replica_stops() {
    let server = NatsServer::start();
    let resources = resources(&server).await;
    let election: Followed<ElectionLease> =
        follow_key(&resources.leases, ELECTION_KEY).await.unwrap();
    let view: Followed<MembershipView> = follow_key(&resources.leases, VIEW_KEY).await.unwrap();
    let assigner_role: Followed<RoleLease> =
        follow_key(&resources.leases, ControlRole::Assigner.lease_key())
            .await
            .unwrap();
    let scaler_role: Followed<RoleLease> =
        follow_key(&resources.leases, ControlRole::Scaler.lease_key())
            .await
            .unwrap();
    let (generations, generation_recorder) = record_all(view.clone(), |view| view.generation);
    let (assigner_epochs, assigner_recorder) =
        record_all(assigner_role.clone(), |lease| lease.epoch);
    let (scaler_epochs, scaler_recorder) = record_all(scaler_role.clone(), |lease| lease.epoch);

    let _assigner = join_member(&resources, "assigner-1", MemberRole::Assigner, 2).await;
    let _scaler = join_member(&resources, "scaler-1", MemberRole::Scaler, 2).await;
    let _worker = join_member(&resources, "worker-1", MemberRole::Worker, 2).await;
    let mut replicas = vec![
        Replica::start(&server, "election-a"),
        Replica::start(&server, "election-b"),
    ];
    wait_until(
        "roles designated and both replicas listed",
        DEADLINE,
        || async {
            holder(&assigner_role).is_some()
                && holder(&scaler_role).is_some()
                && lists(&view, "election-a")
                && lists(&view, "election-b")
        },
    )
    .await
    .unwrap();
    let assigner_before = current(&assigner_role).unwrap();
    let scaler_before = current(&scaler_role).unwrap();

    // Graceful: the active replica deletes its lease; the standby takes over at once.
    let first_active = active(&election).unwrap();
    let index = replicas
        .iter()
        .position(|r| r.id.as_str() == first_active)
        .unwrap();
    let generation_before = generation(&view);
    replicas.remove(index).stop_gracefully().await;
    wait_until("standby active after graceful stop", DEADLINE, || async {
        active(&election).is_some_and(|holder| holder != first_active)
            && generation(&view) > generation_before
            && !lists(&view, &first_active)
    })
    .await
    .unwrap();

    // A new standby, then an abrupt stop of the active one: its lease must expire first.
    replicas.push(Replica::start(&server, "election-c"));
    wait_until("third replica listed", DEADLINE, || async {
        lists(&view, "election-c")
    })
    .await
    .unwrap();
    let second_active = active(&election).unwrap();
    assert_ne!(
        second_active, "election-c",
        "the existing active replica stays active"
    );
    let index = replicas
        .iter()
        .position(|r| r.id.as_str() == second_active)
        .unwrap();
    let generation_before = generation(&view);
    replicas.remove(index).kill().await;
    wait_until("election-c active after abrupt stop", DEADLINE, || async {
        active(&election).as_deref() == Some("election-c") && generation(&view) > generation_before
    })
    .await
    .unwrap();
    wait_until("killed replica expired from the view", DEADLINE, || async {
        !lists(&view, &second_active)
    })
    .await
    .unwrap();

    // Live role holders kept their roles and epochs across both failovers.
    let assigner_after = current(&assigner_role).unwrap();
    let scaler_after = current(&scaler_role).unwrap();
    assert_eq!(assigner_after.holder, assigner_before.holder);
    assert_eq!(scaler_after.holder, scaler_before.holder);
    assert_eq!(assigner_after.epoch, assigner_before.epoch);
    assert_eq!(scaler_after.epoch, scaler_before.epoch);

    assert_monotonic("view generation", &generations.lock().unwrap(), true);
    assert_monotonic("assigner epoch", &assigner_epochs.lock().unwrap(), false);
    assert_monotonic("scaler epoch", &scaler_epochs.lock().unwrap(), false);

    generation_recorder.abort();
    assigner_recorder.abort();
    scaler_recorder.abort();
    for replica in replicas {
        replica.stop_gracefully().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_members_watch_that_went_silent_is_noticed_and_the_view_rebuilt() {
    let server = NatsServer::start();
    let resources = resources(&server).await;
    let view: Followed<MembershipView> = follow_key(&resources.leases, VIEW_KEY).await.unwrap();
    let replica = Replica::start(&server, "election-a");
    wait_until("the replica lists itself", DEADLINE, || async {
        lists(&view, "election-a")
    })
    .await
    .unwrap();

    // The watch's consumer disappears, as when the server holding it dies: async-nats would
    // notice only after two missed 5 s heartbeats.
    let stream = &resources.members.stream;
    let consumers: Vec<String> = futures::StreamExt::collect::<Vec<_>>(stream.consumer_names())
        .await
        .into_iter()
        .map(|name| name.unwrap())
        .collect();
    assert!(
        !consumers.is_empty(),
        "the election watches the members bucket"
    );
    for name in consumers {
        stream.delete_consumer(&name).await.unwrap();
    }
    let _worker = join_member(&resources, "worker-1", MemberRole::Worker, 5).await;
    // Two role resyncs (500 ms each here) notice the lag; well inside the 10 s async-nats needs.
    wait_until(
        "the new member is in the view",
        Duration::from_secs(5),
        || async { lists(&view, "worker-1") },
    )
    .await
    .unwrap();
    replica.stop_gracefully().await;
}
