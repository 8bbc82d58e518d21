//! Connecting to NATS and refusing servers ELK cannot run on.

use crate::error::NatsError;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Oldest nats-server with per-key TTL and subject delete markers.
pub const MIN_SERVER_VERSION: (u64, u64, u64) = (2, 11, 0);

/// How to reach NATS: the one connection setting of every ELK component (services, `elkctl`,
/// the worker SDK). In a service's TOML file it is the `[service.nats]` table; from the
/// environment `ELK_NATS_URL`, or `ELK_NATS__<FIELD>` for any field (e.g.
/// `ELK_NATS__CREDENTIALS_FILE`, `ELK_NATS__TLS_CA_FILE`).
///
/// **Authentication**: at most one of `credentials_file` (a `.creds` file: user JWT + nkey seed,
/// what `elkctl auth creds` writes), `nkey_seed_file` (a file holding an nkey seed, for servers
/// configured with nkey users), `user` + `password`, or `token`. `password` and `token` are
/// never printed (`--print-config` leaves them out); prefer passing them through the environment.
///
/// **TLS**: `tls_ca_file` (trust this CA for the server's certificate), `tls_cert_file` +
/// `tls_key_file` (a client certificate, for servers that verify clients), `tls_required`
/// (refuse to talk to a server without TLS). A `tls://` URL also requires TLS.
///
/// **Reply inbox**: with an nkey (`credentials_file` or `nkey_seed_file`) the client's reply
/// subjects default to `_INBOX.<user public key>`, the only inbox ELK's permission model lets
/// that user subscribe to (so no client can read another's replies); `inbox_prefix` overrides it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URL, e.g. `nats://127.0.0.1:4222` (several: comma-separated).
    pub url: String,
    /// Optional `.creds` file (JWT + NKEY).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
    /// Optional file holding an nkey seed (`SU...`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nkey_seed_file: Option<PathBuf>,
    /// User name for user/password authentication.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Password for user/password authentication (never serialized).
    #[serde(skip_serializing)]
    pub password: Option<String>,
    /// Token authentication (never serialized).
    #[serde(skip_serializing)]
    pub token: Option<String>,
    /// CA certificate (PEM) the server's certificate must chain to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate (PEM), presented to servers that verify clients.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<PathBuf>,
    /// Private key (PEM) of `tls_cert_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<PathBuf>,
    /// Refuse a connection without TLS.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub tls_required: bool,
    /// Reply-inbox prefix; default `_INBOX.<user public key>` with an nkey, else `_INBOX`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inbox_prefix: Option<String>,
    /// Connection name shown in the server's monitoring; unset, a service uses its own name and
    /// member id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Secrets stay out of debug output and logs.
impl std::fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |secret: &Option<String>| secret.as_ref().map(|_| "<redacted>");
        f.debug_struct("NatsConfig")
            .field("url", &self.url)
            .field("credentials_file", &self.credentials_file)
            .field("nkey_seed_file", &self.nkey_seed_file)
            .field("user", &self.user)
            .field("password", &redacted(&self.password))
            .field("token", &redacted(&self.token))
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .field("tls_required", &self.tls_required)
            .field("inbox_prefix", &self.inbox_prefix)
            .field("name", &self.name)
            .finish()
    }
}

/// The URL of a nats-server on this machine's default port.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

impl Default for NatsConfig {
    fn default() -> Self {
        Self::new(DEFAULT_NATS_URL, "elk").unnamed()
    }
}

impl NatsConfig {
    /// Connects to `url` under the connection name `name`, without credentials or TLS.
    pub fn new(url: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            credentials_file: None,
            nkey_seed_file: None,
            user: None,
            password: None,
            token: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_required: false,
            inbox_prefix: None,
            name: Some(name.into()),
        }
    }

    fn unnamed(mut self) -> Self {
        self.name = None;
        self
    }

    /// The server URLs of [`NatsConfig::url`] (split at commas, blanks dropped): the client
    /// tries them in turn and fails over between them, so a cluster stays reachable while any
    /// of the given servers is up.
    pub fn urls(&self) -> Vec<&str> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .collect()
    }

    /// This config with `name` as the connection name unless one is set already.
    pub fn named_if_unset(mut self, name: impl Into<String>) -> Self {
        if self.name.is_none() {
            self.name = Some(name.into());
        }
        self
    }

    /// This config under the connection name `name`.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// This config authenticating with the `.creds` file at `path`.
    pub fn with_credentials_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.credentials_file = Some(path.into());
        self
    }

    /// This config trusting the CA at `ca_file` and refusing a connection without TLS.
    pub fn with_tls(mut self, ca_file: impl Into<PathBuf>) -> Self {
        self.tls_ca_file = Some(ca_file.into());
        self.tls_required = true;
        self
    }

    /// Refuses combinations no server accepts: two authentication methods, a user without a
    /// password (or the reverse), a client certificate without its key (or the reverse).
    pub fn validate(&self) -> Result<(), String> {
        let methods: Vec<&str> = [
            ("credentials_file", self.credentials_file.is_some()),
            ("nkey_seed_file", self.nkey_seed_file.is_some()),
            ("user", self.user.is_some() || self.password.is_some()),
            ("token", self.token.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect();
        if methods.len() > 1 {
            return Err(format!(
                "nats: choose one authentication method, got {}",
                methods.join(" and ")
            ));
        }
        if self.user.is_some() != self.password.is_some() {
            return Err("nats: user and password go together".to_owned());
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err("nats: tls_cert_file and tls_key_file go together".to_owned());
        }
        if self.url.trim().is_empty() {
            return Err("nats: url must not be empty".to_owned());
        }
        Ok(())
    }

    /// The reply-inbox prefix this config connects with (see the type's documentation).
    pub fn effective_inbox_prefix(&self) -> Result<String, NatsError> {
        if let Some(prefix) = &self.inbox_prefix {
            return Ok(prefix.clone());
        }
        let seed = match (&self.credentials_file, &self.nkey_seed_file) {
            (Some(path), _) => Some(seed_from_creds(&read_secret(&self.url, path)?)),
            (None, Some(path)) => Some(Some(read_secret(&self.url, path)?.trim().to_owned())),
            (None, None) => None,
        };
        let Some(seed) = seed else {
            return Ok("_INBOX".to_owned());
        };
        let seed = seed.ok_or_else(|| {
            NatsError::connect(&self.url, "the credentials file holds no nkey seed")
        })?;
        let key = nkeys::KeyPair::from_seed(&seed)
            .map_err(|error| NatsError::connect(&self.url, format!("bad nkey seed: {error}")))?;
        Ok(format!("_INBOX.{}", key.public_key()))
    }
}

fn read_secret(url: &str, path: &std::path::Path) -> Result<String, NatsError> {
    std::fs::read_to_string(path)
        .map_err(|error| NatsError::connect(url, format!("{}: {error}", path.display())))
}

/// The nkey seed of a `.creds` file: the line after `-----BEGIN USER NKEY SEED-----`.
fn seed_from_creds(text: &str) -> Option<String> {
    let mut lines = text.lines().map(str::trim);
    lines.find(|line| line.contains("BEGIN USER NKEY SEED"))?;
    lines
        .find(|line| !line.is_empty())
        .filter(|line| line.starts_with('S'))
        .map(str::to_owned)
}

/// Parses `"2.15.1"` (also `"v2.11.0-beta.1"`) into `(major, minor, patch)`.
pub fn parse_version(version: &str) -> Option<(u64, u64, u64)> {
    let trimmed = version.trim().trim_start_matches('v');
    let core = trimmed.split(['-', '+']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u64>());
    let major = parts.next()?.ok()?;
    let minor = parts.next().unwrap_or(Ok(0)).ok()?;
    let patch = parts.next().unwrap_or(Ok(0)).ok()?;
    Some((major, minor, patch))
}

/// Checks the version and JetStream flag a server announced.
pub fn check_server_version(url: &str, version: &str, jetstream: bool) -> Result<(), NatsError> {
    let (a, b, c) = MIN_SERVER_VERSION;
    let needed = format!("{a}.{b}.{c}");
    let parsed = parse_version(version);
    if parsed.is_none_or(|found| found < MIN_SERVER_VERSION) {
        return Err(NatsError::ServerTooOld {
            url: url.to_owned(),
            found: version.to_owned(),
            needed,
        });
    }
    if !jetstream {
        return Err(NatsError::JetStreamDisabled {
            url: url.to_owned(),
            version: version.to_owned(),
        });
    }
    Ok(())
}

/// Connects and verifies the server: version >= 2.11 and JetStream enabled.
///
/// Permission violations the server reports on this connection (a publish or subscription the
/// identity may not make) are logged as warnings: the operation itself only times out.
pub async fn connect(config: &NatsConfig) -> Result<async_nats::Client, NatsError> {
    config
        .validate()
        .map_err(|reason| NatsError::connect(&config.url, reason))?;
    let url = config.url.clone();
    let failure = ConnectFailure::default();
    let seen = failure.clone();
    let mut options = async_nats::ConnectOptions::new()
        .name(config.name.as_deref().unwrap_or("elk"))
        .connection_timeout(Duration::from_secs(5))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .custom_inbox_prefix(config.effective_inbox_prefix()?)
        .event_callback(move |event| {
            let url = url.clone();
            let seen = seen.clone();
            async move {
                if let async_nats::Event::ClientError(error) = &event {
                    seen.record(error.to_string());
                }
                log_event(&url, event)
            }
        });
    if let Some(path) = &config.credentials_file {
        options = options.credentials_file(path).await.map_err(|e| {
            NatsError::connect(
                &config.url,
                format!("credentials file {}: {e}", path.display()),
            )
        })?;
    }
    if let Some(path) = &config.nkey_seed_file {
        options = options.nkey(read_secret(&config.url, path)?.trim().to_owned());
    }
    if let (Some(user), Some(password)) = (&config.user, &config.password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &config.token {
        options = options.token(token.clone());
    }
    if let Some(ca) = &config.tls_ca_file {
        options = options.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&config.tls_cert_file, &config.tls_key_file) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    if config.tls_required {
        options = options.require_tls(true);
    }
    let client = tokio::time::timeout(Duration::from_secs(10), options.connect(config.urls()))
        .await
        .map_err(|elapsed| NatsError::connect(&config.url, elapsed))?
        .map_err(|error| NatsError::connect(&config.url, error))?;
    wait_for_server_info(&client, &failure)
        .await
        .map_err(|reason| connect_failure(&config.url, reason))?;
    let info = client.server_info();
    check_server_version(&config.url, &info.version, info.jetstream)?;
    Ok(client)
}

/// Logs what the server reports about this connection: refusals loudly (a permission violation
/// otherwise only shows as a timeout), connection changes quietly.
fn log_event(url: &str, event: async_nats::Event) {
    match event {
        async_nats::Event::ServerError(error) => {
            tracing::warn!(%url, %error, "nats-server refused an operation of this connection");
        }
        async_nats::Event::Disconnected => tracing::debug!(%url, "disconnected from nats"),
        async_nats::Event::Connected => tracing::debug!(%url, "connected to nats"),
        other => tracing::debug!(%url, event = %other, "nats connection event"),
    }
}

/// The last reason a connection attempt failed (the client keeps retrying in the background).
#[derive(Clone, Default)]
struct ConnectFailure(std::sync::Arc<std::sync::Mutex<Option<String>>>);

impl ConnectFailure {
    fn record(&self, reason: String) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
    }

    fn last(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// With `retry_on_initial_connect` the client connects in the background; its server info is set
/// once a connection is established. Refused credentials end the wait at once (retrying cannot
/// fix them); otherwise the last failure (TLS, unreachable) is the error after 5 s.
async fn wait_for_server_info(
    client: &async_nats::Client,
    failure: &ConnectFailure,
) -> Result<(), String> {
    for _ in 0..500 {
        if !client.server_info().version.is_empty() {
            return Ok(());
        }
        if let Some(reason) = failure.last()
            && (reason.contains("authorization") || reason.contains("authentication"))
        {
            return Err(format!(
                "{reason}: the server refused these credentials (or their absence)"
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(failure
        .last()
        .unwrap_or_else(|| "the server sent no INFO within 5 s".to_owned()))
}

/// A refusal of the credentials is final; any other failure to connect in time (unreachable,
/// TLS handshake failing, slow) may pass.
fn connect_failure(url: &str, reason: String) -> NatsError {
    if reason.contains("refused these credentials") {
        NatsError::connect(url, reason)
    } else {
        NatsError::connect(
            url,
            std::io::Error::new(std::io::ErrorKind::TimedOut, reason),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions() {
        assert_eq!(parse_version("2.15.1"), Some((2, 15, 1)));
        assert_eq!(parse_version("v2.11.0-beta.2"), Some((2, 11, 0)));
        assert_eq!(parse_version("2.9"), Some((2, 9, 0)));
        assert_eq!(parse_version("garbage"), None);
    }

    #[test]
    fn refuses_old_servers_naming_both_versions() {
        let error = check_server_version("nats://x", "2.9.10", true).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("2.9.10") && text.contains("2.11.0"), "{text}");
        assert!(check_server_version("nats://x", "2.11.0", true).is_ok());
        assert!(check_server_version("nats://x", "", true).is_err());
    }

    #[test]
    fn one_authentication_method_and_paired_settings() {
        let mut config = NatsConfig::default();
        assert!(config.validate().is_ok());
        config.token = Some("t".into());
        config.credentials_file = Some("a.creds".into());
        let error = config.validate().unwrap_err();
        assert!(error.contains("credentials_file and token"), "{error}");
        let config = NatsConfig {
            user: Some("u".into()),
            ..NatsConfig::default()
        };
        assert!(config.validate().unwrap_err().contains("password"));
        let config = NatsConfig {
            tls_cert_file: Some("c.pem".into()),
            ..NatsConfig::default()
        };
        assert!(config.validate().unwrap_err().contains("tls_key_file"));
    }

    #[test]
    fn secrets_are_neither_serialized_nor_debug_printed() {
        let config = NatsConfig {
            user: Some("ops".into()),
            password: Some("hunter2".into()),
            ..NatsConfig::default()
        };
        let toml = serde_json::to_string(&config).unwrap();
        assert!(!toml.contains("hunter2") && toml.contains("ops"), "{toml}");
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn an_nkey_identity_gets_its_own_inbox() {
        let dir = tempfile::tempdir().unwrap();
        let key = nkeys::KeyPair::new_user();
        let creds = format!(
            "-----BEGIN NATS USER JWT-----\nxx.yy.zz\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            key.seed().unwrap()
        );
        let path = dir.path().join("w.creds");
        std::fs::write(&path, creds).unwrap();
        let config = NatsConfig::default().with_credentials_file(&path);
        assert_eq!(
            config.effective_inbox_prefix().unwrap(),
            format!("_INBOX.{}", key.public_key())
        );
        assert_eq!(
            NatsConfig::default().effective_inbox_prefix().unwrap(),
            "_INBOX"
        );
    }

    #[test]
    fn several_urls_are_split_at_commas() {
        let config = NatsConfig::new("nats://a:4222, nats://b:4222,,nats://c:4222 ", "x");
        assert_eq!(
            config.urls(),
            ["nats://a:4222", "nats://b:4222", "nats://c:4222"]
        );
        assert_eq!(NatsConfig::default().urls(), [DEFAULT_NATS_URL]);
    }

    #[test]
    fn refuses_servers_without_jetstream() {
        let error = check_server_version("nats://x", "2.15.1", false).unwrap_err();
        assert!(matches!(error, NatsError::JetStreamDisabled { .. }));
        assert!(error.to_string().contains("JetStream"));
    }
}
