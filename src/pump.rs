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
//! When the endpoint refuses connections several times in a row, the loop stops receiving
//! (every Get bumps dequeue counts and costs a transaction) and probes the endpoint with
//! backoff until it accepts connections again.
//!
//! On shutdown the loop stops receiving and gives the deliveries in progress
//! `SHUTDOWN_TIMEOUT`; what is still running then is cut off and its messages released, as are
//! messages a last receive brought in after the stop.

use crate::backoff::Backoff;
use crate::config::Config;
use crate::queue::{Operation, Queue, QueueError, QueueErrorKind, ReceivedMessage};
use crate::shutdown::{self, Shutdown, ShutdownTrigger};
use crate::telemetry::events::{
    DrainFinished, EndpointDown, EndpointUp, InternalEvent, PumpHeartbeat, QueueCallFailed,
    QueueRecovered, ReceiveSucceeded,
};
use crate::worker::{Disposition, Worker};
use std::sync::Arc;
use std::time::{Duration, Instant};
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
/// After the shutdown timeout, how long releasing the cut-off messages may take.
const RELEASE_GRACE: Duration = Duration::from_secs(10);
/// Probe backoff while the endpoint is down.
const PROBE_BACKOFF_MIN: Duration = Duration::from_millis(500);
const PROBE_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The loop's tunables, taken from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct PumpSettings {
    pub batch_size: u32,
    pub max_in_flight: usize,
    pub visibility_timeout: Duration,
    pub poll_min: Duration,
    pub poll_max: Duration,
    pub shutdown_timeout: Duration,
}

impl PumpSettings {
    pub fn from_config(config: &Config) -> Self {
        Self {
            batch_size: config.batch_size,
            max_in_flight: config.max_in_flight,
            visibility_timeout: config.visibility_timeout,
            poll_min: config.poll.min_interval,
            poll_max: config.poll.max_interval,
            shutdown_timeout: config.shutdown_timeout,
        }
    }

    /// Free delivery slots needed before asking the queue for more: half a batch (at least
    /// one), so a steady trickle of completions does not turn into a Get per message.
    fn refill_threshold(&self) -> usize {
        let batch = (self.batch_size as usize).min(self.max_in_flight);
        (batch / 2).max(1)
    }
}

/// Counts for the one-line summary printed at exit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub received: u64,
    pub delivered: u64,
    pub delivered_not_deleted: u64,
    pub retries_scheduled: u64,
    pub poisoned: u64,
    pub released: u64,
    pub left: u64,
}

impl Summary {
    fn record(&mut self, disposition: Disposition) {
        let counter = match disposition {
            Disposition::Delivered => &mut self.delivered,
            Disposition::DeliveredNotDeleted => &mut self.delivered_not_deleted,
            Disposition::RetryScheduled => &mut self.retries_scheduled,
            Disposition::Poisoned => &mut self.poisoned,
            Disposition::Released => &mut self.released,
            Disposition::Left => &mut self.left,
        };
        *counter += 1;
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
        let (hard_stop, hard_stop_listener) = shutdown::channel();

        'receive: loop {
            PumpHeartbeat.emit();
            if self.worker.gate().is_down() && !self.wait_for_endpoint(&mut shutdown).await {
                break 'receive;
            }
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
            if shutdown.is_requested() {
                // A receive that finished after the stop: hand the messages back at once.
                for message in messages {
                    let worker = self.worker.clone();
                    tasks.spawn(async move { worker.release_unstarted(message).await });
                }
                break 'receive;
            }
            for message in messages {
                let Some(permit) = permits.split(1) else {
                    // Never more messages than permits were asked for; if the service sent
                    // more, the extra ones simply come back after their lease.
                    break;
                };
                self.spawn(&mut tasks, message, permit, hard_stop_listener.clone());
            }
        }

        self.drain(tasks, hard_stop, &mut summary).await;
        summary
    }

    /// Waits up to `SHUTDOWN_TIMEOUT` for deliveries in progress, then cuts the rest off; they
    /// release their messages.
    async fn drain(
        &self,
        mut tasks: JoinSet<Disposition>,
        hard_stop: ShutdownTrigger,
        summary: &mut Summary,
    ) {
        let deadline = tokio::time::Instant::now() + self.settings.shutdown_timeout;
        let mut timed_out = false;
        loop {
            match tokio::time::timeout_at(deadline, tasks.join_next()).await {
                Ok(Some(done)) => record(summary, done),
                Ok(None) => break,
                Err(_elapsed) => {
                    timed_out = true;
                    break;
                }
            }
        }
        if timed_out {
            hard_stop.trigger();
            let grace = tokio::time::Instant::now() + RELEASE_GRACE;
            while let Ok(Some(done)) = tokio::time::timeout_at(grace, tasks.join_next()).await {
                record(summary, done);
            }
            // Whatever is still stuck now is abandoned; its lease expires on its own.
            summary.left += tasks.len() as u64;
            tasks.abort_all();
        }
        DrainFinished {
            timed_out,
            released: summary.released,
        }
        .emit();
    }

    /// Probes the endpoint with backoff until it accepts connections. False if shutdown came
    /// first.
    async fn wait_for_endpoint(&self, shutdown: &mut Shutdown) -> bool {
        let gate = self.worker.gate();
        EndpointDown {
            consecutive_failures: gate.consecutive_failures(),
            last_error: &gate.last_error(),
        }
        .emit();
        let paused_at = Instant::now();
        let mut backoff = Backoff::new(PROBE_BACKOFF_MIN, PROBE_BACKOFF_MAX);
        loop {
            sleep_or_shutdown(backoff.next_delay(), shutdown).await;
            if shutdown.is_requested() {
                return false;
            }
            if self.worker.deliverer().probe().await.is_ok() {
                gate.reset();
                EndpointUp {
                    paused_for: paused_at.elapsed(),
                }
                .emit();
                return true;
            }
        }
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
        hard_stop: Shutdown,
    ) {
        let worker = self.worker.clone();
        tasks.spawn(async move {
            let disposition = worker.handle(message, hard_stop).await;
            drop(permit);
            disposition
        });
    }
}

fn record(summary: &mut Summary, done: Result<Disposition, tokio::task::JoinError>) {
    // A panicking task cannot have deleted its message: it comes back after its lease.
    summary.record(done.unwrap_or(Disposition::Left));
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
            shutdown_timeout: Duration::from_secs(20),
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
