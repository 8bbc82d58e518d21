//! One life of the worker — its membership lease and its assignment feed — and how a life begins
//! (join, re-join), ends by force (self-fence) and ends by choice (graceful shutdown and leave).

use super::{GrantKey, Supervisor, TaskOwner, terminal_event};
use crate::WorkerError;
use crate::assignments::AssignmentFeed;
use crate::config::WorkerConfig;
use crate::events::{DrainCause, WorkerEvent};
use crate::processor::ProcessResult;
use crate::stats::StatsCounters;
use crate::worker::Shared;
use elk_nats::{MemberLease, MemberResources, new_incarnation};
use elk_protocol::SCHEMA_VERSION;
use elk_protocol::messages::{MemberRecord, MemberRole, ProgressEvent};
use elk_types::Incarnation;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

/// One life of the worker: its membership lease and its assignment feed.
pub(crate) struct Session {
    pub(super) lease: MemberLease,
    pub(super) assignments: AssignmentFeed,
}

impl Session {
    /// Joins with a fresh incarnation and starts watching the worker's own assignment key.
    pub(crate) async fn open(
        resources: &MemberResources,
        config: &WorkerConfig,
        shared: &Shared,
    ) -> Result<Session, WorkerError> {
        let record = MemberRecord {
            schema: SCHEMA_VERSION,
            role: MemberRole::Worker,
            incarnation: new_incarnation(),
            capacity: config.capacity,
            jobs: config.jobs.clone(),
            labels: config.labels.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        let lease = MemberLease::join(
            &resources.members,
            config.id.clone(),
            record,
            config.member_ttl,
        )
        .await?;
        shared.metrics.status.joined(&lease);
        let feed = AssignmentFeed::open(
            resources.assignments.clone(),
            config.id.to_string(),
            config.assignment_resync,
            shared.stats.clone(),
        )
        .await;
        match feed {
            Ok(assignments) => Ok(Session { lease, assignments }),
            Err(error) => {
                if let Err(leave_error) = lease.leave().await {
                    tracing::warn!(%leave_error, "leave after a failed watch failed");
                }
                Err(error.into())
            }
        }
    }

    pub(crate) fn incarnation(&self) -> Incarnation {
        self.lease.incarnation()
    }
}

impl Supervisor {
    /// A session starts: publish the incarnation and the membership's deadline to what the worker
    /// shares with its handle and its processors, and announce it.
    pub(crate) fn begin(&mut self, session: &Session, previous: Option<Incarnation>) {
        let incarnation = session.incarnation();
        self.shared
            .incarnation
            .store(incarnation.get(), Ordering::Relaxed);
        self.membership = session.lease.deadline();
        self.drain_announced = false;
        tracing::info!(worker = %self.config.id, %incarnation, "worker joined");
        let event = match previous {
            None => WorkerEvent::Joined { incarnation },
            Some(previous) => WorkerEvent::Rejoined {
                incarnation,
                previous,
            },
        };
        self.shared.lifecycle.emit(event);
    }

    /// Self-fence: the coordinator may already have given this work away, so stop everything at
    /// once and publish nothing for it. Nothing here waits for a processor.
    pub(super) fn fence(&mut self, session: Session) {
        let incarnation = session.incarnation();
        StatsCounters::bump(&self.shared.stats.fences);
        tracing::warn!(
            worker = %self.config.id,
            %incarnation,
            running = self.tasks.len(),
            queued = self.queue.len(),
            "membership lost: self-fencing, dropping every partition without releasing"
        );
        drop(session);
        // Already expired by the lease itself; expiring again covers every way a session ends.
        self.membership.expire();
        self.shared.lifecycle.emit(WorkerEvent::Fenced {
            incarnation,
            at: SystemTime::now(),
        });
        self.cancel_running();
        // Another worker may get these partitions as soon as the member key expires: async
        // processors are aborted (at their next await), blocking ones cannot be; both become
        // orphans whose results are dropped and whose partitions wait for them.
        self.tasks.abort_all();
        for owner in self.task_owners.values_mut() {
            if let TaskOwner::Grant(key) = owner {
                *owner = TaskOwner::Orphan {
                    job: key.job.clone(),
                    partition: key.partition,
                };
            }
        }
        self.slots.clear();
        self.queue.clear();
        self.finished.clear();
        self.revoke_notices.clear();
        self.last_applied = None;
        self.update_gauges();
    }

    /// Re-joins with a new incarnation, retrying until it works or the worker shuts down.
    pub(super) async fn rejoin(&mut self) -> Option<Session> {
        let mut backoff = Duration::from_millis(100);
        loop {
            match Session::open(&self.resources, &self.config, &self.shared).await {
                Ok(session) => return Some(session),
                Err(error) => tracing::warn!(%error, "re-join failed; retrying"),
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return None,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(self.config.member_ttl);
        }
    }

    /// Waits up to `stop_grace` for every processor to return (calling `on_return` for those of
    /// current grants), then abandons the rest.
    async fn await_processors(&mut self, mut on_return: impl FnMut(GrantKey, ProcessResult)) {
        let grace = tokio::time::sleep(self.config.stop_grace);
        tokio::pin!(grace);
        loop {
            tokio::select! {
                joined = self.tasks.join_next_with_id() => {
                    let Some(joined) = joined else { return };
                    if let (Some(TaskOwner::Grant(key)), result) = self.identify(joined) {
                        on_return(key, result);
                    }
                }
                () = &mut grace => {
                    tracing::warn!(
                        still_running = self.tasks.len(),
                        "processors did not stop within the grace period; abandoning them"
                    );
                    self.tasks.abort_all();
                    self.tasks.detach_all();
                    self.task_owners.clear();
                    return;
                }
            }
        }
    }

    /// Graceful shutdown: stop, release everything with its checkpoint (acked), then leave.
    pub(super) async fn shut_down(&mut self, session: Session) -> Result<(), WorkerError> {
        tracing::info!(
            worker = %self.config.id,
            running = self.tasks.len(),
            queued = self.queue.len(),
            "shutting down: releasing partitions"
        );
        self.shared.lifecycle.emit(WorkerEvent::Draining {
            cause: DrainCause::Shutdown,
        });
        self.cancel_running();
        let mut returned = Vec::new();
        self.await_processors(|key, result| returned.push((key, result)))
            .await;
        for (key, result) in returned {
            let Some(slot) = self.slots.remove(&key) else {
                continue;
            };
            // Cancelled by the shutdown: an interrupted run is a release, as after a revoke.
            let event = terminal_event(result, true, slot.checkpoint.get());
            self.finish(key, &slot, event);
        }
        // Queued grants, and processors that had to be abandoned: hand back what is checkpointed.
        let remaining: Vec<GrantKey> = self.slots.keys().cloned().collect();
        let mut releases = Vec::new();
        for key in remaining {
            if let Some(slot) = self.slots.remove(&key) {
                let last_done = slot.checkpoint.get();
                StatsCounters::bump(&self.shared.stats.partitions_released);
                releases.push(self.outgoing(&slot, ProgressEvent::Released { last_done }));
            }
        }
        self.queue.clear();
        self.publisher.publish(releases, &self.membership);
        self.publisher.flush().await;
        let Session { lease, assignments } = session;
        drop(assignments);
        lease.leave().await?;
        if let Err(error) = self.resources.client.flush().await {
            tracing::debug!(%error, "final flush failed");
        }
        tracing::info!(worker = %self.config.id, "worker left");
        self.shared.lifecycle.emit(WorkerEvent::Left);
        Ok(())
    }
}
