//! The pump: receive messages, deliver them concurrently, delete what was delivered.
//!
//! One loop owns the queue's receive side. A [`Semaphore`] with `MAX_IN_FLIGHT` permits bounds
//! the deliveries in progress; the loop waits until enough permits are free to make a Get
//! Messages call worthwhile (half a batch, like the Functions host's `newBatchThreshold`), asks
//! for as many messages as it has permits, and hands each message, with its permit, to a task.
//! So a new batch is fetched as soon as capacity frees up, not when the slowest message of the
//! previous batch is done, and a slow endpoint can never have more than `MAX_IN_FLIGHT`
//! requests open.
//!
//! An empty queue makes the loop back off (randomized, doubling up to `POLL_MAX_INTERVAL`),
//! because every Get is billed; a failing queue service makes it back off too, and the failure
//! is logged once per change of state, not per attempt.
//!
//! On shutdown the loop stops receiving and waits for the deliveries in progress.

use crate::backoff::Backoff;
use crate::config::Config;
use crate::delivery::{Deliverer, Outcome};
use crate::event::{encode, EventMapper};
use crate::queue::{Operation, Queue, QueueError, QueueErrorKind, ReceivedMessage};
use crate::shutdown::Shutdown;
use crate::telemetry::events::{
    DeliveryAttempted, InFlightChanged, InternalEvent, LeaseLost, MessageDeleted,
    MessageUnmappable, PumpHeartbeat, QueueCallFailed, QueueRecovered, ReceiveSucceeded,
};
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

/// Backoff bounds while the queue service fails.
const FAILURE_BACKOFF_MIN: Duration = Duration::from_millis(500);
const FAILURE_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long a receive already under way may finish after shutdown was requested: its messages
/// are leased by then, and abandoning the call would hide them until the lease expires.
const RECEIVE_GRACE: Duration = Duration::from_secs(5);
/// How often the loop reports it is alive while waiting for free delivery slots.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// Attempts at deleting a delivered message while the service is briefly unavailable.
const DELETE_ATTEMPTS: u32 = 3;

/// The loop's tunables, taken from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct PumpSettings {
    pub batch_size: u32,
    pub max_in_flight: usize,
    pub visibility_timeout: Duration,
    pub poll_min: Duration,
    pub poll_max: Duration,
}

impl PumpSettings {
    pub fn from_config(config: &Config) -> Self {
        Self {
            batch_size: config.batch_size,
            max_in_flight: config.max_in_flight,
            visibility_timeout: config.visibility_timeout,
            poll_min: config.poll.min_interval,
            poll_max: config.poll.max_interval,
        }
    }

    /// Free delivery slots needed before asking the queue for more: half a batch (at least
    /// one), so a steady trickle of completions does not turn into a Get per message.
    fn refill_threshold(&self) -> usize {
        let batch = (self.batch_size as usize).min(self.max_in_flight);
        (batch / 2).max(1)
    }
}

/// What happened to one received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Delivered and deleted.
    Delivered,
    /// Delivered, but the delete failed: it will be delivered again (at-least-once).
    DeliveredNotDeleted,
    /// Not delivered; it stays in the queue and reappears after its visibility timeout.
    Failed,
}

/// Counts for the one-line summary printed at exit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub received: u64,
    pub delivered: u64,
    pub delivered_not_deleted: u64,
    pub failed: u64,
}

impl Summary {
    fn record(&mut self, disposition: Disposition) {
        match disposition {
            Disposition::Delivered => self.delivered += 1,
            Disposition::DeliveredNotDeleted => self.delivered_not_deleted += 1,
            Disposition::Failed => self.failed += 1,
        }
    }
}

/// Handles one message: event, POST, delete. Cheap to clone into each task.
#[derive(Clone)]
pub struct Worker {
    queue: Queue,
    mapper: Arc<EventMapper>,
    deliverer: Deliverer,
}

impl Worker {
    pub fn new(queue: Queue, mapper: EventMapper, deliverer: Deliverer) -> Self {
        Self {
            queue,
            mapper: Arc::new(mapper),
            deliverer,
        }
    }

    /// Delivers `message` and deletes it after a 2xx. Any other outcome leaves it in the
    /// queue, invisible until its lease runs out.
    pub async fn handle(&self, message: ReceivedMessage) -> Disposition {
        let _in_flight = InFlightGuard::new();
        let event = match self.mapper.to_event(&message) {
            Ok(event) => event,
            Err(error) => {
                MessageUnmappable {
                    message_id: &message.id,
                    dequeue_count: message.dequeue_count,
                    reason: &error.to_string(),
                }
                .emit();
                return Disposition::Failed;
            }
        };
        let payload = match encode(event, self.mapper.mode()) {
            Ok(payload) => payload,
            Err(error) => {
                MessageUnmappable {
                    message_id: &message.id,
                    dequeue_count: message.dequeue_count,
                    reason: &error.to_string(),
                }
                .emit();
                return Disposition::Failed;
            }
        };

        let started = Instant::now();
        let outcome = self.deliverer.deliver(payload).await;
        DeliveryAttempted {
            message_id: &message.id,
            dequeue_count: message.dequeue_count,
            outcome: &outcome,
            latency: started.elapsed(),
            age: message.insertion_time.map(age),
        }
        .emit();

        match outcome {
            Outcome::Delivered { .. } => self.delete(&message).await,
            Outcome::Retryable { .. } | Outcome::Permanent { .. } => Disposition::Failed,
        }
    }

    /// Deletes a delivered message, retrying briefly through transient faults. If it cannot
    /// be deleted the message comes back after its lease: a duplicate, never a loss.
    async fn delete(&self, message: &ReceivedMessage) -> Disposition {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(2));
        for attempt in 1..=DELETE_ATTEMPTS {
            let error = match self.queue.delete(&message.id, &message.pop_receipt).await {
                Ok(()) => {
                    MessageDeleted {
                        message_id: &message.id,
                    }
                    .emit();
                    return Disposition::Delivered;
                }
                Err(error) => error,
            };
            if error.kind == QueueErrorKind::MessageGone {
                LeaseLost {
                    message_id: &message.id,
                    operation: Operation::Delete,
                }
                .emit();
                return Disposition::DeliveredNotDeleted;
            }
            let transient = matches!(
                error.kind,
                QueueErrorKind::Unreachable | QueueErrorKind::Throttled
            );
            let last = attempt == DELETE_ATTEMPTS || !transient;
            let retry_in = (!last).then(|| backoff.next_delay());
            QueueCallFailed {
                error: &error,
                message_id: Some(&message.id),
                report: last,
                retry_in,
            }
            .emit();
            match retry_in {
                Some(delay) => tokio::time::sleep(delay).await,
                None => break,
            }
        }
        Disposition::DeliveredNotDeleted
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

/// Tracks whether the queue is failing, so each change of state is logged once.
#[derive(Debug, Default)]
struct QueueHealth {
    failing: Option<QueueErrorKind>,
    failures: u64,
}

impl QueueHealth {
    fn failed(&mut self, error: &QueueError, retry_in: Duration) {
        let changed = self.failing != Some(error.kind);
        self.failing = Some(error.kind);
        self.failures += 1;
        QueueCallFailed {
            error,
            message_id: None,
            report: changed,
            retry_in: Some(retry_in),
        }
        .emit();
    }

    fn succeeded(&mut self, operation: Operation) {
        if self.failing.take().is_some() {
            QueueRecovered {
                operation,
                failures: self.failures,
            }
            .emit();
        }
        self.failures = 0;
    }
}

/// The receive loop.
pub struct Pump {
    queue: Queue,
    worker: Worker,
    settings: PumpSettings,
}

impl Pump {
    pub fn new(queue: Queue, worker: Worker, settings: PumpSettings) -> Self {
        Self {
            queue,
            worker,
            settings,
        }
    }

    /// Runs until `shutdown` fires, then waits for deliveries in progress and returns what
    /// happened.
    pub async fn run(self, mut shutdown: Shutdown) -> Summary {
        let slots = Arc::new(Semaphore::new(self.settings.max_in_flight));
        let mut tasks: JoinSet<Disposition> = JoinSet::new();
        let mut summary = Summary::default();
        let mut idle = Backoff::new(self.settings.poll_min, self.settings.poll_max);
        let mut failing = Backoff::new(FAILURE_BACKOFF_MIN, FAILURE_BACKOFF_MAX);
        let mut health = QueueHealth::default();

        'receive: loop {
            PumpHeartbeat.emit();
            let mut permits = tokio::select! {
                biased;
                _ = shutdown.wait() => break 'receive,
                Some(done) = tasks.join_next() => {
                    record(&mut summary, done);
                    continue 'receive;
                }
                _ = tokio::time::sleep(HEARTBEAT) => continue 'receive,
                permits = slots.clone().acquire_many_owned(self.settings.refill_threshold() as u32) => {
                    match permits {
                        Ok(permits) => permits,
                        Err(_closed) => break 'receive,
                    }
                }
            };
            while permits.num_permits() < self.settings.batch_size as usize {
                match slots.clone().try_acquire_owned() {
                    Ok(more) => permits.merge(more),
                    Err(_) => break,
                }
            }

            let received = self
                .receive(permits.num_permits() as u32, &mut shutdown)
                .await;
            let messages = match received {
                Ok(messages) => messages,
                Err(error) => {
                    let delay = failing.next_delay();
                    health.failed(&error, delay);
                    drop(permits);
                    sleep_or_shutdown(delay, &mut shutdown).await;
                    continue 'receive;
                }
            };
            health.succeeded(Operation::Receive);
            failing.reset();
            ReceiveSucceeded {
                count: messages.len(),
            }
            .emit();

            if messages.is_empty() {
                drop(permits);
                sleep_or_shutdown(idle.next_delay(), &mut shutdown).await;
                continue 'receive;
            }
            idle.reset();
            summary.received += messages.len() as u64;
            for message in messages {
                let Some(permit) = permits.split(1) else {
                    // Never more messages than permits were asked for; if the service sent
                    // more, the extra ones simply come back after their lease.
                    break;
                };
                self.spawn(&mut tasks, message, permit);
            }
        }

        while let Some(done) = tasks.join_next().await {
            record(&mut summary, done);
        }
        summary
    }

    /// One Get Messages call. If shutdown arrives meanwhile, the call is still given a moment
    /// to finish, since the service may already have leased messages to it.
    async fn receive(
        &self,
        count: u32,
        shutdown: &mut Shutdown,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        let call = self.queue.receive(count, self.settings.visibility_timeout);
        tokio::pin!(call);
        tokio::select! {
            result = &mut call => result,
            _ = shutdown.wait() => match tokio::time::timeout(RECEIVE_GRACE, &mut call).await {
                Ok(result) => result,
                Err(_) => Ok(Vec::new()),
            },
        }
    }

    fn spawn(
        &self,
        tasks: &mut JoinSet<Disposition>,
        message: ReceivedMessage,
        permit: OwnedSemaphorePermit,
    ) {
        let worker = self.worker.clone();
        tasks.spawn(async move {
            let disposition = worker.handle(message).await;
            drop(permit);
            disposition
        });
    }
}

fn record(summary: &mut Summary, done: Result<Disposition, tokio::task::JoinError>) {
    // A panicking task cannot have deleted its message, so it counts as failed: the message
    // comes back after its lease.
    summary.record(done.unwrap_or(Disposition::Failed));
}

async fn sleep_or_shutdown(delay: Duration, shutdown: &mut Shutdown) {
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        _ = shutdown.wait() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(batch_size: u32, max_in_flight: usize) -> PumpSettings {
        PumpSettings {
            batch_size,
            max_in_flight,
            visibility_timeout: Duration::from_secs(30),
            poll_min: Duration::from_millis(100),
            poll_max: Duration::from_secs(10),
        }
    }

    #[test]
    fn refills_at_half_a_batch() {
        assert_eq!(settings(32, 32).refill_threshold(), 16);
        assert_eq!(settings(32, 4).refill_threshold(), 2);
        assert_eq!(settings(1, 32).refill_threshold(), 1);
        assert_eq!(settings(32, 1).refill_threshold(), 1);
    }
}
