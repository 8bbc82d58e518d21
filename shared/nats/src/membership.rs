//! TTL leases: a key created with a per-key TTL, renewed by compare-and-set, whose loss is
//! signalled so the holder can self-fence. Used for membership (`members/<id>`) and for the
//! election service's own active/standby lease (`leases/election`).
//!
//! ```text
//!  join ──create(ttl)──▶ Alive ──renew ok──▶ Alive
//!                          │ renew conflict, key still holds our value ─▶ Alive (adopt revision)
//!                          │ renew conflict (key gone or taken over)   ─▶ Lost
//!                          │ no successful renew before the fence deadline ─▶ Lost
//!                          │ leave() ─delete(expected rev)─▶ Left
//! ```
//!
//! The fence deadline is `send time of the last successful renewal + ttl × 5/6`: the server's TTL
//! clock starts no earlier than that send, so a member that stops at the deadline has stopped
//! before anyone else can see its key expire and take its work. The deadline is published in a
//! [`LeaseDeadline`] (one atomic), so code that cannot wait for the loss signal — a thread busy in
//! user code, another runtime — can still check it against the monotonic clock.
//!
//! **A lost ack is not a lost lease.** A renewal whose publish was stored but whose ack never
//! arrived (the attempt timed out) leaves the key one revision ahead of what the lease expects; the
//! retry then fails with *wrong last sequence* (JetStream error 10071). Before fencing, the lease
//! re-reads the key: if it still holds exactly our value (same bytes, so same incarnation), the
//! write was ours and the lease adopts its revision and renews again at once. Only a key that is
//! gone or holds another value means the lease is lost.

use crate::error::{NatsError, Retryable};
use crate::keys::{KeyBucket, honoured_ttl};
use crate::kv::{CasOutcome, cas_write};
use crate::status::{RenewalObserver, ReplicaStatus};
use bytes::Bytes;
use elk_protocol::encode;
use elk_protocol::messages::MemberRecord;
use elk_types::{Incarnation, MemberId, Revision};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
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

/// A live holder goes away by itself (its key expires or is deleted), so joining again later may
/// succeed; a transport failure is retryable as its [`NatsError`] says.
impl crate::Retryable for JoinError {
    fn is_retryable(&self) -> bool {
        match self {
            JoinError::IdTaken { .. } | JoinError::KeyTaken { .. } => true,
            JoinError::Nats(error) => error.is_retryable(),
        }
    }
}

/// A fresh incarnation number: nanoseconds since the Unix epoch at join time.
pub fn new_incarnation() -> Incarnation {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos() as u64)
        .unwrap_or(1);
    Incarnation(nanos)
}

/// Until when a lease may be acted on: the fence deadline of its last successful renewal, readable
/// from any thread without locking. It only moves forward while the lease renews, and drops to
/// "expired" for good once the lease is lost or left.
///
/// The renewal task keeps it current; readers compare it with [`Instant::now`], so the check works
/// even when no task (timer, loss signal) could run since the deadline passed.
#[derive(Debug, Clone)]
pub struct LeaseDeadline {
    /// Nanoseconds after [`clock_base`] plus one; `0` means expired.
    encoded: Arc<AtomicU64>,
}

/// The origin of the encoded deadlines: the first use in this process.
fn clock_base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

impl LeaseDeadline {
    /// A deadline at `until`.
    pub fn new(until: Instant) -> Self {
        Self {
            encoded: Arc::new(AtomicU64::new(Self::encode(until))),
        }
    }

    /// A deadline that has already passed (for work that must not start).
    pub fn expired() -> Self {
        Self {
            encoded: Arc::new(AtomicU64::new(0)),
        }
    }

    fn encode(until: Instant) -> u64 {
        // An instant before the base encodes as the base itself, which is already in the past
        // whenever it is read: such a deadline reads as passed either way.
        let nanos = until.saturating_duration_since(clock_base()).as_nanos();
        u64::try_from(nanos).unwrap_or(u64::MAX - 1) + 1
    }

    /// Moves the deadline forward to `until`; an expired deadline stays expired (a renewal that
    /// races with the loss never resurrects the lease).
    fn extend_to(&self, until: Instant) {
        let encoded = Self::encode(until);
        let _ = self
            .encoded
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| {
                (current != 0).then_some(encoded.max(current))
            });
    }

    /// Marks the lease lost: the deadline has passed for good.
    pub fn expire(&self) {
        self.encoded.store(0, Ordering::Release);
    }

    /// The deadline, or `None` once the lease is lost or left.
    pub fn valid_until(&self) -> Option<Instant> {
        match self.encoded.load(Ordering::Acquire) {
            0 => None,
            encoded => Some(clock_base() + Duration::from_nanos(encoded - 1)),
        }
    }

    /// Whether the deadline is still ahead (checked against the monotonic clock now).
    pub fn is_valid(&self) -> bool {
        self.valid_until()
            .is_some_and(|until| Instant::now() < until)
    }
}

struct LeaseState {
    revision: Revision,
    left: bool,
}

/// A live membership. Dropping it stops renewal (the key then expires); call
/// [`MemberLease::leave`] for a graceful leave.
pub struct MemberLease {
    key: String,
    bucket: KeyBucket,
    incarnation: Incarnation,
    ttl: Duration,
    lost: CancellationToken,
    deadline: LeaseDeadline,
    stop_renewing: CancellationToken,
    state: Arc<Mutex<LeaseState>>,
    /// Told the round trip of every successful renewal (metrics), once set.
    renewal_observer: Arc<std::sync::OnceLock<RenewalObserver>>,
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
    /// Creates the member key `id` in `members` (absent or deleted only) with `ttl` and starts
    /// renewing every `ttl / 3`. `record.incarnation` is what identifies this life of the member.
    pub async fn join(
        members: &KeyBucket,
        id: MemberId,
        record: MemberRecord,
        ttl: Duration,
    ) -> Result<MemberLease, JoinError> {
        let value = Bytes::from(encode(&record));
        let key = id.to_string();
        Self::acquire(members, &key, record.incarnation, value, ttl)
            .await
            .map_err(|error| match error {
                JoinError::KeyTaken { .. } => JoinError::IdTaken { id },
                other => other,
            })
    }

    /// Creates `key` in `bucket` with `value` and `ttl` if it is absent or deleted (or holds a key
    /// nobody honours, see [`MemberLease::take_over_unhonoured`]), and keeps renewing it;
    /// [`JoinError::KeyTaken`] if a live holder has it.
    pub async fn acquire(
        bucket: &KeyBucket,
        key: &str,
        incarnation: Incarnation,
        value: Bytes,
        ttl: Duration,
    ) -> Result<MemberLease, JoinError> {
        // The server's TTL is whole seconds (the header is truncated): fence on the same value.
        let ttl = Duration::from_secs(ttl.as_secs().max(1));
        let sent_at = Instant::now();
        let outcome = cas_write(
            bucket.jetstream(),
            bucket,
            key,
            value.clone(),
            None,
            Some(ttl),
        )
        .await?;
        let revision = match outcome {
            CasOutcome::Written(revision) => revision,
            CasOutcome::Conflict { .. } => {
                Self::take_over_unhonoured(bucket, key, value.clone(), ttl).await?
            }
        };
        let lease = MemberLease {
            key: key.to_owned(),
            bucket: bucket.clone(),
            incarnation,
            ttl,
            lost: CancellationToken::new(),
            deadline: LeaseDeadline::new(sent_at + fence_after(ttl)),
            stop_renewing: CancellationToken::new(),
            state: Arc::new(Mutex::new(LeaseState {
                revision,
                left: false,
            })),
            renewal_observer: Arc::default(),
        };
        lease.spawn_renewal(value, sent_at);
        Ok(lease)
    }

    /// Overwrites `key` when what it holds is not a lease anyone may honour: written without a
    /// TTL or with one above [`crate::MAX_LEASE_TTL`] (no ELK component writes such a key, and it would
    /// never expire: a permanent fake member, a frozen election). A key with a proper TTL is a live
    /// holder's: [`JoinError::KeyTaken`].
    async fn take_over_unhonoured(
        bucket: &KeyBucket,
        key: &str,
        value: Bytes,
        ttl: Duration,
    ) -> Result<Revision, JoinError> {
        let taken = || JoinError::KeyTaken {
            key: key.to_owned(),
        };
        let Some((entry, stored_ttl)) = bucket.read_with_ttl(key).await? else {
            return Err(taken());
        };
        if entry.deleted || honoured_ttl(stored_ttl) {
            return Err(taken());
        }
        tracing::warn!(
            bucket = bucket.name(),
            %key,
            ttl = ?stored_ttl,
            "lease key written without a TTL (or with one above the maximum): taking it over"
        );
        let jetstream = bucket.jetstream();
        let outcome = cas_write(
            jetstream,
            bucket,
            key,
            value,
            Some(entry.revision),
            Some(ttl),
        );
        match outcome.await? {
            CasOutcome::Written(revision) => Ok(revision),
            CasOutcome::Conflict { .. } => Err(taken()),
        }
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

    /// The fence deadline of this lease, kept current by the renewal task and expired once the
    /// lease is lost or left. Cheap to clone; readable from any thread.
    pub fn deadline(&self) -> LeaseDeadline {
        self.deadline.clone()
    }

    /// Reports the round trip of every later successful renewal to `observer` (the first call
    /// wins; renewals start a third of the TTL after the join, so none is missed when this is
    /// called right after it).
    pub fn observe_renewals(&self, observer: RenewalObserver) {
        let _ = self.renewal_observer.set(observer);
    }

    fn spawn_renewal(&self, value: Bytes, first_sent_at: Instant) {
        let renewal = Renewal {
            bucket: self.bucket.clone(),
            key: self.key.clone(),
            value,
            ttl: self.ttl,
            lost: self.lost.clone(),
            deadline: self.deadline.clone(),
            state: self.state.clone(),
            observer: self.renewal_observer.clone(),
        };
        tokio::spawn(renewal.run(first_sent_at, self.stop_renewing.clone()));
    }

    /// Graceful leave: stop renewing and delete the key (if it is still ours).
    pub async fn leave(self) -> Result<(), NatsError> {
        self.stop_renewing.cancel();
        let mut guard = self.state.lock().await;
        guard.left = true;
        let revision = guard.revision;
        drop(guard);
        self.deadline.expire();
        if self.lost.is_cancelled() {
            return Ok(());
        }
        self.bucket.delete(&self.key, revision).await
    }
}

/// How long after a renewal's send the holder may still act: `ttl × 5/6`.
fn fence_after(ttl: Duration) -> Duration {
    ttl * 5 / 6
}

/// The renewal task's state: renews every `ttl / 3`, fences at the deadline.
struct Renewal {
    bucket: KeyBucket,
    key: String,
    value: Bytes,
    ttl: Duration,
    lost: CancellationToken,
    deadline: LeaseDeadline,
    state: Arc<Mutex<LeaseState>>,
    observer: Arc<std::sync::OnceLock<RenewalObserver>>,
}

impl Renewal {
    /// Renews until the lease is lost, left or `stop` fires. `stop` is only obeyed between
    /// attempts: an attempt in flight holds the state lock, so `leave` sees its revision.
    async fn run(self, first_sent_at: Instant, stop: CancellationToken) {
        let ttl = self.ttl;
        let mut fence_deadline = first_sent_at + fence_after(ttl);
        let mut next_renewal = first_sent_at + ttl / 3;
        loop {
            let wake = next_renewal.min(fence_deadline);
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep_until(wake.into()) => {}
            }
            if Instant::now() >= fence_deadline {
                tracing::warn!(member = %self.key, "membership not renewed in time: self-fencing");
                self.lose();
                return;
            }
            let mut guard = self.state.lock().await;
            if guard.left {
                return;
            }
            let sent_at = Instant::now();
            let attempt = tokio::time::timeout(
                fence_deadline.saturating_duration_since(sent_at),
                cas_write(
                    self.bucket.jetstream(),
                    &self.bucket,
                    &self.key,
                    self.value.clone(),
                    Some(guard.revision),
                    Some(ttl),
                ),
            )
            .await;
            match attempt {
                Ok(Ok(CasOutcome::Written(revision))) => {
                    if let Some(observer) = self.observer.get() {
                        observer(sent_at.elapsed());
                    }
                    guard.revision = revision;
                    fence_deadline = sent_at + fence_after(ttl);
                    self.deadline.extend_to(fence_deadline);
                    next_renewal = sent_at + ttl / 3;
                }
                Ok(Ok(CasOutcome::Conflict {
                    current: Some(stored),
                })) if stored.value == self.value => {
                    // An earlier attempt was stored but its ack was lost (error 10071 on this
                    // retry): the key is still ours. Its send time is unknown, so the fence
                    // deadline stays where the last acknowledged renewal put it (on the safe
                    // side), and the next renewal goes out at once to move it again.
                    tracing::debug!(
                        member = %self.key,
                        expected = %guard.revision,
                        stored = %stored.revision,
                        "renewal stored without an ack: adopting its revision"
                    );
                    guard.revision = stored.revision;
                    next_renewal = Instant::now();
                }
                Ok(Ok(CasOutcome::Conflict { .. })) => {
                    tracing::warn!(member = %self.key, "membership key lost (expired or taken over)");
                    self.lose();
                    return;
                }
                Ok(Err(error)) => {
                    tracing::debug!(member = %self.key, %error, "renewal failed; retrying");
                    next_renewal = Instant::now() + Duration::from_millis(100);
                }
                Err(_) => {
                    next_renewal = Instant::now();
                }
            }
        }
    }

    fn lose(&self) {
        self.deadline.expire();
        self.lost.cancel();
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
    pub resources: &'a crate::Resources,
    pub id: &'a MemberId,
    pub role: elk_protocol::messages::MemberRole,
    pub ttl: Duration,
    /// Pause between failed re-join attempts.
    pub retry: Duration,
    /// Ends join and re-join attempts.
    pub stop: &'a CancellationToken,
    /// Told of every membership this replica joins (readiness, renewal times).
    pub status: &'a ReplicaStatus,
}

impl ServiceMember<'_> {
    /// Joins with a new incarnation; `None` if `stop` fires first.
    ///
    /// While the id is held by a live key (typically this replica's previous run, restarted
    /// before its key expired) it waits for that key to go away, saying so once in the log,
    /// instead of failing: a restarted process needs no operator to wait out the TTL. A
    /// retryable NATS failure (a request that timed out while the server restarts or the link
    /// is cut) is tried again every `retry`: a replica starting during an outage waits it out
    /// instead of exiting. Only a terminal failure is returned.
    pub async fn join(&self) -> Result<Option<MemberLease>, JoinError> {
        let mut waiting_logged = false;
        loop {
            let record = MemberRecord {
                schema: elk_protocol::SCHEMA_VERSION,
                role: self.role,
                incarnation: new_incarnation(),
                capacity: elk_types::Capacity(0),
                jobs: Vec::new(),
                labels: Default::default(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
            };
            let members = &self.resources.member_keys;
            match MemberLease::join(members, self.id.clone(), record, self.ttl).await {
                Ok(lease) => {
                    tracing::info!(member = %self.id, role = ?self.role, incarnation = %lease.incarnation(), "joined");
                    self.status.joined(&lease);
                    return Ok(Some(lease));
                }
                Err(JoinError::IdTaken { .. }) => {
                    if !waiting_logged {
                        tracing::warn!(
                            member = %self.id,
                            "member id is held by a live key (this replica's previous run, or \
                             another live process with the same id): waiting for it to expire"
                        );
                        waiting_logged = true;
                    }
                    if !self.wait_for_release().await {
                        return Ok(None);
                    }
                }
                Err(error) if error.is_retryable() => {
                    tracing::warn!(member = %self.id, %error, "cannot join membership; retrying");
                    tokio::select! {
                        () = self.stop.cancelled() => return Ok(None),
                        () = tokio::time::sleep(self.retry) => {}
                    }
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Waits until the member key is deleted or expires (at most one TTL, as a safety net for a
    /// missed marker); `false` if `stop` fired first.
    async fn wait_for_release(&self) -> bool {
        let members = &self.resources.member_keys;
        let released = async {
            // The watch first delivers the key's latest entry, so an expiry that happened after
            // the failed join is seen at once.
            if let Ok(mut entries) = members.watch_key(self.id.as_str()).await {
                while let Some(Ok(entry)) = entries.next().await {
                    if entry.deleted {
                        return;
                    }
                }
            }
            std::future::pending::<()>().await
        };
        tokio::select! {
            () = self.stop.cancelled() => false,
            () = released => true,
            () = tokio::time::sleep(self.ttl) => true,
        }
    }

    /// Re-joins after the member key was lost, retrying every `retry` until it works; `None` if
    /// `stop` fires first.
    pub async fn rejoin(&self) -> Option<MemberLease> {
        loop {
            match self.join().await {
                Ok(joined) => return joined,
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
