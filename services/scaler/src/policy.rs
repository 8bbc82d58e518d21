//! The sizing policy: how many workers the namespace should have. Pure and deterministic — no
//! I/O, no clock (the caller passes `now`) — so it is tested on simulated traces.
//!
//! **Recommendation** (one decision's raw target, [`recommend`]):
//!
//! ```text
//!   backlog = 0                       → 0
//!   measured rate r (IDs/s per busy worker, smoothed; throughput.rs):
//!                                       ceil(backlog_ids / (r × target_drain))
//!   no measurement yet                → ceil(backlog_partitions / partitions_per_worker)
//!   then at most ceil(backlog_partitions / slots_per_worker) (a worker with nothing to run is
//!   waste), at least 1 while there is a backlog, clamped to [min_workers, max_workers]
//! ```
//!
//! i.e. enough workers to drain the backlog within `target_drain` at the measured pace.
//!
//! **Decision** ([`Policy::decide`], from the current desired count `n`):
//!
//! * **Activation** (scale from zero): at `n = 0` the fleet stays at zero until the backlog
//!   reaches `activation_backlog_ids` (KEDA's activation threshold).
//! * **Tolerance**: a change is made only when it is bigger than `tolerance_percent` of `n`
//!   (the HPA's 10 %): a recommendation within `n × (1 ± tolerance)` keeps `n`.
//! * **Scale-up is fast but bounded**: at once (when the recommendation is above `n × (1 +
//!   tolerance)`), to `min(recommendation, n + max(scale_up_step, n))` — at most doubling (or
//!   `scale_up_step` more) per decision, every `interval`.
//! * **Scale-down is slow**: never within a whole `scale_down_window` after the policy started
//!   or last scaled **up**, and then to the **highest** recommendation seen during the last
//!   window (stabilization: the Kubernetes HPA's rule), never below it, and only if that is below
//!   `n × (1 − tolerance)`. Scale to zero is the same rule with a recommendation of 0 throughout
//!   the window. Once the load has fallen, the count follows the window's highest recommendation
//!   down as older ones leave the window: a fleet that scaled in after a burst does not wait a
//!   whole further window per step (a fleet of 6 that fell to 5 as a burst ended reaches 0 one
//!   window after the backlog did, not two; the HPA made the same change when it replaced its
//!   "no rescale within 5 minutes of the last one" delay by the stabilization window;
//!   `docs/decisions/scaler-scale-down.md`).
//!
//! **Properties** (tests below, with proptest): the result is within `[min_workers,
//! max_workers]`; it is monotone in the backlog (more backlog never yields fewer workers from the
//! same state); a scale-down never follows a scale-up by less than one window (no up-and-down
//! reversal within a window) and never goes below a recommendation of the last window; on a noisy
//! load oscillating faster than the window the count settles near the peak and stops changing
//! (the stated bound, tested on a two-hour trace with ±40 % swings every 2 minutes and ±15 %
//! noise: at most 2 changes after the ramp).

use elk_protocol::messages::{JobRecord, JobState};
use std::collections::VecDeque;
use std::time::Duration;

/// Work not yet done, summed over active jobs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    /// IDs of active jobs not yet processed.
    pub ids: u64,
    /// Partitions of active jobs not yet completed, including those still to be planned.
    pub partitions: u64,
}

/// Sums the backlog of the active jobs.
pub fn backlog_of<'a>(jobs: impl IntoIterator<Item = &'a JobRecord>) -> Backlog {
    let mut backlog = Backlog::default();
    for job in jobs {
        if job.state != JobState::Active {
            continue;
        }
        let remaining_ids = job.ids_total().saturating_sub(job.ids_completed);
        let open_partitions = job
            .partitions_total
            .saturating_sub(job.partitions_completed);
        backlog.ids = backlog.ids.saturating_add(remaining_ids);
        backlog.partitions = backlog
            .partitions
            .saturating_add(open_partitions)
            .saturating_add(unplanned_partitions(job));
    }
    backlog
}

/// Partitions the assigner has yet to create for the known IDs beyond the job's cursor.
fn unplanned_partitions(job: &JobRecord) -> u64 {
    let Some(last) = job.planning_limit() else {
        return 0;
    };
    let first_unplanned = job.cursor.max(job.spec.range.first());
    if first_unplanned > last {
        return 0;
    }
    let unplanned_ids = last - first_unplanned + 1;
    unplanned_ids.div_ceil(job.spec.partition_size.max(1))
}

/// The policy's settings (`[scaler]`, see `ScalerSettings`).
#[derive(Debug, Clone, PartialEq)]
pub struct PolicySettings {
    pub min_workers: u32,
    pub max_workers: u32,
    /// Drain the backlog within this time at the measured pace.
    pub target_drain: Duration,
    /// At zero workers, stay at zero until the backlog has this many IDs.
    pub activation_backlog_ids: u64,
    /// A scale-up adds at most `max(scale_up_step, current)` workers per decision.
    pub scale_up_step: u32,
    /// A scale-down waits for this long after the last scale-up (or the start), and goes to the
    /// highest recommendation of the last window this long.
    pub scale_down_window: Duration,
    /// Before any throughput was measured: one worker per this many open partitions.
    pub partitions_per_worker: u64,
    /// Changes smaller than this share of the current count (in %) are not made (the HPA's
    /// tolerance): noise in the backlog and in the measured rate does not move the count.
    pub tolerance_percent: u32,
}

/// What one decision looks at.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Inputs {
    /// The decision's time (ms, any monotonic origin).
    pub now_ms: u64,
    pub backlog: Backlog,
    /// Measured IDs per second of one busy worker (smoothed); `None` before a measurement.
    pub worker_rate: Option<f64>,
    /// Partitions one worker runs at once (its capacity; the fleet's average), at least 1.
    pub slots_per_worker: u32,
}

/// The raw target of one decision: enough workers to drain the backlog within the target time
/// (see the module header), clamped to the bounds.
pub fn recommend(settings: &PolicySettings, inputs: &Inputs) -> u32 {
    let backlog = inputs.backlog;
    let max = settings.max_workers.max(settings.min_workers);
    if backlog.ids == 0 && backlog.partitions == 0 {
        return settings.min_workers;
    }
    let needed = match inputs.worker_rate {
        Some(rate) if rate > 0.0 => {
            let per_worker = rate * settings.target_drain.as_secs_f64().max(0.001);
            let needed = (backlog.ids as f64 / per_worker).ceil();
            if needed >= f64::from(u32::MAX) {
                u64::from(u32::MAX)
            } else {
                needed as u64
            }
        }
        _ => backlog
            .partitions
            .div_ceil(settings.partitions_per_worker.max(1)),
    };
    let useful = backlog
        .partitions
        .div_ceil(u64::from(inputs.slots_per_worker.max(1)));
    let needed = needed.min(useful).max(1);
    u32::try_from(needed)
        .unwrap_or(u32::MAX)
        .clamp(settings.min_workers, max)
}

/// The policy with its memory: the current count, the recommendations of the last window and
/// the time of the last change.
#[derive(Debug, Clone)]
pub struct Policy {
    settings: PolicySettings,
    current: u32,
    /// `(time, recommendation)` of the decisions within the last `scale_down_window`.
    window: VecDeque<(u64, u32)>,
    /// When the count last went up (or the policy started: a new leader waits a whole window
    /// before its first scale-down, its window being empty until then).
    last_up_ms: u64,
}

impl Policy {
    /// A policy continuing from `current` (the stored desired count) at `now_ms`.
    pub fn new(settings: PolicySettings, current: u32, now_ms: u64) -> Self {
        let max = settings.max_workers.max(settings.min_workers);
        Self {
            current: current.clamp(settings.min_workers, max),
            settings,
            window: VecDeque::new(),
            last_up_ms: now_ms,
        }
    }

    /// The current desired count.
    pub fn current(&self) -> u32 {
        self.current
    }

    pub fn settings(&self) -> &PolicySettings {
        &self.settings
    }

    /// One decision (see the module header); returns the new desired count.
    pub fn decide(&mut self, inputs: &Inputs) -> u32 {
        let settings = &self.settings;
        let now = inputs.now_ms;
        let mut recommendation = recommend(settings, inputs);
        if self.current == 0 && inputs.backlog.ids < settings.activation_backlog_ids {
            recommendation = settings.min_workers;
        }
        let window_ms = settings.scale_down_window.as_millis() as u64;
        while self
            .window
            .front()
            .is_some_and(|(at, _)| now.saturating_sub(*at) > window_ms)
        {
            self.window.pop_front();
        }
        self.window.push_back((now, recommendation));
        let tolerance = f64::from(settings.tolerance_percent.min(99)) / 100.0;
        let current = f64::from(self.current);
        let next = if f64::from(recommendation) > current * (1.0 + tolerance) {
            let step = settings.scale_up_step.max(1).max(self.current);
            recommendation.min(self.current.saturating_add(step))
        } else if recommendation < self.current && now.saturating_sub(self.last_up_ms) >= window_ms
        {
            let highest = self
                .window
                .iter()
                .map(|(_, r)| *r)
                .max()
                .unwrap_or(recommendation);
            if f64::from(highest) < current * (1.0 - tolerance) {
                highest
            } else {
                self.current
            }
        } else {
            self.current
        };
        if next > self.current {
            self.last_up_ms = now;
        }
        self.current = next;
        self.current
    }
}

#[cfg(test)]
mod tests;
