//! Fault injection for tests, compiled only with the `test-hooks` feature (the integration tests
//! enable it; the service binary never does): make the running leader task panic, to check that a
//! replica whose leader work died gives the role up instead of holding it while doing nothing; or
//! make one round hold its thread as long as a very large round would, to check that the leader's
//! membership outlives it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Faults a test can inject into one replica's leader task.
#[derive(Debug, Default)]
pub struct LeaderFaults {
    panic_next_round: AtomicBool,
    block_next_round: Mutex<Option<Duration>>,
    rounds_blocked: AtomicU64,
}

impl LeaderFaults {
    /// The leader task panics at the start of its next round (once).
    pub fn panic_next_round(&self) {
        self.panic_next_round.store(true, Ordering::SeqCst);
    }

    /// The next round blocks its thread for `duration` in the model's step (once), as a round
    /// computing over a very large model would (`std::thread::sleep`, not an await).
    pub fn block_next_round(&self, duration: Duration) {
        *self.block_next_round.lock().unwrap() = Some(duration);
    }

    /// Rounds that have finished blocking (see [`LeaderFaults::block_next_round`]).
    pub fn rounds_blocked(&self) -> u64 {
        self.rounds_blocked.load(Ordering::SeqCst)
    }

    /// Called by the leader loop once per round, in the model's step.
    pub(crate) fn check(&self) {
        if self.panic_next_round.swap(false, Ordering::SeqCst) {
            panic!("test hook: the assigner's leader task panics");
        }
        let block = self.block_next_round.lock().unwrap().take();
        if let Some(duration) = block {
            std::thread::sleep(duration);
            self.rounds_blocked.fetch_add(1, Ordering::SeqCst);
        }
    }
}
