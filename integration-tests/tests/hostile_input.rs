//! Issue 9 item 7: hostile input while jobs run. A fixed job (`steady`) and an open-ended one
//! (`stream`, with a planner) run on real services — election, a leading and a standby assigner,
//! a scaler, workers — under the ownership auditor, while an anonymous client feeds every subject
//! the services consume and every key they read the corpus of `elk_integration_tests::hostile`
//! (empty, random, 1 MB, truncated MessagePack, deep nesting, unknown schemas, wrong types,
//! extreme numbers) plus forged ids:
//!
//! * progress subjects (`elk.<ns>.progress.<worker>`, a real worker's and a made-up one), with
//!   forged reports: unknown jobs and partitions, guessed tokens, a foreign incarnation, a worker
//!   speaking on another's subject, `u64::MAX` checkpoints, a 1 MB error;
//! * the admin subject of every verb and an unknown one, with invalid job specs, unknown jobs and
//!   partitions, extreme limits;
//! * the planner subject (requests a planner decodes) and planner replies (a hostile planner in the
//!   queue group answers the assigner's questions);
//! * every bucket: unknown keys everywhere, and the live keys the coordinator itself rewrites
//!   (`leases/view`, `jobs/steady`, a live partition, a live worker's assignment record,
//!   `fleet/desired`), then a leader failover that loads the buckets with the garbage in them.
//!
//! Asserted: no panic and no replica stopped; the roles keep their holders and epochs while the
//! input arrives; malformed progress is counted exactly and forged progress rejected; every admin
//! request is answered with a refusal (`bad_request` for what does not decode) and changes no job;
//! the planner answers every request and counts the malformed ones; the repairable keys are
//! rewritten by their owners; both jobs complete exactly (ledger and auditor: every ID once, no
//! overlap, no lost checkpoint).
//!
//! **Known gaps, kept out of the asserted set** (items 1–3, the permissions that keep anonymous
//! clients off these keys, are where they are handled; what item 4, defence in depth, closed is
//! tested in `services/election/tests/misconfigured.rs` and `defence_in_depth.rs`, listed in
//! `docs/security.md` §11: epochs that would wrap, deleted or garbled role leases, TTL-less
//! election leases and member keys, garbage over a member key, records with a forged epoch):
//! * *Decodable forged records* in buckets only the coordinator writes: a fake member with a TTL
//!   is placed (with at most `election.max_member_capacity`); a forged job, partition or
//!   assignment record is loaded by the next leader; a forged `fleet/desired` is shown until the
//!   scaler's value changes. Only undecodable values go into the buckets here.
//! * *Forged progress with an observed token* (`completed`, or an in-range `released`) is applied:
//!   tokens are readable by anyone without permissions (they can no longer be guessed from
//!   another, and a `last_done` outside the grant is refused).
//! * *Garbage over a coordinator key that is not rewritten before a failover* (`jobs/<job>`, a
//!   pending partition): the next leader skips the undecodable record and the job is lost. The
//!   scenario therefore waits for the leader to have rewritten them before it fails over.
//! * *A planner reply with `max_id` above the data* is believed: the planner is trusted.

use bytes::Bytes;
use elk_assigner::AssignerMetrics;
use elk_integration_tests::hostile::{self, Hostile, msgpack};
use elk_integration_tests::{Ledger, Stack, assert_invariants};
use elk_protocol::admin::{AdminErrorCode, AdminReply, AdminResult, PlanReply, PlanRequest};
use elk_protocol::codec::Message;
use elk_protocol::messages::{
    AssignmentRecord, DesiredWorkers, ElectionLease, JobRecord, JobSpec, JobState, MemberRecord,
    MembershipView, PartitionRecord, ProgressReport, RoleLease,
};
use elk_protocol::names::{ControlRole, DESIRED_WORKERS_KEY, ELECTION_KEY, VIEW_KEY};
use elk_protocol::{admin::AdminCommand, decode};
use elk_testkit::{OwnershipAuditor, wait_until};
use elk_types::{Epoch, IdRange, JobName};
use elk_worker::{PartitionWork, PlanError, ProcessError, ProcessOutcome, Processor};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(120);
const STEADY: &str = "steady";
const STREAM: &str = "stream";
/// The highest ID the real planner of `stream` reports.
const STREAM_MAX: u64 = 5_000;

/// Panics anywhere in this test process (services, workers and the planner run in-process).
static PANICS: AtomicU64 = AtomicU64::new(0);

fn count_panics() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            default(info);
        }));
    });
}

/// Processes both jobs into their own ledgers. `steady` stops half-way through each partition
/// until the gate opens, so its partitions are granted, running and checkpointing while the
/// hostile input arrives.
#[derive(Clone)]
struct GatedProcessor {
    steady: Arc<Ledger>,
    stream: Arc<Ledger>,
    gate: Arc<AtomicBool>,
}

impl Processor for GatedProcessor {
    async fn process(&self, work: PartitionWork) -> Result<ProcessOutcome, ProcessError> {
        let gated = work.job().as_str() == STEADY;
        let ledger = if gated { &self.steady } else { &self.stream };
        let range = work.range();
        let halfway = range.first() + (range.last() - range.first()) / 2;
        for id in work.resume_from()..=range.last() {
            while gated && id > halfway && !self.gate.load(Ordering::SeqCst) {
                if work.is_cancelled() {
                    return Ok(ProcessOutcome::Interrupted);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if work.is_cancelled() {
                return Ok(ProcessOutcome::Interrupted);
            }
            ledger.record(id);
            work.checkpoint(id);
            if id % 100 == 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        Ok(ProcessOutcome::Completed)
    }
}

/// The real planner of `stream`: a table of `STREAM_MAX` rows.
struct FixedTable;

impl elk_worker::Planner for FixedTable {
    async fn next_max_id(
        &self,
        _job: &JobName,
        _cursor: u64,
        _wanted: u64,
    ) -> Result<Option<u64>, PlanError> {
        Ok(Some(STREAM_MAX))
    }
}

/// Whether `bytes` decode as `M` (the protocol's own decoder, used as the oracle).
fn decodes<M: Message>(bytes: &[u8]) -> bool {
    decode::<M>(bytes).is_ok()
}

/// The generic corpus entries of `sample` that do not decode as `M`.
fn undecodable<M: Message>(sample: &Value) -> Vec<Hostile> {
    hostile::corpus(sample)
        .into_iter()
        .filter(|entry| !decodes::<M>(&entry.bytes))
        .collect()
}

async fn role_lease(stack: &Stack, role: ControlRole) -> RoleLease {
    let entry = elk_nats::read_entry(&stack.resources.leases, role.lease_key())
        .await
        .unwrap()
        .expect("the role lease exists");
    decode(&entry.value).expect("the role lease decodes")
}

async fn election_lease(stack: &Stack) -> ElectionLease {
    let entry = elk_nats::read_entry(&stack.resources.leases, ELECTION_KEY)
        .await
        .unwrap()
        .expect("the election lease exists");
    decode(&entry.value).expect("the election lease decodes")
}

/// Whether the key holds a decodable `M` (or is gone: compacted, pruned).
async fn decodable_or_gone<M: Message>(
    store: &async_nats::jetstream::kv::Store,
    key: &str,
) -> bool {
    match elk_nats::read_entry(store, key).await {
        Ok(Some(entry)) => entry.deleted || decodes::<M>(&entry.value),
        Ok(None) => true,
        Err(_) => false,
    }
}

async fn put(store: &async_nats::jetstream::kv::Store, key: &str, value: &[u8]) {
    store
        .put(key, Bytes::copy_from_slice(value))
        .await
        .unwrap_or_else(|error| panic!("hostile put of {key}: {error}"));
}

/// Progress subjects: the generic corpus and forged reports, on a real worker's subject and on a
/// made-up one. Returns (reports that must count as malformed, decodable reports that must be
/// rejected).
async fn feed_progress(stack: &Stack) -> (u64, u64) {
    let report = |worker: &str, job: &str, partition: Value, token: Value, event: Value| {
        json!({"schema": 1, "worker": worker, "incarnation": 1, "job": job,
               "partition": partition, "token": token, "event": event})
    };
    let sample = report(
        "ghost",
        STEADY,
        json!(1),
        json!(12_345),
        json!({"kind": "checkpoint", "last_done": 5}),
    );
    let mut entries = hostile::corpus(&sample);
    let events = [
        json!({"kind": "completed"}),
        json!({"kind": "released", "last_done": u64::MAX}),
        json!({"kind": "checkpoint", "last_done": u64::MAX}),
        json!({"kind": "failed", "error": "x".repeat(hostile::LARGE_PAYLOAD - 200),
               "last_done": null, "permanent": true}),
        json!({"kind": "explode"}),
        json!({"kind": "checkpoint", "last_done": -1}),
    ];
    for (index, event) in events.iter().enumerate() {
        for (token, partition) in [(0, 1), (1, 2), (u64::MAX, 3), ((1 << 32) | 1, 4)] {
            entries.push(Hostile::encoded(
                format!("forged event {index} token {token} partition {partition}"),
                &report(
                    "ghost",
                    STEADY,
                    json!(partition),
                    json!(token),
                    event.clone(),
                ),
            ));
        }
        // The real worker's id with a foreign incarnation, and unknown jobs and partitions.
        entries.push(Hostile::encoded(
            format!("worker-a's id, foreign incarnation, event {index}"),
            &report("worker-a", STEADY, json!(1), json!(7), event.clone()),
        ));
        entries.push(Hostile::encoded(
            format!("unknown job, event {index}"),
            &report("ghost", "no-such-job", json!(1), json!(1), event.clone()),
        ));
        entries.push(Hostile::encoded(
            format!("unknown partition, event {index}"),
            &report("ghost", STEADY, json!(u64::MAX), json!(1), event.clone()),
        ));
    }
    entries.push(Hostile::encoded(
        "job name that is not a token",
        &report(
            "ghost",
            "a.b",
            json!(1),
            json!(1),
            json!({"kind": "completed"}),
        ),
    ));
    entries.push(Hostile::encoded(
        "worker name that is not a token",
        &report(
            "gh ost",
            STEADY,
            json!(1),
            json!(1),
            json!({"kind": "completed"}),
        ),
    ));
    let names = &stack.resources.names;
    let mut malformed = 0;
    let mut rejected = 0;
    for (index, entry) in entries.iter().enumerate() {
        // Alternate between the made-up worker's subject and the real worker-a's.
        let worker = if index % 2 == 0 { "ghost" } else { "worker-a" };
        let subject = names.progress_subject(&elk_types::MemberId::new(worker).unwrap());
        stack
            .resources
            .jetstream
            .publish(subject, Bytes::copy_from_slice(&entry.bytes))
            .await
            .unwrap()
            .await
            .unwrap_or_else(|error| panic!("{}: not stored: {error}", entry.name));
        match decode::<ProgressReport>(&entry.bytes) {
            Ok(report) if report.worker.as_str() == worker => rejected += 1,
            _ => malformed += 1,
        }
    }
    (malformed, rejected)
}

/// Admin subjects: every verb's subject and an unknown one. Every request must be answered with a
/// refusal; what does not decode with `bad_request`.
async fn feed_admin(stack: &Stack) {
    let sample = json!({"schema": 1, "command": {"verb": "get_job", "name": "ghost-job"}});
    let mut entries: Vec<(Hostile, Option<AdminErrorCode>)> = hostile::corpus(&sample)
        .into_iter()
        .map(|entry| (entry, Some(AdminErrorCode::UnknownJob)))
        .collect();
    let spec = |changes: Value| {
        let mut spec = json!({"range": {"min": 1, "max": 100}, "partition_size": 10});
        for (key, value) in changes.as_object().unwrap() {
            spec[key] = value.clone();
        }
        spec
    };
    let invalid = Some(AdminErrorCode::InvalidSpec);
    let commands = [
        (
            json!({"verb": "create_job", "name": "bad-1", "spec": spec(json!({"range": {"min": 10, "max": 1}}))}),
            None,
        ),
        (
            json!({"verb": "create_job", "name": "bad-2", "spec": spec(json!({"partition_size": 0}))}),
            invalid,
        ),
        (
            json!({"verb": "create_job", "name": "bad-3", "spec": spec(json!({"partition_size": u64::MAX}))}),
            invalid,
        ),
        (
            json!({"verb": "create_job", "name": "bad-4", "spec": spec(json!({"range": {"min": 0, "max": u64::MAX}}))}),
            invalid,
        ),
        (
            json!({"verb": "create_job", "name": "bad-5", "spec": spec(json!({"max_attempts": 0}))}),
            invalid,
        ),
        (
            json!({"verb": "create_job", "name": "bad-6", "spec": spec(json!({"open_ended": true, "lookahead": 0}))}),
            invalid,
        ),
        (
            json!({"verb": "create_job", "name": "bad-7", "spec": spec(json!({"partition_size": -1}))}),
            None,
        ),
        (
            json!({"verb": "create_job", "name": STEADY, "spec": spec(json!({}))}),
            Some(AdminErrorCode::AlreadyExists),
        ),
        (
            json!({"verb": "create_job", "name": "a.b", "spec": spec(json!({}))}),
            None,
        ),
        (
            json!({"verb": "pause_job", "name": "ghost-job"}),
            Some(AdminErrorCode::UnknownJob),
        ),
        (
            json!({"verb": "resume_job", "name": "ghost-job"}),
            Some(AdminErrorCode::UnknownJob),
        ),
        (
            json!({"verb": "cancel_job", "name": "ghost-job"}),
            Some(AdminErrorCode::UnknownJob),
        ),
        (json!({"verb": "cancel_job", "name": "*"}), None),
        (
            json!({"verb": "retry", "job": "ghost-job"}),
            Some(AdminErrorCode::UnknownJob),
        ),
        (
            json!({"verb": "retry", "job": STEADY, "partition": u64::MAX}),
            Some(AdminErrorCode::UnknownPartition),
        ),
        (
            json!({"verb": "id_status", "job": "ghost-job", "id": u64::MAX}),
            Some(AdminErrorCode::UnknownJob),
        ),
        (
            json!({"verb": "list_partitions", "statuses": ["bogus"]}),
            None,
        ),
        (json!({"verb": "list_partitions", "limit": -1}), None),
        (json!({"verb": "self_destruct"}), None),
    ];
    for (index, (command, code)) in commands.into_iter().enumerate() {
        let request = json!({"schema": 1, "command": command});
        entries.push((
            Hostile::encoded(format!("forged command {index}"), &request),
            code,
        ));
    }
    let verbs = [
        "create_job",
        "list_jobs",
        "get_job",
        "pause_job",
        "resume_job",
        "cancel_job",
        "list_partitions",
        "retry",
        "id_status",
        "stats",
        "no_such_verb",
    ];
    let names = &stack.resources.names;
    for (index, (entry, code)) in entries.iter().enumerate() {
        let subject = names.admin_subject("assigner", verbs[index % verbs.len()]);
        let reply = tokio::time::timeout(
            Duration::from_secs(10),
            stack
                .resources
                .client
                .request(subject, Bytes::copy_from_slice(&entry.bytes)),
        )
        .await
        .unwrap_or_else(|_| panic!("{}: no answer", entry.name))
        .unwrap_or_else(|error| panic!("{}: {error}", entry.name));
        let reply: AdminReply = decode(&reply.payload)
            .unwrap_or_else(|error| panic!("{}: reply does not decode: {error}", entry.name));
        let error = reply
            .error
            .unwrap_or_else(|| panic!("{}: accepted: {:?}", entry.name, reply.result));
        let expected = if decodes::<elk_protocol::admin::AdminRequest>(&entry.bytes) {
            code.unwrap_or_else(|| {
                panic!("{}: decodes, but the test expected it not to", entry.name)
            })
        } else {
            AdminErrorCode::BadRequest
        };
        assert_eq!(error.code, expected, "{}: {}", entry.name, error.message);
    }
    // serde accepts a variant's index for a tag: `{"verb": 7}` is `retry` (every failed partition;
    // there is none, so nothing changes). Not a misread of anything a sender could mean otherwise.
    let by_index = Bytes::from(msgpack(&json!({"schema": 1, "command": {"verb": 7}})));
    let reply = stack
        .resources
        .client
        .request(names.admin_subject("assigner", "retry"), by_index)
        .await
        .unwrap();
    let reply: AdminReply = decode(&reply.payload).unwrap();
    assert_eq!(reply.result, Some(AdminResult::Retried { count: 0 }));
}

/// A hostile planner in the `planner` queue group answers the assigner's questions about `stream`
/// with the corpus, one entry per question, and leaves when every entry was sent. Replies that
/// decode to a `max_id` beyond the data are left out (the planner is trusted, see the known gaps).
async fn hostile_planner(stack: &Stack, mut questions: async_nats::Subscriber) -> usize {
    let replies: Vec<Hostile> = hostile::corpus(&json!({"schema": 1, "max_id": 3}))
        .into_iter()
        .filter(|entry| {
            decode::<PlanReply>(&entry.bytes).map_or(true, |reply| {
                reply.max_id.is_none_or(|max| max <= STREAM_MAX)
            })
        })
        .collect();
    let client = &stack.resources.client;
    for entry in &replies {
        let question = tokio::time::timeout(
            Duration::from_secs(30),
            futures::StreamExt::next(&mut questions),
        )
        .await
        .expect("the assigner asks the planner")
        .expect("subscription open");
        assert!(decodes::<PlanRequest>(&question.payload));
        let inbox = question.reply.expect("a request has a reply subject");
        client
            .publish(inbox, Bytes::copy_from_slice(&entry.bytes))
            .await
            .unwrap();
    }
    questions.unsubscribe().await.unwrap();
    client.flush().await.unwrap();
    replies.len()
}

fn plan_subject(stack: &Stack) -> String {
    stack
        .resources
        .names
        .plan_subject(&JobName::new(STREAM).unwrap())
}

/// Planner requests to the real planner: each is answered with a decodable reply; returns how
/// many must count as malformed (undecodable, or about another job).
async fn feed_planner(stack: &Stack) -> u64 {
    let sample = json!({"schema": 1, "job": STREAM, "cursor": 1, "wanted": 10});
    let mut entries = hostile::corpus(&sample);
    entries.push(Hostile::encoded(
        "another job",
        &json!({"schema": 1, "job": "other", "cursor": 1, "wanted": 10}),
    ));
    entries.push(Hostile::encoded(
        "extreme cursor and wanted",
        &json!({"schema": 1, "job": STREAM, "cursor": u64::MAX, "wanted": u64::MAX}),
    ));
    let subject = plan_subject(stack);
    let mut malformed = 0;
    for entry in &entries {
        let reply = stack
            .resources
            .client
            .request(subject.clone(), Bytes::copy_from_slice(&entry.bytes))
            .await
            .unwrap_or_else(|error| panic!("{}: the planner did not answer: {error}", entry.name));
        let reply: PlanReply = decode(&reply.payload)
            .unwrap_or_else(|error| panic!("{}: reply does not decode: {error}", entry.name));
        match decode::<PlanRequest>(&entry.bytes) {
            Ok(request) if request.job.as_str() == STREAM => {
                assert_eq!(reply.max_id, Some(STREAM_MAX), "{}", entry.name)
            }
            _ => {
                malformed += 1;
                assert_eq!(reply.max_id, None, "{}", entry.name);
            }
        }
    }
    malformed
}

/// Every bucket: undecodable values under unknown keys, and over the live keys the coordinator
/// rewrites itself (see the module docs for the keys left out).
async fn feed_buckets(stack: &Stack, live_partition: &str) {
    let resources = &stack.resources;
    let member = json!({"schema": 1, "role": "worker", "incarnation": 1, "capacity": 1,
                        "jobs": [], "labels": {}, "version": ""});
    for (index, entry) in undecodable::<MemberRecord>(&member).iter().enumerate() {
        put(&resources.members, &format!("ghost-m{index}"), &entry.bytes).await;
    }
    put(&resources.members, "bad.key", b"\xc0").await;
    put(&resources.members, "x=y", &hostile::random_bytes(3, 64)).await;

    let view = json!({"schema": 1, "generation": 1,
                      "members": [{"id": "worker-a", "role": "worker", "incarnation": 1,
                                   "capacity": 2, "jobs": []}]});
    for entry in undecodable::<MembershipView>(&view) {
        put(&resources.leases, VIEW_KEY, &entry.bytes).await;
    }
    for key in ["hostile", "role.hostile", "role"] {
        put(&resources.leases, key, &hostile::random_bytes(5, 256)).await;
    }

    let job = serde_json::to_value(JobRecord::new(
        JobName::new("ghost-job").unwrap(),
        JobSpec::fixed(IdRange::new(1, 10).unwrap(), 1),
        Epoch(1),
        0,
    ))
    .unwrap();
    let jobs = undecodable::<JobRecord>(&job);
    for (index, entry) in jobs.iter().enumerate() {
        put(&resources.jobs, &format!("ghost-j{index}"), &entry.bytes).await;
    }
    for entry in jobs.iter().take(3) {
        put(&resources.jobs, STEADY, &entry.bytes).await;
    }
    put(&resources.jobs, "bad.key", b"").await;

    let partition = json!({"schema": 1, "job": STEADY, "id": 1, "range": {"min": 1, "max": 10},
                           "status": "pending", "owner": null, "token": 0, "checkpoint": null,
                           "attempts": 0, "error": null, "epoch": 1});
    let partitions = undecodable::<PartitionRecord>(&partition);
    for (index, entry) in partitions.iter().enumerate() {
        let key = match index % 3 {
            0 => format!("ghost.{index}"),
            1 => format!("{STEADY}.{}", 1_000_000 + index),
            _ => format!("nodots{index}"),
        };
        put(&resources.partitions, &key, &entry.bytes).await;
    }
    for entry in partitions.iter().take(3) {
        put(&resources.partitions, live_partition, &entry.bytes).await;
    }

    let assignment = json!({"schema": 1, "incarnation": 1, "epoch": 1, "seq": 1,
                            "grants": [{"job": STEADY, "partition": 1,
                                        "range": {"min": 1, "max": 10}, "resume_from": 1,
                                        "token": 1}],
                            "drain": false});
    let assignments = undecodable::<AssignmentRecord>(&assignment);
    for (index, entry) in assignments.iter().enumerate() {
        put(
            &resources.assignments,
            &format!("ghost-a{index}"),
            &entry.bytes,
        )
        .await;
    }
    for entry in assignments.iter().take(3) {
        put(&resources.assignments, "worker-a", &entry.bytes).await;
    }
    put(&resources.assignments, "bad.key", b"\x91").await;

    let desired = json!({"schema": 1, "epoch": 1, "desired": 3, "live_workers": 2,
                         "backlog_ids": 10, "backlog_partitions": 1, "computed_unix_ms": 0});
    for entry in undecodable::<DesiredWorkers>(&desired) {
        put(&resources.fleet, DESIRED_WORKERS_KEY, &entry.bytes).await;
    }
    put(&resources.fleet, "hostile", &hostile::random_bytes(9, 128)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_on_every_subject_and_bucket_changes_nothing_and_jobs_complete_exactly() {
    count_panics();
    let stack = Stack::new().await.unwrap();
    let audit = OwnershipAuditor::start_on(stack.resources.clone())
        .await
        .unwrap();
    let election = stack.election("election-1");
    let leader_metrics = Arc::new(AssignerMetrics::default());
    let leader = stack.assigner_with_metrics("assigner-1", leader_metrics.clone());
    let scaler = stack.scaler("scaler-1");
    let steady_range = IdRange::new(1, 40_000).unwrap();
    let processor = GatedProcessor {
        steady: Ledger::new(steady_range),
        stream: Ledger::new(IdRange::new(1, STREAM_MAX).unwrap()),
        gate: Arc::new(AtomicBool::new(false)),
    };
    let worker_a = stack
        .worker_with("worker-a", 2, &[], processor.clone())
        .await
        .unwrap();
    let worker_b = stack
        .worker_with("worker-b", 2, &[], processor.clone())
        .await
        .unwrap();
    stack.create_job(STEADY, steady_range, 1_000).await.unwrap();
    // The standby joins once the first replica leads, so the roles stay where they are.
    let standby_metrics = Arc::new(AssignerMetrics::default());
    let standby = stack.assigner_with_metrics("assigner-2", standby_metrics.clone());
    wait_until("steady is running", DEADLINE, || async {
        processor.steady.processed() > 1_000
    })
    .await
    .unwrap();
    let assigner_lease = role_lease(&stack, ControlRole::Assigner).await;
    let scaler_lease = role_lease(&stack, ControlRole::Scaler).await;
    let election_holder = election_lease(&stack).await;

    // The assigner asks the hostile planner (alone in the queue group) while everything else is
    // fed; the real planner starts once the hostile one has answered its whole corpus.
    let questions = stack
        .resources
        .client
        .queue_subscribe(plan_subject(&stack), "planner".to_owned())
        .await
        .unwrap();
    stack.resources.client.flush().await.unwrap();
    let spec = JobSpec {
        lookahead: 2,
        ..JobSpec::open_ended(1, 500)
    };
    stack.create_job_with(STREAM, spec).await.unwrap();
    let live_partition = format!("{STEADY}.40");
    let (planner_replies, (malformed_progress, forged_progress)) =
        tokio::join!(hostile_planner(&stack, questions), async {
            let counts = feed_progress(&stack).await;
            feed_admin(&stack).await;
            feed_buckets(&stack, &live_partition).await;
            counts
        });
    let planner = elk_worker::serve_planner(
        elk_nats::NatsConfig::new(stack.server.url(), "planner"),
        stack.namespace.clone(),
        JobName::new(STREAM).unwrap(),
        FixedTable,
    )
    .await
    .unwrap();
    let malformed_plan_requests = feed_planner(&stack).await;
    assert!(
        planner_replies > 20,
        "the hostile planner answered {planner_replies} questions"
    );

    // Counted exactly, rejected, and nothing else moved: the roles keep holders and epochs.
    wait_until("every malformed report is counted", DEADLINE, || async {
        leader_metrics.progress_reports("malformed") >= malformed_progress
    })
    .await
    .unwrap();
    assert_eq!(
        leader_metrics.progress_reports("malformed"),
        malformed_progress
    );
    assert!(leader_metrics.progress_reports("rejected") >= forged_progress);
    assert_eq!(planner.stats().malformed, malformed_plan_requests);
    assert_eq!(
        role_lease(&stack, ControlRole::Assigner).await,
        assigner_lease
    );
    assert_eq!(role_lease(&stack, ControlRole::Scaler).await, scaler_lease);
    assert_eq!(election_lease(&stack).await, election_holder);
    assert_eq!(
        leader_metrics.leader_terms.get(),
        1,
        "the leader kept its term"
    );
    assert_eq!(standby_metrics.leader_terms.get(), 0);
    let job_names = |result: AdminResult| match result {
        AdminResult::Jobs { jobs, .. } => {
            jobs.into_iter().map(|job| job.name.to_string()).collect()
        }
        other => panic!("unexpected {other:?}"),
    };
    let jobs: Vec<String> = job_names(
        stack
            .admin(AdminCommand::ListJobs {
                after: None,
                limit: None,
            })
            .await
            .unwrap(),
    );
    assert_eq!(jobs, [STEADY, STREAM], "no job created or lost");
    for handle in [&election, &leader, &standby, &scaler] {
        assert!(handle.is_running(), "{} stopped", handle.name);
    }
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "something panicked");

    // Let the work finish; a joining worker makes the election write a new view over the garbage.
    processor.gate.store(true, Ordering::SeqCst);
    let worker_c = stack
        .worker_with("worker-c", 2, &[], processor.clone())
        .await
        .unwrap();
    let resources = &stack.resources;
    wait_until("the election rewrote the view", DEADLINE, || async {
        let entry = elk_nats::read_entry(&resources.leases, VIEW_KEY).await;
        entry.ok().flatten().is_some_and(|entry| {
            decode::<MembershipView>(&entry.value)
                .is_ok_and(|view| view.members.iter().any(|m| m.id.as_str() == "worker-c"))
        })
    })
    .await
    .unwrap();
    // A failover that loads the buckets with the garbage in them, once the leader has rewritten
    // the live records it owns (see the known gaps).
    wait_until("the leader rewrote its live records", DEADLINE, || async {
        decodable_or_gone::<JobRecord>(&resources.jobs, STEADY).await
            && decodable_or_gone::<PartitionRecord>(&resources.partitions, &live_partition).await
    })
    .await
    .unwrap();
    leader.abort().await;
    wait_until("the standby leads", DEADLINE, || async {
        standby_metrics.leader_terms.get() >= 1
    })
    .await
    .unwrap();

    let steady = stack.wait_job_completed(STEADY, DEADLINE).await.unwrap();
    assert_eq!(steady.partitions_total, 40);
    assert_eq!(steady.partitions_completed, 40);
    assert_eq!(steady.partitions_failed, 0);
    assert_eq!(steady.ids_completed, 40_000);
    assert_invariants(&audit, STEADY, &processor.steady).await;
    wait_until("stream's data is processed", DEADLINE, || async {
        matches!(stack.job(STREAM).await, Ok(Some(job)) if job.low_watermark == Some(STREAM_MAX))
    })
    .await
    .unwrap();
    assert!(processor.stream.missing().is_empty(), "stream ids missing");
    assert!(
        processor.stream.duplicates().is_empty(),
        "stream ids repeated"
    );
    audit.check().await.assert_no_overlap();
    wait_until("the scaler rewrote fleet/desired", DEADLINE, || async {
        decodable_or_gone::<DesiredWorkers>(&resources.fleet, DESIRED_WORKERS_KEY).await
    })
    .await
    .unwrap();
    wait_until(
        "worker-a's assignment record is rewritten",
        DEADLINE,
        || async {
            decodable_or_gone::<AssignmentRecord>(&resources.assignments, "worker-a").await
        },
    )
    .await
    .unwrap();
    let jobs: Vec<String> = job_names(
        stack
            .admin(AdminCommand::ListJobs {
                after: None,
                limit: None,
            })
            .await
            .unwrap(),
    );
    assert_eq!(
        jobs,
        [STEADY, STREAM],
        "the new leader loaded no garbage job"
    );
    let record = stack.job(STREAM).await.unwrap().unwrap();
    assert_eq!(record.state, JobState::Active);
    assert_eq!(record.known_max, Some(STREAM_MAX));
    for handle in [&election, &standby, &scaler] {
        assert!(handle.is_running(), "{} stopped", handle.name);
    }
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "something panicked");

    planner.shutdown().await.unwrap();
    for worker in [worker_a, worker_b, worker_c] {
        worker.shutdown().await.unwrap();
    }
    scaler.stop().await;
    standby.stop().await;
    election.stop().await;
}
