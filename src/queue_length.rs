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

use crate::queue::Queue;
use crate::shutdown::Shutdown;
use crate::telemetry::events::{InternalEvent, QueueLengthFailed, QueueLengthObserved};
use std::time::Duration;
use tokio::task::JoinHandle;

/// Starts polling `queue` every `interval` (the first read at once) until `shutdown`.
pub(crate) fn spawn(queue: Queue, interval: Duration, shutdown: Shutdown) -> JoinHandle<()> {
    tokio::spawn(poll(queue, interval, shutdown))
}

async fn poll(queue: Queue, interval: Duration, mut shutdown: Shutdown) {
    loop {
        let result = tokio::select! {
            result = queue.approximate_message_count() => result,
            _ = shutdown.wait() => return,
        };
        match result {
            Ok(count) => QueueLengthObserved { count }.emit(),
            Err(error) => QueueLengthFailed {
                failure: error.failure(),
            }
            .emit(),
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.wait() => return,
        }
    }
}
