//! Typed internal events: each writes its log line and updates its metrics in one place.
//!
//! Fields are stable names (`message_id`, `dequeue_count`, `outcome`, `status`, `latency_ms`) so
//! that log queries keep working. Nothing here ever receives a pop receipt, key or SAS.
//!
//! Some events also feed the probes' state in [`super::health`]: the heartbeat, the queue's
//! answers and the endpoint pause decide liveness and readiness, so the probes cannot disagree
//! with the logs.

use super::health::{health, EndpointTransition, Probe, QueueTransition};
use super::metrics::metrics;
use crate::delivery::{Failure, Outcome};
use crate::poison::PoisonError;
use crate::queue::{Operation, QueueError};
use crate::retry::PoisonReason;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tracing::{debug, error, info, warn};

/// Something that happened, worth a log line and a metric.
pub trait InternalEvent {
    fn emit(self);
}

fn millis(duration: Duration) -> u64 {
    duration.as_millis().min(u128::from(u64::MAX)) as u64
}

/// A Get Messages call succeeded (possibly with no messages): the queue is reachable and the
/// credentials work.
pub struct ReceiveSucceeded {
    pub count: usize,
}

impl InternalEvent for ReceiveSucceeded {
    fn emit(self) {
        queue_answered(Operation::Receive);
        if self.count > 0 {
            MessagesReceived { count: self.count }.emit();
        }
    }
}

/// A receive-path call succeeded: the first ever, or the first after failures, is worth a
/// line. Whichever call gets through first says so (after an outage the deletes under way may
/// succeed before the next receive is even sent).
fn queue_answered(operation: Operation) {
    let recovered = |failed_calls| {
        info!(
            operation = operation.as_str(),
            failed_attempts = failed_calls,
            "queue reachable again"
        )
    };
    match health().queue_answered() {
        QueueTransition::FirstAnswer { failed_calls } => {
            if failed_calls > 0 {
                recovered(failed_calls);
            }
            info!("the queue answered; ready");
        }
        QueueTransition::Recovered { failed_calls } => recovered(failed_calls),
        QueueTransition::Unchanged => {}
    }
}

/// The receive loop is alive: emitted on every iteration and periodically while it waits for
/// free delivery slots, so liveness can tell "busy" from "stuck".
pub struct PumpHeartbeat;

impl InternalEvent for PumpHeartbeat {
    fn emit(self) {
        health().heartbeat(Instant::now());
    }
}

/// A Get Messages call returned messages.
pub struct MessagesReceived {
    pub count: usize,
}

impl InternalEvent for MessagesReceived {
    fn emit(self) {
        debug!(count = self.count, "received messages");
        metrics().messages_received.inc_by(self.count as u64);
    }
}

/// The log line of a failed delivery, at a level chosen by the caller.
macro_rules! delivery_failed {
    ($level:expr, $event:ident, $status:ident, $failure:ident) => {
        tracing::event!(
            $level,
            message_id = $event.message_id,
            dequeue_count = $event.dequeue_count,
            outcome = $event.outcome.label(),
            status = %$status,
            latency_ms = millis($event.latency),
            error = %$failure.describe(),
            "delivery failed"
        )
    };
}

/// One delivery attempt finished, whatever its outcome.
pub struct DeliveryAttempted<'a> {
    pub message_id: &'a str,
    pub dequeue_count: u32,
    pub outcome: &'a Outcome,
    pub latency: Duration,
    /// Time since the message was enqueued.
    pub age: Option<Duration>,
}

impl InternalEvent for DeliveryAttempted<'_> {
    fn emit(self) {
        let m = metrics();
        m.delivery_seconds.observe(self.latency.as_secs_f64());
        let (status_class, status) = match self.outcome {
            Outcome::Delivered { status } => (format!("{}xx", status / 100), status.to_string()),
            Outcome::Retryable { failure, .. } | Outcome::Permanent { failure } => match failure {
                Failure::Status(status) => (format!("{}xx", status / 100), status.to_string()),
                other => (other.label(), other.label()),
            },
        };
        m.deliveries
            .get_or_create(&vec![
                ("outcome", self.outcome.label().to_string()),
                ("status_class", status_class),
            ])
            .inc();
        match self.outcome {
            Outcome::Delivered { .. } => {
                if let Some(age) = self.age {
                    m.message_age_seconds.observe(age.as_secs_f64());
                }
                debug!(
                    message_id = self.message_id,
                    dequeue_count = self.dequeue_count,
                    outcome = "delivered",
                    status = %status,
                    latency_ms = millis(self.latency),
                    "delivered"
                );
                if let EndpointTransition::Recovered { failures } = health().endpoint_delivered() {
                    info!(
                        failed_attempts = failures,
                        "the endpoint accepts deliveries again"
                    );
                }
            }
            // A failing or overloaded endpoint fails every message the same way: one warning
            // when that starts, the repeats at debug level, one line when it recovers.
            Outcome::Retryable { failure, .. } => {
                match health().endpoint_failed(&failure.label()) {
                    EndpointTransition::NewFailure => {
                        delivery_failed!(tracing::Level::WARN, self, status, failure)
                    }
                    _ => delivery_failed!(tracing::Level::DEBUG, self, status, failure),
                }
            }
            // A permanent failure is about this message, not the endpoint's state.
            Outcome::Permanent { failure } => {
                delivery_failed!(tracing::Level::WARN, self, status, failure)
            }
        }
    }
}

/// A delivered message was deleted.
pub struct MessageDeleted<'a> {
    pub message_id: &'a str,
    /// The service confirmed an earlier try only by the message being gone on a retry: that
    /// try's answer was lost.
    pub by_earlier_try: bool,
}

impl InternalEvent for MessageDeleted<'_> {
    fn emit(self) {
        if self.by_earlier_try {
            debug!(message_id = self.message_id, answer_lost = true, "deleted");
        } else {
            debug!(message_id = self.message_id, "deleted");
        }
        metrics().messages_deleted.inc();
        queue_answered(Operation::Delete);
    }
}

/// A message this process had delivered came back (its delete had failed) and is deleted
/// instead of being delivered again.
pub struct RedeliveryAvoided<'a> {
    pub message_id: &'a str,
    pub dequeue_count: u32,
}

impl InternalEvent for RedeliveryAvoided<'_> {
    fn emit(self) {
        info!(
            message_id = self.message_id,
            dequeue_count = self.dequeue_count,
            "message came back after it was delivered: deleting it, not delivering it again"
        );
        metrics().redeliveries_avoided.inc();
    }
}

/// The message's lease was lost: another consumer owns it, or it is gone.
pub struct LeaseLost<'a> {
    pub message_id: &'a str,
    pub operation: Operation,
    /// An earlier try of this Update got no answer but was applied: the service issued a new
    /// pop receipt that never arrived, and Azure offers no way to learn it.
    pub receipt_lost: bool,
}

impl InternalEvent for LeaseLost<'_> {
    fn emit(self) {
        if self.receipt_lost {
            warn!(
                message_id = self.message_id,
                operation = self.operation.as_str(),
                cause = "receipt_lost",
                "lease lost: an update was applied but its answer (the new pop receipt) never arrived; the message comes back when its lease ends"
            );
        } else {
            warn!(
                message_id = self.message_id,
                operation = self.operation.as_str(),
                cause = "taken",
                "lease lost: the message was received by another consumer or already deleted"
            );
        }
        metrics()
            .leases_lost
            .get_or_create(&vec![("operation", self.operation.as_str().to_string())])
            .inc();
    }
}

/// One try of a queue call failed and will be retried (the final failure of a call is a
/// [`QueueCallFailed`] or a more specific event). Counted; logged at debug level only, and
/// not a readiness failure: only a call that fails for good is.
pub struct QueueCallRetried<'a> {
    pub error: &'a QueueError,
    /// 1 for the first try.
    pub attempt: u32,
    pub retry_in: Duration,
}

impl InternalEvent for QueueCallRetried<'_> {
    fn emit(self) {
        metrics()
            .queue_errors
            .get_or_create(&vec![
                ("operation", self.error.operation.as_str().to_string()),
                ("kind", self.error.kind.as_str().to_string()),
            ])
            .inc();
        debug!(
            operation = self.error.operation.as_str(),
            kind = self.error.kind.as_str(),
            status = self.error.status,
            code = self.error.code.as_deref(),
            attempt = self.attempt,
            outcome_unknown = self.error.outcome_unknown,
            retry_in_ms = millis(self.retry_in),
            error = %self.error,
            "queue call failed; retrying"
        );
    }
}

/// A queue call failed. `report` is false while the same failure repeats, so a long outage is
/// one log line, not one per attempt; the metric counts every failure.
pub struct QueueCallFailed<'a> {
    pub error: &'a QueueError,
    pub message_id: Option<&'a str>,
    pub report: bool,
    pub retry_in: Option<Duration>,
}

impl InternalEvent for QueueCallFailed<'_> {
    fn emit(self) {
        metrics()
            .queue_errors
            .get_or_create(&vec![
                ("operation", self.error.operation.as_str().to_string()),
                ("kind", self.error.kind.as_str().to_string()),
            ])
            .inc();
        health().queue_failed(self.error.operation, self.error.kind);
        if !self.report {
            return;
        }
        error!(
            operation = self.error.operation.as_str(),
            kind = self.error.kind.as_str(),
            status = self.error.status,
            code = self.error.code.as_deref(),
            message_id = self.message_id,
            retry_in_ms = self.retry_in.map(millis),
            error = %self.error,
            hint = self.error.kind.hint(),
            "queue call failed"
        );
    }
}

/// A message could not be turned into an event.
pub struct MessageUnmappable<'a> {
    pub message_id: &'a str,
    pub dequeue_count: u32,
    pub reason: &'a str,
}

impl InternalEvent for MessageUnmappable<'_> {
    fn emit(self) {
        error!(
            message_id = self.message_id,
            dequeue_count = self.dequeue_count,
            outcome = "unmappable",
            error = self.reason,
            "message cannot become a CloudEvent"
        );
        metrics()
            .deliveries
            .get_or_create(&vec![
                ("outcome", "unmappable".to_string()),
                ("status_class", "none".to_string()),
            ])
            .inc();
    }
}

/// Deliveries in progress went up or down by one.
pub struct InFlightChanged {
    pub delta: i64,
}

impl InternalEvent for InFlightChanged {
    fn emit(self) {
        metrics().in_flight.inc_by(self.delta);
    }
}

/// A failed message was hidden until its next attempt.
pub struct RetryScheduled<'a> {
    pub message_id: &'a str,
    pub dequeue_count: u32,
    pub failure: &'a Failure,
    pub delay: Duration,
}

impl InternalEvent for RetryScheduled<'_> {
    fn emit(self) {
        debug!(
            message_id = self.message_id,
            dequeue_count = self.dequeue_count,
            retry_in_ms = millis(self.delay),
            "retry scheduled"
        );
        metrics()
            .retries
            .get_or_create(&vec![("failure", self.failure.label())])
            .inc();
        queue_answered(Operation::Update);
    }
}

/// A message was moved to the poison queue and deleted from the main queue.
pub struct MessagePoisoned<'a> {
    pub message_id: &'a str,
    pub dequeue_count: u32,
    pub reason: &'a PoisonReason,
    pub poison_queue: &'a str,
    /// False when the metadata did not fit next to the text and went only into this line.
    pub envelope: bool,
}

impl InternalEvent for MessagePoisoned<'_> {
    fn emit(self) {
        error!(
            message_id = self.message_id,
            dequeue_count = self.dequeue_count,
            outcome = "poisoned",
            reason = self.reason.label(),
            error = %self.reason.describe(),
            poison_queue = self.poison_queue,
            envelope = self.envelope,
            "message moved to the poison queue"
        );
        metrics()
            .poisoned
            .get_or_create(&vec![("reason", self.reason.label().to_string())])
            .inc();
    }
}

/// A poison copy was written, but the message could not be deleted from the main queue: it
/// comes back and is poisoned again, leaving a second copy in the poison queue.
pub struct PoisonedNotDeleted<'a> {
    pub message_id: &'a str,
    pub poison_queue: &'a str,
}

impl InternalEvent for PoisonedNotDeleted<'_> {
    fn emit(self) {
        error!(
            message_id = self.message_id,
            poison_queue = self.poison_queue,
            outcome = "poisoned_not_deleted",
            "written to the poison queue but not deleted from the main queue: it will be poisoned again (a second copy, never a loss)"
        );
        metrics().poisoned_not_deleted.inc();
    }
}

/// A message that should be poisoned stays in the main queue, because the poison queue is
/// missing or may not be written. Reported once per cause.
pub struct PoisonBlocked<'a> {
    pub message_id: &'a str,
    pub poison_queue: &'a str,
    pub error: &'a PoisonError,
    pub report: bool,
}

impl InternalEvent for PoisonBlocked<'_> {
    fn emit(self) {
        if self.report {
            error!(
                message_id = self.message_id,
                poison_queue = self.poison_queue,
                error = %self.error,
                "cannot poison: the message stays in the main queue and will be retried"
            );
        }
    }
}

/// The lease of a long delivery was extended.
pub struct LeaseRenewed<'a> {
    pub message_id: &'a str,
}

impl InternalEvent for LeaseRenewed<'_> {
    fn emit(self) {
        debug!(message_id = self.message_id, "lease renewed");
        metrics().lease_renewals.inc();
        queue_answered(Operation::Update);
    }
}

/// A message was made visible again at shutdown, for another replica to take.
pub struct MessageReleased<'a> {
    pub message_id: &'a str,
}

impl InternalEvent for MessageReleased<'_> {
    fn emit(self) {
        info!(message_id = self.message_id, "released at shutdown");
        metrics().released.inc();
    }
}

/// A second SIGTERM/SIGINT during the drain: deliveries in progress are cut off now and their
/// messages released.
pub struct StopNowRequested {
    pub in_flight: usize,
}

impl InternalEvent for StopNowRequested {
    fn emit(self) {
        warn!(
            in_flight = self.in_flight,
            "second signal: stopping now; deliveries in progress are cut off and their messages released"
        );
    }
}

/// The identity lacks a permission, so a feature falls back. Logged once per feature.
pub struct Degraded {
    pub feature: &'static str,
    pub consequence: &'static str,
}

impl InternalEvent for Degraded {
    fn emit(self) {
        warn!(
            feature = self.feature,
            consequence = self.consequence,
            "degraded: the queue service refused an operation with 403 (missing permission)"
        );
    }
}

/// The endpoint refuses connections repeatedly: receiving pauses.
pub struct EndpointDown<'a> {
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
    }
}

/// The endpoint accepts connections again: receiving resumes.
pub struct EndpointUp {
    pub paused_for: Duration,
}

impl InternalEvent for EndpointUp {
    fn emit(self) {
        info!(
            paused_ms = millis(self.paused_for),
            "endpoint reachable again: receiving resumed"
        );
        health().receiving_paused(false);
    }
}

/// Shutdown: the drain ended.
pub struct DrainFinished {
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
    }
}

// ---------------------------------------------------------------------------------------------
// Operability: queue calls, queue length, shutdown, the admin server.
// ---------------------------------------------------------------------------------------------

/// A queue call finished, successfully or not (failures are also reported by the caller,
/// which knows what they mean).
pub struct QueueCallCompleted {
    pub operation: Operation,
    pub latency: Duration,
}

impl InternalEvent for QueueCallCompleted {
    fn emit(self) {
        metrics()
            .queue_call_seconds
            .get_or_create(&vec![("operation", self.operation.as_str().to_string())])
            .observe(self.latency.as_secs_f64());
    }
}

/// The queue's approximate message count was read.
pub struct QueueLengthObserved {
    pub count: u64,
}

impl InternalEvent for QueueLengthObserved {
    fn emit(self) {
        debug!(approximate_messages = self.count, "queue length");
        metrics()
            .queue_messages
            .set(i64::try_from(self.count).unwrap_or(i64::MAX));
    }
}

/// Reading the queue length failed. `report` is true for the first failure that is specific to
/// the properties call (the receive path works meanwhile, typically a missing permission);
/// failures the receive loop also meets are already reported by it and stay at debug level.
/// The gauge keeps its last value.
pub struct QueueLengthFailed<'a> {
    pub error: &'a QueueError,
    pub report: bool,
}

impl InternalEvent for QueueLengthFailed<'_> {
    fn emit(self) {
        metrics()
            .queue_errors
            .get_or_create(&vec![
                ("operation", self.error.operation.as_str().to_string()),
                ("kind", self.error.kind.as_str().to_string()),
            ])
            .inc();
        if self.report {
            warn!(
                operation = self.error.operation.as_str(),
                status = self.error.status,
                code = self.error.code.as_deref(),
                error = %self.error,
                hint = "reading the queue length needs the SAS 'r' permission or a role that can read queue metadata; QUEUE_LENGTH_INTERVAL=0 turns the poll off",
                "queue length unavailable; deliveries are not affected"
            );
        } else {
            debug!(error = %self.error, "queue length unavailable");
        }
    }
}

/// The queue length can be read again after a reported failure.
pub struct QueueLengthRecovered;

impl InternalEvent for QueueLengthRecovered {
    fn emit(self) {
        info!("queue length available again");
    }
}

/// Shutdown began: readiness turns off, liveness stops watching the loop.
pub struct ShutdownStarted;

impl InternalEvent for ShutdownStarted {
    fn emit(self) {
        health().shutting_down();
        debug!("readiness now reports shutting down");
    }
}

/// The admin server listens.
pub struct AdminServerStarted {
    pub addr: SocketAddr,
}

impl InternalEvent for AdminServerStarted {
    fn emit(self) {
        info!(
            admin_addr = %self.addr,
            "serving /healthz, /readyz and /metrics"
        );
    }
}

/// An admin connection failed (a client hung up, sent garbage or was too slow). Not a fault of
/// the sidecar; debug level only.
pub struct AdminConnectionFailed<'a> {
    pub error: &'a (dyn std::error::Error + 'static),
}

impl InternalEvent for AdminConnectionFailed<'_> {
    fn emit(self) {
        debug!(error = %self.error, "admin connection failed");
    }
}

/// The liveness probe's answer changed.
pub struct LivenessChanged<'a> {
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
    }
}

/// Microsoft Entra ID: a token was acquired (about once an hour per identity). The token
/// itself never reaches an event.
pub struct TokenAcquired {
    pub identity: &'static str,
    pub expires_in: Duration,
    /// Token requests that failed in a row before this one.
    pub failed_before: u64,
}

impl InternalEvent for TokenAcquired {
    fn emit(self) {
        metrics()
            .token_requests
            .get_or_create(&vec![
                ("identity", self.identity.to_string()),
                ("outcome", "acquired".to_string()),
            ])
            .inc();
        if self.failed_before > 0 {
            info!(
                identity = self.identity,
                expires_in_s = self.expires_in.as_secs(),
                failed_requests = self.failed_before,
                "access token acquired again"
            );
        } else {
            info!(
                identity = self.identity,
                expires_in_s = self.expires_in.as_secs(),
                "access token acquired"
            );
        }
    }
}

/// Microsoft Entra ID: a token request failed after the token endpoint's retries. `report` is
/// false while the identity keeps failing, so an outage is one line; the metric counts all.
pub struct TokenRequestFailed<'a> {
    pub identity: &'static str,
    /// Already scrubbed of secrets.
    pub error: &'a str,
    pub report: bool,
}

impl InternalEvent for TokenRequestFailed<'_> {
    fn emit(self) {
        metrics()
            .token_requests
            .get_or_create(&vec![
                ("identity", self.identity.to_string()),
                ("outcome", "failed".to_string()),
            ])
            .inc();
        if !self.report {
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

/// Microsoft Entra ID: one call to the token endpoint failed (it may be retried with backoff).
/// Only the status or the transport error is logged, never a body: bodies carry tokens.
pub struct TokenEndpointAttemptFailed<'a> {
    pub identity: &'static str,
    /// 1 for the first try, 2 for the first retry, ...
    pub attempt: u32,
    pub status: Option<u16>,
    /// Transport error text, already scrubbed; empty when the endpoint answered.
    pub error: &'a str,
    /// False while the identity is known to be failing (the metric still counts).
    pub report: bool,
}

impl InternalEvent for TokenEndpointAttemptFailed<'_> {
    fn emit(self) {
        let status = self
            .status
            .map_or_else(|| "connection".to_string(), |s| s.to_string());
        metrics()
            .token_endpoint_errors
            .get_or_create(&vec![
                ("identity", self.identity.to_string()),
                ("status", status.clone()),
            ])
            .inc();
        if !self.report {
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

/// Something about a message worth a warning, though it is delivered: it looked like a
/// CloudEvent or an Event Grid event but was not a valid one (so it went out wrapped as data),
/// or it is base64 of an event while `DECODE_BASE64` is off.
pub struct EventNoticed<'a> {
    pub message_id: &'a str,
    pub notice: &'a crate::event::Notice,
}

impl InternalEvent for EventNoticed<'_> {
    fn emit(self) {
        use crate::event::Notice;
        match self.notice {
            Notice::InvalidEvent { looks_like, reason } => {
                warn!(
                    message_id = self.message_id,
                    kind = "invalid_event",
                    looks_like = *looks_like,
                    error = reason.as_str(),
                    "message looks like a {looks_like} but is not a valid one: delivered wrapped as data"
                );
                metrics().invalid_events_wrapped.inc();
            }
            Notice::Base64Event { looks_like } => warn!(
                message_id = self.message_id,
                kind = "base64_event",
                looks_like = *looks_like,
                "message text is a base64-encoded {looks_like}, delivered as text; Event Grid base64-encodes what it writes into a queue: set DECODE_BASE64=true (said once)"
            ),
        }
    }
}
