//! Inclusive id ranges `[min, max]`.

use serde::{Deserialize, Serialize};
use std::fmt;

/// `min > max`: not a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidRange {
    pub min: u64,
    pub max: u64,
}

impl fmt::Display for InvalidRange {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "invalid id range: min {} is greater than max {}",
            self.min, self.max
        )
    }
}

impl std::error::Error for InvalidRange {}

/// An inclusive range of ids; `min <= max` always holds (also after deserialization).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "UncheckedIdRange")]
pub struct IdRange {
    min: u64,
    max: u64,
}

#[derive(Deserialize)]
struct UncheckedIdRange {
    min: u64,
    max: u64,
}

impl TryFrom<UncheckedIdRange> for IdRange {
    type Error = InvalidRange;

    fn try_from(unchecked: UncheckedIdRange) -> Result<Self, Self::Error> {
        Self::new(unchecked.min, unchecked.max)
    }
}

impl IdRange {
    /// # Errors
    ///
    /// [`InvalidRange`] when `min > max`.
    pub const fn new(min: u64, max: u64) -> Result<Self, InvalidRange> {
        if min > max {
            return Err(InvalidRange { min, max });
        }
        Ok(Self { min, max })
    }

    /// The range holding the single id `id`.
    pub const fn single(id: u64) -> Self {
        Self { min: id, max: id }
    }

    /// Only for callers that have already ordered the bounds.
    pub(crate) const fn from_ordered(min: u64, max: u64) -> Self {
        debug_assert!(min <= max);
        Self { min, max }
    }

    pub const fn first(self) -> u64 {
        self.min
    }

    pub const fn last(self) -> u64 {
        self.max
    }

    /// Number of ids; `u64::MAX + 1` does not fit, so the full space saturates at `u64::MAX`.
    pub const fn len(self) -> u64 {
        (self.max - self.min).saturating_add(1)
    }

    /// Never: a range holds at least one id.
    pub const fn is_empty(self) -> bool {
        false
    }

    pub const fn contains(self, id: u64) -> bool {
        self.min <= id && id <= self.max
    }

    pub const fn overlaps(self, other: IdRange) -> bool {
        self.min <= other.max && other.min <= self.max
    }
}

impl fmt::Display for IdRange {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "[{}, {}]", self.min, self.max)
    }
}

impl fmt::Debug for IdRange {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, formatter)
    }
}
