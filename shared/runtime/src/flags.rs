//! The command line of every service binary ([`ServiceFlags`], [`service_main`]) and the NATS
//! connection flags every ELK binary shares ([`NatsArgs`], also used by `elkctl`).

use crate::config::{ServiceConfig, load_config};
use elk_nats::NatsConfig;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// How to reach NATS, as flags (each also read from its environment variable, the same one the
/// configuration reads: `ELK_NATS_URL`, `ELK_NATS__<FIELD>`). Only what is given overrides the
/// configuration. Every ELK binary (services, `elkctl`, the example worker) takes these.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct NatsArgs {
    /// NATS server URL [default: nats://127.0.0.1:4222]; `tls://` requires TLS.
    #[arg(long = "nats-url", env = "ELK_NATS_URL", value_name = "URL")]
    pub url: Option<String>,
    /// NATS credentials file (`.creds`: user JWT + nkey seed, e.g. from `elkctl auth creds`).
    #[arg(
        long = "nats-credentials-file",
        env = "ELK_NATS__CREDENTIALS_FILE",
        value_name = "PATH"
    )]
    pub credentials_file: Option<PathBuf>,
    /// File holding an nkey seed (servers with nkey users).
    #[arg(
        long = "nats-nkey-seed-file",
        env = "ELK_NATS__NKEY_SEED_FILE",
        value_name = "PATH"
    )]
    pub nkey_seed_file: Option<PathBuf>,
    /// User name (with --nats-password).
    #[arg(long = "nats-user", env = "ELK_NATS__USER", value_name = "USER")]
    pub user: Option<String>,
    /// Password (prefer the environment variable: flags are visible to other local users).
    #[arg(
        long = "nats-password",
        env = "ELK_NATS__PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,
    /// Authentication token (prefer the environment variable).
    #[arg(
        long = "nats-token",
        env = "ELK_NATS__TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// CA certificate (PEM) the server's certificate must chain to.
    #[arg(
        long = "nats-tls-ca-file",
        env = "ELK_NATS__TLS_CA_FILE",
        value_name = "PATH"
    )]
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate (PEM), for servers that verify clients (with --nats-tls-key-file).
    #[arg(
        long = "nats-tls-cert-file",
        env = "ELK_NATS__TLS_CERT_FILE",
        value_name = "PATH"
    )]
    pub tls_cert_file: Option<PathBuf>,
    /// Private key (PEM) of the client certificate.
    #[arg(
        long = "nats-tls-key-file",
        env = "ELK_NATS__TLS_KEY_FILE",
        value_name = "PATH"
    )]
    pub tls_key_file: Option<PathBuf>,
    /// Refuse to connect without TLS.
    #[arg(long = "nats-tls-required", env = "ELK_NATS__TLS_REQUIRED")]
    pub tls_required: bool,
    /// Reply-inbox prefix [default: `_INBOX.<user public key>` with an nkey, else `_INBOX`].
    #[arg(
        long = "nats-inbox-prefix",
        env = "ELK_NATS__INBOX_PREFIX",
        value_name = "PREFIX"
    )]
    pub inbox_prefix: Option<String>,
}

impl NatsArgs {
    /// The connection: the defaults of [`NatsConfig`] with the given flags applied, under the
    /// connection name `name`.
    pub fn config(&self, name: &str) -> NatsConfig {
        let defaults = NatsConfig::default();
        self.apply(defaults).named_if_unset(name)
    }

    /// `config` with the given flags applied over it.
    pub fn apply(&self, mut config: NatsConfig) -> NatsConfig {
        fn set<T: Clone>(target: &mut Option<T>, flag: &Option<T>) {
            if flag.is_some() {
                target.clone_from(flag);
            }
        }
        if let Some(url) = &self.url {
            config.url.clone_from(url);
        }
        set(&mut config.credentials_file, &self.credentials_file);
        set(&mut config.nkey_seed_file, &self.nkey_seed_file);
        set(&mut config.user, &self.user);
        set(&mut config.password, &self.password);
        set(&mut config.token, &self.token);
        set(&mut config.tls_ca_file, &self.tls_ca_file);
        set(&mut config.tls_cert_file, &self.tls_cert_file);
        set(&mut config.tls_key_file, &self.tls_key_file);
        set(&mut config.inbox_prefix, &self.inbox_prefix);
        config.tls_required |= self.tls_required;
        config
    }
}

/// Command-line flags every service binary shares. Only the flags given override the config.
#[derive(Debug, clap::Parser)]
pub struct ServiceFlags {
    /// TOML config file (defaults → file → ELK_* environment → flags).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Deployment namespace (env ELK_NAMESPACE) [default: default].
    #[arg(long)]
    pub namespace: Option<String>,
    /// This replica's member id, unique per replica (env ELK_MEMBER_ID) [default:
    /// <service>-<hostname>-<pid>].
    #[arg(long)]
    pub member_id: Option<String>,
    /// TTL of the member key, e.g. 3s (env ELK_MEMBER_TTL) [default: 3s].
    #[arg(long, value_name = "DURATION")]
    pub member_ttl: Option<String>,
    /// Log lines as `text` or `json` (JSON lines carry trace_id and span_id inside a traced
    /// span) (env ELK_LOG_FORMAT) [default: text].
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<crate::LogFormat>,
    /// Serve /metrics, /healthz and /readyz on HOST:PORT, e.g. 0.0.0.0:9464 (env
    /// ELK_METRICS_LISTEN) [default: off].
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_listen: Option<String>,
    /// Print the effective configuration (TOML) and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// The flags that were given, shaped like the config (`service.*`).
#[derive(Serialize)]
struct FlagOverrides<'a> {
    service: CommonOverrides<'a>,
}

#[derive(Serialize)]
struct CommonOverrides<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    member_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    member_ttl: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log_format: Option<crate::LogFormat>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics_listen: Option<&'a str>,
    nats: NatsOverrides<'a>,
}

#[derive(Serialize)]
struct NatsOverrides<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    credentials_file: Option<&'a Path>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nkey_seed_file: Option<&'a Path>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    password: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_ca_file: Option<&'a Path>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_cert_file: Option<&'a Path>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_key_file: Option<&'a Path>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    tls_required: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    inbox_prefix: Option<&'a str>,
}

impl NatsArgs {
    fn overrides(&self) -> NatsOverrides<'_> {
        NatsOverrides {
            url: self.url.as_deref(),
            credentials_file: self.credentials_file.as_deref(),
            nkey_seed_file: self.nkey_seed_file.as_deref(),
            user: self.user.as_deref(),
            password: self.password.as_deref(),
            token: self.token.as_deref(),
            tls_ca_file: self.tls_ca_file.as_deref(),
            tls_cert_file: self.tls_cert_file.as_deref(),
            tls_key_file: self.tls_key_file.as_deref(),
            tls_required: self.tls_required,
            inbox_prefix: self.inbox_prefix.as_deref(),
        }
    }
}

impl ServiceFlags {
    fn overrides(&self) -> FlagOverrides<'_> {
        FlagOverrides {
            service: CommonOverrides {
                namespace: self.namespace.as_deref(),
                member_id: self.member_id.as_deref(),
                member_ttl: self.member_ttl.as_deref(),
                log_format: self.log_format,
                metrics_listen: self.metrics_listen.as_deref(),
                nats: self.nats.overrides(),
            },
        }
    }
}

/// The whole `main` of a service binary: parse [`ServiceFlags`] (with `name` and `about` shown in
/// `--help`, and `--version`), load and validate the layered config, print it or start telemetry
/// (logs; traces as `service.name` = `name` when an OTLP endpoint is configured) and call `run`
/// until SIGINT/SIGTERM, then export the spans still queued.
///
/// Exit status: 0 after a clean stop (or `--help`, `--version`, `--print-config`), 1 when the
/// service failed, 2 for bad flags or configuration. Errors are printed as one line with their
/// causes.
pub async fn service_main<C, E, F, Fut>(name: &'static str, about: &'static str, run: F) -> ExitCode
where
    C: ServiceConfig,
    E: std::error::Error + Send + Sync + 'static,
    F: FnOnce(C, std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
{
    use clap::{CommandFactory, FromArgMatches};
    let matches = ServiceFlags::command()
        .name(name)
        .about(about)
        .version(env!("CARGO_PKG_VERSION"))
        .get_matches();
    let flags = match ServiceFlags::from_arg_matches(&matches) {
        Ok(flags) => flags,
        Err(error) => error.exit(),
    };
    let config: C = match load_config(flags.config.as_deref(), flags.overrides()) {
        Ok(config) => config,
        Err(error) => return fail(name, &error, 2),
    };
    if flags.print_config {
        return match toml::to_string_pretty(&config) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(error) => fail(name, &error, 2),
        };
    }
    let no_tracing = crate::TracingConfig::default();
    let common = config.common();
    let mut options =
        crate::TelemetryOptions::new(name, common.map_or(&no_tracing, |c| &c.tracing));
    options.instance_id = common.map(|c| c.member_id.as_str());
    options.log_format = common.map(|c| c.log_format).unwrap_or_default();
    let telemetry = match crate::telemetry::init(options) {
        Ok(telemetry) => telemetry,
        Err(error) => return fail(name, &error, 2),
    };
    let outcome = run(config, Box::pin(crate::shutdown_signal())).await;
    telemetry.shutdown().await;
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(name, &error, 1),
    }
}

fn fail(name: &str, error: &(dyn std::error::Error + 'static), code: u8) -> ExitCode {
    eprintln!("{name}: error: {}", elk_nats::report(error));
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn only_given_flags_override() {
        let flags = ServiceFlags::try_parse_from([
            "svc",
            "--namespace",
            "prod",
            "--member-ttl",
            "5s",
            "--nats-url",
            "nats://a:1",
            "--log-format",
            "json",
            "--metrics-listen",
            "127.0.0.1:9464",
        ])
        .unwrap();
        let json = serde_json::to_value(flags.overrides()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"service": {"namespace": "prod", "member_ttl": "5s",
                                           "log_format": "json",
                                           "metrics_listen": "127.0.0.1:9464",
                                           "nats": {"url": "nats://a:1"}}})
        );
    }

    #[test]
    fn auth_and_tls_flags_reach_the_config() {
        let flags = ServiceFlags::try_parse_from([
            "svc",
            "--nats-credentials-file",
            "/run/w.creds",
            "--nats-tls-ca-file",
            "/run/ca.pem",
            "--nats-tls-required",
        ])
        .unwrap();
        let json = serde_json::to_value(flags.overrides()).unwrap();
        assert_eq!(
            json["service"]["nats"],
            serde_json::json!({"credentials_file": "/run/w.creds", "tls_ca_file": "/run/ca.pem",
                               "tls_required": true})
        );
        let config = flags.nats.config("elkctl");
        assert!(config.tls_required);
        assert_eq!(
            config.tls_ca_file.as_deref(),
            Some(Path::new("/run/ca.pem"))
        );
    }

    #[test]
    fn nats_args_fill_in_the_defaults() {
        let args = NatsArgs::default();
        let config = args.config("elkctl");
        assert_eq!(config.url, elk_nats::DEFAULT_NATS_URL);
        assert_eq!(config.name.as_deref(), Some("elkctl"));
    }
}
