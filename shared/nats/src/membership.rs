//! TTL leases: a key created with a per-key TTL, renewed by compare-and-set, whose loss is
//! signalled so the holder can self-fence. Used for membership (`members/<id>`) and for the
//! election service's own active/standby lease (`leases/election`).
//!
//! ```text
//!  join ──create(ttl)──▶ Alive ──renew ok──▶ Alive
//!                          │ renew conflict (key gone or taken over)   ─▶ Lost
//!                          │ no successful renew before the fence deadline ─▶ Lost
//!                          │ leave() ─delete(expected rev)─▶ Left
//! ```
//!
//! The fence deadline is `send time of the last successful renewal + ttl × 5/6`: the server's TTL
//! clock starts no earlier than that send, so a member that stops at the deadline has stopped
//! before anyone else can see its key expire and take its work.

use crate::error::NatsError;
use crate::kv::{CasOutcome, cas_write};
use crate::provision::Resources;
use bytes::Bytes;
use elk_protocol::encode;
use elk_protocol::messages::MemberRecord;
use elk_types::{Incarnation, MemberId, Revision};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// Why joining failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(
        "member id '{id}' is already taken by a live member; pick another id or wait for its TTL"
    )]
    IdTaken { id: MemberId },
    #[error("lease key '{key}' is held by someone else")]
    KeyTaken { key: String },
    #[error(transparent)]
    Nats(#[from] NatsError),
}

/// A fresh incarnation number: nanoseconds since the Unix epoch at join time.
pub fn new_incarnation() -> Incarnation {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos() as u64)
        .unwrap_or(1);
    Incarnation(nanos)
}

struct LeaseState {
    revision: Revision,
    left: bool,
}

/// A live membership. Dropping it stops renewal (the key then expires); call
/// [`MemberLease::leave`] for a graceful leave.
pub struct MemberLease {
    key: String,
    store: async_nats::jetstream::kv::Store,
    incarnation: Incarnation,
    ttl: Duration,
    lost: CancellationToken,
    stop_renewing: CancellationToken,
    state: Arc<Mutex<LeaseState>>,
    resources: Resources,
}

impl std::fmt::Debug for MemberLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberLease")
            .field("key", &self.key)
            .field("incarnation", &self.incarnation)
            .finish()
    }
}

impl MemberLease {
    /// Creates the member key (absent or deleted only) with `ttl` and starts renewing every
    /// `ttl / 3`. `record.incarnation` is what identifies this life of the member.
    pub async fn join(
        resources: &Resources,
        id: MemberId,
        record: MemberRecord,
        ttl: Duration,
    ) -> Result<MemberLease, JoinError> {
        let value = Bytes::from(encode(&record));
        let key = id.to_string();
        Self::acquire(
            resources,
            resources.members.clone(),
            &key,
            record.incarnation,
            value,
            ttl,
        )
        .await
        .map_err(|error| match error {
            JoinError::KeyTaken { .. } => JoinError::IdTaken { id },
            other => other,
        })
    }

    /// Creates `key` in `store` with `value` and `ttl` if it is absent or deleted, and keeps
    /// renewing it; [`JoinError::KeyTaken`] if a live holder has it.
    pub async fn acquire(
        resources: &Resources,
        store: async_nats::jetstream::kv::Store,
        key: &str,
        incarnation: Incarnation,
        value: Bytes,
        ttl: Duration,
    ) -> Result<MemberLease, JoinError> {
        // The server's TTL is whole seconds (the header is truncated): fence on the same value.
        let ttl = Duration::from_secs(ttl.as_secs().max(1));
        let sent_at = Instant::now();
        let outcome = cas_write(
            &resources.jetstream,
            &store,
            key,
            value.clone(),
            None,
            Some(ttl),
        )
        .await?;
        let CasOutcome::Written(revision) = outcome else {
            return Err(JoinError::KeyTaken {
                key: key.to_owned(),
            });
        };
        let lease = MemberLease {
            key: key.to_owned(),
            store,
            incarnation,
            ttl,
            lost: CancellationToken::new(),
            stop_renewing: CancellationToken::new(),
            state: Arc::new(Mutex::new(LeaseState {
                revision,
                left: false,
            })),
            resources: resources.clone(),
        };
        lease.spawn_renewal(value, sent_at);
        Ok(lease)
    }

    /// The leased key.
    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn incarnation(&self) -> Incarnation {
        self.incarnation
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Cancelled when this incarnation lost its membership: stop all work at once.
    pub fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    fn spawn_renewal(&self, value: Bytes, first_sent_at: Instant) {
        let resources = self.resources.clone();
        let store = self.store.clone();
        let key = self.key.clone();
        let ttl = self.ttl;
        let lost = self.lost.clone();
        let stop = self.stop_renewing.clone();
        let state = self.state.clone();
        tokio::spawn(async move {
            let fence_after = ttl * 5 / 6;
            let mut fence_deadline = first_sent_at + fence_after;
            let mut next_renewal = first_sent_at + ttl / 3;
            loop {
                let wake = next_renewal.min(fence_deadline);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep_until(wake.into()) => {}
                }
                if Instant::now() >= fence_deadline {
                    tracing::warn!(member = %key, "membership not renewed in time: self-fencing");
                    lost.cancel();
                    return;
                }
                let mut guard = state.lock().await;
                if guard.left {
                    return;
                }
                let sent_at = Instant::now();
                let attempt = tokio::time::timeout(
                    fence_deadline.saturating_duration_since(sent_at),
                    cas_write(
                        &resources.jetstream,
                        &store,
                        &key,
                        value.clone(),
                        Some(guard.revision),
                        Some(ttl),
                    ),
                )
                .await;
                match attempt {
                    Ok(Ok(CasOutcome::Written(revision))) => {
                        guard.revision = revision;
                        fence_deadline = sent_at + fence_after;
                        next_renewal = sent_at + ttl / 3;
                    }
                    Ok(Ok(CasOutcome::Conflict { .. })) => {
                        tracing::warn!(member = %key, "membership key lost (expired or taken over)");
                        lost.cancel();
                        return;
                    }
                    Ok(Err(error)) => {
                        tracing::debug!(member = %key, %error, "renewal failed; retrying");
                        next_renewal = Instant::now() + Duration::from_millis(100);
                    }
                    Err(_) => {
                        next_renewal = Instant::now();
                    }
                }
            }
        });
    }

    /// Graceful leave: stop renewing and delete the key (if it is still ours).
    pub async fn leave(self) -> Result<(), NatsError> {
        self.stop_renewing.cancel();
        let mut guard = self.state.lock().await;
        guard.left = true;
        let revision = guard.revision;
        drop(guard);
        if self.lost.is_cancelled() {
            return Ok(());
        }
        self.store
            .delete_expect_revision(&self.key, Some(revision.get()))
            .await
            .map_err(|e| NatsError::Kv {
                operation: "leave",
                bucket: self.store.name.clone(),
                key: self.key.clone(),
                message: e.to_string(),
            })
    }
}

impl Drop for MemberLease {
    fn drop(&mut self) {
        self.stop_renewing.cancel();
    }
}

/// How a service's work under one membership ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MembershipExit {
    /// The service is stopping: leave gracefully.
    Shutdown,
    /// The member key was lost (the replica self-fenced): re-join as a new incarnation.
    Lost,
}

/// A control-plane service replica's membership: joins with capacity 0 and no jobs, re-joins
/// with a new incarnation after a loss, and leaves on shutdown.
#[derive(Debug, Clone, Copy)]
pub struct ServiceMember<'a> {
    pub resources: &'a Resources,
    pub id: &'a MemberId,
    pub role: elk_protocol::messages::MemberRole,
    pub ttl: Duration,
    /// Pause between failed re-join attempts.
    pub retry: Duration,
    /// Ends re-join attempts.
    pub stop: &'a CancellationToken,
}

impl ServiceMember<'_> {
    /// Joins with a new incarnation.
    pub async fn join(&self) -> Result<MemberLease, JoinError> {
        let record = MemberRecord {
            schema: elk_protocol::SCHEMA_VERSION,
            role: self.role,
            incarnation: new_incarnation(),
            capacity: elk_types::Capacity(0),
            jobs: Vec::new(),
            labels: Default::default(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        let lease = MemberLease::join(self.resources, self.id.clone(), record, self.ttl).await?;
        tracing::info!(member = %self.id, role = ?self.role, incarnation = %lease.incarnation(), "joined");
        Ok(lease)
    }

    /// Re-joins after the member key was lost, retrying every `retry` until it works; `None` if
    /// `stop` fires first.
    pub async fn rejoin(&self) -> Option<MemberLease> {
        loop {
            match self.join().await {
                Ok(lease) => return Some(lease),
                Err(error) => {
                    tracing::warn!(member = %self.id, %error, "cannot re-join membership; retrying");
                }
            }
            tokio::select! {
                () = self.stop.cancelled() => return None,
                () = tokio::time::sleep(self.retry) => {}
            }
        }
    }

    /// Acts on how the work under `membership` ended: on [`MembershipExit::Shutdown`] leaves and
    /// returns `None`; on [`MembershipExit::Lost`] re-joins and returns the new membership
    /// (`None` if `stop` fired first).
    pub async fn next(&self, membership: MemberLease, exit: MembershipExit) -> Option<MemberLease> {
        match exit {
            MembershipExit::Shutdown => {
                if let Err(error) = membership.leave().await {
                    tracing::warn!(%error, "cannot leave membership; the key will expire");
                }
                None
            }
            MembershipExit::Lost => {
                drop(membership);
                self.rejoin().await
            }
        }
    }
}
