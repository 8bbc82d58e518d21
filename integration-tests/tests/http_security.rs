//! Issue 9: the HTTP admin API's protections over real sockets in front of a real assigner —
//! tokens and scopes, JSON on mutations, Origin and Host checks, header and body timeouts, the
//! connection limit, TLS.

use elk_assigner::HttpSettings;
use elk_assigner::http::{ADMIN_TOKENS_ENV, HttpSecurity, READ_TOKENS_ENV, serve_http};
use elk_integration_tests::{ServiceHandle, Stack};
use elk_testkit::TestCertificates;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

const ADMIN: &str = "admin-token-0123456789abcdef";
const READ: &str = "read-token-0123456789abcdef";

/// A real assigner (and election) with the HTTP API in front of it.
struct Api {
    address: SocketAddr,
    stop: CancellationToken,
    served: tokio::task::JoinHandle<std::io::Result<()>>,
    services: Vec<ServiceHandle>,
    _stack: Stack,
}

impl Api {
    async fn start(settings: HttpSettings) -> Api {
        let stack = Stack::new().await.unwrap();
        let services = vec![stack.election("election-1"), stack.assigner("assigner-1")];
        let security = HttpSecurity::load_with_env(&settings, |name| match name {
            ADMIN_TOKENS_ENV => Some(ADMIN.to_owned()),
            READ_TOKENS_ENV => Some(READ.to_owned()),
            _ => None,
        })
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let served = tokio::spawn(serve_http(
            listener,
            stack.resources.clone(),
            security,
            stop.clone(),
        ));
        Api {
            address,
            stop,
            served,
            services,
            _stack: stack,
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.served.await.unwrap().unwrap();
        for service in self.services {
            service.stop().await;
        }
    }
}

/// A request's head: `method path`, then header lines.
fn request(method: &str, path: &str, headers: &[&str], body: &str) -> String {
    let mut text = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers
        .iter()
        .any(|h| h.to_ascii_lowercase().starts_with("host:"))
    {
        text.push_str("Host: 127.0.0.1\r\n");
    }
    for header in headers {
        text.push_str(header);
        text.push_str("\r\n");
    }
    text.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    text
}

/// Sends `raw` and reads the whole response; returns its status and text.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, raw: &str) -> (u16, String) {
    stream.write_all(raw.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

async fn send(address: SocketAddr, raw: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).await.unwrap();
    exchange(&mut stream, raw).await
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}")
}

const JSON: &str = "Content-Type: application/json";
const JOB: &str = r#"{"name": "web", "start": 1, "end": 100, "partition_size": 10}"#;

/// Waits until the server closes `stream` (EOF or reset) and returns how long that took.
async fn closed_within<S: AsyncRead + Unpin>(stream: &mut S, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut buffer = [0u8; 1024];
    let ended = tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the server kept the connection open past {limit:?}"
    );
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_scopes_json_origin_and_host_are_enforced() {
    let settings = HttpSettings {
        allowed_origins: vec!["https://ops.example.com".into()],
        ..HttpSettings::default()
    };
    let api = Api::start(settings).await;
    let a = api.address;
    let admin = bearer(ADMIN);
    let read = bearer(READ);

    // No token, a wrong one: 401 with a challenge. Health probes need none.
    let (status, text) = send(a, &request("GET", "/v1/jobs", &[], "")).await;
    assert_eq!(status, 401, "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{text}"
    );
    let (status, _) = send(
        a,
        &request("GET", "/v1/jobs", &[&bearer("not-a-real-token-at-all")], ""),
    )
    .await;
    assert_eq!(status, 401);
    let (status, text) = send(a, &request("GET", "/healthz", &[], "")).await;
    assert_eq!(status, 200, "{text}");

    // A read-only token reads (the real assigner answers) but may not change anything.
    let (status, text) = send(a, &request("GET", "/v1/jobs", &[&read], "")).await;
    assert_eq!(status, 200, "{text}");
    let (status, text) = send(a, &request("POST", "/v1/jobs", &[&read, JSON], JOB)).await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("read-only"), "{text}");

    // A mutation must be JSON, even with the admin token.
    let (status, text) = send(
        a,
        &request(
            "POST",
            "/v1/jobs",
            &[&admin, "Content-Type: text/plain"],
            JOB,
        ),
    )
    .await;
    assert_eq!(status, 415, "{text}");
    let (status, _) = send(a, &request("POST", "/v1/jobs/web/pause", &[&admin], "")).await;
    assert_eq!(status, 415, "no content type at all");

    // A browser page of another origin is refused; the configured one and the API's own pass.
    let evil = "Origin: https://evil.example";
    let (status, text) = send(a, &request("POST", "/v1/jobs", &[&admin, JSON, evil], JOB)).await;
    assert_eq!(status, 403, "{text}");
    let (status, text) = send(a, &request("GET", "/v1/jobs", &[&admin, evil], "")).await;
    assert_eq!(status, 403, "{text}");
    let own = format!("Origin: http://127.0.0.1:{}", a.port());
    let host = format!("Host: 127.0.0.1:{}", a.port());
    let (status, text) = send(a, &request("GET", "/v1/jobs", &[&admin, &own, &host], "")).await;
    assert_eq!(status, 200, "{text}");

    // DNS rebinding: a name that is not ours.
    let (status, text) = send(
        a,
        &request(
            "GET",
            "/v1/jobs",
            &[&admin, "Host: attacker.example:8080"],
            "",
        ),
    )
    .await;
    assert_eq!(status, 421, "{text}");

    // A body over the limit.
    let huge = format!(r#"{{"name": "{}"}}"#, "x".repeat(70_000));
    let (status, _) = send(a, &request("POST", "/v1/jobs", &[&admin, JSON], &huge)).await;
    assert_eq!(status, 413);

    // Everything in order: the job is created, and the refused attempts created nothing.
    let (status, text) = send(
        a,
        &request(
            "POST",
            "/v1/jobs",
            &[&admin, JSON, "Origin: https://ops.example.com"],
            JOB,
        ),
    )
    .await;
    assert_eq!(status, 201, "{text}");
    let (_, listing) = send(a, &request("GET", "/v1/jobs", &[&read], "")).await;
    assert_eq!(listing.matches("\"name\":\"web\"").count(), 1, "{listing}");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_connections_and_bodies_are_closed() {
    let settings = HttpSettings {
        header_timeout: Duration::from_millis(800),
        body_timeout: Duration::from_millis(800),
        ..HttpSettings::default()
    };
    let api = Api::start(settings).await;
    // Connected, sends nothing.
    let mut silent = TcpStream::connect(api.address).await.unwrap();
    let took = closed_within(&mut silent, Duration::from_secs(5)).await;
    assert!(took >= Duration::from_millis(500), "closed after {took:?}");
    // Half a request line, then silence (slowloris).
    let mut slow = TcpStream::connect(api.address).await.unwrap();
    slow.write_all(b"GET /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();
    closed_within(&mut slow, Duration::from_secs(5)).await;
    // Headers promise 100 bytes of body; 10 arrive.
    let mut stalled_body = TcpStream::connect(api.address).await.unwrap();
    let head = format!(
        "POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n{}\r\n{JSON}\r\nContent-Length: 100\r\n\r\n{{\"name\":1",
        bearer(ADMIN)
    );
    stalled_body.write_all(head.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        stalled_body.read_to_end(&mut response),
    )
    .await;
    assert!(read.is_ok(), "the stalled body kept the connection open");
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    // A kept-alive connection that goes idle after a request is closed too.
    let mut idle = TcpStream::connect(api.address).await.unwrap();
    let keep_alive = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    idle.write_all(keep_alive).await.unwrap();
    closed_within(&mut idle, Duration::from_secs(5)).await;
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_refused_until_one_frees_up() {
    let settings = HttpSettings {
        max_connections: 2,
        header_timeout: Duration::from_secs(30),
        ..HttpSettings::default()
    };
    let api = Api::start(settings).await;
    let mut first = TcpStream::connect(api.address).await.unwrap();
    let _second = TcpStream::connect(api.address).await.unwrap();
    // The two idle connections hold both places: a third is answered 503 and closed.
    let (status, text) = send(api.address, &request("GET", "/healthz", &[], "")).await;
    assert_eq!(status, 503, "{text}");
    // One place frees up: requests are served again.
    drop(first.shutdown().await);
    drop(first);
    elk_testkit::wait_until("a place frees up", Duration::from_secs(10), || async {
        send(api.address, &request("GET", "/healthz", &[], ""))
            .await
            .0
            == 200
    })
    .await
    .unwrap();
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_serves_https_with_a_configured_certificate() {
    let certs = TestCertificates::generate();
    let settings = HttpSettings {
        tls_cert_file: Some(certs.server_cert()),
        tls_key_file: Some(certs.server_key()),
        ..HttpSettings::default()
    };
    let api = Api::start(settings).await;
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    use rustls_pki_types::pem::PemObject;
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(certs.ca()).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(api.address).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let (status, text) =
        exchange(&mut tls, &request("GET", "/v1/jobs", &[&bearer(READ)], "")).await;
    assert_eq!(status, 200, "{text}");
    // Plain HTTP on the TLS port gets no answer.
    let (status, _) = send(api.address, &request("GET", "/healthz", &[], "")).await;
    assert_eq!(status, 0);
    api.stop().await;
}
