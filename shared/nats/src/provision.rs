//! The NATS resources of a namespace: [`provision`] creates or updates every bucket, the progress
//! stream and its durable consumer (an admin identity's job: `elkctl provision`); [`bind`] only
//! looks them up (what a service identity may do); [`open`] binds and provisions only what is
//! missing, so a deployment without auth still starts from an empty server. Every resource has
//! the configured number of replicas ([`crate::replicas`]).

use crate::error::NatsError;
use crate::keys::KeyBucket;
use crate::replicas::ReplicaPlan;
use async_nats::jetstream::{self, kv, stream};
use elk_protocol::names::{Names, PROGRESS_CONSUMER};
use std::time::Duration;

/// How many consumers the stream of every bucket accepts. Every worker
/// watches its own assignment key through a consumer of its own, and nats-server 2.15 limits
/// every stream that does not set a limit of its own to 1,000 consumers (it substitutes that
/// default for "unlimited", -1): without an explicit limit the thousandth worker could not start.
/// 100,000 leaves room for ten times the largest fleet measured (`docs/benchmarks.md`, scale).
pub const STREAM_MAX_CONSUMERS: i32 = 100_000;

/// The default size bound of the progress stream: 1 GiB, about five million reports, i.e. hours
/// of a large fleet's reports while no assigner applies them (applied ones are trimmed).
pub const PROGRESS_MAX_BYTES: i64 = 1 << 30;

/// Provisioning knobs.
#[derive(Debug, Clone)]
pub struct ProvisionConfig {
    /// How long a TTL-expiry delete marker stays in the members/leases buckets (>= 1 s).
    pub delete_marker_ttl: Duration,
    /// How long an unapplied progress report is kept at most (the progress stream's `max_age`).
    /// A report removed by age before the assigner applied it is counted by the assigner
    /// (`elk_assigner_progress_lost_total`).
    pub progress_max_age: Duration,
    /// The progress stream's size bound in bytes (`max_bytes`, default [`PROGRESS_MAX_BYTES`]).
    /// When it is full, JetStream refuses new reports (the workers retry them) rather than
    /// dropping stored ones (`DiscardPolicy::New`).
    pub progress_max_bytes: i64,
    /// How many servers keep a copy of every bucket and of the progress stream (JetStream
    /// replicas: 1 on a single server, 3 on a cluster of 3). `Some(n)`: missing resources are
    /// created with `n` and existing ones changed to `n` — the services' `replicas` setting
    /// (`ELK_REPLICAS`). `None` (the default): existing resources keep their count and missing
    /// ones get 1 — what clients such as workers use, so they never undo the operator's choice.
    /// A count the servers cannot hold is refused with [`NatsError::Replicas`].
    pub replicas: Option<usize>,
    /// How long [`open`] keeps trying again after a failure that may pass by itself (a request
    /// timing out while the link or the server is down, a server restarting) before it returns
    /// that error. Refusals (not provisioned for this identity, replicas the servers cannot hold)
    /// return at once.
    pub patience: Duration,
    /// Revisions kept per key of the assignments bucket (1–64; default 1). More keeps superseded
    /// records readable for a while: the test suite's ownership auditor provisions 64, so that a
    /// record its watch had not delivered yet when the next one replaced it is still there.
    pub assignments_history: i64,
}

impl Default for ProvisionConfig {
    fn default() -> Self {
        Self {
            delete_marker_ttl: Duration::from_secs(10),
            progress_max_age: Duration::from_secs(7 * 24 * 3600),
            progress_max_bytes: PROGRESS_MAX_BYTES,
            replicas: None,
            patience: Duration::from_secs(60),
            assignments_history: 1,
        }
    }
}

/// The first pause between two attempts of [`open`]; it doubles up to [`MAX_RETRY_PAUSE`].
const FIRST_RETRY_PAUSE: Duration = Duration::from_millis(200);
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(2);

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

impl Resources {
    /// Whether every bucket and the progress stream have `replicas` copies (as of binding them).
    fn replicated(&self, replicas: usize) -> bool {
        let buckets = [
            &self.members,
            &self.leases,
            &self.jobs,
            &self.partitions,
            &self.assignments,
            &self.fleet,
        ];
        buckets
            .iter()
            .map(|bucket| &bucket.stream)
            .chain([&self.progress])
            .all(|stream| stream.cached_info().config.num_replicas.max(1) == replicas)
    }
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
    let jetstream = context(&client);
    let plan = ReplicaPlan::new(&client, config.replicas);
    let with_ttl = Some(config.delete_marker_ttl.max(Duration::from_secs(1)));
    let bucket =
        |name, limit_markers, history| bucket(&jetstream, &plan, name, limit_markers, history);
    let members = bucket(names.members_bucket(), with_ttl, 1).await?;
    let leases = bucket(names.leases_bucket(), with_ttl, 1).await?;
    let jobs = bucket(names.jobs_bucket(), None, 1).await?;
    // Per-message TTL on: compaction purges partition keys with a marker that expires too.
    let partitions = bucket(names.partitions_bucket(), with_ttl, 1).await?;
    let history = config.assignments_history.clamp(1, 64);
    let assignments = bucket(names.assignments_bucket(), None, history).await?;
    let fleet = bucket(names.fleet_bucket(), None, 1).await?;
    let progress = progress_stream(&jetstream, &plan, &names, config).await?;
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

/// [`bind`], and if something is missing or a replica count differs from `config.replicas`,
/// [`provision`] (which needs the rights to create and update streams; with a restricted identity
/// a missing resource fails naming it). Existing resources otherwise keep their configuration:
/// updating it is `elkctl provision`'s job.
///
/// A retryable failure starts it over, for up to [`ProvisionConfig::patience`]: a service started
/// while its link to NATS is cut (or the server restarts) waits instead of exiting (found by
/// `elk-bench chaos`: a scaler whose link was cut during its start-up exited 1 after one request
/// timed out).
pub async fn open(
    client: async_nats::Client,
    names: Names,
    config: &ProvisionConfig,
) -> Result<Resources, NatsError> {
    let deadline = tokio::time::Instant::now() + config.patience;
    let mut pause = FIRST_RETRY_PAUSE;
    loop {
        match Box::pin(open_once(client.clone(), names.clone(), config)).await {
            Err(error) if error.is_retryable() && tokio::time::Instant::now() < deadline => {
                tracing::warn!(%error, "opening the namespace failed; trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_RETRY_PAUSE);
            }
            outcome => return outcome,
        }
    }
}

async fn open_once(
    client: async_nats::Client,
    names: Names,
    config: &ProvisionConfig,
) -> Result<Resources, NatsError> {
    // Boxed, as the calls of `provision` below: these futures are large, and unoptimised
    // builds keep a copy of each in this function's frame while polling it.
    match Box::pin(bind(client.clone(), names.clone())).await {
        Ok(resources) => {
            match config.replicas {
                Some(wanted) if !resources.replicated(wanted) => {
                    tracing::info!(wanted, "changing the namespace's replica count");
                    Box::pin(provision(client, names, config)).await.inspect_err(|error| {
                    tracing::warn!(
                        %error,
                        "cannot change the replica count (with ELK's permission model only an \
                         admin identity may: `elkctl provision --replicas`)"
                    );
                })
                }
                _ => Ok(resources),
            }
        }
        Err(NatsError::NotProvisioned { resource }) => {
            tracing::info!(%resource, "namespace not provisioned yet: provisioning it");
            Box::pin(provision(client, names, config))
                .await
                .map_err(|error| {
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
    plan: &ReplicaPlan,
    name: String,
    limit_markers: Option<Duration>,
    history: i64,
) -> Result<kv::Store, NatsError> {
    let resource = format!("bucket {name}");
    let replicas = plan
        .target(jetstream, &format!("KV_{name}"), &resource)
        .await?;
    // The bucket's stream is written directly, rather than through
    // `create_or_update_key_value`, whose stream config cannot carry a consumer limit: every
    // provisioning (`elkctl provision`, a service raising the replica count) would reset the limit
    // to the server's default.
    jetstream
        .create_or_update_stream(kv_stream_config(&name, limit_markers, history, replicas))
        .await
        .map_err(|error| NatsError::provision_replicated(&resource, replicas, error))?;
    jetstream
        .get_key_value(name.as_str())
        .await
        .map_err(|error| NatsError::provision_replicated(&resource, replicas, error))
}

/// The stream behind KV bucket `name`: what async-nats' `create_or_update_key_value` writes for
/// `history`, file storage and the given `limit_markers` (rollups, direct gets, discard new,
/// no deletes of the stream's messages, per-message TTLs when markers are on) with `replicas`
/// copies, plus the consumer limit [`STREAM_MAX_CONSUMERS`].
fn kv_stream_config(
    name: &str,
    limit_markers: Option<Duration>,
    history: i64,
    replicas: usize,
) -> stream::Config {
    stream::Config {
        name: format!("KV_{name}"),
        description: Some(String::new()),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: history,
        storage: stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        deny_purge: false,
        allow_direct: true,
        num_replicas: replicas,
        discard: stream::DiscardPolicy::New,
        allow_message_ttl: limit_markers.is_some(),
        subject_delete_marker_ttl: limit_markers,
        max_consumers: STREAM_MAX_CONSUMERS,
        ..Default::default()
    }
}

/// The progress stream: limits retention, so a report stays stored whether or not the durable
/// consumer exists (interest retention discarded every report published while it was missing),
/// bounded by `max_bytes` with new reports refused when full (the workers' SDK retries them:
/// back-pressure, never a silent drop) and by `max_age`. Applied reports are removed by the
/// assigner leader, which purges the stream below the lowest ack floor of its consumers
/// (`docs/decisions/progress-retention.md`).
fn progress_stream_config(
    names: &Names,
    config: &ProvisionConfig,
    replicas: usize,
) -> stream::Config {
    stream::Config {
        name: names.progress_stream(),
        subjects: vec![names.progress_subjects()],
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::New,
        max_bytes: config.progress_max_bytes,
        storage: stream::StorageType::File,
        max_age: config.progress_max_age,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// The assigner's durable consumer of the progress stream, as provisioning creates it and as the
/// assigner leader re-creates it when it disappears: every report from the stream's first one
/// (everything below it was applied and trimmed), explicit acks after the round's write.
pub fn progress_consumer_config() -> jetstream::consumer::pull::Config {
    jetstream::consumer::pull::Config {
        durable_name: Some(PROGRESS_CONSUMER.to_owned()),
        deliver_policy: jetstream::consumer::DeliverPolicy::All,
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(5),
        max_ack_pending: 20_000,
        ..Default::default()
    }
}

/// Whether an existing progress stream's retention, discard policy, size and age bounds or
/// replica count differ from `wanted`.
fn progress_stream_differs(existing: &stream::Config, wanted: &stream::Config) -> bool {
    existing.retention != wanted.retention
        || existing.discard != wanted.discard
        || existing.max_bytes != wanted.max_bytes
        || existing.max_age != wanted.max_age
        || existing.num_replicas.max(1) != wanted.num_replicas
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
    let wanted = progress_stream_config(names, config, replicas);
    let mut stream = jetstream
        .get_or_create_stream(wanted.clone())
        .await
        .map_err(|error| NatsError::provision_replicated(&resource, replicas, error))?;
    // An existing stream gets the wanted retention, bounds and replica count, its other settings
    // kept; its consumer (replicas 0: the stream's) follows the stream. A stream of an earlier
    // version had interest retention: nats-server (2.10 and later) changes it to limits in
    // place, keeping its reports. A server that refuses keeps it (the assigner warns).
    let existing = stream.cached_info().config.clone();
    if progress_stream_differs(&existing, &wanted) {
        let updated = stream::Config {
            retention: wanted.retention,
            discard: wanted.discard,
            max_bytes: wanted.max_bytes,
            max_age: wanted.max_age,
            num_replicas: replicas,
            ..existing.clone()
        };
        if let Err(error) = jetstream.update_stream(updated).await {
            if existing.retention == wanted.retention {
                return Err(NatsError::provision_replicated(&resource, replicas, error));
            }
            tracing::warn!(
                %error,
                retention = ?existing.retention,
                "the server refuses to change the progress stream's retention: it keeps it \
                 (reports published while the assigner's consumer is missing may be discarded)"
            );
            if existing.num_replicas.max(1) != replicas {
                jetstream
                    .update_stream(stream::Config {
                        num_replicas: replicas,
                        ..existing
                    })
                    .await
                    .map_err(|error| NatsError::provision_replicated(&resource, replicas, error))?;
            }
        }
        stream = jetstream
            .get_stream(&stream_name)
            .await
            .map_err(|error| NatsError::provision(resource.clone(), error))?;
    }
    stream
        .get_or_create_consumer(PROGRESS_CONSUMER, progress_consumer_config())
        .await
        .map_err(|error| {
            NatsError::provision(
                format!("durable consumer {PROGRESS_CONSUMER} of stream {stream_name}"),
                error,
            )
        })?;
    Ok(stream)
}
