//! Telemetry: log setup, metrics, and the typed events that feed both.
//!
//! Every observable happening in the sidecar is one type in [`events`]; emitting it writes the
//! log line and bumps the metric together, so logs and metrics cannot disagree (the pattern of
//! vector's `internal_events`). [`tracker`] is the one flood control ("report once per change
//! of state") those events use, [`metrics`] holds the Prometheus registry, [`health`] the state
//! behind the liveness and readiness probes.
//!
//! Telemetry sits at the bottom of the house with the configuration: it names no other module
//! of the crate, so every layer can emit events. Events take label values and text, not the
//! domain's types.

pub mod events;
pub mod health;
pub mod metrics;
pub mod tracker;

use tracing_subscriber::EnvFilter;

/// Quiets the SDK's and HTTP stack's own per-request logs, which duplicate ours (we log once
/// per state change) and, at debug level, quote request details. A user's `LOG_LEVEL` may
/// still raise them explicitly, e.g. `info,azure_core=debug`.
const LIBRARY_DEFAULTS: &str = "typespec_client_core=warn,azure_core=warn,azure_storage_queue=warn,reqwest=warn,hyper=warn,hyper_util=warn,rustls=warn";

fn build_filter(user: &str) -> Result<EnvFilter, String> {
    let directives = format!("{LIBRARY_DEFAULTS},{user}");
    EnvFilter::builder().parse(directives).map_err(|e| {
        format!("expected a filter such as info, debug or info,azure_core=debug ({e})")
    })
}

/// Checks a `LOG_LEVEL` value without installing anything.
pub fn validate_filter(user: &str) -> Result<(), String> {
    build_filter(user).map(drop)
}

/// Installs the global subscriber: JSON lines (`json`) or plain text on stdout, filtered by
/// `filter` (a `LOG_LEVEL` value).
pub fn init(json: bool, filter: &str) {
    // The filter was validated with the configuration; fall back to `info` rather than panic.
    let filter = build_filter(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .with_target(false);
    let result = match json {
        true => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
        false => builder.with_ansi(false).try_init(),
    };
    // Already installed (tests run several sidecars in one process): keep the first.
    drop(result);
}
