//! elk-nats against a real nats-server: refusal of unusable servers, idempotent provisioning,
//! compare-and-set semantics, per-key TTL expiry and snapshot watches, provisioning across a
//! network cut.

use bytes::Bytes;
use elk_nats::{
    CasOutcome, NatsConfig, NatsError, ProvisionConfig, cas_write, connect, provision, read_entry,
    watch_snapshot,
};
use elk_protocol::names::Names;
use elk_testkit::{NatsServer, TcpProxy, wait_until};
use elk_types::{Namespace, Revision};
use futures::StreamExt;
use std::time::Duration;

fn names() -> Names {
    Names::new(Namespace::new("test").unwrap())
}

#[tokio::test]
async fn server_without_jetstream_is_refused_with_a_clear_error() {
    let server = NatsServer::builder().jetstream(false).start().unwrap();
    let error = connect(&NatsConfig::new(server.url(), "test"))
        .await
        .unwrap_err();
    assert!(
        matches!(error, NatsError::JetStreamDisabled { .. }),
        "{error}"
    );
    let text = error.to_string();
    assert!(
        text.contains("JetStream") && text.contains("2.15"),
        "{text}"
    );
}

#[tokio::test]
async fn provisioning_is_idempotent_and_creates_everything() {
    let server = NatsServer::start();
    let client = connect(&NatsConfig::new(server.url(), "test"))
        .await
        .unwrap();
    let first = provision(client.clone(), names(), &ProvisionConfig::default())
        .await
        .unwrap();
    let second = provision(client.clone(), names(), &ProvisionConfig::default())
        .await
        .unwrap();
    assert_eq!(first.members.name, "elk_test_members");
    assert_eq!(second.partitions.name, "elk_test_partitions");
    let info = second.progress.get_info().await.unwrap();
    assert_eq!(info.config.subjects, vec!["elk.test.progress.>".to_owned()]);
    assert_eq!(info.state.consumer_count, 1);
    let members_info = second.members.stream.get_info().await.unwrap();
    assert!(
        members_info.config.allow_message_ttl,
        "members bucket allows per-key TTL"
    );
}

/// nats-server 2.15 caps every stream without a limit of its own at 1,000 consumers, and every
/// worker watches its assignment key through its own consumer: the buckets carry an explicit
/// limit, and provisioning again (as every worker does at start) keeps it.
#[tokio::test(flavor = "multi_thread")]
async fn more_than_a_thousand_workers_can_watch_their_assignment_keys() {
    let server = NatsServer::start();
    let client = connect(&NatsConfig::new(server.url(), "test"))
        .await
        .unwrap();
    // A namespace provisioned before the limit (through `create_key_value`, the server's default
    // of 1,000 consumers) is raised on the next start.
    async_nats::jetstream::new(client.clone())
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: names().assignments_bucket(),
            history: 1,
            storage: async_nats::jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await
        .unwrap();
    let resources = provision(client.clone(), names(), &ProvisionConfig::default())
        .await
        .unwrap();
    let mut watches = Vec::new();
    for worker in 0..1_000 {
        let watch = resources
            .assignments
            .watch(format!("worker-{worker}"))
            .await
            .unwrap_or_else(|error| panic!("watch {worker}: {error}"));
        watches.push(watch);
    }
    // A worker starting now provisions again before it watches its key.
    let late = provision(client, names(), &ProvisionConfig::default())
        .await
        .unwrap();
    let info = late.assignments.stream.get_info().await.unwrap();
    assert_eq!(info.config.max_consumers, elk_nats::STREAM_MAX_CONSUMERS);
    assert!(info.config.allow_direct && info.config.allow_rollup);
    let watch = late.assignments.watch("worker-1000").await;
    assert!(watch.is_ok(), "the 1,001st watch: {:?}", watch.err());
    assert!(
        late.members
            .stream
            .get_info()
            .await
            .unwrap()
            .config
            .allow_message_ttl,
        "the members bucket keeps per-key TTLs"
    );
}

/// A service started while its link to NATS is down waits for it: `open` tries again after
/// requests that time out, within `patience` (found by `elk-bench chaos`: a scaler whose link was
/// cut during its start-up exited). Two clients behind two proxies, both cut for longer than one
/// JetStream request timeout (5 s): without patience opening gives up with a retryable error;
/// with the default it completes once the link is healed.
#[tokio::test(flavor = "multi_thread")]
async fn opening_waits_out_a_network_cut() {
    let server = NatsServer::start();
    let admin = connect(&NatsConfig::new(server.url(), "admin"))
        .await
        .unwrap();
    provision(admin, names(), &ProvisionConfig::default())
        .await
        .unwrap();
    let impatient_proxy = TcpProxy::start(server.url());
    let patient_proxy = TcpProxy::start(server.url());
    let impatient = connect(&NatsConfig::new(impatient_proxy.url(), "impatient"))
        .await
        .unwrap();
    let patient = connect(&NatsConfig::new(patient_proxy.url(), "patient"))
        .await
        .unwrap();
    impatient_proxy.cut();
    patient_proxy.cut();
    let no_patience = ProvisionConfig {
        patience: Duration::ZERO,
        ..ProvisionConfig::default()
    };
    let gave_up =
        tokio::spawn(async move { elk_nats::open(impatient, names(), &no_patience).await.err() });
    let waited = tokio::spawn(async move {
        elk_nats::open(patient, names(), &ProvisionConfig::default())
            .await
            .map(|resources| resources.names.namespace().clone())
    });
    let error = gave_up
        .await
        .unwrap()
        .expect("a cut link fails opening without patience");
    assert!(error.is_retryable(), "{error}");
    // The patient one has seen at least one request time out by now.
    assert!(!waited.is_finished());
    patient_proxy.heal();
    let namespace = tokio::time::timeout(Duration::from_secs(60), waited)
        .await
        .expect("opening completes after the heal")
        .unwrap()
        .unwrap_or_else(|error| panic!("opening after the heal: {error}"));
    assert_eq!(namespace, *names().namespace());
}

#[tokio::test]
async fn compare_and_set_create_update_and_conflict() {
    let server = NatsServer::start();
    let client = connect(&NatsConfig::new(server.url(), "test"))
        .await
        .unwrap();
    let resources = provision(client, names(), &ProvisionConfig::default())
        .await
        .unwrap();
    let js = &resources.jetstream;
    let store = &resources.jobs;

    let created = cas_write(js, store, "k", Bytes::from("a"), None, None)
        .await
        .unwrap();
    let CasOutcome::Written(first) = created else {
        panic!("create failed: {created:?}")
    };
    let again = cas_write(js, store, "k", Bytes::from("b"), None, None)
        .await
        .unwrap();
    assert!(matches!(again, CasOutcome::Conflict { current: Some(ref e) } if e.value == "a"));

    let updated = cas_write(js, store, "k", Bytes::from("c"), Some(first), None)
        .await
        .unwrap();
    let CasOutcome::Written(second) = updated else {
        panic!("update failed")
    };
    assert!(second > first);
    let stale = cas_write(js, store, "k", Bytes::from("d"), Some(first), None)
        .await
        .unwrap();
    assert!(matches!(stale, CasOutcome::Conflict { current: Some(ref e) } if e.revision == second));

    store.delete("k").await.unwrap();
    let recreated = cas_write(js, store, "k", Bytes::from("e"), None, None)
        .await
        .unwrap();
    assert!(
        matches!(recreated, CasOutcome::Written(_)),
        "create over a delete marker"
    );
    let entry = read_entry(store, "k").await.unwrap().unwrap();
    assert_eq!(entry.value, "e");
    assert!(!entry.deleted);
    assert!(read_entry(store, "missing").await.unwrap().is_none());
    let _ = Revision(0);
}

#[tokio::test]
async fn ttl_key_expires_and_watchers_see_the_marker() {
    let server = NatsServer::start();
    let client = connect(&NatsConfig::new(server.url(), "test"))
        .await
        .unwrap();
    let resources = provision(client, names(), &ProvisionConfig::default())
        .await
        .unwrap();
    let js = &resources.jetstream;
    let members = &resources.members;
    let ttl = Some(Duration::from_secs(1));

    let outcome = cas_write(js, members, "w-1", Bytes::from("x"), None, ttl)
        .await
        .unwrap();
    assert!(matches!(outcome, CasOutcome::Written(_)));
    let mut snapshot = watch_snapshot(members).await.unwrap();
    assert!(snapshot.entries.contains_key("w-1"));

    // Nothing renews the key: the server expires it and the watch gets a delete marker.
    let event = tokio::time::timeout(Duration::from_secs(10), snapshot.watch.next())
        .await
        .expect("marker within 10s")
        .unwrap()
        .unwrap();
    assert_eq!(event.key, "w-1");
    assert_ne!(event.operation, async_nats::jetstream::kv::Operation::Put);

    // Re-creating over the marker keeps the TTL (the stock client's create drops it here).
    cas_write(js, members, "w-1", Bytes::from("y"), None, ttl)
        .await
        .unwrap();
    wait_until(
        "re-created key expires too",
        Duration::from_secs(10),
        || async {
            read_entry(members, "w-1")
                .await
                .unwrap()
                .is_none_or(|e| e.deleted)
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn snapshot_of_an_empty_bucket_returns_at_once() {
    let server = NatsServer::start();
    let client = connect(&NatsConfig::new(server.url(), "test"))
        .await
        .unwrap();
    let resources = provision(client, names(), &ProvisionConfig::default())
        .await
        .unwrap();
    let snapshot = tokio::time::timeout(Duration::from_secs(1), watch_snapshot(&resources.fleet))
        .await
        .expect("no wait on an empty bucket")
        .unwrap();
    assert!(snapshot.entries.is_empty());
}
