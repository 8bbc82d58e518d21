//! Identifier newtypes. Tokens are validated once, at the boundary, and are then safe to splice
//! into subjects and keys.

use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;

/// Longest accepted subject token (namespace, job name, member id).
pub const MAX_TOKEN_LEN: usize = 64;

/// Why a string is not accepted as a subject token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidToken {
    #[error("{kind} must not be empty")]
    Empty { kind: &'static str },
    #[error("{kind} '{value}' is longer than {max} characters")]
    TooLong {
        kind: &'static str,
        value: String,
        max: usize,
    },
    #[error(
        "{kind} '{value}' contains '{character}': only letters, digits, '_' and '-' are allowed"
    )]
    BadCharacter {
        kind: &'static str,
        value: String,
        character: char,
    },
}

fn validate_token(kind: &'static str, value: &str) -> Result<(), InvalidToken> {
    if value.is_empty() {
        return Err(InvalidToken::Empty { kind });
    }
    if value.len() > MAX_TOKEN_LEN {
        return Err(InvalidToken::TooLong {
            kind,
            value: value.to_owned(),
            max: MAX_TOKEN_LEN,
        });
    }
    if let Some(character) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(InvalidToken::BadCharacter {
            kind,
            value: value.to_owned(),
            character,
        });
    }
    Ok(())
}

macro_rules! token_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        ///
        /// Shared, immutable text: a clone is a reference count, not a copy, so the assigner's
        /// 100,000 partitions of one job (keys, records, indexes, grants) hold one copy of its
        /// name. A thin pointer (8 bytes, where `Arc<str>` is 16): the assigner's tables hold one
        /// in every partition key and owner, so the second indirection saves about 26 bytes per
        /// live partition (issue 10, docs/benchmarks.md "Scale").
        #[derive(Clone, Eq)]
        pub struct $name(std::sync::Arc<Box<str>>);

        // By content, as equality is.
        impl std::hash::Hash for $name {
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                self.0.hash(state);
            }
        }

        // By content; two clones of one name (the common case in the assigner's indexes, keyed
        // by job) compare equal without reading their text.
        impl PartialEq for $name {
            fn eq(&self, other: &Self) -> bool {
                std::sync::Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
            }
        }

        impl Ord for $name {
            fn cmp(&self, other: &Self) -> std::cmp::Ordering {
                if std::sync::Arc::ptr_eq(&self.0, &other.0) {
                    return std::cmp::Ordering::Equal;
                }
                self.0.cmp(&other.0)
            }
        }

        impl PartialOrd for $name {
            fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }

        impl $name {
            /// Validates `value` as a subject token.
            pub fn new(value: impl Into<String>) -> Result<Self, InvalidToken> {
                let value = value.into();
                validate_token($kind, &value)?;
                Ok(Self(std::sync::Arc::new(value.into_boxed_str())))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = InvalidToken;
            fn from_str(value: &str) -> Result<Self, Self::Err> {
                Self::new(value)
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(deserializer)?;
                Self::new(raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

token_type!(
    /// Isolates one deployment: every bucket, stream and subject carries it.
    Namespace, "namespace"
);
token_type!(
    /// Name of a job (an ID space processed by the fleet).
    JobName, "job name"
);
token_type!(
    /// Stable id of a member (worker or service replica); its key in the members bucket.
    MemberId, "member id"
);

macro_rules! number_type {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub $inner);

        impl $name {
            pub const fn get(self) -> $inner {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }
    };
}

number_type!(
    /// Fencing token of a role holder: only grows. Records written under an older epoch are
    /// ignored once a newer one has been seen.
    Epoch(u64)
);
number_type!(
    /// Revision (stream sequence) of a KV entry; the basis of every compare-and-set.
    Revision(u64)
);
number_type!(
    /// Generation of the membership view: incremented on every join, leave or expiry.
    Generation(u64)
);
number_type!(
    /// Distinguishes successive lives of the same member id (a re-join after a lost key).
    Incarnation(u64)
);
number_type!(
    /// Sequence number of a job's partitions (1, 2, 3, ... in creation order).
    PartitionId(u64)
);
number_type!(
    /// Fresh per grant: progress carrying any other token than a partition's current one is stale.
    PartitionLeaseToken(u64)
);
number_type!(
    /// Per-worker sequence of assignment records, increasing with every write of the record.
    ViewSeq(u64)
);
number_type!(
    /// How many partitions a worker runs at once; placement quotas are proportional to it.
    Capacity(u32)
);

/// A counter that only grows reached its largest value: the next one would wrap to a value below
/// every earlier one (and fence nothing), so the write that needs it is refused instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {value} is the largest there can be: refusing to wrap around")]
pub struct Exhausted {
    pub kind: &'static str,
    pub value: u64,
}

macro_rules! checked_successor {
    ($name:ident, $kind:literal) => {
        impl $name {
            /// The next value, or [`Exhausted`] at `u64::MAX` (never wraps).
            pub const fn next(self) -> Result<Self, Exhausted> {
                match self.0.checked_add(1) {
                    Some(next) => Ok(Self(next)),
                    None => Err(Exhausted {
                        kind: $kind,
                        value: self.0,
                    }),
                }
            }
        }
    };
}

checked_successor!(Epoch, "epoch");
checked_successor!(Generation, "generation");
checked_successor!(ViewSeq, "assignment sequence");
checked_successor!(PartitionId, "partition id");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_one_thin_pointer_and_an_absent_one_costs_nothing() {
        assert_eq!(std::mem::size_of::<JobName>(), 8);
        assert_eq!(std::mem::size_of::<Option<MemberId>>(), 8);
        let name = MemberId::new("worker-1").unwrap();
        assert_eq!(name.as_str(), "worker-1");
        assert_eq!(format!("{name:?}"), "MemberId(\"worker-1\")");
    }

    #[test]
    fn names_compare_by_content_whether_shared_or_built_apart() {
        use std::collections::hash_map::DefaultHasher;
        use std::hash::{Hash, Hasher};
        let hash = |name: &JobName| {
            let mut hasher = DefaultHasher::new();
            name.hash(&mut hasher);
            hasher.finish()
        };
        let a = JobName::new("alpha").unwrap();
        let shared = a.clone();
        let apart = JobName::new("alpha").unwrap();
        let b = JobName::new("beta").unwrap();
        assert_eq!(a, shared);
        assert_eq!(a, apart);
        assert_eq!(a.cmp(&apart), std::cmp::Ordering::Equal);
        assert_eq!(hash(&a), hash(&apart));
        assert!(a < b && b > apart);
        assert_ne!(a, b);
        let encoded = serde_json::to_string(&a).unwrap();
        assert_eq!(encoded, "\"alpha\"");
        assert_eq!(serde_json::from_str::<JobName>(&encoded).unwrap(), a);
    }

    #[test]
    fn counters_refuse_to_wrap() {
        assert_eq!(Epoch(1).next(), Ok(Epoch(2)));
        let exhausted = Epoch(u64::MAX).next().unwrap_err();
        assert_eq!(exhausted.value, u64::MAX);
        assert!(exhausted.to_string().contains("epoch"));
        assert!(Generation(u64::MAX).next().is_err());
        assert!(ViewSeq(u64::MAX).next().is_err());
        assert!(PartitionId(u64::MAX).next().is_err());
    }

    #[test]
    fn tokens_accept_letters_digits_dash_underscore() {
        assert!(MemberId::new("worker-1_a").is_ok());
        assert_eq!(JobName::new("job").unwrap().as_str(), "job");
    }

    #[test]
    fn tokens_reject_wildcards_dots_and_empty() {
        for bad in ["a.b", "*", ">", "a b", "", "ü"] {
            let error = MemberId::new(bad).unwrap_err();
            assert!(!error.to_string().is_empty(), "{bad}");
        }
        let long = "x".repeat(MAX_TOKEN_LEN + 1);
        assert!(matches!(
            Namespace::new(long),
            Err(InvalidToken::TooLong { .. })
        ));
    }
}
