//! The queue-length poll: reads the queue's approximate message count every
//! `QUEUE_LENGTH_INTERVAL` for the `queue_approximate_messages` gauge, so KEDA, an HPA on
//! external metrics or a dashboard can see the backlog without credentials of their own.
//!
//! It is a separate task with its own queue client rather than part of the receive loop: the
//! loop's pace depends on traffic and backoff, the gauge's should not, and a slow or refused
//! properties call must never delay a delivery. The count includes invisible (leased)
//! messages; the service caches it, so it lags by a few seconds.
//!
//! With the count it peeks at the message at the front of the queue for the
//! `queue_oldest_message_age_seconds` gauge: now minus that message's insertion time, 0 when
//! no message is visible. Unlike the count, it ignores leased messages and messages waiting
//! for a retry (they are invisible), so it measures how long work has been waiting for a
//! consumer: the better signal to scale and alert on. Peek Messages leases nothing and does
//! not bump a dequeue count; the queue is only roughly first-in first-out, so the front
//! message is nearly, not strictly, the oldest.
//!
//! Failures are counted in `queue_errors{operation="properties"}` and the gauge keeps its last
//! value. They are logged (once per change) only when the receive path works meanwhile: an
//! outage the loop also meets is already reported by it, while a failure of this call alone is
//! news — typically a SAS without the `r` permission or a role that may process messages but
//! not read queue metadata.

use crate::queue::{PeekedMessage, Queue};
use crate::shutdown::Shutdown;
use crate::telemetry::events::{
    InternalEvent, OldestMessageAgeObserved, QueueLengthFailed, QueueLengthObserved,
};
use std::time::Duration;
use time::OffsetDateTime;
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
        let counted = match result {
            Ok(count) => {
                QueueLengthObserved { count }.emit();
                true
            }
            Err(error) => {
                QueueLengthFailed {
                    failure: error.failure(),
                }
                .emit();
                false
            }
        };
        // A peek after a failed count would fail the same way (the same permission, the same
        // token): one failing call per round is enough, and the age gauge keeps its value.
        let peeked = if !counted {
            None
        } else {
            tokio::select! {
                result = queue.peek(1) => Some(result),
                _ = shutdown.wait() => return,
            }
        };
        match peeked {
            None => {}
            Some(Ok(front)) => OldestMessageAgeObserved {
                age: front
                    .first()
                    .and_then(|message| age(message, OffsetDateTime::now_utc())),
            }
            .emit(),
            Some(Err(error)) => QueueLengthFailed {
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

/// How long `message` has been in the queue at `now` (zero if the clocks disagree); `None`
/// without an insertion time.
fn age(message: &PeekedMessage, now: OffsetDateTime) -> Option<Duration> {
    let inserted = message.insertion_time?;
    Some(Duration::try_from(now - inserted).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_age_is_from_the_insertion_time_and_never_negative() {
        let at = |secs| OffsetDateTime::from_unix_timestamp(secs).expect("time");
        let message = PeekedMessage {
            id: "m".into(),
            text: String::new(),
            dequeue_count: 0,
            insertion_time: Some(at(1_700_000_000)),
        };
        assert_eq!(
            age(&message, at(1_700_000_042)),
            Some(Duration::from_secs(42))
        );
        assert_eq!(age(&message, at(1_699_999_990)), Some(Duration::ZERO));
        let undated = PeekedMessage {
            insertion_time: None,
            ..message
        };
        assert_eq!(age(&undated, at(1_700_000_042)), None);
    }
}
