//! Real parts for integration tests: an Azurite queue service on a free loopback port, an
//! HTTP endpoint that records what it receives, and the sidecar binary as a child process.
//!
//! Nothing here is a mock. Azurite is the npm package, started per test (in memory, about
//! 0.8 s); `tests/run.sh` installs it. A missing Azurite fails the test loudly.
#![allow(dead_code)]

use azure_queue_sidecar::testing::Queue;
use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use url::Url;

/// Azurite's well-known development account.
pub const ACCOUNT: &str = "devstoreaccount1";
pub const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// A free TCP port on loopback (bound then released; the race is harmless in practice).
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Polls `check` until it is true or `timeout` passes; returns whether it became true.
pub async fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    check()
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `azurite-queue` executable: `$AZURITE_QUEUE_BIN`, the copy `tests/run.sh` installs
/// under `target/tools`, or one on `PATH`. Panics with instructions if there is none.
fn azurite_bin() -> PathBuf {
    if let Ok(path) = std::env::var("AZURITE_QUEUE_BIN") {
        return PathBuf::from(path);
    }
    let local = repo_root().join("target/tools/node_modules/.bin/azurite-queue");
    if local.exists() {
        return local;
    }
    if let Ok(path) = which("azurite-queue") {
        return path;
    }
    panic!(
        "azurite-queue not found: run tests/run.sh (it installs Azurite with npm into target/tools), \
         or set AZURITE_QUEUE_BIN"
    );
}

fn which(name: &str) -> Result<PathBuf, ()> {
    let path = std::env::var_os("PATH").ok_or(())?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .ok_or(())
}

/// Lines a child process printed, collected by a reader thread.
#[derive(Clone, Default)]
pub struct Output {
    lines: Arc<Mutex<Vec<String>>>,
    /// Reader threads that have not reached the end of their stream yet.
    open_readers: Arc<std::sync::atomic::AtomicUsize>,
}

impl Output {
    fn capture(&self, stream: impl std::io::Read + Send + 'static) {
        let lines = self.lines.clone();
        let open = self.open_readers.clone();
        open.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if std::env::var_os("TEST_ECHO").is_some() {
                    eprintln!("{line}");
                }
                lines.lock().expect("output lock").push(line);
            }
            open.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        });
    }

    /// Waits (up to `timeout`) until every stream was read to its end: after the process
    /// exited, its last lines may still sit in the pipe, unread by a reader thread that a
    /// loaded machine has not scheduled yet.
    pub async fn wait_closed(&self, timeout: Duration) -> bool {
        wait_until(timeout, || {
            self.open_readers.load(std::sync::atomic::Ordering::SeqCst) == 0
        })
        .await
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("output lock").clone()
    }

    pub fn text(&self) -> String {
        self.lines().join("\n")
    }

    pub fn count_matching(&self, needle: &str) -> usize {
        self.lines().iter().filter(|l| l.contains(needle)).count()
    }
}

/// A running Azurite queue service. Killed on drop.
pub struct Azurite {
    child: Child,
    pub port: u16,
    /// Azurite's access log: one line per request.
    pub output: Output,
    workspace: Option<PathBuf>,
}

impl Azurite {
    /// In-memory Azurite on a free port.
    pub async fn start() -> Self {
        Self::start_with(free_port(), None).await
    }

    /// Azurite on `port`, persisting to `workspace` if given (for restart tests).
    pub async fn start_with(port: u16, workspace: Option<&Path>) -> Self {
        let mut command = Command::new(azurite_bin());
        command
            .args(["--queueHost", "127.0.0.1", "--queuePort", &port.to_string()])
            .args(["--disableTelemetry", "--skipApiVersionCheck"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        match workspace {
            Some(dir) => {
                command.arg("--location").arg(dir);
            }
            None => {
                command.arg("--inMemoryPersistence");
            }
        }
        let mut child = command.spawn().expect("start azurite-queue");
        let output = Output::default();
        output.capture(child.stdout.take().expect("stdout"));
        output.capture(child.stderr.take().expect("stderr"));
        let azurite = Self {
            child,
            port,
            output,
            workspace: workspace.map(Path::to_path_buf),
        };
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let up = wait_until(Duration::from_secs(30), || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok()
        })
        .await;
        assert!(
            up,
            "Azurite did not start on port {port}: {}",
            azurite.output.text()
        );
        azurite
    }

    /// The path-style service URL, e.g. `http://127.0.0.1:PORT/devstoreaccount1`.
    pub fn service_url(&self) -> String {
        format!("http://127.0.0.1:{}/{ACCOUNT}", self.port)
    }

    /// A full connection string for the dev account.
    pub fn connection_string(&self) -> String {
        format!(
            "DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};QueueEndpoint={};",
            self.service_url()
        )
    }

    /// A client for `queue` authorized with the account key.
    pub fn queue(&self, name: &str) -> Queue {
        azure_queue_sidecar::testing::install_crypto_provider();
        let http = azure_queue_sidecar::testing::http_client().expect("http client");
        let url = Url::parse(&format!("{}/{name}", self.service_url())).expect("queue url");
        azure_queue_sidecar::testing::account_key_queues(ACCOUNT, KEY, http)
            .expect("dev key")
            .queue(url)
            .expect("queue client")
    }

    /// Creates `name` and returns a client for it.
    pub async fn create_queue(&self, name: &str) -> Queue {
        let queue = self.queue(name);
        queue.create().await.expect("create queue");
        queue
    }

    /// A queue-level service SAS for `queue` with `permissions` (e.g. "raup"), valid one day.
    pub fn queue_sas(&self, queue: &str, permissions: &str) -> String {
        service_sas(queue, permissions)
    }

    /// Stops Azurite (as a crash would: SIGKILL).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn workspace(&self) -> Option<&Path> {
        self.workspace.as_deref()
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Signs a queue service SAS (Azure REST docs, "Create a service SAS", version 2020-12-06
/// layout without the blob-only fields).
fn service_sas(queue: &str, permissions: &str) -> String {
    let version = "2020-12-06";
    let start = "2020-01-01T00:00:00Z";
    let expiry = "2099-01-01T00:00:00Z";
    let resource = format!("/queue/{ACCOUNT}/{queue}");
    let string_to_sign = format!("{permissions}\n{start}\n{expiry}\n{resource}\n\n\n\n{version}");
    let signature = {
        let b64 = base64::engine::general_purpose::STANDARD;
        let key = ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            &b64.decode(KEY).expect("the key is base64"),
        );
        b64.encode(ring::hmac::sign(&key, string_to_sign.as_bytes()).as_ref())
    };
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    query
        .append_pair("sv", version)
        .append_pair("st", start)
        .append_pair("se", expiry)
        .append_pair("sp", permissions)
        .append_pair("sig", &signature);
    query.finish()
}

/// Polls the queue's approximate message count (visible and leased) until it is `expected` or
/// `timeout` has passed; returns the last count.
pub async fn queue_count_within(queue: &Queue, expected: u64, timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    loop {
        let count = queue.approximate_message_count().await.expect("count");
        if count == expected || Instant::now() > deadline {
            return count;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the queue reports no messages at all (visible or leased).
pub async fn assert_queue_empties(queue: &Queue) {
    let count = queue_count_within(queue, 0, Duration::from_secs(20)).await;
    assert_eq!(count, 0, "queue still holds {count} messages");
}

/// Reads every message currently in the queue (peek-free: receives with a short lease).
pub async fn drain_texts(queue: &Queue) -> Vec<String> {
    let mut texts = Vec::new();
    loop {
        let batch = queue
            .receive(32, Duration::from_secs(60))
            .await
            .expect("receive");
        if batch.is_empty() {
            return texts;
        }
        texts.extend(batch.into_iter().map(|m| m.text));
    }
}

/// One request the endpoint received.
#[derive(Debug, Clone)]
pub struct Received {
    /// The request path, e.g. `/events` (tests that run several sidecars give each its own).
    pub path: String,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The CloudEvent id, in either content mode.
    pub fn event_id(&self) -> String {
        if let Some(id) = self.header("ce-id") {
            return id.to_string();
        }
        let doc: serde_json::Value = serde_json::from_slice(&self.body).unwrap_or_default();
        doc["id"].as_str().unwrap_or_default().to_string()
    }
}

/// How the endpoint answers a request.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub delay: Duration,
    pub headers: Vec<(String, String)>,
    /// Close the connection (after `delay`) without answering at all, as an app that crashes
    /// on a request does.
    pub close: bool,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            delay: Duration::ZERO,
            headers: Vec::new(),
            close: false,
        }
    }

    /// Reads the request, then closes the connection without an answer.
    pub fn close() -> Self {
        Self {
            close: true,
            ..Self::status(500)
        }
    }

    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

type Behaviour = Arc<dyn Fn(&Received, usize) -> Reply + Send + Sync>;

/// An answer the endpoint actually wrote: recorded after the reply's delay, so a request whose
/// client hung up meanwhile (hyper then drops the handler) has none.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The request's index in [`Endpoint::received`].
    pub index: usize,
    pub status: u16,
    pub at: Instant,
}

/// A real HTTP/1.1 server on loopback that records every request and answers per a behaviour
/// (given the request and how many requests came before it).
pub struct Endpoint {
    pub url: String,
    received: Arc<Mutex<Vec<Received>>>,
    answers: Arc<Mutex<Vec<Answer>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Endpoint {
    /// Answers 200 to everything.
    pub async fn ok() -> Self {
        Self::start(|_, _| Reply::status(200)).await
    }

    pub async fn start(
        behaviour: impl Fn(&Received, usize) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind endpoint");
        Self::serve(listener, Arc::new(behaviour))
    }

    /// Serves on a given port (to bring an endpoint "back up" where the sidecar expects it).
    pub async fn start_on(
        port: u16,
        behaviour: impl Fn(&Received, usize) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind endpoint port");
        Self::serve(listener, Arc::new(behaviour))
    }

    fn serve(listener: tokio::net::TcpListener, behaviour: Behaviour) -> Self {
        let addr = listener.local_addr().expect("endpoint address");
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let answers: Arc<Mutex<Vec<Answer>>> = Arc::default();
        let (store, answered) = (received.clone(), answers.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (store, answered) = (store.clone(), answered.clone());
                let behaviour = behaviour.clone();
                tokio::spawn(async move {
                    let service =
                        service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                            let (store, answered) = (store.clone(), answered.clone());
                            let behaviour = behaviour.clone();
                            async move {
                                let path = request.uri().path().to_string();
                                let headers = request
                                    .headers()
                                    .iter()
                                    .map(|(k, v)| {
                                        (
                                            k.as_str().to_string(),
                                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                        )
                                    })
                                    .collect();
                                let is_post = request.method() == hyper::Method::POST;
                                let body = request
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes().to_vec())
                                    .unwrap_or_default();
                                if !is_post {
                                    // Probes (HEAD) are answered but not recorded as deliveries.
                                    return Ok::<_, std::io::Error>(hyper::Response::new(
                                        Full::new(Bytes::new()),
                                    ));
                                }
                                let record = Received {
                                    path,
                                    headers,
                                    body,
                                    at: Instant::now(),
                                };
                                let index = {
                                    let mut all = store.lock().expect("store lock");
                                    all.push(record.clone());
                                    all.len() - 1
                                };
                                let reply = behaviour(&record, index);
                                if !reply.delay.is_zero() {
                                    tokio::time::sleep(reply.delay).await;
                                }
                                if reply.close {
                                    // An error from the service makes hyper close the
                                    // connection without writing a response.
                                    return Err(std::io::Error::other("closed without an answer"));
                                }
                                answered.lock().expect("answers lock").push(Answer {
                                    index,
                                    status: reply.status,
                                    at: Instant::now(),
                                });
                                let mut response = hyper::Response::new(Full::new(Bytes::new()));
                                *response.status_mut() = hyper::StatusCode::from_u16(reply.status)
                                    .expect("valid status");
                                for (name, value) in reply.headers {
                                    response.headers_mut().insert(
                                        hyper::header::HeaderName::from_bytes(name.as_bytes())
                                            .expect("header name"),
                                        hyper::header::HeaderValue::from_str(&value)
                                            .expect("header value"),
                                    );
                                }
                                Ok::<_, std::io::Error>(response)
                            }
                        });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            url: format!("http://{addr}/events"),
            received,
            answers,
            task,
        }
    }

    /// The answers actually written so far, in order.
    pub fn answers(&self) -> Vec<Answer> {
        self.answers.lock().expect("answers lock").clone()
    }

    /// `http://127.0.0.1:PORT` without a path, to build per-sidecar endpoint URLs.
    pub fn base_url(&self) -> String {
        self.url.trim_end_matches("/events").to_string()
    }

    pub fn port(&self) -> u16 {
        Url::parse(&self.url)
            .ok()
            .and_then(|u| u.port())
            .expect("endpoint port")
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("store lock").clone()
    }

    pub fn count(&self) -> usize {
        self.received.lock().expect("store lock").len()
    }

    /// Waits until at least `n` requests arrived; panics after `timeout`.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let ok = wait_until(timeout, || self.count() >= n).await;
        assert!(ok, "endpoint got {} requests, expected {n}", self.count());
        self.received()
    }

    /// Stops listening (the port then refuses connections).
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The sidecar binary as a child process, with captured output. Killed on drop.
pub struct Sidecar {
    child: Child,
    pub output: Output,
    /// Where its admin server listens (`host:port`), unless `ADMIN_ADDR=off`.
    pub admin_addr: Option<String>,
}

impl Sidecar {
    /// Environment for a sidecar consuming `queue` on `azurite` and posting to `endpoint`,
    /// with short test timings (not the defaults).
    pub fn env(azurite: &Azurite, queue: &str, endpoint: &str) -> Vec<(String, String)> {
        vec![
            (
                "AZURE_STORAGE_CONNECTION_STRING".into(),
                azurite.connection_string(),
            ),
            ("QUEUE_NAME".into(), queue.into()),
            ("ENDPOINT_URL".into(), endpoint.into()),
            ("POLL_MIN_INTERVAL".into(), "20ms".into()),
            ("POLL_MAX_INTERVAL".into(), "200ms".into()),
            ("LOG_LEVEL".into(), "debug".into()),
        ]
    }

    /// Starts the sidecar. Without an `ADMIN_ADDR` in `env` it gets a free loopback port of
    /// its own (the default 9464 would be shared by every sidecar of the test run); see
    /// [`Sidecar::admin`].
    pub fn spawn(env: &[(String, String)]) -> Self {
        let mut env = env.to_vec();
        if env_value(&env, "ADMIN_ADDR").is_none() {
            env.push(("ADMIN_ADDR".into(), format!("127.0.0.1:{}", free_port())));
        }
        let admin_addr = env_value(&env, "ADMIN_ADDR")
            .filter(|addr| !addr.eq_ignore_ascii_case("off"))
            .map(str::to_string);
        let mut command = Command::new(sidecar_bin());
        command
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start the sidecar");
        let output = Output::default();
        output.capture(child.stdout.take().expect("stdout"));
        output.capture(child.stderr.take().expect("stderr"));
        Self {
            child,
            output,
            admin_addr,
        }
    }

    /// The admin server's `host:port`; panics if it was turned off.
    pub fn admin(&self) -> &str {
        self.admin_addr.as_deref().expect("the admin server is on")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (TERM, INT, KILL).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for exit; returns the exit code, or None on timeout.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                // Everything it printed before exiting, read.
                self.output.wait_closed(Duration::from_secs(10)).await;
                return Some(status.code().unwrap_or(-1));
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Log lines parsed as JSON (non-JSON lines skipped).
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.output
            .lines()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The binary under test: this build's, or `$SIDECAR_BIN` (e.g. a build of the previous
/// commit, to watch a new regression test fail against the code it guards).
pub fn sidecar_bin() -> PathBuf {
    std::env::var_os("SIDECAR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_azure-queue-sidecar")))
}

/// Runs the sidecar binary with `env` to completion (for configuration errors and --help).
pub fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let output = Command::new(sidecar_bin())
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("run the sidecar");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Base64 of `bytes` (standard alphabet, padded), as Azure Functions writes messages.
pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

impl Azurite {
    /// Stops Azurite gracefully (SIGTERM), letting an on-disk workspace flush. False if it had
    /// to be killed after 10 s.
    pub async fn stop(&mut self) -> bool {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.kill();
        false
    }
}

/// A fresh, empty directory under the system temp dir.
pub fn temp_dir(label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "aqs-{label}-{}-{}",
        std::process::id(),
        free_port()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// Distinct CloudEvent ids among what an endpoint received.
pub fn distinct_ids(received: &[Received]) -> std::collections::BTreeSet<String> {
    received.iter().map(Received::event_id).collect()
}

/// `env` with `extra` set, replacing variables of the same name.
pub fn with(mut env: Vec<(String, String)>, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    for (k, v) in extra {
        env.retain(|(name, _)| name != k);
        env.push((k.to_string(), v.to_string()));
    }
    env
}

impl Sidecar {
    /// The one-line summary printed at exit (JSON logs).
    pub fn summary(&self) -> serde_json::Value {
        self.json_lines()
            .into_iter()
            .find(|l| l["message"] == "stopped")
            .unwrap_or_else(|| panic!("no summary line in: {}", self.output.text()))
    }
}

/// A real HTTP proxy in front of Azurite that can answer `503 ServerBusy` instead of
/// forwarding, the way the queue service throttles. Shared Key signatures do not cover the
/// host, so requests signed for the proxy's address are valid at Azurite.
pub struct ThrottlingProxy {
    pub port: u16,
    throttling: Arc<std::sync::atomic::AtomicBool>,
    /// Requests answered 503.
    pub throttled: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl ThrottlingProxy {
    pub async fn start(upstream_port: u16) -> Self {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let throttling = Arc::new(AtomicBool::new(false));
        let throttled = Arc::new(AtomicUsize::new(0));
        let client = reqwest::Client::new();
        let (flag, count) = (throttling.clone(), throttled.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (flag, count, client) = (flag.clone(), count.clone(), client.clone());
                tokio::spawn(async move {
                    let service =
                        service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                            let (flag, count, client) =
                                (flag.clone(), count.clone(), client.clone());
                            async move {
                                if flag.load(Ordering::SeqCst) {
                                    count.fetch_add(1, Ordering::SeqCst);
                                    let mut busy = hyper::Response::new(Full::new(Bytes::new()));
                                    *busy.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
                                    busy.headers_mut().insert(
                                        "x-ms-error-code",
                                        hyper::header::HeaderValue::from_static("ServerBusy"),
                                    );
                                    return Ok::<_, hyper::Error>(busy);
                                }
                                let path = request
                                    .uri()
                                    .path_and_query()
                                    .map(|p| p.as_str().to_string())
                                    .unwrap_or_default();
                                let method = reqwest::Method::from_bytes(
                                    request.method().as_str().as_bytes(),
                                )
                                .expect("method");
                                let mut forward = client.request(
                                    method,
                                    format!("http://127.0.0.1:{upstream_port}{path}"),
                                );
                                for (name, value) in request.headers() {
                                    if name != hyper::header::HOST
                                        && name != hyper::header::CONTENT_LENGTH
                                    {
                                        forward = forward.header(name.as_str(), value.as_bytes());
                                    }
                                }
                                let body = request
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                let mut response = hyper::Response::new(Full::new(Bytes::new()));
                                match forward.body(body.to_vec()).send().await {
                                    Ok(upstream) => {
                                        *response.status_mut() =
                                            hyper::StatusCode::from_u16(upstream.status().as_u16())
                                                .expect("status");
                                        for (name, value) in upstream.headers() {
                                            if let (Ok(n), Ok(v)) = (
                                                hyper::header::HeaderName::from_bytes(
                                                    name.as_str().as_bytes(),
                                                ),
                                                hyper::header::HeaderValue::from_bytes(
                                                    value.as_bytes(),
                                                ),
                                            ) {
                                                if n != hyper::header::CONTENT_LENGTH
                                                    && n != hyper::header::TRANSFER_ENCODING
                                                {
                                                    response.headers_mut().insert(n, v);
                                                }
                                            }
                                        }
                                        let bytes = upstream.bytes().await.unwrap_or_default();
                                        *response.body_mut() = Full::new(bytes);
                                    }
                                    Err(_) => {
                                        *response.status_mut() = hyper::StatusCode::BAD_GATEWAY
                                    }
                                }
                                Ok::<_, hyper::Error>(response)
                            }
                        });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            port,
            throttling,
            throttled,
            task,
        }
    }

    /// Starts or stops answering 503 ServerBusy.
    pub fn throttle(&self, on: bool) {
        self.throttling
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn throttled_count(&self) -> usize {
        self.throttled.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn service_url(&self) -> String {
        format!("http://127.0.0.1:{}/{ACCOUNT}", self.port)
    }
}

impl Drop for ThrottlingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The value of `name` in a sidecar environment.
pub fn env_value<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
    env.iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// GETs `path` from the admin server at `addr` (`host:port`); the status and body, or `None`
/// if nothing answered.
pub async fn admin_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let response = reqwest::Client::new()
        .get(format!("http://{addr}{path}"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.unwrap_or_default()))
}

/// Waits until `path` on the admin server answers `status`; the last answer either way.
pub async fn wait_for_status(
    addr: &str,
    path: &str,
    status: u16,
    timeout: Duration,
) -> Option<(u16, String)> {
    let deadline = Instant::now() + timeout;
    loop {
        let answer = admin_get(addr, path).await;
        if answer.as_ref().is_some_and(|(s, _)| *s == status) || Instant::now() >= deadline {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Samples of a Prometheus/OpenMetrics text exposition, keyed by `name{labels}` exactly as
/// written (comments and `# EOF` skipped).
pub fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            Some((key.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// Microsoft Entra ID test parts (HTTPS Azurite, token issuer, private CA).
pub mod entra;

/// A fault-injecting HTTP proxy in front of Azurite.
pub mod proxy;

/// Runs a sidecar command (`check`, `healthcheck`) to completion off the async workers, which
/// keep serving the test's endpoint, issuer and proxy meanwhile.
pub async fn command(args: &[&str], env: &[(String, String)]) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let env = env.to_vec();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        run_to_exit(&args, &env)
    })
    .await
    .expect("command thread")
}

/// The line of `check` output about `name`, e.g. `FAIL queue: ...`.
pub fn check_line<'a>(stdout: &'a str, name: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| {
            l.get(5..)
                .is_some_and(|rest| rest.starts_with(&format!("{name}:")))
        })
        .unwrap_or_else(|| panic!("no {name} line in:\n{stdout}"))
}

/// The members of a JSON object in document order, each with its value's raw JSON text exactly
/// as written, duplicates included (a `serde_json::Value` would keep only the last of a
/// duplicated key, and would turn big numbers into floats).
pub fn json_members(bytes: &[u8]) -> Vec<(String, String)> {
    struct Members(Vec<(String, String)>);
    impl<'de> serde::Deserialize<'de> for Members {
        fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct Visit;
            impl<'de> serde::de::Visitor<'de> for Visit {
                type Value = Members;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<Members, A::Error> {
                    let mut members = Vec::new();
                    while let Some((key, value)) =
                        map.next_entry::<String, Box<serde_json::value::RawValue>>()?
                    {
                        members.push((key, value.get().to_string()));
                    }
                    Ok(Members(members))
                }
            }
            deserializer.deserialize_map(Visit)
        }
    }
    serde_json::from_slice::<Members>(bytes)
        .unwrap_or_else(|e| {
            panic!(
                "not a JSON object ({e}): {}",
                String::from_utf8_lossy(bytes)
            )
        })
        .0
}

/// The raw JSON text of member `name` of a JSON object (see [`json_members`]); panics if the
/// member is missing or appears more than once.
pub fn json_member(bytes: &[u8], name: &str) -> String {
    let found: Vec<String> = json_members(bytes)
        .into_iter()
        .filter(|(key, _)| key == name)
        .map(|(_, raw)| raw)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "member {name:?} appears {} times in {}",
        found.len(),
        String::from_utf8_lossy(bytes)
    );
    found.into_iter().next().unwrap_or_default()
}
