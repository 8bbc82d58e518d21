//! Idempotent creation of every bucket and stream of a namespace (ARCHITECTURE §3).

use crate::error::NatsError;
use async_nats::jetstream::{self, kv, stream};
use elk_protocol::names::{Names, PROGRESS_CONSUMER};
use std::time::Duration;

/// Provisioning knobs.
#[derive(Debug, Clone)]
pub struct ProvisionConfig {
    /// How long a TTL-expiry delete marker stays in the members/leases buckets (>= 1 s).
    pub delete_marker_ttl: Duration,
    /// How long unacknowledged progress reports are kept at most.
    pub progress_max_age: Duration,
}

impl Default for ProvisionConfig {
    fn default() -> Self {
        Self {
            delete_marker_ttl: Duration::from_secs(10),
            progress_max_age: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Handles on every NATS resource of one namespace.
#[derive(Clone)]
pub struct Resources {
    pub client: async_nats::Client,
    pub jetstream: jetstream::Context,
    pub names: Names,
    pub members: kv::Store,
    pub leases: kv::Store,
    pub jobs: kv::Store,
    pub partitions: kv::Store,
    pub assignments: kv::Store,
    pub fleet: kv::Store,
    pub progress: stream::Stream,
}

impl std::fmt::Debug for Resources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resources")
            .field("names", &self.names)
            .finish()
    }
}

/// Creates (or confirms) every bucket, the progress stream and its durable consumer. Safe to call
/// from every component at start-up, concurrently.
pub async fn provision(
    client: async_nats::Client,
    names: Names,
    config: &ProvisionConfig,
) -> Result<Resources, NatsError> {
    // Stay well below async-nats' 5,000 in-flight publish acks, where it deadlocks.
    let jetstream = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(5))
        .max_ack_inflight(4_096)
        .build(client.clone());
    let with_ttl = Some(config.delete_marker_ttl.max(Duration::from_secs(1)));
    let members = bucket(&jetstream, names.members_bucket(), with_ttl).await?;
    let leases = bucket(&jetstream, names.leases_bucket(), with_ttl).await?;
    let jobs = bucket(&jetstream, names.jobs_bucket(), None).await?;
    // Per-message TTL on: compaction purges partition keys with a marker that expires too.
    let partitions = bucket(&jetstream, names.partitions_bucket(), with_ttl).await?;
    let assignments = bucket(&jetstream, names.assignments_bucket(), None).await?;
    let fleet = bucket(&jetstream, names.fleet_bucket(), None).await?;
    let progress = progress_stream(&jetstream, &names, config).await?;
    Ok(Resources {
        client,
        jetstream,
        names,
        members,
        leases,
        jobs,
        partitions,
        assignments,
        fleet,
        progress,
    })
}

async fn bucket(
    jetstream: &jetstream::Context,
    name: String,
    limit_markers: Option<Duration>,
) -> Result<kv::Store, NatsError> {
    let config = kv::Config {
        bucket: name.clone(),
        history: 1,
        storage: stream::StorageType::File,
        limit_markers,
        ..Default::default()
    };
    jetstream
        .create_or_update_key_value(config)
        .await
        .map_err(|error| NatsError::provision(format!("bucket {name}"), error))
}

async fn progress_stream(
    jetstream: &jetstream::Context,
    names: &Names,
    config: &ProvisionConfig,
) -> Result<stream::Stream, NatsError> {
    let stream_name = names.progress_stream();
    // Interest retention: a report is dropped once the assigner's durable consumer acked it, so the
    // stream holds only unapplied progress. The durable consumer is created here, before any worker
    // can publish, so there is always interest.
    let stream = jetstream
        .get_or_create_stream(stream::Config {
            name: stream_name.clone(),
            subjects: vec![names.progress_subjects()],
            retention: stream::RetentionPolicy::Interest,
            storage: stream::StorageType::File,
            max_age: config.progress_max_age,
            ..Default::default()
        })
        .await
        .map_err(|error| NatsError::provision(format!("stream {stream_name}"), error))?;
    stream
        .get_or_create_consumer::<jetstream::consumer::pull::Config>(
            PROGRESS_CONSUMER,
            jetstream::consumer::pull::Config {
                durable_name: Some(PROGRESS_CONSUMER.to_owned()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(5),
                max_ack_pending: 20_000,
                ..Default::default()
            },
        )
        .await
        .map_err(|error| {
            NatsError::provision(
                format!("durable consumer {PROGRESS_CONSUMER} of stream {stream_name}"),
                error,
            )
        })?;
    Ok(stream)
}
