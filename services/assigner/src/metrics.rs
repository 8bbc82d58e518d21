//! The assigner's metrics (Prometheus; every name is documented in `docs/observability.md`),
//! shared with whoever started the replica (tests, `elkctl`, the bench).
//!
//! * At the leader loop's I/O edge: progress reports by outcome and reason, reclaims and their
//!   latency, KV writes by bucket, terms, round durations.
//! * The model's [`Counters`] restart from 0 with every term; [`AssignerMetrics::round_done`]
//!   adds what they grew by since the last round to monotonic Prometheus counters, and records the
//!   hand-overs the model timed and the rebalancing moves of its rounds (the churn budget).
//! * Per-job gauges (partitions by status, IDs done and left, backlog age) come from
//!   [`AssignerState::gauges`] once per second and are exported only while this replica leads:
//!   they vanish when the term ends, so a standby never exports stale numbers.

use crate::model::{AssignerState, Counters, ModelGauges};
use elk_runtime::BoundAddress;
use elk_runtime::metrics::{duration_buckets, latency_buckets};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Label values of `elk_assigner_progress_reports_total`: outcome → reasons.
pub const PROGRESS_REASONS: [(&str, &[&str]); 3] = [
    (
        "applied",
        &["checkpoint", "completed", "failed", "released"],
    ),
    (
        "rejected",
        &["unknown_partition", "stale_token", "out_of_range"],
    ),
    ("malformed", &["undecodable", "wrong_subject"]),
];

/// Buckets of `elk_assigner_rebalance_moves` (moves started in one round).
const REBALANCE_MOVE_BUCKETS: [f64; 14] = [
    1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1_000.0, 2_000.0, 5_000.0, 10_000.0,
];

/// How often the per-job gauges are recomputed at most (one pass over the live partitions).
const GAUGE_INTERVAL: Duration = Duration::from_secs(1);

type Labels2 = [(&'static str, &'static str); 2];
type Labels1 = [(&'static str, &'static str); 1];

/// What an assigner replica exports. Share it with `Arc`; every counter is monotonic over the
/// replica's life.
#[derive(Debug)]
pub struct AssignerMetrics {
    /// Where the replica serves `/metrics` once bound (`metrics_listen`).
    pub endpoint: BoundAddress,
    /// Where the replica serves the HTTP admin API and status page once bound (`http_listen`).
    pub http_api: BoundAddress,
    progress: Family<Labels2, Counter>,
    /// Partitions of departed workers taken back (after their progress barrier).
    pub partitions_reclaimed: Counter,
    /// Times the leader found its durable progress consumer missing and re-created it.
    pub progress_consumer_recreated: Counter,
    /// Progress reports removed from the stream before the leader received them.
    pub progress_lost: Counter,
    /// Applied progress reports purged from the stream by the leader.
    pub progress_trimmed: Counter,
    kv_writes: Family<Labels2, Counter>,
    partition_writes: Family<Labels1, Counter>,
    /// Leader terms this replica started.
    pub leader_terms: Counter,
    pub grants: Counter,
    revocations: Family<Labels1, Counter>,
    /// Gaps found (full audit at leader start, or in front of a new partition).
    pub gaps_detected: Counter,
    /// Partitions created to fill gaps.
    pub gaps_repaired: Counter,
    /// Overlapping partitions found or refused.
    pub overlaps_detected: Counter,
    /// Revokes not answered within the revoke timeout.
    pub revokes_overdue: Counter,
    /// Failed attempts scheduled for a retry.
    pub retries_scheduled: Counter,
    /// Partitions parked as `failed`.
    pub partitions_parked: Counter,
    /// Completed partitions deleted below their job's low watermark.
    pub partitions_compacted: Counter,
    /// Of `partitions_parked`: quarantined because their holders kept dying.
    pub partitions_quarantined: Counter,
    /// Revoke → the owner's release.
    pub handover_duration: Histogram,
    /// A worker leaving the view → its partitions pending again (the progress barrier's wait).
    pub reclaim_latency: Histogram,
    /// One iteration of the leader loop: apply events, reconcile, write, ack, reply.
    pub round_duration: Histogram,
    /// Rebalancing moves (revokes to even out load) started per round that started any: at most
    /// the churn budget's cap when one is set.
    pub rebalance_moves: Histogram,
    /// Moves the balance wanted in those rounds that the churn budget held back.
    pub rebalance_moves_deferred: Counter,
    /// The model's counters as last added in (reset with every term).
    published: Mutex<Counters>,
    leader: LeaderGauges,
}

impl Default for AssignerMetrics {
    fn default() -> Self {
        Self {
            endpoint: BoundAddress::default(),
            http_api: BoundAddress::default(),
            progress: Family::default(),
            partitions_reclaimed: Counter::default(),
            progress_consumer_recreated: Counter::default(),
            progress_lost: Counter::default(),
            progress_trimmed: Counter::default(),
            kv_writes: Family::default(),
            partition_writes: Family::default(),
            leader_terms: Counter::default(),
            grants: Counter::default(),
            revocations: Family::default(),
            gaps_detected: Counter::default(),
            gaps_repaired: Counter::default(),
            overlaps_detected: Counter::default(),
            revokes_overdue: Counter::default(),
            retries_scheduled: Counter::default(),
            partitions_parked: Counter::default(),
            partitions_compacted: Counter::default(),
            partitions_quarantined: Counter::default(),
            handover_duration: Histogram::new(duration_buckets()),
            reclaim_latency: Histogram::new(duration_buckets()),
            round_duration: Histogram::new(latency_buckets()),
            rebalance_moves: Histogram::new(REBALANCE_MOVE_BUCKETS),
            rebalance_moves_deferred: Counter::default(),
            published: Mutex::new(Counters::default()),
            leader: LeaderGauges::default(),
        }
    }
}

impl AssignerMetrics {
    pub(crate) fn register(&self, registry: &mut Registry) {
        let counters: [(&str, &str, &Counter); 15] = [
            (
                "elk_assigner_partitions_reclaimed",
                "Partitions of departed workers taken back after their progress barrier",
                &self.partitions_reclaimed,
            ),
            (
                "elk_assigner_progress_consumer_recreated",
                "Times the leader found its durable progress consumer missing and re-created it (without ending its term)",
                &self.progress_consumer_recreated,
            ),
            (
                "elk_assigner_progress_lost",
                "Progress reports removed from the stream (age limit, another client) before the leader received them",
                &self.progress_lost,
            ),
            (
                "elk_assigner_progress_trimmed",
                "Applied progress reports purged from the stream (below every consumer's ack floor)",
                &self.progress_trimmed,
            ),
            (
                "elk_assigner_leader_terms",
                "Leader terms this replica started",
                &self.leader_terms,
            ),
            (
                "elk_assigner_grants",
                "Partitions granted (each with a fresh lease token)",
                &self.grants,
            ),
            (
                "elk_assigner_gaps_detected",
                "Coverage gaps found (audit at takeover, or in front of a new partition)",
                &self.gaps_detected,
            ),
            (
                "elk_assigner_gaps_repaired",
                "Partitions created to fill coverage gaps",
                &self.gaps_repaired,
            ),
            (
                "elk_assigner_overlaps_detected",
                "Overlapping partitions found or refused",
                &self.overlaps_detected,
            ),
            (
                "elk_assigner_revokes_overdue",
                "Revokes not answered within revoke_timeout (the partition keeps waiting)",
                &self.revokes_overdue,
            ),
            (
                "elk_assigner_retries_scheduled",
                "Failed attempts scheduled for a retry after a back-off",
                &self.retries_scheduled,
            ),
            (
                "elk_assigner_partitions_parked",
                "Partitions parked as failed (attempts exhausted or a permanent error)",
                &self.partitions_parked,
            ),
            (
                "elk_assigner_partitions_compacted",
                "Completed partitions deleted below their job's low watermark",
                &self.partitions_compacted,
            ),
            (
                "elk_assigner_partitions_quarantined",
                "Partitions parked as failed because their holders kept dying while holding them (quarantine_after_deaths)",
                &self.partitions_quarantined,
            ),
            (
                "elk_assigner_rebalance_moves_deferred",
                "Rebalancing moves the balance wanted in a round that the churn budget ([assigner.rebalance]) held back to a later round",
                &self.rebalance_moves_deferred,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
        let labelled = [
            (
                "elk_assigner_progress_reports",
                "Progress reports by outcome (applied, rejected, malformed) and reason",
                &self.progress,
            ),
            (
                "elk_assigner_kv_writes",
                "KV writes of the leader by bucket (partitions, jobs, assignments) and operation (put, purge, delete)",
                &self.kv_writes,
            ),
        ];
        for (name, help, family) in labelled {
            registry.register(name, help, family.clone());
        }
        registry.register(
            "elk_assigner_partition_writes",
            "Puts of the partitions bucket by kind: create (a new key, granted at once or pending), update (grant, revoke, checkpoint, release, failure), completed (the baseline write path only)",
            self.partition_writes.clone(),
        );
        registry.register(
            "elk_assigner_revocations",
            "Partitions revoked, by cause: rebalance (owner over quota), job_stopped (paused or cancelled), drain (owner asked to drain) or split (a straggler re-cut over idle workers)",
            self.revocations.clone(),
        );
        let histograms = [
            (
                "elk_assigner_handover_duration_seconds",
                "Hand-over of a partition between live workers: revoke until the owner's release",
                &self.handover_duration,
            ),
            (
                "elk_assigner_reclaim_latency_seconds",
                "From the view without a departed worker to its partitions pending again (progress barrier)",
                &self.reclaim_latency,
            ),
            (
                "elk_assigner_rebalance_moves",
                "Partitions revoked to even out load in one round, over the rounds that moved any (at most the churn budget's cap)",
                &self.rebalance_moves,
            ),
            (
                "elk_assigner_round_duration_seconds",
                "One leader loop iteration: apply events, reconcile, write the change set, ack, reply",
                &self.round_duration,
            ),
        ];
        for (name, help, histogram) in histograms {
            registry.register(name, help, histogram.clone());
        }
        registry.register_collector(Box::new(self.leader.clone()));
    }

    /// A leader term begins: the model's counters start again from 0.
    pub(crate) fn term_started(&self) {
        self.leader_terms.inc();
        *lock(&self.published) = Counters::default();
    }

    /// The term ended: the leader-only gauges are no longer this replica's to export.
    pub(crate) fn term_ended(&self) {
        self.leader.clear();
    }

    /// Counts one progress report (`outcome` and `reason` from [`PROGRESS_REASONS`]).
    pub(crate) fn progress(&self, outcome: &'static str, reason: &'static str) {
        debug_assert!(
            PROGRESS_REASONS
                .iter()
                .any(|(o, reasons)| *o == outcome && reasons.contains(&reason))
        );
        self.progress
            .get_or_create(&[("outcome", outcome), ("reason", reason)])
            .inc();
    }

    /// Progress reports of one outcome (`applied`, `rejected`, `malformed`), every reason.
    pub fn progress_reports(&self, outcome: &str) -> u64 {
        PROGRESS_REASONS
            .iter()
            .filter(|(o, _)| *o == outcome)
            .flat_map(|(o, reasons)| {
                reasons
                    .iter()
                    .map(move |reason| [("outcome", *o), ("reason", *reason)])
            })
            .filter_map(|labels| self.progress.get(&labels).map(|counter| counter.get()))
            .sum()
    }

    /// Progress reports of one outcome and reason (e.g. `rejected`, `out_of_range`).
    pub fn progress_reason(&self, outcome: &'static str, reason: &'static str) -> u64 {
        self.progress
            .get(&[("outcome", outcome), ("reason", reason)])
            .map_or(0, |counter| counter.get())
    }

    /// Counts `count` KV operations on `bucket`.
    pub(crate) fn kv_writes(&self, bucket: &'static str, op: &'static str, count: u64) {
        self.kv_writes
            .get_or_create(&[("bucket", bucket), ("op", op)])
            .inc_by(count);
    }

    /// Counts `count` puts of the partitions bucket of one kind (`create`, `update`,
    /// `completed`).
    pub(crate) fn partition_writes(&self, kind: &'static str, count: u64) {
        if count > 0 {
            self.partition_writes
                .get_or_create(&[("kind", kind)])
                .inc_by(count);
        }
    }

    /// KV operations of one bucket (`partitions`, `jobs`, `assignments`, `fleet`) and operation
    /// (`put`, `purge`, `delete`).
    pub fn kv_writes_of(&self, bucket: &'static str, op: &'static str) -> u64 {
        self.kv_writes
            .get(&[("bucket", bucket), ("op", op)])
            .map_or(0, |counter| counter.get())
    }

    /// Puts of the partitions bucket of one kind (`create`, `update`, `completed`).
    pub fn partition_writes_of(&self, kind: &'static str) -> u64 {
        self.partition_writes
            .get(&[("kind", kind)])
            .map_or(0, |counter| counter.get())
    }

    /// KV operations of every bucket and kind.
    pub fn kv_write_count(&self) -> u64 {
        let buckets = ["partitions", "jobs", "assignments"];
        let ops = ["put", "purge", "purge_range", "delete"];
        buckets
            .into_iter()
            .flat_map(|bucket| ops.map(|op| [("bucket", bucket), ("op", op)]))
            .filter_map(|labels| self.kv_writes.get(&labels).map(|c| c.get()))
            .sum()
    }

    /// Revocations of every cause.
    pub fn revocations(&self) -> u64 {
        ["rebalance", "job_stopped", "drain", "split"]
            .into_iter()
            .map(|cause| self.revocations_by(cause))
            .sum()
    }

    /// Revocations of one cause (`rebalance`, `job_stopped`, `drain`, `split`).
    pub fn revocations_by(&self, cause: &'static str) -> u64 {
        self.revocations
            .get(&[("cause", cause)])
            .map_or(0, |counter| counter.get())
    }

    /// A departed worker's partitions were reclaimed `waited` after it left the view.
    pub(crate) fn reclaimed(&self, partitions: u64, waited: Duration) {
        self.partitions_reclaimed.inc_by(partitions);
        self.reclaim_latency.observe(waited.as_secs_f64());
    }

    /// After a round: adds the growth of the model's counters, records its hand-overs and the
    /// round's duration, and refreshes the leader-only gauges (at most every second).
    pub(crate) fn round_done(
        &self,
        state: &mut AssignerState,
        round_started: Instant,
        pending_reclaims: usize,
    ) {
        self.add_counters(&state.counters());
        for handover_ms in state.take_handover_durations() {
            self.handover_duration
                .observe(Duration::from_millis(handover_ms).as_secs_f64());
        }
        for round in state.take_rebalance_rounds() {
            self.rebalance_moves.observe(round.moved as f64);
            self.rebalance_moves_deferred.inc_by(round.deferred);
        }
        self.leader.refresh(|| state.gauges(), pending_reclaims);
        self.round_duration
            .observe(round_started.elapsed().as_secs_f64());
    }

    fn add_counters(&self, now: &Counters) {
        let mut published = lock(&self.published);
        let before = *published;
        let grow = |counter: &Counter, now: u64, before: u64| {
            counter.inc_by(now.saturating_sub(before));
        };
        grow(&self.grants, now.grants, before.grants);
        grow(&self.gaps_detected, now.gaps_detected, before.gaps_detected);
        grow(&self.gaps_repaired, now.gaps_repaired, before.gaps_repaired);
        grow(
            &self.overlaps_detected,
            now.overlaps_detected,
            before.overlaps_detected,
        );
        grow(
            &self.revokes_overdue,
            now.revokes_overdue,
            before.revokes_overdue,
        );
        grow(
            &self.retries_scheduled,
            now.retries_scheduled,
            before.retries_scheduled,
        );
        grow(
            &self.partitions_parked,
            now.partitions_parked,
            before.partitions_parked,
        );
        grow(
            &self.partitions_compacted,
            now.partitions_compacted,
            before.partitions_compacted,
        );
        grow(
            &self.partitions_quarantined,
            now.partitions_quarantined,
            before.partitions_quarantined,
        );
        let stopped = |c: &Counters| c.revocations_job_stopped;
        let drained = |c: &Counters| c.revocations_drain;
        let split = |c: &Counters| c.revocations_split;
        let rebalanced = |c: &Counters| {
            c.revocations
                .saturating_sub(c.revocations_job_stopped)
                .saturating_sub(c.revocations_drain)
                .saturating_sub(c.revocations_split)
        };
        grow(
            &self.revocations.get_or_create(&[("cause", "job_stopped")]),
            stopped(now),
            stopped(&before),
        );
        grow(
            &self.revocations.get_or_create(&[("cause", "drain")]),
            drained(now),
            drained(&before),
        );
        grow(
            &self.revocations.get_or_create(&[("cause", "split")]),
            split(now),
            split(&before),
        );
        grow(
            &self.revocations.get_or_create(&[("cause", "rebalance")]),
            rebalanced(now),
            rebalanced(&before),
        );
        *published = *now;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One per-job gauge's value, read from a job's gauges.
type JobValue = fn(&crate::model::JobGauges) -> f64;

/// The gauges only the leader exports, as last computed.
#[derive(Debug, Clone, Default)]
struct LeaderGauges {
    inner: Arc<Mutex<Option<LeaderSnapshot>>>,
}

#[derive(Debug, Clone)]
struct LeaderSnapshot {
    computed_at: Instant,
    model: ModelGauges,
    pending_reclaims: usize,
}

impl LeaderGauges {
    fn refresh(&self, compute: impl FnOnce() -> ModelGauges, pending_reclaims: usize) {
        let mut snapshot = lock(&self.inner);
        if let Some(current) = snapshot.as_mut() {
            current.pending_reclaims = pending_reclaims;
            if current.computed_at.elapsed() < GAUGE_INTERVAL {
                return;
            }
        }
        *snapshot = Some(LeaderSnapshot {
            computed_at: Instant::now(),
            model: compute(),
            pending_reclaims,
        });
    }

    fn clear(&self) {
        *lock(&self.inner) = None;
    }
}

impl Collector for LeaderGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(snapshot) = lock(&self.inner).clone() else {
            return Ok(());
        };
        let scalars = [
            (
                "elk_assigner_live_workers",
                "Workers in the membership view the leader places partitions on.",
                snapshot.model.live_workers,
            ),
            (
                "elk_assigner_draining_workers",
                "Live workers shutting down (granted nothing new).",
                snapshot.model.draining_workers,
            ),
            (
                "elk_assigner_pending_reclaims",
                "Departed workers whose partitions wait for their progress barrier.",
                snapshot.pending_reclaims as u64,
            ),
        ];
        for (name, help, value) in scalars {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        let jobs = &snapshot.model.jobs;
        if jobs.is_empty() {
            return Ok(());
        }
        let job_label = |job: &crate::model::JobGauges| ("job", job.job.to_string());
        let mut family = encoder.encode_descriptor(
            "elk_job_partitions",
            "Partitions of a job by status: live ones (pending includes retry back-off), and completed from the job record.",
            None,
            MetricType::Gauge,
        )?;
        for job in jobs {
            for (status, count) in &job.partitions {
                let labels = [job_label(job), ("status", (*status).to_owned())];
                ConstGauge::new(*count).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "elk_job_state",
            "1 for the job's current state (active, paused, completed).",
            None,
            MetricType::Gauge,
        )?;
        for job in jobs {
            let state = format!("{:?}", job.state).to_lowercase();
            let labels = [job_label(job), ("state", state)];
            ConstGauge::new(1u64).encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "elk_job_ids_completed",
            "IDs of the job processed (from the job record: survives leader changes).",
            None,
            MetricType::Counter,
        )?;
        for job in jobs {
            ConstCounter::new(job.ids_completed)
                .encode(family.encode_family(&[job_label(job)])?)?;
        }
        let per_job: [(&str, &str, JobValue); 3] = [
            (
                "elk_job_ids_remaining",
                "IDs of the job known and not processed yet (open-ended: up to the planner's max).",
                |job| job.ids_remaining as f64,
            ),
            (
                "elk_job_backlog_age_seconds",
                "How long the job's oldest pending partition has waited to be granted (0: none waits).",
                |job| job.backlog_age_ms as f64 / 1_000.0,
            ),
            (
                "elk_job_partitions_quarantined",
                "Partitions of the job parked by quarantine (their holders kept dying); part of elk_job_partitions{status=\"failed\"}.",
                |job| job.quarantined as f64,
            ),
        ];
        for (name, help, value) in per_job {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for job in jobs {
                ConstGauge::new(value(job)).encode(family.encode_family(&[job_label(job)])?)?;
            }
        }
        Ok(())
    }
}
