//! [`NatsServer`]: one `nats-server` child process on random loopback ports with a temporary
//! store, killed and cleaned up on drop.

use crate::ServerError;
use crate::binary::{check_binary_version, resolve_nats_server_binary};
use crate::monitor;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// How long a started server has to report its ports.
const PORTS_DEADLINE: Duration = Duration::from_secs(20);

/// Options for [`NatsServer`].
#[derive(Debug, Clone)]
pub struct NatsServerBuilder {
    jetstream: bool,
    sync_always: bool,
    binary: Option<PathBuf>,
    seat: Option<ClusterSeat>,
}

impl Default for NatsServerBuilder {
    fn default() -> Self {
        Self {
            jetstream: true,
            sync_always: false,
            binary: None,
            seat: None,
        }
    }
}

/// A server's place in a [`crate::NatsCluster`]: its name, the cluster's name, the port it
/// takes routes on and the route ports of every node (its own included; the server ignores a
/// route to itself).
#[derive(Debug, Clone)]
pub(crate) struct ClusterSeat {
    pub(crate) server_name: String,
    pub(crate) cluster_name: String,
    pub(crate) route_port: u16,
    pub(crate) route_ports: Vec<u16>,
}

impl NatsServerBuilder {
    /// Runs the server with or without JetStream (default: with).
    pub fn jetstream(mut self, enabled: bool) -> Self {
        self.jetstream = enabled;
        self
    }

    /// JetStream fsyncs every write before acknowledging it (`sync_interval: always`, as the
    /// deployment runs it) instead of every two minutes (the default). Default: off.
    pub fn sync_always(mut self, enabled: bool) -> Self {
        self.sync_always = enabled;
        self
    }

    /// Uses this binary instead of resolving one.
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    pub(crate) fn seat(mut self, seat: ClusterSeat) -> Self {
        self.seat = Some(seat);
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
        let mut server = NatsServer {
            binary,
            jetstream: self.jetstream,
            sync_always: self.sync_always,
            seat: self.seat,
            dir,
            child: None,
            url: String::new(),
            monitor_url: None,
        };
        server.spawn(None)?;
        Ok(server)
    }
}

/// A running `nats-server`, killed and cleaned up on drop.
pub struct NatsServer {
    binary: PathBuf,
    jetstream: bool,
    sync_always: bool,
    seat: Option<ClusterSeat>,
    dir: TempDir,
    child: Option<Child>,
    url: String,
    monitor_url: Option<String>,
}

impl std::fmt::Debug for NatsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsServer")
            .field("url", &self.url)
            .field("server_name", &self.server_name())
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

    /// The server's name inside its cluster (`None` for a standalone server).
    pub fn server_name(&self) -> Option<&str> {
        self.seat.as_ref().map(|seat| seat.server_name.as_str())
    }

    /// The store directory (kept across [`NatsServer::restart`]).
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The process id while the server runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server process with SIGKILL, like a crash: no lame-duck mode, no final flush
    /// (the store is kept).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store (and, in a cluster, the same route
    /// port and routes).
    pub fn restart(&mut self) -> Result<(), ServerError> {
        self.stop();
        let port = self.port();
        self.spawn(Some(port))
    }

    /// `GET <monitoring>/<path>` (e.g. `jsz`, `healthz`) of the running server: the status code
    /// and the body.
    pub fn monitor(&self, path: &str) -> Result<(u16, String), ServerError> {
        let base = self.monitor_url.as_deref().ok_or_else(|| {
            ServerError::Io(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "the server is not running",
            ))
        })?;
        Ok(monitor::get(base, path)?)
    }

    /// Polls `/healthz` until it answers ok (JetStream enabled and, in a cluster, a meta
    /// leader known and every stream replica of this server current).
    pub fn wait_healthy(&self, deadline: Duration) -> Result<(), ServerError> {
        let started = Instant::now();
        loop {
            let status = match self.monitor("healthz") {
                Ok((200, _)) => return Ok(()),
                Ok((_, body)) => body,
                Err(error) => error.to_string(),
            };
            if started.elapsed() > deadline {
                return Err(ServerError::Unhealthy {
                    server: self.server_name().unwrap_or(&self.url).to_owned(),
                    waited: started.elapsed(),
                    status,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
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
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &port_arg,
                "-m",
                "-1",
                "--ports_file_dir",
            ])
            .arg(&ports_dir)
            .arg("-l")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.jetstream {
            command.arg("-js").arg("-sd").arg(self.store_dir());
        }
        if self.sync_always {
            // No command-line flag sets the sync interval; the flags above still apply on top.
            let config = self.dir.path().join("server.conf");
            std::fs::write(
                &config,
                "# elk-nats-server: fsync every JetStream write before acknowledging it\n\
                 jetstream {\n  sync_interval: always\n}\n",
            )?;
            command.arg("-c").arg(config);
        }
        if let Some(seat) = &self.seat {
            let routes: Vec<String> = seat
                .route_ports
                .iter()
                .map(|port| format!("nats://127.0.0.1:{port}"))
                .collect();
            command
                .args(["--server_name", &seat.server_name])
                .args(["--cluster_name", &seat.cluster_name])
                .arg("--cluster")
                .arg(format!("nats://127.0.0.1:{}", seat.route_port))
                .arg("--routes")
                .arg(routes.join(","));
        }
        let child = command.spawn().map_err(|source| ServerError::Spawn {
            binary: self.binary.display().to_string(),
            source,
        })?;
        let ports = wait_for_ports_file(child, &ports_dir, &log, PORTS_DEADLINE)?;
        self.child = Some(ports.child);
        self.url = ports.client;
        self.monitor_url = ports.monitoring;
        Ok(())
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a started server wrote to its ports file.
struct Ports {
    child: Child,
    client: String,
    monitoring: Option<String>,
}

/// Waits for `child`'s ports file; a server that exits first (a port taken, a bad option) or
/// stays silent past `deadline` is killed and reported with its log's tail.
fn wait_for_ports_file(
    mut child: Child,
    dir: &Path,
    log: &Path,
    deadline: Duration,
) -> Result<Ports, ServerError> {
    let started = Instant::now();
    loop {
        if let Some((client, monitoring)) = read_ports_file(dir) {
            return Ok(Ports {
                child,
                client,
                monitoring,
            });
        }
        let exited = matches!(child.try_wait(), Ok(Some(_)));
        if exited || started.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(ServerError::NotReady {
                waited: started.elapsed(),
                log_tail: log_tail(log),
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The last 20 lines of a server's log.
pub(crate) fn log_tail(log: &Path) -> String {
    let log_text = std::fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = log_text.lines().rev().take(20).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// The client URL and the monitoring URL (if any) of a ports file in `dir`.
fn read_ports_file(dir: &Path) -> Option<(String, Option<String>)> {
    let entry = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .find(|entry| entry.path().extension().is_some_and(|ext| ext == "ports"))?;
    let text = std::fs::read_to_string(entry.path()).ok()?;
    let parsed: serde_json::Value = serde_json::from_str(&text).ok()?;
    let client = parsed["nats"][0].as_str()?.to_owned();
    Some((client, parsed["monitoring"][0].as_str().map(str::to_owned)))
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
    fn sync_always_is_what_the_server_runs_with() {
        let default = NatsServer::start();
        let synced = NatsServer::builder().sync_always(true).start().unwrap();
        let sync_of = |server: &NatsServer| {
            let (status, body) = server.monitor("jsz").unwrap();
            assert_eq!(status, 200, "{body}");
            let jsz: serde_json::Value = serde_json::from_str(&body).unwrap();
            jsz["config"]["sync_always"].as_bool().unwrap_or(false)
        };
        assert!(!sync_of(&default));
        assert!(sync_of(&synced));
        synced.wait_healthy(Duration::from_secs(20)).unwrap();
    }

    #[test]
    fn a_script_claiming_an_old_version_is_not_started() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("nats-server");
        std::fs::write(&fake, "#!/bin/sh\necho 'nats-server: v2.9.25'\n").unwrap();
        let mut permissions = std::fs::metadata(&fake).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
        std::fs::set_permissions(&fake, permissions).unwrap();
        // A process forked by another test thread at the moment the script was written holds it
        // open for writing until it execs: running the script fails with ETXTBSY meanwhile.
        const TEXT_FILE_BUSY: i32 = 26;
        let error = (0..100)
            .find_map(|_| match NatsServer::builder().binary(&fake).start() {
                Err(ServerError::Spawn { source, .. })
                    if source.raw_os_error() == Some(TEXT_FILE_BUSY) =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                    None
                }
                other => Some(other),
            })
            .expect("the script ran")
            .unwrap_err();
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
