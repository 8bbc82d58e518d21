//! One-shot reads of the records the multi-process benchmarks watch for: a lease (the view, a
//! role lease) and a job record. `None` when the key is absent, deleted, undecodable, or NATS did
//! not answer within 2 s (the benchmarks poll through nats-server restarts).

use elk_nats::Resources;
use elk_protocol::codec::Message;
use elk_protocol::decode;
use elk_protocol::messages::JobRecord;
use std::time::Duration;

pub(crate) async fn read_lease<M: Message>(resources: &Resources, key: &str) -> Option<M> {
    read(&resources.leases, key).await
}

pub(crate) async fn read_job(resources: &Resources, job: &str) -> Option<JobRecord> {
    read(&resources.jobs, job).await
}

async fn read<M: Message>(store: &async_nats::jetstream::kv::Store, key: &str) -> Option<M> {
    let entry = tokio::time::timeout(Duration::from_secs(2), elk_nats::read_entry(store, key))
        .await
        .ok()?
        .ok()??;
    (!entry.deleted)
        .then(|| decode(&entry.value).ok())
        .flatten()
}

/// Waits (up to 60 s) until the membership view lists exactly `workers` workers: a fleet that is
/// already running before a benchmark's clock starts.
pub(crate) async fn wait_for_view_workers(
    resources: &Resources,
    workers: usize,
) -> Result<(), elk_testkit::TimedOut> {
    elk_testkit::wait_until(
        "every worker in the view",
        Duration::from_secs(60),
        || async {
            read_lease::<elk_protocol::messages::MembershipView>(
                resources,
                elk_protocol::names::VIEW_KEY,
            )
            .await
            .is_some_and(|view| view.workers().count() == workers)
        },
    )
    .await
}
