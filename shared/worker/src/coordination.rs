//! The worker's own runtime: a current-thread tokio runtime on a dedicated OS thread, where the
//! NATS connection, the membership renewal, the assignment watch, the supervisor and the progress
//! publisher run. User processors never run there, so no user code — a processor that blocks its
//! thread, a runtime whose workers are all busy — can delay a renewal past the fence deadline.
//!
//! (Processors stay on the caller's runtime, captured at start, rather than on a runtime per
//! partition as restate does: user code keeps the runtime, thread-locals and blocking pool it was
//! written for, and `BlockingProcessor` covers code that must not run on a runtime thread at all.)
//!
//! By default every worker starts its own [`CoordinationRuntime`]; a process running many workers
//! (benchmarks, fleets of small workers) may share one among them.

use std::fmt;
use std::sync::Arc;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// A dedicated thread running a current-thread tokio runtime for the workers' coordination work.
/// Cheap to clone; the thread stops (and everything still running on it is dropped) when the last
/// clone is dropped, including the clones the [`crate::WorkerHandle`]s hold.
#[derive(Clone)]
pub struct CoordinationRuntime {
    inner: Arc<Inner>,
}

struct Inner {
    handle: Handle,
    name: String,
    /// Dropping it ends the thread's `block_on`, which then drops the runtime.
    _stop: oneshot::Sender<()>,
}

impl fmt::Debug for CoordinationRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoordinationRuntime")
            .field("thread", &self.inner.name)
            .finish()
    }
}

impl CoordinationRuntime {
    /// Starts the thread (named `name`, e.g. `elk-worker`) and its runtime.
    pub fn start(name: &str) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(name.to_owned())
            // Headroom for debug builds, whose async frames are large; only touched pages count.
            .stack_size(4 << 20)
            .spawn(move || {
                // A current-thread runtime runs its tasks only while a thread is inside
                // `block_on`: this thread is, until the last handle is gone.
                runtime.block_on(async {
                    let _ = stopped.await;
                });
                // Dropping the runtime here cancels whatever is still spawned on it.
            })?;
        Ok(Self {
            inner: Arc::new(Inner {
                handle,
                name: name.to_owned(),
                _stop: stop,
            }),
        })
    }

    pub(crate) fn handle(&self) -> &Handle {
        &self.inner.handle
    }
}
