//! The admin server (probes, metrics) and what the liveness probe decides.

use super::internal::{labels, InternalEvent};
use crate::telemetry::health::Probe;
use crate::telemetry::metrics::metrics;
use std::net::SocketAddr;
use tracing::{debug, error, info};

/// The admin server listens.
pub(crate) struct AdminServerStarted {
    pub addr: SocketAddr,
}

impl InternalEvent for AdminServerStarted {
    fn emit(self) {
        info!(
            admin_addr = %self.addr,
            "serving /healthz, /readyz and /metrics"
        );
        metrics()
            .admin
            .get_or_create(&labels([("address", &self.addr.to_string())]))
            .set(1);
    }
}

/// An admin connection failed (a client hung up, sent garbage or was too slow). Not a fault of
/// the sidecar; debug level only.
pub(crate) struct AdminConnectionFailed<'a> {
    pub error: &'a (dyn std::error::Error + 'static),
}

impl InternalEvent for AdminConnectionFailed<'_> {
    fn emit(self) {
        debug!(error = %self.error, "admin connection failed");
        metrics().admin_connection_errors.inc();
    }
}

/// The liveness probe's answer changed.
pub(crate) struct LivenessChanged<'a> {
    pub probe: &'a Probe,
}

impl InternalEvent for LivenessChanged<'_> {
    fn emit(self) {
        if self.probe.ok {
            info!(reason = %self.probe.reason, "liveness passes again");
        } else {
            error!(
                reason = %self.probe.reason,
                "liveness failing: the receive loop is stuck; the kubelet will restart the container"
            );
        }
        metrics()
            .receive_loop_stalled
            .set(i64::from(!self.probe.ok));
    }
}
