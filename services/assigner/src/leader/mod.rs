//! The assigner's leader work for one term ([`elk_nats::LeaderWork`], run by the role supervisor):
//! load the namespace's state from KV (`load.rs`), then react to membership views, admin
//! requests, planner answers (`planner.rs`), progress reports (`feed.rs` keeps the durable
//! consumer alive, `progress.rs` applies them) and a resync tick, in that priority.
//! Every iteration applies its events to the model, runs one `AssignerState::reconcile`, checks
//! that the term is still current, writes the round's change set (`crate::store`) and only then
//! acks the progress reports and sends the admin reply.

mod feed;
mod load;
mod planner;
mod progress;

use crate::error::AssignerError;
use crate::error::{Feed, JetstreamOperation};
use crate::faults::Faults;
use crate::metrics::AssignerMetrics;
use crate::model::Policy;
use crate::{admin, store};
use elk_nats::{LeaderTerm, LeaderWork, Resources, TermEnd, Versioned};
use elk_protocol::admin::{ASSIGNER_SERVICE, AdminErrorCode, AdminReply};
use elk_protocol::messages::{MembershipView, unix_ms_now};
use futures::StreamExt;
use progress::Reclaims;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Clears the term's leader-only gauges when dropped.
struct TermGauges<'a>(&'a AssignerMetrics);

impl Drop for TermGauges<'_> {
    fn drop(&mut self) {
        self.0.term_ended();
    }
}

/// Progress reports applied per iteration at most.
const PROGRESS_BATCH: usize = 1_000;

/// Partition puts (or grants in assignment records) in one slice of a round's change set: a cold
/// start that cuts and grants 100,000 partitions in one round writes them 10,000 at a time, then
/// the workers' records about 10,000 grants at a time, so those records and the writes' results
/// never stand in memory all at once (`take_changes_bounded`).
pub(crate) const FLUSH_SLICE: usize = 10_000;

/// What the leader work needs besides its term; one per replica, shared by its terms.
pub(crate) struct AssignerLeader {
    pub resources: Resources,
    pub policy: Policy,
    pub tick: Duration,
    pub view: watch::Receiver<Option<Versioned<MembershipView>>>,
    pub metrics: Arc<AssignerMetrics>,
    pub faults: Faults,
    /// Compaction may purge a job's keys by range (`store`); cleared for the process's
    /// lifetime when the server refuses one.
    pub range_purges_allowed: std::sync::atomic::AtomicBool,
}

impl LeaderWork for AssignerLeader {
    type Error = AssignerError;

    async fn lead(
        &self,
        term: LeaderTerm,
        cancel: CancellationToken,
    ) -> Result<TermEnd, AssignerError> {
        match self.lead_term(&term, cancel).await {
            Ok(()) => Ok(TermEnd::Cancelled),
            Err(AssignerError::Deposed { epoch }) => {
                tracing::warn!(%epoch, "deposed: a newer assigner exists");
                Ok(TermEnd::Deposed)
            }
            Err(error) => Err(error),
        }
    }
}

impl AssignerLeader {
    async fn lead_term(
        &self,
        term: &LeaderTerm,
        cancel: CancellationToken,
    ) -> Result<(), AssignerError> {
        let resources = &self.resources;
        let epoch = term.epoch();
        self.metrics.term_started();
        // However the term ends (an error, a cancel, the task dropped), its gauges go with it.
        let _term_gauges = TermGauges(&self.metrics);
        let mut state = load::load_state(resources, epoch, self.policy.clone()).await?;
        tracing::info!(
            %epoch,
            jobs = state.job_count(),
            live_partitions = state.live_partition_count(),
            "assigner leading"
        );
        let mut feed = feed::ProgressFeed::open(
            resources.progress.clone(),
            self.metrics.clone(),
            PROGRESS_BATCH,
        )
        .await?;
        let admin_subject = resources.names.admin_subject(ASSIGNER_SERVICE, ">");
        let mut admin = resources
            .client
            // A queue group: during a leader change only one replica answers a request.
            .queue_subscribe(admin_subject, "assigner".to_owned())
            .await
            .map_err(|e| AssignerError::jetstream(JetstreamOperation::AdminSubscription, e))?;

        let mut view = self.view.clone();
        let mut reclaims = Reclaims::default();
        let current_view = view.borrow_and_update().clone();
        if let Some(current_view) = current_view {
            reclaims
                .apply_view(&mut state, &current_view.value, resources)
                .await?;
        }
        state.restamp_all_assignments();
        // Planner answers come back through this channel from short-lived request tasks.
        let (plan_sender, mut plan_answers) = tokio::sync::mpsc::unbounded_channel();
        let mut tick = tokio::time::interval(self.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        loop {
            let mut batch = Vec::new();
            let mut admin_request = None;
            // Biased, and progress after admin requests and planner answers: a flood of
            // progress (forged or real) fills every round with a batch, and would otherwise keep
            // an admin request waiting as long as it lasts. Each round takes at most one batch,
            // so a request waits for one round at most.
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok(()),
                changed = view.changed() => {
                    if changed.is_err() {
                        return Err(AssignerError::FeedEnded(Feed::MembershipView));
                    }
                    let next_view = view.borrow_and_update().clone();
                    if let Some(next_view) = next_view {
                        reclaims.apply_view(&mut state, &next_view.value, resources).await?;
                    }
                }
                request = admin.next() => admin_request = request,
                Some((job, max_id)) = plan_answers.recv() => state.apply_plan_answer(&job, max_id),
                // The feed never ends: a consumer that disappears is re-created (`feed.rs`).
                reports = feed.next_batch(PROGRESS_BATCH) => batch = reports,
                _ = tick.tick() => {}
            }
            let round_started = Instant::now();
            let now = unix_ms_now();
            // Before this round's reports: departed members wait for the ack floor, which only
            // earlier rounds' acks move.
            reclaims
                .release_caught_up(&mut state, feed.consumer(), &self.metrics)
                .await;
            let max_reply = resources.client.server_info().max_payload;
            // The model's step, in one piece off the runtime (`off_the_runtime`).
            let (admin_reply, round, changes) = off_the_runtime(|| {
                self.faults.check();
                state.advance_clock(now);
                for message in &batch {
                    progress::apply_message(&mut state, message, &self.metrics);
                }
                let admin_reply = admin_request.map(|request| {
                    let span = admin_span(&request);
                    let traceparent = sampled_traceparent(&span);
                    let reply = span.in_scope(|| {
                        admin::handle(
                            &mut state,
                            &self.metrics,
                            &request.payload,
                            traceparent,
                            max_reply,
                        )
                    });
                    (request.reply, reply, span)
                });
                let round = state.reconcile(now);
                (admin_reply, round, state.take_changes_bounded(FLUSH_SLICE))
            });
            for question in round.plan_questions {
                planner::ask(resources, question, plan_sender.clone());
            }
            if !term.is_current() {
                return Err(AssignerError::Deposed { epoch });
            }
            // A traced admin request shows how long storing its change took.
            let flush_span = match &admin_reply {
                Some((_, _, span)) if !span.is_disabled() => {
                    tracing::info_span!(parent: span, "elk.assigner.flush")
                }
                _ => tracing::Span::none(),
            };
            let mut changes = changes;
            let flushed = loop {
                let flushed = store::write_changes(
                    changes,
                    epoch,
                    self.policy.write_path,
                    &self.range_purges_allowed,
                    &self.faults,
                    resources,
                    &self.metrics,
                )
                .instrument(flush_span.clone())
                .await;
                match flushed {
                    Ok(written) => state.record_written(written),
                    Err(error) => break Err(error),
                }
                // The rest of the round's change set, a slice at a time (`FLUSH_SLICE`).
                if !state.changes_pending() {
                    break Ok(());
                }
                if !term.is_current() {
                    return Err(AssignerError::Deposed { epoch });
                }
                changes = state.take_changes_bounded(FLUSH_SLICE);
            };
            match flushed {
                Ok(()) => {}
                Err(error) => {
                    if let Some((Some(reply_to), _, _)) = admin_reply {
                        let refused = AdminReply::error(
                            AdminErrorCode::Unavailable,
                            format!("could not store the change: {error}"),
                        );
                        self.reply(reply_to, &refused).await;
                    }
                    return Err(error);
                }
            }
            for message in &batch {
                if let Err(error) = message.ack().await {
                    tracing::debug!(%error, "progress ack failed; the report will be redelivered");
                }
            }
            if !batch.is_empty() {
                feed.acked();
            }
            if let Some((Some(reply_to), reply, span)) = admin_reply {
                self.reply(reply_to, &reply).instrument(span).await;
            }
            self.metrics
                .round_done(&mut state, round_started, reclaims.waiting());
            // After the reply: trimming applied reports waits for no one.
            feed.trim().await;
        }
    }

    async fn reply(&self, reply_to: async_nats::Subject, reply: &AdminReply) {
        if let Some(error) = &reply.error {
            tracing::Span::current().record("elk.refusal", error.code.as_str());
        }
        elk_nats::send_admin_reply(&self.resources.client, reply_to, reply).await;
    }
}

/// Runs a CPU-bound step of a round (the model's decisions, no I/O) so that the runtime's other
/// tasks keep running however long it takes. On a multi-thread runtime the worker thread first
/// hands its queued tasks and its scheduler slot to another thread (`block_in_place`): the
/// membership renewal, the role-lease follower and the NATS connection's I/O go on while a round
/// over 100,000 partitions computes. Without it, a round that held its thread past the member
/// TTL's fence deadline made the leader fence itself (a debug assigner at 500 workers: leader
/// lost, the job re-loaded, again). A current-thread runtime has no other thread to hand the
/// tasks to: the step runs inline there.
pub(super) fn off_the_runtime<R>(step: impl FnOnce() -> R) -> R {
    let flavor = tokio::runtime::Handle::try_current().map(|runtime| runtime.runtime_flavor());
    match flavor {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(step),
        _ => step(),
    }
}

/// The span of handling one admin request (`elk.admin.handle`, kind server) when this process
/// traces: a child of the client's span when the request carries one (a new trace otherwise);
/// none for a request whose trace is not sampled. It lasts until the reply is sent (the flush
/// of the round included).
fn admin_span(request: &async_nats::Message) -> tracing::Span {
    if !elk_nats::trace::enabled() {
        return tracing::Span::none();
    }
    let remote = elk_nats::trace::from_headers(request.headers.as_ref());
    if remote.as_ref().is_some_and(|context| !context.is_sampled()) {
        return tracing::Span::none();
    }
    let verb = request.subject.rsplit('.').next().unwrap_or_default();
    let span = tracing::info_span!(
        parent: None,
        "elk.admin.handle",
        otel.kind = "server",
        elk.verb = %verb,
        elk.refusal = tracing::field::Empty,
    );
    if let Some(remote) = remote {
        elk_nats::trace::set_remote_parent(&span, &remote);
    }
    span
}

/// The `traceparent` of `span` if it is sampled.
fn sampled_traceparent(span: &tracing::Span) -> Option<String> {
    if span.is_disabled() {
        return None;
    }
    let context = elk_nats::trace::span_context(span);
    context
        .is_sampled()
        .then(|| elk_nats::trace::format_traceparent(&context))
}
