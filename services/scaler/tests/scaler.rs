//! elk-scaler against a real nats-server: it publishes the desired worker count while the
//! `role.scaler` lease names it (id + incarnation), and stops writing once the lease names
//! someone else.

use bytes::Bytes;
use elk_nats::{
    CasOutcome, NatsConfig, ProvisionConfig, Resources, cas_write, connect, provision, read_entry,
};
use elk_protocol::messages::{
    DesiredWorkers, JobRecord, JobSpec, MemberRecord, MemberRef, RoleLease,
};
use elk_protocol::names::{ControlRole, DESIRED_WORKERS_KEY, Names};
use elk_protocol::{SCHEMA_VERSION, decode, encode};
use elk_runtime::ServiceCommon;
use elk_scaler::{ScalerConfig, ScalerError, ScalerSettings};
use elk_testkit::{NatsServer, wait_until};
use elk_types::{
    Epoch, Generation, IdRange, Incarnation, JobName, MemberId, Namespace, PartitionId,
};
use std::time::Duration;
use tokio::sync::oneshot;

const DEADLINE: Duration = Duration::from_secs(20);

fn namespace() -> Namespace {
    Namespace::new("scale").unwrap()
}

async fn resources(server: &NatsServer) -> Resources {
    let client = connect(&NatsConfig::new(server.url(), "scaler-test"))
        .await
        .unwrap();
    provision(client, Names::new(namespace()), &ProvisionConfig::default())
        .await
        .unwrap()
}

async fn put<M: elk_protocol::codec::Message>(
    resources: &Resources,
    store: &async_nats::jetstream::kv::Store,
    key: &str,
    value: &M,
) {
    let expected = read_entry(store, key)
        .await
        .unwrap()
        .map(|entry| entry.revision);
    let outcome = cas_write(
        &resources.jetstream,
        store,
        key,
        Bytes::from(encode(value)),
        expected,
        None,
    )
    .await
    .unwrap();
    assert!(matches!(outcome, CasOutcome::Written(_)), "{outcome:?}");
}

fn job(partitions_total: u64, partitions_completed: u64) -> JobRecord {
    let mut record = JobRecord::new(
        JobName::new("backfill").unwrap(),
        JobSpec::fixed(IdRange::new(1, 10_000).unwrap(), 100),
        Epoch(0),
        0,
    );
    record.cursor = 10_001;
    record.next_partition = PartitionId(partitions_total + 1);
    record.partitions_total = partitions_total;
    record.partitions_completed = partitions_completed;
    record.ids_completed = partitions_completed * 100;
    record
}

fn lease(holder: MemberRef, epoch: u64) -> RoleLease {
    RoleLease {
        schema: SCHEMA_VERSION,
        holder: Some(holder),
        epoch: Epoch(epoch),
        generation: Generation(1),
    }
}

async fn incarnation_of(resources: &Resources, member_id: &MemberId) -> Option<Incarnation> {
    let entry = read_entry(&resources.members, member_id.as_str())
        .await
        .ok()??;
    if entry.deleted {
        return None;
    }
    decode::<MemberRecord>(&entry.value)
        .ok()
        .map(|record| record.incarnation)
}

async fn desired(resources: &Resources) -> Option<DesiredWorkers> {
    let entry = read_entry(&resources.fleet, DESIRED_WORKERS_KEY)
        .await
        .ok()??;
    decode::<DesiredWorkers>(&entry.value).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_publishes_desired_workers_and_stops_when_demoted() {
    let server = NatsServer::start();
    let resources = resources(&server).await;
    let member_id = MemberId::new("scaler-1").unwrap();
    let service = ServiceCommon::new(
        NatsConfig::new(server.url(), member_id.as_str()),
        namespace(),
        member_id.clone(),
    )
    .with_member_ttl(Duration::from_secs(2));
    let config = ScalerConfig {
        service,
        scaler: ScalerSettings {
            interval: Duration::from_millis(50),
            min_workers: 1,
            max_workers: 100,
            partitions_per_worker: 10,
            // Scale-downs 200 ms after a scale-up at the earliest (the stabilization window).
            scale_down_window: Duration::from_millis(200),
            ..ScalerSettings::default()
        },
    };
    let (shutdown, shutdown_signal) = oneshot::channel::<()>();
    let scaler = tokio::spawn(elk_scaler::run(config, async move {
        let _ = shutdown_signal.await;
    }));

    // 100 partitions, 25 completed: backlog 75 partitions → 8 workers.
    put(&resources, &resources.jobs, "backfill", &job(100, 25)).await;
    wait_until("scaler joined", DEADLINE, || async {
        incarnation_of(&resources, &member_id).await.is_some()
    })
    .await
    .unwrap();
    let me = MemberRef {
        id: member_id.clone(),
        incarnation: incarnation_of(&resources, &member_id).await.unwrap(),
    };
    assert_eq!(
        desired(&resources).await,
        None,
        "no write before being designated"
    );

    let role_key = ControlRole::Scaler.lease_key();
    put(
        &resources,
        &resources.leases,
        role_key,
        &lease(me.clone(), 3),
    )
    .await;
    wait_until("desired = 8 under epoch 3", DEADLINE, || async {
        desired(&resources)
            .await
            .is_some_and(|d| d.desired == 8 && d.epoch == Epoch(3))
    })
    .await
    .unwrap();
    let published = desired(&resources).await.unwrap();
    assert_eq!(published.backlog_partitions, 75);
    assert_eq!(published.backlog_ids, 7_500);
    assert_eq!(published.live_workers, 0);

    // Progress changes the count.
    put(&resources, &resources.jobs, "backfill", &job(100, 95)).await;
    wait_until("desired follows the backlog", DEADLINE, || async {
        desired(&resources)
            .await
            .is_some_and(|d| d.desired == 1 && d.backlog_partitions == 5)
    })
    .await
    .unwrap();

    // Another member takes the role: the scaler stops writing.
    let other = MemberRef {
        id: MemberId::new("scaler-2").unwrap(),
        incarnation: Incarnation(7),
    };
    put(&resources, &resources.leases, role_key, &lease(other, 4)).await;
    let revision_when_demoted = read_entry(&resources.fleet, DESIRED_WORKERS_KEY)
        .await
        .unwrap()
        .unwrap()
        .revision;
    put(&resources, &resources.jobs, "backfill", &job(100, 0)).await;
    // A logical window: two renewals of the scaler's member key (≈ 1.3 s, about 25 of its
    // 50 ms intervals) while the job changed; a demoted scaler must write nothing meanwhile.
    let renewals = std::sync::Mutex::new((None, 0u32));
    wait_until("two renewals of the demoted scaler", DEADLINE, || async {
        let revision = read_entry(&resources.members, member_id.as_str())
            .await
            .unwrap()
            .map(|entry| entry.revision);
        let mut seen = renewals.lock().unwrap();
        if seen.0.is_some() && seen.0 != revision {
            seen.1 += 1;
        }
        seen.0 = revision;
        seen.1 >= 2
    })
    .await
    .unwrap();
    let after = read_entry(&resources.fleet, DESIRED_WORKERS_KEY)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        after.revision, revision_when_demoted,
        "a demoted scaler wrote"
    );

    // Designated again under a newer epoch: it publishes again.
    put(&resources, &resources.leases, role_key, &lease(me, 5)).await;
    wait_until("desired = 10 under epoch 5", DEADLINE, || async {
        desired(&resources)
            .await
            .is_some_and(|d| d.desired == 10 && d.epoch == Epoch(5))
    })
    .await
    .unwrap();

    shutdown.send(()).unwrap();
    let result: Result<(), ScalerError> = scaler.await.unwrap();
    result.unwrap();
    let member = read_entry(&resources.members, member_id.as_str())
        .await
        .unwrap();
    assert!(
        member.is_none_or(|entry| entry.deleted),
        "left membership on shutdown"
    );
}

/// Issue 9 item 5: the leader follows the jobs bucket with one watch instead of listing and
/// reading every job key every round. Counted at the server: a wiretap on `$JS.API.>` sees every
/// JetStream request (direct gets, consumer creations, stream infos) naming the jobs stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_follows_jobs_with_a_watch_not_a_read_of_every_key_every_round() {
    const JOBS: u64 = 10;
    let server = NatsServer::start();
    let resources = resources(&server).await;
    let member_id = MemberId::new("scaler-1").unwrap();
    let service = ServiceCommon::new(
        NatsConfig::new(server.url(), member_id.as_str()),
        namespace(),
        member_id.clone(),
    )
    .with_member_ttl(Duration::from_secs(2));
    let config = ScalerConfig {
        service,
        scaler: ScalerSettings {
            interval: Duration::from_millis(50),
            min_workers: 1,
            max_workers: 1_000,
            partitions_per_worker: 10,
            ..ScalerSettings::default()
        },
    };
    let (shutdown, shutdown_signal) = oneshot::channel::<()>();
    let scaler = tokio::spawn(elk_scaler::run(config, async move {
        let _ = shutdown_signal.await;
    }));
    for index in 0..JOBS {
        put(
            &resources,
            &resources.jobs,
            &format!("job-{index}"),
            &job(100, 0),
        )
        .await;
    }
    // An undecodable record among them: skipped (and reported once, not every round).
    resources
        .jobs
        .put("garbage", Bytes::from_static(b"\xc1 not a job"))
        .await
        .unwrap();
    wait_until("scaler joined", DEADLINE, || async {
        incarnation_of(&resources, &member_id).await.is_some()
    })
    .await
    .unwrap();
    let me = MemberRef {
        id: member_id.clone(),
        incarnation: incarnation_of(&resources, &member_id).await.unwrap(),
    };
    let role_key = ControlRole::Scaler.lease_key();
    put(&resources, &resources.leases, role_key, &lease(me, 3)).await;
    wait_until(
        "the backlog of every job is published",
        DEADLINE,
        || async {
            desired(&resources)
                .await
                .is_some_and(|d| d.backlog_partitions == JOBS * 100)
        },
    )
    .await
    .unwrap();

    let jobs_stream = format!("KV_{}", Names::new(namespace()).jobs_bucket());
    let tap = connect(&NatsConfig::new(server.url(), "wiretap"))
        .await
        .unwrap();
    let mut requests = tap.subscribe("$JS.API.>").await.unwrap();
    tap.flush().await.unwrap();
    let jobs_requests = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = jobs_requests.clone();
    let counting = tokio::spawn(async move {
        while let Some(request) = futures::StreamExt::next(&mut requests).await {
            if request.subject.contains(jobs_stream.as_str()) {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    // A logical window: two renewals of the scaler's member key (≈ 1.3 s, about 25 rounds of
    // 50 ms). Listing and reading every key would be 25 × (1 + 11) requests.
    let renewals = std::sync::Mutex::new((None, 0u32));
    wait_until("two renewals of the scaler", DEADLINE, || async {
        let revision = read_entry(&resources.members, member_id.as_str())
            .await
            .unwrap()
            .map(|entry| entry.revision);
        let mut seen = renewals.lock().unwrap();
        if seen.0.is_some() && seen.0 != revision {
            seen.1 += 1;
        }
        seen.0 = revision;
        seen.1 >= 2
    })
    .await
    .unwrap();
    // The watch still sees changes: one more job moves the published backlog.
    put(&resources, &resources.jobs, "job-late", &job(100, 50)).await;
    wait_until("the new job is in the backlog", DEADLINE, || async {
        desired(&resources)
            .await
            .is_some_and(|d| d.backlog_partitions == JOBS * 100 + 50)
    })
    .await
    .unwrap();
    let counted = jobs_requests.load(std::sync::atomic::Ordering::SeqCst);
    // The scaler's own requests are none. The test's own `put` reads the key once before its
    // write (a direct get), which shows the tap sees such reads; one more is allowed for a watch
    // the client re-creates after a missed heartbeat on a loaded machine.
    assert!(
        (1..=2).contains(&counted),
        "{counted} JetStream requests on the jobs stream"
    );

    counting.abort();
    shutdown.send(()).unwrap();
    let result: Result<(), ScalerError> = scaler.await.unwrap();
    result.unwrap();
}
