//! What an audit found and how tests check it: the hold, overlap and checkpoint types, the
//! [`AuditReport`] with its queries (`holds_of`, `checkpoints_of`, `repeat_windows`, ...), the
//! panicking assertions for invariants 2, 3 and 5, and the human-readable descriptions (`summary`,
//! `Display`), which give times relative to the first recorded event.
//!
//! The report is built by the replay ([`AuditReport::from_events`]); everything here only reads
//! it. Repeat windows (invariant 5) are derived on demand from the holds and checked against a
//! per-ID counter from [`crate::coverage`].

use crate::coverage::{CoverageReport, IdSummary, coverage};
use elk_types::{Epoch, IdRange, Incarnation, JobName, MemberId, PartitionId, PartitionLeaseToken};
use std::collections::BTreeMap;
use std::fmt;
use std::time::SystemTime;

/// A worker incarnation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Holder {
    pub worker: MemberId,
    pub incarnation: Incarnation,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (incarnation {})", self.worker, self.incarnation)
    }
}

/// How a hold ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldEnd {
    Completed,
    Failed {
        last_done: Option<u64>,
    },
    Released {
        last_done: Option<u64>,
    },
    MemberDeleted,
    MemberExpired,
    /// The member key now holds another incarnation.
    Replaced {
        by: Incarnation,
    },
    /// The member's lease (last renewal + its TTL) ran out before its key was seen removed or
    /// replaced: the worker had fenced itself by then.
    LeaseRanOut,
}

impl HoldEnd {
    /// The holder handed the partition back cleanly (no IDs can be processed twice).
    pub fn is_clean(&self) -> bool {
        matches!(self, HoldEnd::Completed | HoldEnd::Released { .. })
    }
}

impl fmt::Display for HoldEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HoldEnd::Completed => f.write_str("completed"),
            HoldEnd::Failed { last_done } => write!(f, "failed (last_done {last_done:?})"),
            HoldEnd::Released { last_done } => write!(f, "released (last_done {last_done:?})"),
            HoldEnd::MemberDeleted => f.write_str("member key deleted"),
            HoldEnd::MemberExpired => f.write_str("member key expired"),
            HoldEnd::Replaced { by } => write!(f, "member re-joined as incarnation {by}"),
            HoldEnd::LeaseRanOut => f.write_str("member lease ran out (last renewal + TTL)"),
        }
    }
}

/// One holder's hold of one grant, from the record that first listed it until it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub holder: Holder,
    pub job: JobName,
    pub partition: PartitionId,
    pub token: PartitionLeaseToken,
    pub range: IdRange,
    pub resume_from: u64,
    /// Epoch of the record that started the hold.
    pub epoch: Epoch,
    pub from: SystemTime,
    pub until: Option<(SystemTime, HoldEnd)>,
}

/// Two different holders holding the same partition at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlap {
    pub job: JobName,
    pub partition: PartitionId,
    /// The hold already in place.
    pub earlier: Hold,
    /// The hold whose start created the overlap.
    pub later: Hold,
    /// When the overlap began (the later hold's start).
    pub at: SystemTime,
    /// When the first of the two holds ended (`None`: still overlapping at the end of the audit).
    pub until: Option<SystemTime>,
}

/// A new grant resuming at or before a durable checkpoint (acknowledged progress lost).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostCheckpoint {
    pub job: JobName,
    pub partition: PartitionId,
    /// The new grant.
    pub hold: Hold,
    /// The highest durable checkpoint published before it.
    pub checkpoint: u64,
    pub checkpoint_by: Holder,
    pub checkpoint_at: SystemTime,
}

/// A durable checkpoint: progress reported by the holder during its hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurableCheckpoint {
    pub at: SystemTime,
    pub holder: Holder,
    pub token: PartitionLeaseToken,
    pub last_done: u64,
}

/// IDs of a partition that may be processed once more, because the previous hold ended without
/// a clean hand-back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepeatWindow {
    pub partition: PartitionId,
    pub token: PartitionLeaseToken,
    pub first_id: u64,
    pub last_id: u64,
    /// How the previous hold ended (`None`: it had not ended).
    pub after: Option<HoldEnd>,
}

/// Invariant 5 checked against a per-ID counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepetitionReport {
    pub job: JobName,
    pub coverage: CoverageReport,
    pub windows: Vec<RepeatWindow>,
    /// IDs processed more often than `1 + windows covering them`.
    pub unexplained: IdSummary,
}

/// Result of [`OwnershipAuditor::check`](super::OwnershipAuditor::check) /
/// [`AuditReport::from_events`].
#[derive(Debug, Clone, Default)]
pub struct AuditReport {
    /// Invariant 2 violations.
    pub overlaps: Vec<Overlap>,
    /// Invariant 3 violations.
    pub lost_checkpoints: Vec<LostCheckpoint>,
    /// Holds started (grants that took effect).
    pub grants_seen: u64,
    pub releases_seen: u64,
    pub completions_seen: u64,
    pub failures_seen: u64,
    pub checkpoints_seen: u64,
    /// Member keys that expired (TTL marker) or were purged.
    pub expiries_seen: u64,
    /// Member keys deleted (graceful leaves).
    pub member_deletes_seen: u64,
    /// Assignment records ignored: stale `(epoch, seq)` or for a dead/replaced incarnation.
    pub records_ignored: u64,
    /// Progress reports from someone not holding that grant at that time (stale token, zombie).
    pub unheld_reports: u64,
    /// Every hold, in start order.
    pub holds: Vec<Hold>,
    /// Whether the auditor had caught up with the server when the report was made.
    pub settled: bool,
    /// Undecodable values and watch errors.
    pub problems: Vec<String>,
    pub(super) checkpoints: BTreeMap<(JobName, PartitionId), Vec<DurableCheckpoint>>,
    pub(super) origin: Option<SystemTime>,
}

impl AuditReport {
    /// Time relative to the first recorded event, for messages.
    fn rel(&self, at: SystemTime) -> String {
        let origin = self.origin.unwrap_or(at);
        match at.duration_since(origin) {
            Ok(d) => format!("+{:.3}s", d.as_secs_f64()),
            Err(e) => format!("-{:.3}s", e.duration().as_secs_f64()),
        }
    }

    fn describe_hold(&self, hold: &Hold) -> String {
        let until = match &hold.until {
            Some((at, end)) => format!("until {} ({end})", self.rel(*at)),
            None => "still held at the end".to_owned(),
        };
        format!(
            "{} token {} (epoch {}, resume_from {}) from {} {until}",
            hold.holder,
            hold.token,
            hold.epoch,
            hold.resume_from,
            self.rel(hold.from)
        )
    }

    /// Human-readable description of an overlap.
    pub fn describe_overlap(&self, overlap: &Overlap) -> String {
        let until = overlap
            .until
            .map_or_else(|| "the end of the audit".to_owned(), |at| self.rel(at));
        format!(
            "job {} partition {} held twice from {} to {}:\n    held by    {}\n    granted to {}",
            overlap.job,
            overlap.partition,
            self.rel(overlap.at),
            until,
            self.describe_hold(&overlap.earlier),
            self.describe_hold(&overlap.later)
        )
    }

    /// Panics describing every overlap (invariant 2), if any.
    pub fn assert_no_overlap(&self) {
        if self.overlaps.is_empty() {
            return;
        }
        let details: Vec<String> = self
            .overlaps
            .iter()
            .take(10)
            .map(|overlap| format!("  - {}", self.describe_overlap(overlap)))
            .collect();
        panic!(
            "ownership overlap (invariant 2): {} overlaps{}\n{}\n{}",
            self.overlaps.len(),
            if self.overlaps.len() > 10 {
                " (first 10 shown)"
            } else {
                ""
            },
            details.join("\n"),
            self.summary()
        );
    }

    /// Holds that started under an older epoch than one a hold had started under before them:
    /// each with the newest hold before it.
    pub fn stale_epoch_holds(&self) -> Vec<(&Hold, &Hold)> {
        let mut newest: Option<&Hold> = None;
        let mut stale = Vec::new();
        for hold in &self.holds {
            match newest {
                Some(top) if hold.epoch < top.epoch => stale.push((hold, top)),
                Some(top) if hold.epoch == top.epoch => {}
                _ => newest = Some(hold),
            }
        }
        stale
    }

    /// Panics if a grant took effect under an older epoch after one had taken effect under a
    /// newer epoch (invariant 4, fencing: nothing written under an older epoch takes effect once
    /// a newer one exists). Holds are in start (server time) order, so their epochs must never
    /// go down.
    pub fn assert_fencing(&self) {
        let stale = self.stale_epoch_holds();
        if stale.is_empty() {
            return;
        }
        let details: Vec<String> = stale
            .iter()
            .take(10)
            .map(|(hold, newer)| {
                format!(
                    "  - {}
    after {}",
                    self.describe_hold(hold),
                    self.describe_hold(newer)
                )
            })
            .collect();
        panic!(
            "fencing violated (invariant 4): {} grants took effect under an older epoch\n{}",
            stale.len(),
            details.join("\n")
        );
    }

    /// Panics if a new grant resumed at or before a durable checkpoint (invariant 3).
    pub fn assert_durable_progress(&self) {
        if self.lost_checkpoints.is_empty() {
            return;
        }
        let details: Vec<String> = self
            .lost_checkpoints
            .iter()
            .take(10)
            .map(|lost| {
                format!(
                    "  - job {} partition {}: checkpoint {} by {} at {} lost: {}",
                    lost.job,
                    lost.partition,
                    lost.checkpoint,
                    lost.checkpoint_by,
                    self.rel(lost.checkpoint_at),
                    self.describe_hold(&lost.hold)
                )
            })
            .collect();
        panic!(
            "durable progress violated (invariant 3): {} grants resumed at or before an acknowledged checkpoint\n{}",
            self.lost_checkpoints.len(),
            details.join("\n")
        );
    }

    /// Durable checkpoints of a partition (`last_done` values, in server-time order): progress
    /// its holders published while holding it, including `released`/`failed` `last_done` and the
    /// range end on `completed`.
    pub fn checkpoints_of(&self, job: &JobName, partition: PartitionId) -> Vec<u64> {
        self.durable_checkpoints_of(job, partition)
            .iter()
            .map(|cp| cp.last_done)
            .collect()
    }

    /// [`AuditReport::checkpoints_of`] with who published each and when.
    pub fn durable_checkpoints_of(
        &self,
        job: &JobName,
        partition: PartitionId,
    ) -> &[DurableCheckpoint] {
        self.checkpoints
            .get(&(job.clone(), partition))
            .map_or(&[], Vec::as_slice)
    }

    /// The highest durable checkpoint of every partition that has one.
    pub fn highest_checkpoints(&self) -> BTreeMap<(JobName, PartitionId), u64> {
        self.checkpoints
            .iter()
            .filter_map(|(key, cps)| Some((key.clone(), cps.iter().map(|cp| cp.last_done).max()?)))
            .collect()
    }

    /// Every hold of a partition, in start order.
    pub fn holds_of(&self, job: &JobName, partition: PartitionId) -> Vec<&Hold> {
        self.holds
            .iter()
            .filter(|hold| &hold.job == job && hold.partition == partition)
            .collect()
    }

    /// Where IDs of `job` may legitimately be processed again (see the module docs).
    pub fn repeat_windows(&self, job: &JobName) -> Vec<RepeatWindow> {
        let mut by_partition: BTreeMap<PartitionId, Vec<&Hold>> = BTreeMap::new();
        for hold in self.holds.iter().filter(|hold| &hold.job == job) {
            by_partition.entry(hold.partition).or_default().push(hold);
        }
        let mut windows = Vec::new();
        for (partition, holds) in by_partition {
            for pair in holds.windows(2) {
                let (previous, next) = (pair[0], pair[1]);
                let after = previous.until.as_ref().map(|(_, end)| end.clone());
                if after.as_ref().is_some_and(HoldEnd::is_clean) {
                    continue;
                }
                if next.resume_from > next.range.last() {
                    continue;
                }
                windows.push(RepeatWindow {
                    partition,
                    token: next.token,
                    first_id: next.resume_from.max(next.range.first()),
                    last_id: next.range.last(),
                    after,
                });
            }
        }
        windows
    }

    /// Checks a per-ID counter of `job` (`counts[i]` = times ID `first_id + i` was processed)
    /// against the repeat windows (invariant 5).
    pub fn repetition(&self, job: &JobName, first_id: u64, counts: &[u32]) -> RepetitionReport {
        let windows = self.repeat_windows(job);
        let mut allowed = vec![1u32; counts.len()];
        let last_index = counts.len() as u64;
        for window in &windows {
            let from = window.first_id.saturating_sub(first_id);
            let to = window
                .last_id
                .saturating_sub(first_id)
                .saturating_add(1)
                .min(last_index);
            if window.last_id < first_id || from >= to {
                continue;
            }
            for slot in &mut allowed[from as usize..to as usize] {
                *slot += 1;
            }
        }
        let unexplained = IdSummary::from_sorted_ids(
            counts
                .iter()
                .zip(&allowed)
                .enumerate()
                .filter(|(_, (count, allowed))| count > allowed)
                .map(|(i, _)| first_id + i as u64),
        );
        RepetitionReport {
            job: job.clone(),
            coverage: coverage(first_id, counts),
            windows,
            unexplained,
        }
    }

    /// Panics if some ID of `job` was processed more often than crashes allow (invariant 5).
    pub fn assert_bounded_repetition(&self, job: &JobName, first_id: u64, counts: &[u32]) {
        let report = self.repetition(job, first_id, counts);
        if report.unexplained.is_empty() {
            return;
        }
        let windows: Vec<String> = report
            .windows
            .iter()
            .take(10)
            .map(|w| {
                let after = w
                    .after
                    .as_ref()
                    .map_or_else(|| "an open hold".to_owned(), ToString::to_string);
                format!(
                    "partition {} token {}: {}-{} after {after}",
                    w.partition, w.token, w.first_id, w.last_id
                )
            })
            .collect();
        // Every hold over the first unexplained ID: what the auditor saw of that partition.
        let first = report.unexplained.first_ranges.first().map_or(0, |r| r.0);
        let holds: Vec<String> = self
            .holds
            .iter()
            .filter(|hold| &hold.job == job && hold.range.contains(first))
            .map(|hold| {
                let until = hold.until.as_ref().map_or_else(
                    || "open".to_owned(),
                    |(at, end)| format!("{end} at {}", self.rel(*at)),
                );
                format!(
                    "{}#{} token {} resume {} from {} until {until}",
                    hold.holder.worker,
                    hold.holder.incarnation,
                    hold.token,
                    hold.resume_from,
                    self.rel(hold.from)
                )
            })
            .collect();
        panic!(
            "bounded repetition violated (invariant 5) for job {job}: unexplained repeats: {}\n  {}\n  allowed windows ({}): {}\n  {}\n  holds over ID {first}: {}",
            report.unexplained,
            report.coverage,
            report.windows.len(),
            if windows.is_empty() {
                "none".to_owned()
            } else {
                windows.join("; ")
            },
            self.summary(),
            if holds.is_empty() {
                "none".to_owned()
            } else {
                holds.join("; ")
            }
        );
    }

    /// One line of counters.
    pub fn summary(&self) -> String {
        format!(
            "audit: {} grants, {} releases, {} completions, {} failures, {} checkpoints, {} expiries, {} member deletes, {} records ignored, {} unheld reports, {} overlaps, {} lost checkpoints{}{}",
            self.grants_seen,
            self.releases_seen,
            self.completions_seen,
            self.failures_seen,
            self.checkpoints_seen,
            self.expiries_seen,
            self.member_deletes_seen,
            self.records_ignored,
            self.unheld_reports,
            self.overlaps.len(),
            self.lost_checkpoints.len(),
            if self.settled { "" } else { " (NOT settled)" },
            if self.problems.is_empty() {
                String::new()
            } else {
                format!("; problems: {:?}", self.problems)
            }
        )
    }
}

impl fmt::Display for AuditReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary())?;
        for overlap in &self.overlaps {
            write!(f, "\n  - {}", self.describe_overlap(overlap))?;
        }
        Ok(())
    }
}
