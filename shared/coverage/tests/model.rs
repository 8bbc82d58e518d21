//! Property tests of `Coverage` and `CoverageRecord::audit` against a brute-force model: one
//! cell per id over a small id space, so every gap, overlap and watermark is computed by
//! looking at each id.

use elk_coverage::{
    Coverage, CoverageError, CoverageRecord, CoveredBy, IdRange, IdState, InvalidRecord,
};
use proptest::prelude::*;
use proptest::sample::Index;
use std::collections::BTreeSet;

/// Ids of the model: 0..DOMAIN. Generated ranges stay inside it; audits look a little beyond.
const DOMAIN: u64 = 64;

fn range(first: u64, last: u64) -> IdRange {
    IdRange::new(first, last).unwrap()
}

fn any_range() -> impl Strategy<Value = IdRange> {
    (0..DOMAIN - 8, 1u64..=8).prop_map(|(first, len)| range(first, first + len - 1))
}

/// Maximal runs of ids in `ids` (sorted) as ranges.
fn runs(ids: impl IntoIterator<Item = u64>) -> Vec<IdRange> {
    let mut result: Vec<IdRange> = Vec::new();
    for id in ids {
        match result.last_mut() {
            Some(last) if last.last() + 1 == id => *last = range(last.first(), id),
            _ => result.push(IdRange::single(id)),
        }
    }
    result
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cell {
    Uncovered,
    Live,
    Completed,
}

#[derive(Debug, Clone)]
struct Model {
    start: u64,
    cells: Vec<Cell>,
    live: BTreeSet<IdRange>,
}

impl Model {
    fn new(start: u64) -> Self {
        Self {
            start,
            cells: vec![Cell::Uncovered; DOMAIN as usize],
            live: BTreeSet::new(),
        }
    }

    fn cell(&self, id: u64) -> Cell {
        self.cells
            .get(id as usize)
            .copied()
            .unwrap_or(Cell::Uncovered)
    }

    fn ids(range: IdRange) -> impl Iterator<Item = u64> {
        range.first()..=range.last()
    }

    fn frontier(&self) -> Option<u64> {
        (0..DOMAIN)
            .rev()
            .find(|&id| self.cell(id) != Cell::Uncovered)
    }

    fn low_watermark(&self) -> Option<u64> {
        let mut watermark = None;
        for id in self.start..DOMAIN {
            if self.cell(id) != Cell::Completed {
                break;
            }
            watermark = Some(id);
        }
        watermark
    }

    fn completed_intervals(&self) -> Vec<IdRange> {
        let above = self
            .low_watermark()
            .map_or(self.start, |watermark| watermark + 1);
        runs((above..DOMAIN).filter(|&id| self.cell(id) == Cell::Completed))
    }

    fn check_new(&self, new: IdRange) -> Result<Option<IdRange>, ()> {
        if new.first() < self.start || Self::ids(new).any(|id| self.cell(id) != Cell::Uncovered) {
            return Err(());
        }
        let next = self.frontier().map_or(self.start, |frontier| frontier + 1);
        Ok((new.first() > next).then(|| range(next, new.first() - 1)))
    }

    fn insert_live(&mut self, new: IdRange) -> Result<Option<IdRange>, ()> {
        let gap = self.check_new(new)?;
        Self::ids(new).for_each(|id| self.cells[id as usize] = Cell::Live);
        self.live.insert(new);
        Ok(gap)
    }

    fn finish_live(&mut self, live: IdRange, becomes: Cell) -> Result<(), ()> {
        if !self.live.remove(&live) {
            return Err(());
        }
        Self::ids(live).for_each(|id| self.cells[id as usize] = becomes);
        Ok(())
    }

    fn gaps(&self, up_to: u64) -> Vec<IdRange> {
        if up_to < self.start {
            return Vec::new();
        }
        runs((self.start..=up_to).filter(|&id| self.cell(id) == Cell::Uncovered))
    }

    fn id_state(&self, id: u64) -> IdState {
        match self.cell(id) {
            _ if id < self.start => IdState::Uncovered,
            Cell::Uncovered => IdState::Uncovered,
            Cell::Live => IdState::Live,
            Cell::Completed => IdState::Completed,
        }
    }
}

#[derive(Debug, Clone)]
enum Operation {
    InsertLive(IdRange),
    /// Complete the n-th live partition.
    CompleteLive(Index),
    /// Complete an arbitrary range, usually not a live partition.
    CompleteAny(IdRange),
    RemoveLive(Index),
    RemoveAny(IdRange),
    /// Rebuilds the maps with full nodes: must change nothing.
    Repack,
}

fn operation() -> impl Strategy<Value = Operation> {
    prop_oneof![
        5 => any_range().prop_map(Operation::InsertLive),
        4 => any::<Index>().prop_map(Operation::CompleteLive),
        1 => any_range().prop_map(Operation::CompleteAny),
        1 => any::<Index>().prop_map(Operation::RemoveLive),
        1 => any_range().prop_map(Operation::RemoveAny),
        1 => Just(Operation::Repack),
    ]
}

fn assert_same_state(coverage: &Coverage, model: &Model) -> Result<(), TestCaseError> {
    prop_assert_eq!(coverage.low_watermark(), model.low_watermark());
    prop_assert_eq!(
        coverage.completed_ranges().collect::<Vec<_>>(),
        model.completed_intervals()
    );
    prop_assert_eq!(
        coverage.live_ranges().collect::<Vec<_>>(),
        model.live.iter().copied().collect::<Vec<_>>()
    );
    prop_assert_eq!(coverage.frontier(), model.frontier());
    for id in 0..DOMAIN + 2 {
        prop_assert_eq!(coverage.id_state(id), model.id_state(id), "id {}", id);
    }
    for up_to in [0, model.start, DOMAIN / 2, DOMAIN - 1, DOMAIN + 5] {
        let audit = coverage.audit(up_to);
        prop_assert_eq!(&audit.gaps, &model.gaps(up_to), "gaps up to {}", up_to);
        prop_assert!(audit.overlaps.is_empty());
    }
    Ok(())
}

fn assert_same_check(
    coverage: &Coverage,
    model: &Model,
    new: IdRange,
    outcome: &Result<Option<IdRange>, CoverageError>,
) -> Result<(), TestCaseError> {
    match (outcome, model.check_new(new)) {
        (Ok(gap), Ok(expected_gap)) => prop_assert_eq!(*gap, expected_gap),
        (Err(CoverageError::BeforeStart { range, start }), Err(())) => {
            prop_assert_eq!(*range, new);
            prop_assert_eq!(*start, model.start);
            prop_assert!(new.first() < model.start);
        }
        (Err(CoverageError::Overlap(overlap)), Err(())) => {
            prop_assert_eq!(overlap.range, new);
            prop_assert!(overlap.existing.overlaps(new));
            let expected_cell = match overlap.covered_by {
                CoveredBy::Watermark | CoveredBy::Completed => Cell::Completed,
                CoveredBy::Live => Cell::Live,
            };
            for id in overlap.existing.first()..=overlap.existing.last() {
                prop_assert_eq!(model.cell(id), expected_cell, "id {} of {:?}", id, overlap);
            }
            if overlap.covered_by == CoveredBy::Live {
                prop_assert!(coverage.live_ranges().any(|live| live == overlap.existing));
            }
        }
        (outcome, expected) => {
            prop_assert!(
                false,
                "check of {new:?}: got {outcome:?}, model says {expected:?}"
            )
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn coverage_matches_the_model(
        start in 0u64..4,
        operations in prop::collection::vec(operation(), 0..60),
        probes in prop::collection::vec(any_range(), 4),
    ) {
        let mut coverage = Coverage::new(start);
        let mut model = Model::new(start);
        for operation in operations {
            match operation {
                Operation::InsertLive(new) => {
                    let outcome = coverage.insert_live(new);
                    assert_same_check(&coverage, &model, new, &outcome)?;
                    let expected = model.insert_live(new);
                    prop_assert_eq!(outcome.is_ok(), expected.is_ok());
                }
                Operation::CompleteLive(index) | Operation::RemoveLive(index) if model.live.is_empty() => {
                    let _ = index;
                }
                Operation::CompleteLive(index) => {
                    let live = *model.live.iter().nth(index.index(model.live.len())).unwrap();
                    prop_assert_eq!(coverage.complete(live), Ok(()));
                    prop_assert_eq!(model.finish_live(live, Cell::Completed), Ok(()));
                }
                Operation::RemoveLive(index) => {
                    let live = *model.live.iter().nth(index.index(model.live.len())).unwrap();
                    prop_assert_eq!(coverage.remove_live(live), Ok(()));
                    prop_assert_eq!(model.finish_live(live, Cell::Uncovered), Ok(()));
                }
                Operation::CompleteAny(any) => {
                    let outcome = coverage.complete(any);
                    let expected = model.finish_live(any, Cell::Completed);
                    prop_assert_eq!(outcome.is_ok(), expected.is_ok());
                    if expected.is_err() {
                        prop_assert_eq!(outcome, Err(CoverageError::NotLive { range: any }));
                    }
                }
                Operation::RemoveAny(any) => {
                    let outcome = coverage.remove_live(any);
                    let expected = model.finish_live(any, Cell::Uncovered);
                    prop_assert_eq!(outcome.is_ok(), expected.is_ok());
                }
                Operation::Repack => {
                    let before = coverage.clone();
                    coverage.repack();
                    prop_assert_eq!(&coverage, &before);
                }
            }
            assert_same_state(&coverage, &model)?;
        }
        for probe in probes {
            let outcome = coverage.check_new(probe);
            assert_same_check(&coverage, &model, probe, &outcome)?;
        }
    }

    #[test]
    fn serde_round_trip_keeps_everything(
        start in 0u64..4,
        operations in prop::collection::vec(operation(), 0..40),
    ) {
        let mut coverage = Coverage::new(start);
        let mut model = Model::new(start);
        for operation in operations {
            match operation {
                Operation::InsertLive(new) => {
                    let _ = coverage.insert_live(new);
                    let _ = model.insert_live(new);
                }
                Operation::CompleteLive(index) if !model.live.is_empty() => {
                    let live = *model.live.iter().nth(index.index(model.live.len())).unwrap();
                    coverage.complete(live).unwrap();
                    model.finish_live(live, Cell::Completed).unwrap();
                }
                _ => {}
            }
        }
        let json = serde_json::to_string(&coverage).unwrap();
        let restored: Coverage = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(&restored, &coverage);
        let record: CoverageRecord = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(&record, &coverage.to_record());
        prop_assert_eq!(Coverage::try_from(record).unwrap(), coverage);
    }

    #[test]
    fn record_audit_matches_the_model(
        start in 0u64..4,
        low_watermark in prop::option::of(0u64..20),
        completed in prop::collection::vec(any_range(), 0..6),
        live in prop::collection::vec(any_range(), 0..6),
        up_to in 0u64..DOMAIN + 4,
    ) {
        let record = CoverageRecord { start, low_watermark, completed, live };
        // Brute force: how many entries cover each id.
        let mut counts = vec![0u32; DOMAIN as usize + 8];
        let watermark_ids = low_watermark.filter(|&w| w >= start).map(|w| start..=w);
        for id in watermark_ids.into_iter().flatten() {
            counts[id as usize] += 1;
        }
        for entry in record.completed.iter().chain(&record.live) {
            for id in entry.first()..=entry.last() {
                counts[id as usize] += 1;
            }
        }
        let count = |id: u64| counts.get(id as usize).copied().unwrap_or(0);
        let expected_gaps =
            if up_to < start { Vec::new() } else { runs((start..=up_to).filter(|&id| count(id) == 0)) };
        let expected_overlaps = runs((0..=up_to).filter(|&id| count(id) >= 2));

        let audit = record.audit(up_to);
        prop_assert_eq!(&audit.gaps, &expected_gaps);
        prop_assert_eq!(&audit.overlaps, &expected_overlaps);

        // A record converts into a Coverage exactly when it is consistent.
        let any_overlap = (0..DOMAIN + 8).any(|id| count(id) >= 2);
        let watermark_before_start = low_watermark.is_some_and(|w| w < start);
        let before_start = record.completed.iter().chain(&record.live).any(|r| r.first() < start);
        match Coverage::try_from(record.clone()) {
            Ok(coverage) => {
                prop_assert!(!any_overlap && !watermark_before_start && !before_start);
                prop_assert_eq!(coverage.audit(up_to).gaps, expected_gaps);
                for id in 0..DOMAIN + 8 {
                    let expected = match count(id) {
                        0 => IdState::Uncovered,
                        _ if record.live.iter().any(|r| r.contains(id)) => IdState::Live,
                        _ => IdState::Completed,
                    };
                    prop_assert_eq!(coverage.id_state(id), expected, "id {}", id);
                }
            }
            Err(InvalidRecord::WatermarkBeforeStart { .. }) => prop_assert!(watermark_before_start),
            Err(InvalidRecord::BeforeStart { .. }) => prop_assert!(before_start),
            Err(InvalidRecord::Overlap { ids }) => {
                prop_assert!(any_overlap);
                prop_assert!(count(ids.first()) >= 2);
            }
        }
    }
}

#[test]
fn memory_follows_live_work_not_history() {
    // 100,000 partitions completed in a shuffled order, at most 64 live at a time.
    let mut coverage = Coverage::new(0);
    let mut next_first = 0u64;
    let mut live: Vec<IdRange> = Vec::new();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut max_entries = 0usize;
    for _ in 0..100_000 {
        while live.len() < 64 {
            let partition = range(next_first, next_first + 999);
            assert_eq!(coverage.insert_live(partition), Ok(None));
            live.push(partition);
            next_first += 1_000;
        }
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let done = live.swap_remove((state % live.len() as u64) as usize);
        coverage.complete(done).unwrap();
        max_entries = max_entries.max(coverage.live_count() + coverage.completed_interval_count());
    }
    assert!(max_entries <= 2 * 64 + 1, "held {max_entries} entries");
    assert!(coverage.audit(next_first - 1).is_clean());
    let held = coverage.live_count() + coverage.completed_interval_count();
    assert!(held <= 2 * 64 + 1);
    // Everything below the oldest live partition has collapsed into the watermark.
    let oldest_live = coverage.live_ranges().next().unwrap();
    assert_eq!(coverage.low_watermark(), Some(oldest_live.first() - 1));
}

#[test]
fn ids_at_the_top_of_the_space_do_not_overflow() {
    let mut coverage = Coverage::new(u64::MAX - 9);
    let top = range(u64::MAX - 4, u64::MAX);
    assert_eq!(
        coverage.insert_live(top),
        Ok(Some(range(u64::MAX - 9, u64::MAX - 5)))
    );
    assert_eq!(
        coverage.insert_live(range(u64::MAX - 9, u64::MAX - 5)),
        Ok(None)
    );
    coverage.complete(top).unwrap();
    coverage
        .complete(range(u64::MAX - 9, u64::MAX - 5))
        .unwrap();
    assert_eq!(coverage.low_watermark(), Some(u64::MAX));
    assert!(coverage.check_new(IdRange::single(u64::MAX)).is_err());
    assert!(coverage.audit(u64::MAX).is_clean());
}

#[test]
fn invalid_ranges_do_not_deserialize() {
    assert!(serde_json::from_str::<IdRange>(r#"{"min":5,"max":4}"#).is_err());
    let overlapping = r#"{"start":0,"low_watermark":9,"completed":[],"live":[{"min":5,"max":20}]}"#;
    let error = serde_json::from_str::<Coverage>(overlapping).unwrap_err();
    assert!(error.to_string().contains("covered twice"), "{error}");
}
