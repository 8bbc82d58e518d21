//! Checks over a per-ID processing counter (invariants 1 and 5 of ARCHITECTURE §6).
//!
//! A scenario counts how often each ID of a job's range was processed (`counts[i]` is the count
//! of ID `first_id + i`), snapshots the counter into a `&[u32]` and calls
//! [`assert_full_coverage`] (every ID at least once), [`assert_exact_coverage`] (every ID exactly
//! once) or, with an [`crate::AuditReport`], `assert_bounded_repetition` (repeats only where a
//! crash allows them). Failures list the offending IDs compactly: totals plus the first ranges.

use std::fmt;

/// How many ID ranges a summary spells out before "and N more".
const SHOWN_RANGES: usize = 8;

/// A set of IDs, summarised: how many, in how many contiguous ranges, and the first ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdSummary {
    /// Number of IDs in the set.
    pub ids: u64,
    /// Number of maximal contiguous ranges they form.
    pub ranges: u64,
    /// The first ranges `(first, last)`, inclusive (at most 8).
    pub first_ranges: Vec<(u64, u64)>,
}

impl IdSummary {
    pub fn is_empty(&self) -> bool {
        self.ids == 0
    }

    /// Builds a summary from IDs given in increasing order.
    pub fn from_sorted_ids(ids: impl IntoIterator<Item = u64>) -> Self {
        let mut summary = IdSummary::default();
        let mut current: Option<(u64, u64)> = None;
        for id in ids {
            summary.ids += 1;
            current = match current {
                Some((first, last)) if last.checked_add(1) == Some(id) => Some((first, id)),
                Some(done) => {
                    summary.push_range(done);
                    Some((id, id))
                }
                None => Some((id, id)),
            };
        }
        if let Some(done) = current {
            summary.push_range(done);
        }
        summary
    }

    fn push_range(&mut self, range: (u64, u64)) {
        self.ranges += 1;
        if self.first_ranges.len() < SHOWN_RANGES {
            self.first_ranges.push(range);
        }
    }
}

impl fmt::Display for IdSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ids == 0 {
            return f.write_str("none");
        }
        write!(f, "{} ids in {} ranges: ", self.ids, self.ranges)?;
        for (index, (first, last)) in self.first_ranges.iter().enumerate() {
            if index > 0 {
                f.write_str(", ")?;
            }
            if first == last {
                write!(f, "{first}")?;
            } else {
                write!(f, "{first}-{last}")?;
            }
        }
        let hidden = self.ranges - self.first_ranges.len() as u64;
        if hidden > 0 {
            write!(f, ", and {hidden} more ranges")?;
        }
        Ok(())
    }
}

/// What a per-ID counter says about coverage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoverageReport {
    pub first_id: u64,
    /// IDs counted (the length of the counter).
    pub total_ids: u64,
    /// IDs processed zero times.
    pub missing: IdSummary,
    /// IDs processed more than once.
    pub repeated: IdSummary,
    /// Sum over repeated IDs of `count - 1`.
    pub extra_runs: u64,
}

impl fmt::Display for CoverageReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let last = self.first_id + self.total_ids.saturating_sub(1);
        write!(
            f,
            "ids {}..={last}: missing {}; repeated {} ({} extra runs)",
            self.first_id, self.missing, self.repeated, self.extra_runs
        )
    }
}

/// Summarises `counts` (`counts[i]` = times ID `first_id + i` was processed).
pub fn coverage(first_id: u64, counts: &[u32]) -> CoverageReport {
    let ids = || {
        counts
            .iter()
            .enumerate()
            .map(|(i, c)| (first_id + i as u64, *c))
    };
    CoverageReport {
        first_id,
        total_ids: counts.len() as u64,
        missing: IdSummary::from_sorted_ids(ids().filter(|(_, c)| *c == 0).map(|(id, _)| id)),
        repeated: IdSummary::from_sorted_ids(ids().filter(|(_, c)| *c > 1).map(|(id, _)| id)),
        extra_runs: counts.iter().map(|c| u64::from(c.saturating_sub(1))).sum(),
    }
}

/// Invariant 1: every ID was processed at least once. Panics listing the missing IDs.
pub fn assert_full_coverage(first_id: u64, counts: &[u32]) {
    let report = coverage(first_id, counts);
    assert!(
        report.missing.is_empty(),
        "coverage violated (invariant 1): {report}"
    );
}

/// Every ID was processed exactly once (no crash happened). Panics listing missing and repeated
/// IDs.
pub fn assert_exact_coverage(first_id: u64, counts: &[u32]) {
    let report = coverage(first_id, counts);
    assert!(
        report.missing.is_empty() && report.repeated.is_empty(),
        "exact coverage violated: {report}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_group_ranges_and_truncate() {
        let summary = IdSummary::from_sorted_ids([1, 2, 3, 7, 9, 10]);
        assert_eq!(summary.ids, 6);
        assert_eq!(summary.ranges, 3);
        assert_eq!(summary.to_string(), "6 ids in 3 ranges: 1-3, 7, 9-10");
        let many = IdSummary::from_sorted_ids((0..40).map(|i| i * 2));
        assert_eq!(many.first_ranges.len(), SHOWN_RANGES);
        assert!(many.to_string().ends_with("and 32 more ranges"), "{many}");
        assert_eq!(IdSummary::from_sorted_ids([]).to_string(), "none");
    }

    #[test]
    fn coverage_reports_missing_and_repeated() {
        let counts = [1, 0, 0, 2, 1, 3];
        let report = coverage(100, &counts);
        assert_eq!(report.missing.first_ranges, vec![(101, 102)]);
        assert_eq!(report.repeated.first_ranges, vec![(103, 103), (105, 105)]);
        assert_eq!(report.extra_runs, 3);
        assert_full_coverage(0, &[1, 2, 1]);
        assert_exact_coverage(0, &[1, 1, 1]);
        let text = std::panic::catch_unwind(|| assert_full_coverage(100, &counts))
            .unwrap_err()
            .downcast::<String>()
            .unwrap();
        assert!(
            text.contains("missing 2 ids in 1 ranges: 101-102"),
            "{text}"
        );
        assert!(std::panic::catch_unwind(|| assert_exact_coverage(0, &[1, 2])).is_err());
    }
}
