//! Wiring: from a validated [`Config`] to a running pump.
//!
//! This is the only place that knows how the parts fit together: one reqwest client per
//! direction (queue, endpoint) on the same HTTP stack, the queue client with its authorization
//! policy, the event mapper, the deliverer, and the pump; around the pump, the admin server
//! (probes, metrics) and the queue-length poll.

use crate::admin::{AdminServer, BindError};
use crate::auth::Credential;
use crate::config::{format_duration, Config};
use crate::delivery::Deliverer;
use crate::event::EventMapper;
use crate::poison::PoisonQueue;
use crate::pump::{stall_limit, Pump, PumpSettings, Summary};
use crate::queue::{self, Queue, QueueConnector, QueueError};
use crate::queue_length;
use crate::redact;
use crate::retry::RetryPolicy;
use crate::shutdown::Shutdown;
use crate::telemetry::events::{InternalEvent, ShutdownStarted};
use crate::telemetry::health::health;
use crate::worker::Worker;
use tracing::info;

/// The `User-Agent` of every request we make.
pub const USER_AGENT: &str = concat!("azure-queue-sidecar/", env!("CARGO_PKG_VERSION"));

/// What can stop the sidecar from starting once the configuration is valid.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("could not build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Admin(#[from] BindError),
}

/// Installs the process-wide TLS crypto provider (ring). Idempotent.
pub fn install_crypto_provider() {
    // Fails only if a provider is installed already, which is what we want anyway.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Queue clients authorized as configured. The pump, the queue-length poll and the `check`
/// command all get their clients here, so `check` tests exactly what the sidecar will use.
pub fn connector(config: &Config) -> Result<QueueConnector, StartError> {
    install_crypto_provider();
    // Azurite over plain http with a key or SAS never needs TLS (a token credential may still
    // fetch its tokens over https).
    let plain = config.storage.queue_url.scheme() == "http"
        && !matches!(config.storage.credential, Credential::Token(_));
    let http = || match plain {
        true => queue::plain_http_client(USER_AGENT),
        false => queue::http_client(USER_AGENT),
    };
    Ok(
        QueueConnector::new(config.storage.credential.clone(), http()?)
            .with_receive_transport(http()?),
    )
}

/// A client for the configured queue, without any network call.
pub fn queue_client(config: &Config) -> Result<Queue, StartError> {
    Ok(connector(config)?.queue(config.storage.queue_url.clone())?)
}

/// Builds every part from the configuration, without any network call.
pub fn build(config: &Config) -> Result<Pump, StartError> {
    build_with(config, &connector(config)?)
}

/// Builds the pump on an existing connector, so every queue client shares one connection pool
/// (and, with Entra ID, one token cache).
fn build_with(config: &Config, connector: &QueueConnector) -> Result<Pump, StartError> {
    let queue = connector.queue(config.storage.queue_url.clone())?;
    let deliverer = Deliverer::new(config.endpoint.clone(), config.http_timeout, USER_AGENT)?;
    let poison = PoisonQueue::new(
        connector.queue(config.retry.poison_queue_url.clone())?,
        config.retry.create_poison_queue,
    );
    let worker = Worker::new(
        queue.clone(),
        poison,
        EventMapper::new(config.event.clone()),
        deliverer,
        RetryPolicy::from_config(&config.retry),
        config.visibility_timeout,
    );
    Ok(Pump::new(queue, worker, PumpSettings::from_config(config)))
}

/// Runs the sidecar until `shutdown` fires; returns what it did.
pub async fn run(config: &Config, shutdown: Shutdown) -> Result<Summary, StartError> {
    let connector = connector(config)?;
    let pump = build_with(config, &connector)?;
    health().set_stall_limit(stall_limit(config.poll.max_interval));
    // Bound before the pump starts: a port conflict is a start error, not a silent gap.
    let _admin = match config.ops.admin_addr {
        Some(addr) => Some(AdminServer::start(addr).await?),
        None => None,
    };
    let queue_length = match config.ops.queue_length_interval {
        Some(interval) => Some(queue_length::spawn(
            connector.queue(config.storage.queue_url.clone())?,
            interval,
            shutdown.clone(),
        )),
        None => None,
    };
    let mut stopping = shutdown.clone();
    tokio::spawn(async move {
        stopping.wait().await;
        ShutdownStarted.emit();
    });
    log_start(config);
    let summary = pump.run(shutdown).await;
    if let Some(task) = queue_length {
        task.abort();
    }
    // The admin server answered through the drain; it stops when `_admin` drops here.
    Ok(summary)
}

/// One line with the effective configuration; secrets are reduced to their kind.
fn log_start(config: &Config) {
    info!(
        version = env!("CARGO_PKG_VERSION"),
        queue = %config.storage.queue_url,
        auth = config.storage.credential.kind(),
        endpoint = %redact::url(&config.endpoint),
        ce_mode = ?config.event.mode,
        ce_type = %config.event.ce_type,
        ce_source = %config.event.source,
        decode_base64 = config.event.decode_base64,
        ce_passthrough = config.event.passthrough,
        eventgrid_schema = ?config.event.event_grid,
        batch_size = config.batch_size,
        max_in_flight = config.max_in_flight,
        visibility_timeout = %format_duration(config.visibility_timeout),
        poll_min_interval = %format_duration(config.poll.min_interval),
        poll_max_interval = %format_duration(config.poll.max_interval),
        http_timeout = %format_duration(config.http_timeout),
        retry_base_delay = %format_duration(config.retry.base_delay),
        retry_max_delay = %format_duration(config.retry.max_delay),
        max_dequeue_count = config.retry.max_dequeue_count,
        poison_queue = %config.retry.poison_queue_name,
        create_poison_queue = config.retry.create_poison_queue,
        shutdown_timeout = %format_duration(config.shutdown_timeout),
        admin_addr = %config
            .ops
            .admin_addr
            .map_or_else(|| "off".to_string(), |addr| addr.to_string()),
        queue_length_interval = %config
            .ops
            .queue_length_interval
            .map_or_else(|| "off".to_string(), format_duration),
        "azure-queue-sidecar started"
    );
}
