//! The receive loop: its heartbeat, the pause while the endpoint is down, and shutdown.

use super::internal::{millis, InternalEvent};
use crate::telemetry::health::health;
use crate::telemetry::metrics::{metrics, ShutdownPhase};
use std::time::{Duration, Instant};
use tracing::{debug, error, info, warn};

/// The receive loop is alive: emitted on every iteration and periodically while it waits for
/// free delivery slots, so liveness can tell "busy" from "stuck".
pub(crate) struct PumpHeartbeat;

impl InternalEvent for PumpHeartbeat {
    fn emit(self) {
        health().heartbeat(Instant::now());
        metrics().receive_loop_heartbeats.inc();
    }
}

/// The endpoint refuses connections repeatedly: receiving pauses.
pub(crate) struct EndpointDown<'a> {
    pub consecutive_failures: u32,
    pub last_error: &'a str,
}

impl InternalEvent for EndpointDown<'_> {
    fn emit(self) {
        error!(
            consecutive_failures = self.consecutive_failures,
            error = self.last_error,
            "endpoint unreachable: receiving paused, probing the endpoint with backoff"
        );
        health().receiving_paused(true);
        metrics().receiving_paused.set(1);
    }
}

/// The endpoint accepts connections again: receiving resumes.
pub(crate) struct EndpointUp {
    pub paused_for: Duration,
}

impl InternalEvent for EndpointUp {
    fn emit(self) {
        info!(
            paused_ms = millis(self.paused_for),
            "endpoint reachable again: receiving resumed"
        );
        health().receiving_paused(false);
        metrics().receiving_paused.set(0);
    }
}

/// Shutdown began: readiness turns off, liveness stops watching the loop.
pub(crate) struct ShutdownStarted;

impl InternalEvent for ShutdownStarted {
    fn emit(self) {
        health().shutting_down();
        metrics().set_shutdown_phase(ShutdownPhase::Draining);
        debug!("readiness now reports shutting down");
    }
}

/// A second SIGTERM/SIGINT during the drain: deliveries in progress are cut off now and their
/// messages released.
pub(crate) struct StopNowRequested {
    pub in_flight: usize,
}

impl InternalEvent for StopNowRequested {
    fn emit(self) {
        warn!(
            in_flight = self.in_flight,
            "second signal: stopping now; deliveries in progress are cut off and their messages released"
        );
        metrics().set_shutdown_phase(ShutdownPhase::StoppingNow);
    }
}

/// Shutdown: the drain ended.
pub(crate) struct DrainFinished {
    /// Deliveries were cut off (the timeout passed, or a second signal came).
    pub timed_out: bool,
    pub released: u64,
}

impl InternalEvent for DrainFinished {
    fn emit(self) {
        if self.timed_out {
            warn!(
                released = self.released,
                "deliveries still running were cut off (SHUTDOWN_TIMEOUT reached, or a second signal) and their messages released"
            );
        }
        metrics().set_shutdown_phase(ShutdownPhase::Drained);
    }
}

/// `EXIT_WHEN_IDLE`: no message was received for `idle_for` and nothing is in flight; the
/// sidecar drains as on SIGTERM and exits 0.
pub(crate) struct IdleExit {
    pub idle_for: Duration,
}

impl InternalEvent for IdleExit {
    fn emit(self) {
        info!(
            idle_ms = millis(self.idle_for),
            "no message received for EXIT_WHEN_IDLE and nothing in flight: the run is complete, stopping"
        );
        metrics().idle_exits.inc();
    }
}
