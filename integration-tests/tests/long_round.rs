//! A leader round that holds its thread longer than the member TTL does not cost the leader its
//! role. The assigner's model step is CPU-bound (a round over 100,000 partitions took seconds in a
//! debug build); it must not keep the membership renewal, the role-lease follower or the NATS
//! connection from running, or the leader fences itself and the role moves (the 500-worker scale
//! run lost its leader so, and never completed).
//!
//! The runtime has a single worker thread, like a loaded machine whose other thread is busy: a
//! round that blocked it would starve every other task of the process. A test hook makes one
//! round sleep on its thread for twice the member TTL; afterwards the same incarnation still
//! leads under the same epoch, in its first term.

use elk_assigner::AssignerMetrics;
use elk_assigner::test_hooks::LeaderFaults;
use elk_integration_tests::Stack;
use elk_nats::NatsConfig;
use elk_runtime::ServiceCommon;
use elk_testkit::wait_until;
use elk_types::MemberId;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(60);

/// Timeout of one `stats` request.
const STATS_TIMEOUT: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_round_longer_than_the_member_ttl_keeps_the_leader_in_its_term() {
    let stack = Stack::new().await.unwrap();
    let election = stack.election("election-1");
    let service = ServiceCommon::new(
        NatsConfig::new(stack.url(), "assigner-1"),
        stack.namespace.clone(),
        MemberId::new("assigner-1").unwrap(),
    )
    .with_member_ttl(stack.member_ttl);
    let faults = Arc::new(LeaderFaults::default());
    let metrics = Arc::new(AssignerMetrics::default());
    let stop = CancellationToken::new();
    let run = elk_assigner::run_with_faults(
        elk_assigner::AssignerConfig::new(service),
        metrics.clone(),
        faults.clone(),
        stop.clone().cancelled_owned(),
    );
    let assigner = tokio::spawn(async move { run.await.expect("assigner replica runs") });
    wait_until("assigner-1 leads and serves", DEADLINE, || async {
        let (Some(me), Some(lease)) = (
            stack.member_ref("assigner-1").await,
            stack.assigner_lease().await,
        ) else {
            return false;
        };
        lease.holder == Some(me)
            && stack
                .assigner_stats_once(STATS_TIMEOUT)
                .await
                .is_some_and(|stats| stats.epoch == lease.epoch)
    })
    .await
    .unwrap();
    let before = stack.assigner_lease().await.unwrap();
    let leader = stack.member_ref("assigner-1").await.unwrap();

    faults.block_next_round(stack.member_ttl * 2);
    wait_until("the blocked round ended", DEADLINE, || async {
        faults.rounds_blocked() == 1
    })
    .await
    .unwrap();
    // A round after the long one answers, under the same epoch.
    wait_until("the leader serves again", DEADLINE, || async {
        stack.assigner_stats_once(STATS_TIMEOUT).await.is_some()
    })
    .await
    .unwrap();
    let stats = stack.assigner_stats_once(STATS_TIMEOUT).await.unwrap();
    let after = stack.assigner_lease().await.unwrap();
    assert_eq!(
        after.epoch, before.epoch,
        "the role moved: the long round cost the leader its membership"
    );
    assert_eq!(after.holder, Some(leader.clone()), "same incarnation leads");
    assert_eq!(stats.epoch, before.epoch);
    assert_eq!(
        stack.member_ref("assigner-1").await,
        Some(leader),
        "the member key was never lost (a re-join takes a new incarnation)"
    );
    assert_eq!(metrics.leader_terms.get(), 1, "one term, never restarted");

    stop.cancel();
    assigner.await.unwrap();
    election.stop().await;
}
