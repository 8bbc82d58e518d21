//! [`NatsServer`]: the nats-server a test runs against, from one of two backends chosen by
//! `ELK_TEST_BACKEND`:
//!
//! * `process` (the default): a `nats-server` child process ([`elk_nats_server::NatsServer`]).
//! * `testcontainers`: the project's nats-server image in a container on a Docker-compatible
//!   engine ([`crate::container`], feature `testcontainers`).
//!
//! Both give a `nats://127.0.0.1:<random port>` URL, a private JetStream store, `stop` (SIGKILL)
//! and `restart` on the same port and store, and cleanup on drop, so every test runs unchanged
//! on either. [`crate::NatsCluster`] is processes only.

use crate::ServerError;
use std::path::PathBuf;

/// The variable that picks the backend.
pub const BACKEND_ENV: &str = "ELK_TEST_BACKEND";

/// Where a test's nats-server runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A child process (`NATS_SERVER_BIN`, else `PATH`).
    Process,
    /// A container started through the `testcontainers` crate.
    Testcontainers,
}

impl Backend {
    /// The backend `ELK_TEST_BACKEND` names: unset or empty is [`Backend::Process`].
    pub fn from_env() -> Result<Self, TestServerError> {
        match std::env::var(BACKEND_ENV) {
            Err(_) => Ok(Backend::Process),
            Ok(value) => Self::parse(&value),
        }
    }

    fn parse(value: &str) -> Result<Self, TestServerError> {
        match value.trim().to_ascii_lowercase().as_str() {
            "" | "process" => Ok(Backend::Process),
            "testcontainers" => Ok(Backend::Testcontainers),
            _ => Err(TestServerError::UnknownBackend(value.to_owned())),
        }
    }

    /// `process` or `testcontainers`, as `ELK_TEST_BACKEND` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Process => "process",
            Backend::Testcontainers => "testcontainers",
        }
    }
}

/// Why a test's nats-server could not be started or restarted.
#[derive(Debug, thiserror::Error)]
pub enum TestServerError {
    #[error(transparent)]
    Process(#[from] ServerError),
    #[cfg(feature = "testcontainers")]
    #[error(transparent)]
    Container(#[from] crate::container::ContainerError),
    #[error("{BACKEND_ENV}={0:?}: the backends are `process` (default) and `testcontainers`")]
    UnknownBackend(String),
    #[error(
        "{BACKEND_ENV}=testcontainers, but elk-testkit was built without its `testcontainers` \
         feature (the integration tests enable it: `cargo test -p elk-integration-tests`)"
    )]
    BackendNotBuilt,
}

impl elk_nats::Retryable for TestServerError {
    fn is_retryable(&self) -> bool {
        match self {
            TestServerError::Process(error) => error.is_retryable(),
            #[cfg(feature = "testcontainers")]
            TestServerError::Container(error) => error.is_retryable(),
            TestServerError::UnknownBackend(_) | TestServerError::BackendNotBuilt => false,
        }
    }
}

/// Options for [`NatsServer`].
#[derive(Debug, Clone, Default)]
pub struct NatsServerBuilder {
    process: elk_nats_server::NatsServerBuilder,
    jetstream: Option<bool>,
    sync_always: bool,
    /// Extra configuration was given: the server runs as a process (see [`Self::config`]).
    configured: bool,
    backend: Option<Backend>,
}

impl NatsServerBuilder {
    /// Runs the server with or without JetStream (default: with).
    pub fn jetstream(mut self, enabled: bool) -> Self {
        self.process = self.process.jetstream(enabled);
        self.jetstream = Some(enabled);
        self
    }

    /// JetStream fsyncs every write before acknowledging it (`sync_interval: always`).
    pub fn sync_always(mut self, enabled: bool) -> Self {
        self.process = self.process.sync_always(enabled);
        self.sync_always = enabled;
        self
    }

    /// Uses this binary (process backend only).
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.process = self.process.binary(path);
        self
    }

    /// Extra configuration in nats-server's syntax (auth, TLS, ...; see
    /// [`elk_nats_server::NatsServerBuilder::config`]). It names files on this machine
    /// (certificates, resolver), so such a server always runs on the process backend.
    pub fn config(mut self, text: impl Into<String>) -> Self {
        self.process = self.process.config(text);
        self.configured = true;
        self
    }

    /// Uses `backend` whatever `ELK_TEST_BACKEND` says.
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = Some(backend);
        self
    }

    /// Starts the server on the chosen backend and waits until it accepts clients.
    pub fn start(self) -> Result<NatsServer, TestServerError> {
        let backend = match self.backend {
            Some(backend) => backend,
            None if self.configured => Backend::Process,
            None => Backend::from_env()?,
        };
        let running = match backend {
            Backend::Process => Running::Process(Box::new(self.process.start()?)),
            #[cfg(feature = "testcontainers")]
            Backend::Testcontainers => {
                let options = crate::container::ContainerOptions {
                    jetstream: self.jetstream.unwrap_or(true),
                    sync_always: self.sync_always,
                };
                let server = crate::container::ContainerServer::start(options)?;
                Running::Container(Box::new(server))
            }
            #[cfg(not(feature = "testcontainers"))]
            Backend::Testcontainers => return Err(TestServerError::BackendNotBuilt),
        };
        let url = match &running {
            Running::Process(server) => server.url().to_owned(),
            #[cfg(feature = "testcontainers")]
            Running::Container(server) => server.url(),
        };
        Ok(NatsServer { running, url })
    }
}

// Both boxed: the handles differ in size (clippy large_enum_variant) and are moved once.
enum Running {
    Process(Box<elk_nats_server::NatsServer>),
    #[cfg(feature = "testcontainers")]
    Container(Box<crate::container::ContainerServer>),
}

/// A test's nats-server on either backend, stopped and cleaned up on drop.
pub struct NatsServer {
    running: Running,
    url: String,
}

impl std::fmt::Debug for NatsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsServer")
            .field("backend", &self.backend())
            .field("url", &self.url)
            .finish()
    }
}

impl NatsServer {
    pub fn builder() -> NatsServerBuilder {
        NatsServerBuilder::default()
    }

    /// Starts a JetStream-enabled server on the backend `ELK_TEST_BACKEND` picks; panics with
    /// the reason (and how to fix it) if it cannot.
    pub fn start() -> Self {
        match Self::builder().start() {
            Ok(server) => server,
            Err(error) => panic!(
                "cannot start nats-server ({BACKEND_ENV}={}): {error}",
                std::env::var(BACKEND_ENV).unwrap_or_default()
            ),
        }
    }

    pub fn backend(&self) -> Backend {
        match &self.running {
            Running::Process(_) => Backend::Process,
            #[cfg(feature = "testcontainers")]
            Running::Container(_) => Backend::Testcontainers,
        }
    }

    /// Client URL, e.g. `nats://127.0.0.1:41234` (the same across restarts).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Port the server is reached on.
    pub fn port(&self) -> u16 {
        match &self.running {
            Running::Process(server) => server.port(),
            #[cfg(feature = "testcontainers")]
            Running::Container(server) => server.port(),
        }
    }

    /// The store directory of a server process (kept across [`NatsServer::restart`]); `None` in
    /// a container, whose store is a volume of the engine's.
    pub fn store_dir(&self) -> Option<PathBuf> {
        match &self.running {
            Running::Process(server) => Some(server.store_dir()),
            #[cfg(feature = "testcontainers")]
            Running::Container(_) => None,
        }
    }

    /// The log of a server process (what it refused and why, e.g. permission violations);
    /// `None` in a container.
    pub fn log_file(&self) -> Option<PathBuf> {
        match &self.running {
            Running::Process(server) => Some(server.log_file()),
            #[cfg(feature = "testcontainers")]
            Running::Container(_) => None,
        }
    }

    /// `GET <monitoring>/<path>` (e.g. `varz`, `jsz`) of a server process: the body of a 200
    /// answer; `None` in a container (no monitoring port is published) or on any failure.
    pub fn monitor(&self, path: &str) -> Option<String> {
        match &self.running {
            Running::Process(server) => match server.monitor(path) {
                Ok((200, body)) => Some(body),
                _ => None,
            },
            #[cfg(feature = "testcontainers")]
            Running::Container(_) => None,
        }
    }

    pub fn is_running(&self) -> bool {
        match &self.running {
            Running::Process(server) => server.is_running(),
            #[cfg(feature = "testcontainers")]
            Running::Container(server) => server.is_running(),
        }
    }

    /// Kills the server with SIGKILL, like a crash (the store is kept).
    ///
    /// # Panics
    /// If the container engine refuses the kill (the test cannot go on meaningfully).
    pub fn stop(&mut self) {
        match &mut self.running {
            Running::Process(server) => server.stop(),
            #[cfg(feature = "testcontainers")]
            Running::Container(server) => server
                .stop()
                .unwrap_or_else(|error| panic!("cannot kill nats-server: {error}")),
        }
    }

    /// Kills the server and starts it again on the same port and store.
    pub fn restart(&mut self) -> Result<(), TestServerError> {
        match &mut self.running {
            Running::Process(server) => server.restart()?,
            #[cfg(feature = "testcontainers")]
            Running::Container(server) => server.restart()?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backend_variable_is_read_strictly() {
        assert_eq!(Backend::parse("").unwrap(), Backend::Process);
        assert_eq!(Backend::parse("process").unwrap(), Backend::Process);
        assert_eq!(
            Backend::parse(" Testcontainers ").unwrap(),
            Backend::Testcontainers
        );
        let error = Backend::parse("docker").unwrap_err().to_string();
        assert!(
            error.contains("ELK_TEST_BACKEND") && error.contains("testcontainers"),
            "{error}"
        );
        assert_eq!(Backend::Testcontainers.name(), "testcontainers");
    }

    #[test]
    fn the_process_backend_can_be_forced() {
        let server = NatsServer::builder()
            .backend(Backend::Process)
            .start()
            .unwrap();
        assert_eq!(server.backend(), Backend::Process);
        assert!(server.store_dir().is_some());
        assert!(server.url().starts_with("nats://127.0.0.1:"));
    }
}
