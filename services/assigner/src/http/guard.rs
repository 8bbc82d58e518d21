//! The checks every request to the HTTP admin API passes before its handler runs, as one axum
//! middleware around the whole router (so routes added later are covered too), in this order:
//!
//! 1. **Host** (DNS rebinding): an IP address, `localhost` or a configured name, else `421`.
//! 2. **Origin** (CSRF from a browser): absent (curl, scripts), the API's own origin, or a
//!    configured one, else `403`.
//! 3. **Bearer token** (`Authorization: Bearer <token>`, or HTTP Basic with the token as the
//!    password, for browsers): none or unknown `401`; a read-only token on a mutation `403`.
//!    `/healthz` needs none (probes).
//! 4. **JSON on mutations**: a `POST`/`PUT`/`PATCH`/`DELETE` must say
//!    `Content-Type: application/json` (even with an empty body), else `415` — a cross-site form
//!    cannot send that without a CORS preflight this API never grants.
//! 5. **The body**, read within `body_timeout` (`408`, connection closed) and `max_body_bytes`
//!    (`413`).

use crate::config::HttpSettings;
use crate::http::ApiError;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

/// Environment variables with comma-separated tokens (secrets stay out of the config file).
pub const ADMIN_TOKENS_ENV: &str = "ELK_HTTP_ADMIN_TOKENS";
pub const READ_TOKENS_ENV: &str = "ELK_HTTP_READ_TOKENS";

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// `GET` and `HEAD` routes.
    Read,
    /// Every route.
    Admin,
}

/// The loaded settings of [`guard`].
pub struct Guard {
    /// SHA-256 of each token, compared in constant time.
    tokens: Vec<(Scope, [u8; 32])>,
    unauthenticated: bool,
    allowed_origins: Vec<String>,
    allowed_hosts: Vec<String>,
    any_host: bool,
    body_timeout: Duration,
    max_body_bytes: usize,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("tokens", &self.tokens.len())
            .field("unauthenticated", &self.unauthenticated)
            .finish_non_exhaustive()
    }
}

impl Guard {
    /// Loads the tokens (file and `env`) and checks that the API is not left open by accident.
    pub fn load(
        settings: &HttpSettings,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Guard, String> {
        let mut tokens = Vec::new();
        if let Some(path) = &settings.tokens_file {
            let text = std::fs::read_to_string(path).map_err(|error| {
                format!("assigner.http.tokens_file {}: {error}", path.display())
            })?;
            for (number, line) in text.lines().enumerate() {
                let line = line.split('#').next().unwrap_or_default().trim();
                if line.is_empty() {
                    continue;
                }
                let (scope, token) = line.split_once(char::is_whitespace).ok_or_else(|| {
                    format!(
                        "{}:{}: expected `admin <token>` or `read <token>`",
                        path.display(),
                        number + 1
                    )
                })?;
                let scope = match scope {
                    "admin" => Scope::Admin,
                    "read" => Scope::Read,
                    other => {
                        return Err(format!(
                            "{}:{}: unknown scope '{other}' (admin or read)",
                            path.display(),
                            number + 1
                        ));
                    }
                };
                tokens.push((scope, token.trim().to_owned()));
            }
        }
        for (variable, scope) in [
            (ADMIN_TOKENS_ENV, Scope::Admin),
            (READ_TOKENS_ENV, Scope::Read),
        ] {
            for token in env(variable).unwrap_or_default().split(',') {
                if !token.trim().is_empty() {
                    tokens.push((scope, token.trim().to_owned()));
                }
            }
        }
        if let Some((_, short)) = tokens.iter().find(|(_, token)| token.len() < 16) {
            return Err(format!(
                "an HTTP token of {} characters is too short to resist guessing (at least 16)",
                short.len()
            ));
        }
        if tokens.is_empty() && !settings.allow_unauthenticated {
            return Err(format!(
                "the HTTP admin API needs tokens: assigner.http.tokens_file or {ADMIN_TOKENS_ENV} / \
                 {READ_TOKENS_ENV} (or assigner.http.allow_unauthenticated = true for a port \
                 nothing else can reach)"
            ));
        }
        Ok(Guard {
            tokens: tokens
                .into_iter()
                .map(|(scope, token)| (scope, digest(token.as_bytes())))
                .collect(),
            unauthenticated: settings.allow_unauthenticated,
            allowed_origins: settings
                .allowed_origins
                .iter()
                .map(|origin| origin.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
            any_host: settings.allowed_hosts.iter().any(|host| host == "*"),
            allowed_hosts: settings
                .allowed_hosts
                .iter()
                .map(|host| host.to_ascii_lowercase())
                .collect(),
            body_timeout: settings.body_timeout,
            max_body_bytes: settings.max_body_bytes,
        })
    }

    /// The scope of the request's token; `None` without a known one.
    fn scope(&self, headers: &HeaderMap) -> Option<Scope> {
        let presented = presented_token(headers)?;
        let presented = digest(presented.as_bytes());
        // Every stored token is compared, whatever matched, so timing tells nothing.
        self.tokens
            .iter()
            .filter(|(_, stored)| constant_time_eq(stored, &presented))
            .map(|(scope, _)| *scope)
            .max()
    }

    fn host_allowed(&self, host: &str) -> bool {
        let name = host_name(host);
        self.any_host
            || name == "localhost"
            || name.parse::<std::net::IpAddr>().is_ok()
            || self
                .allowed_hosts
                .iter()
                .any(|pattern| glob_match(pattern, &name))
    }

    fn origin_allowed(&self, origin: &str, host: Option<&str>) -> bool {
        let origin = origin.trim_end_matches('/').to_ascii_lowercase();
        let own = host.is_some_and(|host| {
            let host = host.to_ascii_lowercase();
            origin == format!("http://{host}") || origin == format!("https://{host}")
        });
        own || self.allowed_origins.contains(&origin)
    }
}

/// `pattern` with `*` standing for any run of characters (`elk-assigner.*`, `*.example.com`).
fn glob_match(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token of `Authorization: Bearer <token>` or of HTTP Basic (`<anything>:<token>`).
fn presented_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (kind, credentials) = value.split_once(' ')?;
    if kind.eq_ignore_ascii_case("bearer") {
        return Some(credentials.trim().to_owned());
    }
    if kind.eq_ignore_ascii_case("basic") {
        use base64_decode::decode;
        let decoded = decode(credentials.trim())?;
        let (_, password) = decoded.split_once(':')?;
        return Some(password.to_owned());
    }
    None
}

/// The host part of a `Host` header (`name`, `name:port`, `[v6]:port`), lower-cased.
fn host_name(host: &str) -> String {
    let host = host.trim().to_ascii_lowercase();
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default().to_owned();
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name.to_owned(),
        _ => host,
    }
}

fn is_mutation(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD)
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

/// The middleware: see the module documentation for the checks and their order.
pub async fn guard(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    match check(&guard, request).await {
        Ok(request) => next.run(request).await,
        Err(response) => response,
    }
}

async fn check(guard: &Guard, request: Request) -> Result<Request, Response> {
    let headers = request.headers();
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    if let Some(host) = host
        && !guard.host_allowed(host)
    {
        return Err(ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "misdirected_request",
            format!("this API does not answer to host '{host}' (assigner.http.allowed_hosts)"),
        )
        .into_response());
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok())
        && !guard.origin_allowed(origin, host)
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "requests from origin '{origin}' are not allowed (assigner.http.allowed_origins)"
            ),
        )
        .into_response());
    }
    let mutation = is_mutation(request.method());
    if request.uri().path() != "/healthz" && !guard.unauthenticated {
        match guard.scope(headers) {
            None => {
                let mut response = ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "a valid bearer token is required (Authorization: Bearer <token>)",
                )
                .into_response();
                // Bearer for programs; Basic so that a browser (the status page) prompts for
                // the token as a password.
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer realm=\"elk\", Basic realm=\"elk\""),
                );
                return Err(response);
            }
            Some(Scope::Read) if mutation => {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "this token is read-only",
                )
                .into_response());
            }
            Some(_) => {}
        }
    }
    if mutation && !is_json(headers) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send Content-Type: application/json",
        )
        .into_response());
    }
    let (parts, body) = request.into_parts();
    let read = axum::body::to_bytes(body, guard.max_body_bytes);
    match tokio::time::timeout(guard.body_timeout, read).await {
        Ok(Ok(bytes)) => Ok(Request::from_parts(parts, Body::from(bytes))),
        Ok(Err(_)) => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body exceeds {} bytes", guard.max_body_bytes),
        )
        .into_response()),
        Err(_) => {
            let mut response = ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!("the body did not arrive within {:?}", guard.body_timeout),
            )
            .into_response();
            response.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            Err(response)
        }
    }
}

/// Standard base64 decoding of an HTTP Basic credential (no dependency for a dozen lines).
mod base64_decode {
    pub fn decode(text: &str) -> Option<String> {
        let value = |c: u8| -> Option<u32> {
            Some(match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'+' => 62,
                b'/' => 63,
                _ => return None,
            } as u32)
        };
        let bytes = text.trim_end_matches('=').as_bytes();
        let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
        for chunk in bytes.chunks(4) {
            let mut acc = 0u32;
            for (i, c) in chunk.iter().enumerate() {
                acc |= value(*c)? << (18 - 6 * i);
            }
            let produced = chunk.len() * 6 / 8;
            out.extend_from_slice(&acc.to_be_bytes()[1..1 + produced]);
        }
        String::from_utf8(out).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> HttpSettings {
        HttpSettings::default()
    }

    #[test]
    fn tokens_come_from_a_file_and_the_environment_and_are_required() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        std::fs::write(
            &file,
            "# ops\nadmin aaaaaaaaaaaaaaaaaaaa\nread rrrrrrrrrrrrrrrrrrrr # ci\n",
        )
        .unwrap();
        let mut with_file = settings();
        with_file.tokens_file = Some(file.clone());
        let guard = Guard::load(&with_file, |_| Some("eeeeeeeeeeeeeeeeeeee".into())).unwrap();
        let mut headers = HeaderMap::new();
        let mut scope_of = |value: &str| {
            headers.insert(header::AUTHORIZATION, value.parse().unwrap());
            guard.scope(&headers)
        };
        assert_eq!(scope_of("Bearer aaaaaaaaaaaaaaaaaaaa"), Some(Scope::Admin));
        assert_eq!(scope_of("bearer rrrrrrrrrrrrrrrrrrrr"), Some(Scope::Read));
        assert_eq!(scope_of("Bearer eeeeeeeeeeeeeeeeeeee"), Some(Scope::Admin));
        assert_eq!(scope_of("Bearer wrong"), None);
        // Basic "ops:<token>", as a browser sends it.
        assert_eq!(
            scope_of("Basic b3BzOmFhYWFhYWFhYWFhYWFhYWFhYWFh"),
            Some(Scope::Admin)
        );

        let error = Guard::load(&settings(), |_| None).unwrap_err();
        assert!(error.contains(ADMIN_TOKENS_ENV), "{error}");
        let mut open = settings();
        open.allow_unauthenticated = true;
        assert!(Guard::load(&open, |_| None).is_ok());
        assert!(Guard::load(&settings(), |_| Some("short".into())).is_err());
        std::fs::write(&file, "root aaaaaaaaaaaaaaaaaaaa\n").unwrap();
        assert!(
            Guard::load(&with_file, |_| None)
                .unwrap_err()
                .contains("unknown scope")
        );
    }

    #[test]
    fn hosts_and_origins() {
        let mut allowed = settings();
        allowed.allow_unauthenticated = true;
        allowed.allowed_hosts = vec!["elk.example.com".into(), "elk-assigner.*".into()];
        allowed.allowed_origins = vec!["https://ops.example.com/".into()];
        let guard = Guard::load(&allowed, |_| None).unwrap();
        for host in [
            "127.0.0.1:8080",
            "[::1]:80",
            "localhost",
            "ELK.example.com:443",
            "10.0.0.7",
        ] {
            assert!(guard.host_allowed(host), "{host}");
        }
        assert!(!guard.host_allowed("attacker.example:8080"));
        assert!(guard.origin_allowed("https://ops.example.com", Some("elk.example.com")));
        assert!(guard.origin_allowed("http://127.0.0.1:8080", Some("127.0.0.1:8080")));
        assert!(!guard.origin_allowed("https://evil.example", Some("127.0.0.1:8080")));
        assert!(!guard.origin_allowed("null", None));
    }
}
