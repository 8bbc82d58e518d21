//! Rate-limited warnings: a warning that can repeat once per message or per round (a malformed
//! report, an undecodable record seen again every round) is logged at most once per interval per
//! kind, with the number of identical ones held back since — so a flood of garbage costs a log
//! line per interval, not one per message, and the first occurrence is always seen.
//!
//! ```
//! use elk_runtime::RepeatLimiter;
//! use std::time::Duration;
//! static MALFORMED: RepeatLimiter = RepeatLimiter::new(Duration::from_secs(10));
//! if let Some(suppressed) = MALFORMED.check("progress.w-1") {
//!     tracing::warn!(suppressed, "malformed progress report dropped");
//! }
//! ```

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Distinct keys one limiter remembers; past it, keys whose interval is over are forgotten, and
/// if that frees nothing the new key shares one overflow entry (never unbounded memory, whatever
/// the keys an attacker makes up).
const MAX_KEYS: usize = 1_024;
/// The key unknown keys share once the limiter is full.
const OVERFLOW_KEY: &str = "\u{0}overflow";

/// Lets one warning per key through per interval (see the module header). `const`-constructible,
/// so a call site can keep its own in a `static`.
#[derive(Debug)]
pub struct RepeatLimiter {
    interval: Duration,
    seen: Mutex<Option<HashMap<String, Window>>>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    /// When the last warning of this key was let through.
    logged_at: Instant,
    /// Warnings of this key held back since.
    suppressed: u64,
}

impl RepeatLimiter {
    pub const fn new(interval: Duration) -> Self {
        Self {
            interval,
            seen: Mutex::new(None),
        }
    }

    /// Whether to log a warning of `key` now: `Some(n)` — log it, saying `n` identical ones were
    /// held back since the last one; `None` — hold it back (counted).
    pub fn check(&self, key: &str) -> Option<u64> {
        self.check_at(key, Instant::now())
    }

    /// [`RepeatLimiter::check`] at `now` (tests pass their own clock).
    pub fn check_at(&self, key: &str, now: Instant) -> Option<u64> {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let seen = seen.get_or_insert_with(HashMap::new);
        let key = if seen.contains_key(key) || seen.len() < MAX_KEYS {
            key
        } else {
            let interval = self.interval;
            seen.retain(|_, window| now.duration_since(window.logged_at) < interval);
            if seen.len() < MAX_KEYS {
                key
            } else {
                OVERFLOW_KEY
            }
        };
        match seen.get_mut(key) {
            Some(window) if now.duration_since(window.logged_at) < self.interval => {
                window.suppressed += 1;
                None
            }
            Some(window) => {
                let suppressed = window.suppressed;
                *window = Window {
                    logged_at: now,
                    suppressed: 0,
                };
                Some(suppressed)
            }
            None => {
                let window = Window {
                    logged_at: now,
                    suppressed: 0,
                };
                seen.insert(key.to_owned(), window);
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warning_per_interval_per_key_with_the_count_held_back() {
        let limiter = RepeatLimiter::new(Duration::from_secs(10));
        let start = Instant::now();
        let at = |seconds: u64| start + Duration::from_secs(seconds);
        assert_eq!(
            limiter.check_at("a", at(0)),
            Some(0),
            "the first one is logged"
        );
        for second in 1..10 {
            assert_eq!(limiter.check_at("a", at(second)), None);
        }
        assert_eq!(
            limiter.check_at("b", at(5)),
            Some(0),
            "another key is not held back"
        );
        assert_eq!(
            limiter.check_at("a", at(10)),
            Some(9),
            "then one, with the count"
        );
        assert_eq!(limiter.check_at("a", at(11)), None);
        assert_eq!(limiter.check_at("a", at(25)), Some(1));
        assert_eq!(limiter.check_at("b", at(25)), Some(0));
    }

    #[test]
    fn made_up_keys_cannot_grow_it_without_bound() {
        let limiter = RepeatLimiter::new(Duration::from_secs(10));
        let now = Instant::now();
        for index in 0..MAX_KEYS {
            assert_eq!(limiter.check_at(&format!("key-{index}"), now), Some(0));
        }
        // Full: new keys share one entry until the old ones' interval is over.
        assert_eq!(limiter.check_at("new-1", now), Some(0));
        assert_eq!(limiter.check_at("new-2", now), None);
        let seen = limiter.seen.lock().unwrap();
        assert_eq!(seen.as_ref().unwrap().len(), MAX_KEYS + 1);
        drop(seen);
        let later = now + Duration::from_secs(10);
        assert_eq!(
            limiter.check_at("new-3", later),
            Some(0),
            "expired keys were forgotten"
        );
        assert_eq!(limiter.seen.lock().unwrap().as_ref().unwrap().len(), 1);
    }
}
