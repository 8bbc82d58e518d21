//! Asking open-ended jobs' planners how far their data goes, in short-lived background tasks whose
//! answers come back to the leader loop as events.

use crate::model::PlanQuestion;
use bytes::Bytes;
use elk_nats::Resources;
use elk_protocol::admin::{PlanReply, PlanRequest};
use elk_protocol::{decode, encode};
use elk_types::JobName;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;

/// How long the assigner waits for a planner's answer.
const PLANNER_TIMEOUT: Duration = Duration::from_secs(2);

/// A planner's answer: the job, and its highest known ID (`None` after a failure or timeout).
pub(super) type PlanAnswer = (JobName, Option<u64>);

/// Asks the job's planner in the background; the answer is sent to `answers`.
pub(super) fn ask(
    resources: &Resources,
    question: PlanQuestion,
    answers: UnboundedSender<PlanAnswer>,
) {
    let client = resources.client.clone();
    let subject = resources.names.plan_subject(&question.job);
    let request = PlanRequest {
        schema: elk_protocol::SCHEMA_VERSION,
        job: question.job.clone(),
        cursor: question.cursor,
        wanted: question.wanted,
    };
    tokio::spawn(async move {
        let reply = tokio::time::timeout(
            PLANNER_TIMEOUT,
            client.request(subject, Bytes::from(encode(&request))),
        )
        .await;
        let max_id = match reply {
            Ok(Ok(message)) => match decode::<PlanReply>(&message.payload) {
                Ok(reply) => reply.max_id,
                Err(error) => {
                    tracing::warn!(job = %question.job, %error, "malformed planner reply");
                    None
                }
            },
            Ok(Err(error)) => {
                tracing::debug!(job = %question.job, %error, "planner not reachable");
                None
            }
            Err(_) => None,
        };
        let _ = answers.send((question.job, max_id));
    });
}
