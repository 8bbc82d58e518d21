//! The worker's observable lifecycle: [`WorkerEvent`]s, delivered to every [`WorkerEvents`]
//! subscriber ([`crate::WorkerHandle::events`]).
//!
//! ```text
//!   start ─▶ Joined ──▶ (Revoked)* ──▶ Draining{Shutdown} ─▶ Left
//!              │  ▲                  Draining{Assigner}: the assigner asked for everything back
//!              ▼  │
//!            Fenced ─▶ Rejoined (a new incarnation) ─▶ ...
//! ```
//!
//! Events are broadcast from the worker's coordination thread; a subscriber that falls more than
//! [`EVENT_BUFFER`] events behind skips the oldest (counted by [`WorkerEvents::missed`]).

use elk_types::{Incarnation, JobName, PartitionId, PartitionLeaseToken};
use std::sync::Mutex;
use std::time::SystemTime;
use tokio::sync::broadcast;

/// Events a subscriber may fall behind by before it skips the oldest.
pub const EVENT_BUFFER: usize = 1_024;

/// Something that happened to the worker as a member of the coordination.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WorkerEvent {
    /// The worker joined the namespace as `incarnation` (emitted once, before `start` returns).
    Joined { incarnation: Incarnation },
    /// The membership of `incarnation` was lost (it could not be renewed in time, or the key was
    /// taken): every partition was stopped and dropped without a report. A re-join follows.
    Fenced {
        incarnation: Incarnation,
        /// When the worker fenced (wall clock, for correlating with server timestamps).
        at: SystemTime,
    },
    /// After a fence, the worker joined again as a new incarnation.
    Rejoined {
        incarnation: Incarnation,
        previous: Incarnation,
    },
    /// The assigner took a grant away; the partition is being stopped and handed back with its
    /// checkpoint (rebalancing, a paused or cancelled job).
    Revoked {
        job: JobName,
        partition: PartitionId,
        token: PartitionLeaseToken,
    },
    /// The worker is handing everything back.
    Draining { cause: DrainCause },
    /// The worker left: every partition was handed back and the member key deleted.
    Left,
}

/// Why a worker drains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DrainCause {
    /// [`crate::WorkerHandle::shutdown`] was called.
    Shutdown,
    /// The assigner's record asked this incarnation to run nothing (its `drain` flag).
    Assigner,
}

/// The sending side, shared by the coordination thread and the handle.
#[derive(Debug)]
pub(crate) struct Lifecycle {
    sender: broadcast::Sender<WorkerEvent>,
    /// Subscribed before the worker started, so the first [`crate::WorkerHandle::events`] call
    /// sees `Joined` too.
    first: Mutex<Option<broadcast::Receiver<WorkerEvent>>>,
}

impl Lifecycle {
    pub(crate) fn new() -> Self {
        let (sender, first) = broadcast::channel(EVENT_BUFFER);
        Self {
            sender,
            first: Mutex::new(Some(first)),
        }
    }

    pub(crate) fn emit(&self, event: WorkerEvent) {
        tracing::debug!(?event, "worker event");
        // No subscriber is not an error: nobody is watching.
        let _ = self.sender.send(event);
    }

    pub(crate) fn subscribe(&self) -> WorkerEvents {
        let first = self
            .first
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .take();
        WorkerEvents {
            receiver: first.unwrap_or_else(|| self.sender.subscribe()),
            missed: 0,
        }
    }
}

/// A subscription to a worker's [`WorkerEvent`]s.
#[derive(Debug)]
pub struct WorkerEvents {
    receiver: broadcast::Receiver<WorkerEvent>,
    missed: u64,
}

impl WorkerEvents {
    /// The next event; `None` once the worker is gone (shut down, killed or dropped) and every
    /// event was received.
    pub async fn recv(&mut self) -> Option<WorkerEvent> {
        loop {
            match self.receiver.recv().await {
                Ok(event) => return Some(event),
                Err(broadcast::error::RecvError::Lagged(skipped)) => {
                    tracing::warn!(skipped, "worker event subscriber fell behind");
                    self.missed += skipped;
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// The next event if one is waiting, without blocking.
    pub fn try_recv(&mut self) -> Option<WorkerEvent> {
        loop {
            match self.receiver.try_recv() {
                Ok(event) => return Some(event),
                Err(broadcast::error::TryRecvError::Lagged(skipped)) => self.missed += skipped,
                Err(_) => return None,
            }
        }
    }

    /// Events skipped because this subscriber fell more than [`EVENT_BUFFER`] behind.
    pub fn missed(&self) -> u64 {
        self.missed
    }

    /// The subscription as a `futures::Stream`.
    pub fn into_stream(self) -> impl futures::Stream<Item = WorkerEvent> + Send + Unpin {
        Box::pin(futures::stream::unfold(self, |mut events| async move {
            events.recv().await.map(|event| (event, events))
        }))
    }
}
