//! Issue 9: on a nats-server with TLS and decentralized JWT auth, every forbidden action of a
//! worker (and of the other roles) is refused by the server with a permission violation and
//! changes nothing; anonymous and certificate-less clients are refused outright.

use bytes::Bytes;
use elk_auth::Role;
use elk_integration_tests::{Ledger, RecordingProcessor, Stack};
use elk_nats::KeyBucket;
use elk_protocol::admin::{AdminCommand, AdminRequest};
use elk_protocol::encode;
use elk_protocol::names::PROGRESS_CONSUMER;
use elk_testkit::wait_until;
use elk_types::IdRange;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A raw NATS client under some identity, recording every error the server sends it.
struct Probe {
    client: async_nats::Client,
    errors: Arc<Mutex<Vec<String>>>,
}

impl Probe {
    async fn connect(stack: &Stack, role: Role, name: &str) -> Probe {
        let config = stack.nats_config(stack.server.url(), role, name);
        let errors = Arc::new(Mutex::new(Vec::new()));
        let sink = errors.clone();
        let mut options = async_nats::ConnectOptions::new()
            .custom_inbox_prefix(config.effective_inbox_prefix().unwrap())
            .add_root_certificates(config.tls_ca_file.clone().unwrap())
            .add_client_certificate(
                config.tls_cert_file.clone().unwrap(),
                config.tls_key_file.clone().unwrap(),
            )
            .require_tls(true)
            .event_callback(move |event| {
                let sink = sink.clone();
                async move {
                    if let async_nats::Event::ServerError(error) = event {
                        sink.lock().unwrap().push(error.to_string());
                    }
                }
            });
        options = options
            .credentials_file(config.credentials_file.clone().unwrap())
            .await
            .unwrap();
        let client = options.connect(stack.server.url()).await.unwrap();
        Probe { client, errors }
    }

    fn jetstream(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(1))
            .build(self.client.clone())
    }

    /// Waits for the server's permission violation naming `subject`.
    async fn refused(&self, what: &str, subject: &str) {
        let needle = format!("\"{subject}\"");
        self.refused_where(what, |error| error.contains(&needle))
            .await;
    }

    /// Waits for a permission violation whose message satisfies `matches`.
    async fn refused_where(&self, what: &str, matches: impl Fn(&str) -> bool) {
        let found = wait_until(what, Duration::from_secs(5), || async {
            self.errors
                .lock()
                .unwrap()
                .iter()
                .any(|e| e.contains("Permissions Violation") && matches(e))
        })
        .await;
        assert!(
            found.is_ok(),
            "{what}: no such permission violation; the server said {:?}",
            self.errors.lock().unwrap()
        );
    }

    /// Publishes `payload` on `subject` and waits for the server to refuse it.
    async fn publish_refused(&self, what: &str, subject: &str, payload: Bytes) {
        self.client
            .publish(subject.to_owned(), payload)
            .await
            .unwrap();
        self.client.flush().await.unwrap();
        self.refused(what, subject).await;
    }

    /// A JetStream API request on `subject` must be refused (and get no answer).
    async fn request_refused(&self, what: &str, subject: &str, payload: &str) {
        let answer = tokio::time::timeout(
            Duration::from_secs(1),
            self.client
                .request(subject.to_owned(), Bytes::from(payload.to_owned())),
        )
        .await;
        assert!(
            !matches!(answer, Ok(Ok(_))),
            "{what}: {subject} was answered"
        );
        self.refused(what, subject).await;
    }
}

/// The stored revision of `key` (0 if absent).
async fn revision(store: &async_nats::jetstream::kv::Store, key: &str) -> u64 {
    elk_nats::read_entry(store, key)
        .await
        .unwrap()
        .map_or(0, |entry| entry.revision.get())
}

/// What the attacker tries to store everywhere.
const GARBAGE: &[u8] = b"garbage";

/// `key` does not hold the attacker's bytes (its owner's writes go on meanwhile).
async fn untouched(store: &async_nats::jetstream::kv::Store, key: &str) {
    let entry = elk_nats::read_entry(store, key).await.unwrap();
    assert!(
        entry.is_none_or(|entry| entry.value.as_ref() != GARBAGE),
        "{}/{key} holds the attacker's value",
        store.name
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_forbidden_action_of_a_worker_is_refused_and_changes_nothing() {
    let stack = Stack::secured().await.unwrap();
    let election = stack.election("election-1");
    let metrics = Arc::new(elk_assigner::AssignerMetrics::default());
    let assigner = stack.assigner_with_metrics("assigner-1", metrics.clone());
    let scaler = stack.scaler("scaler-1");
    let range = IdRange::new(1, 40_000).unwrap();
    let ledger = Ledger::new(range);
    let mut processor = RecordingProcessor::new(ledger.clone());
    processor.pause_every = 500;
    processor.pause = Duration::from_millis(20);
    let victim = stack
        .worker("worker-a", 2, processor.clone())
        .await
        .unwrap();
    let honest_b = stack.worker("worker-b", 2, processor).await.unwrap();
    stack.create_job("guarded", range, 1_000).await.unwrap();
    let r = &stack.resources;
    wait_until("worker-a has a grant", Duration::from_secs(30), || async {
        revision(&r.assignments, "worker-a").await > 0
    })
    .await
    .unwrap();

    // The attacker holds worker-b's credentials (its own name): everything below is refused.
    let attacker = Probe::connect(&stack, Role::Worker, "worker-b").await;
    let ns = "it";
    let lease_before = revision(&r.leases, "role.assigner").await;

    // Reading another worker's assignment key: a direct get, a watch filtered to it, an
    // unfiltered watch of the bucket, a core subscription to its subject.
    let subject = format!("$KV.elk_{ns}_assignments.worker-a");
    let get = format!("$JS.API.DIRECT.GET.KV_elk_{ns}_assignments.{subject}");
    attacker
        .request_refused("read another worker's grants", &get, "")
        .await;
    let bucket = KeyBucket::open(&attacker.jetstream(), format!("elk_{ns}_assignments"))
        .await
        .unwrap();
    assert!(bucket.watch_key("worker-a").await.is_err());
    attacker
        .refused_where("watch another worker's grants", |error| {
            error.contains(&format!("CONSUMER.CREATE.KV_elk_{ns}_assignments."))
                && error.contains(&subject)
        })
        .await;
    let unfiltered = format!("$JS.API.CONSUMER.CREATE.KV_elk_{ns}_assignments");
    attacker
        .request_refused("watch every grant", &unfiltered, "{}")
        .await;
    attacker
        .client
        .subscribe(format!("$KV.elk_{ns}_assignments.>"))
        .await
        .unwrap();
    attacker
        .refused(
            "subscribe to every grant",
            &format!("$KV.elk_{ns}_assignments.>"),
        )
        .await;
    let info = format!("$JS.API.STREAM.INFO.KV_elk_{ns}_assignments");
    attacker
        .request_refused("list the grant keys", &info, "{}")
        .await;

    // Forging progress on another worker's subject.
    attacker
        .publish_refused(
            "forge progress",
            &format!("elk.{ns}.progress.worker-a"),
            Bytes::from_static(GARBAGE),
        )
        .await;
    // Writing a lease, jobs, partitions, assignments, another worker's member key.
    for (what, subject) in [
        (
            "write a lease",
            format!("$KV.elk_{ns}_leases.role.assigner"),
        ),
        ("write a job", format!("$KV.elk_{ns}_jobs.guarded")),
        (
            "write a partition",
            format!("$KV.elk_{ns}_partitions.guarded.1"),
        ),
        (
            "write an assignment",
            format!("$KV.elk_{ns}_assignments.worker-a"),
        ),
        (
            "write another member key",
            format!("$KV.elk_{ns}_members.worker-a"),
        ),
        (
            "write the desired workers",
            format!("$KV.elk_{ns}_fleet.desired"),
        ),
    ] {
        attacker
            .publish_refused(what, &subject, Bytes::from_static(GARBAGE))
            .await;
    }
    // The JetStream API: delete the progress consumer or stream, purge it, create streams.
    let stream = format!("ELK_{ns}_PROGRESS");
    for (what, subject) in [
        (
            "delete the progress consumer",
            format!("$JS.API.CONSUMER.DELETE.{stream}.{PROGRESS_CONSUMER}"),
        ),
        (
            "delete the progress stream",
            format!("$JS.API.STREAM.DELETE.{stream}"),
        ),
        (
            "purge the progress stream",
            format!("$JS.API.STREAM.PURGE.{stream}"),
        ),
        ("create a stream", "$JS.API.STREAM.CREATE.EVIL".to_owned()),
        (
            "add a consumer to the progress stream",
            format!("$JS.API.CONSUMER.CREATE.{stream}.evil"),
        ),
    ] {
        attacker.request_refused(what, &subject, "{}").await;
    }
    // Admin commands and planner answers are not a worker's.
    let create = encode(&AdminRequest::new(AdminCommand::ListJobs {
        after: None,
        limit: None,
    }));
    attacker
        .request_refused(
            "send an admin command",
            &format!("elk.{ns}.admin.assigner.list_jobs"),
            std::str::from_utf8(&create).unwrap_or_default(),
        )
        .await;
    attacker
        .client
        .subscribe(format!("elk.{ns}.plan.guarded"))
        .await
        .unwrap();
    attacker
        .refused("answer as a planner", &format!("elk.{ns}.plan.guarded"))
        .await;

    // Nothing changed: no key holds the attacker's bytes, the role lease was not rewritten, no
    // forged report reached the assigner, and the job completes exactly.
    untouched(&r.leases, "role.assigner").await;
    untouched(&r.jobs, "guarded").await;
    untouched(&r.partitions, "guarded.1").await;
    untouched(&r.assignments, "worker-a").await;
    untouched(&r.members, "worker-a").await;
    untouched(&r.fleet, "desired").await;
    assert_eq!(revision(&r.leases, "role.assigner").await, lease_before);
    assert_eq!(
        metrics.progress_reports("malformed"),
        0,
        "no forged report arrived"
    );
    let job = stack
        .wait_job_completed("guarded", Duration::from_secs(90))
        .await
        .unwrap();
    assert_eq!(job.ids_completed, 40_000);
    assert!(ledger.missing().is_empty() && ledger.duplicates().is_empty());
    // The server logs what it refused (so a clean log elsewhere means nothing was refused).
    let log = std::fs::read_to_string(stack.server.log_file()).unwrap();
    assert!(log.contains("Publish Violation"), "{log}");
    victim.shutdown().await.unwrap();
    honest_b.shutdown().await.unwrap();
    scaler.stop().await;
    assigner.stop().await;
    election.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_role_writes_only_its_own_buckets() {
    let stack = Stack::secured().await.unwrap();
    let ns = "it";
    // Who may write what: only the election writes leases, only the assigner jobs, partitions
    // and assignments, only the scaler the desired worker count.
    let cases = [
        (
            Role::Election,
            "election-9",
            vec!["jobs.j", "partitions.j.1", "assignments.w", "fleet.desired"],
        ),
        (
            Role::Assigner,
            "assigner-9",
            vec!["leases.role.assigner", "leases.view", "fleet.desired"],
        ),
        (
            Role::Scaler,
            "scaler-9",
            vec!["leases.role.scaler", "jobs.j", "assignments.w"],
        ),
        (
            Role::Operator,
            "ops",
            vec!["jobs.j", "leases.view", "members.w"],
        ),
        (Role::Observer, "viewer", vec!["jobs.j", "members.viewer"]),
        (Role::Planner, "j", vec!["jobs.j", "members.j"]),
    ];
    for (role, name, keys) in cases {
        let probe = Probe::connect(&stack, role, name).await;
        for key in keys {
            let (bucket, key) = key.split_once('.').unwrap();
            let subject = format!("$KV.elk_{ns}_{bucket}.{key}");
            let what = format!("{role} writes {bucket}/{key}");
            probe
                .publish_refused(&what, &subject, Bytes::from_static(GARBAGE))
                .await;
        }
        // Only the admin identity manages streams and consumers.
        let delete = format!("$JS.API.STREAM.DELETE.KV_elk_{ns}_jobs");
        probe
            .request_refused(&format!("{role} deletes a bucket"), &delete, "")
            .await;
    }
    // The assigner may re-create its own progress consumer (`progress_feed.rs`), but neither
    // delete it, add another consumer, nor change the stream.
    let assigner = Probe::connect(&stack, Role::Assigner, "assigner-8").await;
    let stream = format!("ELK_{ns}_PROGRESS");
    for (what, subject) in [
        (
            "the assigner deletes its progress consumer",
            format!("$JS.API.CONSUMER.DELETE.{stream}.{PROGRESS_CONSUMER}"),
        ),
        (
            "the assigner adds a consumer to the progress stream",
            format!("$JS.API.CONSUMER.CREATE.{stream}.evil"),
        ),
        (
            "the assigner changes the progress stream",
            format!("$JS.API.STREAM.UPDATE.{stream}"),
        ),
    ] {
        assigner.request_refused(what, &subject, "{}").await;
    }
    let r = &stack.resources;
    for (store, key) in [(&r.jobs, "j"), (&r.leases, "view"), (&r.fleet, "desired")] {
        untouched(store, key).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_reads_but_cannot_change_jobs_and_an_operator_can() {
    let stack = Stack::secured().await.unwrap();
    let election = stack.election("election-1");
    let assigner = stack.assigner("assigner-1");
    let ns = "it";
    let observer = Probe::connect(&stack, Role::Observer, "viewer").await;
    let names = elk_protocol::names::Names::new(stack.namespace.clone());
    let observer_admin = elk_nats::AdminClient::new(observer.client.clone(), names.clone())
        .with_patience(Duration::from_secs(30));
    assert!(observer_admin.list_jobs().await.unwrap().is_empty());
    let spec = elk_protocol::messages::JobSpec::fixed(IdRange::new(1, 10).unwrap(), 10);
    let job = elk_types::JobName::new("j").unwrap();
    let refused = tokio::time::timeout(
        Duration::from_secs(10),
        observer_admin.create_job(job.clone(), spec.clone()),
    )
    .await;
    assert!(!matches!(refused, Ok(Ok(_))), "an observer created a job");
    observer
        .refused(
            "observer creates a job",
            &format!("elk.{ns}.admin.assigner.create_job"),
        )
        .await;
    let operator = Probe::connect(&stack, Role::Operator, "ops").await;
    let operator_admin = elk_nats::AdminClient::new(operator.client.clone(), names)
        .with_patience(Duration::from_secs(30));
    operator_admin.create_job(job, spec).await.unwrap();
    assert_eq!(observer_admin.list_jobs().await.unwrap().len(), 1);
    assigner.stop().await;
    election.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_plaintext_and_certificate_less_clients_are_refused() {
    let stack = Stack::secured().await.unwrap();
    let secure = stack.secure.clone().unwrap();
    let url = stack.server.url();
    let refused = |config: elk_nats::NatsConfig| async move {
        let attempt = elk_nats::connect(&config).await;
        let error = attempt.err().map(|e| elk_nats::report(&e));
        assert!(error.is_some(), "{config:?} connected");
        error.unwrap()
    };
    // TLS with a client certificate, but no credentials.
    let anonymous = refused(secure.tls_only(url, "anonymous")).await;
    assert!(anonymous.contains("authorization"), "{anonymous}");
    // Valid credentials without TLS: the server requires it.
    let mut plain = secure.config(url, Role::Worker, "w-plain").unwrap();
    plain.tls_ca_file = None;
    plain.tls_cert_file = None;
    plain.tls_key_file = None;
    plain.tls_required = false;
    refused(plain).await;
    // Credentials and TLS, but no client certificate: the server verifies clients.
    let mut no_cert = secure.config(url, Role::Worker, "w-nocert").unwrap();
    no_cert.tls_cert_file = None;
    no_cert.tls_key_file = None;
    refused(no_cert).await;
    // Credentials of another deployment (an unknown account): refused.
    let other = elk_integration_tests::secure::SecureNats::new(&stack.namespace).unwrap();
    let mut foreign = secure.tls_only(url, "foreign");
    foreign.credentials_file = Some(other.creds(Role::Admin, "intruder").unwrap());
    let foreign = refused(foreign).await;
    assert!(foreign.contains("authorization"), "{foreign}");
    // The real thing connects.
    let worker = secure.config(url, Role::Worker, "w-ok").unwrap();
    elk_nats::connect(&worker).await.unwrap();
}
