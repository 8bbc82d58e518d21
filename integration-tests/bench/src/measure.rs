//! Timing helpers shared by the benchmark families: medians of repeated runs in one process.

use std::time::{Duration, Instant};

/// How long to keep repeating one measurement.
#[derive(Debug, Clone, Copy)]
pub struct RepeatPolicy {
    /// Runs always made, unless one run alone exceeds `single_run_limit`.
    pub min_runs: usize,
    pub max_runs: usize,
    /// Stop once `min_runs` are done and this much time was spent.
    pub budget: Duration,
    /// A run this slow is not repeated (so a multi-second reference costs one run).
    pub single_run_limit: Duration,
}

impl RepeatPolicy {
    pub const DEFAULT: Self = Self {
        min_runs: 5,
        max_runs: 101,
        budget: Duration::from_millis(400),
        single_run_limit: Duration::from_secs(2),
    };
}

/// Median, in microseconds, of the durations `one_run` reports. `one_run` times only what it
/// measures, so it may prepare and clean up around the timed part.
pub fn median_micros(policy: RepeatPolicy, mut one_run: impl FnMut() -> Duration) -> f64 {
    let started = Instant::now();
    let mut durations: Vec<Duration> = Vec::new();
    loop {
        let duration = one_run();
        durations.push(duration);
        let runs = durations.len();
        let spent = started.elapsed();
        let enough = runs >= policy.max_runs
            || (runs >= policy.min_runs && spent >= policy.budget)
            || duration >= policy.single_run_limit;
        if enough {
            break;
        }
    }
    durations.sort_unstable();
    let middle = durations.len() / 2;
    let median = if durations.len() % 2 == 1 {
        durations[middle]
    } else {
        (durations[middle - 1] + durations[middle]) / 2
    };
    round_micros(median.as_secs_f64() * 1e6)
}

/// Times one closure call.
pub fn time<T>(run: impl FnOnce() -> T) -> (Duration, T) {
    let started = Instant::now();
    let output = std::hint::black_box(run());
    (started.elapsed(), output)
}

/// Microseconds with nanosecond resolution, for readable JSON.
pub fn round_micros(micros: f64) -> f64 {
    (micros * 1_000.0).round() / 1_000.0
}
