//! Key-level access to a KV bucket: what a client whose permissions cover single keys — a
//! worker, allowed only its own member and assignment keys — can do, with no request that needs
//! bucket-wide rights.
//!
//! [`KeyBucket`] reads a key with a direct get (`$JS.API.DIRECT.GET.KV_<bucket>.$KV.<bucket>.<key>`),
//! writes and deletes it with JetStream publishes to `$KV.<bucket>.<key>`, and watches one key
//! through an ordered consumer created under a random name with the key as its filter
//! (`$JS.API.CONSUMER.CREATE.KV_<bucket>.<name>.$KV.<bucket>.<key>`): the filter is part of the
//! API subject, so a server permission on that subject pins the watch to that key. Unlike
//! async-nats' `kv::Store`, nothing here asks for the stream's info (which would list every key).

use crate::error::NatsError;
use crate::kv::{Bucket, KvEntry};
use async_nats::HeaderMap;
use async_nats::jetstream::consumer::push::{Ordered, OrderedConfig};
use async_nats::jetstream::consumer::{DeliverPolicy, ReplayPolicy};
use async_nats::jetstream::context::Context;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{DirectGetErrorKind, Stream};
use elk_types::Revision;
use futures::StreamExt;
use std::time::Duration;

const KV_OPERATION: &str = "KV-Operation";
const MARKER_REASON: &str = "Nats-Marker-Reason";
const TTL_HEADER: &str = "Nats-TTL";

/// A KV bucket addressed by name; see the module documentation.
#[derive(Clone)]
pub struct KeyBucket {
    jetstream: Context,
    name: String,
    stream: Stream<()>,
}

impl std::fmt::Debug for KeyBucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyBucket")
            .field("name", &self.name)
            .finish()
    }
}

impl KeyBucket {
    /// The bucket `name` (no request is made: a missing bucket shows on first use as
    /// [`NatsError::NotProvisioned`]).
    pub async fn open(jetstream: &Context, name: impl Into<String>) -> Result<Self, NatsError> {
        let name = name.into();
        let stream = jetstream
            .get_stream_no_info(format!("KV_{name}"))
            .await
            .map_err(|error| NatsError::kv("open", &name, "", error))?;
        Ok(Self {
            jetstream: jetstream.clone(),
            name,
            stream,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The JetStream context the bucket is used through.
    pub fn jetstream(&self) -> &Context {
        &self.jetstream
    }

    fn subject(&self, key: &str) -> String {
        format!("$KV.{}.{key}", self.name)
    }

    /// The key's latest entry (delete markers included), `None` if it has none.
    pub async fn read(&self, key: &str) -> Result<Option<KvEntry>, NatsError> {
        Ok(self.read_with_ttl(key).await?.map(|(entry, _)| entry))
    }

    /// [`KeyBucket::read`], with the per-key TTL the entry was written with (`None`: written
    /// without one, or with `never`: it stays until someone deletes it).
    pub async fn read_with_ttl(
        &self,
        key: &str,
    ) -> Result<Option<(KvEntry, Option<Duration>)>, NatsError> {
        match self
            .stream
            .direct_get_last_for_subject(self.subject(key))
            .await
        {
            Ok(message) => Ok(Some((
                KvEntry {
                    key: key.to_owned(),
                    deleted: is_marker(&message.headers),
                    value: message.payload,
                    revision: Revision(message.sequence),
                },
                stored_ttl(&message.headers),
            ))),
            Err(error) => match error.kind() {
                DirectGetErrorKind::NotFound => Ok(None),
                DirectGetErrorKind::ErrorResponse(status, _) if status.as_u16() == 503 => {
                    Err(NatsError::NotProvisioned {
                        resource: format!("bucket {}", self.name),
                    })
                }
                _ => Err(NatsError::kv("read", &self.name, key, error)),
            },
        }
    }

    /// Deletes `key` (a `KV-Operation: DEL` marker) if it is still at `expected`.
    pub async fn delete(&self, key: &str, expected: Revision) -> Result<(), NatsError> {
        let mut headers = HeaderMap::new();
        headers.insert(KV_OPERATION, "DEL");
        let message = PublishMessage::build()
            .headers(headers)
            .expected_last_subject_sequence(expected.get());
        let failed = |error: async_nats::jetstream::context::PublishError| {
            NatsError::kv("delete", &self.name, key, error)
        };
        self.jetstream
            .send_publish(self.subject(key), message)
            .await
            .map_err(failed)?
            .await
            .map_err(failed)?;
        Ok(())
    }

    /// Watches `key`: its current entry first (if any), then every change, delete markers
    /// included.
    pub async fn watch_key(&self, key: &str) -> Result<KeyWatch, NatsError> {
        let client = self.jetstream.client();
        // A random consumer name: the API subject then carries the filter, and nobody can guess
        // the name to delete or update someone else's watch.
        let inbox = client.new_inbox();
        let nonce = inbox.rsplit('.').next().unwrap_or("watch");
        let consumer = self
            .stream
            .create_consumer(OrderedConfig {
                name: Some(format!("elk_watch_{nonce}")),
                deliver_subject: inbox,
                description: Some(format!("watch of {}/{key}", self.name)),
                filter_subject: self.subject(key),
                deliver_policy: DeliverPolicy::LastPerSubject,
                replay_policy: ReplayPolicy::Instant,
                ..Default::default()
            })
            .await
            .map_err(|error| NatsError::watch(&self.name, error))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|error| NatsError::watch(&self.name, error))?;
        Ok(KeyWatch {
            bucket: self.name.clone(),
            key: key.to_owned(),
            messages,
        })
    }
}

impl Bucket for KeyBucket {
    fn bucket_name(&self) -> &str {
        &self.name
    }

    async fn read_key(&self, key: &str) -> Result<Option<KvEntry>, NatsError> {
        self.read(key).await
    }
}

/// A watch of one key ([`KeyBucket::watch_key`]).
pub struct KeyWatch {
    bucket: String,
    key: String,
    messages: Ordered,
}

impl KeyWatch {
    /// The next entry; `None` when the watch ended.
    pub async fn next(&mut self) -> Option<Result<KvEntry, NatsError>> {
        let message = match self.messages.next().await? {
            Ok(message) => message,
            Err(error) => return Some(Err(NatsError::watch(&self.bucket, error))),
        };
        let revision = match message.info() {
            Ok(info) => info.stream_sequence,
            Err(error) => {
                return Some(Err(NatsError::watch(&self.bucket, error.to_string())));
            }
        };
        let deleted = message.headers.as_ref().is_some_and(is_marker);
        Some(Ok(KvEntry {
            key: self.key.clone(),
            value: message.payload.clone(),
            revision: Revision(revision),
            deleted,
        }))
    }
}

/// The largest per-key TTL a lease key (a member key, the election lease) is honoured with. Every
/// configured TTL is at most this; a key written without a TTL, with `never` or with a longer one
/// was not written by an ELK component (a misconfigured server let another client write it) and
/// would otherwise make a permanent member or election holder: it is taken over by whoever wants
/// the key ([`crate::MemberLease::acquire`]) and left out of the membership view.
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(60);

/// Whether a lease key written with `ttl` ([`KeyBucket::read_with_ttl`]) is honoured.
pub fn honoured_ttl(ttl: Option<Duration>) -> bool {
    ttl.is_some_and(|ttl| ttl <= MAX_LEASE_TTL)
}

/// The `Nats-TTL` header of a stored message: whole seconds (what ELK and async-nats write) or a Go
/// duration (`90s`, `1m30s`, what other clients may write); `never`, absent or unreadable: `None`.
pub fn stored_ttl(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(TTL_HEADER)?.as_str().trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    parse_go_duration(value)
}

/// A Go duration of positive parts (`1h2m3s`, `500ms`); `None` if it is not one.
fn parse_go_duration(text: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit() && c != '.')?;
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let seconds_per_unit = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += Duration::try_from_secs_f64(number * seconds_per_unit).ok()?;
        rest = &rest[unit_len..];
    }
    Some(total)
}

/// A delete, purge or TTL-expiry marker rather than a value.
fn is_marker(headers: &HeaderMap) -> bool {
    let operation = headers.get(KV_OPERATION).map(|value| value.as_str());
    matches!(operation, Some("DEL" | "PURGE")) || headers.get(MARKER_REASON).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ttl_of(value: &str) -> Option<Duration> {
        let mut headers = HeaderMap::new();
        headers.insert(TTL_HEADER, value);
        stored_ttl(&headers)
    }

    #[test]
    fn ttl_headers_in_seconds_and_go_durations() {
        assert_eq!(ttl_of("3"), Some(Duration::from_secs(3)));
        assert_eq!(ttl_of("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(ttl_of("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(ttl_of("1500ms"), Some(Duration::from_millis(1500)));
        assert_eq!(ttl_of("never"), None);
        assert_eq!(ttl_of("5x"), None);
        assert_eq!(stored_ttl(&HeaderMap::new()), None);
        assert!(honoured_ttl(Some(Duration::from_secs(3))));
        assert!(!honoured_ttl(Some(MAX_LEASE_TTL + Duration::from_secs(1))));
        assert!(!honoured_ttl(None));
    }
}
