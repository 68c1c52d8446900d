//! The `healthcheck` command: GET the local `/healthz` and exit 0 or 1, for Docker's
//! `HEALTHCHECK` in an image that has no curl or wget.
//!
//! It reads only `ADMIN_ADDR` (a half-broken configuration must not make a running sidecar look
//! unhealthy), maps a wildcard listen address (`0.0.0.0`, `[::]`) to loopback, and speaks just
//! enough HTTP/1.1 over a blocking socket to read the status line: no async runtime, no TLS,
//! no redirects. Docker reserves exit status 2, so every failure, configuration included, is 1.

use crate::config::parse_admin_addr;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

/// Connect, write and read timeout each: probes are answered from memory in microseconds.
const TIMEOUT: Duration = Duration::from_secs(3);
/// The most of an answer read (probe bodies are one line).
const MAX_RESPONSE: u64 = 16 * 1024;

/// The `healthcheck [PATH]` command (PATH defaults to `/healthz`; `/readyz` also works).
pub(crate) fn main(args: &[String]) -> ExitCode {
    let path = args.first().map_or("/healthz", String::as_str);
    if !is_safe_path(path) {
        eprintln!("healthcheck: expected a path such as /healthz or /readyz, got {path:?}");
        return ExitCode::FAILURE;
    }
    let addr = match parse_admin_addr(std::env::var("ADMIN_ADDR").ok().as_deref()) {
        Ok(Some(addr)) => local_target(addr),
        Ok(None) => {
            eprintln!("healthcheck: the admin server is off (ADMIN_ADDR=off); nothing to check");
            return ExitCode::FAILURE;
        }
        Err(error) => {
            eprintln!("healthcheck: {error}");
            return ExitCode::FAILURE;
        }
    };
    match get(addr, path) {
        Ok((status, body)) => {
            println!("{status} {}", body.trim());
            if status == 200 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            println!("http://{addr}{path}: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Where to connect for a listen address: a wildcard address listens on loopback too.
pub(crate) fn local_target(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// A path that cannot smuggle anything into the request line.
fn is_safe_path(path: &str) -> bool {
    path.starts_with('/') && path.len() <= 256 && path.bytes().all(|b| b.is_ascii_graphic())
}

/// One `GET` over a fresh connection; the status code and the body.
fn get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: azure-queue-sidecar-healthcheck\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.take(MAX_RESPONSE).read_to_end(&mut response)?;
    parse_response(&response)
}

/// The status code and body of a complete HTTP/1.x response (the admin server sends bodies
/// with a `Content-Length`, never chunked).
fn parse_response(response: &[u8]) -> io::Result<(u16, String)> {
    let text = String::from_utf8_lossy(response);
    let invalid = || io::Error::new(io::ErrorKind::InvalidData, "not an HTTP/1.x response");
    let status_line = text.lines().next().ok_or_else(invalid)?;
    let mut parts = status_line.split_whitespace();
    if !parts.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Err(invalid());
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(invalid)?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_addresses_map_to_loopback() {
        let target = |s: &str| local_target(s.parse().expect("addr")).to_string();
        assert_eq!(target("0.0.0.0:9464"), "127.0.0.1:9464");
        assert_eq!(target("[::]:9464"), "[::1]:9464");
        assert_eq!(target("10.1.2.3:9000"), "10.1.2.3:9000");
        assert_eq!(target("127.0.0.1:9464"), "127.0.0.1:9464");
    }

    #[test]
    fn responses_are_parsed() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nok: alive\n";
        assert_eq!(
            parse_response(ok).expect("valid"),
            (200, "ok: alive\n".into())
        );
        let unavailable = b"HTTP/1.1 503 Service Unavailable\r\n\r\nshutting down\n";
        assert_eq!(parse_response(unavailable).expect("valid").0, 503);
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n").is_err());
        assert!(parse_response(b"").is_err());
    }

    #[test]
    fn paths_cannot_inject_into_the_request() {
        assert!(is_safe_path("/healthz"));
        assert!(is_safe_path("/readyz"));
        assert!(!is_safe_path("healthz"));
        assert!(!is_safe_path("/x HTTP/1.1\r\nHost: evil"));
    }
}
