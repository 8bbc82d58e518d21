//! `NatsCluster`: three servers form one JetStream cluster (a meta group of three with a
//! leader), and a node killed with SIGKILL re-joins it on its old ports after a restart.

use elk_nats_server::NatsCluster;
use std::time::Duration;

/// The `meta_cluster` section of a node's `/jsz`.
fn meta_cluster(cluster: &NatsCluster, index: usize) -> serde_json::Value {
    let (status, body) = cluster.node(index).monitor("jsz").unwrap();
    assert_eq!(status, 200, "{body}");
    let jsz: serde_json::Value = serde_json::from_str(&body).unwrap();
    jsz["meta_cluster"].clone()
}

#[test]
fn three_servers_form_one_jetstream_cluster_and_a_killed_node_rejoins() {
    let mut cluster = NatsCluster::builder().size(3).start().unwrap();
    assert_eq!(cluster.size(), 3);
    let urls: Vec<&str> = cluster.urls().split(',').collect();
    assert_eq!(urls.len(), 3);
    assert!(urls.iter().all(|url| url.starts_with("nats://127.0.0.1:")));
    for index in 0..3 {
        let meta = meta_cluster(&cluster, index);
        assert_eq!(meta["name"], cluster.name(), "{meta}");
        assert_eq!(meta["cluster_size"], 3, "{meta}");
        assert!(meta["leader"].is_string(), "a meta leader is known: {meta}");
        let name = format!("n{index}");
        assert_eq!(cluster.index_of(&name), Some(index));
    }

    let port = cluster.node(1).port();
    cluster.kill(1);
    assert!(!cluster.node(1).is_running());
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    cluster.restart(1).unwrap();
    assert_eq!(
        cluster.node(1).port(),
        port,
        "same client port after restart"
    );
    cluster.wait_healthy(Duration::from_secs(60)).unwrap();
    let meta = meta_cluster(&cluster, 1);
    assert_eq!(meta["cluster_size"], 3, "{meta}");
    assert!(meta["leader"].is_string(), "{meta}");
}

#[test]
fn an_empty_cluster_is_refused() {
    let error = NatsCluster::builder().size(0).start().unwrap_err();
    assert!(error.to_string().contains("at least 1"), "{error}");
}
