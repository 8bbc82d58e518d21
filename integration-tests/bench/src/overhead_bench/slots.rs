//! Where the overhead goes: the idle slot-time of every worker, split by when it happens.
//!
//! Every processor run is recorded (worker, start, end). Per worker the runs are laid on
//! `capacity` slots (a run takes the slot freed most recently before it started, which is what
//! the SDK's window does), and each slot's idle time is split into:
//! * **start**: from `create_job` to the slot's first run (cutting, first grants, first watch);
//! * **hand-over**: between two runs of the slot (a completion until the next start);
//! * **tail**: from the slot's last run to the last run of the whole job (slots with nothing
//!   left while others still work);
//! * **report**: from the job's last run to seeing the job `completed` (final report, the
//!   assigner's completion, the 10 ms poll).
//!
//! As percentages of `slots × makespan` these add up, with `busy_excess_pct` (busy time beyond
//! the nominal work: runs longer than planned, and work redone after a revoke of a running
//! partition), to `overhead_pct` exactly: slot-time = busy + idle and `ideal × slots` = nominal
//! work.

use crate::lifecycle_bench::round;
use serde::Serialize;
use std::time::{Duration, Instant};

/// One processor run on a worker.
#[derive(Debug, Clone, Copy)]
pub(super) struct Run {
    pub worker: usize,
    pub start: Instant,
    pub end: Instant,
    /// Cancelled by a revoke before its last ID (resumed elsewhere from its checkpoint).
    pub interrupted: bool,
}

#[derive(Debug, Serialize)]
pub(super) struct IdleSplit {
    idle_start_pct: f64,
    idle_handover_pct: f64,
    idle_tail_pct: f64,
    idle_report_pct: f64,
    busy_excess_pct: f64,
    runs: usize,
    /// Runs cut short by a revoke (their partition was running when it was moved).
    runs_interrupted: usize,
    /// When the first and the last interrupted run ended, from `create_job`.
    interrupted_first_s: Option<f64>,
    interrupted_last_s: Option<f64>,
    /// The first run's start, from `create_job`.
    first_start_s: f64,
    /// The moment every slot was running, from `create_job`.
    all_slots_busy_s: f64,
    last_end_s: f64,
    handovers: usize,
    handover_gap_mean_ms: f64,
    handover_gap_p99_ms: f64,
    handover_gap_max_ms: f64,
    /// Last run's end minus the earliest last end of a slot.
    tail_spread_s: f64,
    runs_per_worker_min: usize,
    runs_per_worker_max: usize,
}

/// `work` is the nominal work (partitions × a partition's planned duration); `started` the `create_job` instant, `seen` when the
/// job was seen completed.
pub(super) fn split(
    runs: &[Run],
    workers: usize,
    capacity: usize,
    work: Duration,
    started: Instant,
    seen: Instant,
) -> IdleSplit {
    let at = |instant: Instant| instant.saturating_duration_since(started).as_secs_f64();
    let makespan = at(seen);
    let last_end = runs.iter().map(|run| at(run.end)).fold(0.0, f64::max);
    let mut start_idle = 0.0;
    let mut handover_idle = 0.0;
    let mut tail_idle = 0.0;
    let mut gaps: Vec<f64> = Vec::new();
    let mut slot_last_ends: Vec<f64> = Vec::new();
    let mut slot_first_starts: Vec<f64> = Vec::new();
    let mut per_worker: Vec<usize> = Vec::new();
    for worker in 0..workers {
        let mut mine: Vec<(f64, f64)> = runs
            .iter()
            .filter(|run| run.worker == worker)
            .map(|run| (at(run.start), at(run.end)))
            .collect();
        per_worker.push(mine.len());
        mine.sort_by(|a, b| a.0.total_cmp(&b.0));
        // Each slot: (first start, last end).
        let mut slots: Vec<(f64, f64)> = Vec::new();
        for (start, end) in mine {
            let freed = slots
                .iter()
                .enumerate()
                .filter(|(_, slot)| slot.1 <= start)
                .max_by(|a, b| a.1.1.total_cmp(&b.1.1))
                .map(|(index, _)| index);
            let index = match freed {
                Some(index) => index,
                None if slots.len() < capacity => {
                    slots.push((start, end));
                    continue;
                }
                // Clock skew of a few µs between a run's end and the next start: the slot that
                // frees first.
                None => slots
                    .iter()
                    .enumerate()
                    .min_by(|a, b| a.1.1.total_cmp(&b.1.1))
                    .map(|(index, _)| index)
                    .expect("capacity ≥ 1"),
            };
            let slot = &mut slots[index];
            let gap = (start - slot.1).max(0.0);
            handover_idle += gap;
            gaps.push(gap);
            slot.1 = end;
        }
        for (first, last) in &slots {
            start_idle += first;
            tail_idle += last_end - last;
            slot_first_starts.push(*first);
            slot_last_ends.push(*last);
        }
        // Slots that never ran anything idle from start to the job's last run.
        start_idle += (capacity - slots.len()) as f64 * last_end;
    }
    let slot_count = (workers * capacity) as f64;
    let slot_time = slot_count * makespan;
    let busy: f64 = runs
        .iter()
        .map(|run| run.end.saturating_duration_since(run.start).as_secs_f64())
        .sum();
    let pct = |seconds: f64| round(seconds / slot_time * 100.0, 2);
    gaps.sort_by(f64::total_cmp);
    let mut interrupted: Vec<f64> = runs
        .iter()
        .filter(|run| run.interrupted)
        .map(|run| at(run.end))
        .collect();
    interrupted.sort_by(f64::total_cmp);
    let p99 = gaps
        .get(((gaps.len() as f64 * 0.99).ceil() as usize).saturating_sub(1))
        .copied()
        .unwrap_or(0.0);
    let all_busy = if slot_first_starts.len() == workers * capacity {
        slot_first_starts.iter().copied().fold(0.0, f64::max)
    } else {
        f64::NAN
    };
    IdleSplit {
        idle_start_pct: pct(start_idle),
        idle_handover_pct: pct(handover_idle),
        idle_tail_pct: pct(tail_idle),
        idle_report_pct: pct(slot_count * (makespan - last_end)),
        busy_excess_pct: pct(busy - work.as_secs_f64()),
        runs: runs.len(),
        runs_interrupted: interrupted.len(),
        interrupted_first_s: interrupted.first().map(|end| round(*end, 3)),
        interrupted_last_s: interrupted.last().map(|end| round(*end, 3)),
        first_start_s: round(
            runs.iter()
                .map(|run| at(run.start))
                .fold(f64::MAX, f64::min),
            3,
        ),
        all_slots_busy_s: round(all_busy, 3),
        last_end_s: round(last_end, 3),
        handovers: gaps.len(),
        handover_gap_mean_ms: round(gaps.iter().sum::<f64>() / gaps.len().max(1) as f64 * 1e3, 2),
        handover_gap_p99_ms: round(p99 * 1e3, 2),
        handover_gap_max_ms: round(gaps.last().copied().unwrap_or(0.0) * 1e3, 2),
        tail_spread_s: round(
            last_end - slot_last_ends.iter().copied().fold(last_end, f64::min),
            3,
        ),
        runs_per_worker_min: per_worker.iter().copied().min().unwrap_or(0),
        runs_per_worker_max: per_worker.iter().copied().max().unwrap_or(0),
    }
}
