//! The message pipeline: from the queue to the endpoint and back.
//!
//! - [`pump`]: the receive loop — Gets overlapping when the queue has a backlog, idle
//!   backoff, the pause while the endpoint is down, graceful drain.
//! - [`capacity`]: the budgets — delivery slots (`MAX_IN_FLIGHT`, what the endpoint sees),
//!   settling (Deletes and retry delays on their own budget) and receive credits (prefetch).
//! - [`handler`]: one message's life — event, POST with lease renewal, then delete, retry
//!   later or poison, every queue call bounded by the message's lease.
//! - [`policy`]: the pure rules after an attempt — delete, retry (when), or poison.
//! - [`endpoint`]: the endpoint — one POST and the meaning of its answer, the probe of a down
//!   endpoint, and the gate that pauses receiving. Where requests to the endpoint get their
//!   headers (trace context, authorization) when they need more than the event's.
//! - [`event`]: queue message → CloudEvent → HTTP request parts.
//! - [`batch`]: batched mode's pure rules — which messages share a POST, and the bisection
//!   of a rejected batch.
//! - [`poison`]: the poison queue and its envelope format.
//! - [`trace`]: W3C trace context — one trace per message (its id from the message id, or
//!   the passed-through event's), one span per attempt.
//!
//! The pump owns the receive side and hands each message to the handler; the handler asks the
//! policy what to do and carries it out. Nothing here builds a client or reads a variable:
//! [`build`] gets both from the command that runs the pipeline.

pub(crate) mod batch;
pub(crate) mod capacity;
pub(crate) mod endpoint;
pub(crate) mod event;
pub(crate) mod handler;
pub(crate) mod poison;
pub(crate) mod policy;
pub(crate) mod pump;
pub(crate) mod trace;

use crate::auth::Storage;
use crate::config::Config;
use crate::queue::{QueueConnector, QueueError};
use endpoint::Deliverer;
use event::EventMapper;
use handler::Handler;
use poison::PoisonQueue;
use policy::RetryPolicy;
use pump::{Pump, PumpSettings};

/// The pump and everything it drives, for `config` and `storage`, with POSTs through
/// `deliverer` and queue clients from `queues`. No network call.
pub(crate) fn build(
    config: &Config,
    storage: &Storage,
    deliverer: Deliverer,
    queues: &QueueConnector,
) -> Result<Pump, QueueError> {
    let queue = queues.queue(storage.queue_url.clone())?;
    let poison = PoisonQueue::new(
        queues.queue(storage.poison_queue_url.clone())?,
        config.retry.create_poison_queue,
    );
    let handler = Handler::new(
        queue.clone(),
        poison,
        EventMapper::new(
            config.event.clone(),
            config.event.source_or(&storage.queue_url),
        ),
        deliverer,
        RetryPolicy::from_config(&config.retry),
        config.visibility_timeout,
        config.event.batch,
    );
    Ok(Pump::new(queue, handler, PumpSettings::from_config(config)))
}
