//! The Prometheus metrics registry.
//!
//! One process-wide instance ([`metrics`]), because the events that update it are emitted from
//! everywhere and threading a handle through every function would add noise, not safety.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::sync::OnceLock;

/// Label pairs of a metric family.
pub(crate) type Labels = Vec<(&'static str, String)>;

/// A histogram family's constructor (a plain function, so the family's type can be named).
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// Every metric the sidecar exports. Counters are exported with the OpenMetrics `_total`
/// suffix, e.g. `azure_queue_sidecar_messages_received_total`.
pub(crate) struct Metrics {
    registry: Registry,
    pub messages_received: Counter,
    pub deliveries: Family<Labels, Counter>,
    pub messages_deleted: Counter,
    /// Delivered messages that came back (their delete had failed) and were deleted without
    /// a second delivery.
    pub redeliveries_avoided: Counter,
    pub queue_errors: Family<Labels, Counter>,
    pub leases_lost: Family<Labels, Counter>,
    pub retries: Family<Labels, Counter>,
    pub poisoned: Family<Labels, Counter>,
    pub released: Counter,
    pub lease_renewals: Counter,
    pub in_flight: Gauge,
    pub delivery_seconds: Histogram,
    pub message_age_seconds: Histogram,
    /// Queue call latency by operation, failures included.
    pub queue_call_seconds: HistogramFamily,
    /// The queue's approximate message count, visible and invisible.
    pub queue_messages: Gauge,
    /// The age of the message at the front of the queue (0 when none is visible).
    pub oldest_message_age_seconds: Gauge,
    /// Microsoft Entra ID token requests by identity and outcome.
    pub token_requests: Family<Labels, Counter>,
    /// Failed token endpoint calls by identity and status.
    pub token_endpoint_errors: Family<Labels, Counter>,
    /// Endpoint bearer tokens that could not be obtained, by source.
    pub endpoint_token_failures: Family<Labels, Counter>,
    /// Endpoint bearer tokens that changed (a rotated file, a refreshed Entra token), by source.
    pub endpoint_token_changes: Family<Labels, Counter>,
    /// Poison copies written whose message could not be deleted from the main queue.
    pub poisoned_not_deleted: Counter,
    /// Messages that looked like a CloudEvent or an Event Grid event but were not valid ones.
    pub invalid_events_wrapped: Counter,
    /// 1 once a message was base64 of an event while `DECODE_BASE64` is off.
    pub decode_base64_hint: Gauge,
    /// Poison writes that could not happen, by cause (`missing`, `denied`, `failed`).
    pub poison_blocked: Family<Labels, Counter>,
    /// Features that fell back for lack of a permission (1 once degraded).
    pub degraded: Family<Labels, Gauge>,
    /// 1 while receiving is paused because the endpoint is down.
    pub receiving_paused: Gauge,
    /// Iterations (and waits) of the receive loop.
    pub receive_loop_heartbeats: Counter,
    /// 1 while the liveness probe fails.
    pub receive_loop_stalled: Gauge,
    /// `EXIT_WHEN_IDLE` ended the run (0 or 1).
    pub idle_exits: Counter,
    /// Where the admin server listens (1 per address).
    pub admin: Family<Labels, Gauge>,
    /// Admin connections that failed (hung up, garbage, too slow).
    pub admin_connection_errors: Counter,
    /// See [`ShutdownPhase`].
    shutdown_phase: Gauge,
    /// Events per POST in batched mode.
    pub batch_size: Histogram,
    /// Batched POSTs rejected permanently and split in halves.
    pub batch_bisections: Counter,
}

/// How far shutdown has gone, as the `shutdown_phase` gauge shows it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ShutdownPhase {
    /// The first signal: no new messages, deliveries in progress finish.
    Draining = 1,
    /// A second signal: deliveries in progress are cut off.
    StoppingNow = 2,
    /// The drain is over; the process exits.
    Drained = 3,
}

/// Queue call latency buckets: 1 ms .. ~65 s.
fn queue_call_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("azure_queue_sidecar");
        let metrics = Self {
            messages_received: Counter::default(),
            deliveries: Family::default(),
            messages_deleted: Counter::default(),
            redeliveries_avoided: Counter::default(),
            queue_errors: Family::default(),
            leases_lost: Family::default(),
            retries: Family::default(),
            poisoned: Family::default(),
            released: Counter::default(),
            lease_renewals: Counter::default(),
            in_flight: Gauge::default(),
            // 1 ms .. ~65 s
            delivery_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            // 10 ms .. ~3 days
            message_age_seconds: Histogram::new(exponential_buckets(0.01, 4.0, 14)),
            queue_call_seconds: Family::new_with_constructor(queue_call_histogram),
            queue_messages: Gauge::default(),
            oldest_message_age_seconds: Gauge::default(),
            token_requests: Family::default(),
            token_endpoint_errors: Family::default(),
            endpoint_token_failures: Family::default(),
            endpoint_token_changes: Family::default(),
            poisoned_not_deleted: Counter::default(),
            invalid_events_wrapped: Counter::default(),
            decode_base64_hint: Gauge::default(),
            poison_blocked: Family::default(),
            degraded: Family::default(),
            receiving_paused: Gauge::default(),
            receive_loop_heartbeats: Counter::default(),
            receive_loop_stalled: Gauge::default(),
            idle_exits: Counter::default(),
            admin: Family::default(),
            admin_connection_errors: Counter::default(),
            shutdown_phase: Gauge::default(),
            // 1, 2, 4, ..., 32 events
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 6)),
            batch_bisections: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "messages_received",
            "Messages received from the queue",
            metrics.messages_received.clone(),
        );
        registry.register(
            "deliveries",
            "Delivery attempts by outcome (delivered, retryable, permanent) and status class",
            metrics.deliveries.clone(),
        );
        registry.register(
            "messages_deleted",
            "Messages deleted from the queue after delivery",
            metrics.messages_deleted.clone(),
        );
        registry.register(
            "redeliveries_avoided",
            "Messages that came back after this process delivered them (their delete had failed) and were deleted instead of delivered again",
            metrics.redeliveries_avoided.clone(),
        );
        registry.register(
            "queue_errors",
            "Failed queue calls by operation and kind",
            metrics.queue_errors.clone(),
        );
        registry.register(
            "leases_lost",
            "Messages whose lease was lost (PopReceiptMismatch/MessageNotFound) by operation",
            metrics.leases_lost.clone(),
        );
        registry.register(
            "retries_scheduled",
            "Failed deliveries scheduled for a later retry, by failure (status, timeout, connection, dropped, unsendable; undeliverable for a message that cannot become a request)",
            metrics.retries.clone(),
        );
        registry.register(
            "messages_poisoned",
            "Messages moved to the poison queue, by reason",
            metrics.poisoned.clone(),
        );
        registry.register(
            "messages_released",
            "Messages made visible again at shutdown",
            metrics.released.clone(),
        );
        registry.register(
            "lease_renewals",
            "Visibility extensions of messages whose delivery outlasted half the lease",
            metrics.lease_renewals.clone(),
        );
        registry.register(
            "in_flight",
            "Deliveries in progress",
            metrics.in_flight.clone(),
        );
        registry.register(
            "delivery_duration_seconds",
            "Time from POST to the endpoint's answer",
            metrics.delivery_seconds.clone(),
        );
        registry.register(
            "message_age_seconds",
            "Time from enqueue to successful delivery",
            metrics.message_age_seconds.clone(),
        );
        registry.register(
            "messages_poisoned_not_deleted",
            "Messages written to the poison queue whose delete from the main queue then failed: they come back and are poisoned again (a second copy)",
            metrics.poisoned_not_deleted.clone(),
        );
        registry.register(
            "poison_blocked",
            "Messages that should have been poisoned but stayed in the main queue, by cause (missing: no poison queue; denied: no permission to write it; failed: another error)",
            metrics.poison_blocked.clone(),
        );
        metrics.register_operability(&mut registry);
        metrics.register_identity(&mut registry);
        metrics.register_events(&mut registry);
        metrics.register_lifecycle(&mut registry);
        metrics.register_batches(&mut registry);
        Self {
            registry,
            ..metrics
        }
    }

    /// Registers the queue-call latency, the queue length and the build info.
    fn register_operability(&self, registry: &mut Registry) {
        registry.register(
            "queue_call_duration_seconds",
            "Queue service call latency by operation, failures included",
            self.queue_call_seconds.clone(),
        );
        registry.register(
            "queue_approximate_messages",
            "The queue's approximate message count (visible and invisible), polled every QUEUE_LENGTH_INTERVAL",
            self.queue_messages.clone(),
        );
        registry.register(
            "queue_oldest_message_age_seconds",
            "Age of the oldest visible message (the front of the queue, from Peek Messages; leased and retry-delayed messages are not visible), 0 when none is visible; polled every QUEUE_LENGTH_INTERVAL",
            self.oldest_message_age_seconds.clone(),
        );
        registry.register(
            "build",
            "The sidecar's version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
    }

    /// Registers the state of the loop, the admin server and shutdown.
    fn register_lifecycle(&self, registry: &mut Registry) {
        registry.register(
            "degraded",
            "Features that fell back because the queue service refused an operation with 403 (1 once degraded), by feature",
            self.degraded.clone(),
        );
        registry.register(
            "receiving_paused",
            "1 while receiving is paused because the endpoint refuses connections",
            self.receiving_paused.clone(),
        );
        registry.register(
            "receive_loop_heartbeats",
            "Iterations of the receive loop, and its periodic heartbeats while it waits for free delivery slots",
            self.receive_loop_heartbeats.clone(),
        );
        registry.register(
            "receive_loop_stalled",
            "1 while the liveness probe fails (the receive loop made no progress within its limit)",
            self.receive_loop_stalled.clone(),
        );
        registry.register(
            "shutdown_phase",
            "0 running, 1 draining after a signal, 2 cutting deliveries off (second signal), 3 drained",
            self.shutdown_phase.clone(),
        );
        registry.register(
            "idle_exits",
            "Runs ended by EXIT_WHEN_IDLE (no message received for that long, nothing in flight)",
            self.idle_exits.clone(),
        );
        registry.register(
            "admin",
            "Where the admin server listens (1 per address)",
            self.admin.clone(),
        );
        registry.register(
            "admin_connection_errors",
            "Admin connections that failed (the client hung up, sent garbage or was too slow)",
            self.admin_connection_errors.clone(),
        );
    }

    /// Records how far shutdown has gone.
    pub(crate) fn set_shutdown_phase(&self, phase: ShutdownPhase) {
        self.shutdown_phase.set(phase as i64);
    }

    fn register_identity(&self, registry: &mut Registry) {
        registry.register(
            "token_requests",
            "Microsoft Entra ID token requests by identity and outcome (acquired, failed)",
            self.token_requests.clone(),
        );
        registry.register(
            "token_endpoint_errors",
            "Failed token endpoint calls (each retry counts) by identity and status",
            self.token_endpoint_errors.clone(),
        );
        registry.register(
            "endpoint_token_failures",
            "Endpoint bearer tokens that could not be obtained (unreadable token file, no Entra ID token), by source",
            self.endpoint_token_failures.clone(),
        );
        registry.register(
            "endpoint_token_changes",
            "Endpoint bearer tokens that changed (rotated token file, refreshed Entra ID token), by source",
            self.endpoint_token_changes.clone(),
        );
    }

    fn register_events(&self, registry: &mut Registry) {
        registry.register(
            "invalid_events_wrapped",
            "Messages that looked like a CloudEvent or an Event Grid event but were not valid ones, delivered wrapped as data",
            self.invalid_events_wrapped.clone(),
        );
        registry.register(
            "decode_base64_hint",
            "1 once a message arrived that is base64 of a CloudEvent or an Event Grid event while DECODE_BASE64=false",
            self.decode_base64_hint.clone(),
        );
    }

    /// Registers batched mode's own metrics (its deliveries are counted per message, in
    /// `deliveries`).
    fn register_batches(&self, registry: &mut Registry) {
        registry.register(
            "batch_size",
            "Events per POST in batched mode (CE_MODE=batched), bisection POSTs included",
            self.batch_size.clone(),
        );
        registry.register(
            "batch_bisections",
            "Batched POSTs that failed permanently and were split in halves to find the rejected events",
            self.batch_bisections.clone(),
        );
    }

    /// The Prometheus text exposition of every metric.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// The process-wide metrics.
pub(crate) fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}
