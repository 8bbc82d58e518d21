//! `NatsServer::restart` keeps the port and the JetStream store: a KV value written before the
//! restart is read back after it, by the same (reconnected) client. Runs on the backend
//! `ELK_TEST_BACKEND` picks (a process, or a container).

use elk_nats::NatsConfig;
use elk_testkit::{Backend, NatsServer, wait_until};
use std::time::Duration;

#[tokio::test]
async fn restart_keeps_port_and_jetstream_data() {
    let mut server = NatsServer::start();
    assert_eq!(
        server.backend(),
        Backend::from_env().unwrap(),
        "the backend asked for"
    );
    let port = server.port();
    let client = elk_nats::connect(&NatsConfig::new(server.url(), "restart-test"))
        .await
        .unwrap();
    let jetstream = async_nats::jetstream::new(client.clone());
    let store = jetstream
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: "restart".to_owned(),
            storage: async_nats::jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await
        .unwrap();
    store.put("key", "before".into()).await.unwrap();
    if let Some(store) = server.store_dir() {
        assert!(
            store.exists(),
            "a server process keeps its store in {store:?}"
        );
    }

    server.stop();
    assert!(!server.is_running());
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "stopped"
    );
    server.restart().unwrap();
    assert!(server.is_running());
    assert_eq!(server.port(), port, "same port after restart");

    wait_until(
        "the value is readable after restart",
        Duration::from_secs(20),
        || async {
            let read = tokio::time::timeout(Duration::from_millis(500), store.get("key")).await;
            matches!(read, Ok(Ok(Some(value))) if value.as_ref() == b"before")
        },
    )
    .await
    .unwrap();
    store.put("key", "after".into()).await.unwrap();
    assert_eq!(store.get("key").await.unwrap().unwrap().as_ref(), b"after");
}
