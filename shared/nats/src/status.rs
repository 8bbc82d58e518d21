//! [`ReplicaStatus`]: what a process's membership and role supervision look like right now,
//! readable from any thread without waiting — for readiness probes and metrics, which must never
//! block on the loops they report on.
//!
//! The loops write it ([`crate::ServiceMember`] on every (re-)join, [`crate::RoleSupervisor`] on
//! every state change, the worker SDK's session on every join); the metrics endpoint reads it on
//! each scrape. It holds no work: dropping every clone changes nothing.

use crate::membership::{LeaseDeadline, MemberLease};
use elk_protocol::names::ControlRole;
use elk_types::Epoch;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Called with the round-trip time of every successful lease renewal (e.g. to feed a histogram).
pub type RenewalObserver = Arc<dyn Fn(Duration) + Send + Sync>;

/// A replica's membership and role state; cheap to clone, every clone sees the same state.
#[derive(Clone, Default)]
pub struct ReplicaStatus {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// The fence deadline of the current membership (`None` before the first join).
    membership: Mutex<Option<LeaseDeadline>>,
    /// Renewal times of every membership joined through this status go here.
    renewals: Mutex<Option<RenewalObserver>>,
    /// The role this replica follows, if it is a role follower.
    role: Mutex<Option<ControlRole>>,
    /// Epoch under which this replica leads its role; 0 when it does not.
    leading: AtomicU64,
    /// Epoch of the role lease as last seen; 0 before any.
    lease_epoch: AtomicU64,
}

impl std::fmt::Debug for ReplicaStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaStatus")
            .field("member", &self.is_member())
            .field("role", &self.role())
            .field("leading", &self.leading())
            .field("lease_epoch", &self.lease_epoch())
            .finish()
    }
}

impl ReplicaStatus {
    /// A status whose memberships report every renewal's round trip to `observer`.
    pub fn with_renewal_observer(observer: RenewalObserver) -> Self {
        let status = Self::default();
        *lock(&status.inner.renewals) = Some(observer);
        status
    }

    /// Records a new membership: readiness follows its fence deadline from now on, and its
    /// renewals are reported to the observer.
    pub fn joined(&self, lease: &MemberLease) {
        if let Some(observer) = lock(&self.inner.renewals).clone() {
            lease.observe_renewals(observer);
        }
        *lock(&self.inner.membership) = Some(lease.deadline());
    }

    /// Whether the current membership is live: joined, and renewed within its fence deadline
    /// (false before the first join, after a loss until the re-join, and after leaving).
    pub fn is_member(&self) -> bool {
        lock(&self.inner.membership)
            .as_ref()
            .is_some_and(LeaseDeadline::is_valid)
    }

    /// Marks this replica as a follower of `role`.
    pub fn follows(&self, role: ControlRole) {
        *lock(&self.inner.role) = Some(role);
    }

    /// The role this replica follows, if any.
    pub fn role(&self) -> Option<ControlRole> {
        *lock(&self.inner.role)
    }

    /// Records whether (and under which epoch) this replica's leader work runs.
    pub fn set_leading(&self, epoch: Option<Epoch>) {
        let encoded = epoch.map_or(0, |epoch| epoch.get());
        self.inner.leading.store(encoded, Ordering::Relaxed);
    }

    /// The epoch under which this replica leads, if it does.
    pub fn leading(&self) -> Option<Epoch> {
        decode_epoch(self.inner.leading.load(Ordering::Relaxed))
    }

    /// Records the epoch of the role lease as last seen.
    pub fn set_lease_epoch(&self, epoch: Epoch) {
        self.inner.lease_epoch.store(epoch.get(), Ordering::Relaxed);
    }

    /// The role lease's epoch as last seen, if any lease was seen.
    pub fn lease_epoch(&self) -> Option<Epoch> {
        decode_epoch(self.inner.lease_epoch.load(Ordering::Relaxed))
    }
}

fn decode_epoch(encoded: u64) -> Option<Epoch> {
    (encoded != 0).then_some(Epoch(encoded))
}

/// Locks `mutex`, recovering from a panic elsewhere: every value here is replaced whole, so a
/// poisoned one is still consistent.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn leading_and_lease_epochs_read_back() {
        let status = ReplicaStatus::default();
        assert_eq!(status.leading(), None);
        assert_eq!(status.lease_epoch(), None);
        assert!(!status.is_member(), "not joined yet");
        status.follows(ControlRole::Assigner);
        status.set_lease_epoch(Epoch(4));
        status.set_leading(Some(Epoch(4)));
        let clone = status.clone();
        assert_eq!(clone.leading(), Some(Epoch(4)));
        assert_eq!(clone.lease_epoch(), Some(Epoch(4)));
        assert_eq!(clone.role(), Some(ControlRole::Assigner));
        status.set_leading(None);
        assert_eq!(clone.leading(), None);
    }

    #[test]
    fn membership_follows_the_deadline() {
        let status = ReplicaStatus::default();
        let deadline = LeaseDeadline::new(Instant::now() + Duration::from_secs(60));
        *lock(&status.inner.membership) = Some(deadline.clone());
        assert!(status.is_member());
        deadline.expire();
        assert!(!status.is_member(), "a lost lease is not a membership");
    }
}
