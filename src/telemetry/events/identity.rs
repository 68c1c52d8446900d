//! Microsoft Entra ID: tokens acquired, token requests and token endpoint calls that failed.
//!
//! An identity that gets no token fails every request the same way until it recovers: the
//! request failure is logged once per outage, each failed endpoint attempt only while the
//! identity was working, and the first token after an outage says how many requests failed.

use super::internal::{labels, InternalEvent};
use crate::telemetry::metrics::metrics;
use crate::telemetry::tracker::Tracker;
use std::time::Duration;
use tracing::{debug, error, info, warn};

/// Which identities are failing (by their kind: `workload-identity`, `managed-identity`).
static IDENTITIES: Tracker<&str> = Tracker::new();

/// A token was acquired (about once an hour per identity). The token itself never reaches an
/// event.
pub(crate) struct TokenAcquired {
    pub identity: &'static str,
    pub expires_in: Duration,
}

impl InternalEvent for TokenAcquired {
    fn emit(self) {
        metrics()
            .token_requests
            .get_or_create(&labels([
                ("identity", self.identity),
                ("outcome", "acquired"),
            ]))
            .inc();
        match IDENTITIES.recovered(&self.identity) {
            Some(failed_requests) => info!(
                identity = self.identity,
                expires_in_s = self.expires_in.as_secs(),
                failed_requests,
                "access token acquired again"
            ),
            None => info!(
                identity = self.identity,
                expires_in_s = self.expires_in.as_secs(),
                "access token acquired"
            ),
        }
    }
}

/// A token request failed after the token endpoint's retries. Logged once while the identity
/// keeps failing, so an outage is one line; the metric counts all.
pub(crate) struct TokenRequestFailed<'a> {
    pub identity: &'static str,
    /// Already scrubbed of secrets.
    pub error: &'a str,
}

impl InternalEvent for TokenRequestFailed<'_> {
    fn emit(self) {
        metrics()
            .token_requests
            .get_or_create(&labels([
                ("identity", self.identity),
                ("outcome", "failed"),
            ]))
            .inc();
        if !IDENTITIES.failed(self.identity, ()) {
            return;
        }
        error!(
            identity = self.identity,
            error = self.error,
            hint = "no access token: queue calls fail until one is acquired; check the identity variables, the federated credential or role assignment, and that the token endpoint is reachable",
            "cannot get an access token"
        );
    }
}

/// One call to the token endpoint failed (it may be retried with backoff). Only the status or
/// the transport error is logged, never a body: bodies carry tokens. A warning while the
/// identity works; once it is failing, debug level (the metric still counts).
pub(crate) struct TokenEndpointAttemptFailed<'a> {
    pub identity: &'static str,
    /// 1 for the first try, 2 for the first retry, ...
    pub attempt: u32,
    pub status: Option<u16>,
    /// Transport error text, already scrubbed; empty when the endpoint answered.
    pub error: &'a str,
}

impl InternalEvent for TokenEndpointAttemptFailed<'_> {
    fn emit(self) {
        let status = self
            .status
            .map_or_else(|| "connection".to_string(), |s| s.to_string());
        metrics()
            .token_endpoint_errors
            .get_or_create(&labels([("identity", self.identity), ("status", &status)]))
            .inc();
        if IDENTITIES.is_failing(&self.identity) {
            debug!(
                identity = self.identity,
                attempt = self.attempt,
                status = %status,
                "token endpoint call failed"
            );
            return;
        }
        warn!(
            identity = self.identity,
            attempt = self.attempt,
            status = %status,
            error = (!self.error.is_empty()).then_some(self.error),
            "token endpoint call failed"
        );
    }
}
