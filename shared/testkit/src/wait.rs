//! Poll a condition with a deadline instead of sleeping for a guessed duration.

use std::future::Future;
use std::time::{Duration, Instant};

/// The condition did not hold before the deadline.
#[derive(Debug, thiserror::Error)]
#[error("timed out after {waited:?} waiting for: {what}")]
pub struct TimedOut {
    pub what: String,
    pub waited: Duration,
}

/// Polls `condition` every 10 ms until it returns `true`, or fails after `deadline`.
pub async fn wait_until<F, Fut>(
    what: &str,
    deadline: Duration,
    mut condition: F,
) -> Result<(), TimedOut>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if condition().await {
            return Ok(());
        }
        if started.elapsed() >= deadline {
            return Err(TimedOut {
                what: what.to_owned(),
                waited: started.elapsed(),
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn returns_once_condition_holds() {
        let calls = AtomicU32::new(0);
        wait_until("third call", Duration::from_secs(5), || async {
            calls.fetch_add(1, Ordering::SeqCst) >= 2
        })
        .await
        .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn fails_after_deadline_naming_the_condition() {
        let error = wait_until("never", Duration::from_millis(30), || async { false })
            .await
            .unwrap_err();
        assert!(error.to_string().contains("never"));
        assert!(error.waited >= Duration::from_millis(30));
    }
}
