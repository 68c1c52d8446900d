//! The queue-length poll: reads the queue's approximate message count every
//! `QUEUE_LENGTH_INTERVAL` for the `queue_approximate_messages` gauge, so KEDA, an HPA on
//! external metrics or a dashboard can see the backlog without credentials of their own.
//!
//! It is a separate task with its own queue client rather than part of the receive loop: the
//! loop's pace depends on traffic and backoff, the gauge's should not, and a slow or refused
//! properties call must never delay a delivery. The count includes invisible (leased)
//! messages; the service caches it, so it lags by a few seconds.
//!
//! Failures are counted in `queue_errors{operation="properties"}` and the gauge keeps its last
//! value. They are logged (once per change) only when the receive path works meanwhile: an
//! outage the loop also meets is already reported by it, while a failure of this call alone is
//! news — typically a SAS without the `r` permission or a role that may process messages but
//! not read queue metadata.

use crate::queue::{Queue, QueueErrorKind};
use crate::shutdown::Shutdown;
use crate::telemetry::events::{
    InternalEvent, QueueLengthFailed, QueueLengthObserved, QueueLengthRecovered,
};
use crate::telemetry::health::health;
use std::time::Duration;
use tokio::task::JoinHandle;

/// Starts polling `queue` every `interval` (the first read at once) until `shutdown`.
pub fn spawn(queue: Queue, interval: Duration, shutdown: Shutdown) -> JoinHandle<()> {
    tokio::spawn(poll(queue, interval, shutdown))
}

async fn poll(queue: Queue, interval: Duration, mut shutdown: Shutdown) {
    let mut reports = Reports::default();
    loop {
        let result = tokio::select! {
            result = queue.approximate_message_count() => result,
            _ = shutdown.wait() => return,
        };
        match result {
            Ok(count) => {
                QueueLengthObserved { count }.emit();
                if reports.succeeded() {
                    QueueLengthRecovered.emit();
                }
            }
            Err(error) => {
                let report = reports.failed(error.kind, error.status, health().queue_ready());
                QueueLengthFailed {
                    error: &error,
                    report,
                }
                .emit();
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.wait() => return,
        }
    }
}

/// Decides which failures are worth a log line: the first of each kind that happens while the
/// receive path works.
#[derive(Debug, Default)]
struct Reports {
    failing: Option<(QueueErrorKind, Option<u16>)>,
    reported: bool,
}

impl Reports {
    fn failed(&mut self, kind: QueueErrorKind, status: Option<u16>, receive_path_ok: bool) -> bool {
        let key = Some((kind, status));
        if self.failing != key {
            self.failing = key;
            self.reported = false;
        }
        if self.reported || !receive_path_ok {
            return false;
        }
        self.reported = true;
        true
    }

    /// A success; true if a failure had been reported (so the recovery is worth a line too).
    fn succeeded(&mut self) -> bool {
        self.failing = None;
        std::mem::take(&mut self.reported)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_failures_of_this_call_alone_are_reported_once() {
        let mut reports = Reports::default();
        // The receive path fails too: the loop reports that outage, not us.
        assert!(!reports.failed(QueueErrorKind::Unreachable, None, false));
        assert!(!reports.succeeded());
        // Refused while receiving works: a missing permission, worth one line.
        let refused = (QueueErrorKind::Unauthorized, Some(403));
        assert!(reports.failed(refused.0, refused.1, true));
        assert!(!reports.failed(refused.0, refused.1, true));
        assert!(reports.failed(QueueErrorKind::Other, Some(400), true));
        assert!(reports.succeeded(), "the recovery is worth a line");
        assert!(!reports.succeeded());
    }
}
