//! Inclusive ID ranges `[min, max]`, the unit of work of a partition.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid id range: min {min} is greater than max {max}")]
pub struct InvalidRange {
    pub min: u64,
    pub max: u64,
}

/// An inclusive range of IDs. `min <= max` always holds.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawIdRange")]
pub struct IdRange {
    min: u64,
    max: u64,
}

/// The wire shape of [`IdRange`], validated on the way in.
#[derive(Deserialize)]
struct RawIdRange {
    min: u64,
    max: u64,
}

impl TryFrom<RawIdRange> for IdRange {
    type Error = InvalidRange;
    fn try_from(raw: RawIdRange) -> Result<Self, Self::Error> {
        IdRange::new(raw.min, raw.max)
    }
}

impl IdRange {
    pub fn new(min: u64, max: u64) -> Result<Self, InvalidRange> {
        if min > max {
            return Err(InvalidRange { min, max });
        }
        Ok(Self { min, max })
    }

    /// The range holding only `id`.
    pub const fn single(id: u64) -> Self {
        Self { min: id, max: id }
    }

    pub const fn first(self) -> u64 {
        self.min
    }

    pub const fn last(self) -> u64 {
        self.max
    }

    /// Number of IDs in the range (never zero; `[0, u64::MAX]` saturates at `u64::MAX`).
    pub const fn len(self) -> u64 {
        (self.max - self.min).saturating_add(1)
    }

    pub const fn is_empty(self) -> bool {
        false
    }

    pub const fn contains(self, id: u64) -> bool {
        self.min <= id && id <= self.max
    }

    /// Whether the two ranges share at least one ID.
    pub const fn overlaps(self, other: IdRange) -> bool {
        self.min <= other.max && other.min <= self.max
    }

    /// The IDs still to process after `checkpoint` (the last ID done), or `None` when done.
    pub fn remaining_after(self, checkpoint: Option<u64>) -> Option<IdRange> {
        match checkpoint {
            None => Some(self),
            Some(done) if done >= self.max => None,
            Some(done) => Some(IdRange {
                min: self.min.max(done + 1),
                max: self.max,
            }),
        }
    }

    /// Cuts `self` into consecutive ranges of at most `size` IDs.
    pub fn chunks(self, size: u64) -> impl Iterator<Item = IdRange> {
        let size = size.max(1);
        let mut next = Some(self.min);
        std::iter::from_fn(move || {
            let start = next?;
            let end = start.saturating_add(size - 1).min(self.max);
            next = if end >= self.max { None } else { Some(end + 1) };
            Some(IdRange {
                min: start,
                max: end,
            })
        })
    }
}

impl fmt::Display for IdRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {}]", self.min, self.max)
    }
}

impl fmt::Debug for IdRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_inverted_range() {
        assert_eq!(IdRange::new(5, 4), Err(InvalidRange { min: 5, max: 4 }));
    }

    #[test]
    fn chunks_cover_exactly() {
        let range = IdRange::new(1, 1_000_003).unwrap();
        let chunks: Vec<_> = range.chunks(10_000).collect();
        assert_eq!(chunks.len(), 101);
        assert_eq!(chunks[0], IdRange::new(1, 10_000).unwrap());
        assert_eq!(chunks.last().unwrap().last(), 1_000_003);
        let total: u64 = chunks.iter().map(|c| c.len()).sum();
        assert_eq!(total, range.len());
        for pair in chunks.windows(2) {
            assert_eq!(pair[0].last() + 1, pair[1].first());
        }
    }

    #[test]
    fn chunks_near_u64_max_do_not_overflow() {
        let range = IdRange::new(u64::MAX - 5, u64::MAX).unwrap();
        assert_eq!(range.chunks(4).count(), 2);
    }

    #[test]
    fn remaining_after_checkpoint() {
        let range = IdRange::new(10, 20).unwrap();
        assert_eq!(range.remaining_after(None), Some(range));
        assert_eq!(
            range.remaining_after(Some(14)),
            Some(IdRange::new(15, 20).unwrap())
        );
        assert_eq!(range.remaining_after(Some(20)), None);
        assert_eq!(range.remaining_after(Some(3)), Some(range));
    }
}
