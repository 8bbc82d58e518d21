//! The NATS resources of a namespace: [`provision`] creates or updates every bucket, the progress
//! stream and its durable consumer (an admin identity's job: `elkctl provision`); [`bind`] only
//! looks them up (what a service identity may do); [`open`] binds and provisions only what is
//! missing, so a deployment without auth still starts from an empty server.

use crate::error::NatsError;
use crate::keys::KeyBucket;
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
    /// `members` for key-level use: a replica's own member key ([`crate::MemberLease`]).
    pub member_keys: KeyBucket,
    /// `leases` for key-level use: the election's own lease.
    pub lease_keys: KeyBucket,
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
    let jetstream = context(&client);
    let with_ttl = Some(config.delete_marker_ttl.max(Duration::from_secs(1)));
    let members = bucket(&jetstream, names.members_bucket(), with_ttl).await?;
    let leases = bucket(&jetstream, names.leases_bucket(), with_ttl).await?;
    let jobs = bucket(&jetstream, names.jobs_bucket(), None).await?;
    // Per-message TTL on: compaction purges partition keys with a marker that expires too.
    let partitions = bucket(&jetstream, names.partitions_bucket(), with_ttl).await?;
    let assignments = bucket(&jetstream, names.assignments_bucket(), None).await?;
    let fleet = bucket(&jetstream, names.fleet_bucket(), None).await?;
    let progress = progress_stream(&jetstream, &names, config).await?;
    let buckets = [members, leases, jobs, partitions, assignments, fleet];
    assemble(client, jetstream, names, buckets, progress).await
}

/// [`Resources`] from the six bucket handles (in [`Resources`]' order) and the progress stream.
async fn assemble(
    client: async_nats::Client,
    jetstream: jetstream::Context,
    names: Names,
    buckets: [kv::Store; 6],
    progress: stream::Stream,
) -> Result<Resources, NatsError> {
    let [members, leases, jobs, partitions, assignments, fleet] = buckets;
    let member_keys = KeyBucket::open(&jetstream, names.members_bucket()).await?;
    let lease_keys = KeyBucket::open(&jetstream, names.leases_bucket()).await?;
    Ok(Resources {
        client,
        jetstream,
        names,
        member_keys,
        lease_keys,
        members,
        leases,
        jobs,
        partitions,
        assignments,
        fleet,
        progress,
    })
}

/// Looks up every bucket and the progress stream without creating or changing anything (stream
/// info requests only); [`NatsError::NotProvisioned`] names the first one missing.
pub async fn bind(client: async_nats::Client, names: Names) -> Result<Resources, NatsError> {
    let jetstream = context(&client);
    let members = existing_bucket(&jetstream, names.members_bucket()).await?;
    let leases = existing_bucket(&jetstream, names.leases_bucket()).await?;
    let jobs = existing_bucket(&jetstream, names.jobs_bucket()).await?;
    let partitions = existing_bucket(&jetstream, names.partitions_bucket()).await?;
    let assignments = existing_bucket(&jetstream, names.assignments_bucket()).await?;
    let fleet = existing_bucket(&jetstream, names.fleet_bucket()).await?;
    let stream_name = names.progress_stream();
    let progress = jetstream.get_stream(&stream_name).await.map_err(|error| {
        missing_or(format!("stream {stream_name}"), error, |resource, error| {
            NatsError::provision(resource, error)
        })
    })?;
    let buckets = [members, leases, jobs, partitions, assignments, fleet];
    assemble(client, jetstream, names, buckets, progress).await
}

/// [`bind`], and if something is missing, [`provision`] (which needs the rights to create
/// streams; with a restricted identity it then fails, naming what is missing). Existing resources
/// keep their configuration: updating it is `elkctl provision`'s job.
pub async fn open(
    client: async_nats::Client,
    names: Names,
    config: &ProvisionConfig,
) -> Result<Resources, NatsError> {
    match bind(client.clone(), names.clone()).await {
        Err(NatsError::NotProvisioned { resource }) => {
            tracing::info!(%resource, "namespace not provisioned yet: provisioning it");
            provision(client, names, config).await.map_err(|error| {
                tracing::warn!(%resource, %error, "cannot provision the namespace");
                match error.kind() {
                    crate::NatsErrorKind::Unavailable => NatsError::NotProvisioned { resource },
                    _ => error,
                }
            })
        }
        other => other,
    }
}

/// What a member that may only touch its own keys (a worker) uses: its key in `members`, its key
/// in `assignments` and its progress subject — no bucket-wide request at all.
#[derive(Clone)]
pub struct MemberResources {
    pub client: async_nats::Client,
    pub jetstream: jetstream::Context,
    pub names: Names,
    pub members: KeyBucket,
    pub assignments: KeyBucket,
}

impl std::fmt::Debug for MemberResources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberResources")
            .field("names", &self.names)
            .finish()
    }
}

/// The resources member `id` uses, checked to exist by reading its own keys. A namespace that is
/// not provisioned is provisioned when this identity may ([`provision`]: a server without auth),
/// else [`NatsError::NotProvisioned`].
pub async fn open_member(
    client: async_nats::Client,
    names: Names,
    id: &elk_types::MemberId,
    config: &ProvisionConfig,
) -> Result<MemberResources, NatsError> {
    let jetstream = context(&client);
    let members = KeyBucket::open(&jetstream, names.members_bucket()).await?;
    let assignments = KeyBucket::open(&jetstream, names.assignments_bucket()).await?;
    let check = async {
        members.read(id.as_str()).await?;
        assignments.read(id.as_str()).await
    };
    if let Err(NatsError::NotProvisioned { resource }) = check.await {
        tracing::info!(%resource, "namespace not provisioned yet: provisioning it");
        provision(client.clone(), names.clone(), config)
            .await
            .map_err(|error| {
                tracing::warn!(%resource, %error, "cannot provision the namespace");
                NatsError::NotProvisioned { resource }
            })?;
    }
    Ok(MemberResources {
        client,
        jetstream,
        names,
        members,
        assignments,
    })
}

fn context(client: &async_nats::Client) -> jetstream::Context {
    // Stay well below async-nats' 5,000 in-flight publish acks, where it deadlocks.
    jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(5))
        .max_ack_inflight(4_096)
        .build(client.clone())
}

async fn existing_bucket(
    jetstream: &jetstream::Context,
    name: String,
) -> Result<kv::Store, NatsError> {
    jetstream.get_key_value(&name).await.map_err(|error| {
        missing_or(format!("bucket {name}"), error, |resource, error| {
            NatsError::provision(resource, error)
        })
    })
}

/// `NotProvisioned` if `error` says the stream does not exist (JetStream error 10059), else
/// `other(resource, error)`.
fn missing_or<E: std::error::Error + Send + Sync + 'static>(
    resource: String,
    error: E,
    other: impl FnOnce(String, E) -> NatsError,
) -> NatsError {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(current) = next {
        if let Some(api) = current.downcast_ref::<async_nats::jetstream::Error>()
            && api.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND
        {
            return NatsError::NotProvisioned { resource };
        }
        if current.to_string().contains("stream not found") {
            return NatsError::NotProvisioned { resource };
        }
        next = current.source();
    }
    other(resource, error)
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
