//! A real Kubernetes API server for tests: etcd and kube-apiserver on random loopback ports with
//! a temporary data directory, killed and removed on drop. There are no controllers, scheduler or
//! kubelet, so objects only change when a client changes them — exactly what a test of the
//! scaler's actuation needs (a Deployment's `scale`, pod annotations).
//!
//! Binaries: `KUBE_APISERVER_BIN` (else the cache `scripts/ensure-kube-apiserver.sh` fills,
//! `${XDG_CACHE_HOME:-$HOME/.cache}/elk-coordinator/kube-apiserver/kube-apiserver-1.20.2`) and
//! `ETCD_BIN` (else `etcd` on the `PATH`). [`KubeApiServer::binaries`] says whether they are
//! there, so a test can skip (or fail under CI) with a clear message.
//!
//! Authentication is a static bearer token (written to [`KubeApiServer::token_file`]) of a
//! `system:masters` user, authorization `AlwaysAllow`, and the `ServiceAccount` admission plugin
//! is off (no controller creates the `default` service account pods would need).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The kube-apiserver version `scripts/ensure-kube-apiserver.sh` builds and caches.
pub const KUBE_APISERVER_VERSION: &str = "1.20.2";
const TOKEN: &str = "elk-test-token";
const READY_WITHIN: Duration = Duration::from_secs(90);

/// Why the server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum KubeServerError {
    #[error(
        "kube-apiserver or etcd not found (KUBE_APISERVER_BIN / the cache of \
         scripts/ensure-kube-apiserver.sh, ETCD_BIN / etcd on PATH): run \
         `source scripts/ensure-kube-apiserver.sh` first"
    )]
    Missing,
    #[error("cannot {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} failed: {detail}")]
    Setup { what: &'static str, detail: String },
    #[error("kube-apiserver not ready within {within:?}; its log ends with:\n{log}")]
    NotReady { within: Duration, log: String },
}

/// A server slow to come up may come up on another attempt; missing binaries or a failed setup
/// will not.
impl elk_nats::Retryable for KubeServerError {
    fn is_retryable(&self) -> bool {
        matches!(self, KubeServerError::NotReady { .. })
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> KubeServerError {
    let what = what.into();
    move |source| KubeServerError::Io { what, source }
}

/// A running etcd + kube-apiserver pair (see the module header).
pub struct KubeApiServer {
    etcd: Child,
    apiserver: Child,
    url: String,
    token_file: PathBuf,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for KubeApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeApiServer")
            .field("url", &self.url)
            .finish()
    }
}

fn free_port() -> Result<u16, KubeServerError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io("bind a free port"))?;
    Ok(listener.local_addr().map_err(io("read a port"))?.port())
}

fn log_file(dir: &Path, name: &str) -> Result<Stdio, KubeServerError> {
    let file = std::fs::File::create(dir.join(name)).map_err(io(format!("create {name}")))?;
    Ok(Stdio::from(file))
}

fn run(what: &'static str, command: &mut Command) -> Result<(), KubeServerError> {
    let output = command.output().map_err(io(what))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(KubeServerError::Setup {
            what,
            detail: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }
}

impl KubeApiServer {
    /// The kube-apiserver and etcd binaries, if both are there.
    pub fn binaries() -> Option<(PathBuf, PathBuf)> {
        let apiserver = std::env::var_os("KUBE_APISERVER_BIN")
            .map(PathBuf::from)
            .or_else(|| {
                let cache = std::env::var_os("XDG_CACHE_HOME")
                    .map(PathBuf::from)
                    .or_else(|| {
                        std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache"))
                    })?;
                Some(
                    cache
                        .join("elk-coordinator/kube-apiserver")
                        .join(format!("kube-apiserver-{KUBE_APISERVER_VERSION}")),
                )
            })
            .filter(|path| path.is_file())?;
        let etcd = std::env::var_os("ETCD_BIN")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("PATH").and_then(|paths| {
                    std::env::split_paths(&paths)
                        .map(|dir| dir.join("etcd"))
                        .find(|path| path.is_file())
                })
            })
            .filter(|path| path.is_file())?;
        Some((apiserver, etcd))
    }

    /// Starts etcd and kube-apiserver and waits until the API server answers `/readyz`.
    pub fn start() -> Result<Self, KubeServerError> {
        let (apiserver_bin, etcd_bin) = Self::binaries().ok_or(KubeServerError::Missing)?;
        let dir = tempfile::tempdir().map_err(io("create a temporary directory"))?;
        let root = dir.path();
        let (client, peer, secure) = (free_port()?, free_port()?, free_port()?);
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let etcd = Command::new(&etcd_bin)
            .arg("--data-dir")
            .arg(root.join("etcd"))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("default={peer_url}")])
            .stdout(Stdio::null())
            .stderr(log_file(root, "etcd.log")?)
            .spawn()
            .map_err(io(format!("start {}", etcd_bin.display())))?;
        // From here on, a failure kills etcd through the guard's drop.
        let mut guard = Partial { etcd: Some(etcd) };
        let key = root.join("sa.key");
        let public = root.join("sa.pub");
        run(
            "openssl genrsa",
            Command::new("openssl")
                .arg("genrsa")
                .arg("-out")
                .arg(&key)
                .arg("2048"),
        )?;
        run(
            "openssl rsa -pubout",
            Command::new("openssl")
                .arg("rsa")
                .arg("-in")
                .arg(&key)
                .arg("-pubout")
                .arg("-out")
                .arg(&public),
        )?;
        let tokens = root.join("tokens.csv");
        std::fs::write(&tokens, format!("{TOKEN},admin,admin,\"system:masters\"\n"))
            .map_err(io("write tokens.csv"))?;
        let token_file = root.join("token");
        std::fs::write(&token_file, TOKEN).map_err(io("write the token file"))?;
        let apiserver = Command::new(&apiserver_bin)
            .args(["--etcd-servers", &client_url])
            .args(["--bind-address", "127.0.0.1"])
            .args(["--secure-port", &secure.to_string()])
            .arg("--cert-dir")
            .arg(root.join("certs"))
            .arg("--token-auth-file")
            .arg(&tokens)
            .args(["--authorization-mode", "AlwaysAllow"])
            .args(["--disable-admission-plugins", "ServiceAccount"])
            .arg("--service-account-key-file")
            .arg(&public)
            .arg("--service-account-signing-key-file")
            .arg(&key)
            .args(["--service-account-issuer", "https://kubernetes.default.svc"])
            .args(["--service-cluster-ip-range", "10.96.0.0/16"])
            .stdout(Stdio::null())
            .stderr(log_file(root, "kube-apiserver.log")?)
            .spawn()
            .map_err(io(format!("start {}", apiserver_bin.display())))?;
        let server = Self {
            etcd: guard.etcd.take().expect("set above"),
            apiserver,
            url: format!("https://127.0.0.1:{secure}"),
            token_file,
            dir,
        };
        server.wait_ready()?;
        Ok(server)
    }

    /// Polls `/readyz` (with curl: the server's certificate is self-signed) until it answers
    /// `ok`, or fails with the end of the server's log.
    fn wait_ready(&self) -> Result<(), KubeServerError> {
        let deadline = Instant::now() + READY_WITHIN;
        let readyz = format!("{}/readyz", self.url);
        let header = format!("Authorization: Bearer {TOKEN}");
        while Instant::now() < deadline {
            let answer = Command::new("curl")
                .args(["-sk", "--max-time", "2", "-H", &header, &readyz])
                .output()
                .map_err(io("run curl"))?;
            if answer.stdout == b"ok" {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let log =
            std::fs::read_to_string(self.dir.path().join("kube-apiserver.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        Err(KubeServerError::NotReady {
            within: READY_WITHIN,
            log: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        })
    }

    /// The API server's URL (`https://127.0.0.1:<port>`, a self-signed certificate).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A file holding the bearer token of a `system:masters` user.
    pub fn token_file(&self) -> &Path {
        &self.token_file
    }
}

/// Kills etcd if the API server could not be started.
struct Partial {
    etcd: Option<Child>,
}

impl Drop for Partial {
    fn drop(&mut self) {
        if let Some(mut etcd) = self.etcd.take() {
            let _ = etcd.kill();
            let _ = etcd.wait();
        }
    }
}

impl Drop for KubeApiServer {
    fn drop(&mut self) {
        for child in [&mut self.apiserver, &mut self.etcd] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
