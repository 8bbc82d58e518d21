//! The work of the active replica: follow the members bucket (snapshot, then every change
//! including TTL-expiry delete markers), write the membership view on each debounced burst of
//! changes, keep the role leases in line with it, and serve leadership transfers
//! (`crate::transfer`).
//!
//! Runs until `stop` is cancelled; the caller cancels it and awaits this task before doing
//! anything else when the `election` lease is lost.

use crate::ElectionConfig;
use crate::ElectionError;
use crate::metrics::ElectionMetrics;
use crate::roles::reconcile_roles;
use crate::transfer;
use crate::view::{MemberTable, ViewWriter};
use async_nats::jetstream::kv::Operation;
use elk_nats::{NatsError, Resources, WatchSnapshot, honoured_ttl, watch_snapshot};
use elk_protocol::admin::ELECTION_SERVICE;
use elk_runtime::ReplicaError;
use elk_types::{Capacity, MemberId};
use futures::StreamExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

/// Delay before retrying a view write that failed with a transport error.
const VIEW_RETRY_DELAY: Duration = Duration::from_millis(200);

/// Coordinates membership until `stop` is cancelled. An error means this replica should step
/// down (another replica, or this one later, takes over with a fresh snapshot).
pub(crate) async fn run_active(
    resources: Resources,
    config: ElectionConfig,
    metrics: Arc<ElectionMetrics>,
    stop: CancellationToken,
) -> Result<(), ElectionError> {
    tokio::select! {
        () = stop.cancelled() => Ok(()),
        result = coordinate(&resources, &config, &metrics) => result,
    }
}

async fn coordinate(
    resources: &Resources,
    config: &ElectionConfig,
    metrics: &ElectionMetrics,
) -> Result<(), ElectionError> {
    // Transfer requests: only the active replica subscribes (a queue group, so exactly one
    // answers while the election fails over).
    let mut requests = resources
        .client
        .queue_subscribe(
            resources.names.admin_subject(ELECTION_SERVICE, ">"),
            "election".to_owned(),
        )
        .await
        .map_err(|error| NatsError::watch(ELECTION_SERVICE, error))?;
    let WatchSnapshot { entries, mut watch } = watch_snapshot(&resources.members).await?;
    let max_capacity = Capacity(config.election.max_member_capacity);
    let mut table = MemberTable::from_entries(max_capacity, entries.values());
    let mut lag = WatchLag::after_snapshot(resources).await;
    let mut writer = ViewWriter::load(resources).await?;
    // A new active replica cannot know what it missed: it always starts a new generation.
    let view = writer.publish(resources, table.members()).await?;
    tracing::info!(generation = %view.generation, members = view.members.len(), "active: membership view published");
    metrics.view_written(view);
    reconcile_roles(resources, view, metrics).await;

    let mut resync = tokio::time::interval_at(
        Instant::now() + config.election.role_resync,
        config.election.role_resync,
    );
    resync.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut flush_at: Option<Instant> = None;
    // Server time of the first member change of the burst the next view will include.
    let mut burst_started: Option<SystemTime> = None;
    loop {
        tokio::select! {
            event = watch.next() => {
                let entry = match event {
                    Some(Ok(entry)) => entry,
                    Some(Err(error)) => {
                        tracing::warn!(%error, "members watch error");
                        continue;
                    }
                    None => {
                        return Err(NatsError::watch(&resources.members.name, "watch ended").into());
                    }
                };
                lag.seen(entry.revision);
                let mut changed = table.apply(&entry.key, entry.operation, &entry.value);
                if changed && entry.operation == Operation::Put {
                    changed = table_after_ttl_check(resources, &mut table, &entry.key).await || changed;
                }
                if changed && flush_at.is_none() {
                    flush_at = Some(Instant::now() + config.election.view_debounce);
                }
                if changed && burst_started.is_none() {
                    burst_started = Some(server_time(entry.created.unix_timestamp_nanos()));
                }
            }
            () = sleep_until_some(flush_at) => {
                flush_at = None;
                match writer.publish(resources, table.members()).await {
                    Ok(view) => {
                        metrics.view_written(view);
                        if let Some(started) = burst_started.take() {
                            let latency = SystemTime::now().duration_since(started).unwrap_or_default();
                            metrics.view_latency.observe(latency.as_secs_f64());
                        }
                        reconcile_roles(resources, view, metrics).await;
                    }
                    Err(ElectionError::Replica(ReplicaError::Nats(error)))
                        if error.is_retryable() =>
                    {
                        tracing::warn!(%error, "cannot write membership view; retrying");
                        flush_at = Some(Instant::now() + VIEW_RETRY_DELAY);
                    }
                    Err(error) => return Err(error),
                }
            }
            Some(request) = requests.next() => {
                let reply = transfer::serve(resources, writer.current(), metrics, &request.payload).await;
                if let Some(reply_to) = request.reply {
                    elk_nats::send_admin_reply(&resources.client, reply_to, &reply).await;
                }
            }
            _ = resync.tick() => {
                if lag.stalled(resources).await {
                    // Its consumer may have died with a server: nothing would ever arrive again
                    // (nats_durability: a leader that left was never replaced). Start over from
                    // a fresh snapshot, and publish the view it gives.
                    tracing::warn!("members watch behind the bucket for two resyncs: re-reading every member");
                    let WatchSnapshot { entries, watch: fresh } = watch_snapshot(&resources.members).await?;
                    watch = fresh;
                    table = MemberTable::from_entries(max_capacity, entries.values());
                    lag = WatchLag::after_snapshot(resources).await;
                    flush_at = Some(Instant::now());
                }
                let silence = config.election.member_silence_limit;
                if table.sweep(Instant::now(), silence) && flush_at.is_none() {
                    flush_at = Some(Instant::now());
                }
                if let Some(view) = writer.current() {
                    reconcile_roles(resources, view, metrics).await;
                }
            }
        }
    }
}

/// Whether the members watch keeps up with the bucket: the stream's last sequence against the
/// newest revision the watch delivered, checked at every role resync (one stream info request).
struct WatchLag {
    seen: u64,
    /// Consecutive resyncs that found the stream ahead of the watch.
    behind: u32,
}

impl WatchLag {
    /// After a snapshot, which holds everything up to the stream's last sequence (deletes and
    /// expired markers included, which no live entry's revision shows).
    async fn after_snapshot(resources: &Resources) -> Self {
        let seen = resources
            .members
            .stream
            .get_info()
            .await
            .map_or(0, |info| info.state.last_sequence);
        Self { seen, behind: 0 }
    }

    fn seen(&mut self, revision: u64) {
        self.seen = self.seen.max(revision);
    }

    /// `true` once the stream was ahead at two resyncs in a row (one could be a change still in
    /// flight). A failed info request says nothing either way.
    async fn stalled(&mut self, resources: &Resources) -> bool {
        let Ok(info) = resources.members.stream.get_info().await else {
            return false;
        };
        if info.state.last_sequence > self.seen {
            self.behind += 1;
        } else {
            self.behind = 0;
        }
        self.behind >= 2
    }
}

/// Leaves `key`'s member out of the table when its key was written without a TTL (or with one
/// above [`elk_nats::MAX_LEASE_TTL`]): such a key never expires, so it would be a permanent member
/// (a fake one with a huge capacity would take every partition). Checked with a direct read when a
/// member joins or changes, not on renewals. Returns whether the member was dropped.
async fn table_after_ttl_check(resources: &Resources, table: &mut MemberTable, key: &str) -> bool {
    let Ok(id) = MemberId::new(key) else {
        return false;
    };
    match resources.member_keys.read_with_ttl(key).await {
        Ok(Some((entry, ttl))) if !entry.deleted && !honoured_ttl(ttl) => {
            tracing::warn!(member = %id, ?ttl, "member key written without a TTL (or with one above the maximum): left out of the view");
            table.drop_member(&id)
        }
        Ok(_) => false,
        Err(error) => {
            // Kept for now: the silence limit still drops a key that never expires.
            tracing::warn!(member = %id, %error, "cannot read the TTL of a member key");
            false
        }
    }
}

/// A server timestamp (Unix nanoseconds) as a `SystemTime`; before 1970 reads as 1970.
fn server_time(unix_nanos: i128) -> SystemTime {
    let nanos = u64::try_from(unix_nanos).unwrap_or(0);
    SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos)
}

/// Sleeps until `deadline`, or forever when there is none.
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
