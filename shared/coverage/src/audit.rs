//! The full audit: one sweep over coverage entries sorted by their first id, `O(n)`.
//!
//! The sweep keeps the highest id covered so far. An entry that starts past it leaves a *gap*
//! before it; an entry that starts at or below it covers some ids a second time, an *overlap*.
//! Both come out as sorted, maximal, disjoint runs of ids.

use crate::range::IdRange;
use serde::{Deserialize, Serialize};
use std::iter::Peekable;

/// What a full audit found up to a given id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Audit {
    /// Maximal runs of ids from the start up to the audited id that nothing covers.
    pub gaps: Vec<IdRange>,
    /// Maximal runs of ids covered more than once. Always empty for a [`Coverage`], whose
    /// operations refuse overlaps; a [`CoverageRecord`] read from elsewhere may have some.
    ///
    /// [`Coverage`]: crate::Coverage
    pub overlaps: Vec<IdRange>,
}

impl Audit {
    pub fn is_clean(&self) -> bool {
        self.gaps.is_empty() && self.overlaps.is_empty()
    }
}

/// The serialized form of a [`Coverage`](crate::Coverage), also usable on its own to audit
/// state that may be inconsistent (`Coverage` refuses to deserialize a record with overlaps).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoverageRecord {
    /// First id of the job's id space.
    pub start: u64,
    /// Every id in `[start, low_watermark]` is completed; `None`: `start` is not.
    pub low_watermark: Option<u64>,
    /// Completed intervals above the watermark.
    pub completed: Vec<IdRange>,
    /// Live partitions.
    pub live: Vec<IdRange>,
}

impl CoverageRecord {
    /// Gaps and overlaps among the watermark, the completed intervals and the live ranges, up to
    /// `up_to` inclusive. `O(n)` when the lists are sorted by first id (as `Coverage` writes
    /// them), `O(n log n)` otherwise.
    ///
    /// ```
    /// use elk_coverage::{CoverageRecord, IdRange};
    ///
    /// let range = |min, max| IdRange::new(min, max).unwrap();
    /// let record = CoverageRecord {
    ///     start: 0,
    ///     low_watermark: Some(99),
    ///     completed: vec![range(150, 199)],
    ///     live: vec![range(90, 120), range(300, 399)],
    /// };
    /// let audit = record.audit(499);
    /// assert_eq!(audit.gaps, vec![range(121, 149), range(200, 299), range(400, 499)]);
    /// assert_eq!(audit.overlaps, vec![range(90, 99)]);
    /// ```
    pub fn audit(&self, up_to: u64) -> Audit {
        let completed = sorted_by_first(&self.completed);
        let live = sorted_by_first(&self.live);
        // The watermark covers `[start, low_watermark]`, nothing when it is below the start.
        let watermark = self
            .low_watermark
            .filter(|&low_watermark| low_watermark >= self.start)
            .map(|low_watermark| crate::range::ordered(self.start, low_watermark));
        let entries = MergeByFirst::new(
            watermark.into_iter(),
            MergeByFirst::new(completed.iter().copied(), live.iter().copied()),
        );
        sweep(self.start, up_to, entries)
    }
}

fn sorted_by_first(ranges: &[IdRange]) -> std::borrow::Cow<'_, [IdRange]> {
    if ranges.is_sorted_by_key(|range| range.first()) {
        return std::borrow::Cow::Borrowed(ranges);
    }
    let mut sorted = ranges.to_vec();
    sorted.sort_unstable_by_key(|range| range.first());
    std::borrow::Cow::Owned(sorted)
}

/// Merges two iterators of ranges, each sorted by first id, into one sorted by first id.
pub(crate) struct MergeByFirst<Left: Iterator<Item = IdRange>, Right: Iterator<Item = IdRange>> {
    left: Peekable<Left>,
    right: Peekable<Right>,
}

impl<Left: Iterator<Item = IdRange>, Right: Iterator<Item = IdRange>> MergeByFirst<Left, Right> {
    pub(crate) fn new(left: Left, right: Right) -> Self {
        Self {
            left: left.peekable(),
            right: right.peekable(),
        }
    }
}

impl<Left: Iterator<Item = IdRange>, Right: Iterator<Item = IdRange>> Iterator
    for MergeByFirst<Left, Right>
{
    type Item = IdRange;

    fn next(&mut self) -> Option<IdRange> {
        match (self.left.peek(), self.right.peek()) {
            (Some(left), Some(right)) if right.first() < left.first() => self.right.next(),
            (Some(_), _) => self.left.next(),
            (None, _) => self.right.next(),
        }
    }
}

/// The sweep. `entries` must be sorted by first id. Ids below `start` are never gaps, but
/// overlaps are reported wherever they are (also when `up_to < start`).
pub(crate) fn sweep(start: u64, up_to: u64, entries: impl Iterator<Item = IdRange>) -> Audit {
    let mut audit = Audit::default();
    // Highest id covered by the entries seen so far.
    let mut covered_through: Option<u64> = None;
    for entry in entries {
        if entry.first() > up_to {
            break;
        }
        let next_uncovered = first_uncovered(start, covered_through);
        if let Some(next_uncovered) = next_uncovered
            && entry.first() > next_uncovered
        {
            audit
                .gaps
                .push(crate::range::ordered(next_uncovered, entry.first() - 1));
        }
        if let Some(through) = covered_through
            && entry.first() <= through
        {
            let doubly_covered =
                crate::range::ordered(entry.first(), entry.last().min(through).min(up_to));
            push_coalesced(&mut audit.overlaps, doubly_covered);
        }
        covered_through =
            Some(covered_through.map_or(entry.last(), |through| through.max(entry.last())));
    }
    if let Some(next_uncovered) = first_uncovered(start, covered_through)
        && next_uncovered <= up_to
    {
        audit
            .gaps
            .push(crate::range::ordered(next_uncovered, up_to));
    }
    audit
}

/// The first id at or after `start` not covered by a prefix covering everything up to
/// `covered_through`; `None` when that prefix reaches `u64::MAX`.
fn first_uncovered(start: u64, covered_through: Option<u64>) -> Option<u64> {
    match covered_through {
        None => Some(start),
        Some(through) => through.checked_add(1).map(|next| next.max(start)),
    }
}

/// Appends `run` to sorted runs, joining it with the last one when they touch or overlap.
fn push_coalesced(runs: &mut Vec<IdRange>, run: IdRange) {
    if let Some(last) = runs.last_mut()
        && last.last().saturating_add(1) >= run.first()
    {
        *last = crate::range::ordered(last.first(), last.last().max(run.last()));
        return;
    }
    runs.push(run);
}
