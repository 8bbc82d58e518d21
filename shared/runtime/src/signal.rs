//! SIGINT / SIGTERM as a future: the first asks for a graceful stop, a second exits at once; and
//! [`serve_until`], which turns a `shutdown` future into the cancellation a service's work
//! watches.

use std::future::Future;
use tokio_util::sync::CancellationToken;

/// Runs `serve(stop)` until it returns. If `shutdown` resolves first, `stop` is cancelled and
/// `serve` is awaited, so it stops in its own order (hand back leases, leave). Dropping the
/// returned future (e.g. an aborted task) cancels `stop` as well, so nothing `serve` started
/// outlives it.
pub async fn serve_until<T, F, Fut>(shutdown: impl Future<Output = ()>, serve: F) -> T
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = T>,
{
    let stop = CancellationToken::new();
    let _cancel_on_drop = stop.clone().drop_guard();
    let serving = serve(stop.clone());
    tokio::pin!(serving);
    tokio::pin!(shutdown);
    tokio::select! {
        result = &mut serving => return result,
        () = &mut shutdown => stop.cancel(),
    }
    serving.await
}

/// Resolves on the first SIGINT or SIGTERM; a second signal exits the process immediately.
pub async fn shutdown_signal() {
    wait_for_signal().await;
    tracing::info!("shutdown requested; a second signal exits immediately");
    tokio::spawn(async {
        wait_for_signal().await;
        std::process::exit(130);
    });
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shutdown_cancels_and_awaits_the_work() {
        let outcome = serve_until(std::future::ready(()), |stop| async move {
            stop.cancelled().await;
            "stopped in order"
        })
        .await;
        assert_eq!(outcome, "stopped in order");
        let finished = serve_until(std::future::pending(), |_stop| async { 7 }).await;
        assert_eq!(finished, 7);
    }
}
