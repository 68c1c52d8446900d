//! The life of one received message: event, POST, then delete, retry later, or poison.
//!
//! ## The lease
//!
//! A received message is leased (invisible to other consumers) until its visibility timeout
//! runs out; [`Lease`] holds the newest pop receipt and a conservative estimate of when the
//! lease ends (counted from when the call that took it was *sent*). Every queue call on the
//! message is bounded by that lease, and the lease is kept for as long as the message needs it:
//!
//! - **While the POST runs**, the lease is renewed at half its life; a failed renewal is retried
//!   with backoff until shortly before the lease ends (not once per half-life). When the POST
//!   finishes while a renewal is in flight, the renewal is waited for: its answer holds the
//!   receipt the delete must use, and dropping it would leave a stale receipt behind.
//! - **After a 2xx**, the delete is retried until the queue answers — up to
//!   [`DELETE_PATIENCE`] — renewing the lease whenever half of it has passed, so a queue that
//!   refuses deletes for a while does not make the message come back. A retried delete that
//!   finds the message gone after a try whose answer was lost counts as deleted.
//! - **Before a poison write**, an Update confirms the message is still ours and gives the
//!   write and the delete a full lease; a poison copy whose delete then fails is counted as
//!   such ([`Disposition::PoisonedNotDeleted`]): it will be poisoned again, a second copy.
//!
//! What the queue says back:
//!
//! - `PopReceiptMismatch` / `MessageNotFound`: another consumer owns the message now (or it is
//!   gone). Logged, counted, and left alone. One case cannot be helped: an Update the service
//!   applied but whose answer was lost leaves a new receipt nobody knows, and Azure offers no
//!   way to learn it; the message comes back when that lease ends.
//! - 403 on Update Message or on the poison queue: the identity has only "process" rights.
//!   Said once; retries then wait for the lease to expire, and poisonable messages stay in the
//!   main queue. Delivery goes on.
//!
//! ## Delivered, but not deleted
//!
//! When the delete after a 2xx fails for good (the lease was lost, often to that unknowable
//! receipt, or the queue refused deletes for longer than [`DELETE_PATIENCE`]), the message
//! comes back. The handler remembers such message ids ([`Acknowledged`]) for
//! [`ACKNOWLEDGED_RETENTION`]: if the message comes back to this process, it is deleted with
//! its new receipt instead of being POSTed again. Only another replica (or this one after a
//! restart) can deliver it twice.
//!
//! On a hard stop (the shutdown timeout passed, or a second signal), a POST in progress is
//! abandoned and its message released (made visible at once) for another replica.
//!
//! ## Batched mode
//!
//! With `CE_MODE=batched` a batch is a group of such messages, each with its own lease, its
//! own attempt count and its own decision; only the POST is shared ([`Handler::batch_up`],
//! [`Handler::handle_work`]). While the batch's POSTs run (with bisection of a permanent
//! failure, see [`crate::pipeline::batch`]) every lease is renewed as above; then each message
//! gets the outcome of the last POST that carried it and goes through the same path as a
//! single message: counted as a delivery, decided by the policy, deleted, retried, poisoned.
//! A hard stop releases the messages without an outcome and carries out the others (a message
//! of a half that was already accepted is deleted, not released).

use crate::config::{BatchConfig, ContentMode};
use crate::pipeline::batch;
use crate::pipeline::capacity::DeliverySlot;
use crate::pipeline::endpoint::{Deliverer, EndpointGate, Failure, Outcome};
use crate::pipeline::event::{self, Event, EventMapper, Notice};
use crate::pipeline::poison::{envelope, PoisonQueue};
use crate::pipeline::policy::{retry_label, Decision, PoisonReason, RetryPolicy};
use crate::pipeline::trace::{Span, Trace};
use crate::queue::{
    Budget, Deleted, Leased, Operation, Queue, QueueError, QueueErrorKind, ReceivedMessage,
};
use crate::shutdown::{self, Shutdown};
use crate::telemetry::events::{
    Base64EventNoticed, BatchSent, Degraded, DeliveryAttempted, InFlightChanged, InternalEvent,
    InvalidEventWrapped, LeaseLost, LeaseRenewed, MessageDeleted, MessagePoisoned, MessageReleased,
    MessageUnmappable, PoisonBlocked, PoisonedNotDeleted, QueueCallFailed, RedeliveryAvoided,
    RetryScheduled,
};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};
use time::OffsetDateTime;

/// Queue calls on a leased message stop this long before the (estimated) end of the lease.
/// The estimate already errs early: it counts from when the call was sent.
const LEASE_MARGIN: Duration = Duration::from_millis(500);
/// How long the delete of a delivered message is retried (renewing the lease meanwhile)
/// before it is given up; the message then comes back and is delivered again.
pub(crate) const DELETE_PATIENCE: Duration = Duration::from_secs(120);
/// How long releasing a message (at shutdown) may take, retries included.
const RELEASE_WINDOW: Duration = Duration::from_secs(3);
/// How long a delivered message whose delete failed is remembered (see [`Acknowledged`]). It
/// comes back when its lease ends, at most a visibility timeout later, but is only received
/// again when a consumer gets to it, which behind a backlog can take a while.
const ACKNOWLEDGED_RETENTION: Duration = Duration::from_secs(3600);
/// At most this many are remembered (about 100 bytes each); the oldest go first.
const ACKNOWLEDGED_CAPACITY: usize = 4096;
/// Between renewals that failed after the lease ran out (the receipt may still be valid: it
/// is until another consumer receives the message).
const LATE_RENEWAL_INTERVAL: Duration = Duration::from_secs(1);

/// What happened to one received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Disposition {
    /// Delivered and deleted.
    Delivered,
    /// Delivered, but not deleted (lease lost or delete failed): it will come again.
    DeliveredNotDeleted,
    /// Came back after this process delivered it but could not delete it: deleted now, not
    /// POSTed again.
    RedeliveryAvoided,
    /// Not delivered; hidden until its next attempt.
    RetryScheduled,
    /// Moved to the poison queue and deleted.
    Poisoned,
    /// Written to the poison queue, but not deleted from the main queue: it comes back and is
    /// poisoned again (a second copy).
    PoisonedNotDeleted,
    /// Made visible again at shutdown.
    Released,
    /// Not delivered and left as it was: it reappears when its lease expires.
    Left,
}

/// Ids of messages this process delivered (2xx) but could not delete, so that a message that
/// comes back is deleted rather than delivered again. Bounded in time and size: it is a way
/// to avoid duplicates, not a guarantee (the guarantee is at-least-once).
#[derive(Debug, Default)]
struct Acknowledged {
    delivered_at: Mutex<HashMap<String, Instant>>,
}

impl Acknowledged {
    fn remember(&self, id: &str) {
        let Ok(mut ids) = self.delivered_at.lock() else {
            return;
        };
        let now = Instant::now();
        if ids.len() >= ACKNOWLEDGED_CAPACITY {
            ids.retain(|_, at| now.duration_since(*at) < ACKNOWLEDGED_RETENTION);
        }
        if ids.len() >= ACKNOWLEDGED_CAPACITY {
            let oldest = ids
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(id, _)| id.clone());
            if let Some(oldest) = oldest {
                ids.remove(&oldest);
            }
        }
        ids.insert(id.to_string(), now);
    }

    /// Whether `id` was delivered by this process (within the retention).
    fn contains(&self, id: &str) -> bool {
        self.delivered_at.lock().is_ok_and(|ids| {
            ids.get(id)
                .is_some_and(|at| at.elapsed() < ACKNOWLEDGED_RETENTION)
        })
    }

    fn forget(&self, id: &str) {
        if let Ok(mut ids) = self.delivered_at.lock() {
            ids.remove(id);
        }
    }
}

/// The lease on a message: its newest pop receipt (replaced by every Update) and when the
/// lease ends, estimated early.
struct Lease {
    current: Mutex<Leased>,
    /// An Update on this lease failed without an answer: the service may have applied it, and
    /// then the receipt held here is stale (Azure never says the new one).
    receipt_uncertain: AtomicBool,
}

impl Lease {
    fn new(receipt: &str, until: Instant) -> Self {
        Self {
            current: Mutex::new(Leased {
                pop_receipt: receipt.to_string(),
                until,
            }),
            receipt_uncertain: AtomicBool::new(false),
        }
    }

    fn receipt_uncertain(&self) -> bool {
        self.receipt_uncertain.load(Ordering::Relaxed)
    }

    fn receipt(&self) -> String {
        self.current
            .lock()
            .map(|l| l.pop_receipt.clone())
            .unwrap_or_default()
    }

    fn until(&self) -> Instant {
        self.current
            .lock()
            .map(|l| l.until)
            .unwrap_or_else(|_| Instant::now())
    }

    /// Until when calls may keep retrying on this lease.
    fn deadline(&self) -> Instant {
        self.until()
            .checked_sub(LEASE_MARGIN)
            .unwrap_or_else(Instant::now)
    }

    /// When half of `visibility` is left: time to renew.
    fn renew_at(&self, visibility: Duration) -> Instant {
        self.until()
            .checked_sub(visibility / 2)
            .unwrap_or_else(Instant::now)
    }

    fn renewed(&self, leased: Leased) {
        if let Ok(mut current) = self.current.lock() {
            *current = leased;
        }
        self.receipt_uncertain.store(false, Ordering::Relaxed);
    }

    /// Notes the end of an Update that failed: if it may have been applied, the receipt is
    /// now uncertain.
    fn update_failed(&self, error: &QueueError) {
        if error.maybe_applied() {
            self.receipt_uncertain.store(true, Ordering::Relaxed);
        }
    }
}

/// A received message in the handler's hands: its lease, and its place in the in-flight gauge
/// until it is done.
pub(crate) struct Member {
    message: ReceivedMessage,
    lease: Lease,
    _in_flight: InFlightGuard,
}

/// What a received message needs next.
enum Next {
    /// A POST of this event.
    Deliver(Event),
    /// No POST.
    Settle(Settlement),
}

/// Why a message needs no POST.
pub(crate) enum Settlement {
    /// This process delivered it before (its delete had failed): delete it now.
    Redelivered,
    /// It cannot become an event: carry out this decision.
    Unmappable(Decision),
}

/// Batched mode's unit of work (see [`Handler::batch_up`]): the messages of one batch, with
/// their entries, or one message that needs no POST. A unit holds one delivery slot per
/// message.
pub(crate) enum Work {
    Post {
        members: Vec<Member>,
        entries: Vec<Vec<u8>>,
        /// Each member's span (the trace context its entry carries), when trace context is on.
        spans: Vec<Option<Span>>,
    },
    Alone(Member, Settlement),
}

impl Work {
    /// The text length of each of its messages (for the message-bytes budget).
    pub(crate) fn sizes(&self) -> Vec<usize> {
        match self {
            Work::Post { members, .. } => members.iter().map(|m| m.message.text.len()).collect(),
            Work::Alone(member, _) => vec![member.message.text.len()],
        }
    }
}

/// Handles messages. Cheap to clone into each task.
#[derive(Clone)]
pub(crate) struct Handler {
    queue: Queue,
    poison: PoisonQueue,
    mapper: Arc<EventMapper>,
    deliverer: Deliverer,
    policy: RetryPolicy,
    visibility_timeout: Duration,
    batch: BatchConfig,
    gate: Arc<EndpointGate>,
    acknowledged: Arc<Acknowledged>,
}

impl Handler {
    pub(crate) fn new(
        queue: Queue,
        poison: PoisonQueue,
        mapper: EventMapper,
        deliverer: Deliverer,
        policy: RetryPolicy,
        visibility_timeout: Duration,
        batch: BatchConfig,
    ) -> Self {
        Self {
            queue,
            poison,
            mapper: Arc::new(mapper),
            deliverer,
            policy,
            visibility_timeout,
            batch,
            gate: Arc::default(),
            acknowledged: Arc::default(),
        }
    }

    /// The endpoint's connection health, shared with the pump.
    pub(crate) fn gate(&self) -> Arc<EndpointGate> {
        self.gate.clone()
    }

    pub(crate) fn deliverer(&self) -> &Deliverer {
        &self.deliverer
    }

    /// Delivers `message`, leased until `leased_until`, in delivery `slot`, and carries out
    /// the decision; the slot is given back as soon as the endpoint is done with the message
    /// (the queue work after it runs on the settling budget). `hard_stop` fires when the
    /// shutdown timeout has passed (or a second signal came): a POST still running is then
    /// abandoned and the message released.
    pub(crate) async fn handle(
        &self,
        message: ReceivedMessage,
        leased_until: Instant,
        hard_stop: Shutdown,
        slot: DeliverySlot,
    ) -> Disposition {
        // The member is taken apart, its in-flight guard kept until the message is done.
        let (
            Member {
                message,
                lease,
                _in_flight: _counted,
            },
            next,
        ) = self.prepare(message, leased_until);
        let event = match next {
            Next::Deliver(event) => event,
            Next::Settle(settlement) => {
                let _settling = slot.settle().await;
                return self.settle(settlement, &message, &lease).await;
            }
        };
        // One trace per message, a new span for every attempt (unless TRACE_CONTEXT=off).
        let (traceparent, tracestate) = event.trace_extension();
        let span = self
            .deliverer
            .trace(&message.id, traceparent, tracestate)
            .as_ref()
            .map(Trace::new_span);
        let payload = event.encode(self.mapper.mode());
        let Some((outcome, latency)) = self
            .attempt(&message, &lease, payload, span.as_ref(), hard_stop)
            .await
        else {
            return self.release(&message, &lease).await;
        };
        self.gate.record(&outcome);
        self.conclude(message, &lease, &outcome, latency, span.as_ref(), slot)
            .await
    }

    /// Whether events go out in batched mode ([`Handler::batch_up`], [`Handler::handle_work`]).
    pub(crate) fn batched(&self) -> bool {
        self.mapper.mode() == ContentMode::Batched
    }

    /// Batched mode: the messages of one receive, leased until `leased_until`, as batches
    /// (`CE_BATCH_SIZE`, `CE_BATCH_MAX_BYTES`, in receive order), and the messages that need
    /// no POST (delivered before, or unable to become an event), each on its own. No batch has
    /// more than `max_events` entries: a batch holds one delivery slot per message while its
    /// POSTs run, so it may not need more than `MAX_IN_FLIGHT`.
    pub(crate) fn batch_up(
        &self,
        messages: Vec<ReceivedMessage>,
        leased_until: Instant,
        max_events: usize,
    ) -> Vec<Work> {
        let mut work = Vec::new();
        let (mut members, mut entries, mut spans) = (Vec::new(), Vec::new(), Vec::new());
        for message in messages {
            match self.prepare(message, leased_until) {
                (member, Next::Deliver(event)) => {
                    let (entry, span) = self.batch_entry(&member.message, event);
                    entries.push(entry);
                    spans.push(span);
                    members.push(member);
                }
                (member, Next::Settle(settlement)) => work.push(Work::Alone(member, settlement)),
            }
        }
        let lens: Vec<usize> = entries.iter().map(Vec::len).collect();
        let (mut members, mut entries, mut spans) =
            (members.into_iter(), entries.into_iter(), spans.into_iter());
        for range in batch::group(
            &lens,
            self.batch.max_events.min(max_events.max(1)),
            self.batch.max_bytes,
        ) {
            work.push(Work::Post {
                members: members.by_ref().take(range.len()).collect(),
                entries: entries.by_ref().take(range.len()).collect(),
                spans: spans.by_ref().take(range.len()).collect(),
            });
        }
        work
    }

    /// One message's entry in a batch: the structured-mode document of its event, carrying its
    /// trace context as the CloudEvents distributed-tracing extension (a batch POST carries
    /// many messages, so request headers cannot carry any one message's), and that span.
    fn batch_entry(&self, message: &ReceivedMessage, mut event: Event) -> (Vec<u8>, Option<Span>) {
        let (traceparent, tracestate) = event.trace_extension();
        let Some(trace) = self.deliverer.trace(&message.id, traceparent, tracestate) else {
            return (event.batch_entry(), None);
        };
        let entry = trace.entry_span(traceparent);
        if entry.set_extension {
            let state = entry.span.tracestate().map(str::to_string);
            event.set_trace_extension(entry.span.traceparent(), state.as_deref());
        }
        (event.batch_entry(), Some(entry.span))
    }

    /// Carries out one piece of batched work (see [`Handler::batch_up`]) in its delivery
    /// `slots`, one per message: the POSTs of a batch, bisected on a permanent failure, with
    /// every message's lease kept meanwhile; then each message's own decision, as for a single
    /// message, each giving its slot back once it has a settling permit. `hard_stop` cuts the
    /// POSTs off: messages without an outcome yet are released, the others carried out.
    pub(crate) async fn handle_work(
        &self,
        work: Work,
        hard_stop: Shutdown,
        slots: Vec<DeliverySlot>,
    ) -> Vec<Disposition> {
        let (members, entries, spans) = match work {
            Work::Alone(member, settlement) => {
                let _settling = match slots.into_iter().next() {
                    Some(slot) => Some(slot.settle().await),
                    None => None,
                };
                return vec![
                    self.settle(settlement, &member.message, &member.lease)
                        .await,
                ];
            }
            Work::Post {
                members,
                entries,
                spans,
            } => (members, entries, spans),
        };
        let outcomes = self.post_batch(&members, &entries, hard_stop).await;
        drop(entries);
        join_all(members.into_iter().zip(outcomes).zip(spans).zip(slots).map(
            |(((member, outcome), span), slot)| async move {
                // The in-flight guard is kept until the message is done.
                let Member {
                    message,
                    lease,
                    _in_flight: _counted,
                } = member;
                match outcome {
                    // The log lines name the span the message's entry carried.
                    Some((outcome, latency)) => {
                        self.conclude(message, &lease, &outcome, latency, span.as_ref(), slot)
                            .await
                    }
                    None => self.release(&message, &lease).await,
                }
            },
        ))
        .await
    }

    /// A piece of batched work whose delivery never started (a hard stop came before its
    /// slots): every message is released.
    pub(crate) async fn release_work(&self, work: Work) -> Vec<Disposition> {
        let members = match work {
            Work::Post { members, .. } => members,
            Work::Alone(member, _) => vec![member],
        };
        join_all(
            members
                .iter()
                .map(|member| self.release(&member.message, &member.lease)),
        )
        .await
    }

    /// The POSTs of one batch (see [`batch::Bisection`]) with the leases of all its messages
    /// kept while any of them runs; each message's outcome and the latency of the POST that
    /// decided it, `None` for messages a hard stop left without one.
    async fn post_batch(
        &self,
        members: &[Member],
        entries: &[Vec<u8>],
        mut hard_stop: Shutdown,
    ) -> Vec<Option<(Outcome, Duration)>> {
        let (stop_renewing, renewing) = shutdown::channel();
        let posts = async {
            let mut outcomes = vec![None; entries.len()];
            let mut bisection = batch::Bisection::new(entries.len());
            while let Some(range) = bisection.next() {
                let payload = event::batch(&entries[range.clone()]);
                let bytes = payload.body.len();
                let started = Instant::now();
                let outcome = tokio::select! {
                    outcome = self.deliverer.deliver(payload, None) => outcome,
                    _ = hard_stop.wait() => break,
                };
                let latency = started.elapsed();
                self.gate.record(&outcome);
                let split = matches!(outcome, Outcome::Permanent { .. })
                    && bisection.rejected(range.clone());
                let (status, _) = outcome.status_labels();
                BatchSent {
                    events: range.len(),
                    bytes,
                    outcome: outcome.label(),
                    status: &status,
                    latency,
                    split,
                }
                .emit();
                if !split {
                    for slot in &mut outcomes[range] {
                        *slot = Some((outcome.clone(), latency));
                    }
                }
            }
            // As for one message: a renewal in flight is finished first (see `attempt`).
            stop_renewing.trigger();
            outcomes
        };
        let renewals = join_all(
            members
                .iter()
                .map(|member| self.keep_leased(&member.message, &member.lease, renewing.clone())),
        );
        let (outcomes, _) = tokio::join!(posts, renewals);
        outcomes
    }

    /// A received message with its lease, counted as in flight until it is done, and what it
    /// needs next.
    fn prepare(&self, message: ReceivedMessage, leased_until: Instant) -> (Member, Next) {
        let in_flight = InFlightGuard::new();
        let lease = Lease::new(&message.pop_receipt, leased_until);
        let next = if self.acknowledged.contains(&message.id) {
            Next::Settle(Settlement::Redelivered)
        } else {
            match self.mapper.to_event(&message) {
                Ok(event) => {
                    self.report_notice(&message, &event);
                    Next::Deliver(event)
                }
                Err(error) => {
                    let reason = error.to_string();
                    MessageUnmappable {
                        message_id: &message.id,
                        dequeue_count: message.dequeue_count,
                        reason: &reason,
                    }
                    .emit();
                    Next::Settle(Settlement::Unmappable(self.policy.undeliverable(reason)))
                }
            }
        };
        let member = Member {
            message,
            lease,
            _in_flight: in_flight,
        };
        (member, next)
    }

    /// Carries out what a message that needs no POST needs.
    async fn settle(
        &self,
        settlement: Settlement,
        message: &ReceivedMessage,
        lease: &Lease,
    ) -> Disposition {
        match settlement {
            Settlement::Redelivered => self.delete_acknowledged(message, lease).await,
            Settlement::Unmappable(decision) => self.carry_out(decision, message, lease).await,
        }
    }

    fn report_notice(&self, message: &ReceivedMessage, event: &Event) {
        match event.notice() {
            Some(Notice::InvalidEvent { looks_like, reason }) => InvalidEventWrapped {
                message_id: &message.id,
                looks_like,
                reason,
            }
            .emit(),
            Some(Notice::Base64Event { looks_like }) => Base64EventNoticed {
                message_id: &message.id,
                looks_like,
            }
            .emit(),
            None => {}
        }
    }

    /// After a delivery attempt: counts it (one per message, in batched mode too), asks the
    /// policy, gives the message's delivery `slot` back once it has a settling permit, and
    /// carries out the decision.
    async fn conclude(
        &self,
        mut message: ReceivedMessage,
        lease: &Lease,
        outcome: &Outcome,
        latency: Duration,
        span: Option<&Span>,
        slot: DeliverySlot,
    ) -> Disposition {
        let (status, status_class) = outcome.status_labels();
        let error = outcome.failure().map(Failure::describe);
        DeliveryAttempted {
            message_id: &message.id,
            dequeue_count: message.dequeue_count,
            outcome: outcome.label(),
            status: &status,
            status_class: &status_class,
            error: error.as_ref().map(|e| e as &dyn std::fmt::Display),
            latency,
            age: message.insertion_time.map(age),
            trace_id: span.as_ref().map(|s| s.trace_id.as_str()),
            span_id: span.as_ref().map(|s| s.span_id.as_str()),
        }
        .emit();
        let decision = self.policy.decide(message.dequeue_count, outcome);
        if !matches!(decision, Decision::Poison(_)) {
            // Only a poison copy needs the text again: a big body is not held while settling.
            message.text = String::new();
        }
        let _settling = slot.settle().await;
        self.carry_out(decision, &message, lease).await
    }

    /// The POST and how long it took, with the lease kept while it runs. `None` if
    /// `hard_stop` cut it off.
    async fn attempt(
        &self,
        message: &ReceivedMessage,
        lease: &Lease,
        payload: crate::pipeline::event::HttpPayload,
        span: Option<&Span>,
        mut hard_stop: Shutdown,
    ) -> Option<(Outcome, Duration)> {
        let (stop_renewing, renewing) = shutdown::channel();
        let post = async {
            let started = Instant::now();
            let outcome = tokio::select! {
                outcome = self.deliverer.deliver(payload, span) => Some((outcome, started.elapsed())),
                _ = hard_stop.wait() => None,
            };
            // A renewal in flight is not abandoned: `keep_leased` finishes it first, since
            // its answer holds the receipt everything after this needs.
            stop_renewing.trigger();
            outcome
        };
        let (outcome, ()) = tokio::join!(post, self.keep_leased(message, lease, renewing));
        outcome
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
                false => {
                    self.acknowledged.remember(&message.id);
                    Disposition::DeliveredNotDeleted
                }
            },
            Decision::Retry { delay, failure } => {
                self.schedule_retry(message, lease, delay, failure.as_ref())
                    .await
            }
            Decision::Poison(reason) => self.poison(message, lease, &reason).await,
        }
    }

    /// A message this process delivered came back (its delete had failed): delete it now.
    async fn delete_acknowledged(&self, message: &ReceivedMessage, lease: &Lease) -> Disposition {
        RedeliveryAvoided {
            message_id: &message.id,
            dequeue_count: message.dequeue_count,
        }
        .emit();
        match self.delete(message, lease).await {
            true => {
                self.acknowledged.forget(&message.id);
                Disposition::RedeliveryAvoided
            }
            false => Disposition::DeliveredNotDeleted,
        }
    }

    /// Renews the lease whenever half of it has passed, until `stop` fires. A renewal under way
    /// when `stop` fires is finished first. Gives up only when renewing is impossible (the
    /// message is someone else's, or Update Message is not allowed).
    async fn keep_leased(&self, message: &ReceivedMessage, lease: &Lease, mut stop: Shutdown) {
        let mut failing = false;
        loop {
            let next = match failing {
                false => lease.renew_at(self.visibility_timeout),
                true => Instant::now() + LATE_RENEWAL_INTERVAL,
            };
            tokio::select! {
                _ = tokio::time::sleep_until(next.into()) => {}
                _ = stop.wait() => return,
            }
            match self.renew(message, lease).await {
                Ok(()) => failing = false,
                Err(error) if error.is_transient() => {
                    // Tried until the lease ran out. The receipt still works until another
                    // consumer receives the message, so keep trying, more slowly; said once.
                    if !failing {
                        QueueCallFailed {
                            failure: error.failure(),
                            message_id: &message.id,
                            retry_in: Some(LATE_RENEWAL_INTERVAL),
                        }
                        .emit();
                    }
                    failing = true;
                }
                Err(error) => {
                    self.report_failure(&error, message, lease);
                    return;
                }
            }
        }
    }

    /// One renewal, retried until shortly before the lease ends.
    async fn renew(&self, message: &ReceivedMessage, lease: &Lease) -> Result<(), QueueError> {
        let leased = self
            .queue
            .update_within(
                &message.id,
                &lease.receipt(),
                self.visibility_timeout,
                Budget::until(lease.deadline()),
            )
            .await
            .inspect_err(|error| lease.update_failed(error))?;
        lease.renewed(leased);
        LeaseRenewed {
            message_id: &message.id,
        }
        .emit();
        Ok(())
    }

    /// Deletes a delivered (or poisoned) message; true if it is gone.
    ///
    /// Tries until the lease is half gone, then renews it and goes on, for up to
    /// [`DELETE_PATIENCE`]. If renewing fails, the old receipt is used until then: it stays
    /// valid until another consumer receives the message.
    async fn delete(&self, message: &ReceivedMessage, lease: &Lease) -> bool {
        let give_up = Instant::now() + DELETE_PATIENCE;
        // A try whose answer was lost may have deleted the message.
        let mut maybe_deleted = false;
        let mut renewable = true;
        loop {
            let budget = match renewable {
                true => Budget::until(
                    lease
                        .renew_at(self.visibility_timeout)
                        .max(Instant::now() + LEASE_MARGIN)
                        .min(give_up),
                ),
                false => Budget::until(give_up),
            };
            let error = match self
                .queue
                .delete_within(&message.id, &lease.receipt(), budget)
                .await
            {
                Ok(deleted) => return self.deleted(message, deleted == Deleted::ByEarlierTry),
                Err(error) if error.is_message_not_found() && maybe_deleted => {
                    return self.deleted(message, true)
                }
                Err(error) => error,
            };
            maybe_deleted |= error.maybe_applied();
            if !error.is_transient() || !renewable || Instant::now() >= give_up {
                self.report_failure(&error, message, lease);
                return false;
            }
            // The queue keeps failing the delete: keep the lease, then try again.
            match self.renew(message, lease).await {
                Ok(()) => {}
                Err(error) if error.is_message_not_found() && maybe_deleted => {
                    return self.deleted(message, true)
                }
                Err(error) if error.kind == QueueErrorKind::MessageGone => {
                    self.report_failure(&error, message, lease);
                    return false;
                }
                Err(error) => {
                    self.report_failure(&error, message, lease);
                    renewable = false;
                }
            }
        }
    }

    fn deleted(&self, message: &ReceivedMessage, by_earlier_try: bool) -> bool {
        MessageDeleted {
            message_id: &message.id,
            by_earlier_try,
        }
        .emit();
        true
    }

    /// Hides a failed message until its next attempt.
    async fn schedule_retry(
        &self,
        message: &ReceivedMessage,
        lease: &Lease,
        delay: Duration,
        failure: Option<&Failure>,
    ) -> Disposition {
        let result = self
            .queue
            .update_within(
                &message.id,
                &lease.receipt(),
                delay,
                Budget::until(lease.deadline()),
            )
            .await;
        match result {
            Ok(leased) => lease.renewed(leased),
            // An earlier try was applied (its answer was lost): the message is hidden as
            // asked; only its new receipt is unknown, and nothing here needs it any more.
            Err(error) if applied_before(&error) => {}
            Err(error) => {
                self.report_failure(&error, message, lease);
                return Disposition::Left;
            }
        }
        RetryScheduled {
            message_id: &message.id,
            dequeue_count: message.dequeue_count,
            failure: &retry_label(failure),
            delay,
        }
        .emit();
        Disposition::RetryScheduled
    }

    /// Confirms the message is still ours, writes it to the poison queue, then deletes it. If
    /// the poison queue cannot be written, the message stays in the main queue (hidden for a
    /// retry delay, so a message that cannot be poisoned does not spin).
    async fn poison(
        &self,
        message: &ReceivedMessage,
        lease: &Lease,
        reason: &PoisonReason,
    ) -> Disposition {
        // Ownership first, and a full lease for the write and the delete: a copy of a message
        // another consumer now holds would be a spurious poison message.
        match self.renew(message, lease).await {
            Ok(()) => {}
            Err(error) if error.kind == QueueErrorKind::Unauthorized => {
                // No right to update: ownership cannot be confirmed; go on while the lease
                // from the receive should still hold.
                self.update_denied();
                if Instant::now() >= lease.deadline() {
                    return Disposition::Left;
                }
            }
            Err(error) => {
                self.report_failure(&error, message, lease);
                return Disposition::Left;
            }
        }
        let text = envelope(
            self.queue.name(),
            message,
            reason,
            OffsetDateTime::now_utc(),
        );
        let wrapped = text != message.text || message.text.is_empty();
        match self
            .poison
            .put(&text, Budget::until(lease.deadline()))
            .await
        {
            Ok(()) => {
                MessagePoisoned {
                    message_id: &message.id,
                    dequeue_count: message.dequeue_count,
                    reason: reason.label(),
                    error: &reason.describe(),
                    poison_queue: self.poison.name(),
                    envelope: wrapped,
                }
                .emit();
                if self.delete(message, lease).await {
                    Disposition::Poisoned
                } else {
                    PoisonedNotDeleted {
                        message_id: &message.id,
                        poison_queue: self.poison.name(),
                    }
                    .emit();
                    Disposition::PoisonedNotDeleted
                }
            }
            Err(error) => {
                PoisonBlocked {
                    message_id: &message.id,
                    poison_queue: self.poison.name(),
                    cause: error.cause(),
                    error: &error,
                }
                .emit();
                let delay = self.policy.backoff(message.dequeue_count);
                self.schedule_retry(message, lease, delay, reason.failure())
                    .await
            }
        }
    }

    /// Makes the message visible at once, for another consumer.
    async fn release(&self, message: &ReceivedMessage, lease: &Lease) -> Disposition {
        let result = self
            .queue
            .update_within(
                &message.id,
                &lease.receipt(),
                Duration::ZERO,
                Budget::retry_for(RELEASE_WINDOW, RELEASE_WINDOW),
            )
            .await;
        match result {
            Ok(_) => {}
            Err(error) if applied_before(&error) => {}
            Err(error) => {
                self.report_failure(&error, message, lease);
                return Disposition::Left;
            }
        }
        MessageReleased {
            message_id: &message.id,
        }
        .emit();
        Disposition::Released
    }

    /// Releases a message that was received but not started (an immediate stop came first).
    pub(crate) async fn release_unstarted(
        &self,
        message: ReceivedMessage,
        leased_until: Instant,
    ) -> Disposition {
        let lease = Lease::new(&message.pop_receipt, leased_until);
        self.release(&message, &lease).await
    }

    fn report_failure(&self, error: &QueueError, message: &ReceivedMessage, lease: &Lease) {
        match error.kind {
            QueueErrorKind::MessageGone => LeaseLost {
                message_id: &message.id,
                operation: error.operation.as_str(),
                receipt_lost: applied_before(error)
                    || (lease.receipt_uncertain() && !error.is_message_not_found()),
            }
            .emit(),
            QueueErrorKind::Unauthorized if error.operation == Operation::Update => {
                self.update_denied()
            }
            _ => QueueCallFailed {
                failure: error.failure(),
                message_id: &message.id,
                retry_in: None,
            }
            .emit(),
        }
    }

    fn update_denied(&self) {
        Degraded {
            feature: "update_message",
            consequence: "no lease renewal and no retry delays: failed messages come back when VISIBILITY_TIMEOUT expires (grant 'u' in the SAS or Storage Queue Data Contributor)",
        }
        .emit();
    }
}

/// `PopReceiptMismatch` on an Update retried after a try whose answer was lost: that try was
/// applied, and the receipt it produced is unknown.
fn applied_before(error: &QueueError) -> bool {
    error.operation == Operation::Update
        && error.kind == QueueErrorKind::MessageGone
        && !error.is_message_not_found()
        && error.earlier_try_unknown
}

/// Time since `inserted`, zero if the clocks disagree.
fn age(inserted: OffsetDateTime) -> Duration {
    (OffsetDateTime::now_utc() - inserted)
        .try_into()
        .unwrap_or(Duration::ZERO)
}

/// Runs `futures` concurrently on the current task; their outputs in order. (The handful of
/// futures of one batch, polled together: no extra task, no extra dependency.)
async fn join_all<F: Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut running: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = running.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in running.iter_mut().zip(outputs.iter_mut()) {
            if output.is_some() {
                continue;
            }
            match future.as_mut().poll(cx) {
                Poll::Ready(value) => *output = Some(value),
                Poll::Pending => pending = true,
            }
        }
        match pending {
            true => Poll::Pending,
            false => Poll::Ready(()),
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
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
    fn acknowledged_ids_are_remembered_until_forgotten_and_bounded() {
        let acknowledged = Acknowledged::default();
        assert!(!acknowledged.contains("a"));
        acknowledged.remember("a");
        assert!(acknowledged.contains("a"));
        acknowledged.forget("a");
        assert!(!acknowledged.contains("a"));
        for n in 0..ACKNOWLEDGED_CAPACITY + 10 {
            acknowledged.remember(&n.to_string());
        }
        let held = acknowledged.delivered_at.lock().expect("lock").len();
        assert_eq!(held, ACKNOWLEDGED_CAPACITY);
        assert!(acknowledged.contains(&(ACKNOWLEDGED_CAPACITY + 9).to_string()));
    }
}
