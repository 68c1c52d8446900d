//! A loopback TCP proxy in front of Azurite: it timestamps and counts Get Messages requests,
//! and can add a network round trip.
//!
//! "Start to first Get" must be measured from outside the sidecar: its own logs could only
//! say when it *meant* to send. The proxy runs on plain OS threads (not the driver's async
//! runtime, which may be busy) and notes the instant the first bytes of a request line
//! `GET /<account>/<queue>/messages` arrive, then forwards everything unchanged.
//!
//! With a round trip (`start_delayed`), it behaves like a long, fat link: every chunk is held
//! for half the RTT in each direction, so a request and its response cost one RTT more, and a
//! new connection costs one RTT more again (the TCP handshake it stands for). Each direction of
//! each connection has its own delay line (a reader thread stamps chunks with when they may
//! leave, a writer thread sends them at that instant, in order): connections never wait for
//! each other, and bytes a client pipelines on a kept-alive connection are delayed, not
//! serialized behind the previous response.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone)]
pub struct Proxy {
    pub port: u16,
    /// The round trip added to every request (zero: none).
    pub rtt: Duration,
    first_get: Arc<Mutex<Option<Instant>>>,
    gets: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
}

/// What the client-to-server direction watches.
#[derive(Clone)]
struct Watch {
    first_get: Arc<Mutex<Option<Instant>>>,
    gets: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
}

impl Watch {
    fn saw(&self, chunk: &[u8], at: Instant) {
        if is_request_start(chunk) {
            self.requests.fetch_add(1, Ordering::Relaxed);
        }
        if is_get_messages(chunk) {
            self.gets.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut first) = self.first_get.lock() {
                first.get_or_insert(at);
            }
        }
    }
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `127.0.0.1:upstream`.
    pub fn start(upstream: u16) -> Proxy {
        Self::start_delayed(upstream, Duration::ZERO)
    }

    /// Like [`Proxy::start`], adding `rtt` to every request/response exchange (half of it each
    /// way) and to every new connection.
    pub fn start_delayed(upstream: u16, rtt: Duration) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let watch = Watch {
            first_get: Arc::default(),
            gets: Arc::default(),
            requests: Arc::default(),
        };
        let proxy = Proxy {
            port,
            rtt,
            first_get: watch.first_get.clone(),
            gets: watch.gets.clone(),
            requests: watch.requests.clone(),
        };
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let accepted = Instant::now();
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (Ok(client_r), Ok(server_w)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                let watch = watch.clone();
                if rtt.is_zero() {
                    std::thread::spawn(move || pump(client_r, server_w, Some(watch)));
                    std::thread::spawn(move || pump(server, client, None));
                } else {
                    // The handshake a real client would have waited for: nothing the client
                    // sends reaches the server before one RTT after it connected.
                    let half = rtt / 2;
                    delay_line(client_r, server_w, half, accepted + rtt, Some(watch));
                    delay_line(server, client, half, accepted, None);
                }
            }
        });
        proxy
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
        if let Some(watch) = &watch {
            watch.saw(&buffer[..n], Instant::now());
        }
        if to.write_all(&buffer[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// One direction of a delayed connection: every chunk read from `from` is written to `to`
/// `delay` after it arrived (but not before `not_before`), in order; the end of the stream
/// (FIN) is delayed the same way.
fn delay_line(
    mut from: TcpStream,
    mut to: TcpStream,
    delay: Duration,
    not_before: Instant,
    watch: Option<Watch>,
) {
    // `None` is the end of the stream.
    let (line, arrivals) = mpsc::channel::<(Instant, Option<Vec<u8>>)>();
    std::thread::spawn(move || {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let read = from.read(&mut buffer);
            let at = Instant::now();
            let leave = (at + delay).max(not_before + delay);
            let chunk = match read {
                Ok(0) | Err(_) => None,
                Ok(n) => Some(buffer[..n].to_vec()),
            };
            if let (Some(watch), Some(chunk)) = (&watch, &chunk) {
                watch.saw(chunk, at);
            }
            let end = chunk.is_none();
            if line.send((leave, chunk)).is_err() || end {
                break;
            }
        }
    });
    std::thread::spawn(move || {
        for (leave, chunk) in arrivals {
            let wait = leave.saturating_duration_since(Instant::now());
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
            match chunk {
                Some(chunk) if to.write_all(&chunk).is_ok() => {}
                _ => break,
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
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
