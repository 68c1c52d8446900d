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
//! In batched mode (`CE_MODE=batched`) the messages of a receive are grouped by the handler
//! and each batch goes to one task with one permit per message: `MAX_IN_FLIGHT` still counts
//! messages, and a receive still asks for up to `BATCH_SIZE`.
//!
//! An empty queue makes the loop back off (randomized, doubling up to `POLL_MAX_INTERVAL`),
//! because every Get is billed; a failing queue service makes it back off too, and the failure
//! is logged once per change of state, not per attempt (the event asks the queue's state in
//! the health record whether a failure is news).
//!
//! When the endpoint refuses connections several times in a row, the loop stops receiving
//! (every Get bumps dequeue counts and costs a transaction) and probes the endpoint with
//! backoff until it accepts connections again.
//!
//! On shutdown the loop stops receiving and gives the deliveries in progress
//! `SHUTDOWN_TIMEOUT`; what is still running then is cut off and its messages released. A
//! receive under way when the signal comes may finish (its messages are leased already) and
//! its messages are delivered like the others: releasing them would only bump their dequeue
//! count for nothing. A second signal stops at once: deliveries in progress are cut off,
//! their messages released, and the process exits within a few seconds.
//!
//! With `EXIT_WHEN_IDLE`, the loop asks for that same shutdown itself (through a clone of the
//! signal's trigger, so there is one shutdown path) after an empty receive, once no message
//! has been received for that long and no delivery is in flight: the drain is then empty and
//! the process exits 0. Only a successful, empty receive counts: a failing queue or a paused
//! endpoint never ends the run.
//!
//! Worst case from the first signal to exit: [`RECEIVE_GRACE`] + `SHUTDOWN_TIMEOUT` +
//! [`RELEASE_GRACE`] (a pod's `terminationGracePeriodSeconds` must cover that, plus the app's
//! own shutdown).

use crate::backoff::Backoff;
use crate::config::Config;
use crate::pipeline::handler::{Disposition, Handler, Work};
use crate::queue::{Batch, Budget, Queue, QueueError, MAX_TRY};
use crate::shutdown::{self, Shutdown, ShutdownTrigger};
use crate::telemetry::events::{
    DrainFinished, EndpointDown, EndpointUp, IdleExit, InternalEvent, PumpHeartbeat, ReceiveFailed,
    ReceiveSucceeded, StopNowRequested,
};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

/// Backoff bounds while the queue service fails.
const FAILURE_BACKOFF_MIN: Duration = Duration::from_millis(500);
const FAILURE_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A Get Messages that fails is retried (by the queue layer) for this long before the loop
/// reports the failure and backs off: a blip is smoothed over, an outage is noticed in seconds.
const RECEIVE_RETRY_WINDOW: Duration = Duration::from_secs(2);
/// How long a receive already under way may finish after shutdown was requested: its messages
/// are leased by then, and abandoning the call would hide them until the lease expires.
pub(crate) const RECEIVE_GRACE: Duration = Duration::from_secs(5);
/// How often the loop reports it is alive while waiting for free delivery slots.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// After the shutdown timeout, how long releasing the cut-off messages (and finishing deletes
/// already under way) may take.
pub(crate) const RELEASE_GRACE: Duration = Duration::from_secs(10);
/// After a second signal, how long releasing the messages in flight may take.
const STOP_NOW_GRACE: Duration = Duration::from_secs(3);
/// Probe backoff while the endpoint is down.
const PROBE_BACKOFF_MIN: Duration = Duration::from_millis(500);
const PROBE_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Liveness: how many of the longest legitimate loop iterations may pass without a heartbeat.
const STALL_ITERATIONS: u32 = 3;

/// How long the receive loop may go without a heartbeat before liveness fails: three times
/// the longest sleep (`POLL_MAX_INTERVAL`, or the failure backoff if longer) plus the slowest
/// iteration's call. A receive's tries all start within [`RECEIVE_RETRY_WINDOW`] and each is
/// bounded by [`MAX_TRY`]: two full tries are allowed, plus a [`HEARTBEAT`] of waiting for
/// free slots. With the defaults, 155 s.
pub(crate) fn stall_limit(poll_max_interval: Duration) -> Duration {
    let slowest_call = 2 * MAX_TRY + HEARTBEAT;
    STALL_ITERATIONS * poll_max_interval.max(FAILURE_BACKOFF_MAX) + slowest_call
}

/// The loop's tunables, taken from the configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PumpSettings {
    pub batch_size: u32,
    pub max_in_flight: usize,
    pub visibility_timeout: Duration,
    pub poll_min: Duration,
    pub poll_max: Duration,
    pub shutdown_timeout: Duration,
    /// `EXIT_WHEN_IDLE`.
    pub exit_when_idle: Option<Duration>,
}

impl PumpSettings {
    pub(crate) fn from_config(config: &Config) -> Self {
        Self {
            batch_size: config.batch_size,
            max_in_flight: config.max_in_flight,
            visibility_timeout: config.visibility_timeout,
            poll_min: config.poll.min_interval,
            poll_max: config.poll.max_interval,
            shutdown_timeout: config.shutdown_timeout,
            exit_when_idle: config.exit_when_idle,
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
pub(crate) struct Summary {
    pub received: u64,
    pub delivered: u64,
    pub delivered_not_deleted: u64,
    /// Messages that came back after this process delivered them and were deleted, not
    /// delivered again.
    pub redeliveries_avoided: u64,
    pub retries_scheduled: u64,
    pub poisoned: u64,
    pub poisoned_not_deleted: u64,
    pub released: u64,
    pub left: u64,
}

impl Summary {
    /// Messages with a disposition so far.
    fn recorded(&self) -> u64 {
        self.delivered
            + self.delivered_not_deleted
            + self.redeliveries_avoided
            + self.retries_scheduled
            + self.poisoned
            + self.poisoned_not_deleted
            + self.released
            + self.left
    }

    fn record(&mut self, disposition: Disposition) {
        let counter = match disposition {
            Disposition::Delivered => &mut self.delivered,
            Disposition::DeliveredNotDeleted => &mut self.delivered_not_deleted,
            Disposition::RedeliveryAvoided => &mut self.redeliveries_avoided,
            Disposition::RetryScheduled => &mut self.retries_scheduled,
            Disposition::Poisoned => &mut self.poisoned,
            Disposition::PoisonedNotDeleted => &mut self.poisoned_not_deleted,
            Disposition::Released => &mut self.released,
            Disposition::Left => &mut self.left,
        };
        *counter += 1;
    }
}

/// The receive loop.
pub(crate) struct Pump {
    queue: Queue,
    handler: Handler,
    settings: PumpSettings,
}

impl Pump {
    pub(crate) fn new(queue: Queue, handler: Handler, settings: PumpSettings) -> Self {
        Self {
            queue,
            handler,
            settings,
        }
    }

    /// Runs until `shutdown` fires, then waits for deliveries in progress and returns what
    /// happened. `stop` is the trigger of `shutdown`: the loop pulls it itself when
    /// `EXIT_WHEN_IDLE` says the run is complete.
    pub(crate) async fn run(self, mut shutdown: Shutdown, stop: ShutdownTrigger) -> Summary {
        let slots = Arc::new(Semaphore::new(self.settings.max_in_flight));
        let mut tasks: JoinSet<Vec<Disposition>> = JoinSet::new();
        let mut summary = Summary::default();
        let mut idle = Backoff::new(self.settings.poll_min, self.settings.poll_max);
        let mut failing = Backoff::new(FAILURE_BACKOFF_MIN, FAILURE_BACKOFF_MAX);
        let (hard_stop, hard_stop_listener) = shutdown::channel();
        let mut last_received = Instant::now();

        'receive: loop {
            PumpHeartbeat.emit();
            if self.handler.gate().is_down() && !self.wait_for_endpoint(&mut shutdown).await {
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
            let Batch {
                mut messages,
                leased_until,
            } = match received {
                Ok(batch) => batch,
                Err(error) => {
                    let delay = failing.next_delay();
                    ReceiveFailed {
                        failure: error.failure(),
                        retry_in: delay,
                    }
                    .emit();
                    drop(permits);
                    sleep_or_shutdown(delay, &mut shutdown).await;
                    continue 'receive;
                }
            };
            failing.reset();
            ReceiveSucceeded {
                count: messages.len(),
            }
            .emit();

            if messages.is_empty() {
                drop(permits);
                if self.run_is_complete(last_received, &slots) {
                    IdleExit {
                        idle_for: last_received.elapsed(),
                    }
                    .emit();
                    stop.trigger();
                    continue 'receive;
                }
                sleep_or_shutdown(idle.next_delay(), &mut shutdown).await;
                continue 'receive;
            }
            idle.reset();
            last_received = Instant::now();
            summary.received += messages.len() as u64;
            if shutdown.is_stop_now() {
                // A receive that finished after "stop now": hand the messages back at once.
                for message in messages {
                    let handler = self.handler.clone();
                    tasks.spawn(async move {
                        vec![handler.release_unstarted(message, leased_until).await]
                    });
                }
                break 'receive;
            }
            // Never more messages than permits were asked for; if the service sent more, the
            // extra ones simply come back after their lease (and count as left).
            messages.truncate(permits.num_permits());
            if self.handler.batched() {
                // A batch holds one slot per message: MAX_IN_FLIGHT counts messages in every
                // mode.
                for work in self.handler.batch_up(messages, leased_until) {
                    let Some(permit) = permits.split(work.len()) else {
                        break;
                    };
                    self.spawn_work(&mut tasks, work, permit, hard_stop_listener.clone());
                }
            } else {
                for message in messages {
                    let Some(permit) = permits.split(1) else {
                        break;
                    };
                    self.spawn(
                        &mut tasks,
                        message,
                        leased_until,
                        permit,
                        hard_stop_listener.clone(),
                    );
                }
            }
            if shutdown.is_requested() {
                // The last receive finished after the signal: its messages are delivered in
                // the drain like any other (they are leased and counted already).
                break 'receive;
            }
        }

        self.drain(tasks, hard_stop, &mut summary, &mut shutdown)
            .await;
        // Received but never given a disposition (cut off, abandoned, or more than asked
        // for): left as they were, back when their lease expires.
        summary.left += summary.received.saturating_sub(summary.recorded());
        summary
    }

    /// `EXIT_WHEN_IDLE`: no message received for that long, and every delivery slot free (a
    /// task holds its slot until its message is deleted, retried, poisoned or released).
    fn run_is_complete(&self, last_received: Instant, slots: &Semaphore) -> bool {
        self.settings
            .exit_when_idle
            .is_some_and(|idle| last_received.elapsed() >= idle)
            && slots.available_permits() == self.settings.max_in_flight
    }

    /// Waits up to `SHUTDOWN_TIMEOUT` for deliveries in progress (less if a second signal
    /// comes), then cuts the rest off; they release their messages.
    async fn drain(
        &self,
        mut tasks: JoinSet<Vec<Disposition>>,
        hard_stop: ShutdownTrigger,
        summary: &mut Summary,
        shutdown: &mut Shutdown,
    ) {
        let deadline = tokio::time::Instant::now() + self.settings.shutdown_timeout;
        let mut grace = None;
        let mut stop_now = shutdown.clone();
        while grace.is_none() {
            tokio::select! {
                biased;
                _ = stop_now.wait_stop_now() => {
                    StopNowRequested { in_flight: tasks.len() }.emit();
                    grace = Some(STOP_NOW_GRACE);
                }
                done = tasks.join_next() => match done {
                    Some(done) => record(summary, done),
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => grace = Some(RELEASE_GRACE),
            }
        }
        let timed_out = grace.is_some();
        if let Some(grace) = grace {
            hard_stop.trigger();
            let mut until = tokio::time::Instant::now() + grace;
            let mut stopping_now = shutdown.is_stop_now();
            loop {
                tokio::select! {
                    biased;
                    _ = stop_now.wait_stop_now(), if !stopping_now => {
                        StopNowRequested { in_flight: tasks.len() }.emit();
                        stopping_now = true;
                        until = until.min(tokio::time::Instant::now() + STOP_NOW_GRACE);
                    }
                    done = tokio::time::timeout_at(until, tasks.join_next()) => match done {
                        Ok(Some(done)) => record(summary, done),
                        _ => break,
                    },
                }
            }
            // Whatever is still stuck now is abandoned; its lease expires on its own (counted
            // as left by the caller).
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
        let gate = self.handler.gate();
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
            if self.handler.deliverer().probe().await.is_ok() {
                gate.reset();
                EndpointUp {
                    paused_for: paused_at.elapsed(),
                }
                .emit();
                return true;
            }
        }
    }

    /// One Get Messages call (retried briefly by the queue layer). If shutdown arrives
    /// meanwhile, the call is still given a moment to finish, since the service may already
    /// have leased messages to it; a second signal ends that wait.
    async fn receive(&self, count: u32, shutdown: &mut Shutdown) -> Result<Batch, QueueError> {
        let call = self.queue.receive_within(
            count,
            self.settings.visibility_timeout,
            Budget::retry_for(RECEIVE_RETRY_WINDOW, MAX_TRY),
        );
        tokio::pin!(call);
        let abandoned = || Batch {
            messages: Vec::new(),
            leased_until: Instant::now(),
        };
        tokio::select! {
            result = &mut call => result,
            _ = shutdown.wait() => {
                let mut stop_now = shutdown.clone();
                tokio::select! {
                    result = tokio::time::timeout(RECEIVE_GRACE, &mut call) => {
                        result.unwrap_or_else(|_| Ok(abandoned()))
                    }
                    _ = stop_now.wait_stop_now() => Ok(abandoned()),
                }
            }
        }
    }

    fn spawn(
        &self,
        tasks: &mut JoinSet<Vec<Disposition>>,
        message: crate::queue::ReceivedMessage,
        leased_until: Instant,
        permit: OwnedSemaphorePermit,
        hard_stop: Shutdown,
    ) {
        let handler = self.handler.clone();
        tasks.spawn(async move {
            let disposition = handler.handle(message, leased_until, hard_stop).await;
            drop(permit);
            vec![disposition]
        });
    }

    /// Batched mode: one batch (or one message that needs no POST) in a task of its own.
    fn spawn_work(
        &self,
        tasks: &mut JoinSet<Vec<Disposition>>,
        work: Work,
        permit: OwnedSemaphorePermit,
        hard_stop: Shutdown,
    ) {
        let handler = self.handler.clone();
        tasks.spawn(async move {
            let dispositions = handler.handle_work(work, hard_stop).await;
            drop(permit);
            dispositions
        });
    }
}

fn record(summary: &mut Summary, done: Result<Vec<Disposition>, tokio::task::JoinError>) {
    // A panicking task cannot have deleted its messages: they come back after their lease
    // (and count as left at the end, having no disposition).
    for disposition in done.unwrap_or_default() {
        summary.record(disposition);
    }
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
            exit_when_idle: None,
        }
    }

    #[test]
    fn the_stall_limit_allows_several_slow_iterations() {
        assert_eq!(
            stall_limit(Duration::from_secs(10)),
            Duration::from_secs(155)
        );
        assert_eq!(
            stall_limit(Duration::from_secs(60)),
            Duration::from_secs(245)
        );
    }

    #[test]
    fn refills_at_half_a_batch() {
        assert_eq!(settings(32, 32).refill_threshold(), 16);
        assert_eq!(settings(32, 4).refill_threshold(), 2);
        assert_eq!(settings(1, 32).refill_threshold(), 1);
        assert_eq!(settings(32, 1).refill_threshold(), 1);
    }
}
