//! How much the pipeline holds at once: three budgets, so that a queue a round trip away does
//! not throttle the endpoint, and a slow endpoint does not pile up leased messages.
//!
//! - **Delivery slots** (`MAX_IN_FLIGHT`): POSTs open to the endpoint. A message holds a slot
//!   from the start of its delivery until the endpoint answered — not through the Delete,
//!   which is queue work the endpoint never sees.
//! - **Settling** (`SETTLE_FACTOR` = 2 x `MAX_IN_FLIGHT`): messages whose outcome is being carried
//!   out on the queue (Delete, retry delay, poison write). A message takes a settling permit
//!   *before* it gives its delivery slot back, so when the queue is slow to settle, deliveries
//!   wait rather than settled-but-not-deleted messages piling up without bound.
//! - **Receive credits** (up to 2 x `MAX_IN_FLIGHT`): messages asked for in Gets under way,
//!   received and waiting for a slot, or being delivered. A Get asks for as many messages as it
//!   holds credits. `MAX_IN_FLIGHT` of them are always usable; the rest — the prefetch — only as
//!   far as slots freed up during the last Get's round trip ([`Capacity::prefetch`]): with a
//!   fast endpoint, the next batch is on its way while the current one is delivered; with a
//!   slow one there is almost no prefetch, so no message waits leased for a slot for longer
//!   than about one round trip. Big messages are hardly prefetched ([`PREFETCH_BYTES`]).
//! - **Message bytes** (`MAX_IN_FLIGHT` x 64 KiB, the largest message Azure takes): the text of
//!   every message from the start of its delivery until it is settled. Small messages never
//!   reach it; big ones are bounded by it as they were when a slot covered the Delete too, so
//!   memory (bodies, connections, Deletes under way) stays that of `MAX_IN_FLIGHT` big messages.
//!
//! A batch (batched mode) holds one credit, one slot and its messages' bytes per message, and
//! takes its slots all at once; each message settles on its own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Settling permits per delivery slot. A Delete takes one queue round trip, a POST to a
/// nearby endpoint far less: with 2 x `MAX_IN_FLIGHT` Deletes under way, a queue 50 ms away
/// still settles over a thousand messages a second with the defaults. Not more: when the queue
/// service is the bottleneck, every call in flight adds to every call's latency, and a Delete
/// that waits too long loses its lease (4 x, with two replicas on an overloaded Azurite, made
/// Deletes take 13 s and let leases lapse: `faults::two_sidecars_share_2000_messages...`).
const SETTLE_FACTOR: usize = 2;

/// At most this many bytes of message text are received ahead (prefetched): 32 messages of
/// 8 KiB, 4 of 64 KiB. Each prefetched message is held two or three times over (the response,
/// the text, the request body) while it waits; 32 x 64 KiB of them took the peak RSS of the
/// 64 KiB benchmark from 12.4 to 15.5 MiB.
const PREFETCH_BYTES: usize = 256 * 1024;

/// Messages longer than this on average are not prefetched at all: with big messages the
/// memory of what waits leased for a slot costs more than the round trip it saves.
const NO_PREFETCH_ABOVE: usize = 16 * 1024;

/// A Get asks for at most this many bytes of message text (estimated from the last Get's
/// average): the whole response and the texts decoded from it are held at once, so 32 x 64 KiB
/// in one Get is a 4 MiB peak for a moment; 16 of them, half of that.
const GET_BYTES: usize = 1024 * 1024;

/// The message-bytes budget per delivery slot: the largest message text the queue service
/// accepts (64 KiB).
const BYTES_PER_SLOT: usize = 64 * 1024;

/// The three budgets, shared by the pump and its delivery tasks.
#[derive(Debug, Clone)]
pub(crate) struct Capacity {
    delivery: Arc<Semaphore>,
    settling: Arc<Semaphore>,
    credits: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    max_in_flight: usize,
    /// Deliveries finished so far (slots given back), for the prefetch estimate.
    finished: Arc<AtomicU64>,
}

impl Capacity {
    pub(crate) fn new(max_in_flight: usize) -> Self {
        let max_in_flight = max_in_flight.max(1);
        Self {
            delivery: Arc::new(Semaphore::new(max_in_flight)),
            settling: Arc::new(Semaphore::new(SETTLE_FACTOR * max_in_flight)),
            credits: Arc::new(Semaphore::new(2 * max_in_flight)),
            bytes: Arc::new(Semaphore::new(Self::bytes_budget(max_in_flight))),
            max_in_flight,
            finished: Arc::new(AtomicU64::new(0)),
        }
    }

    fn bytes_budget(max_in_flight: usize) -> usize {
        max_in_flight
            .saturating_mul(BYTES_PER_SLOT)
            .min(u32::MAX as usize)
    }

    /// Nothing received is in the pipeline: no credit taken, nothing settling.
    pub(crate) fn is_idle(&self) -> bool {
        self.credits.available_permits() == 2 * self.max_in_flight
            && self.settling.available_permits() == SETTLE_FACTOR * self.max_in_flight
    }

    /// Deliveries finished so far; the difference across a Get is what freed up meanwhile.
    pub(crate) fn finished(&self) -> u64 {
        self.finished.load(Ordering::Relaxed)
    }

    /// The prefetch allowed after a Get during which `freed` delivery slots were given back
    /// (that many messages are about to be wanted one round trip from now) and whose messages
    /// averaged `message_bytes`: never more than [`PREFETCH_BYTES`] of them, so big messages
    /// are hardly prefetched and the peak memory stays that of `MAX_IN_FLIGHT`.
    pub(crate) fn prefetch(&self, freed: u64, message_bytes: usize) -> usize {
        if Self::big(message_bytes) {
            return 0;
        }
        usize::try_from(freed)
            .unwrap_or(usize::MAX)
            .min(self.max_in_flight)
            .min(PREFETCH_BYTES / message_bytes.max(1))
    }

    /// Messages this long on average are neither prefetched nor received by overlapping Gets.
    pub(crate) fn big(message_bytes: usize) -> bool {
        message_bytes > NO_PREFETCH_ABOVE
    }

    /// The most messages one Get should ask for when messages average `message_bytes`:
    /// `batch_size`, unless that is more than [`GET_BYTES`] of text (never less than one).
    pub(crate) fn get_size(batch_size: usize, message_bytes: usize) -> usize {
        batch_size.min(GET_BYTES / message_bytes.max(1)).max(1)
    }

    /// Waits until at least `min` credits are usable with `prefetch` allowed, then takes as
    /// many as are usable, up to `max`. Never more than `MAX_IN_FLIGHT + prefetch` credits are
    /// held at once.
    pub(crate) async fn credits(&self, min: usize, max: usize, prefetch: usize) -> Credits {
        let prefetch = prefetch.min(self.max_in_flight);
        // Credits that must stay unused: the part of the prefetch not allowed now.
        let reserve = self.max_in_flight - prefetch;
        let min = min.clamp(1, self.max_in_flight);
        let Ok(mut held) = self
            .credits
            .clone()
            .acquire_many_owned((reserve + min) as u32)
            .await
        else {
            // Never closed; an empty hand makes the caller wait and ask again.
            return Credits { permits: None };
        };
        while held.num_permits() < reserve + max {
            match self.credits.clone().try_acquire_owned() {
                Ok(more) => held.merge(more),
                Err(_) => break,
            }
        }
        drop(held.split(reserve));
        Credits {
            permits: Some(held),
        }
    }
}

/// Credits for the messages of one Get; what the Get did not fill is given back on drop.
#[derive(Debug)]
pub(crate) struct Credits {
    permits: Option<OwnedSemaphorePermit>,
}

impl Credits {
    /// How many messages the Get may ask for.
    pub(crate) fn count(&self) -> usize {
        self.permits.as_ref().map_or(0, |p| p.num_permits())
    }

    /// The credits of received messages whose texts are `sizes` bytes long, delivered
    /// together (one message, or one batch).
    pub(crate) fn take(&mut self, sizes: Vec<usize>, capacity: &Capacity) -> Option<Ticket> {
        let credit = self.permits.as_mut()?.split(sizes.len())?;
        Some(Ticket {
            credit,
            sizes,
            capacity: capacity.clone(),
        })
    }
}

/// The place in the pipeline of received messages delivered together (one, or a batch),
/// before their delivery starts.
#[derive(Debug)]
pub(crate) struct Ticket {
    credit: OwnedSemaphorePermit,
    /// Each message's text length.
    sizes: Vec<usize>,
    capacity: Capacity,
}

impl Ticket {
    /// Waits for the messages' bytes, then for one delivery slot per message, all at once
    /// (first come, first served: a batch is not overtaken for ever by single messages, and
    /// two batches never hold part of the slots each). One [`DeliverySlot`] per message.
    pub(crate) async fn delivery_slots(self) -> Option<Vec<DeliverySlot>> {
        let Ticket {
            mut credit,
            sizes,
            capacity,
        } = self;
        let budget = Capacity::bytes_budget(capacity.max_in_flight);
        // Never more than the whole budget (a message bigger than any Azure takes).
        let wanted = sizes.iter().sum::<usize>().min(budget);
        let mut bytes = capacity
            .bytes
            .clone()
            .acquire_many_owned(wanted as u32)
            .await
            .ok()?;
        let mut slots = capacity
            .delivery
            .clone()
            .acquire_many_owned(sizes.len() as u32)
            .await
            .ok()?;
        let mut each = Vec::with_capacity(sizes.len());
        for size in sizes {
            let size = size.min(bytes.num_permits());
            each.push(DeliverySlot {
                slot: slots.split(1)?,
                credit: credit.split(1)?,
                bytes: bytes.split(size)?,
                capacity: capacity.clone(),
            });
        }
        Some(each)
    }

    /// One message's slot (see [`Ticket::delivery_slots`]).
    pub(crate) async fn delivery_slot(self) -> Option<DeliverySlot> {
        self.delivery_slots().await?.pop()
    }
}

/// A message being delivered: it holds one of the `MAX_IN_FLIGHT` slots.
#[derive(Debug)]
pub(crate) struct DeliverySlot {
    slot: OwnedSemaphorePermit,
    credit: OwnedSemaphorePermit,
    bytes: OwnedSemaphorePermit,
    capacity: Capacity,
}

impl DeliverySlot {
    /// The endpoint is done with the message: hand the slot to the next one, once the message
    /// has a settling permit (waited for while the queue is settling as many as allowed). The
    /// message's bytes stay counted until it is settled.
    pub(crate) async fn settle(self) -> Settling {
        let permit = self.capacity.settling.clone().acquire_owned().await.ok();
        self.capacity.finished.fetch_add(1, Ordering::Relaxed);
        drop(self.slot);
        drop(self.credit);
        Settling {
            _permit: permit,
            _bytes: self.bytes,
        }
    }
}

/// A message whose outcome is being carried out on the queue.
#[derive(Debug)]
pub(crate) struct Settling {
    _permit: Option<OwnedSemaphorePermit>,
    _bytes: OwnedSemaphorePermit,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn without_prefetch_a_get_asks_for_at_most_max_in_flight() {
        let capacity = Capacity::new(4);
        let credits = capacity.credits(1, 32, 0).await;
        assert_eq!(credits.count(), 4);
        let waiting = tokio::time::timeout(Duration::from_millis(50), capacity.credits(1, 32, 0));
        assert!(waiting.await.is_err(), "no more credits without prefetch");
        drop(credits);
        assert_eq!(capacity.credits(1, 32, 0).await.count(), 4);
    }

    #[tokio::test]
    async fn prefetch_adds_credits_up_to_max_in_flight() {
        let capacity = Capacity::new(4);
        assert_eq!(capacity.prefetch(3, 200), 3);
        assert_eq!(capacity.prefetch(100, 200), 4);
        assert_eq!(capacity.prefetch(100, 64 * 1024), 0, "big ones: none");
        assert_eq!(
            Capacity::new(32).prefetch(100, 16 * 1024),
            16,
            "256 KiB of 16 KiB ones"
        );
        assert_eq!(Capacity::new(32).prefetch(100, 0), 32);
        let first = capacity.credits(1, 32, 0).await;
        let second = capacity.credits(1, 32, 3).await;
        assert_eq!((first.count(), second.count()), (4, 3));
        assert_eq!(capacity.credits(1, 32, 4).await.count(), 1);
    }

    #[test]
    fn a_get_asks_for_at_most_a_mebibyte_of_big_messages() {
        assert_eq!(Capacity::get_size(32, 200), 32);
        assert_eq!(Capacity::get_size(32, 64 * 1024), 16);
        assert_eq!(Capacity::get_size(32, 0), 32);
        assert_eq!(Capacity::get_size(32, 8 * 1024 * 1024), 1);
    }

    #[tokio::test]
    async fn a_get_waits_for_its_minimum() {
        let capacity = Capacity::new(4);
        let mut held = capacity.credits(1, 3, 0).await;
        assert_eq!(held.count(), 3);
        let waiting = tokio::time::timeout(Duration::from_millis(50), capacity.credits(2, 4, 0));
        assert!(
            waiting.await.is_err(),
            "one credit is not enough for a minimum of two"
        );
        let ticket = held.take(vec![0], &capacity).expect("a credit");
        drop(held);
        assert_eq!(capacity.credits(2, 4, 0).await.count(), 3);
        drop(ticket);
    }

    #[tokio::test]
    async fn settling_frees_the_delivery_slot_but_keeps_its_own_budget() {
        let capacity = Capacity::new(1);
        let mut credits = capacity.credits(1, 1, 0).await;
        let slot = credits
            .take(vec![0], &capacity)
            .expect("a credit")
            .delivery_slot()
            .await
            .expect("a slot");
        assert_eq!(capacity.delivery.available_permits(), 0);
        let settling = slot.settle().await;
        assert_eq!(capacity.delivery.available_permits(), 1);
        assert_eq!(capacity.finished(), 1);
        assert_eq!(capacity.settling.available_permits(), SETTLE_FACTOR - 1);
        drop(settling);
        assert_eq!(capacity.settling.available_permits(), SETTLE_FACTOR);
    }

    #[tokio::test]
    async fn a_full_settling_budget_holds_deliveries_back() {
        let capacity = Capacity::new(1);
        let mut settled = Vec::new();
        for _ in 0..SETTLE_FACTOR {
            let mut credits = capacity.credits(1, 1, 0).await;
            let slot = credits.take(vec![0], &capacity).expect("credit");
            settled.push(slot.delivery_slot().await.expect("slot").settle().await);
        }
        let mut credits = capacity.credits(1, 1, 0).await;
        let slot = credits
            .take(vec![0], &capacity)
            .expect("credit")
            .delivery_slot()
            .await
            .expect("slot");
        let settle = slot.settle();
        tokio::pin!(settle);
        let waited = tokio::time::timeout(Duration::from_millis(50), &mut settle).await;
        assert!(waited.is_err(), "settling is full");
        assert_eq!(capacity.delivery.available_permits(), 0, "slot still held");
        settled.pop();
        let _settling = settle.await;
        assert_eq!(capacity.delivery.available_permits(), 1);
    }
}
