//! Transport: every HTTP client the sidecar makes, from one factory ([`Clients`]).
//!
//! One HTTP stack (reqwest on hyper and rustls with `ring`) serves every direction: the queue
//! (its calls, and a pool of its own for Get Messages), the Microsoft Entra token endpoints
//! (they share the queue's client, so a token credential's calls go where the queue's go), and
//! the endpoint. This module decides for each what it trusts, how long it waits and who it
//! says it is ([`USER_AGENT`]); nobody else builds a client.
//!
//! Trust: queue and token endpoints use the platform's roots (which honour `SSL_CERT_FILE` and
//! `SSL_CERT_DIR`, see `config::tls`); the endpoint adds Knative's `K_CA_CERTS`, taken from the
//! configuration, which checked it at start. A client that only ever speaks plain `http://`
//! (Azurite with a key or SAS, an app on localhost) loads no trust store at all: loading the
//! platform's roots reads and parses every certificate file it finds, which took most of the
//! sidecar's start-up time and a few hundred KiB of heap for the process's life, for TLS that
//! never happens. An `https://` request on such a client fails certificate verification; it
//! never goes anywhere unverified.

use crate::config::EndpointConfig;
use std::time::Duration;

/// The `User-Agent` of every request we make.
pub(crate) const USER_AGENT: &str = concat!("azure-queue-sidecar/", env!("CARGO_PKG_VERSION"));

/// The longest one queue request may take: the queue client's own bound, so a hung connection
/// cannot stall the loop forever. Calls on leased messages are bounded tighter by the queue
/// layer's budgets (`queue::Budget`).
pub(crate) const QUEUE_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a queue connection may take to open.
const QUEUE_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle queue connections are closed after this (the service closes them after about a minute).
const QUEUE_POOL_IDLE: Duration = Duration::from_secs(50);
/// The endpoint's connections open within this (or `HTTP_TIMEOUT`, if shorter).
const ENDPOINT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const ENDPOINT_POOL_IDLE: Duration = Duration::from_secs(30);

/// reqwest's own retry layer, switched off.
///
/// Why: the default policy retries only HTTP/2 and HTTP/3 protocol refusals, which never happen
/// on our HTTP/1.1-only stack, yet it clones every request (its header map and extensions)
/// before sending it, in case it needs a retry; even `retry::never()` clones unless its
/// retries-per-request are 0. Our retries are the queue layer's and the delivery policy's.
/// Dropping the clone saved 4.3 k instructions per 200-byte message (callgrind, `tests/bench`).
fn no_retries() -> reqwest::retry::Builder {
    reqwest::retry::never().max_retries_per_request(0)
}

/// Installs the process-wide TLS crypto provider (ring). Idempotent; every client needs it.
pub fn install_crypto_provider() {
    // Fails only if a provider is installed already, which is what we want anyway.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Every client the sidecar uses, built once at start without any network call.
#[derive(Debug, Clone)]
pub(crate) struct Clients {
    /// Queue calls (and token endpoint calls).
    pub(crate) queue: reqwest::Client,
    /// Get Messages, on a pool of its own.
    ///
    /// Why: hyper grows a connection's read buffer to fit large responses (up to ~400 KiB) and
    /// keeps it for the connection's life. A Get of 32 large messages is such a response,
    /// while deletes and updates answer with a few hundred bytes. On one shared pool every
    /// connection sooner or later carries a Get, and with `MAX_IN_FLIGHT` deletes in parallel
    /// there are that many connections: with 64 KiB messages, about 40 × 400 KiB of read
    /// buffers (most of the peak RSS, measured with massif in `tests/bench`). A pool of its
    /// own keeps the big buffer on the one connection that receives.
    pub(crate) receive: reqwest::Client,
    /// POSTs (and probes) to the endpoint.
    pub(crate) endpoint: reqwest::Client,
}

impl Clients {
    /// The clients for `endpoint` and a queue that is reached over TLS if `queue_tls` (an
    /// `https` queue, or a token credential, whose token endpoints are always https).
    pub(crate) fn new(endpoint: &EndpointConfig, queue_tls: bool) -> reqwest::Result<Self> {
        install_crypto_provider();
        Ok(Self {
            queue: queue_client(queue_tls)?,
            receive: queue_client(queue_tls)?,
            endpoint: endpoint_client(endpoint)?,
        })
    }
}

/// A client for queue calls: pooled, no redirects, each request bounded by
/// [`QUEUE_REQUEST_TIMEOUT`]; without `tls`, no trust store (see the module docs).
pub(crate) fn queue_client(tls: bool) -> reqwest::Result<reqwest::Client> {
    let builder = reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .connect_timeout(QUEUE_CONNECT_TIMEOUT)
        .timeout(QUEUE_REQUEST_TIMEOUT)
        .pool_idle_timeout(QUEUE_POOL_IDLE)
        .redirect(reqwest::redirect::Policy::none())
        .retry(no_retries());
    match tls {
        true => builder.build(),
        false => builder.tls_certs_only(std::iter::empty()).build(),
    }
}

/// The endpoint's client. Each POST carries its own timeout (`HTTP_TIMEOUT`); redirects are not
/// followed, so a plain `http` endpoint never needs a trust store.
fn endpoint_client(endpoint: &EndpointConfig) -> reqwest::Result<reqwest::Client> {
    let builder = match endpoint.url.scheme() {
        "http" => reqwest::Client::builder().tls_certs_only(std::iter::empty()),
        _ => reqwest::Client::builder().tls_certs_merge(endpoint_roots(endpoint)?),
    };
    builder
        .user_agent(USER_AGENT)
        .redirect(reqwest::redirect::Policy::none())
        .retry(no_retries())
        .connect_timeout(endpoint.timeout.min(ENDPOINT_CONNECT_TIMEOUT))
        .pool_idle_timeout(ENDPOINT_POOL_IDLE)
        .build()
}

/// The endpoint's extra roots: the certificates of `K_CA_CERTS`, if set.
fn endpoint_roots(endpoint: &EndpointConfig) -> reqwest::Result<Vec<reqwest::Certificate>> {
    match &endpoint.ca_certs {
        Some(pem) => reqwest::Certificate::from_pem_bundle(pem.as_bytes()),
        None => Ok(Vec::new()),
    }
}
