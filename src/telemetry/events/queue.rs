//! Queue calls: answers, failures, retries, latency, and the queue-length poll.

use super::internal::{labels, millis, InternalEvent};
use crate::telemetry::health::{health, QueueTransition};
use crate::telemetry::metrics::metrics;
use crate::telemetry::tracker::Tracker;
use std::fmt::Display;
use std::time::Duration;
use tracing::{debug, error, info, warn};

/// A failed queue call (or one try of it), as label values and text.
#[derive(Clone, Copy)]
pub(crate) struct QueueFailure<'a> {
    /// `receive`, `delete`, `update`, `send`, `properties`, `create`.
    pub operation: &'static str,
    /// `unreachable`, `unauthorized`, `queue_not_found`, `message_gone`, `throttled`,
    /// `token_unavailable`, `other`.
    pub kind: &'static str,
    /// The HTTP status, when the service answered.
    pub status: Option<u16>,
    /// The service's `x-ms-error-code`, when it answered.
    pub code: Option<&'a str>,
    /// The try may have been applied although it failed.
    pub outcome_unknown: bool,
    /// What this kind usually means and what to check.
    pub hint: &'static str,
    /// The whole error, secret-free.
    pub error: &'a dyn Display,
}

impl QueueFailure<'_> {
    fn count(&self) {
        metrics()
            .queue_errors
            .get_or_create(&labels([
                ("operation", self.operation),
                ("kind", self.kind),
            ]))
            .inc();
    }

    /// The line of a call that failed for good.
    fn log(&self, message_id: Option<&str>, retry_in: Option<Duration>) {
        error!(
            operation = self.operation,
            kind = self.kind,
            status = self.status,
            code = self.code,
            message_id,
            retry_in_ms = retry_in.map(millis),
            error = %self.error,
            hint = self.hint,
            "queue call failed"
        );
    }
}

/// A Get Messages call succeeded (possibly with no messages): the queue is reachable and the
/// credentials work.
pub(crate) struct ReceiveSucceeded {
    pub count: usize,
}

impl InternalEvent for ReceiveSucceeded {
    fn emit(self) {
        queue_answered("receive");
        metrics().messages_received.inc_by(self.count as u64);
        if self.count > 0 {
            debug!(count = self.count, "received messages");
        }
    }
}

/// A receive-path call succeeded: the first ever, or the first after failures, is worth a
/// line. Whichever call gets through first says so (after an outage the deletes under way may
/// succeed before the next receive is even sent).
pub(super) fn queue_answered(operation: &'static str) {
    let recovered = |failed_calls| {
        info!(
            operation,
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

/// The receive loop's Get Messages failed (after the queue layer's retries); the loop backs
/// off for `retry_in`. Logged once per change of the queue's state (the first failure of a
/// kind since the queue last answered); the metric counts every one.
pub(crate) struct ReceiveFailed<'a> {
    pub failure: QueueFailure<'a>,
    pub retry_in: Duration,
}

impl InternalEvent for ReceiveFailed<'_> {
    fn emit(self) {
        self.failure.count();
        if health().queue_failed(self.failure.operation, self.failure.kind) {
            self.failure.log(None, Some(self.retry_in));
        }
    }
}

/// A queue call on one message failed for good (the lease ran out, or retrying cannot help).
/// Always logged: it is about this message. It also counts against readiness.
pub(crate) struct QueueCallFailed<'a> {
    pub failure: QueueFailure<'a>,
    pub message_id: &'a str,
    /// When the caller tries again, if it does.
    pub retry_in: Option<Duration>,
}

impl InternalEvent for QueueCallFailed<'_> {
    fn emit(self) {
        self.failure.count();
        health().queue_failed(self.failure.operation, self.failure.kind);
        self.failure.log(Some(self.message_id), self.retry_in);
    }
}

/// One try of a queue call failed and will be retried (the final failure of a call is a
/// [`QueueCallFailed`], a [`ReceiveFailed`] or a more specific event). Counted; logged at
/// debug level only, and not a readiness failure: only a call that fails for good is.
pub(crate) struct QueueCallRetried<'a> {
    pub failure: QueueFailure<'a>,
    /// 1 for the first try.
    pub attempt: u32,
    pub retry_in: Duration,
}

impl InternalEvent for QueueCallRetried<'_> {
    fn emit(self) {
        self.failure.count();
        debug!(
            operation = self.failure.operation,
            kind = self.failure.kind,
            status = self.failure.status,
            code = self.failure.code,
            attempt = self.attempt,
            outcome_unknown = self.failure.outcome_unknown,
            retry_in_ms = millis(self.retry_in),
            error = %self.failure.error,
            "queue call failed; retrying"
        );
    }
}

/// One try of a queue call finished, successfully or not (failures are also reported by the
/// caller, which knows what they mean).
pub(crate) struct QueueCallCompleted {
    pub operation: &'static str,
    pub latency: Duration,
}

impl InternalEvent for QueueCallCompleted {
    fn emit(self) {
        metrics()
            .queue_call_seconds
            .get_or_create(&labels([("operation", self.operation)]))
            .observe(self.latency.as_secs_f64());
    }
}

/// Which queue-length failures were reported, per call (`properties` for the count, `peek`
/// for the oldest message's age): the first of each kind and status that happens while the
/// receive path works.
static QUEUE_LENGTH: Tracker<&'static str, (&str, Option<u16>)> = Tracker::new();

/// The queue's approximate message count was read. After a reported failure, this is also
/// the line saying it works again.
pub(crate) struct QueueLengthObserved {
    pub count: u64,
}

impl InternalEvent for QueueLengthObserved {
    fn emit(self) {
        debug!(approximate_messages = self.count, "queue length");
        metrics()
            .queue_messages
            .set(i64::try_from(self.count).unwrap_or(i64::MAX));
        if QUEUE_LENGTH.recovered(&"properties").is_some() {
            info!("queue length available again");
        }
    }
}

/// The age of the message at the front of the queue (Peek Messages) was read; 0 when no
/// message is visible. After a reported failure, this is also the line saying it works again.
pub(crate) struct OldestMessageAgeObserved {
    /// `None`: no visible message.
    pub age: Option<Duration>,
}

impl InternalEvent for OldestMessageAgeObserved {
    fn emit(self) {
        let seconds = self.age.map_or(0, |age| age.as_secs());
        debug!(oldest_message_age_s = seconds, "oldest message age");
        metrics()
            .oldest_message_age_seconds
            .set(i64::try_from(seconds).unwrap_or(i64::MAX));
        if QUEUE_LENGTH.recovered(&"peek").is_some() {
            info!("oldest message age available again");
        }
    }
}

/// Reading the queue length (or, with `operation` `peek`, the oldest message's age) failed;
/// the gauge keeps its last value. Reported (once per call, kind and status) only while the
/// receive path works: then the failure is specific to this call, typically a missing
/// permission. Failures the receive loop also meets are already reported by it and stay at
/// debug level.
pub(crate) struct QueueLengthFailed<'a> {
    pub failure: QueueFailure<'a>,
}

impl InternalEvent for QueueLengthFailed<'_> {
    fn emit(self) {
        let failure = self.failure;
        failure.count();
        let state = (failure.kind, failure.status);
        if queue_length_news(
            &QUEUE_LENGTH,
            failure.operation,
            state,
            health().queue_ready(),
        ) {
            warn!(
                operation = failure.operation,
                status = failure.status,
                code = failure.code,
                error = %failure.error,
                hint = "reading the queue length and peeking at the oldest message need the SAS 'r' permission or a role that can read queue metadata and peek (Storage Queue Data Reader); QUEUE_LENGTH_INTERVAL=0 turns the poll off",
                "queue length or oldest message age unavailable; deliveries are not affected"
            );
        } else {
            debug!(operation = failure.operation, error = %failure.error, "queue length unavailable");
        }
    }
}

/// Whether a queue-length failure of `call` is worth a line: the first of its kind and status
/// while the receive path works (`receive_path_ok`); failures it meets too are the loop's to
/// report.
fn queue_length_news(
    tracker: &Tracker<&'static str, (&'static str, Option<u16>)>,
    call: &'static str,
    state: (&'static str, Option<u16>),
    receive_path_ok: bool,
) -> bool {
    if receive_path_ok {
        tracker.failed(call, state)
    } else {
        tracker.failed_unreported(call, state);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_failures_of_this_call_alone_are_reported_once() {
        let reports = Tracker::new();
        let failed = |kind, status, receive_path_ok| {
            queue_length_news(&reports, "properties", (kind, status), receive_path_ok)
        };
        let succeeded = || reports.recovered(&"properties").is_some();
        // The receive path fails too: the loop reports that outage, not us.
        assert!(!failed("unreachable", None, false));
        assert!(!succeeded());
        // Refused while receiving works: a missing permission, worth one line.
        let refused = ("unauthorized", Some(403));
        assert!(failed(refused.0, refused.1, true));
        assert!(!failed(refused.0, refused.1, true));
        assert!(failed("other", Some(400), true));
        assert!(succeeded(), "the recovery is worth a line");
        assert!(!succeeded());
        // The peek is followed on its own: its failure is not the count's recovery.
        assert!(queue_length_news(&reports, "peek", refused, true));
        assert!(!succeeded());
        assert!(reports.recovered(&"peek").is_some());
    }
}
