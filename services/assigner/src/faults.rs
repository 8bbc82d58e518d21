//! The leader loop's fault-injection point: the hooks of `crate::test_hooks` when the `test-hooks`
//! feature is on (tests only), a no-op otherwise — production builds carry no fault path.

/// Faults a test injects into one replica's leader task.
#[cfg(feature = "test-hooks")]
pub(crate) type Faults = std::sync::Arc<crate::test_hooks::LeaderFaults>;

/// A replica without injected faults.
#[cfg(feature = "test-hooks")]
pub(crate) fn none() -> Faults {
    Faults::default()
}

/// No faults: the `test-hooks` feature is off.
#[cfg(not(feature = "test-hooks"))]
#[derive(Debug, Clone, Copy)]
pub(crate) struct Faults;

#[cfg(not(feature = "test-hooks"))]
impl Faults {
    /// Called by the leader loop once per round.
    pub(crate) fn check(&self) {}

    /// Whether range purges are to fail (a test hook): never.
    pub(crate) fn range_purges_refused(&self) -> bool {
        false
    }
}

/// A replica without injected faults.
#[cfg(not(feature = "test-hooks"))]
pub(crate) fn none() -> Faults {
    Faults
}
