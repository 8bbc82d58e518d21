//! The progress stream on a real nats-server (issue 9 item 4): it keeps reports while the
//! assigner's durable consumer is missing, refuses new reports when full instead of dropping stored
//! ones, and provisioning moves a stream an earlier version created with interest retention to
//! limits in place, keeping its reports and consumer.

use async_nats::jetstream::{self, stream};
use elk_nats::{NatsConfig, ProvisionConfig, connect, progress_consumer_config, provision};
use elk_protocol::names::{Names, PROGRESS_CONSUMER};
use elk_testkit::NatsServer;
use elk_types::{MemberId, Namespace};
use std::time::Duration;

#[tokio::test]
async fn an_interest_stream_is_migrated_and_reports_outlive_the_consumer_until_the_stream_is_full()
{
    let server = NatsServer::start();
    let client = connect(&NatsConfig::new(server.url(), "test"))
        .await
        .unwrap();
    let js = jetstream::new(client.clone());
    let names = Names::new(Namespace::new("test").unwrap());
    let subject = names.progress_subject(&MemberId::new("w-1").unwrap());
    // The stream and consumer as an earlier version provisioned them, with one report stored.
    let legacy = js
        .create_stream(stream::Config {
            name: names.progress_stream(),
            subjects: vec![names.progress_subjects()],
            retention: stream::RetentionPolicy::Interest,
            storage: stream::StorageType::File,
            max_age: Duration::from_secs(7 * 24 * 3600),
            ..Default::default()
        })
        .await
        .unwrap();
    legacy
        .create_consumer(progress_consumer_config())
        .await
        .unwrap();
    js.publish(subject.clone(), "first".into())
        .await
        .unwrap()
        .await
        .unwrap();

    let config = ProvisionConfig {
        progress_max_bytes: 64 * 1024,
        ..ProvisionConfig::default()
    };
    let resources = provision(client.clone(), names.clone(), &config)
        .await
        .unwrap();
    let info = resources.progress.get_info().await.unwrap();
    assert_eq!(info.config.retention, stream::RetentionPolicy::Limits);
    assert_eq!(info.config.discard, stream::DiscardPolicy::New);
    assert_eq!(info.config.max_bytes, 64 * 1024);
    assert_eq!(info.state.messages, 1, "the stored report was kept");
    assert_eq!(info.state.consumer_count, 1, "the consumer was kept");

    // Without any consumer, a report is still stored (interest retention discarded it).
    resources
        .progress
        .delete_consumer(PROGRESS_CONSUMER)
        .await
        .unwrap();
    js.publish(subject.clone(), "second".into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(
        resources.progress.get_info().await.unwrap().state.messages,
        2
    );

    // Full: a new report is refused (the publisher sees it and retries), nothing stored is lost.
    let big = vec![b'x'; 40 * 1024];
    js.publish(subject.clone(), big.clone().into())
        .await
        .unwrap()
        .await
        .unwrap();
    let refused = js.publish(subject.clone(), big.into()).await.unwrap().await;
    assert!(refused.is_err(), "a report past max_bytes was stored");
    assert_eq!(
        resources.progress.get_info().await.unwrap().state.messages,
        3
    );

    // Provisioning again changes nothing, and re-creates the missing consumer.
    let again = provision(client, names, &config).await.unwrap();
    let info = again.progress.get_info().await.unwrap();
    assert_eq!((info.state.messages, info.state.consumer_count), (3, 1));
}
