//! `elkctl auth` and `elkctl provision` end to end: the deployment is set up with the CLI alone
//! (keys, server configuration, credentials per identity), the server requires TLS with client
//! certificates and JWT auth, and a job runs to exact completion with every component under its
//! own identity — elkctl as an operator, election / assigner / scaler / worker as themselves. An
//! observer reads but cannot create jobs; a client without credentials gets nothing.

use elk_nats::NatsConfig;
use elk_protocol::admin::AdminResult;
use elk_protocol::messages::JobState;
use elk_runtime::ServiceCommon;
use elk_testkit::{NatsServer, TestCertificates, wait_until};
use elk_types::{MemberId, Namespace};
use elk_worker::{PartitionWork, ProcessError, ProcessOutcome, Processor, Worker};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const NAMESPACE: &str = "secure";

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs elkctl with the deployment directory, the server and TLS in its environment, as the
/// identity in `creds` (none: no credentials).
async fn elkctl(env: &Env, creds: Option<&Path>, args: &[&str]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_elkctl"));
    command
        .args(args)
        .env("ELK_AUTH_DIR", &env.auth_dir)
        .env("ELK_NAMESPACE", NAMESPACE)
        .env("NO_COLOR", "1")
        .env_remove("ELK_NATS__CREDENTIALS_FILE");
    if let Some(url) = &env.url {
        command
            .env("ELK_NATS_URL", url)
            .env("ELK_NATS__TLS_CA_FILE", env.certs.ca())
            .env("ELK_NATS__TLS_CERT_FILE", env.certs.client_cert())
            .env("ELK_NATS__TLS_KEY_FILE", env.certs.client_key())
            .env("ELK_NATS__TLS_REQUIRED", "true");
    }
    if let Some(creds) = creds {
        command.env("ELK_NATS__CREDENTIALS_FILE", creds);
    }
    let output = command.output().await.expect("elkctl runs");
    Output {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

struct Env {
    auth_dir: PathBuf,
    certs: TestCertificates,
    url: Option<String>,
    dir: tempfile::TempDir,
}

impl Env {
    /// `elkctl auth creds` for one identity, written to a file.
    async fn creds(&self, role: &str, name: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{role}-{name}.creds"));
        let out = path.to_str().unwrap();
        let output = elkctl(
            self,
            None,
            &[
                "auth", "creds", "--role", role, "--name", name, "--out", out,
            ],
        )
        .await;
        assert_eq!(output.code, 0, "{}", output.stderr);
        path
    }

    /// The connection of an in-process component with `creds`.
    fn nats(&self, creds: PathBuf, name: &str) -> NatsConfig {
        let mut config = NatsConfig::new(self.url.as_deref().unwrap(), name)
            .with_tls(self.certs.ca())
            .with_credentials_file(creds);
        config.tls_cert_file = Some(self.certs.client_cert());
        config.tls_key_file = Some(self.certs.client_key());
        config
    }
}

struct Counting(Arc<AtomicU64>);

impl Processor for Counting {
    async fn process(&self, work: PartitionWork) -> Result<ProcessOutcome, ProcessError> {
        let range = work.range();
        self.0.fetch_add(range.len(), Ordering::Relaxed);
        work.checkpoint(range.last());
        Ok(ProcessOutcome::Completed)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_set_up_with_elkctl_auth_runs_a_job_with_every_identity_scoped() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = Env {
        auth_dir: dir.path().join("auth"),
        certs: TestCertificates::generate(),
        url: None,
        dir,
    };
    let init = elkctl(&env, None, &["auth", "init"]).await;
    assert_eq!(init.code, 0, "{}", init.stderr);
    let config = elkctl(&env, None, &["auth", "server-config"]).await;
    assert_eq!(config.code, 0, "{}", config.stderr);
    assert!(config.stdout.contains("resolver_preload"));
    let server = NatsServer::builder()
        .config(format!(
            "{}\n{}",
            config.stdout,
            env.certs.nats_server_block(true)
        ))
        .start()
        .unwrap();
    env.url = Some(server.url().to_owned());

    // Without credentials nothing works; a worker identity cannot provision.
    let anonymous = elkctl(&env, None, &["status"]).await;
    assert_ne!(anonymous.code, 0);
    assert!(
        anonymous.stderr.contains("authorization"),
        "{}",
        anonymous.stderr
    );
    let admin = env.creds("admin", "ops").await;
    let provisioned = elkctl(&env, Some(&admin), &["provision"]).await;
    assert_eq!(provisioned.code, 0, "{}", provisioned.stderr);

    let stop = CancellationToken::new();
    let mut services = Vec::new();
    let namespace = Namespace::new(NAMESPACE).unwrap();
    let common = |creds: PathBuf, id: &str| {
        ServiceCommon::new(
            env.nats(creds, id),
            namespace.clone(),
            MemberId::new(id).unwrap(),
        )
    };
    let election = elk_election::ElectionConfig::new(common(
        env.creds("election", "election-1").await,
        "election-1",
    ));
    let assigner = elk_assigner::AssignerConfig::new(common(
        env.creds("assigner", "assigner-1").await,
        "assigner-1",
    ));
    let scaler =
        elk_scaler::ScalerConfig::new(common(env.creds("scaler", "scaler-1").await, "scaler-1"));
    let token = stop.clone();
    services.push(tokio::spawn(async move {
        elk_election::run(election, token.cancelled_owned())
            .await
            .unwrap();
    }));
    let token = stop.clone();
    services.push(tokio::spawn(async move {
        elk_assigner::run(assigner, token.cancelled_owned())
            .await
            .unwrap();
    }));
    let token = stop.clone();
    services.push(tokio::spawn(async move {
        elk_scaler::run(scaler, token.cancelled_owned())
            .await
            .unwrap();
    }));
    let processed = Arc::new(AtomicU64::new(0));
    let worker_id = MemberId::new("worker-1").unwrap();
    let worker = Worker::builder(namespace.clone(), worker_id.clone())
        .nats(env.nats(env.creds("worker", "worker-1").await, "worker-1"))
        .capacity(2)
        .start(Counting(processed.clone()))
        .await
        .unwrap();

    let operator = env.creds("operator", "alice").await;
    let created = elkctl(
        &env,
        Some(&operator),
        &[
            "job",
            "create",
            "scoped",
            "--start",
            "1",
            "--end",
            "50000",
            "--partition-size",
            "5000",
            "--wait",
            "30",
        ],
    )
    .await;
    assert_eq!(created.code, 0, "{}", created.stderr);
    let observer = env.creds("observer", "bob").await;
    wait_until("the job completes", Duration::from_secs(60), || async {
        let output = elkctl(&env, Some(&observer), &["job", "get", "scoped", "--json"]).await;
        matches!(serde_json::from_str::<AdminResult>(&output.stdout),
                 Ok(AdminResult::Job { job }) if job.state == JobState::Completed)
    })
    .await
    .unwrap();
    assert_eq!(processed.load(Ordering::Relaxed), 50_000);
    let status = elkctl(&env, Some(&observer), &["status"]).await;
    assert_eq!(status.code, 0, "{}", status.stderr);
    assert!(
        status.stdout.contains("scoped") && status.stdout.contains("worker-1"),
        "{}",
        status.stdout
    );
    // An observer cannot create jobs: the server drops the request, nothing is created.
    let refused = elkctl(
        &env,
        Some(&observer),
        &[
            "job",
            "create",
            "sneaky",
            "--start",
            "1",
            "--end",
            "10",
            "--partition-size",
            "10",
            "--json",
        ],
    )
    .await;
    assert_ne!(refused.code, 0, "{}", refused.stdout);
    let listed = elkctl(&env, Some(&observer), &["job", "list", "--json"]).await;
    assert!(!listed.stdout.contains("sneaky"), "{}", listed.stdout);
    // A worker identity may not provision.
    let worker_creds = env.creds("worker", "worker-2").await;
    let not_admin = elkctl(&env, Some(&worker_creds), &["provision"]).await;
    assert_ne!(not_admin.code, 0);

    worker.shutdown().await.unwrap();
    stop.cancel();
    for service in services {
        service.await.unwrap();
    }
}
