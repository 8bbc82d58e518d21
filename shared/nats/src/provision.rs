//! Idempotent creation of every bucket and stream of a namespace (ARCHITECTURE §3), with the
//! configured number of replicas ([`crate::replicas`]).

use crate::error::NatsError;
use crate::replicas::ReplicaPlan;
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
    /// How many servers keep a copy of every bucket and of the progress stream (JetStream
    /// replicas: 1 on a single server, 3 on a cluster of 3). `Some(n)`: missing resources are
    /// created with `n` and existing ones changed to `n` — the services' `replicas` setting
    /// (`ELK_REPLICAS`). `None` (the default): existing resources keep their count and missing
    /// ones get 1 — what clients such as workers use, so they never undo the operator's choice.
    /// A count the servers cannot hold is refused with [`NatsError::Replicas`].
    pub replicas: Option<usize>,
}

impl Default for ProvisionConfig {
    fn default() -> Self {
        Self {
            delete_marker_ttl: Duration::from_secs(10),
            progress_max_age: Duration::from_secs(7 * 24 * 3600),
            replicas: None,
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

/// Creates (or confirms) every bucket, the progress stream and its durable consumer, and brings
/// their replica count to the configured one. Safe to call from every component at start-up,
/// concurrently.
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
    let plan = ReplicaPlan::new(&client, config.replicas);
    let with_ttl = Some(config.delete_marker_ttl.max(Duration::from_secs(1)));
    let bucket = |name, limit_markers| bucket(&jetstream, &plan, name, limit_markers);
    let members = bucket(names.members_bucket(), with_ttl).await?;
    let leases = bucket(names.leases_bucket(), with_ttl).await?;
    let jobs = bucket(names.jobs_bucket(), None).await?;
    // Per-message TTL on: compaction purges partition keys with a marker that expires too.
    let partitions = bucket(names.partitions_bucket(), with_ttl).await?;
    let assignments = bucket(names.assignments_bucket(), None).await?;
    let fleet = bucket(names.fleet_bucket(), None).await?;
    let progress = progress_stream(&jetstream, &plan, &names, config).await?;
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
    plan: &ReplicaPlan,
    name: String,
    limit_markers: Option<Duration>,
) -> Result<kv::Store, NatsError> {
    let resource = format!("bucket {name}");
    let replicas = plan
        .target(jetstream, &format!("KV_{name}"), &resource)
        .await?;
    let config = kv::Config {
        bucket: name,
        history: 1,
        storage: stream::StorageType::File,
        limit_markers,
        num_replicas: replicas,
        ..Default::default()
    };
    jetstream
        .create_or_update_key_value(config)
        .await
        .map_err(|error| NatsError::provision_replicated(&resource, replicas, error))
}

async fn progress_stream(
    jetstream: &jetstream::Context,
    plan: &ReplicaPlan,
    names: &Names,
    config: &ProvisionConfig,
) -> Result<stream::Stream, NatsError> {
    let stream_name = names.progress_stream();
    let resource = format!("stream {stream_name}");
    let replicas = plan.target(jetstream, &stream_name, &resource).await?;
    // Interest retention: a report is dropped once the assigner's durable consumer acked it, so the
    // stream holds only unapplied progress. The durable consumer is created here, before any worker
    // can publish, so there is always interest.
    let mut stream = jetstream
        .get_or_create_stream(stream::Config {
            name: stream_name.clone(),
            subjects: vec![names.progress_subjects()],
            retention: stream::RetentionPolicy::Interest,
            storage: stream::StorageType::File,
            max_age: config.progress_max_age,
            num_replicas: replicas,
            ..Default::default()
        })
        .await
        .map_err(|error| NatsError::provision_replicated(&resource, replicas, error))?;
    // An existing stream keeps its configuration except for the replica count, which follows the
    // setting; its consumer (replicas 0: the stream's) follows the stream.
    let existing = stream.cached_info().config.clone();
    if existing.num_replicas.max(1) != replicas {
        jetstream
            .update_stream(stream::Config {
                num_replicas: replicas,
                ..existing
            })
            .await
            .map_err(|error| NatsError::provision_replicated(&resource, replicas, error))?;
        stream = jetstream
            .get_stream(&stream_name)
            .await
            .map_err(|error| NatsError::provision(resource.clone(), error))?;
    }
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
