//! The endpoint's bearer token: changed (rotated, refreshed), or not to be had. The token
//! itself never reaches an event.

use super::internal::{labels, InternalEvent};
use crate::telemetry::metrics::metrics;
use crate::telemetry::tracker::Tracker;
use tracing::{error, info};

/// Which endpoint token sources are failing (`token-file`, `knative-oidc`, `entra-id`).
static SOURCES: Tracker<&str> = Tracker::new();

/// A new endpoint token is in use: the file's content changed, a new Entra ID token was
/// acquired, or a token can be had again after failures. `after_unauthorized` when the
/// re-read was forced by a 401.
pub(crate) struct EndpointTokenChanged {
    pub source: &'static str,
    pub after_unauthorized: bool,
}

impl InternalEvent for EndpointTokenChanged {
    fn emit(self) {
        metrics()
            .endpoint_token_changes
            .get_or_create(&labels([("source", self.source)]))
            .inc();
        match SOURCES.recovered(&self.source) {
            Some(failures) => info!(
                source = self.source,
                failures, "endpoint token available again"
            ),
            None => info!(
                source = self.source,
                after_unauthorized = self.after_unauthorized,
                "endpoint token changed"
            ),
        }
    }
}

/// The endpoint token could not be read or acquired. `error` is secret-free (a path and an
/// I/O error, or an already scrubbed token request error). Logged once per outage.
pub(crate) struct EndpointTokenFailed<'a> {
    pub source: &'static str,
    pub error: &'a str,
    /// Whether the previous token is still sent meanwhile.
    pub using_previous: bool,
}

impl InternalEvent for EndpointTokenFailed<'_> {
    fn emit(self) {
        metrics()
            .endpoint_token_failures
            .get_or_create(&labels([("source", self.source)]))
            .inc();
        if !SOURCES.failed(self.source, ()) {
            return;
        }
        error!(
            source = self.source,
            error = self.error,
            using_previous = self.using_previous,
            hint = "deliveries are retried (never poisoned) until a token can be had; check the token file or the identity",
            "cannot get the endpoint token"
        );
    }
}
