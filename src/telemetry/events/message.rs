//! One message's life: mapped, delivered (or not), retried, deleted, renewed, released.

use super::internal::{labels, millis, InternalEvent};
use super::queue::queue_answered;
use crate::telemetry::health::{health, EndpointTransition};
use crate::telemetry::metrics::metrics;
use std::fmt::Display;
use std::time::Duration;
use tracing::{debug, error, info, warn};

/// One delivery attempt finished, whatever its outcome.
pub(crate) struct DeliveryAttempted<'a> {
    pub message_id: &'a str,
    pub dequeue_count: u32,
    /// `delivered`, `retryable` or `permanent`.
    pub outcome: &'static str,
    /// The status code, or what happened instead (`timeout`, `connection`, `dropped`,
    /// `unsendable`). For a retryable failure it is also the endpoint's failure state: the
    /// same one again is no news.
    pub status: &'a str,
    /// `2xx` ... `5xx`, or `status` itself when the endpoint did not answer.
    pub status_class: &'a str,
    /// What went wrong, for a failure.
    pub error: Option<&'a dyn Display>,
    pub latency: Duration,
    /// Time since the message was enqueued.
    pub age: Option<Duration>,
    /// The W3C trace id and span id the POST carried (unless `TRACE_CONTEXT=off`), so the
    /// line joins the app's traces.
    pub trace_id: Option<&'a str>,
    pub span_id: Option<&'a str>,
}

impl DeliveryAttempted<'_> {
    fn failed(&self, level: tracing::Level) {
        let error = self.error.map(|e| e.to_string()).unwrap_or_default();
        macro_rules! line {
            ($level:expr) => {
                tracing::event!(
                    $level,
                    message_id = self.message_id,
                    dequeue_count = self.dequeue_count,
                    outcome = self.outcome,
                    status = self.status,
                    latency_ms = millis(self.latency),
                    error = %error,
                    trace_id = self.trace_id,
                    span_id = self.span_id,
                    "delivery failed"
                )
            };
        }
        match level {
            tracing::Level::WARN => line!(tracing::Level::WARN),
            _ => line!(tracing::Level::DEBUG),
        }
    }
}

impl InternalEvent for DeliveryAttempted<'_> {
    fn emit(self) {
        let m = metrics();
        m.delivery_seconds.observe(self.latency.as_secs_f64());
        m.deliveries
            .get_or_create(&labels([
                ("outcome", self.outcome),
                ("status_class", self.status_class),
            ]))
            .inc();
        match self.outcome {
            "delivered" => {
                if let Some(age) = self.age {
                    m.message_age_seconds.observe(age.as_secs_f64());
                }
                debug!(
                    message_id = self.message_id,
                    dequeue_count = self.dequeue_count,
                    outcome = "delivered",
                    status = self.status,
                    latency_ms = millis(self.latency),
                    trace_id = self.trace_id,
                    span_id = self.span_id,
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
            "retryable" => match health().endpoint_failed(self.status) {
                EndpointTransition::NewFailure => self.failed(tracing::Level::WARN),
                _ => self.failed(tracing::Level::DEBUG),
            },
            // A permanent failure is about this message, not the endpoint's state.
            _ => self.failed(tracing::Level::WARN),
        }
    }
}

/// A message could not be turned into an event.
pub(crate) struct MessageUnmappable<'a> {
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
            .get_or_create(&labels([
                ("outcome", "unmappable"),
                ("status_class", "none"),
            ]))
            .inc();
    }
}

/// A message looked like a CloudEvent or an Event Grid event but was not a valid one, so it
/// went out wrapped as data.
pub(crate) struct InvalidEventWrapped<'a> {
    pub message_id: &'a str,
    /// `CloudEvent` or `Event Grid event`.
    pub looks_like: &'a str,
    pub reason: &'a str,
}

impl InternalEvent for InvalidEventWrapped<'_> {
    fn emit(self) {
        let looks_like = self.looks_like;
        warn!(
            message_id = self.message_id,
            kind = "invalid_event",
            looks_like,
            error = self.reason,
            "message looks like a {looks_like} but is not a valid one: delivered wrapped as data"
        );
        metrics().invalid_events_wrapped.inc();
    }
}

/// A message's text is base64 of an event while `DECODE_BASE64` is off: it is delivered as
/// text. The event mapper notices this once per process (it is a hint about the
/// configuration, not about the message).
pub(crate) struct Base64EventNoticed<'a> {
    pub message_id: &'a str,
    /// `CloudEvent` or `Event Grid event`.
    pub looks_like: &'a str,
}

impl InternalEvent for Base64EventNoticed<'_> {
    fn emit(self) {
        let looks_like = self.looks_like;
        warn!(
            message_id = self.message_id,
            kind = "base64_event",
            looks_like,
            "message text is a base64-encoded {looks_like}, delivered as text; Event Grid base64-encodes what it writes into a queue: set DECODE_BASE64=true (said once)"
        );
        metrics().decode_base64_hint.set(1);
    }
}

/// A delivered message was deleted.
pub(crate) struct MessageDeleted<'a> {
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
        queue_answered("delete");
    }
}

/// A message this process had delivered came back (its delete had failed) and is deleted
/// instead of being delivered again.
pub(crate) struct RedeliveryAvoided<'a> {
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
pub(crate) struct LeaseLost<'a> {
    pub message_id: &'a str,
    /// The queue operation that found out.
    pub operation: &'static str,
    /// An earlier try of this Update got no answer but was applied: the service issued a new
    /// pop receipt that never arrived, and Azure offers no way to learn it.
    pub receipt_lost: bool,
}

impl InternalEvent for LeaseLost<'_> {
    fn emit(self) {
        if self.receipt_lost {
            warn!(
                message_id = self.message_id,
                operation = self.operation,
                cause = "receipt_lost",
                "lease lost: an update was applied but its answer (the new pop receipt) never arrived; the message comes back when its lease ends"
            );
        } else {
            warn!(
                message_id = self.message_id,
                operation = self.operation,
                cause = "taken",
                "lease lost: the message was received by another consumer or already deleted"
            );
        }
        metrics()
            .leases_lost
            .get_or_create(&labels([("operation", self.operation)]))
            .inc();
    }
}

/// Deliveries in progress went up or down by one.
pub(crate) struct InFlightChanged {
    pub delta: i64,
}

impl InternalEvent for InFlightChanged {
    fn emit(self) {
        metrics().in_flight.inc_by(self.delta);
    }
}

/// A failed message was hidden until its next attempt.
pub(crate) struct RetryScheduled<'a> {
    pub message_id: &'a str,
    pub dequeue_count: u32,
    /// What made the retry necessary: the delivery failure's label (a status, `timeout`,
    /// `connection`, `dropped`, `unsendable`), or `undeliverable` for a message that cannot
    /// become a request at all.
    pub failure: &'a str,
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
            .get_or_create(&labels([("failure", self.failure)]))
            .inc();
        queue_answered("update");
    }
}

/// The lease of a long delivery was extended.
pub(crate) struct LeaseRenewed<'a> {
    pub message_id: &'a str,
}

impl InternalEvent for LeaseRenewed<'_> {
    fn emit(self) {
        debug!(message_id = self.message_id, "lease renewed");
        metrics().lease_renewals.inc();
        queue_answered("update");
    }
}

/// A message was made visible again at shutdown, for another replica to take.
pub(crate) struct MessageReleased<'a> {
    pub message_id: &'a str,
}

impl InternalEvent for MessageReleased<'_> {
    fn emit(self) {
        info!(message_id = self.message_id, "released at shutdown");
        metrics().released.inc();
    }
}

/// One batched-mode POST finished (`CE_MODE=batched`). Its messages' deliveries are counted
/// one by one as [`DeliveryAttempted`]; this is the request itself.
pub(crate) struct BatchSent<'a> {
    /// Events in the batch.
    pub events: usize,
    /// Body bytes.
    pub bytes: usize,
    /// `delivered`, `retryable` or `permanent`.
    pub outcome: &'static str,
    /// The status code, or what happened instead (`timeout`, `connection`, ...).
    pub status: &'a str,
    pub latency: Duration,
    /// A permanent failure of several events: the batch is split in halves that are sent
    /// again, to find the events the endpoint rejects.
    pub split: bool,
}

impl InternalEvent for BatchSent<'_> {
    fn emit(self) {
        let m = metrics();
        m.batch_size.observe(self.events as f64);
        if self.split {
            m.batch_bisections.inc();
            warn!(
                events = self.events,
                bytes = self.bytes,
                outcome = self.outcome,
                status = self.status,
                latency_ms = millis(self.latency),
                "batch rejected: sending its halves again to find the rejected events"
            );
        } else {
            debug!(
                events = self.events,
                bytes = self.bytes,
                outcome = self.outcome,
                status = self.status,
                latency_ms = millis(self.latency),
                "batch sent"
            );
        }
    }
}
