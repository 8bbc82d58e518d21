//! Connecting to NATS and refusing servers ELK cannot run on.

use crate::error::NatsError;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Oldest nats-server with per-key TTL and subject delete markers.
pub const MIN_SERVER_VERSION: (u64, u64, u64) = (2, 11, 0);

/// How to reach NATS: the one connection setting of every ELK component (services, `elkctl`,
/// the worker SDK). In a service's TOML file it is the `[service.nats]` table; from the
/// environment `ELK_NATS_URL`, or `ELK_NATS__<FIELD>` for any field.
///
/// Authentication and TLS options (nkey, user and password, token, TLS files) are added here as
/// further optional fields, so every component gains them at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URL, e.g. `nats://127.0.0.1:4222` (several: comma-separated).
    pub url: String,
    /// Optional `.creds` file (JWT + NKEY).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
    /// Connection name shown in the server's monitoring; unset, a service uses its own name and
    /// member id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// The URL of a nats-server on this machine's default port.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: DEFAULT_NATS_URL.to_owned(),
            credentials_file: None,
            name: None,
        }
    }
}

impl NatsConfig {
    /// Connects to `url` under the connection name `name`.
    pub fn new(url: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            credentials_file: None,
            name: Some(name.into()),
        }
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
pub async fn connect(config: &NatsConfig) -> Result<async_nats::Client, NatsError> {
    let mut options = async_nats::ConnectOptions::new()
        .name(config.name.as_deref().unwrap_or("elk"))
        .connection_timeout(Duration::from_secs(5))
        .retry_on_initial_connect()
        .max_reconnects(None);
    if let Some(path) = &config.credentials_file {
        options = options.credentials_file(path).await.map_err(|e| {
            NatsError::connect(
                &config.url,
                format!("credentials file {}: {e}", path.display()),
            )
        })?;
    }
    let client = tokio::time::timeout(Duration::from_secs(10), options.connect(config.urls()))
        .await
        .map_err(|elapsed| NatsError::connect(&config.url, elapsed))?
        .map_err(|error| NatsError::connect(&config.url, error))?;
    wait_for_server_info(&client).await;
    let info = client.server_info();
    check_server_version(&config.url, &info.version, info.jetstream)?;
    Ok(client)
}

/// With `retry_on_initial_connect` the INFO may arrive just after `connect` returns.
async fn wait_for_server_info(client: &async_nats::Client) {
    for _ in 0..500 {
        if !client.server_info().version.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
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
