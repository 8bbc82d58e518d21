//! Serving the HTTP admin API on a TCP listener, with hyper directly rather than `axum::serve`, for
//! the limits a public-facing listener needs:
//!
//! - **Header timeout**: a connection that does not deliver a request's headers within
//!   `header_timeout` (a silent client, a slowloris, an idle kept-alive connection) is closed.
//!   With TLS the handshake gets the same time.
//! - **Connection limit**: at most `max_connections` are served at once; a connection beyond it
//!   gets `503` (plain HTTP) or is closed at once (TLS) instead of queueing behind stalled ones.
//! - **TLS** (optional): rustls with the `ring` provider.
//!
//! The body timeout and size limit are the guard's (`guard`): they apply per request.

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_util::sync::CancellationToken;

/// How connections are accepted and served.
#[derive(Clone)]
pub struct ServeOptions {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub tls: Option<TlsAcceptor>,
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("max_connections", &self.max_connections)
            .field("header_timeout", &self.header_timeout)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// A TLS acceptor for the certificate chain and private key in these PEM files.
pub fn tls_acceptor(cert_file: &Path, key_file: &Path) -> Result<TlsAcceptor, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|error| {
            format!(
                "assigner.http.tls_cert_file {}: {error}",
                cert_file.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", cert_file.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|error| format!("assigner.http.tls_key_file {}: {error}", key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|error| format!("the HTTP TLS certificate and key do not fit: {error}"))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `router` on `listener` until `shutdown`; then lets the requests in flight finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    options: ServeOptions,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(options.max_connections));
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(error) => {
                // Out of file descriptors and the like: keep serving the connections we have.
                tracing::warn!(%error, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::debug!("HTTP connection limit reached: refusing a connection");
            tokio::spawn(refuse(stream, options.tls.is_some()));
            continue;
        };
        let service = TowerToHyperService::new(router.clone());
        let (options, shutdown) = (options.clone(), shutdown.clone());
        connections.spawn(async move {
            let _permit = permit;
            match &options.tls {
                None => connection(stream, service, options.header_timeout, shutdown).await,
                Some(acceptor) => {
                    let handshake = acceptor.accept(stream);
                    match tokio::time::timeout(options.header_timeout, handshake).await {
                        Ok(Ok(tls)) => {
                            connection(tls, service, options.header_timeout, shutdown).await;
                        }
                        Ok(Err(error)) => tracing::debug!(%error, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
            }
        });
    }
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Serves one connection (HTTP/1.1, kept alive) until it ends or `shutdown` (then gracefully).
async fn connection<IO>(
    io: IO,
    service: TowerToHyperService<Router>,
    header_timeout: Duration,
    shutdown: CancellationToken,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    let serving = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(serving);
    let outcome = tokio::select! {
        outcome = serving.as_mut() => outcome,
        () = shutdown.cancelled() => {
            serving.as_mut().graceful_shutdown();
            serving.await
        }
    };
    if let Err(error) = outcome {
        tracing::debug!(%error, "HTTP connection ended with an error");
    }
}

/// Answers a connection over the limit: `503` on plain HTTP, a plain close with TLS (nothing
/// readable can be sent before a handshake).
async fn refuse(mut stream: TcpStream, tls: bool) {
    if !tls {
        let body = r#"{"error":{"code":"unavailable","message":"too many connections"}}"#;
        let response = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\nretry-after: 1\r\n\r\n{body}",
            body.len()
        );
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            stream.write_all(response.as_bytes()),
        )
        .await;
    }
    let _ = stream.shutdown().await;
}
