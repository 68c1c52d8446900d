//! The sidecar itself (no arguments): configuration, logging, signals, the pump, and the
//! one-line summary at exit.
//!
//! Exit status: 0 after a clean shutdown, 2 for a configuration error (reported in one line
//! before any network call), 1 if the sidecar could not start.
//!
//! This is where the parts are put together: the clients from the bootstrap, the pipeline
//! (pump and handler) from [`pipeline::build`], and around the pump the admin server (probes,
//! metrics) and the queue-length poll. SIGTERM/SIGINT become a shutdown,
//! a second one "stop now".

use super::bootstrap::{block_on, Settings, USAGE_ERROR};
use crate::admin::{AdminServer, BindError};
use crate::auth::endpoint::TokenUnavailable;
use crate::config::format_duration;
use crate::pipeline::{self, pump::stall_limit, pump::Summary};
use crate::queue::QueueError;
use crate::queue_length;
use crate::redact;
use crate::shutdown::{self, Shutdown, ShutdownTrigger};
use crate::telemetry::events::{InternalEvent, ShutdownStarted};
use crate::telemetry::{self, health::health};
use std::process::ExitCode;
use tracing::{error, info};

/// What can stop the sidecar from starting once the configuration is valid.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    #[error("could not build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Admin(#[from] BindError),
    #[error("cannot set up the endpoint's token: {0}")]
    EndpointToken(#[from] TokenUnavailable),
}

/// The sidecar: runs until a signal, then drains; the exit status.
pub(crate) fn main() -> ExitCode {
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("azure-queue-sidecar: configuration error: {error}");
            return ExitCode::from(USAGE_ERROR);
        }
    };
    telemetry::init(
        settings.config.log.json(),
        &settings.config.log.directives(),
    );
    block_on(async move {
        let (trigger, listener) = shutdown::channel();
        let stop = trigger.clone();
        tokio::spawn(async move {
            let mut signals = match shutdown::Signals::new() {
                Ok(signals) => signals,
                Err(e) => {
                    error!(error = %e, "cannot listen for signals; stopping");
                    trigger.trigger();
                    return;
                }
            };
            let signal = signals.next().await;
            info!(
                signal,
                "shutdown requested: no new messages, finishing deliveries in progress (send it again to stop now)"
            );
            trigger.trigger();
            // A second signal during the drain: stop now (the pump says what it cuts off).
            let signal = signals.next().await;
            info!(signal, "second signal: stopping now");
            trigger.stop_now();
        });
        match run(&settings, listener, stop).await {
            Ok(summary) => {
                info!(
                    received = summary.received,
                    delivered = summary.delivered,
                    delivered_not_deleted = summary.delivered_not_deleted,
                    redeliveries_avoided = summary.redeliveries_avoided,
                    retries_scheduled = summary.retries_scheduled,
                    poisoned = summary.poisoned,
                    poisoned_not_deleted = summary.poisoned_not_deleted,
                    released = summary.released,
                    left = summary.left,
                    "stopped"
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                error!(error = %e, "cannot start");
                ExitCode::FAILURE
            }
        }
    })
    .unwrap_or_else(|code| code)
}

/// Runs the sidecar until `shutdown` fires (from a signal, or from the pump itself through
/// `stop` when `EXIT_WHEN_IDLE` says the run is complete); returns what it did.
pub(crate) async fn run(
    settings: &Settings,
    shutdown: Shutdown,
    stop: ShutdownTrigger,
) -> Result<Summary, StartError> {
    let config = &settings.config;
    let clients = settings.clients()?;
    let queues = settings.queues(&clients);
    let deliverer = settings.deliverer(&clients)?;
    let pump = pipeline::build(config, &settings.storage, deliverer, &queues)?;
    health().set_stall_limit(stall_limit(config.poll.max_interval));
    // Bound before the pump starts: a port conflict is a start error, not a silent gap.
    let _admin = match config.ops.admin_addr {
        Some(addr) => Some(AdminServer::start(addr).await?),
        None => None,
    };
    let queue_length = match config.ops.queue_length_interval {
        Some(interval) => Some(queue_length::spawn(
            queues.queue(settings.storage.queue_url.clone())?,
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
    log_start(settings);
    let summary = pump.run(shutdown, stop).await;
    if let Some(task) = queue_length {
        task.abort();
    }
    // The admin server answered through the drain; it stops when `_admin` drops here.
    Ok(summary)
}

/// One line with the effective configuration; secrets are reduced to their kind.
fn log_start(settings: &Settings) {
    let Settings { config, storage } = settings;
    info!(
        version = env!("CARGO_PKG_VERSION"),
        queue = %storage.queue_url,
        auth = storage.credential.kind(),
        endpoint = %redact::url(&config.endpoint.url),
        ce_mode = ?config.event.mode,
        ce_batch_size = config.event.batch.max_events,
        ce_batch_max_bytes = config.event.batch.max_bytes,
        ce_type = %config.event.ce_type,
        ce_source = %config.event.source_or(&storage.queue_url),
        decode_base64 = config.event.decode_base64,
        ce_passthrough = config.event.passthrough,
        eventgrid_schema = ?config.event.event_grid,
        batch_size = config.batch_size,
        max_in_flight = config.max_in_flight,
        visibility_timeout = %format_duration(config.visibility_timeout),
        poll_min_interval = %format_duration(config.poll.min_interval),
        poll_max_interval = %format_duration(config.poll.max_interval),
        http_timeout = %format_duration(config.endpoint.timeout),
        endpoint_auth = config.endpoint.auth.kind(),
        trace_context = config.endpoint.trace_context,
        retry_base_delay = %format_duration(config.retry.base_delay),
        retry_max_delay = %format_duration(config.retry.max_delay),
        max_dequeue_count = config.retry.max_dequeue_count,
        poison_queue = %config.retry.poison_queue_name,
        create_poison_queue = config.retry.create_poison_queue,
        shutdown_timeout = %format_duration(config.shutdown_timeout),
        exit_when_idle = %config
            .exit_when_idle
            .map_or_else(|| "off".to_string(), format_duration),
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
