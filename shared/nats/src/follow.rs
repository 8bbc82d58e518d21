//! Follow one key: a background task keeps a `tokio::sync::watch` channel holding the key's latest
//! decoded value. Used to follow role leases (`leases/role.*`) and the membership view.

use crate::error::NatsError;
use async_nats::jetstream::kv::{Operation, Store};
use elk_protocol::codec::Message;
use elk_protocol::decode;
use elk_types::Revision;
use futures::StreamExt;
use tokio::sync::watch;

/// A decoded value with the revision it was read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<M> {
    pub revision: Revision,
    pub value: M,
}

/// Starts following `key` in `store`. The channel holds `None` while the key is absent or deleted.
/// A value that fails to decode is logged and skipped (the previous value stays). The task ends
/// when every receiver is dropped.
pub async fn follow_key<M>(
    store: &Store,
    key: &str,
) -> Result<watch::Receiver<Option<Versioned<M>>>, NatsError>
where
    M: Message + Send + Sync + 'static,
{
    let mut entries = store
        .watch_with_history(key)
        .await
        .map_err(|error| NatsError::watch(&store.name, error))?;
    let initial = crate::kv::read_entry(store, key).await?;
    let initial = initial.filter(|entry| !entry.deleted).and_then(|entry| {
        decode::<M>(&entry.value).ok().map(|value| Versioned {
            revision: entry.revision,
            value,
        })
    });
    let (sender, receiver) = watch::channel(initial);
    let bucket = store.name.clone();
    let key = key.to_owned();
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                _ = sender.closed() => return,
                next = entries.next() => next,
            };
            let Some(next) = next else {
                tracing::warn!(%bucket, %key, "key watch ended");
                return;
            };
            let entry = match next {
                Ok(entry) => entry,
                Err(error) => {
                    tracing::warn!(%bucket, %key, %error, "key watch error");
                    continue;
                }
            };
            let update = match entry.operation {
                Operation::Put => match decode::<M>(&entry.value) {
                    Ok(value) => Some(Versioned {
                        revision: Revision(entry.revision),
                        value,
                    }),
                    Err(error) => {
                        tracing::warn!(%bucket, %key, %error, "ignoring undecodable value");
                        continue;
                    }
                },
                Operation::Delete | Operation::Purge => None,
            };
            // Never go back to an older revision than the one already held.
            let newer = match (sender.borrow().as_ref(), update.as_ref()) {
                (Some(held), Some(new)) => new.revision > held.revision,
                _ => true,
            };
            if newer {
                sender.send_replace(update);
            }
        }
    });
    Ok(receiver)
}
