//! A loopback TCP proxy in front of Azurite that timestamps Get Messages requests.
//!
//! "Start to first Get" must be measured from outside the sidecar: its own logs could only
//! say when it *meant* to send. The proxy runs on plain OS threads (not the driver's async
//! runtime, which may be busy) and notes the instant the first bytes of a request line
//! `GET /<account>/<queue>/messages` arrive, then forwards everything unchanged.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

#[derive(Clone)]
pub struct Proxy {
    pub port: u16,
    first_get: Arc<Mutex<Option<Instant>>>,
    gets: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
}

/// What the client-to-server direction watches.
struct Watch {
    first_get: Arc<Mutex<Option<Instant>>>,
    gets: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `127.0.0.1:upstream`.
    pub fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let first_get: Arc<Mutex<Option<Instant>>> = Arc::default();
        let gets: Arc<AtomicU64> = Arc::default();
        let requests: Arc<AtomicU64> = Arc::default();
        let (seen, counted, all) = (first_get.clone(), gets.clone(), requests.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let watch = Watch {
                    first_get: seen.clone(),
                    gets: counted.clone(),
                    requests: all.clone(),
                };
                let (Ok(client_r), Ok(server_w)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                std::thread::spawn(move || pump(client_r, server_w, Some(watch)));
                std::thread::spawn(move || pump(server, client, None));
            }
        });
        Proxy {
            port,
            first_get,
            gets,
            requests,
        }
    }

    /// Forgets the last timestamp (before starting the next process).
    pub fn reset(&self) {
        if let Ok(mut first) = self.first_get.lock() {
            *first = None;
        }
    }

    /// Get Messages requests seen so far, by every client.
    pub fn gets(&self) -> u64 {
        self.gets.load(Ordering::Relaxed)
    }

    /// Requests of any kind seen so far (Get Messages, Get Queue Metadata, ...).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// When the first Get Messages request arrived since the last reset.
    pub fn first_get(&self) -> Option<Instant> {
        self.first_get.lock().ok().and_then(|first| *first)
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, watch: Option<Watch>) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let at = Instant::now();
        if let Some(watch) = &watch {
            if is_request_start(&buffer[..n]) {
                watch.requests.fetch_add(1, Ordering::Relaxed);
            }
            if is_get_messages(&buffer[..n]) {
                watch.gets.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut first) = watch.first_get.lock() {
                    first.get_or_insert(at);
                }
            }
        }
        if to.write_all(&buffer[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Whether a chunk starts an HTTP request (the sidecar's requests are small: one chunk each).
fn is_request_start(chunk: &[u8]) -> bool {
    [&b"GET /"[..], b"PUT /", b"POST /", b"DELETE /", b"HEAD /"]
        .iter()
        .any(|method| chunk.starts_with(method))
}

/// Whether a chunk starts a Get Messages request: `GET /.../messages?...` or `GET /.../messages `.
fn is_get_messages(chunk: &[u8]) -> bool {
    let line_end = chunk
        .iter()
        .position(|&b| b == b'\r')
        .unwrap_or(chunk.len());
    let line = &chunk[..line_end];
    line.starts_with(b"GET /")
        && line
            .windows(10)
            .any(|w| w == b"/messages?" || w == b"/messages ")
}
