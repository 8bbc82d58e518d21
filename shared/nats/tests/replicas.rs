//! Replicated provisioning on a real 3-server JetStream cluster: every bucket and the progress
//! stream get the configured replicas, clients without a setting keep them, a count the
//! servers cannot hold is refused with a clear error (before anything is created, or mapped
//! from JetStream's own refusal).

use async_nats::jetstream::stream;
use elk_nats::{NatsConfig, NatsError, ProvisionConfig, Resources, connect, provision};
use elk_protocol::names::{Names, PROGRESS_CONSUMER};
use elk_testkit::{NatsCluster, NatsServer, wait_until};
use elk_types::Namespace;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(30);

fn names() -> Names {
    Names::new(Namespace::new("rep").unwrap())
}

fn with_replicas(replicas: Option<usize>) -> ProvisionConfig {
    ProvisionConfig {
        replicas,
        ..ProvisionConfig::default()
    }
}

/// (stream name, replicas configured, peers other than the leader) of every resource.
async fn replica_counts(resources: &Resources) -> Vec<(String, usize, usize)> {
    let mut streams = vec![
        resources.members.stream.clone(),
        resources.leases.stream.clone(),
        resources.jobs.stream.clone(),
        resources.partitions.stream.clone(),
        resources.assignments.stream.clone(),
        resources.fleet.stream.clone(),
    ];
    streams.push(resources.progress.clone());
    let mut counts = Vec::new();
    for mut stream in streams {
        let info = stream.info().await.unwrap().clone();
        let followers = info.cluster.map_or(0, |cluster| cluster.replicas.len());
        counts.push((info.config.name, info.config.num_replicas, followers));
    }
    counts
}

async fn consumer_replicas(resources: &Resources) -> (usize, usize) {
    let mut consumer = resources
        .progress
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>(PROGRESS_CONSUMER)
        .await
        .unwrap();
    let info = consumer.info().await.unwrap().clone();
    let followers = info.cluster.map_or(0, |cluster| cluster.replicas.len());
    (info.config.num_replicas, followers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_resource_gets_the_configured_replicas_and_clients_keep_them() {
    let cluster = NatsCluster::start(3);
    let client = connect(&NatsConfig::new(cluster.urls(), "replicas"))
        .await
        .unwrap();
    // A client (a worker) first: it creates with one replica.
    let first = provision(client.clone(), names(), &with_replicas(None))
        .await
        .unwrap();
    for (name, replicas, followers) in replica_counts(&first).await {
        assert_eq!((replicas, followers), (1, 0), "{name}");
    }
    // The services' setting brings everything to 3, the consumer included (the new copies
    // are placed in the background).
    let replicated = provision(client.clone(), names(), &with_replicas(Some(3)))
        .await
        .unwrap();
    for (name, replicas, _) in replica_counts(&replicated).await {
        assert_eq!(replicas, 3, "{name}");
    }
    wait_until("every resource has 2 followers", DEADLINE, || async {
        let all_placed = replica_counts(&replicated)
            .await
            .iter()
            .all(|(_, _, followers)| *followers == 2);
        all_placed && consumer_replicas(&replicated).await.1 == 2
    })
    .await
    .unwrap();
    // A client without a setting does not undo it.
    let later = provision(client.clone(), names(), &with_replicas(None))
        .await
        .unwrap();
    for (name, replicas, followers) in replica_counts(&later).await {
        assert_eq!((replicas, followers), (3, 2), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_replicas_than_servers_are_refused_naming_the_setting() {
    let cluster = NatsCluster::start(3);
    let client = connect(&NatsConfig::new(cluster.urls(), "replicas"))
        .await
        .unwrap();
    let error = provision(client.clone(), names(), &with_replicas(Some(4)))
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(
        matches!(error, NatsError::Replicas { replicas: 4, .. }),
        "{text}"
    );
    assert!(
        text.contains("3 server(s)") && text.contains("ELK_REPLICAS"),
        "{text}"
    );
    assert!(!error.is_retryable());

    let single = NatsServer::start();
    let client = connect(&NatsConfig::new(single.url(), "replicas"))
        .await
        .unwrap();
    let error = provision(client.clone(), names(), &with_replicas(Some(3)))
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, NatsError::Replicas { .. }), "{text}");
    assert!(text.contains("not part of a cluster"), "{text}");
    // Refused before anything was created.
    let jetstream = async_nats::jetstream::new(client.clone());
    assert!(jetstream.get_stream("KV_elk_rep_members").await.is_err());
    for zero_or_six in [0, 6] {
        let error = provision(client.clone(), names(), &with_replicas(Some(zero_or_six)))
            .await
            .unwrap_err();
        assert!(matches!(error, NatsError::Replicas { .. }), "{error}");
    }
    // A single server with the setting at 1 is fine.
    provision(client, names(), &with_replicas(Some(1)))
        .await
        .unwrap();
}

#[tokio::test]
async fn jetstream_s_own_refusal_of_a_replica_count_is_the_same_clear_error() {
    let single = NatsServer::start();
    let client = connect(&NatsConfig::new(single.url(), "replicas"))
        .await
        .unwrap();
    let refusal = async_nats::jetstream::new(client)
        .create_stream(stream::Config {
            name: "R3".to_owned(),
            subjects: vec!["r3.>".to_owned()],
            num_replicas: 3,
            ..Default::default()
        })
        .await
        .unwrap_err();
    let error = NatsError::provision_replicated("stream R3", 3, refusal);
    let text = error.to_string();
    assert!(
        matches!(error, NatsError::Replicas { replicas: 3, .. }),
        "{text}"
    );
    assert!(text.contains("not part of a cluster"), "{text}");
    assert!(
        std::error::Error::source(&error).is_some(),
        "keeps the server's error"
    );
}
