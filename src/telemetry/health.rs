//! Liveness and readiness: state kept up to date by the typed events, read by the probes.
//!
//! Nothing calls into this module to "report health" directly. The events the pump already
//! emits carry the facts — [`PumpHeartbeat`](super::events::PumpHeartbeat) on every loop
//! iteration, [`ReceiveSucceeded`](super::events::ReceiveSucceeded) and
//! [`QueueCallFailed`](super::events::QueueCallFailed) for every queue answer — and their
//! `emit` updates this state, so the probes cannot disagree with the logs and metrics.
//!
//! - **Liveness** (`/healthz`): the receive loop made progress recently. The loop emits a
//!   heartbeat at least every few seconds even while it waits for free delivery slots, so the
//!   only legitimate long gaps are a slow queue call followed by a backoff sleep; the limit
//!   ([`stall_limit`]) allows several of those. Two states stop the loop on purpose, and
//!   liveness stays up through them: receiving paused because the endpoint is down (the pump
//!   probes the endpoint with backoff; restarting the sidecar would not bring the app back),
//!   and shutting down (the drain is bounded by `SHUTDOWN_TIMEOUT`; a kill from the kubelet
//!   would only lose work in progress).
//! - **Readiness** (`/readyz`): the queue has answered at least once and the last call of the
//!   receive path (receive, delete, update) succeeded; not ready while shutting down. The
//!   queue-length poll's properties call is left out on purpose: it needs a permission (SAS
//!   `r`, a reader role) that a working sidecar may lack, and readiness would flap with it; so
//!   are writes to the poison queue, which has its own reporting.

use crate::queue::{Operation, QueueErrorKind};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// The longest the pump sleeps after failed queue calls (`FAILURE_BACKOFF_MAX` in the pump).
const FAILURE_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// The longest one queue call may take: the queue HTTP client's request timeout, plus the
/// pump's heartbeat period while it waits for free slots.
const SLOWEST_CALL: Duration = Duration::from_secs(60 + 5);
/// How many of the longest legitimate loop iterations may pass without a heartbeat.
const STALL_ITERATIONS: u32 = 3;

/// How long the receive loop may go without a heartbeat before liveness fails: three times
/// the longest sleep (`POLL_MAX_INTERVAL`, or the failure backoff if longer) plus the slowest
/// queue call. With the defaults, 155 s.
pub fn stall_limit(poll_max_interval: Duration) -> Duration {
    STALL_ITERATIONS * poll_max_interval.max(FAILURE_BACKOFF_MAX) + SLOWEST_CALL
}

/// A probe's answer: whether it passes, and a short reason for humans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
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
pub enum QueueTransition {
    /// The very first successful answer: the sidecar became ready (after `failed_calls`
    /// failures).
    FirstAnswer { failed_calls: u64 },
    /// The first success after failed calls (of any receive-path operation).
    Recovered { failed_calls: u64 },
    /// Nothing worth a line.
    Unchanged,
}

/// The last known state of the queue as the receive path sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum QueueState {
    /// No queue call has finished yet.
    Waiting,
    /// The last call succeeded.
    Answering,
    /// The last call failed.
    Failing {
        operation: Operation,
        kind: QueueErrorKind,
    },
}

/// Endpoint failures of one kind, counted while they repeat, so a down endpoint is one warning
/// and one recovery line rather than a warning per message.
#[derive(Debug, Default)]
struct EndpointState {
    failing: Option<String>,
    failures: u64,
}

#[derive(Debug)]
struct State {
    last_heartbeat: Instant,
    stall_limit: Duration,
    /// Whether the last liveness answer was a failure (to log the change once).
    stalled: bool,
    /// Receiving is paused while the endpoint is down.
    paused: bool,
    queue: QueueState,
    answered_once: bool,
    /// Receive-path calls that failed since the last success.
    failed_calls: u64,
    shutting_down: bool,
    endpoint: EndpointState,
}

/// The process's health. One instance per process ([`health`]); tests make their own.
#[derive(Debug)]
pub struct Health {
    state: Mutex<State>,
}

/// What a delivery result changed about the endpoint's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointTransition {
    /// A failure of a new kind: log it at warning level.
    NewFailure,
    /// The same failure again: log it at debug level.
    Repeated,
    /// A success after `failures` failed attempts.
    Recovered { failures: u64 },
    /// A success, as before.
    Unchanged,
}

impl Health {
    /// Fresh state: alive as of `now`, not ready yet.
    pub fn new(now: Instant) -> Self {
        Self {
            state: Mutex::new(State {
                last_heartbeat: now,
                stall_limit: stall_limit(Duration::ZERO),
                stalled: false,
                paused: false,
                queue: QueueState::Waiting,
                answered_once: false,
                failed_calls: 0,
                shutting_down: false,
                endpoint: EndpointState::default(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent through any panic (each update is one assignment), so a
        // poisoned lock is still usable: probes must keep answering.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets how long the loop may go quiet (see [`stall_limit`]).
    pub fn set_stall_limit(&self, limit: Duration) {
        self.lock().stall_limit = limit;
    }

    /// The receive loop is alive at `now`.
    pub fn heartbeat(&self, now: Instant) {
        self.lock().last_heartbeat = now;
    }

    /// A call of the receive path succeeded.
    pub fn queue_answered(&self) -> QueueTransition {
        let mut state = self.lock();
        state.queue = QueueState::Answering;
        let failed_calls = std::mem::take(&mut state.failed_calls);
        if !state.answered_once {
            state.answered_once = true;
            QueueTransition::FirstAnswer { failed_calls }
        } else if failed_calls > 0 {
            QueueTransition::Recovered { failed_calls }
        } else {
            QueueTransition::Unchanged
        }
    }

    /// A queue call failed. Only the receive path's calls count (see the module docs), and a
    /// lost lease is not a fault of the queue: the service answered correctly that someone
    /// else owns the message.
    pub fn queue_failed(&self, operation: Operation, kind: QueueErrorKind) {
        let receive_path = matches!(
            operation,
            Operation::Receive | Operation::Delete | Operation::Update
        );
        if !receive_path || kind == QueueErrorKind::MessageGone {
            return;
        }
        let mut state = self.lock();
        state.queue = QueueState::Failing { operation, kind };
        state.failed_calls += 1;
    }

    /// Receiving paused (the endpoint is down) or resumed. Resuming counts as progress.
    pub fn receiving_paused(&self, paused: bool) {
        let mut state = self.lock();
        state.paused = paused;
        if !paused {
            state.last_heartbeat = Instant::now();
        }
    }

    /// Shutdown started: not ready any more, and no stall detection during the drain.
    pub fn shutting_down(&self) {
        self.lock().shutting_down = true;
    }

    /// Whether the queue answered the receive path's last call.
    pub fn queue_ready(&self) -> bool {
        self.lock().queue == QueueState::Answering
    }

    /// The liveness probe at `now`. The second value is true when the answer differs from the
    /// previous one, so the change can be logged once.
    pub fn liveness(&self, now: Instant) -> (Probe, bool) {
        let mut state = self.lock();
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
        let changed = state.stalled == probe.ok;
        state.stalled = !probe.ok;
        (probe, changed)
    }

    /// The readiness probe.
    pub fn readiness(&self) -> Probe {
        let state = self.lock();
        if state.shutting_down {
            return Probe::fail("shutting down");
        }
        match &state.queue {
            QueueState::Answering => Probe::pass("ready"),
            QueueState::Waiting => Probe::fail("waiting for the first answer from the queue"),
            QueueState::Failing { operation, kind } => Probe::fail(format!(
                "queue {} failed: {}",
                operation.as_str(),
                kind.as_str()
            )),
        }
    }

    /// A delivery failed in a way that repeats while the endpoint is down or overloaded
    /// (`kind`: `connection`, `timeout` or a status code).
    pub fn endpoint_failed(&self, kind: &str) -> EndpointTransition {
        let mut state = self.lock();
        let endpoint = &mut state.endpoint;
        endpoint.failures += 1;
        if endpoint.failing.as_deref() == Some(kind) {
            EndpointTransition::Repeated
        } else {
            endpoint.failing = Some(kind.to_string());
            EndpointTransition::NewFailure
        }
    }

    /// A delivery succeeded.
    pub fn endpoint_delivered(&self) -> EndpointTransition {
        let mut state = self.lock();
        let endpoint = &mut state.endpoint;
        let failures = std::mem::take(&mut endpoint.failures);
        match endpoint.failing.take() {
            Some(_) => EndpointTransition::Recovered { failures },
            None => EndpointTransition::Unchanged,
        }
    }
}

/// The process-wide health.
pub fn health() -> &'static Health {
    static HEALTH: OnceLock<Health> = OnceLock::new();
    HEALTH.get_or_init(|| Health::new(Instant::now()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stall_limit_allows_several_slow_iterations() {
        assert_eq!(
            stall_limit(Duration::from_secs(10)),
            Duration::from_secs(155)
        );
        assert_eq!(
            stall_limit(Duration::from_secs(60)),
            Duration::from_secs(245)
        );
    }

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

        health.queue_failed(Operation::Receive, QueueErrorKind::Unreachable);
        assert_eq!(
            health.readiness(),
            Probe::fail("queue receive failed: unreachable")
        );
        assert!(!health.queue_ready());
        health.queue_failed(Operation::Delete, QueueErrorKind::Throttled);
        assert_eq!(
            health.queue_answered(),
            QueueTransition::Recovered { failed_calls: 2 }
        );
        assert!(health.readiness().ok);
        assert_eq!(health.queue_answered(), QueueTransition::Unchanged);

        // Neither a lost lease, the queue-length poll nor the poison queue is a fault of the
        // receive path.
        health.queue_failed(Operation::Delete, QueueErrorKind::MessageGone);
        health.queue_failed(Operation::Properties, QueueErrorKind::Unauthorized);
        health.queue_failed(Operation::Send, QueueErrorKind::QueueNotFound);
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
