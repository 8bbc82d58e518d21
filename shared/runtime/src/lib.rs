//! Process plumbing shared by the service binaries: layered configuration, logging, and
//! shutdown signals.
//!
//! Services are libraries (`run(config, shutdown)`); their thin `main` uses this crate to load the
//! config (defaults → TOML file → `ELK_*` environment → flags), start logging, and turn SIGINT /
//! SIGTERM into the `shutdown` future. A second signal exits the process at once.

use serde::{Serialize, de::DeserializeOwned};
use std::path::Path;

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

/// Loads `T` from its defaults, then the TOML file (if given), then `ELK_`-prefixed environment
/// variables (`ELK_NATS_URL` → `nats_url`), then `overrides` (the command-line flags that were set).
pub fn load_config<T: Serialize + DeserializeOwned + Default>(
    file: Option<&Path>,
    overrides: impl Serialize,
) -> Result<T, ConfigError> {
    use figment::Figment;
    use figment::providers::{Env, Format, Serialized, Toml};
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Some(path) = file {
        if !path.exists() {
            return Err(ConfigError(format!(
                "config file {} does not exist",
                path.display()
            )));
        }
        figment = figment.merge(Toml::file(path));
    }
    figment
        .merge(Env::prefixed("ELK_"))
        .merge(Serialized::defaults(overrides))
        .extract()
        .map_err(|e| ConfigError(e.to_string()))
}

/// Starts `tracing` output on stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Resolves on the first SIGINT or SIGTERM; a second signal exits the process immediately.
pub async fn shutdown_signal() {
    wait_for_signal().await;
    tracing::info!("shutdown requested; a second signal exits immediately");
    tokio::spawn(async {
        wait_for_signal().await;
        std::process::exit(130);
    });
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Command-line flags every service binary shares. Only the flags given override the config.
#[derive(Debug, clap::Parser)]
pub struct ServiceFlags {
    /// TOML config file (defaults → file → ELK_* environment → flags).
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
    /// NATS server URL.
    #[arg(long)]
    pub nats_url: Option<String>,
    /// Deployment namespace.
    #[arg(long)]
    pub namespace: Option<String>,
    /// This replica's member id (unique per replica).
    #[arg(long)]
    pub member_id: Option<String>,
    /// Print the effective configuration (TOML) and exit.
    #[arg(long)]
    pub print_config: bool,
}

#[derive(Serialize)]
struct FlagOverrides<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    nats_url: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    member_id: Option<&'a str>,
}

/// The whole `main` of a service binary: parse [`ServiceFlags`] (with `name` and `about` shown in
/// `--help`), load the layered config, print it or start logging and call `run` until SIGINT/SIGTERM.
pub async fn service_main<C, E, F, Fut>(
    name: &'static str,
    about: &'static str,
    run: F,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    C: Serialize + DeserializeOwned + Default,
    E: std::error::Error + Send + Sync + 'static,
    F: FnOnce(C, std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
{
    use clap::{CommandFactory, FromArgMatches};
    let matches = ServiceFlags::command()
        .name(name)
        .about(about)
        .get_matches();
    let flags = ServiceFlags::from_arg_matches(&matches)?;
    let overrides = FlagOverrides {
        nats_url: flags.nats_url.as_deref(),
        namespace: flags.namespace.as_deref(),
        member_id: flags.member_id.as_deref(),
    };
    let config: C = load_config(flags.config.as_deref(), overrides)?;
    if flags.print_config {
        println!("{}", toml::to_string_pretty(&config)?);
        return Ok(());
    }
    init_logging();
    run(config, Box::pin(shutdown_signal())).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Sample {
        nats_url: String,
        member_ttl_secs: u64,
    }

    impl Default for Sample {
        fn default() -> Self {
            Self {
                nats_url: "nats://127.0.0.1:4222".to_owned(),
                member_ttl_secs: 3,
            }
        }
    }

    #[derive(Serialize)]
    struct Flags {
        #[serde(skip_serializing_if = "Option::is_none")]
        member_ttl_secs: Option<u64>,
    }

    #[test]
    fn layers_defaults_file_and_flags() {
        let dir = tempfile_dir();
        let path = dir.join("elk.toml");
        std::fs::write(&path, "nats_url = \"nats://file:1\"\nmember_ttl_secs = 5\n").unwrap();
        let loaded: Sample = load_config(
            Some(&path),
            Flags {
                member_ttl_secs: Some(7),
            },
        )
        .unwrap();
        assert_eq!(
            loaded,
            Sample {
                nats_url: "nats://file:1".to_owned(),
                member_ttl_secs: 7
            }
        );
        let defaults: Sample = load_config(
            None,
            Flags {
                member_ttl_secs: None,
            },
        )
        .unwrap();
        assert_eq!(defaults, Sample::default());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn missing_file_and_bad_values_are_errors() {
        let missing: Result<Sample, _> = load_config(
            Some(Path::new("/nonexistent/elk.toml")),
            Flags {
                member_ttl_secs: None,
            },
        );
        assert!(missing.unwrap_err().to_string().contains("does not exist"));
        let dir = tempfile_dir();
        let path = dir.join("bad.toml");
        std::fs::write(&path, "member_ttl_secs = \"soon\"\n").unwrap();
        let bad: Result<Sample, _> = load_config(
            Some(&path),
            Flags {
                member_ttl_secs: None,
            },
        );
        assert!(bad.unwrap_err().to_string().contains("member_ttl_secs"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn unique() -> u128 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("elk-runtime-{}", unique()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
