//! [`ProcessError`]: how a processor tells the coordinator that a partition failed.
//!
//! Any `std::error::Error` converts into it, so `?` works inside a processor, and the error is kept
//! whole (its source chain goes into the report and stays reachable through
//! [`ProcessError::cause`]). A failure is *transient* by default — the assigner retries the
//! partition with backoff until the job's `max_attempts` — or *permanent*
//! ([`ProcessError::permanent`]): retrying cannot help (poison data), so the partition is parked as
//! `failed` at once, without spending the remaining attempts.

use std::error::Error as StdError;
use std::fmt;

/// A boxed error, as accepted by [`ProcessError::new`] and [`ProcessError::permanent`]: any
/// `std::error::Error + Send + Sync`, a `String` or a `&str`.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// A processor's failure on a partition; reported to the coordinator (`failed`) with the last
/// checkpoint.
///
/// Like `anyhow::Error`, it deliberately does not implement `std::error::Error` itself: that is
/// what lets every error type convert into it with `?`.
///
/// ```
/// use elk_worker::{PartitionWork, ProcessError, ProcessOutcome, Processor};
///
/// struct Parse;
///
/// impl Processor for Parse {
///     async fn process(&self, work: PartitionWork) -> Result<ProcessOutcome, ProcessError> {
///         for id in work.resume_from()..=work.range().last() {
///             // `?` converts the ParseIntError; the coordinator retries the partition later.
///             let value: u64 = id.to_string().parse()?;
///             if value == 0 {
///                 // Poison data: park the partition now instead of retrying it.
///                 return Err(ProcessError::permanent(format!("row {id} is corrupt")));
///             }
///             work.checkpoint(id);
///         }
///         Ok(ProcessOutcome::Completed)
///     }
/// }
/// ```
pub struct ProcessError {
    cause: BoxError,
    permanent: bool,
}

impl ProcessError {
    /// A transient failure: the assigner retries the partition (with backoff) until the job's
    /// `max_attempts` are spent, resuming from the last checkpoint.
    pub fn new(cause: impl Into<BoxError>) -> Self {
        Self {
            cause: cause.into(),
            permanent: false,
        }
    }

    /// A permanent failure: retrying cannot help, so the assigner parks the partition as `failed`
    /// at once (an operator can still `retry` it after fixing the data).
    pub fn permanent(cause: impl Into<BoxError>) -> Self {
        Self {
            cause: cause.into(),
            permanent: true,
        }
    }

    /// This failure, marked permanent (e.g. `ProcessError::from(error).into_permanent()`).
    pub fn into_permanent(mut self) -> Self {
        self.permanent = true;
        self
    }

    /// Whether the partition is parked at once instead of retried.
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }

    /// The error this failure wraps (downcast it with `downcast_ref`).
    pub fn cause(&self) -> &(dyn StdError + Send + Sync + 'static) {
        &*self.cause
    }

    /// The wrapped error's own source, if it has one.
    pub fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.cause.source()
    }

    /// The text reported to the coordinator: the message of every error in the chain, outermost
    /// first, joined by `": "`.
    pub fn message(&self) -> String {
        let mut message = self.cause.to_string();
        let mut next = self.cause.source();
        while let Some(source) = next {
            message.push_str(": ");
            message.push_str(&source.to_string());
            next = source.source();
        }
        message
    }
}

impl fmt::Display for ProcessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

impl fmt::Debug for ProcessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessError")
            .field("cause", &self.cause)
            .field("permanent", &self.permanent)
            .finish()
    }
}

/// `?` on any error inside a processor: a transient failure keeping the error as its cause.
impl<E: StdError + Send + Sync + 'static> From<E> for ProcessError {
    fn from(error: E) -> Self {
        Self::new(error)
    }
}

/// Hands the wrapped error on, e.g. to a function returning `Box<dyn Error + Send + Sync>`.
impl From<ProcessError> for BoxError {
    fn from(error: ProcessError) -> Self {
        error.cause
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read row 7")]
    struct ReadRow(#[source] std::io::Error);

    fn read_row() -> Result<(), ReadRow> {
        Err(ReadRow(std::io::Error::other("disk on fire")))
    }

    fn process() -> Result<(), ProcessError> {
        read_row()?;
        Ok(())
    }

    #[test]
    fn question_mark_keeps_the_error_and_its_chain() {
        let error = process().unwrap_err();
        assert!(!error.is_permanent());
        assert_eq!(error.message(), "cannot read row 7: disk on fire");
        assert!(error.cause().downcast_ref::<ReadRow>().is_some());
        assert_eq!(error.source().unwrap().to_string(), "disk on fire");
    }

    #[test]
    fn permanent_failures_from_text_or_errors() {
        let text = ProcessError::permanent("poison row 150");
        assert!(text.is_permanent());
        assert_eq!(text.to_string(), "poison row 150");
        let wrapped = ProcessError::from(ReadRow(std::io::Error::other("bad"))).into_permanent();
        assert!(wrapped.is_permanent());
        assert_eq!(wrapped.message(), "cannot read row 7: bad");
        let boxed: BoxError = wrapped.into();
        assert_eq!(boxed.to_string(), "cannot read row 7");
    }
}
