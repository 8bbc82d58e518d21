//! Local copies of KV state fed by watches (the failover scenarios' `KvMirror`, the scale
//! benchmark's `GrantTally`): the one loop that applies changes until a condition holds, so every
//! measured moment is when a change was observed on NATS.

use anyhow::bail;
use std::time::{Duration, Instant};

/// A copy advanced one observed change at a time.
pub(crate) trait Follows: Sized {
    /// Waits for the next change and applies it.
    async fn apply_next(&mut self) -> anyhow::Result<()>;

    /// The copy's state in a few words, for a timeout message (empty: nothing to add).
    fn state(&self) -> String {
        String::new()
    }

    /// Applies changes until `condition` holds and returns when it was first seen to hold (at
    /// once if it already does). Fails after `deadline`.
    async fn wait_for(
        &mut self,
        what: &str,
        deadline: Duration,
        mut condition: impl FnMut(&Self) -> bool,
    ) -> anyhow::Result<Instant> {
        let give_up = tokio::time::Instant::now() + deadline;
        loop {
            if condition(self) {
                return Ok(Instant::now());
            }
            match tokio::time::timeout_at(give_up, self.apply_next()).await {
                Ok(applied) => applied?,
                Err(_) => {
                    let state = self.state();
                    if state.is_empty() {
                        bail!("timed out after {deadline:?} waiting for {what}");
                    }
                    bail!("timed out after {deadline:?} waiting for {what} ({state})");
                }
            }
        }
    }
}
