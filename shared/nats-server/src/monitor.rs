//! A minimal HTTP/1.0 client for the server's monitoring endpoints (`/healthz`, `/jsz`) on
//! loopback: one request per connection, no dependency on an HTTP crate.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// `GET <base>/<path>` where `base` is `http://127.0.0.1:<port>`: the status code and the body.
pub(crate) fn get(base: &str, path: &str) -> std::io::Result<(u16, String)> {
    let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let authority = base
        .strip_prefix("http://")
        .ok_or_else(|| invalid(format!("not an http:// monitoring url: {base}")))?;
    let mut stream = TcpStream::connect(authority)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let path = path.trim_start_matches('/');
    write!(stream, "GET /{path} HTTP/1.0\r\nHost: {authority}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| invalid(format!("no HTTP header in {response:?}")))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| invalid(format!("no HTTP status in {head:?}")))?;
    Ok((status, body.to_owned()))
}
