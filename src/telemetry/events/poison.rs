//! The poison queue, and the features that fall back when a permission is missing.

use super::internal::{labels, InternalEvent};
use crate::telemetry::metrics::metrics;
use crate::telemetry::tracker::Tracker;
use std::fmt::Display;
use tracing::{error, warn};

/// A message was moved to the poison queue and deleted from the main queue.
pub(crate) struct MessagePoisoned<'a> {
    pub message_id: &'a str,
    pub dequeue_count: u32,
    /// `rejected`, `attempts_exhausted` or `undeliverable`.
    pub reason: &'static str,
    /// The last error, one line.
    pub error: &'a str,
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
            reason = self.reason,
            error = self.error,
            poison_queue = self.poison_queue,
            envelope = self.envelope,
            "message moved to the poison queue"
        );
        metrics()
            .poisoned
            .get_or_create(&labels([("reason", self.reason)]))
            .inc();
    }
}

/// A poison copy was written, but the message could not be deleted from the main queue: it
/// comes back and is poisoned again, leaving a second copy in the poison queue.
pub(crate) struct PoisonedNotDeleted<'a> {
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

/// Which causes of a blocked poison write were reported: a missing queue or a missing
/// permission does not change by itself, so each is said once per process.
static POISON_BLOCKED: Tracker<&str> = Tracker::new();

/// A message that should be poisoned stays in the main queue, because the poison queue is
/// missing or may not be written. Counted every time; a missing queue or permission is
/// logged once, any other failure every time.
pub(crate) struct PoisonBlocked<'a> {
    pub message_id: &'a str,
    pub poison_queue: &'a str,
    /// `missing`, `denied`, or `failed` (any other queue error).
    pub cause: &'static str,
    pub error: &'a dyn Display,
}

impl InternalEvent for PoisonBlocked<'_> {
    fn emit(self) {
        metrics()
            .poison_blocked
            .get_or_create(&labels([("cause", self.cause)]))
            .inc();
        let news = match self.cause {
            "failed" => true,
            cause => POISON_BLOCKED.failed(cause, ()),
        };
        if news {
            error!(
                message_id = self.message_id,
                poison_queue = self.poison_queue,
                error = %self.error,
                "cannot poison: the message stays in the main queue and will be retried"
            );
        }
    }
}

/// Which features fell back; a missing permission stays missing, so each is said once.
static DEGRADED: Tracker<&str> = Tracker::new();

/// The identity lacks a permission, so a feature falls back. Emitted at every refusal; logged
/// once per feature.
pub(crate) struct Degraded {
    pub feature: &'static str,
    pub consequence: &'static str,
}

impl InternalEvent for Degraded {
    fn emit(self) {
        metrics()
            .degraded
            .get_or_create(&labels([("feature", self.feature)]))
            .set(1);
        if DEGRADED.failed(self.feature, ()) {
            warn!(
                feature = self.feature,
                consequence = self.consequence,
                "degraded: the queue service refused an operation with 403 (missing permission)"
            );
        }
    }
}
