//! The pump: receive messages, deliver them concurrently, delete what was delivered.
//!
//! One loop owns the queue's receive side; the budgets it works with are in
//! [`capacity`](crate::pipeline::capacity). A Get asks for as many messages as it holds receive
//! credits, and each message becomes a task that waits for one of the `MAX_IN_FLIGHT` delivery
//! slots, POSTs, gives the slot back, and only then settles (Delete, retry delay, poison) on
//! its own budget: the endpoint never sees more than `MAX_IN_FLIGHT` requests, and a queue a
//! round trip away no longer holds a slot through the Delete.
//!
//! A lone Get goes once half a batch of credits is free (like the Functions host's
//! `newBatchThreshold`). While the queue has a backlog (the last Get came back full), further
//! Gets may overlap it, each for a full batch, using the prefetch the capacity allows — about as
//! many messages as were delivered during the last Get's round trip — so the next batch is on
//! its way while the current one is delivered. That keeps throughput with the queue service
//! and the endpoint, not the round trip, without more (or emptier) Gets per message.
//!
//! In batched mode (`CE_MODE=batched`) the messages of a receive are grouped by the handler
//! and each batch goes to one task that takes one slot per message for as long as its POSTs
//! run (bisection included): `MAX_IN_FLIGHT` still counts messages, and a receive still asks
//! for up to `BATCH_SIZE`. Each message of the batch then settles on its own.
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
//! has been received for that long and nothing is in the pipeline (no Get under way, nothing
//! delivering or settling): the drain is then empty and the process exits 0. Only a
//! successful, empty receive counts: a failing queue or a paused endpoint never ends the run.
//!
//! Worst case from the first signal to exit: [`RECEIVE_GRACE`] + `SHUTDOWN_TIMEOUT` +
//! [`RELEASE_GRACE`] (a pod's `terminationGracePeriodSeconds` must cover that, plus the app's
//! own shutdown).

use crate::backoff::Backoff;
use crate::config::Config;
use crate::pipeline::capacity::{Capacity, Credits, Ticket};
use crate::pipeline::handler::{Disposition, Handler, Work};
use crate::queue::{Batch, Budget, Queue, QueueError, MAX_TRY};
use crate::shutdown::{self, Shutdown, ShutdownTrigger};
use crate::telemetry::events::{
    DrainFinished, EndpointDown, EndpointUp, IdleExit, InternalEvent, PumpHeartbeat, ReceiveFailed,
    ReceiveSucceeded, StopNowRequested,
};
use std::time::{Duration, Instant};
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
/// At most this many Get Messages calls under way at once (more only into a backlog).
const MAX_RECEIVES_IN_FLIGHT: usize = 4;
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
        let (hard_stop, hard_stop_listener) = shutdown::channel();
        let mut flow = Flow {
            capacity: Capacity::new(self.settings.max_in_flight),
            tasks: JoinSet::new(),
            summary: Summary::default(),
            hard_stop: hard_stop_listener,
        };
        let mut receives: JoinSet<Received> = JoinSet::new();
        let mut pace = Pace::new(&self.settings);

        'receive: loop {
            PumpHeartbeat.emit();
            let gate = self.handler.gate();
            if receives.is_empty() && gate.is_down() && !self.wait_for_endpoint(&mut shutdown).await
            {
                break 'receive;
            }
            // A second Get while one is under way only into a backlog: a queue being emptied
            // gets one Get at a time, as every Get is billed.
            // Nor for big messages: each Get's response is held whole for a moment.
            let may_receive = !gate.is_down()
                && (receives.is_empty()
                    || (pace.backlog
                        && receives.len() < MAX_RECEIVES_IN_FLIGHT
                        && !Capacity::big(pace.message_bytes)));
            // A lone Get goes once half a batch is free; one beside it only for a full batch,
            // so overlapping does not mean more, smaller Gets.
            let get_size =
                Capacity::get_size(self.settings.batch_size as usize, pace.message_bytes);
            let min_batch = match receives.is_empty() {
                true => self.settings.refill_threshold(),
                false => self.settings.batch_size as usize,
            };
            let resting = tokio::time::Instant::now() < pace.resume_at;
            tokio::select! {
                biased;
                _ = shutdown.wait() => break 'receive,
                Some(done) = flow.tasks.join_next() => record(&mut flow.summary, done),
                Some(received) = receives.join_next() => {
                    let Ok(received) = received else { continue 'receive };
                    let empty = self.take(received, &mut pace, &mut flow, &shutdown);
                    if empty && receives.is_empty() && self.run_is_complete(&pace, &flow) {
                        IdleExit {
                            idle_for: pace.last_received.elapsed(),
                        }
                        .emit();
                        stop.trigger();
                    }
                }
                _ = tokio::time::sleep_until(pace.resume_at), if resting => {}
                _ = tokio::time::sleep(HEARTBEAT) => {}
                credits = flow.capacity.credits(
                    min_batch.min(get_size),
                    get_size,
                    pace.prefetch,
                ), if may_receive && !resting => {
                    if credits.count() > 0 {
                        let finished_at_send = flow.capacity.finished();
                        let receive = receive(
                            self.queue.clone(),
                            credits.count() as u32,
                            self.settings.visibility_timeout,
                            shutdown.clone(),
                        );
                        receives.spawn(async move {
                            Received { result: receive.await, credits, finished_at_send }
                        });
                    }
                }
            }
        }

        // Receives under way when the signal came finish (each within its grace): their
        // messages are leased already, and are delivered in the drain like the others (or
        // released at once after "stop now").
        while let Some(received) = receives.join_next().await {
            if let Ok(received) = received {
                self.take(received, &mut pace, &mut flow, &shutdown);
            }
        }
        let Flow {
            tasks, mut summary, ..
        } = flow;
        self.drain(tasks, hard_stop, &mut summary, &mut shutdown)
            .await;
        // Received but never given a disposition (cut off, abandoned, or more than asked
        // for): left as they were, back when their lease expires.
        summary.left += summary.received.saturating_sub(summary.recorded());
        summary
    }

    /// `EXIT_WHEN_IDLE`: no message received for that long, and nothing in the pipeline (a
    /// message holds its credit, then its settling permit, until it is deleted, retried,
    /// poisoned or released).
    fn run_is_complete(&self, pace: &Pace, flow: &Flow) -> bool {
        self.settings
            .exit_when_idle
            .is_some_and(|idle| pace.last_received.elapsed() >= idle)
            && flow.capacity.is_idle()
    }

    /// Takes a Get's answer: its messages go to delivery tasks (each waits for a slot), and
    /// the pace of the next Gets follows what it said. True if it succeeded and was empty.
    fn take(
        &self,
        received: Received,
        pace: &mut Pace,
        flow: &mut Flow,
        shutdown: &Shutdown,
    ) -> bool {
        let Received {
            result,
            mut credits,
            finished_at_send,
        } = received;
        let Batch {
            mut messages,
            leased_until,
        } = match result {
            Ok(batch) => batch,
            Err(error) => {
                let delay = pace.failing.next_delay();
                ReceiveFailed {
                    failure: error.failure(),
                    retry_in: delay,
                }
                .emit();
                pace.rest(delay);
                return false;
            }
        };
        pace.failing.reset();
        ReceiveSucceeded {
            count: messages.len(),
        }
        .emit();
        let text_bytes: usize = messages.iter().map(|m| m.text.len()).sum();
        if !messages.is_empty() {
            pace.message_bytes = text_bytes / messages.len();
        }
        pace.prefetch = flow.capacity.prefetch(
            flow.capacity.finished().saturating_sub(finished_at_send),
            pace.message_bytes,
        );
        pace.backlog = !messages.is_empty() && messages.len() >= credits.count();
        if messages.is_empty() {
            let delay = pace.idle.next_delay();
            pace.rest(delay);
            return true;
        }
        pace.idle.reset();
        pace.last_received = Instant::now();
        pace.resume_at = tokio::time::Instant::now();
        flow.summary.received += messages.len() as u64;
        if shutdown.is_stop_now() {
            // A receive that finished after "stop now": hand the messages back at once.
            for message in messages {
                let handler = self.handler.clone();
                flow.tasks.spawn(async move {
                    vec![handler.release_unstarted(message, leased_until).await]
                });
            }
            return false;
        }
        // Never more messages than credits were asked for; if the service sent more, the
        // extra ones simply come back after their lease (and count as left).
        messages.truncate(credits.count());
        if self.handler.batched() {
            // A batch holds one slot per message while its POSTs run, so never needs more
            // than MAX_IN_FLIGHT.
            for work in self
                .handler
                .batch_up(messages, leased_until, self.settings.max_in_flight)
            {
                let Some(ticket) = credits.take(work.sizes(), &flow.capacity) else {
                    break;
                };
                self.spawn_work(flow, work, ticket);
            }
        } else {
            for message in messages {
                let Some(ticket) = credits.take(vec![message.text.len()], &flow.capacity) else {
                    break;
                };
                self.spawn(flow, message, leased_until, ticket);
            }
        }
        false
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

    /// A delivery task: waits for a delivery slot, then handles the message. A hard stop
    /// before a slot came releases the message instead.
    fn spawn(
        &self,
        flow: &mut Flow,
        message: crate::queue::ReceivedMessage,
        leased_until: Instant,
        ticket: Ticket,
    ) {
        let handler = self.handler.clone();
        let hard_stop = flow.hard_stop.clone();
        flow.tasks.spawn(async move {
            let mut stopping = hard_stop.clone();
            let slot = tokio::select! {
                biased;
                slot = ticket.delivery_slot() => slot,
                _ = stopping.wait() => None,
            };
            vec![match slot {
                Some(slot) => handler.handle(message, leased_until, hard_stop, slot).await,
                None => handler.release_unstarted(message, leased_until).await,
            }]
        });
    }

    /// Batched mode: a task for one batch (or one message that needs no POST): it waits for a
    /// slot per message, all at once. A hard stop before that releases the messages instead.
    fn spawn_work(&self, flow: &mut Flow, work: Work, ticket: Ticket) {
        let handler = self.handler.clone();
        let hard_stop = flow.hard_stop.clone();
        flow.tasks.spawn(async move {
            let mut stopping = hard_stop.clone();
            let slots = tokio::select! {
                biased;
                slots = ticket.delivery_slots() => slots,
                _ = stopping.wait() => None,
            };
            match slots {
                Some(slots) => handler.handle_work(work, hard_stop, slots).await,
                None => handler.release_work(work).await,
            }
        });
    }
}

/// The delivery side of the loop: the budgets, the delivery tasks and their tally.
struct Flow {
    capacity: Capacity,
    tasks: JoinSet<Vec<Disposition>>,
    summary: Summary,
    /// Fires when deliveries in progress must stop (the shutdown timeout passed).
    hard_stop: Shutdown,
}

/// A Get's answer, with the credits it was sent with.
struct Received {
    result: Result<Batch, QueueError>,
    credits: Credits,
    /// Deliveries finished when the Get was sent (see [`Capacity::prefetch`]).
    finished_at_send: u64,
}

/// When the next Get may go, and how much may be asked ahead.
struct Pace {
    idle: Backoff,
    failing: Backoff,
    /// No Get before this (an empty queue or a failing service backs off).
    resume_at: tokio::time::Instant,
    /// Credits usable beyond `MAX_IN_FLIGHT` (see [`Capacity::prefetch`]).
    prefetch: usize,
    /// The average text length of the last messages received (sizes the next Get).
    message_bytes: usize,
    /// The last Get came back full: the queue has more.
    backlog: bool,
    /// When a Get last brought messages (for `EXIT_WHEN_IDLE`).
    last_received: Instant,
}

impl Pace {
    fn new(settings: &PumpSettings) -> Self {
        Self {
            idle: Backoff::new(settings.poll_min, settings.poll_max),
            failing: Backoff::new(FAILURE_BACKOFF_MIN, FAILURE_BACKOFF_MAX),
            resume_at: tokio::time::Instant::now(),
            prefetch: 0,
            message_bytes: 0,
            backlog: false,
            last_received: Instant::now(),
        }
    }

    fn rest(&mut self, delay: Duration) {
        self.resume_at = tokio::time::Instant::now() + delay;
        self.backlog = false;
    }
}

/// One Get Messages call (retried briefly by the queue layer). If shutdown arrives meanwhile,
/// the call is still given a moment to finish, since the service may already have leased
/// messages to it; a second signal ends that wait.
async fn receive(
    queue: Queue,
    count: u32,
    visibility_timeout: Duration,
    mut shutdown: Shutdown,
) -> Result<Batch, QueueError> {
    let call = queue.receive_within(
        count,
        visibility_timeout,
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
