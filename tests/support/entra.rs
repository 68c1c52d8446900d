//! Real parts for the Microsoft Entra ID tests: a private CA made by `openssl` for the test,
//! Azurite over HTTPS with its basic OAuth check on, a token issuer on loopback that speaks the
//! Entra token endpoint (workload identity) and the App Service managed identity protocol, and
//! a TLS endpoint. Nothing is mocked: the sidecar reaches all of them over real sockets and
//! trusts the CA only through `SSL_CERT_FILE` / `K_CA_CERTS`.
//!
//! Azurite's basic OAuth check (src/queue/authentication/QueueTokenAuthenticator.ts) decodes
//! the JWT without verifying its signature and requires: `iat`, `nbf` and `exp` present and
//! `nbf <= now <= exp`; `iss` starting with `https://sts.windows.net/` (or another Azure STS
//! prefix); `aud` equal to `https://storage.azure.com` (with or without the trailing `/`),
//! `e406a681-f3d4-42a8-90b6-c2b029497af1` or `https://<account>.queue.core.windows.net`.
//! It answers 403 `AuthenticationFailed` with `Invalid token audience.` otherwise.

use super::{azurite_bin, free_port, wait_until, Output, ACCOUNT, KEY};
use azure_queue_sidecar::testing::Queue;
use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_rustls::TlsAcceptor;
use url::Url;

/// The audience Azure Storage (and Azurite) accept.
pub const STORAGE_AUDIENCE: &str = "https://storage.azure.com";
pub const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
pub const CLIENT_ID: &str = "5ad4e8a2-0d4c-4cf6-9d0e-6a1f6c3e2b11";

/// A throwaway CA and a server certificate for 127.0.0.1/localhost signed by it, made with the
/// `openssl` CLI (tests/setup.sh installs it) in a temporary directory removed on drop.
pub struct TestPki {
    pub dir: PathBuf,
}

impl TestPki {
    pub fn create() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "aqs-entra-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).expect("pki dir");
        let openssl = |args: &[&str]| {
            let output = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .expect("run openssl (tests/setup.sh installs it)");
            assert!(
                output.status.success(),
                "openssl {args:?} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
        openssl(
            &[
                &["req", "-x509", "-nodes", "-days", "2"][..],
                &ec,
                &["-keyout", "ca.key", "-out", "ca.pem"],
                &["-subj", "/CN=azure-queue-sidecar test CA"],
            ]
            .concat(),
        );
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .expect("extensions file");
        openssl(
            &[
                &["req", "-nodes"][..],
                &ec,
                &["-keyout", "server.key", "-out", "server.csr"],
                &["-subj", "/CN=127.0.0.1"],
            ]
            .concat(),
        );
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ]);
        Self { dir }
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.ca_file()).expect("read ca.pem")
    }

    pub fn cert_file(&self) -> PathBuf {
        self.dir.join("server.pem")
    }

    pub fn key_file(&self) -> PathBuf {
        self.dir.join("server.key")
    }

    /// A TLS acceptor serving the 127.0.0.1 certificate.
    pub fn acceptor(&self) -> TlsAcceptor {
        azure_queue_sidecar::testing::install_crypto_provider();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(self.cert_file())
            .expect("server.pem")
            .collect::<Result<_, _>>()
            .expect("certificates");
        let key = PrivateKeyDer::from_pem_file(self.key_file()).expect("server.key");
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server TLS config");
        TlsAcceptor::from(Arc::new(config))
    }

    /// A reqwest client for the test's own calls that trusts this CA.
    pub fn http_client(&self) -> reqwest::Client {
        azure_queue_sidecar::testing::install_crypto_provider();
        let ca = reqwest::Certificate::from_pem(self.ca_pem().as_bytes()).expect("ca");
        reqwest::Client::builder()
            .tls_certs_merge([ca])
            .build()
            .expect("http client")
    }

    /// A temporary file path in the PKI directory (for token files).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Azurite over HTTPS with `--oauth basic`. Killed on drop.
pub struct AzuriteTls {
    child: Child,
    pub port: u16,
    pub output: Output,
    http: reqwest::Client,
    debug_log: PathBuf,
}

impl AzuriteTls {
    pub async fn start(pki: &TestPki) -> Self {
        let port = free_port();
        let debug_log = pki.path(&format!("azurite-{port}.log"));
        let mut child = Command::new(azurite_bin())
            .args(["--queueHost", "127.0.0.1", "--queuePort", &port.to_string()])
            .args([
                "--disableTelemetry",
                "--skipApiVersionCheck",
                "--inMemoryPersistence",
            ])
            .args(["--oauth", "basic"])
            .arg("--cert")
            .arg(pki.cert_file())
            .arg("--key")
            .arg(pki.key_file())
            // The debug log says which authenticator accepted each request.
            .arg("--debug")
            .arg(&debug_log)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start azurite-queue");
        let output = Output::default();
        output.capture(child.stdout.take().expect("stdout"));
        output.capture(child.stderr.take().expect("stderr"));
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let up = wait_until(Duration::from_secs(30), || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok()
        })
        .await;
        assert!(up, "Azurite (https) did not start: {}", output.text());
        Self {
            child,
            port,
            output,
            http: pki.http_client(),
            debug_log,
        }
    }

    /// Azurite's debug log so far.
    pub fn debug_log(&self) -> String {
        std::fs::read_to_string(&self.debug_log).unwrap_or_default()
    }

    /// `https://127.0.0.1:PORT/devstoreaccount1`
    pub fn service_url(&self) -> String {
        format!("https://127.0.0.1:{}/{ACCOUNT}", self.port)
    }

    /// A client for `name` authorized with the account key, for the test's own setup calls.
    pub fn queue(&self, name: &str) -> Queue {
        let url = Url::parse(&format!("{}/{name}", self.service_url())).expect("queue url");
        azure_queue_sidecar::testing::account_key_queues(ACCOUNT, KEY, self.http.clone())
            .expect("dev key")
            .queue(url)
            .expect("queue client")
    }

    pub async fn create_queue(&self, name: &str) -> Queue {
        let queue = self.queue(name);
        queue.create().await.expect("create queue over https");
        queue
    }
}

impl Drop for AzuriteTls {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request the token issuer received.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub method: String,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub form: BTreeMap<String, String>,
    pub headers: BTreeMap<String, String>,
}

/// What the issuer does, changeable while it runs.
pub struct IssuerState {
    /// The `aud` of issued tokens.
    pub audience: Mutex<String>,
    /// Token lifetime; 302 s makes the sidecar refresh about every 2 s (it refreshes five
    /// minutes before expiry).
    pub expires_in: Mutex<u64>,
    /// The next this-many requests are answered 503.
    pub fail_next: AtomicUsize,
    /// The `X-IDENTITY-HEADER` value the managed identity endpoint demands.
    pub identity_header: String,
    pub requests: Mutex<Vec<TokenRequest>>,
    /// Every access token handed out, to prove none reaches a log.
    pub issued: Mutex<Vec<String>>,
    counter: AtomicUsize,
}

/// A token issuer on loopback: `POST /{tenant}/oauth2/v2.0/token` (workload identity, over
/// TLS, since azure_identity insists on an https authority) and `GET /msi/token` (App
/// Service managed identity protocol, api-version 2019-08-01).
pub struct Issuer {
    pub url: String,
    pub state: Arc<IssuerState>,
    task: tokio::task::JoinHandle<()>,
}

impl Issuer {
    /// Over TLS when `pki` is given, plain HTTP otherwise.
    pub async fn start(pki: Option<&TestPki>) -> Self {
        let state = Arc::new(IssuerState {
            audience: Mutex::new(STORAGE_AUDIENCE.to_string()),
            expires_in: Mutex::new(3600),
            fail_next: AtomicUsize::new(0),
            identity_header: format!("identity-header-{}", fastrand::u64(..)),
            requests: Mutex::default(),
            issued: Mutex::default(),
            counter: AtomicUsize::new(0),
        });
        let handler_state = state.clone();
        let (url, task) = serve(pki.map(TestPki::acceptor), move |request| {
            issue(&handler_state, request)
        })
        .await;
        Self { url, state, task }
    }

    pub fn set_audience(&self, audience: &str) {
        *self.state.audience.lock().expect("lock") = audience.to_string();
    }

    pub fn set_expires_in(&self, seconds: u64) {
        *self.state.expires_in.lock().expect("lock") = seconds;
    }

    pub fn fail_next(&self, count: usize) {
        self.state.fail_next.store(count, Ordering::SeqCst);
    }

    pub fn requests(&self) -> Vec<TokenRequest> {
        self.state.requests.lock().expect("lock").clone()
    }

    pub fn issued(&self) -> Vec<String> {
        self.state.issued.lock().expect("lock").clone()
    }

    /// The managed identity endpoint URL for `IDENTITY_ENDPOINT`.
    pub fn msi_endpoint(&self) -> String {
        format!("{}/msi/token", self.url)
    }
}

impl Drop for Issuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A simplified HTTP exchange for the test servers.
pub struct Exchange {
    pub method: String,
    pub uri: hyper::Uri,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

type Handler = Arc<dyn Fn(Exchange) -> (u16, String) + Send + Sync>;

/// Serves `handler` on a fresh loopback port, over TLS if `tls` is given; returns the base URL.
pub async fn serve(
    tls: Option<TlsAcceptor>,
    handler: impl Fn(Exchange) -> (u16, String) + Send + Sync + 'static,
) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let scheme = if tls.is_some() { "https" } else { "http" };
    let handler: Handler = Arc::new(handler);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handler = handler.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let handler = handler.clone();
                    async move {
                        let method = request.method().to_string();
                        let uri = request.uri().clone();
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
                        let body = request
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes().to_vec())
                            .unwrap_or_default();
                        let (status, text) = handler(Exchange {
                            method,
                            uri,
                            headers,
                            body,
                        });
                        let mut response = hyper::Response::new(Full::new(Bytes::from(text)));
                        *response.status_mut() =
                            hyper::StatusCode::from_u16(status).expect("status");
                        response.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            hyper::header::HeaderValue::from_static("application/json"),
                        );
                        Ok::<_, hyper::Error>(response)
                    }
                });
                match tls {
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                    None => {
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                }
            });
        }
    });
    (format!("{scheme}://{addr}"), task)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// An unsigned-but-well-formed JWT with the claims Azurite checks.
pub fn access_token(audience: &str, lifetime: u64, serial: usize) -> String {
    let header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
    let issued_at = now() - 60;
    let claims = serde_json::json!({
        "aud": audience,
        "iss": format!("https://sts.windows.net/{TENANT}/"),
        "iat": issued_at,
        "nbf": issued_at,
        "exp": now() + lifetime,
        "appid": CLIENT_ID,
        "tid": TENANT,
        "oid": "0b2f3c4d-5e6f-4a1b-8c9d-0e1f2a3b4c5d",
        "jti": format!("token-{serial}-{}", fastrand::u64(..)),
    });
    format!(
        "{}.{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes()),
        b64url(b"signature-not-checked-by-azurite-basic-oauth")
    )
}

fn error_body(code: &str, description: &str) -> String {
    serde_json::json!({
        "error": code,
        "error_description": description,
        "error_codes": [50000],
    })
    .to_string()
}

fn issue(state: &IssuerState, exchange: Exchange) -> (u16, String) {
    let query: BTreeMap<String, String> = exchange
        .uri
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let form: BTreeMap<String, String> = url::form_urlencoded::parse(&exchange.body)
        .into_owned()
        .collect();
    let path = exchange.uri.path().to_string();
    state.requests.lock().expect("lock").push(TokenRequest {
        method: exchange.method.clone(),
        path: path.clone(),
        query: query.clone(),
        form: form.clone(),
        headers: exchange.headers.clone(),
    });
    let failing = state
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if failing {
        return (
            503,
            error_body("temporarily_unavailable", "the test issuer is down"),
        );
    }
    // The queue's scope gets the configured audience; any other `<audience>/.default` scope
    // (or managed identity `resource`) gets a token for that audience (ENDPOINT_AUDIENCE).
    let asked = form
        .get("scope")
        .and_then(|s| s.strip_suffix("/.default"))
        .or(query.get("resource").map(String::as_str))
        .unwrap_or(STORAGE_AUDIENCE)
        .to_string();
    let audience = match asked == STORAGE_AUDIENCE || asked == "https://storage.azure.com" {
        true => state.audience.lock().expect("lock").clone(),
        false => asked.clone(),
    };
    let lifetime = *state.expires_in.lock().expect("lock");
    let serial = state.counter.fetch_add(1, Ordering::SeqCst);
    let token = access_token(&audience, lifetime, serial);

    if exchange.method == "POST" && path == format!("/{TENANT}/oauth2/v2.0/token") {
        let expect = |key: &str, value: &str| form.get(key).map(String::as_str) == Some(value);
        let valid = expect("grant_type", "client_credentials")
            && expect(
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            )
            && expect("client_id", CLIENT_ID)
            && form.get("scope").is_some_and(|s| s.ends_with("/.default"))
            && form.get("client_assertion").is_some_and(|a| !a.is_empty());
        if !valid {
            return (
                400,
                error_body("invalid_request", "AADSTS900144: bad request"),
            );
        }
        state.issued.lock().expect("lock").push(token.clone());
        let body = serde_json::json!({
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": token,
        });
        return (200, body.to_string());
    }
    if exchange.method == "GET" && path == "/msi/token" {
        if exchange.headers.get("x-identity-header") != Some(&state.identity_header) {
            return (401, error_body("unauthorized", "wrong X-IDENTITY-HEADER"));
        }
        let resource_ok = query.get("resource").is_some_and(|r| !r.is_empty());
        let version_ok = query.get("api-version").map(String::as_str) == Some("2019-08-01");
        if !resource_ok || !version_ok {
            return (
                400,
                error_body("invalid_request", "bad resource or api-version"),
            );
        }
        state.issued.lock().expect("lock").push(token.clone());
        let body = serde_json::json!({
            "access_token": token,
            "expires_on": (now() + lifetime).to_string(),
            "resource": asked,
            "token_type": "Bearer",
        });
        return (200, body.to_string());
    }
    (404, error_body("not_found", "no such path"))
}

/// An HTTPS endpoint that accepts every POST with 200 and counts them.
pub struct TlsEndpoint {
    pub url: String,
    count: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl TlsEndpoint {
    pub async fn start(pki: &TestPki) -> Self {
        let count = Arc::new(AtomicUsize::new(0));
        let counter = count.clone();
        let (base, task) = serve(Some(pki.acceptor()), move |exchange| {
            if exchange.method == "POST" {
                counter.fetch_add(1, Ordering::SeqCst);
            }
            (200, String::new())
        })
        .await;
        Self {
            url: format!("{base}/events"),
            count,
            task,
        }
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

impl Drop for TlsEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Writes `content` to `path` atomically (write then rename), as the kubelet swaps a
/// projected token.
pub fn write_token_file(path: &Path, content: &str) {
    let staging = path.with_extension("new");
    std::fs::write(&staging, content).expect("write token");
    std::fs::rename(&staging, path).expect("swap token");
}
