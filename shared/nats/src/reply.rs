//! Sending an admin reply (the assigner's and the election's): never silently. A reply larger
//! than the server's maximum payload would be refused by the client, and the requester would only
//! see a timeout, so it is replaced by a `limit_exceeded` refusal that says so; a reply that still
//! cannot be published is logged with its subject.

use async_nats::{Client, Subject};
use elk_protocol::admin::{AdminErrorCode, AdminReply};
use elk_protocol::encode;

/// Publishes `reply` on `reply_to` (see the module header); returns whether it was handed to the
/// connection.
pub async fn send_admin_reply(client: &Client, reply_to: Subject, reply: &AdminReply) -> bool {
    let max_payload = client.server_info().max_payload;
    let mut payload = encode(reply);
    if max_payload > 0 && payload.len() > max_payload {
        tracing::error!(
            bytes = payload.len(),
            max_payload,
            subject = %reply_to,
            "admin reply exceeds the server's maximum payload; answering with a refusal"
        );
        let refusal = AdminReply::error(
            AdminErrorCode::LimitExceeded,
            format!(
                "the reply ({} bytes) exceeds the server's maximum payload ({max_payload} bytes)",
                payload.len()
            ),
        );
        payload = encode(&refusal);
    }
    match client.publish(reply_to.clone(), payload.into()).await {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(%error, subject = %reply_to, "could not publish an admin reply");
            false
        }
    }
}
