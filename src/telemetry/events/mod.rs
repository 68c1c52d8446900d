//! Typed internal events: each writes its log line and updates its metrics in one place.
//!
//! Every observable happening in the sidecar is one struct here, grouped by area. Emitting it
//! writes the log line and bumps the metric together, so logs and metrics cannot disagree
//! (the pattern of vector's `internal_events`). Events are plain structs of primitive fields
//! (names, label values, counts, durations, error text as `Display`): telemetry names no
//! domain module, and the domain turns its own types into these fields.
//!
//! Fields are stable names (`message_id`, `dequeue_count`, `outcome`, `status`, `latency_ms`) so
//! that log queries keep working. Nothing here ever receives a pop receipt, key or SAS.
//!
//! An event that reports a failing state decides itself whether this one is news, through a
//! [`Tracker`](super::tracker::Tracker): the caller emits every failure, the metric counts
//! every failure, and the log gets one line per change of state. Some events also feed the
//! probes' state in [`super::health`], so the probes cannot disagree with the logs either.
//!
//! - [`queue`]: queue calls, their failures and retries, the queue length.
//! - [`message`]: one message's life — received, delivered, retried, deleted, its lease.
//! - [`poison`]: the poison queue, and features that fell back for lack of a permission.
//! - [`lifecycle`]: the receive loop, the endpoint pause, shutdown.
//! - [`admin`]: the admin server and the liveness probe.
//! - [`identity`]: Microsoft Entra ID tokens.
//! - [`endpoint_auth`]: the endpoint's bearer token (rotated, refreshed, unavailable).

mod admin;
mod endpoint_auth;
mod identity;
mod internal;
mod lifecycle;
mod message;
mod poison;
mod queue;

pub(crate) use admin::{AdminConnectionFailed, AdminServerStarted, LivenessChanged};
pub(crate) use endpoint_auth::{EndpointTokenChanged, EndpointTokenFailed};
pub(crate) use identity::{TokenAcquired, TokenEndpointAttemptFailed, TokenRequestFailed};
pub(crate) use internal::InternalEvent;
pub(crate) use lifecycle::{
    DrainFinished, EndpointDown, EndpointUp, IdleExit, PumpHeartbeat, ShutdownStarted,
    StopNowRequested,
};
pub(crate) use message::{
    Base64EventNoticed, BatchSent, DeliveryAttempted, InFlightChanged, InvalidEventWrapped,
    LeaseLost, LeaseRenewed, MessageDeleted, MessageReleased, MessageUnmappable, RedeliveryAvoided,
    RetryScheduled,
};
pub(crate) use poison::{Degraded, MessagePoisoned, PoisonBlocked, PoisonedNotDeleted};
pub(crate) use queue::{
    OldestMessageAgeObserved, QueueCallCompleted, QueueCallFailed, QueueCallRetried, QueueFailure,
    QueueLengthFailed, QueueLengthObserved, ReceiveFailed, ReceiveSucceeded,
};
