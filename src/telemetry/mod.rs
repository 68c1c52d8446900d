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

pub(crate) mod events;
pub(crate) mod health;
pub(crate) mod metrics;
pub(crate) mod tracker;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber: JSON lines (`json`) or plain text on stdout, filtered by
/// `directives` (`config::LogConfig::directives`: the libraries' defaults and `LOG_LEVEL`).
pub(crate) fn init(json: bool, directives: &str) {
    // The directives were validated with the configuration; fall back to `info` rather than
    // panic.
    let filter = EnvFilter::builder()
        .parse(directives)
        .unwrap_or_else(|_| EnvFilter::new("info"));
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
