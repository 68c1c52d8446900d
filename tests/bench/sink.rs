//! The fast sink: a real HTTP/1.1 server on loopback that answers 200 at once and counts
//! distinct CloudEvent ids, so duplicates (at-least-once redeliveries) are visible.
//!
//! Each new id bumps a shared counter and wakes the feeder, which enqueues one message per
//! delivery to hold the queue depth steady.

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// What the sink has seen.
#[derive(Default)]
pub struct SinkStats {
    /// Every POST.
    pub requests: AtomicU64,
    /// Body bytes received.
    pub bytes: AtomicU64,
    /// POSTs without a `ce-id` header and without batched entries (should stay 0).
    pub without_id: AtomicU64,
    /// Entries of batched-mode POSTs beyond the first of each (so that requests + this is the
    /// number of events received).
    pub batch_entries: AtomicU64,
    ids: Mutex<HashSet<String>>,
}

impl SinkStats {
    pub fn distinct(&self) -> u64 {
        self.ids.lock().map(|ids| ids.len() as u64).unwrap_or(0)
    }

    pub fn duplicates(&self) -> u64 {
        (self.requests.load(Ordering::Relaxed) + self.batch_entries.load(Ordering::Relaxed))
            .saturating_sub(self.distinct() + self.without_id.load(Ordering::Relaxed))
    }

    /// Forgets everything (between phases).
    pub fn reset(&self) {
        self.requests.store(0, Ordering::Relaxed);
        self.bytes.store(0, Ordering::Relaxed);
        self.without_id.store(0, Ordering::Relaxed);
        self.batch_entries.store(0, Ordering::Relaxed);
        if let Ok(mut ids) = self.ids.lock() {
            ids.clear();
        }
    }
}

pub struct Sink {
    pub url: String,
    pub stats: Arc<SinkStats>,
}

impl Sink {
    /// Starts serving on a free loopback port; every new id adds one to `consumed` and
    /// notifies `wake`.
    pub async fn start(consumed: Arc<AtomicU64>, wake: Arc<Notify>) -> Sink {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the sink");
        let addr = listener.local_addr().expect("sink address");
        let stats = Arc::new(SinkStats::default());
        let shared = stats.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let stats = shared.clone();
                let consumed = consumed.clone();
                let wake = wake.clone();
                tokio::spawn(async move {
                    let service =
                        service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                            let stats = stats.clone();
                            let consumed = consumed.clone();
                            let wake = wake.clone();
                            async move {
                                let id = request
                                    .headers()
                                    .get("ce-id")
                                    .and_then(|v| v.to_str().ok())
                                    .map(str::to_string);
                                let body = request.into_body().collect().await?.to_bytes();
                                stats.requests.fetch_add(1, Ordering::Relaxed);
                                stats.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
                                // Binary mode: the ce-id header; batched mode: each entry's id.
                                let ids = match id {
                                    Some(id) => vec![id],
                                    None => batch_ids(&body),
                                };
                                if ids.is_empty() {
                                    stats.without_id.fetch_add(1, Ordering::Relaxed);
                                }
                                let more = (ids.len() as u64).saturating_sub(1);
                                stats.batch_entries.fetch_add(more, Ordering::Relaxed);
                                for id in ids {
                                    let new = stats
                                        .ids
                                        .lock()
                                        .map(|mut ids| ids.insert(id))
                                        .unwrap_or(false);
                                    if new {
                                        consumed.fetch_add(1, Ordering::Relaxed);
                                        wake.notify_waiters();
                                    }
                                }
                                Ok::<_, hyper::Error>(hyper::Response::new(Empty::<Bytes>::new()))
                            }
                        });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Sink {
            url: format!("http://{addr}/events"),
            stats,
        }
    }
}

/// The `id` of every entry of a batched-mode body (`CE_MODE=batched`): a JSON array of
/// structured-mode events. Empty for any other body.
fn batch_ids(body: &[u8]) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Entry {
        id: String,
    }
    serde_json::from_slice::<Vec<Entry>>(body)
        .map(|entries| entries.into_iter().map(|e| e.id).collect())
        .unwrap_or_default()
}
