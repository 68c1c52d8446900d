//! The feeder: holds the queue depth steady by enqueuing one message per consumed message.
//!
//! Azurite scans its whole message collection on every receive and delete, so its cost per
//! message grows with the depth; a pre-seeded deep queue would measure Azurite, not the
//! consumer. The feeder keeps `sent - consumed` at `depth` (consumed = distinct deliveries at
//! the sink, or deletes in the baseline), with a few Put Message calls in flight.

use azure_queue_sidecar::testing::Queue;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// Concurrent Put Message calls.
const WORKERS: usize = 8;

/// A JSON message of exactly `size` bytes (at least ~40), unique by `seq`.
pub fn message_text(seq: u64, size: usize) -> String {
    let head = format!("{{\"seq\":{seq},\"kind\":\"bench\",\"pad\":\"");
    let tail = "\"}";
    let pad = size.saturating_sub(head.len() + tail.len());
    let mut text = String::with_capacity(size);
    text.push_str(&head);
    text.extend(std::iter::repeat_n('x', pad));
    text.push_str(tail);
    text
}

pub struct Feeder {
    /// Messages put successfully.
    pub sent: Arc<AtomicU64>,
    /// Put failures (retried).
    pub errors: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    wake: Arc<Notify>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Feeder {
    /// Starts feeding `queue` with `size`-byte messages until `limit` were sent (if any),
    /// keeping `sent - consumed` at `depth`. `wake` is notified whenever `consumed` grows.
    pub fn start(
        queue: Queue,
        size: usize,
        depth: u64,
        limit: Option<u64>,
        consumed: Arc<AtomicU64>,
        wake: Arc<Notify>,
    ) -> Feeder {
        let sent = Arc::new(AtomicU64::new(0));
        let reserved = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let base = consumed.load(Ordering::Relaxed);
        let limit = limit.unwrap_or(u64::MAX);
        let tasks = (0..WORKERS)
            .map(|_| {
                let (queue, sent, reserved, errors, stop, consumed, wake) = (
                    queue.clone(),
                    sent.clone(),
                    reserved.clone(),
                    errors.clone(),
                    stop.clone(),
                    consumed.clone(),
                    wake.clone(),
                );
                tokio::spawn(async move {
                    loop {
                        let notified = wake.notified();
                        tokio::pin!(notified);
                        notified.as_mut().enable();
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let done = consumed.load(Ordering::Relaxed).saturating_sub(base);
                        let seq = reserved.load(Ordering::Relaxed);
                        let want = seq < limit && seq.saturating_sub(done) < depth;
                        if want
                            && reserved
                                .compare_exchange(
                                    seq,
                                    seq + 1,
                                    Ordering::Relaxed,
                                    Ordering::Relaxed,
                                )
                                .is_ok()
                        {
                            let text = message_text(seq, size);
                            loop {
                                match queue.send(&text, None, None).await {
                                    Ok(_) => break,
                                    Err(_) => {
                                        errors.fetch_add(1, Ordering::Relaxed);
                                        tokio::time::sleep(Duration::from_millis(50)).await;
                                    }
                                }
                            }
                            sent.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        if want {
                            continue; // lost the race for this seq; look again
                        }
                        // Nothing to do until something is consumed (or a periodic look, in
                        // case a wake-up raced with the check above).
                        let _ = tokio::time::timeout(Duration::from_millis(200), notified).await;
                    }
                })
            })
            .collect();
        Feeder {
            sent,
            errors,
            stop,
            wake,
            tasks,
        }
    }

    /// Waits until `n` messages were sent (the initial fill).
    pub async fn wait_sent(&self, n: u64, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.sent.load(Ordering::Relaxed) < n {
            if tokio::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Stops feeding; waits for Put calls in progress.
    pub async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.wake.notify_waiters();
        for task in self.tasks {
            let _ = task.await;
        }
        self.sent.load(Ordering::Relaxed)
    }
}
