//! Fault injection for tests, compiled only with the `test-hooks` feature (the integration tests
//! enable it; the service binary never does): make the running leader task panic, to check that a
//! replica whose leader work died gives the role up instead of holding it while doing nothing.

use std::sync::atomic::{AtomicBool, Ordering};

/// Faults a test can inject into one replica's leader task.
#[derive(Debug, Default)]
pub struct LeaderFaults {
    panic_next_round: AtomicBool,
}

impl LeaderFaults {
    /// The leader task panics at the start of its next round (once).
    pub fn panic_next_round(&self) {
        self.panic_next_round.store(true, Ordering::SeqCst);
    }

    /// Called by the leader loop once per round.
    pub(crate) fn check(&self) {
        if self.panic_next_round.swap(false, Ordering::SeqCst) {
            panic!("test hook: the assigner's leader task panics");
        }
    }
}
