//! `TcpProxy` against a real nats-server: a client connected through it loses the connection on
//! `cut`, gets nothing through on `blackhole`, and works again after `heal`.

use async_nats::{ConnectOptions, Event};
use elk_testkit::{NatsServer, TcpProxy, wait_until};
use futures::StreamExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(15);

/// A client through `url` that records its connection events and reconnects quickly.
async fn recording_client(url: &str) -> (async_nats::Client, Arc<Mutex<Vec<Event>>>) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let client = ConnectOptions::new()
        .reconnect_delay_callback(|_| Duration::from_millis(50))
        .connection_timeout(Duration::from_secs(1))
        .event_callback(move |event| {
            let sink = sink.clone();
            async move { sink.lock().unwrap().push(event) }
        })
        .connect(url)
        .await
        .expect("connect through the proxy");
    (client, events)
}

/// Serves `echo` on a direct connection to the server.
async fn echo_service(server: &NatsServer) -> async_nats::Client {
    let client = async_nats::connect(server.url()).await.unwrap();
    let mut requests = client.subscribe("echo").await.unwrap();
    client.flush().await.unwrap();
    let responder = client.clone();
    tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            if let Some(reply) = request.reply {
                let _ = responder.publish(reply, request.payload).await;
            }
        }
    });
    client
}

async fn echo_works(client: &async_nats::Client) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_millis(300),
            client.request("echo", "ping".into())
        )
        .await,
        Ok(Ok(reply)) if reply.payload.as_ref() == b"ping"
    )
}

fn count(events: &Mutex<Vec<Event>>, wanted: fn(&Event) -> bool) -> usize {
    events.lock().unwrap().iter().filter(|e| wanted(e)).count()
}

#[tokio::test]
async fn cut_drops_the_connection_and_heal_lets_the_client_reconnect() {
    let server = NatsServer::start();
    let _echo = echo_service(&server).await;
    let proxy = TcpProxy::start(server.url());
    assert!(proxy.url().starts_with("nats://127.0.0.1:"));
    assert_ne!(proxy.local_addr().port(), server.port());
    let (client, events) = recording_client(&proxy.url()).await;
    assert!(echo_works(&client).await, "works before the cut");
    assert_eq!(proxy.open_connections(), 1);

    proxy.cut();
    assert!(proxy.is_cut());
    wait_until("client sees the disconnect", DEADLINE, || async {
        count(&events, |e| matches!(e, Event::Disconnected)) >= 1
    })
    .await
    .unwrap();
    // Reconnect attempts are held by the proxy, so nothing gets through while cut.
    assert!(
        !echo_works(&client).await,
        "no request gets through while cut"
    );
    assert_ne!(
        client.connection_state(),
        async_nats::connection::State::Connected
    );

    proxy.heal();
    wait_until("client works again after heal", DEADLINE, || async {
        echo_works(&client).await
    })
    .await
    .unwrap();
    assert!(count(&events, |e| matches!(e, Event::Connected)) >= 1);
}

#[tokio::test]
async fn blackhole_silently_stalls_and_heal_resumes_the_same_connection() {
    let server = NatsServer::start();
    let _echo = echo_service(&server).await;
    let proxy = TcpProxy::start(format!("127.0.0.1:{}", server.port()));
    let (client, events) = recording_client(&proxy.url()).await;
    assert!(echo_works(&client).await);

    proxy.blackhole();
    assert!(!echo_works(&client).await, "nothing gets through");
    assert!(!echo_works(&client).await, "still nothing");
    assert_eq!(proxy.open_connections(), 1, "the connection stays open");

    proxy.heal();
    wait_until("the stalled connection resumes", DEADLINE, || async {
        echo_works(&client).await
    })
    .await
    .unwrap();
    assert_eq!(
        count(&events, |e| matches!(e, Event::Disconnected)),
        0,
        "a silent partition that heals in time is not a disconnect"
    );
}

#[tokio::test]
async fn dropping_the_proxy_closes_everything() {
    let server = NatsServer::start();
    let proxy = TcpProxy::start(server.url());
    let port = proxy.local_addr().port();
    let (client, events) = recording_client(&proxy.url()).await;
    client.flush().await.unwrap();
    drop(proxy);
    wait_until("client sees the disconnect", DEADLINE, || async {
        count(&events, |e| matches!(e, Event::Disconnected)) >= 1
    })
    .await
    .unwrap();
    wait_until("the port is closed", DEADLINE, || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
    })
    .await
    .unwrap();
}
