//! The admin HTTP server: `/healthz`, `/readyz` and `/metrics` on `ADMIN_ADDR`.
//!
//! It is the hyper that reqwest already brings (server half switched on), HTTP/1.1 only: the
//! kubelet, Docker and Prometheus all speak it, and a second web stack would cost size for
//! nothing. It runs on the sidecar's single runtime thread, next to the pump, which is what a
//! liveness probe should test: if the runtime is blocked, the probe times out.
//!
//! The answers come from [`crate::telemetry::health`] and [`crate::telemetry::metrics`]; the
//! server holds no state of its own. Each probe answers in plain text with a short reason, so
//! `kubectl describe pod` and `curl` show why a probe fails.
//!
//! Hardening for a port that may be reachable from the whole cluster: only `GET`/`HEAD`; a
//! bounded number of connections where a new one closes the quietest instead of being turned
//! away (idle or half-sent connections from a neighbour cannot starve the kubelet's probes);
//! timeouts on reading request headers and on idle connections, a maximum connection age; and
//! nothing secret in any answer (metrics carry counts and labels only). deploy/base adds a
//! NetworkPolicy that admits the port only from where probes and scrapes come from.

use crate::telemetry::events::LivenessChanged;
use crate::telemetry::events::{AdminConnectionFailed, AdminServerStarted, InternalEvent};
use crate::telemetry::health::{health, Health, Probe};
use crate::telemetry::metrics::metrics;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};

/// Connections served at once. Probes and scrapes need a handful; when all are taken, the
/// connection that has been quiet longest is closed to make room (see [`serve`]).
const MAX_CONNECTIONS: usize = 32;
/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection that sends nothing for this long is closed (idle keep-alive, or a client that
/// connected and never spoke).
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// After this long a keep-alive connection is closed (gracefully) even if it is busy.
const MAX_CONNECTION_AGE: Duration = Duration::from_secs(60);

/// The OpenMetrics text format that `prometheus-client` writes (Prometheus scrapes it).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// The admin server could not listen on `ADMIN_ADDR`.
#[derive(Debug, thiserror::Error)]
#[error("ADMIN_ADDR {addr}: cannot listen ({source}); choose a free port or set ADMIN_ADDR=off")]
pub(crate) struct BindError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// The running server. Stops when dropped.
#[derive(Debug)]
pub(crate) struct AdminServer {
    task: JoinHandle<()>,
}

impl AdminServer {
    /// Binds `addr` and serves in a background task. Binding happens here, before the pump
    /// starts, so a port conflict stops the sidecar at once with a clear message.
    pub(crate) async fn start(addr: SocketAddr) -> Result<Self, BindError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| BindError { addr, source })?;
        let addr = listener.local_addr().unwrap_or(addr);
        AdminServerStarted { addr }.emit();
        Ok(Self {
            task: tokio::spawn(serve(listener)),
        })
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        // Dropping the accept loop drops its JoinSet, which aborts every open connection.
        self.task.abort();
    }
}

/// The accept loop. A full house never turns a new connection away: the kubelet's probe is
/// usually the newest connection, and idle or half-sent ones from a neighbour must not starve
/// it. Instead the connection that read nothing for the longest time is closed; one that is
/// sending a request has just read bytes, so it is the last to go.
async fn serve(listener: TcpListener) {
    let epoch = Instant::now();
    let mut open: Vec<(u64, Arc<Activity>)> = Vec::with_capacity(MAX_CONNECTIONS + 1);
    let mut connections = JoinSet::new();
    let mut next_id = 0u64;
    loop {
        while let Some(done) = connections.try_join_next() {
            if let Ok(id) = done {
                open.retain(|(open_id, _)| *open_id != id);
            }
        }
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors and the like: wait a moment instead of spinning.
                AdminConnectionFailed { error: &error }.emit();
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if open.len() >= MAX_CONNECTIONS {
            let quietest = open
                .iter()
                .enumerate()
                .min_by_key(|(_, (_, activity))| activity.last_read_ms())
                .map(|(index, _)| index);
            if let Some(index) = quietest {
                let (_, activity) = open.swap_remove(index);
                activity.close.notify_one();
            }
        }
        let activity = Arc::new(Activity::new(epoch));
        let id = next_id;
        next_id += 1;
        open.push((id, activity.clone()));
        connections.spawn(async move {
            serve_connection(stream, activity).await;
            id
        });
    }
}

/// When a connection last read bytes, and how to close it from the accept loop.
struct Activity {
    epoch: Instant,
    /// Milliseconds after `epoch`.
    last_read: AtomicU64,
    close: Notify,
}

impl Activity {
    fn new(epoch: Instant) -> Self {
        let activity = Self {
            epoch,
            last_read: AtomicU64::new(0),
            close: Notify::new(),
        };
        activity.touch();
        activity
    }

    fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_read.store(ms, Ordering::Relaxed);
    }

    fn last_read_ms(&self) -> u64 {
        self.last_read.load(Ordering::Relaxed)
    }

    /// When the connection counts as idle, unless it reads something before.
    fn idle_at(&self) -> tokio::time::Instant {
        tokio::time::Instant::from_std(
            self.epoch + Duration::from_millis(self.last_read_ms()) + IDLE_TIMEOUT,
        )
    }
}

/// A TCP stream that records when it last read bytes.
struct Tracked {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        result
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

async fn serve_connection(stream: TcpStream, activity: Arc<Activity>) {
    let service = service_fn(|request: Request<Incoming>| async move {
        Ok::<_, Infallible>(respond(
            request.method(),
            request.uri().path(),
            health(),
            Instant::now(),
        ))
    });
    let io = TokioIo::new(Tracked {
        stream,
        activity: activity.clone(),
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(io, service);
    tokio::pin!(connection);
    let too_old = tokio::time::sleep(MAX_CONNECTION_AGE);
    tokio::pin!(too_old);
    let result = loop {
        tokio::select! {
            result = connection.as_mut() => break result,
            // Closed by the accept loop to make room, or idle: dropping closes the socket.
            () = activity.close.notified() => break Ok(()),
            () = tokio::time::sleep_until(activity.idle_at()) => {
                if activity.idle_at() <= tokio::time::Instant::now() {
                    break Ok(());
                }
            }
            () = &mut too_old => {
                connection.as_mut().graceful_shutdown();
                break match tokio::time::timeout(HEADER_READ_TIMEOUT, connection.as_mut()).await {
                    Ok(result) => result,
                    Err(_) => Ok(()),
                };
            }
        }
    };
    if let Err(error) = result {
        AdminConnectionFailed { error: &error }.emit();
    }
}

/// The answer to one request. Pure apart from reading the metrics registry, so the routes are
/// unit-tested without a socket.
pub(crate) fn respond(
    method: &Method,
    path: &str,
    health: &Health,
    now: Instant,
) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match path {
        "/healthz" | "/livez" => {
            let (probe, changed) = health.liveness(now);
            if changed {
                LivenessChanged { probe: &probe }.emit();
            }
            probe_answer(&probe)
        }
        "/readyz" => probe_answer(&health.readiness()),
        "/metrics" => {
            let mut response = Response::new(Full::new(Bytes::from(metrics().render())));
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(OPENMETRICS));
            headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        "/" => text(
            StatusCode::OK,
            concat!(
                "azure-queue-sidecar ",
                env!("CARGO_PKG_VERSION"),
                "\n/healthz  liveness\n/readyz   readiness\n/metrics  Prometheus metrics\n"
            ),
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /healthz, /readyz or /metrics\n",
        ),
    }
}

/// `200 ok: <reason>` or `503 <reason>`.
fn probe_answer(probe: &Probe) -> Response<Full<Bytes>> {
    if probe.ok {
        text(StatusCode::OK, format!("ok: {}\n", probe.reason))
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}\n", probe.reason),
        )
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(TEXT));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body(response: Response<Full<Bytes>>) -> String {
        let bytes = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[tokio::test]
    async fn probes_answer_with_status_and_reason() {
        let now = Instant::now();
        let health = Health::new(now);
        let ready = respond(&Method::GET, "/readyz", &health, now);
        assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(body(ready).await.contains("waiting for the first answer"));

        health.queue_answered();
        let ready = respond(&Method::GET, "/readyz", &health, now);
        assert_eq!(ready.status(), StatusCode::OK);
        assert_eq!(body(ready).await, "ok: ready\n");

        health.queue_failed("receive", "unauthorized");
        let ready = respond(&Method::HEAD, "/readyz", &health, now);
        assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body(ready).await, "queue receive failed: unauthorized\n");

        let live = respond(&Method::GET, "/healthz", &health, now);
        assert_eq!(live.status(), StatusCode::OK);
        health.set_stall_limit(Duration::from_secs(1));
        let live = respond(
            &Method::GET,
            "/healthz",
            &health,
            now + Duration::from_secs(5),
        );
        assert_eq!(live.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(body(live).await.contains("stalled"));
    }

    #[tokio::test]
    async fn metrics_use_the_openmetrics_text_format() {
        let health = Health::new(Instant::now());
        let response = respond(&Method::GET, "/metrics", &health, Instant::now());
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[CONTENT_TYPE], OPENMETRICS);
        let text = body(response).await;
        assert!(text.contains("# TYPE azure_queue_sidecar_messages_received counter"));
        assert!(text.contains("azure_queue_sidecar_build_info{version="));
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[tokio::test]
    async fn other_paths_and_methods_are_refused() {
        let health = Health::new(Instant::now());
        let now = Instant::now();
        assert_eq!(
            respond(&Method::GET, "/nope", &health, now).status(),
            StatusCode::NOT_FOUND
        );
        let post = respond(&Method::POST, "/readyz", &health, now);
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(post.headers()[ALLOW], "GET, HEAD");
    }

    #[tokio::test]
    async fn a_taken_port_is_a_clear_start_error() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("addr");
        let error = AdminServer::start(addr).await.expect_err("port in use");
        let message = error.to_string();
        assert!(message.starts_with("ADMIN_ADDR 127.0.0.1:"), "{message}");
        assert!(message.contains("ADMIN_ADDR=off"), "{message}");
    }
}
