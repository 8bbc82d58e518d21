//! Asking open-ended jobs' planners how far their data goes, in short-lived background tasks whose
//! answers come back to the leader loop as events.

use crate::model::PlanQuestion;
use bytes::Bytes;
use elk_nats::Resources;
use elk_nats::trace::{self, OtelSpan};
use elk_protocol::admin::{PlanReply, PlanRequest};
use elk_protocol::{decode, encode};
use elk_types::JobName;
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;
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
    // A traced process starts a trace per question (the planner's span continues it).
    let mut span = trace::enabled().then(|| {
        trace::start_span(
            "elk.plan.request",
            SpanKind::Client,
            None,
            vec![
                KeyValue::new("elk.job", question.job.to_string()),
                KeyValue::new("elk.cursor", question.cursor as i64),
            ],
            &[],
        )
    });
    let headers = span
        .as_ref()
        .and_then(|span| trace::headers_for(span.span_context()));
    tokio::spawn(async move {
        let payload = Bytes::from(encode(&request));
        let asked = async {
            match headers {
                Some(headers) => client.request_with_headers(subject, headers, payload).await,
                None => client.request(subject, payload).await,
            }
        };
        let reply = tokio::time::timeout(PLANNER_TIMEOUT, asked).await;
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
        if let Some(span) = &mut span {
            span.set_attribute(KeyValue::new(
                "elk.max_id",
                max_id.map_or(-1, |id| id as i64),
            ));
            span.end();
        }
        let _ = answers.send((question.job, max_id));
    });
}
