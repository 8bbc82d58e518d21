//! The policy's rules and properties: bounds, monotonicity in the backlog, and no flapping on
//! noisy oscillating load (simulated traces, one decision per simulated second).

use super::*;
use elk_protocol::messages::JobSpec;
use elk_types::{IdRange, JobName, PartitionId};
use proptest::prelude::*;

fn job(state: JobState, cursor: u64, partitions: (u64, u64), ids_completed: u64) -> JobRecord {
    let mut record = JobRecord::new(
        JobName::new("job").unwrap(),
        JobSpec::fixed(IdRange::new(1, 1_000).unwrap(), 10),
        elk_types::Epoch(0),
        0,
    );
    record.state = state;
    record.cursor = cursor;
    record.next_partition = PartitionId(partitions.0 + 1);
    record.partitions_total = partitions.0;
    record.partitions_completed = partitions.1;
    record.ids_completed = ids_completed;
    record
}

#[test]
fn backlog_counts_open_and_unplanned_partitions_of_active_jobs() {
    let fully_planned = job(JobState::Active, 1_001, (100, 40), 400);
    assert_eq!(
        backlog_of([&fully_planned]),
        Backlog {
            ids: 600,
            partitions: 60
        }
    );
    let half_planned = job(JobState::Active, 501, (50, 10), 100);
    assert_eq!(backlog_of([&half_planned]).partitions, 40 + 50);
    let fresh = job(JobState::Active, 0, (0, 0), 0);
    assert_eq!(backlog_of([&fresh]).partitions, 100);
    let done = job(JobState::Completed, 1_001, (100, 100), 1_000);
    assert_eq!(backlog_of([&done, &fully_planned]).ids, 600);
}

fn settings() -> PolicySettings {
    PolicySettings {
        min_workers: 0,
        max_workers: 50,
        target_drain: Duration::from_secs(60),
        activation_backlog_ids: 1_000,
        scale_up_step: 4,
        scale_down_window: Duration::from_secs(300),
        partitions_per_worker: 10,
        tolerance_percent: 10,
    }
}

/// A backlog of `ids` IDs in partitions of 1,000 IDs.
fn inputs(now_s: u64, ids: u64, rate: Option<f64>) -> Inputs {
    Inputs {
        now_ms: now_s * 1_000,
        backlog: Backlog {
            ids,
            partitions: ids.div_ceil(1_000),
        },
        worker_rate: rate,
        slots_per_worker: 1,
    }
}

#[test]
fn the_recommendation_drains_the_backlog_within_the_target_at_the_measured_rate() {
    let settings = settings();
    // 100 IDs/s per worker × 60 s = 6,000 IDs per worker: 30,000 IDs → 5 workers.
    assert_eq!(recommend(&settings, &inputs(0, 30_000, Some(100.0))), 5);
    assert_eq!(recommend(&settings, &inputs(0, 30_001, Some(100.0))), 6);
    // Twice the pace, half the workers.
    assert_eq!(recommend(&settings, &inputs(0, 30_000, Some(200.0))), 3);
    // No measurement yet: one worker per 10 open partitions.
    assert_eq!(recommend(&settings, &inputs(0, 30_000, None)), 3);
    // Never more workers than partitions to run, never 0 while there is work, never above max.
    assert_eq!(recommend(&settings, &inputs(0, 2_000, Some(0.001))), 2);
    assert_eq!(recommend(&settings, &inputs(0, 1, Some(1e9))), 1);
    assert_eq!(
        recommend(&settings, &inputs(0, u64::MAX / 2, Some(1.0))),
        50
    );
    assert_eq!(recommend(&settings, &inputs(0, 0, Some(100.0))), 0);
    let floor = PolicySettings {
        min_workers: 2,
        ..settings
    };
    assert_eq!(recommend(&floor, &inputs(0, 0, None)), 2);
}

#[test]
fn from_zero_the_fleet_waits_for_the_activation_threshold() {
    let mut policy = Policy::new(settings(), 0, 0);
    assert_eq!(policy.decide(&inputs(1, 999, Some(100.0))), 0);
    assert_eq!(policy.decide(&inputs(2, 1_000, Some(100.0))), 1);
    // Once running, a backlog below the threshold keeps a worker until the window has passed.
    assert_eq!(policy.decide(&inputs(3, 10, Some(100.0))), 1);
}

#[test]
fn scale_up_is_immediate_but_at_most_doubles_per_decision() {
    let mut policy = Policy::new(settings(), 1, 0);
    // 40 workers wanted: 1 → 5 (step 4) → 10 → 20 → 40.
    let wanted = 40 * 6_000;
    let steps: Vec<u32> = (1..=5)
        .map(|second| policy.decide(&inputs(second, wanted, Some(100.0))))
        .collect();
    assert_eq!(steps, [5, 10, 20, 40, 40]);
}

#[test]
fn scale_down_waits_a_window_and_keeps_the_highest_recommendation_of_it() {
    let mut policy = Policy::new(settings(), 10, 0);
    // Load falls to what 3 workers drain, with one spike asking for 6 at t = 200 s.
    for second in 1..=299 {
        let ids = if second == 200 { 36_000 } else { 18_000 };
        assert_eq!(policy.decide(&inputs(second, ids, Some(100.0))), 10);
    }
    // One window after the start: down to the window's highest recommendation, 6.
    assert_eq!(policy.decide(&inputs(300, 18_000, Some(100.0))), 6);
    // The spike stays the window's highest until it is a whole window old...
    for second in 301..=500 {
        assert_eq!(policy.decide(&inputs(second, 18_000, Some(100.0))), 6);
    }
    // ...then the count follows the window down, without waiting a window after its last change.
    assert_eq!(policy.decide(&inputs(501, 18_000, Some(100.0))), 3);
}

#[test]
fn a_scale_up_holds_off_scale_downs_for_a_whole_window() {
    let mut policy = Policy::new(settings(), 2, 0);
    // Settled at 2 for a window, a spike asks for 4 (at once), then the load falls back at once.
    for second in 1..=300 {
        assert_eq!(policy.decide(&inputs(second, 12_000, Some(100.0))), 2);
    }
    assert_eq!(policy.decide(&inputs(301, 24_000, Some(100.0))), 4);
    // The spike's recommendation is the window's highest until it is more than a window old.
    for second in 302..=601 {
        assert_eq!(policy.decide(&inputs(second, 6_000, Some(100.0))), 4);
    }
    assert_eq!(policy.decide(&inputs(602, 6_000, Some(100.0))), 1);
}

#[test]
fn an_empty_backlog_scales_to_zero_after_the_window() {
    let mut policy = Policy::new(settings(), 4, 0);
    for second in 1..300 {
        assert_eq!(policy.decide(&inputs(second, 0, Some(100.0))), 4);
    }
    assert_eq!(policy.decide(&inputs(300, 0, Some(100.0))), 0);
    assert_eq!(
        policy.decide(&inputs(301, 500, Some(100.0))),
        0,
        "below activation"
    );
}

/// Decisions over a trace (one per second); returns the desired count after each.
fn run(policy: &mut Policy, trace: &[Inputs]) -> Vec<u32> {
    trace.iter().map(|inputs| policy.decide(inputs)).collect()
}

fn changes(counts: &[u32]) -> usize {
    counts.windows(2).filter(|pair| pair[0] != pair[1]).count()
}

/// A noisy load oscillating around `level` IDs of backlog: `amplitude` of it with a period of
/// `period_s`, plus uniform noise of `noise` of it (a deterministic generator from `seed`).
fn oscillating_trace(
    seconds: u64,
    level: f64,
    amplitude: f64,
    period_s: f64,
    noise: f64,
    seed: u64,
) -> Vec<Inputs> {
    let mut state = seed | 1;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    };
    (0..seconds)
        .map(|second| {
            let phase = second as f64 / period_s * std::f64::consts::TAU;
            let ids = level * (1.0 + amplitude * phase.sin()) * (1.0 + noise * uniform());
            // The measured rate is noisy too.
            let rate = 100.0 * (1.0 + noise * uniform());
            inputs(second, ids.max(0.0) as u64, Some(rate))
        })
        .collect()
}

#[test]
fn a_noisy_load_oscillating_faster_than_the_window_does_not_flap() {
    // Two hours: ±40 % every 2 minutes, ±15 % noise on the backlog and on the measured rate.
    let trace = oscillating_trace(7_200, 120_000.0, 0.4, 120.0, 0.15, 7);
    let mut policy = Policy::new(settings(), 1, 0);
    let counts = run(&mut policy, &trace);
    // The ramp to the peak (1 → 5 → ...) takes a few scale-ups; after that the count sits at
    // the peak's recommendation: the window's maximum covers every swing.
    let after_ramp = &counts[600..];
    assert!(
        changes(after_ramp) <= 2,
        "{} changes after the ramp, counts from {:?} to {:?}",
        changes(after_ramp),
        after_ramp.iter().min(),
        after_ramp.iter().max()
    );
    assert!(changes(&counts) <= 8, "{} changes", changes(&counts));
    // ...and that count really drains the peak backlog within the target.
    let peak_need = (120_000.0f64 * 1.4 * 1.15 / (100.0 * 0.85 * 60.0)).ceil() as u32;
    assert!(counts[7_199] <= peak_need && counts[7_199] >= peak_need / 2);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever the history, every decision stays within the bounds, and more backlog from the
    /// same state never yields fewer workers.
    #[test]
    fn decisions_are_bounded_and_monotone_in_the_backlog(
        min in 0u32..4,
        extra in 0u32..60,
        history in proptest::collection::vec((0u64..400_000, 1u64..300), 0..40),
        rate in proptest::option::of(1.0f64..1_000.0),
        backlog in 0u64..2_000_000,
        more in 0u64..2_000_000,
    ) {
        let settings = PolicySettings {
            min_workers: min,
            max_workers: min + extra,
            scale_down_window: Duration::from_secs(30),
            ..settings()
        };
        let mut policy = Policy::new(settings.clone(), 0, 0);
        let mut now = 0;
        for (ids, gap) in history {
            now += gap;
            let decided = policy.decide(&inputs(now, ids, rate));
            prop_assert!(decided >= min && decided <= min + extra);
        }
        let mut less = policy.clone();
        let mut greater = policy.clone();
        let low = less.decide(&inputs(now + 1, backlog, rate));
        let high = greater.decide(&inputs(now + 1, backlog + more, rate));
        prop_assert!(low <= high, "backlog {backlog} → {low}, {} → {high}", backlog + more);
        prop_assert!(high >= min && high <= min + extra);
    }

    /// On any noisy trace a scale-down comes at least one window after the previous scale-up (no
    /// up/down reversal within a window) and never goes below a recommendation of the last
    /// window.
    #[test]
    fn scale_downs_keep_the_window_and_never_follow_a_scale_up_within_it(
        seed in 1u64..u64::MAX,
        level in 1_000.0f64..500_000.0,
        amplitude in 0.0f64..0.9,
        period in 20.0f64..900.0,
        noise in 0.0f64..0.5,
    ) {
        let settings = PolicySettings {
            scale_down_window: Duration::from_secs(120),
            ..settings()
        };
        let trace = oscillating_trace(3_600, level, amplitude, period, noise, seed);
        let mut policy = Policy::new(settings.clone(), 1, 0);
        let counts = run(&mut policy, &trace);
        let mut last_up: Option<usize> = None;
        for second in 1..counts.len() {
            if counts[second] < counts[second - 1] {
                if let Some(up) = last_up {
                    prop_assert!(second - up >= 120, "down at {second}, up at {up}");
                }
                // The trace's backlog never empties (no activation threshold in play): the
                // window's recommendations are those of `recommend`.
                let highest = trace[second.saturating_sub(120)..=second]
                    .iter()
                    .map(|inputs| recommend(&settings, inputs))
                    .max()
                    .expect("not empty");
                prop_assert!(counts[second] >= highest, "down to {} at {second}, window asked {highest}", counts[second]);
            }
            if counts[second] > counts[second - 1] {
                last_up = Some(second);
            }
        }
    }
}
