//! Configuration of an assigner replica: `[service]` (shared by every service, see
//! [`ServiceCommon`](elk_runtime::ServiceCommon)) and `[assigner]`, loaded by `elk_runtime` (defaults → TOML file → `ELK_*`
//! environment, e.g. `ELK_ASSIGNER__HTTP_LISTEN=0.0.0.0:8080` → flags) and validated.

mod rebalance;
mod tails;

pub use rebalance::RebalanceSettings;
pub use tails::TailSettings;

use elk_runtime::{ConfigError, Validate};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

elk_runtime::service_config! {
    /// Everything an assigner replica needs; every field has a default (see `--print-config`).
    pub struct AssignerConfig { assigner: AssignerSettings }
}

/// `[assigner]`: grant policy, round sizes, timeouts and the HTTP admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AssignerSettings {
    /// Grants a worker holds per unit of capacity (running plus queued on the worker).
    pub grants_per_capacity: u32,
    /// Partitions created per reconcile round at most — unless the live workers have more free
    /// grant slots than that: then a round cuts up to those (at most 10,000), which it grants at
    /// once, so a large job's cold start takes few rounds.
    pub partitions_per_round: usize,
    /// Partition keys a fixed job may have at once (live, parked `failed`, and completed ones not
    /// yet compacted); the rest of its range is cut as these are compacted. Bounds the keys and
    /// memory one `create_job` can cause, whatever its range and partition size.
    pub max_job_backlog: u64,
    /// How long a completed or cancelled job is kept (listed, queryable) after it ended; then its
    /// record and any partition key left are removed and its name may be used again.
    #[serde(with = "humantime_serde")]
    pub finished_job_retention: Duration,
    /// A revoke not answered within this time is reported (`revokes_overdue`); the partition
    /// still waits for the old owner's release or member expiry before it is granted again.
    #[serde(with = "humantime_serde")]
    pub revoke_timeout: Duration,
    /// A partition whose holders die while running it (member key expired, no report) this many
    /// times with no progress in between is quarantined: parked as `failed` until `elkctl retry`
    /// (0, the default: never; at most 100; docs/decisions/quarantine.md).
    pub quarantine_after_deaths: u32,
    /// Resync tick of the leader loop.
    #[serde(with = "humantime_serde")]
    pub tick: Duration,
    /// Address of the HTTP JSON admin API (e.g. `127.0.0.1:8080`); none when unset. Every
    /// replica serves it and forwards to the active assigner over NATS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_listen: Option<String>,
    /// Security of the HTTP admin API (`[assigner.http]`).
    pub http: HttpSettings,
    /// Straggler splitting and adaptive partition size (`[assigner.tails]`).
    pub tails: TailSettings,
    /// The churn budget: partitions moved to even out load per round (`[assigner.rebalance]`;
    /// uncapped by default).
    pub rebalance: RebalanceSettings,
    /// How a round's change set is stored: `lean` (the default) or `baseline`, the write path
    /// before issue 10 item 4, kept so the throughput benchmark can measure both side by side
    /// (docs/decisions/lean-write-path.md).
    pub write_path: WritePath,
}

/// How the leader stores a round (docs/decisions/lean-write-path.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WritePath {
    /// A completed partition's key is not rewritten (the job record's coverage summary carries
    /// the completion until the key is compacted); while live workers process a fixed job it is
    /// cut only as far as they have free grant slots, so a partition is created already
    /// granted; the flush writes partitions and job records together, then purges and
    /// assignment records together.
    #[default]
    Lean,
    /// Every completed partition written as `completed` before its purge; fixed jobs cut up to
    /// `partitions_per_round` ahead (created `pending`, rewritten when granted); four sequential
    /// flush phases.
    Baseline,
}

/// `[assigner.http]`: who may use the HTTP admin API and how long a client may hold a connection.
/// Bearer tokens come from `tokens_file` and the environment variables `ELK_HTTP_ADMIN_TOKENS` /
/// `ELK_HTTP_READ_TOKENS` (comma-separated; never part of the printed configuration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// File of bearer tokens, one per line: `admin <token>` (every route) or `read <token>`
    /// (GET routes only); `#` starts a comment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_file: Option<PathBuf>,
    /// Serve without authentication. Only for a port nothing else can reach; the API refuses to
    /// start without tokens otherwise.
    pub allow_unauthenticated: bool,
    /// Serve HTTPS with this certificate chain (PEM) and `tls_key_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<PathBuf>,
    /// Browser origins allowed to call the API (`https://ops.example.com`); a request carrying
    /// another `Origin` is refused (403). Clients that send no `Origin` (curl, scripts) pass.
    pub allowed_origins: Vec<String>,
    /// Host names the API answers to, besides IP addresses and `localhost` (`*`: any); another
    /// `Host` is refused (421), which defeats DNS rebinding.
    pub allowed_hosts: Vec<String>,
    /// Connections served at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// Time a client has to send a request's headers (also the TLS handshake and the idle time
    /// between requests of a kept-alive connection).
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Time a client has to send a request's body.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: usize,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            tokens_file: None,
            allow_unauthenticated: false,
            tls_cert_file: None,
            tls_key_file: None,
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            max_connections: 256,
            header_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(10),
            max_body_bytes: 64 * 1024,
        }
    }
}

impl Default for AssignerSettings {
    fn default() -> Self {
        Self {
            grants_per_capacity: 2,
            partitions_per_round: 1_000,
            max_job_backlog: 10_000,
            finished_job_retention: Duration::from_secs(7 * 24 * 3600),
            revoke_timeout: Duration::from_secs(5),
            quarantine_after_deaths: 0,
            tick: Duration::from_millis(200),
            http_listen: None,
            http: HttpSettings::default(),
            tails: TailSettings::default(),
            rebalance: RebalanceSettings::default(),
            write_path: WritePath::default(),
        }
    }
}

/// The largest `quarantine_after_deaths`: the deaths are kept in the partition record.
const MAX_QUARANTINE_AFTER_DEATHS: u32 = 100;

impl Validate for AssignerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.service.validate()?;
        let assigner = &self.assigner;
        if assigner.grants_per_capacity == 0 {
            return Err(ConfigError::invalid(
                "assigner.grants_per_capacity must be at least 1",
            ));
        }
        if assigner.partitions_per_round == 0 {
            return Err(ConfigError::invalid(
                "assigner.partitions_per_round must be at least 1",
            ));
        }
        if assigner.quarantine_after_deaths > MAX_QUARANTINE_AFTER_DEATHS {
            return Err(ConfigError::invalid(format!(
                "assigner.quarantine_after_deaths must be at most {MAX_QUARANTINE_AFTER_DEATHS} (0 turns quarantine off)"
            )));
        }
        if assigner.max_job_backlog == 0 {
            return Err(ConfigError::invalid(
                "assigner.max_job_backlog must be at least 1",
            ));
        }
        if assigner.tick.is_zero() {
            return Err(ConfigError::invalid(
                "assigner.tick must be greater than zero",
            ));
        }
        assigner.tails.validate()?;
        assigner.rebalance.validate()?;
        if let Some(address) = &assigner.http_listen {
            elk_runtime::metrics_http::validate_listen_address("assigner.http_listen", address)?;
        }
        let http = &assigner.http;
        if http.tls_cert_file.is_some() != http.tls_key_file.is_some() {
            return Err(ConfigError::invalid(
                "assigner.http.tls_cert_file and tls_key_file go together",
            ));
        }
        if http.max_connections == 0 || http.max_body_bytes == 0 {
            return Err(ConfigError::invalid(
                "assigner.http.max_connections and max_body_bytes must be at least 1",
            ));
        }
        if http.header_timeout.is_zero() || http.body_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "assigner.http.header_timeout and body_timeout must be greater than zero",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_sizes_and_bad_addresses_are_refused_not_clamped() {
        let mut config = AssignerConfig::default();
        assert!(config.validate().is_ok());
        config.assigner.partitions_per_round = 0;
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("assigner.partitions_per_round"), "{error}");
        config.assigner.partitions_per_round = 1;
        config.assigner.quarantine_after_deaths = 101;
        let error = config.validate().unwrap_err().to_string();
        assert!(
            error.contains("assigner.quarantine_after_deaths"),
            "{error}"
        );
        config.assigner.quarantine_after_deaths = 0;
        assert!(config.validate().is_ok(), "0 turns quarantine off");
        config.assigner.http_listen = Some("localhost".to_owned());
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("assigner.http_listen"), "{error}");
    }

    #[test]
    fn misspelled_keys_are_errors_naming_them() {
        for (file, key) in [
            ("[assigner]\ntikc = \"1s\"\n", "tikc"),
            ("[assigner.http]\nmax_conections = 4\n", "max_conections"),
            ("[service]\nmember_tll = \"3s\"\n", "member_tll"),
            ("[service.nats]\ncreds = \"x.creds\"\n", "creds"),
        ] {
            let refused =
                elk_runtime::load_config_toml::<AssignerConfig>(file, [], serde_json::json!({}));
            let error = refused.unwrap_err().to_string();
            assert!(error.contains(key), "{error}");
        }
        let variables = [("ELK_ASSIGNER__TIKC".to_owned(), "1s".to_owned())];
        let refused =
            elk_runtime::load_config_from::<AssignerConfig>(None, variables, serde_json::json!({}));
        let error = refused.unwrap_err().to_string();
        assert!(
            error.contains("tikc") && error.contains("ELK_ASSIGNER__TIKC"),
            "{error}"
        );
    }

    #[test]
    fn http_settings_come_from_the_environment_too() {
        let variables = [
            (
                "ELK_ASSIGNER__HTTP__ALLOWED_HOSTS",
                r#"["elk-assigner", "elk-assigner.*"]"#,
            ),
            ("ELK_ASSIGNER__HTTP__MAX_CONNECTIONS", "64"),
            ("ELK_ASSIGNER__HTTP__HEADER_TIMEOUT", "2s"),
        ]
        .map(|(key, value)| (key.to_owned(), value.to_owned()));
        let config: AssignerConfig =
            elk_runtime::load_config_from(None, variables, serde_json::json!({})).unwrap();
        assert_eq!(
            config.assigner.http.allowed_hosts,
            vec!["elk-assigner", "elk-assigner.*"]
        );
        assert_eq!(config.assigner.http.max_connections, 64);
        assert_eq!(config.assigner.http.header_timeout, Duration::from_secs(2));
    }
}
