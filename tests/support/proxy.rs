//! A real HTTP proxy in front of Azurite that injects queue faults per request: answer in
//! Azurite's place (503 ServerBusy, 400 PopReceiptMismatch...), delay the request or the
//! answer, or reset the connection before or after forwarding. Every request is recorded with
//! its query (to count SAS signatures) and what was done to it, so a test can tell which
//! requests the service really applied.
//!
//! Shared Key signatures do not cover the host, so requests signed for the proxy's address
//! are valid at Azurite; SAS tokens do not name a host either.
#![allow(dead_code)]

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The queue operation a request is, from its method and path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueOp {
    Receive,
    Peek,
    Delete,
    Update,
    Put,
    Clear,
    Properties,
    Create,
    Other,
}

/// What the proxy does with one request.
#[derive(Debug, Clone)]
pub enum Action {
    /// Forward it and pass the answer back.
    Forward,
    /// Answer in Azurite's place, without forwarding.
    Answer { status: u16, code: &'static str },
    /// Wait, then forward (a slow network or a stuck front end; the service sees nothing yet).
    DelayForward(Duration),
    /// Forward at once, hold the answer back for a while (the service has applied it).
    DelayAnswer(Duration),
    /// Reset the connection without forwarding: the service never sees the request.
    CutBefore,
    /// Forward, let the service apply it, then reset the connection instead of answering:
    /// the client cannot know what happened.
    CutAfter,
}

impl Action {
    fn label(&self) -> &'static str {
        match self {
            Action::Forward => "forward",
            Action::Answer { .. } => "answer",
            Action::DelayForward(_) => "delay_forward",
            Action::DelayAnswer(_) => "delay_answer",
            Action::CutBefore => "cut_before",
            Action::CutAfter => "cut_after",
        }
    }
}

/// One request the proxy saw.
#[derive(Debug, Clone)]
pub struct Proxied {
    pub method: String,
    /// The path, e.g. `/devstoreaccount1/orders/messages/<id>`.
    pub path: String,
    /// The raw query string (may hold a SAS and a pop receipt; tests only).
    pub query: String,
    pub at: Instant,
    /// What the rule decided: `forward`, `answer`, `delay_forward`, `delay_answer`,
    /// `cut_before`, `cut_after`; or what happened upstream instead: `upstream_down` (no
    /// connection to Azurite: answered 503 ServerBusy, certainly not applied) and
    /// `upstream_failed` (the exchange with Azurite broke after the request was sent: the
    /// client's connection is reset; Azurite may or may not have applied it).
    pub action: &'static str,
    /// Azurite's status, for forwarded requests that it answered.
    pub upstream_status: Option<u16>,
}

impl Proxied {
    /// The path segments after the account: queue, then `messages`, then a message id.
    fn segments(&self) -> Vec<&str> {
        self.path
            .split('/')
            .filter(|s| !s.is_empty())
            .skip(1)
            .collect()
    }

    /// The queue the request is for.
    pub fn queue(&self) -> &str {
        self.segments().first().copied().unwrap_or("")
    }

    /// The message id in the path (Delete, Update).
    pub fn message_id(&self) -> Option<&str> {
        let segments = self.segments();
        match segments.as_slice() {
            [_, "messages", id] => Some(id),
            _ => None,
        }
    }

    pub fn op(&self) -> QueueOp {
        let segments = self.segments();
        let messages = segments.get(1) == Some(&"messages");
        let has_id = segments.len() == 3;
        match (self.method.as_str(), messages, has_id) {
            ("GET", true, false) if self.query.contains("peekonly=true") => QueueOp::Peek,
            ("GET", true, false) => QueueOp::Receive,
            ("DELETE", true, true) => QueueOp::Delete,
            ("PUT", true, true) => QueueOp::Update,
            ("POST", true, false) => QueueOp::Put,
            ("DELETE", true, false) => QueueOp::Clear,
            ("GET", false, _) if self.query.contains("comp=metadata") => QueueOp::Properties,
            ("PUT", false, _) => QueueOp::Create,
            _ => QueueOp::Other,
        }
    }

    /// How many `sig` parameters the query carries.
    pub fn signatures(&self) -> usize {
        self.query
            .split('&')
            .filter(|pair| pair.len() >= 4 && pair[..4].eq_ignore_ascii_case("sig="))
            .count()
    }
}

type Rule = Arc<dyn Fn(&Proxied) -> Action + Send + Sync>;

/// The proxy. Stops when dropped.
pub struct QueueProxy {
    pub port: u16,
    log: Arc<Mutex<Vec<Proxied>>>,
    task: tokio::task::JoinHandle<()>,
}

impl QueueProxy {
    /// A proxy to Azurite on `upstream_port` that applies `rule` to every request.
    pub async fn start(
        upstream_port: u16,
        rule: impl Fn(&Proxied) -> Action + Send + Sync + 'static,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let log: Arc<Mutex<Vec<Proxied>>> = Arc::default();
        let rule: Rule = Arc::new(rule);
        let client = reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(5))
            .build()
            .expect("proxy client");
        let shared = log.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                // A second handle on the same socket, to turn the close into a reset.
                let Ok(socket) = stream.as_fd().try_clone_to_owned() else {
                    continue;
                };
                let socket = Arc::new(socket);
                let (log, rule, client) = (shared.clone(), rule.clone(), client.clone());
                tokio::spawn(async move {
                    let service =
                        service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                            let (log, rule, client, socket) =
                                (log.clone(), rule.clone(), client.clone(), socket.clone());
                            async move {
                                handle(request, upstream_port, &log, &rule, &client, &socket).await
                            }
                        });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { port, log, task }
    }

    /// Every request seen so far, in arrival order.
    pub fn requests(&self) -> Vec<Proxied> {
        self.log.lock().expect("proxy log").clone()
    }

    /// The requests of one kind.
    pub fn of(&self, op: QueueOp) -> Vec<Proxied> {
        self.requests()
            .into_iter()
            .filter(|r| r.op() == op)
            .collect()
    }

    pub fn service_url(&self) -> String {
        format!("http://127.0.0.1:{}/{}", self.port, super::ACCOUNT)
    }
}

impl Drop for QueueProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Response = hyper::Response<Full<Bytes>>;

async fn handle(
    request: hyper::Request<hyper::body::Incoming>,
    upstream_port: u16,
    log: &Mutex<Vec<Proxied>>,
    rule: &Rule,
    client: &reqwest::Client,
    socket: &OwnedFd,
) -> Result<Response, std::io::Error> {
    let mut seen = Proxied {
        method: request.method().as_str().to_string(),
        path: request.uri().path().to_string(),
        query: request.uri().query().unwrap_or("").to_string(),
        at: Instant::now(),
        action: "forward",
        upstream_status: None,
    };
    let action = rule(&seen);
    seen.action = action.label();
    let index = {
        let mut log = log.lock().expect("proxy log");
        log.push(seen.clone());
        log.len() - 1
    };
    let set_status = |status: Option<u16>, action: Option<&'static str>| {
        let mut log = log.lock().expect("proxy log");
        if let Some(entry) = log.get_mut(index) {
            entry.upstream_status = status;
            if let Some(action) = action {
                entry.action = action;
            }
        }
    };
    match action {
        Action::Answer { status, code } => {
            // Read the body so the connection stays usable.
            let _ = request.into_body().collect().await;
            let mut answer = hyper::Response::new(Full::new(Bytes::new()));
            *answer.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
            answer.headers_mut().insert(
                "x-ms-error-code",
                hyper::header::HeaderValue::from_static(code),
            );
            return Ok(answer);
        }
        Action::CutBefore => {
            let _ = request.into_body().collect().await;
            return Err(reset(socket));
        }
        Action::DelayForward(delay) => tokio::time::sleep(delay).await,
        _ => {}
    }
    match forward(request, upstream_port, client).await {
        Ok(response) => {
            set_status(Some(response.status().as_u16()), None);
            match action {
                Action::CutAfter => Err(reset(socket)),
                Action::DelayAnswer(delay) => {
                    tokio::time::sleep(delay).await;
                    Ok(response)
                }
                _ => Ok(response),
            }
        }
        Err(error) if error.is_connect() => {
            set_status(None, Some("upstream_down"));
            Ok(busy())
        }
        Err(_) => {
            set_status(None, Some("upstream_failed"));
            Err(reset(socket))
        }
    }
}

/// 503 ServerBusy, as the service's front end answers when it cannot serve.
fn busy() -> Response {
    let mut answer = hyper::Response::new(Full::new(Bytes::new()));
    *answer.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
    answer.headers_mut().insert(
        "x-ms-error-code",
        hyper::header::HeaderValue::from_static("ServerBusy"),
    );
    answer
}

/// Sets SO_LINGER to zero, so the close that follows (hyper drops the connection when the
/// service fails) sends a TCP reset instead of a FIN.
fn reset(socket: &OwnedFd) -> std::io::Error {
    let _ = socket2::SockRef::from(socket).set_linger(Some(Duration::ZERO));
    std::io::Error::other("connection reset by the fault proxy")
}

async fn forward(
    request: hyper::Request<hyper::body::Incoming>,
    upstream_port: u16,
    client: &reqwest::Client,
) -> Result<Response, reqwest::Error> {
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let method = reqwest::Method::from_bytes(request.method().as_str().as_bytes())
        .unwrap_or(reqwest::Method::GET);
    let mut upstream = client.request(method, format!("http://127.0.0.1:{upstream_port}{path}"));
    for (name, value) in request.headers() {
        if name != hyper::header::HOST && name != hyper::header::CONTENT_LENGTH {
            upstream = upstream.header(name.as_str(), value.as_bytes());
        }
    }
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let answer = upstream.body(body.to_vec()).send().await?;
    let mut response = hyper::Response::new(Full::new(Bytes::new()));
    *response.status_mut() = hyper::StatusCode::from_u16(answer.status().as_u16()).expect("status");
    for (name, value) in answer.headers() {
        if name == reqwest::header::CONTENT_LENGTH || name == reqwest::header::TRANSFER_ENCODING {
            continue;
        }
        if let (Ok(n), Ok(v)) = (
            hyper::header::HeaderName::from_bytes(name.as_str().as_bytes()),
            hyper::header::HeaderValue::from_bytes(value.as_bytes()),
        ) {
            response.headers_mut().insert(n, v);
        }
    }
    *response.body_mut() = Full::new(answer.bytes().await?);
    Ok(response)
}
