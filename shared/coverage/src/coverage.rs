//! The coverage of one job's id space.
//!
//! ```text
//!  start        low watermark        completed         live      live           frontier
//!    |<== all completed ==>|   gap   [=====]   gap   [-----]  [-----]   [=====]     |
//!    ids ≤ watermark: done          done above        created, not yet   done        highest
//!                                   the watermark     completed                      covered id
//! ```
//!
//! Invariants, kept by every operation:
//! - every entry lies at or after `start`, and entries never share an id (no overlap);
//! - completed intervals are maximal: no two touch, and none touches the watermark (touching
//!   ones are merged, and an interval reaching the watermark is absorbed into it);
//! - live ranges are exactly the partitions inserted and not yet completed or removed (adjacent
//!   live ranges stay separate: each is a partition).
//!
//! So the completed history costs one integer plus one interval per run of completed ids that
//! some live or missing range keeps above the watermark: memory follows live work, not history.
//! Both ordered sets are `BTreeMap<first id, last id>`, which gives every point query in
//! `O(log n)` (`n` = entries held) and the audit in one `O(n)` ordered walk.

use crate::audit::{Audit, CoverageRecord, MergeByFirst, sweep};
use crate::error::{CoverageError, CoveredBy, InvalidRecord, Overlap};
use crate::range::IdRange;
use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};
use std::collections::BTreeMap;

/// What covers one id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdState {
    Completed,
    Live,
    /// Not covered: a gap, beyond the frontier, or before the start.
    Uncovered,
}

/// Low watermark + completed intervals + live partitions of one job; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "CoverageRecord")]
pub struct Coverage {
    start: u64,
    low_watermark: Option<u64>,
    completed: BTreeMap<u64, u64>,
    live: BTreeMap<u64, u64>,
}

impl Coverage {
    /// Empty coverage of a job whose ids start at `start`.
    pub fn new(start: u64) -> Self {
        Self {
            start,
            low_watermark: None,
            completed: BTreeMap::new(),
            live: BTreeMap::new(),
        }
    }

    /// First id of the job's space.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Every id in `[start, low_watermark]` is completed; `None` while `start` is not.
    pub fn low_watermark(&self) -> Option<u64> {
        self.low_watermark
    }

    /// Highest covered (completed or live) id, `None` when nothing is covered. `O(log n)`.
    pub fn frontier(&self) -> Option<u64> {
        let last_completed = self.completed.last_key_value().map(|(_, &last)| last);
        let last_live = self.live.last_key_value().map(|(_, &last)| last);
        self.low_watermark.max(last_completed).max(last_live)
    }

    /// Number of live partitions.
    pub fn live_count(&self) -> usize {
        self.live.len()
    }

    /// Number of completed intervals kept above the watermark.
    pub fn completed_interval_count(&self) -> usize {
        self.completed.len()
    }

    /// Live partitions in id order.
    pub fn live_ranges(&self) -> impl DoubleEndedIterator<Item = IdRange> + '_ {
        self.live
            .iter()
            .map(|(&first, &last)| crate::range::ordered(first, last))
    }

    /// Completed intervals above the watermark, in id order.
    pub fn completed_ranges(&self) -> impl DoubleEndedIterator<Item = IdRange> + '_ {
        self.completed
            .iter()
            .map(|(&first, &last)| crate::range::ordered(first, last))
    }

    /// Whether `id` is completed, live or uncovered. `O(log n)`.
    pub fn id_state(&self, id: u64) -> IdState {
        if id < self.start {
            return IdState::Uncovered;
        }
        if self
            .low_watermark
            .is_some_and(|low_watermark| id <= low_watermark)
        {
            return IdState::Completed;
        }
        if entry_overlapping(&self.completed, IdRange::single(id)).is_some() {
            return IdState::Completed;
        }
        if entry_overlapping(&self.live, IdRange::single(id)).is_some() {
            return IdState::Live;
        }
        IdState::Uncovered
    }

    /// Gap and overlap detection for a new partition, without changing anything. `O(log n)`.
    ///
    /// Returns the *gap* the range would leave between the frontier and itself (`None` when it
    /// starts right after the frontier, or fills a hole below it).
    ///
    /// # Errors
    ///
    /// [`CoverageError::Overlap`] when the range covers an id that is already completed or live,
    /// [`CoverageError::BeforeStart`] when it starts before the job's first id.
    pub fn check_new(&self, range: IdRange) -> Result<Option<IdRange>, CoverageError> {
        if range.first() < self.start {
            return Err(CoverageError::BeforeStart {
                range,
                start: self.start,
            });
        }
        if let Some(overlap) = self.find_overlap(range) {
            return Err(CoverageError::Overlap(overlap));
        }
        Ok(self.gap_before(range))
    }

    /// Records a new live partition after [`check_new`](Self::check_new). `O(log n)`.
    ///
    /// Returns the gap it leaves before itself, which the caller repairs by creating partitions
    /// for it.
    ///
    /// # Errors
    ///
    /// As `check_new`; the coverage is then unchanged.
    ///
    /// ```
    /// use elk_coverage::{Coverage, CoverageError, IdRange};
    ///
    /// let range = |min, max| IdRange::new(min, max).unwrap();
    /// let mut coverage = Coverage::new(1);
    /// assert_eq!(coverage.insert_live(range(1, 100)), Ok(None));
    /// // The planner skipped 101..=200: a gap.
    /// assert_eq!(coverage.insert_live(range(201, 300)), Ok(Some(range(101, 200))));
    /// // Re-creating processed ids is refused.
    /// assert!(matches!(coverage.insert_live(range(50, 150)), Err(CoverageError::Overlap(_))));
    /// // Repairing the gap fits.
    /// assert_eq!(coverage.insert_live(range(101, 200)), Ok(None));
    /// ```
    pub fn insert_live(&mut self, range: IdRange) -> Result<Option<IdRange>, CoverageError> {
        let gap = self.check_new(range)?;
        self.live.insert(range.first(), range.last());
        Ok(gap)
    }

    /// Rebuilds its ordered maps with full nodes: after many ascending [`Self::insert_live`]s
    /// (a cold start cutting a job) the live map's nodes are a bit over half full
    /// (`elk_types::btree`). Changes no entry. `O(n)`.
    pub fn repack(&mut self) {
        self.live = elk_types::btree::repacked(std::mem::take(&mut self.live));
        self.completed = elk_types::btree::repacked(std::mem::take(&mut self.completed));
    }

    /// Marks a live partition completed, merging it with neighbouring completed ids and
    /// advancing the watermark when it reaches it. `O(log n)`.
    ///
    /// # Errors
    ///
    /// [`CoverageError::NotLive`] unless `range` is exactly a live partition.
    ///
    /// ```
    /// use elk_coverage::{Coverage, IdRange};
    ///
    /// let range = |min, max| IdRange::new(min, max).unwrap();
    /// let mut coverage = Coverage::new(0);
    /// for first in [0, 10, 20] {
    ///     coverage.insert_live(range(first, first + 9)).unwrap();
    /// }
    /// coverage.complete(range(10, 19)).unwrap();
    /// assert_eq!(coverage.low_watermark(), None);
    /// assert_eq!(coverage.completed_interval_count(), 1);
    /// coverage.complete(range(0, 9)).unwrap();
    /// // [0, 19] is done: history collapsed into the watermark.
    /// assert_eq!(coverage.low_watermark(), Some(19));
    /// assert_eq!(coverage.completed_interval_count(), 0);
    /// assert_eq!(coverage.live_count(), 1);
    /// ```
    pub fn complete(&mut self, range: IdRange) -> Result<(), CoverageError> {
        self.take_live(range)?;
        self.add_completed(range);
        Ok(())
    }

    /// Forgets a live partition without completing it (cancelled, re-planned): its ids become a
    /// gap again. `O(log n)`.
    ///
    /// # Errors
    ///
    /// [`CoverageError::NotLive`] unless `range` is exactly a live partition.
    pub fn remove_live(&mut self, range: IdRange) -> Result<(), CoverageError> {
        self.take_live(range)
    }

    /// Every gap (uncovered ids from the start up to `up_to`) in one ordered walk. `O(n)`.
    ///
    /// ```
    /// use elk_coverage::{Coverage, IdRange};
    ///
    /// let range = |min, max| IdRange::new(min, max).unwrap();
    /// let mut coverage = Coverage::new(0);
    /// coverage.insert_live(range(0, 9)).unwrap();
    /// coverage.insert_live(range(20, 29)).unwrap();
    /// coverage.complete(range(0, 9)).unwrap();
    /// let audit = coverage.audit(39);
    /// assert_eq!(audit.gaps, vec![range(10, 19), range(30, 39)]);
    /// assert!(audit.overlaps.is_empty());
    /// ```
    pub fn audit(&self, up_to: u64) -> Audit {
        let watermark = self
            .low_watermark
            .map(|low_watermark| crate::range::ordered(self.start, low_watermark));
        let entries = watermark.into_iter().chain(MergeByFirst::new(
            self.completed_ranges(),
            self.live_ranges(),
        ));
        let audit = sweep(self.start, up_to, entries);
        debug_assert!(audit.overlaps.is_empty(), "operations refuse overlaps");
        audit
    }

    /// The serializable form (what `serde` writes).
    pub fn to_record(&self) -> CoverageRecord {
        CoverageRecord {
            start: self.start,
            low_watermark: self.low_watermark,
            completed: self.completed_ranges().collect(),
            live: self.live_ranges().collect(),
        }
    }

    fn find_overlap(&self, range: IdRange) -> Option<Overlap> {
        if let Some(low_watermark) = self.low_watermark
            && range.first() <= low_watermark
        {
            let existing = crate::range::ordered(self.start, low_watermark);
            return Some(Overlap {
                range,
                existing,
                covered_by: CoveredBy::Watermark,
            });
        }
        if let Some(existing) = entry_overlapping(&self.completed, range) {
            return Some(Overlap {
                range,
                existing,
                covered_by: CoveredBy::Completed,
            });
        }
        entry_overlapping(&self.live, range).map(|existing| Overlap {
            range,
            existing,
            covered_by: CoveredBy::Live,
        })
    }

    fn gap_before(&self, range: IdRange) -> Option<IdRange> {
        let next_uncovered = match self.frontier() {
            None => self.start,
            Some(frontier) => frontier.checked_add(1)?,
        };
        (range.first() > next_uncovered)
            .then(|| crate::range::ordered(next_uncovered, range.first() - 1))
    }

    fn take_live(&mut self, range: IdRange) -> Result<(), CoverageError> {
        match self.live.get(&range.first()) {
            Some(&last) if last == range.last() => {
                self.live.remove(&range.first());
                Ok(())
            }
            _ => Err(CoverageError::NotLive { range }),
        }
    }

    /// Adds ids known not to be covered to the completed coverage, keeping intervals maximal.
    fn add_completed(&mut self, range: IdRange) {
        let mut first = range.first();
        let mut last = range.last();
        if let Some((&previous_first, &previous_last)) = self.completed.range(..first).next_back()
            && previous_last.checked_add(1) == Some(first)
        {
            self.completed.remove(&previous_first);
            first = previous_first;
        }
        if let Some(next_first) = last.checked_add(1)
            && let Some(next_last) = self.completed.remove(&next_first)
        {
            last = next_last;
        }
        let watermark_successor = match self.low_watermark {
            None => Some(self.start),
            Some(low_watermark) => low_watermark.checked_add(1),
        };
        if watermark_successor == Some(first) {
            // The next completed interval cannot touch `last`: it would have been merged above.
            self.low_watermark = Some(last);
        } else {
            self.completed.insert(first, last);
        }
    }
}

/// The entry of `entries` (disjoint, keyed by first id) that intersects `range`, if any.
/// Only the entry starting last at or before `range.last()` can: every earlier entry ends before
/// that one starts.
fn entry_overlapping(entries: &BTreeMap<u64, u64>, range: IdRange) -> Option<IdRange> {
    let (&first, &last) = entries.range(..=range.last()).next_back()?;
    (last >= range.first()).then(|| crate::range::ordered(first, last))
}

impl Serialize for Coverage {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Same shape as `CoverageRecord`, without copying the sets.
        let mut record = serializer.serialize_struct("CoverageRecord", 4)?;
        record.serialize_field("start", &self.start)?;
        record.serialize_field("low_watermark", &self.low_watermark)?;
        record.serialize_field("completed", &RangesOf(&self.completed))?;
        record.serialize_field("live", &RangesOf(&self.live))?;
        record.end()
    }
}

struct RangesOf<'a>(&'a BTreeMap<u64, u64>);

impl Serialize for RangesOf<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(
            self.0
                .iter()
                .map(|(&first, &last)| crate::range::ordered(first, last)),
        )
    }
}

impl TryFrom<CoverageRecord> for Coverage {
    type Error = InvalidRecord;

    /// Validates a record: no overlap, nothing before the start. Touching completed intervals
    /// are merged, and merged into the watermark when they reach it.
    fn try_from(record: CoverageRecord) -> Result<Self, Self::Error> {
        let start = record.start;
        if let Some(low_watermark) = record.low_watermark
            && low_watermark < start
        {
            return Err(InvalidRecord::WatermarkBeforeStart {
                low_watermark,
                start,
            });
        }
        if let Some(&range) = record
            .completed
            .iter()
            .chain(&record.live)
            .find(|range| range.first() < start)
        {
            return Err(InvalidRecord::BeforeStart { range, start });
        }
        if let Some(&ids) = record.audit(u64::MAX).overlaps.first() {
            return Err(InvalidRecord::Overlap { ids });
        }

        let mut coverage = Coverage::new(start);
        coverage.low_watermark = record.low_watermark;
        let mut completed = record.completed;
        completed.sort_unstable_by_key(|range| range.first());
        for range in completed {
            coverage.add_completed(range);
        }
        coverage.live = record
            .live
            .iter()
            .map(|range| (range.first(), range.last()))
            .collect();
        Ok(coverage)
    }
}
