//! The life of one received message: event, POST, then delete, retry later, or poison.
//!
//! While the POST runs, the message's lease is renewed at half the visibility timeout, always
//! with the newest pop receipt, so a slow endpoint never sees the message handed to another
//! consumer. After the attempt, [`RetryPolicy`] decides; this module carries the decision out
//! and handles what the queue says back:
//!
//! - `PopReceiptMismatch` / `MessageNotFound`: another consumer owns the message now. Logged,
//!   counted, and left alone.
//! - 403 on Update Message or on the poison queue: the identity has only "process" rights.
//!   Said once; retries then wait for the lease to expire, and poisonable messages stay in the
//!   main queue. Delivery goes on.
//!
//! On a hard stop (the shutdown timeout passed), a delivery in progress is abandoned and its
//! message released (made visible at once) for another replica.

use crate::backoff::Backoff;
use crate::delivery::{Deliverer, Failure, Outcome};
use crate::event::EventMapper;
use crate::poison::{envelope, PoisonError, PoisonQueue};
use crate::queue::{Operation, Queue, QueueError, QueueErrorKind, ReceivedMessage};
use crate::retry::{Decision, PoisonReason, RetryPolicy};
use crate::shutdown::Shutdown;
use crate::telemetry::events::{
    Degraded, DeliveryAttempted, EventNoticed, InFlightChanged, InternalEvent, LeaseLost,
    LeaseRenewed, MessageDeleted, MessagePoisoned, MessageReleased, MessageUnmappable,
    PoisonBlocked, QueueCallFailed, RetryScheduled,
};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use time::OffsetDateTime;

/// Attempts at a queue call (delete, update) while the service is briefly unavailable.
const QUEUE_CALL_ATTEMPTS: u32 = 3;
/// Consecutive connection failures after which the endpoint counts as down.
pub const ENDPOINT_DOWN_AFTER: u32 = 3;

/// What happened to one received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Delivered and deleted.
    Delivered,
    /// Delivered, but not deleted (lease lost or delete failed): it will come again.
    DeliveredNotDeleted,
    /// Not delivered; hidden until its next attempt.
    RetryScheduled,
    /// Moved to the poison queue and deleted.
    Poisoned,
    /// Made visible again at shutdown.
    Released,
    /// Not delivered and left as it was: it reappears when its lease expires.
    Left,
}

/// Tracks consecutive connection failures so the pump can pause while the endpoint is down.
#[derive(Debug, Default)]
pub struct EndpointGate {
    consecutive_failures: AtomicU32,
    last_error: Mutex<String>,
}

impl EndpointGate {
    fn record(&self, outcome: &Outcome) {
        match outcome {
            Outcome::Retryable {
                failure: Failure::Connection(error),
                ..
            } => {
                self.consecutive_failures.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut last) = self.last_error.lock() {
                    last.clone_from(error);
                }
            }
            _ => self.reset(),
        }
    }

    /// Whether the endpoint refused enough connections in a row to stop receiving.
    pub fn is_down(&self) -> bool {
        self.consecutive_failures() >= ENDPOINT_DOWN_AFTER
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    pub fn last_error(&self) -> String {
        self.last_error
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default()
    }

    /// The endpoint answered: count from zero again.
    pub fn reset(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
    }
}

/// Features that fell back because of a missing permission, each reported once.
#[derive(Debug, Default)]
struct Degradations {
    update_denied: AtomicBool,
    poison_denied: AtomicBool,
    poison_missing: AtomicBool,
}

/// The current pop receipt of a message: replaced by every renewal.
struct Lease {
    receipt: Mutex<String>,
}

impl Lease {
    fn new(receipt: &str) -> Self {
        Self {
            receipt: Mutex::new(receipt.to_string()),
        }
    }

    fn receipt(&self) -> String {
        self.receipt.lock().map(|r| r.clone()).unwrap_or_default()
    }

    fn renew(&self, receipt: String) {
        if let Ok(mut current) = self.receipt.lock() {
            *current = receipt;
        }
    }
}

/// Handles messages. Cheap to clone into each task.
#[derive(Clone)]
pub struct Worker {
    queue: Queue,
    poison: PoisonQueue,
    mapper: Arc<EventMapper>,
    deliverer: Deliverer,
    policy: RetryPolicy,
    visibility_timeout: Duration,
    gate: Arc<EndpointGate>,
    degraded: Arc<Degradations>,
}

impl Worker {
    pub fn new(
        queue: Queue,
        poison: PoisonQueue,
        mapper: EventMapper,
        deliverer: Deliverer,
        policy: RetryPolicy,
        visibility_timeout: Duration,
    ) -> Self {
        Self {
            queue,
            poison,
            mapper: Arc::new(mapper),
            deliverer,
            policy,
            visibility_timeout,
            gate: Arc::default(),
            degraded: Arc::default(),
        }
    }

    /// The endpoint's connection health, shared with the pump.
    pub fn gate(&self) -> Arc<EndpointGate> {
        self.gate.clone()
    }

    pub fn deliverer(&self) -> &Deliverer {
        &self.deliverer
    }

    /// Delivers `message` and carries out the decision. `hard_stop` fires when the shutdown
    /// timeout has passed: the delivery is then abandoned and the message released.
    pub async fn handle(&self, message: ReceivedMessage, mut hard_stop: Shutdown) -> Disposition {
        let _in_flight = InFlightGuard::new();
        let lease = Lease::new(&message.pop_receipt);

        let payload = match self.mapper.to_event(&message) {
            Ok(event) => {
                if let Some(notice) = event.notice() {
                    EventNoticed {
                        message_id: &message.id,
                        notice,
                    }
                    .emit();
                }
                event.encode(self.mapper.mode())
            }
            Err(error) => {
                let reason = error.to_string();
                MessageUnmappable {
                    message_id: &message.id,
                    dequeue_count: message.dequeue_count,
                    reason: &reason,
                }
                .emit();
                let decision = self.policy.undeliverable(reason);
                return self.carry_out(decision, &message, &lease).await;
            }
        };

        let started = Instant::now();
        let outcome = tokio::select! {
            outcome = self.deliverer.deliver(payload) => outcome,
            never = self.keep_leased(&message, &lease) => match never {},
            _ = hard_stop.wait() => return self.release(&message, &lease).await,
        };
        self.gate.record(&outcome);
        DeliveryAttempted {
            message_id: &message.id,
            dequeue_count: message.dequeue_count,
            outcome: &outcome,
            latency: started.elapsed(),
            age: message.insertion_time.map(age),
        }
        .emit();

        let decision = self.policy.decide(message.dequeue_count, &outcome);
        self.carry_out(decision, &message, &lease).await
    }

    async fn carry_out(
        &self,
        decision: Decision,
        message: &ReceivedMessage,
        lease: &Lease,
    ) -> Disposition {
        match decision {
            Decision::Delete => match self.delete(message, lease).await {
                true => Disposition::Delivered,
                false => Disposition::DeliveredNotDeleted,
            },
            Decision::Retry { delay, failure } => {
                self.schedule_retry(message, lease, delay, &failure).await
            }
            Decision::Poison(reason) => self.poison(message, lease, &reason).await,
        }
    }

    /// Renews the lease at half the visibility timeout for as long as it is polled. Never
    /// completes: when renewal becomes impossible it just stops renewing.
    async fn keep_leased(
        &self,
        message: &ReceivedMessage,
        lease: &Lease,
    ) -> std::convert::Infallible {
        let interval = self.visibility_timeout / 2;
        loop {
            tokio::time::sleep(interval).await;
            match self
                .queue
                .set_visibility(&message.id, &lease.receipt(), self.visibility_timeout)
                .await
            {
                Ok(receipt) => {
                    lease.renew(receipt);
                    LeaseRenewed {
                        message_id: &message.id,
                    }
                    .emit();
                }
                Err(error) if error.kind == QueueErrorKind::MessageGone => {
                    LeaseLost {
                        message_id: &message.id,
                        operation: Operation::Update,
                    }
                    .emit();
                    return std::future::pending().await;
                }
                Err(error) if error.kind == QueueErrorKind::Unauthorized => {
                    self.update_denied();
                    return std::future::pending().await;
                }
                Err(error) => QueueCallFailed {
                    error: &error,
                    message_id: Some(&message.id),
                    report: true,
                    retry_in: Some(interval),
                }
                .emit(),
            }
        }
    }

    /// Deletes a delivered (or poisoned) message; true if it is gone.
    async fn delete(&self, message: &ReceivedMessage, lease: &Lease) -> bool {
        let (queue, id) = (&self.queue, message.id.as_str());
        let result =
            retry_transient(|| async move { queue.delete(id, &lease.receipt()).await }).await;
        match result {
            Ok(()) => {
                MessageDeleted {
                    message_id: &message.id,
                }
                .emit();
                true
            }
            Err(error) => {
                self.report_failure(&error, message);
                false
            }
        }
    }

    /// Hides a failed message until its next attempt.
    async fn schedule_retry(
        &self,
        message: &ReceivedMessage,
        lease: &Lease,
        delay: Duration,
        failure: &Failure,
    ) -> Disposition {
        let (queue, id) = (&self.queue, message.id.as_str());
        let result =
            retry_transient(
                || async move { queue.set_visibility(id, &lease.receipt(), delay).await },
            )
            .await;
        match result {
            Ok(receipt) => {
                lease.renew(receipt);
                RetryScheduled {
                    message_id: &message.id,
                    dequeue_count: message.dequeue_count,
                    failure,
                    delay,
                }
                .emit();
                Disposition::RetryScheduled
            }
            Err(error) => {
                self.report_failure(&error, message);
                Disposition::Left
            }
        }
    }

    /// Writes the message to the poison queue, then deletes it. If the poison queue cannot be
    /// written, the message stays in the main queue (hidden for a retry delay, so a message
    /// that cannot be poisoned does not spin).
    async fn poison(
        &self,
        message: &ReceivedMessage,
        lease: &Lease,
        reason: &PoisonReason,
    ) -> Disposition {
        let text = envelope(
            self.queue.name(),
            message,
            reason,
            OffsetDateTime::now_utc(),
        );
        let wrapped = text != message.text || message.text.is_empty();
        match self.poison.put(&text).await {
            Ok(()) => {
                MessagePoisoned {
                    message_id: &message.id,
                    dequeue_count: message.dequeue_count,
                    reason,
                    poison_queue: self.poison.name(),
                    envelope: wrapped,
                }
                .emit();
                // If this delete fails the message comes back and is poisoned again: a
                // duplicate in the poison queue, never a loss.
                self.delete(message, lease).await;
                Disposition::Poisoned
            }
            Err(error) => {
                let flag = match &error {
                    PoisonError::Missing => Some(&self.degraded.poison_missing),
                    PoisonError::Denied => Some(&self.degraded.poison_denied),
                    PoisonError::Queue(_) => None,
                };
                let first = flag.is_none_or(|f| !f.swap(true, Ordering::Relaxed));
                PoisonBlocked {
                    message_id: &message.id,
                    poison_queue: self.poison.name(),
                    error: &error,
                    report: first,
                }
                .emit();
                let failure = reason
                    .failure()
                    .cloned()
                    .unwrap_or_else(|| Failure::Connection(reason.describe()));
                let delay = self.policy.backoff(message.dequeue_count);
                self.schedule_retry(message, lease, delay, &failure).await
            }
        }
    }

    /// Makes the message visible at once, for another consumer.
    async fn release(&self, message: &ReceivedMessage, lease: &Lease) -> Disposition {
        match self
            .queue
            .set_visibility(&message.id, &lease.receipt(), Duration::ZERO)
            .await
        {
            Ok(_) => {
                MessageReleased {
                    message_id: &message.id,
                }
                .emit();
                Disposition::Released
            }
            Err(error) => {
                self.report_failure(&error, message);
                Disposition::Left
            }
        }
    }

    /// Releases a message that was received but not started (shutdown came first).
    pub async fn release_unstarted(&self, message: ReceivedMessage) -> Disposition {
        let lease = Lease::new(&message.pop_receipt);
        self.release(&message, &lease).await
    }

    fn report_failure(&self, error: &QueueError, message: &ReceivedMessage) {
        match error.kind {
            QueueErrorKind::MessageGone => LeaseLost {
                message_id: &message.id,
                operation: error.operation,
            }
            .emit(),
            QueueErrorKind::Unauthorized if error.operation == Operation::Update => {
                self.update_denied()
            }
            _ => QueueCallFailed {
                error,
                message_id: Some(&message.id),
                report: true,
                retry_in: None,
            }
            .emit(),
        }
    }

    fn update_denied(&self) {
        if !self.degraded.update_denied.swap(true, Ordering::Relaxed) {
            Degraded {
                feature: "update_message",
                consequence: "no lease renewal and no retry delays: failed messages come back when VISIBILITY_TIMEOUT expires (grant 'u' in the SAS or Storage Queue Data Contributor)",
            }
            .emit();
        }
    }
}

/// Runs a queue call up to [`QUEUE_CALL_ATTEMPTS`] times while it fails transiently.
async fn retry_transient<T, F, Fut>(mut call: F) -> Result<T, QueueError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, QueueError>>,
{
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(2));
    let mut attempt = 1;
    loop {
        match call().await {
            Err(error)
                if attempt < QUEUE_CALL_ATTEMPTS
                    && matches!(
                        error.kind,
                        QueueErrorKind::Unreachable | QueueErrorKind::Throttled
                    ) =>
            {
                attempt += 1;
                tokio::time::sleep(backoff.next_delay()).await;
            }
            result => return result,
        }
    }
}

/// Time since `inserted`, zero if the clocks disagree.
fn age(inserted: OffsetDateTime) -> Duration {
    (OffsetDateTime::now_utc() - inserted)
        .try_into()
        .unwrap_or(Duration::ZERO)
}

/// Keeps the in-flight gauge right even if a delivery task is cancelled.
struct InFlightGuard;

impl InFlightGuard {
    fn new() -> Self {
        InFlightChanged { delta: 1 }.emit();
        Self
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        InFlightChanged { delta: -1 }.emit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_closes_after_consecutive_connection_failures_only() {
        let gate = EndpointGate::default();
        let refused = Outcome::Retryable {
            failure: Failure::Connection("Connection refused".into()),
            retry_after: None,
        };
        gate.record(&refused);
        gate.record(&refused);
        assert!(!gate.is_down());
        gate.record(&Outcome::Delivered { status: 200 });
        gate.record(&refused);
        gate.record(&refused);
        assert!(!gate.is_down(), "an answer in between resets the count");
        gate.record(&refused);
        assert!(gate.is_down());
        assert_eq!(gate.last_error(), "Connection refused");
        gate.reset();
        assert!(!gate.is_down());
    }
}
