//! Liveness and readiness: state kept up to date by the typed events, read by the probes.
//!
//! Nothing calls into this module to "report health" directly. The events the pump already
//! emits carry the facts — [`PumpHeartbeat`](super::events::PumpHeartbeat) on every loop
//! iteration, [`ReceiveSucceeded`](super::events::ReceiveSucceeded) and
//! [`ReceiveFailed`](super::events::ReceiveFailed) for every queue answer — and their
//! `emit` updates this state, so the probes cannot disagree with the logs and metrics.
//!
//! The state of the queue and of the endpoint is kept here once, each in a
//! [`Tracker`]: the same record decides readiness and which failures are news for the log.
//!
//! - **Liveness** (`/healthz`): the receive loop made progress recently. The loop emits a
//!   heartbeat at least every few seconds even while it waits for free delivery slots, so the
//!   only legitimate long gaps are a slow queue call followed by a backoff sleep; the pump
//!   sets the limit (`pump::stall_limit`) to allow several of those. Two states stop the loop
//!   on purpose, and liveness stays up through them: receiving paused because the endpoint is
//!   down (the pump probes the endpoint with backoff; restarting the sidecar would not bring
//!   the app back), and shutting down (the drain is bounded by `SHUTDOWN_TIMEOUT`; a kill
//!   from the kubelet would only lose work in progress).
//! - **Readiness** (`/readyz`): the queue has answered at least once and the last call of the
//!   receive path (receive, delete, update) succeeded; not ready while shutting down. The
//!   queue-length poll's properties call is left out on purpose: it needs a permission (SAS
//!   `r`, a reader role) that a working sidecar may lack, and readiness would flap with it; so
//!   are writes to the poison queue, which has their own reporting.
//!
//! Queue operations and failure kinds arrive as their metric label values (`receive`,
//! `unreachable`, ...): telemetry names no domain module.

use super::tracker::Tracker;
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// The queue operations of the receive path, the only ones readiness follows.
const RECEIVE_PATH: [&str; 3] = ["receive", "delete", "update"];
/// The failure kind of a lost lease: the service answered correctly that someone else owns
/// the message, which says nothing about the queue's health.
const LEASE_LOST: &str = "message_gone";

/// A probe's answer: whether it passes, and a short reason for humans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Probe {
    pub ok: bool,
    pub reason: String,
}

impl Probe {
    fn pass(reason: impl Into<String>) -> Self {
        Self {
            ok: true,
            reason: reason.into(),
        }
    }

    fn fail(reason: impl Into<String>) -> Self {
        Self {
            ok: false,
            reason: reason.into(),
        }
    }
}

/// What a queue answer changed, so the event can log state changes (and only those).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QueueTransition {
    /// The very first successful answer: the sidecar became ready (after `failed_calls`
    /// failures).
    FirstAnswer { failed_calls: u64 },
    /// The first success after failed calls (of any receive-path operation).
    Recovered { failed_calls: u64 },
    /// Nothing worth a line.
    Unchanged,
}

/// What a delivery result changed about the endpoint's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EndpointTransition {
    /// A failure of a new kind: log it at warning level.
    NewFailure,
    /// The same failure again: log it at debug level.
    Repeated,
    /// A success after `failures` failed attempts.
    Recovered { failures: u64 },
    /// A success, as before.
    Unchanged,
}

#[derive(Debug)]
struct State {
    last_heartbeat: Instant,
    stall_limit: Duration,
    /// Receiving is paused while the endpoint is down.
    paused: bool,
    answered_once: bool,
    /// The receive path's last call, if it failed: operation and kind, for readiness.
    last_failure: Option<(&'static str, &'static str)>,
    shutting_down: bool,
}

/// The process's health. One instance per process ([`health`]); tests make their own.
#[derive(Debug)]
pub(crate) struct Health {
    state: Mutex<State>,
    /// The receive path's failures, by kind.
    queue: Tracker<(), &'static str>,
    /// Deliveries that fail in a way that repeats while the endpoint is down, by kind.
    endpoint: Tracker<(), String>,
    /// Whether liveness fails (to log each change once).
    stalled: Tracker,
}

impl Health {
    /// Fresh state: alive as of `now`, not ready yet, and no stall detection until the pump
    /// says how long it may go quiet.
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            state: Mutex::new(State {
                last_heartbeat: now,
                stall_limit: Duration::MAX,
                paused: false,
                answered_once: false,
                last_failure: None,
                shutting_down: false,
            }),
            queue: Tracker::new(),
            endpoint: Tracker::new(),
            stalled: Tracker::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent through any panic (each update is one assignment), so a
        // poisoned lock is still usable: probes must keep answering.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets how long the loop may go quiet.
    pub(crate) fn set_stall_limit(&self, limit: Duration) {
        self.lock().stall_limit = limit;
    }

    /// The receive loop is alive at `now`.
    pub(crate) fn heartbeat(&self, now: Instant) {
        self.lock().last_heartbeat = now;
    }

    /// A call of the receive path succeeded.
    pub(crate) fn queue_answered(&self) -> QueueTransition {
        let mut state = self.lock();
        state.last_failure = None;
        let failed_calls = self.queue.recovered(&()).unwrap_or(0);
        if !state.answered_once {
            state.answered_once = true;
            QueueTransition::FirstAnswer { failed_calls }
        } else if failed_calls > 0 {
            QueueTransition::Recovered { failed_calls }
        } else {
            QueueTransition::Unchanged
        }
    }

    /// A queue call (`operation`) failed with `kind`. Only the receive path's calls count
    /// (see the module docs), and a lost lease is not a fault of the queue. True when the
    /// failure is news: the first of this kind since the queue last answered.
    pub(crate) fn queue_failed(&self, operation: &'static str, kind: &'static str) -> bool {
        if !RECEIVE_PATH.contains(&operation) || kind == LEASE_LOST {
            return false;
        }
        let mut state = self.lock();
        state.last_failure = Some((operation, kind));
        self.queue.failed((), kind)
    }

    /// Receiving paused (the endpoint is down) or resumed. Resuming counts as progress.
    pub(crate) fn receiving_paused(&self, paused: bool) {
        let mut state = self.lock();
        state.paused = paused;
        if !paused {
            state.last_heartbeat = Instant::now();
        }
    }

    /// Shutdown started: not ready any more, and no stall detection during the drain.
    pub(crate) fn shutting_down(&self) {
        self.lock().shutting_down = true;
    }

    /// Whether the queue answered the receive path's last call.
    pub(crate) fn queue_ready(&self) -> bool {
        let state = self.lock();
        state.answered_once && state.last_failure.is_none()
    }

    /// The liveness probe at `now`. The second value is true when the answer differs from the
    /// previous one, so the change can be logged once.
    pub(crate) fn liveness(&self, now: Instant) -> (Probe, bool) {
        let state = self.lock();
        let quiet = now.saturating_duration_since(state.last_heartbeat);
        let probe = if state.shutting_down {
            Probe::pass("shutting down")
        } else if state.paused {
            Probe::pass("receiving paused: the endpoint is down")
        } else if quiet > state.stall_limit {
            Probe::fail(format!(
                "receive loop stalled: no progress for {}s (limit {}s)",
                quiet.as_secs(),
                state.stall_limit.as_secs()
            ))
        } else {
            Probe::pass("alive")
        };
        let changed = match probe.ok {
            true => self.stalled.recovered(&()).is_some(),
            false => self.stalled.failed((), ()),
        };
        (probe, changed)
    }

    /// The readiness probe.
    pub(crate) fn readiness(&self) -> Probe {
        let state = self.lock();
        if state.shutting_down {
            return Probe::fail("shutting down");
        }
        match (state.last_failure, state.answered_once) {
            (Some((operation, kind)), _) => {
                Probe::fail(format!("queue {operation} failed: {kind}"))
            }
            (None, true) => Probe::pass("ready"),
            (None, false) => Probe::fail("waiting for the first answer from the queue"),
        }
    }

    /// A delivery failed in a way that repeats while the endpoint is down or overloaded
    /// (`kind`: `connection`, `timeout` or a status code).
    pub(crate) fn endpoint_failed(&self, kind: &str) -> EndpointTransition {
        match self.endpoint.failed((), kind.to_string()) {
            true => EndpointTransition::NewFailure,
            false => EndpointTransition::Repeated,
        }
    }

    /// A delivery succeeded.
    pub(crate) fn endpoint_delivered(&self) -> EndpointTransition {
        match self.endpoint.recovered(&()) {
            Some(failures) => EndpointTransition::Recovered { failures },
            None => EndpointTransition::Unchanged,
        }
    }
}

/// The process-wide health.
pub(crate) fn health() -> &'static Health {
    static HEALTH: OnceLock<Health> = OnceLock::new();
    HEALTH.get_or_init(|| Health::new(Instant::now()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_fails_when_heartbeats_stop_and_recovers_when_they_resume() {
        let start = Instant::now();
        let health = Health::new(start);
        health.set_stall_limit(Duration::from_secs(10));
        assert!(health.liveness(start + Duration::from_secs(9)).0.ok);

        let (probe, changed) = health.liveness(start + Duration::from_secs(11));
        assert!(!probe.ok && changed, "{probe:?}");
        assert!(probe.reason.contains("stalled"), "{}", probe.reason);
        let (_, changed) = health.liveness(start + Duration::from_secs(12));
        assert!(!changed, "a stall is reported once");

        health.heartbeat(start + Duration::from_secs(12));
        let (probe, changed) = health.liveness(start + Duration::from_secs(13));
        assert!(probe.ok && changed);
    }

    #[test]
    fn liveness_holds_while_receiving_is_paused_for_the_endpoint() {
        let start = Instant::now();
        let health = Health::new(start);
        health.set_stall_limit(Duration::from_secs(10));
        health.receiving_paused(true);
        let (probe, _) = health.liveness(start + Duration::from_secs(60));
        assert!(probe.ok && probe.reason.contains("paused"), "{probe:?}");
        health.receiving_paused(false);
        assert!(health.liveness(Instant::now()).0.ok);
    }

    #[test]
    fn liveness_holds_during_shutdown() {
        let start = Instant::now();
        let health = Health::new(start);
        health.set_stall_limit(Duration::from_secs(10));
        health.shutting_down();
        assert!(health.liveness(start + Duration::from_secs(60)).0.ok);
    }

    #[test]
    fn readiness_follows_the_receive_path() {
        let health = Health::new(Instant::now());
        let probe = health.readiness();
        assert!(!probe.ok);
        assert!(probe.reason.contains("waiting"), "{}", probe.reason);

        assert_eq!(
            health.queue_answered(),
            QueueTransition::FirstAnswer { failed_calls: 0 }
        );
        assert!(health.readiness().ok);
        assert_eq!(health.queue_answered(), QueueTransition::Unchanged);

        health.queue_failed("receive", "unreachable");
        assert_eq!(
            health.readiness(),
            Probe::fail("queue receive failed: unreachable")
        );
        assert!(!health.queue_ready());
        health.queue_failed("delete", "throttled");
        assert_eq!(
            health.queue_answered(),
            QueueTransition::Recovered { failed_calls: 2 }
        );
        assert!(health.readiness().ok);
        assert_eq!(health.queue_answered(), QueueTransition::Unchanged);

        // Neither a lost lease, the queue-length poll nor the poison queue is a fault of the
        // receive path.
        health.queue_failed("delete", "message_gone");
        health.queue_failed("properties", "unauthorized");
        health.queue_failed("send", "queue_not_found");
        assert!(health.readiness().ok);

        health.shutting_down();
        assert_eq!(health.readiness(), Probe::fail("shutting down"));
    }

    #[test]
    fn a_failing_endpoint_is_one_state_change_until_it_recovers() {
        let health = Health::new(Instant::now());
        assert_eq!(health.endpoint_delivered(), EndpointTransition::Unchanged);
        assert_eq!(
            health.endpoint_failed("connection"),
            EndpointTransition::NewFailure
        );
        assert_eq!(
            health.endpoint_failed("connection"),
            EndpointTransition::Repeated
        );
        assert_eq!(
            health.endpoint_failed("503"),
            EndpointTransition::NewFailure
        );
        assert_eq!(
            health.endpoint_delivered(),
            EndpointTransition::Recovered { failures: 3 }
        );
        assert_eq!(health.endpoint_delivered(), EndpointTransition::Unchanged);
    }
}
