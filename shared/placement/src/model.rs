//! The solver's inputs and the quota arithmetic.
//!
//! Workers and partitions are plain data. The worker id type `K` is chosen by the caller: `&str`
//! borrowed from the membership view, `String`, or a dense integer slot; it is hashed once per
//! partition that has a previous owner and compared only when sorting the workers.

/// A worker that may receive partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Worker<K> {
    /// Unique id of the worker. Duplicate ids make `solve` fail.
    pub id: K,
    /// Relative capacity. A worker with capacity 0 receives nothing and sheds what it held
    /// (use it to drain a worker).
    pub capacity: u32,
}

impl<K> Worker<K> {
    pub const fn new(id: K, capacity: u32) -> Self {
        Self { id, capacity }
    }
}

/// A partition to place, with the worker that held it before this solution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Partition<K> {
    /// The partition id; the solver never interprets it, it only travels along.
    pub id: u64,
    /// The worker that held the partition, if any. It may name a worker that is no longer in
    /// `workers` (it left or crashed): the partition is then orphaned and must move.
    pub previous_owner: Option<K>,
}

impl<K> Partition<K> {
    pub const fn new(id: u64, previous_owner: Option<K>) -> Self {
        Self { id, previous_owner }
    }

    /// A partition that has never been granted.
    pub const fn unassigned(id: u64) -> Self {
        Self {
            id,
            previous_owner: None,
        }
    }
}

/// The integer bounds of a worker's quota `partitions × capacity / total_capacity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    /// `⌊quota⌋`: no worker ends with fewer partitions.
    pub floor: u64,
    /// `⌈quota⌉`: no worker ends with more partitions.
    pub ceil: u64,
}

/// The quota bounds of a worker of `capacity` among workers totalling `total_capacity`, when
/// `partitions` partitions are placed.
///
/// Exact integer arithmetic: no floating point, no overflow. A worker of a fleet with no capacity
/// at all has the quota 0.
///
/// ```
/// use elk_placement::{quota, Quota};
///
/// // 10 partitions over capacities 1 + 2: quotas 3.33 and 6.67.
/// assert_eq!(quota(10, 1, 3), Quota { floor: 3, ceil: 4 });
/// assert_eq!(quota(10, 2, 3), Quota { floor: 6, ceil: 7 });
/// assert_eq!(quota(9, 2, 3), Quota { floor: 6, ceil: 6 });
/// ```
pub fn quota(partitions: u64, capacity: u32, total_capacity: u64) -> Quota {
    let (floor, remainder) = quota_parts(partitions, capacity, total_capacity);
    let ceil = if remainder > 0 { floor + 1 } else { floor };
    Quota { floor, ceil }
}

/// `(⌊partitions × capacity / total⌋, partitions × capacity mod total)`, the remainder being the
/// numerator of the fractional part over the common denominator `total_capacity`.
pub(crate) fn quota_parts(partitions: u64, capacity: u32, total_capacity: u64) -> (u64, u64) {
    if total_capacity == 0 {
        return (0, 0);
    }
    let numerator = u128::from(partitions) * u128::from(capacity);
    let denominator = u128::from(total_capacity);
    let floor = numerator / denominator;
    let remainder = numerator % denominator;
    // Both fit in u64 whenever capacity <= total_capacity; saturate for nonsensical inputs.
    (
        u64::try_from(floor).unwrap_or(u64::MAX),
        u64::try_from(remainder).unwrap_or(u64::MAX),
    )
}
