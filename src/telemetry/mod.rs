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

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Installs the global subscriber: JSON lines (`json`) or plain text on stdout, filtered by
/// `directives` (`config::LogConfig::directives`: the libraries' defaults and `LOG_LEVEL`).
///
/// The filter is a [`Targets`] (`target=level` pairs and a default level, the `RUST_LOG`
/// syntax we document), not an `EnvFilter`: that one's span and field matching needs regex,
/// about 300 KB of the binary.
pub(crate) fn init(json: bool, directives: &str) {
    // The directives were validated with the configuration; fall back to `info` rather than
    // panic.
    let filter = directives
        .parse::<Targets>()
        .unwrap_or_else(|_| Targets::new().with_default(LevelFilter::INFO));
    // The formatter lets everything through; the filter decides.
    let builder = tracing_subscriber::fmt()
        .with_max_level(LevelFilter::TRACE)
        .with_writer(std::io::stdout)
        .with_target(false);
    let result = match json {
        true => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .finish()
            .with(filter)
            .try_init(),
        false => builder.with_ansi(false).finish().with(filter).try_init(),
    };
    // Already installed (tests run several sidecars in one process): keep the first.
    drop(result);
}
