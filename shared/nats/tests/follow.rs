//! `follow_key` against a real nats-server: a follower whose KV watch went silent (its consumer
//! gone with the server that held it) still sees new values, from its periodic re-read, well
//! before async-nats would notice the missed heartbeats (10 s) and recreate the watch.

use bytes::Bytes;
use elk_nats::{NatsConfig, ProvisionConfig, RESYNC_INTERVAL, connect, follow_key, provision};
use elk_protocol::messages::RoleLease;
use elk_protocol::names::Names;
use elk_protocol::{SCHEMA_VERSION, encode};
use elk_testkit::{NatsServer, wait_until};
use elk_types::{Epoch, Generation, Namespace};
use futures::StreamExt;
use std::time::Duration;

fn lease(epoch: u64) -> Bytes {
    Bytes::from(encode(&RoleLease {
        schema: SCHEMA_VERSION,
        holder: None,
        epoch: Epoch(epoch),
        generation: Generation(1),
    }))
}

#[tokio::test]
async fn a_follower_whose_watch_went_silent_still_sees_new_values() {
    let server = NatsServer::start();
    let client = connect(&NatsConfig::new(server.url(), "test"))
        .await
        .unwrap();
    let names = Names::new(Namespace::new("follow").unwrap());
    let resources = provision(client, names, &ProvisionConfig::default())
        .await
        .unwrap();
    let leases = &resources.leases;
    leases.put("role.assigner", lease(1)).await.unwrap();
    let followed = follow_key::<RoleLease>(leases, "role.assigner")
        .await
        .unwrap();
    assert_eq!(followed.borrow().as_ref().unwrap().value.epoch, Epoch(1));

    // The watch's consumer disappears, as when the server holding it dies.
    let stream = &leases.stream;
    let consumers: Vec<String> = stream
        .consumer_names()
        .map(|name| name.unwrap())
        .collect()
        .await;
    assert!(
        !consumers.is_empty(),
        "the follower watches through a consumer"
    );
    for name in consumers {
        stream.delete_consumer(&name).await.unwrap();
    }
    leases.put("role.assigner", lease(2)).await.unwrap();
    // Within a few re-read intervals: far less than the 10 s in which a missed heartbeat would
    // make async-nats recreate the watch.
    wait_until("the follower sees epoch 2", RESYNC_INTERVAL * 5, || async {
        followed
            .borrow()
            .as_ref()
            .is_some_and(|lease| lease.value.epoch == Epoch(2))
    })
    .await
    .unwrap();

    // A delete is seen the same way, and the channel never goes back to an older value.
    leases.delete("role.assigner").await.unwrap();
    wait_until(
        "the follower sees the delete",
        Duration::from_secs(10),
        || async { followed.borrow().is_none() },
    )
    .await
    .unwrap();
}
