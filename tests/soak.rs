//! The soak test: many faults at once, against real parts, with a verdict on every message.
//!
//! A real Azurite with an on-disk workspace (restarted gracefully several times), a fault proxy
//! in front of it that resets a fraction of connections (before or after forwarding) and
//! answers some requests 503, two sidecars on one queue (SIGKILLed, SIGTERMed, stopped with a
//! second SIGTERM, and restarted), thousands of messages of 100 B–40 KiB produced during the
//! run, and an endpoint that answers a mix of 2xx, 500, 503 (with and without `Retry-After`),
//! 429, hangs past `HTTP_TIMEOUT`, connections closed without an answer, slow answers that need
//! a lease renewal, and 400 for a marked subset.
//!
//! Verdict: every message acknowledged (2xx) or, for the marked ones only, in the poison queue;
//! the main queue empty; one CloudEvent id per message (the queue's message id). It prints lost
//! messages (must be 0), duplicates after acknowledgement, extra poison copies and
//! enqueue-to-ack latency, and it attributes every duplicate to a cause it can prove from
//! independent records — the harness's own kill log, the proxy's log of requests it cut after
//! Azurite had applied them, and the sidecars' own log of what they did with the message. An
//! unexplained duplicate fails the test; speed is reported, never asserted.
//!
//! CI runs a short version (`SOAK_SECONDS`, default 75 s of production, under 3 minutes in
//! all). A long run: `SOAK_SECONDS=1200 cargo test --release --test soak -- --nocapture`.
//! `SOAK_RATE` (messages per second, default 30) and `SOAK_SEED` (the random plan; printed)
//! are optional.

mod support;

use azure_queue_sidecar::testing::Queue;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::proxy::{Action, Proxied, QueueOp, QueueProxy};
use support::*;
use time::OffsetDateTime;
use tokio::sync::RwLock;

const QUEUE: &str = "soak";
const POISON: &str = "soak-poison";
/// The sidecars' lease, request timeout and retry settings.
const VISIBILITY: &str = "8s";
const HTTP_TIMEOUT: Duration = Duration::from_secs(8);
/// An endpoint that "hangs" answers only after this (past `HTTP_TIMEOUT`).
const HANG: Duration = Duration::from_secs(10);
/// Slow answers take 4.5–6 s: past half the lease, so they need a renewal.
const SLOW_MIN_MS: u64 = 4500;
const SLOW_SPAN_MS: u64 = 1500;
const MAX_DEQUEUE_COUNT: &str = "10";

/// The run's knobs, from the environment.
#[derive(Debug, Clone, Copy)]
struct Settings {
    seconds: u64,
    rate: f64,
    seed: u64,
    /// How long the run may take to settle after production stops.
    settle: Duration,
}

impl Settings {
    fn from_env() -> Self {
        let number = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<f64>().ok());
        let seconds = number("SOAK_SECONDS").map_or(75, |s| s.max(10.0) as u64);
        Self {
            seconds,
            rate: number("SOAK_RATE").unwrap_or(30.0).clamp(1.0, 500.0),
            seed: number("SOAK_SEED").map_or_else(|| fastrand::u64(..), |s| s as u64),
            settle: Duration::from_secs(90),
        }
    }
}

/// splitmix64: a deterministic stream of choices from the seed, per message and attempt.
fn mix(seed: u64, key: u64, salt: u64) -> u64 {
    let mut z = seed
        .wrapping_add(key.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(salt.wrapping_mul(0xD1B5_4A32_D192_ED03));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Whether message `key` is one the endpoint refuses with 400 (about 1.5 %).
fn marked(seed: u64, key: u64) -> bool {
    mix(seed, key, 1) % 1000 < 15
}

/// How many of a message's first POSTs fail (0–3): a message fails at most this often, so
/// with MAX_DEQUEUE_COUNT=10 only the marked ones may end in the poison queue.
fn failures(seed: u64, key: u64) -> u64 {
    match mix(seed, key, 2) % 100 {
        0..=54 => 0,
        55..=79 => 1,
        80..=92 => 2,
        _ => 3,
    }
}

/// The text of message `key`: JSON with the key, the mark, and padding to a size between
/// 100 B and 40 KiB (mostly small).
fn message_text(seed: u64, key: u64) -> String {
    let roll = mix(seed, key, 3);
    let size = match roll % 100 {
        0..=69 => 100 + roll % 900,
        70..=94 => 1000 + roll % 7192,
        _ => 8192 + roll % (40 * 1024 - 8192),
    } as usize;
    let head = format!("{{\"k\":{key},\"m\":{},\"p\":\"", marked(seed, key));
    let pad = size.saturating_sub(head.len() + 2);
    let mut text = head;
    text.extend((0..pad).map(|i| (b'a' + ((key as usize + i) % 26) as u8) as char));
    text.push_str("\"}");
    text
}

/// The key in a message text (or a poison envelope's `text`).
fn key_of(text: &str) -> Option<u64> {
    let doc: serde_json::Value = serde_json::from_str(text).ok()?;
    doc["k"].as_u64()
}

/// How the endpoint answers the `attempt`-th POST of message `key`.
fn reply(seed: u64, key: u64, attempt: u64) -> Reply {
    if marked(seed, key) {
        return Reply::status(400);
    }
    if attempt <= failures(seed, key) {
        return match mix(seed, key, 10 + attempt) % 8 {
            0 => Reply::status(500),
            1 => Reply::status(503),
            2 => Reply::status(503).header("retry-after", "1"),
            3 => Reply::status(429).header("retry-after", "2"),
            4 => Reply::status(503).header("retry-after", "0"),
            5 => Reply::status(503).after(HANG),
            6 => Reply::close(),
            _ => Reply::close().after(Duration::from_millis(300)),
        };
    }
    let roll = mix(seed, key, 20 + attempt);
    let status = [200, 201, 202, 204][(roll % 4) as usize];
    if roll % 100 < 6 {
        Reply::status(status).after(Duration::from_millis(
            SLOW_MIN_MS + (roll >> 8) % SLOW_SPAN_MS,
        ))
    } else {
        Reply::status(status).after(Duration::from_millis((roll >> 8) % 30))
    }
}

/// Seconds since the start of the run, for instants and for log timestamps.
struct Clock {
    start: Instant,
    wall: OffsetDateTime,
}

impl Clock {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            wall: OffsetDateTime::now_utc(),
        }
    }

    fn at(&self, instant: Instant) -> f64 {
        instant.saturating_duration_since(self.start).as_secs_f64()
    }

    fn now(&self) -> f64 {
        self.at(Instant::now())
    }

    fn log_time(&self, timestamp: &str) -> Option<f64> {
        let t = OffsetDateTime::parse(timestamp, &time::format_description::well_known::Rfc3339)
            .ok()?;
        Some((t - self.wall).as_seconds_f64())
    }
}

/// One message the producer enqueued.
#[derive(Debug, Clone)]
struct Produced {
    key: u64,
    id: String,
    at: f64,
    marked: bool,
}

/// Sends `rate` messages a second for `seconds`, straight to Azurite (not through the proxy:
/// the producer is not under test), never while Azurite is being restarted.
async fn produce(
    queue: Queue,
    azurite_up: Arc<RwLock<()>>,
    settings: Settings,
    clock: Arc<Clock>,
) -> Vec<Produced> {
    let interval = Duration::from_secs_f64(1.0 / settings.rate);
    let end = Instant::now() + Duration::from_secs(settings.seconds);
    let mut next = Instant::now();
    let mut produced = Vec::new();
    let mut key = 0u64;
    while Instant::now() < end {
        next += interval;
        tokio::time::sleep_until(next.into()).await;
        let text = message_text(settings.seed, key);
        let _up = azurite_up.read().await;
        let mut tries = 0;
        let id = loop {
            match queue.send(&text, None, None).await {
                Ok(id) => break id,
                // Azurite is up (the lock says so) and not behind the proxy: a failure here is
                // rare and, unless its answer was lost, harmless to retry.
                Err(error) if !error.maybe_applied() && tries < 5 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(error) => panic!("the producer cannot tell if message {key} was sent: {error}"),
            }
        };
        produced.push(Produced {
            key,
            id,
            at: clock.now(),
            marked: marked(settings.seed, key),
        });
        key += 1;
    }
    produced
}

/// What the harness did to the parts, with when.
#[derive(Debug, Clone, PartialEq)]
enum Chaos {
    /// SIGKILL (also: a SIGTERM that did not end the process in time, then SIGKILL).
    Kill,
    Term,
    /// A second SIGTERM one second after the first.
    StopNow,
    AzuriteRestart {
        down_for: f64,
        forced: bool,
    },
}

#[derive(Debug, Clone)]
struct ChaosEvent {
    at: f64,
    what: Chaos,
    instance: Option<String>,
}

/// One sidecar process, with its name (slot and generation: `A1`, `B3`...), which is also the
/// path it POSTs to, so the endpoint knows who delivered what.
struct Instance {
    name: String,
    sidecar: Sidecar,
}

/// Two slots, A and B, each running one sidecar generation after another.
struct Fleet {
    env: Vec<(String, String)>,
    endpoint: String,
    instances: Vec<Instance>,
    current: [Option<usize>; 2],
    generation: [u32; 2],
}

impl Fleet {
    fn new(env: Vec<(String, String)>, endpoint: String) -> Self {
        Self {
            env,
            endpoint,
            instances: Vec::new(),
            current: [None, None],
            generation: [0, 0],
        }
    }

    fn start(&mut self, slot: usize) {
        self.generation[slot] += 1;
        let name = format!("{}{}", ["A", "B"][slot], self.generation[slot]);
        let env = with(
            self.env.clone(),
            &[("ENDPOINT_URL", &format!("{}/s/{name}", self.endpoint))],
        );
        self.instances.push(Instance {
            name,
            sidecar: Sidecar::spawn(&env),
        });
        self.current[slot] = Some(self.instances.len() - 1);
    }

    fn running(&mut self, slot: usize) -> Option<&mut Instance> {
        let index = self.current[slot]?;
        self.instances.get_mut(index)
    }

    /// Stops slot `slot` as `how`; the record of what happened (two if a SIGTERM had to be
    /// followed by a SIGKILL).
    async fn stop(&mut self, slot: usize, how: &Chaos, clock: &Clock) -> Vec<ChaosEvent> {
        let Some(instance) = self.running(slot) else {
            return Vec::new();
        };
        let name = instance.name.clone();
        let mut events = Vec::new();
        let record = |what: Chaos| ChaosEvent {
            at: clock.now(),
            what,
            instance: Some(name.clone()),
        };
        let patience = match how {
            Chaos::Kill => {
                instance.sidecar.signal("KILL");
                events.push(record(Chaos::Kill));
                Duration::from_secs(10)
            }
            Chaos::Term => {
                instance.sidecar.signal("TERM");
                events.push(record(Chaos::Term));
                // SHUTDOWN_TIMEOUT + the receive grace + the release grace, and a margin.
                Duration::from_secs(40)
            }
            _ => {
                instance.sidecar.signal("TERM");
                tokio::time::sleep(Duration::from_secs(1)).await;
                instance.sidecar.signal("TERM");
                events.push(record(Chaos::StopNow));
                Duration::from_secs(15)
            }
        };
        if instance.sidecar.wait_exit(patience).await.is_none() {
            instance.sidecar.signal("KILL");
            events.push(record(Chaos::Kill));
            instance.sidecar.wait_exit(Duration::from_secs(10)).await;
        }
        self.current[slot] = None;
        events
    }
}

/// The environment both slots share: the queue through the proxy, short timings.
fn sidecar_env(azurite: &Azurite, proxy: &QueueProxy) -> Vec<(String, String)> {
    with(
        Sidecar::env(azurite, QUEUE, "unused"),
        &[
            ("AZURE_STORAGE_QUEUE_ENDPOINT", &proxy.service_url()),
            ("VISIBILITY_TIMEOUT", VISIBILITY),
            ("HTTP_TIMEOUT", &format!("{}s", HTTP_TIMEOUT.as_secs())),
            ("RETRY_BASE_DELAY", "1s"),
            ("RETRY_MAX_DELAY", "3s"),
            ("MAX_DEQUEUE_COUNT", MAX_DEQUEUE_COUNT),
            ("CREATE_POISON_QUEUE", "true"),
            ("SHUTDOWN_TIMEOUT", "10s"),
            ("POLL_MIN_INTERVAL", "50ms"),
            ("POLL_MAX_INTERVAL", "500ms"),
            ("QUEUE_LENGTH_INTERVAL", "0"),
            ("ADMIN_ADDR", "off"),
            // Every decision about a message, without the SDK's and hyper's own debug lines.
            ("LOG_LEVEL", "info,azure_queue_sidecar=debug"),
        ],
    )
}

/// The proxy's faults: of the sidecars' queue requests, 1.5 % reset before forwarding, 1.5 %
/// reset after Azurite applied them, 1 % answered 503 ServerBusy. Off once production ends,
/// so the run can settle.
fn proxy_rule(seed: u64, faults: Arc<AtomicBool>) -> impl Fn(&Proxied) -> Action {
    let rng = Mutex::new(fastrand::Rng::with_seed(seed ^ 0x5EED));
    move |request| {
        if !faults.load(Ordering::SeqCst)
            || matches!(
                request.op(),
                QueueOp::Create | QueueOp::Properties | QueueOp::Other
            )
        {
            return Action::Forward;
        }
        match rng.lock().expect("rng").u32(0..1000) {
            0..=14 => Action::CutBefore,
            15..=29 => Action::CutAfter,
            30..=39 => Action::Answer {
                status: 503,
                code: "ServerBusy",
            },
            _ => Action::Forward,
        }
    }
}

/// The harness's plan: a fault every few seconds while messages are produced.
fn chaos_plan(settings: &Settings) -> Vec<(f64, Chaos, usize)> {
    let restart = Chaos::AzuriteRestart {
        down_for: 0.0,
        forced: false,
    };
    let cycle = [
        Chaos::Kill,
        restart.clone(),
        Chaos::Term,
        Chaos::Kill,
        restart.clone(),
        Chaos::StopNow,
        Chaos::Kill,
        restart,
        Chaos::Term,
        Chaos::Kill,
    ];
    let count = ((settings.seconds / 7) as usize).max(cycle.len());
    let step = settings.seconds as f64 / (count + 1) as f64;
    (0..count)
        .map(|i| {
            let slot = (mix(settings.seed, i as u64, 99) % 2) as usize;
            (step * (i + 1) as f64, cycle[i % cycle.len()].clone(), slot)
        })
        .collect()
}

/// One POST the endpoint received, with its answer if one was written.
#[derive(Debug, Clone)]
struct Post {
    key: u64,
    id: String,
    instance: String,
    at: f64,
    answer: Option<(u16, f64)>,
}

impl Post {
    fn acked(&self) -> bool {
        self.answer
            .is_some_and(|(status, _)| (200..300).contains(&status))
    }

    fn answered_at(&self) -> f64 {
        self.answer.map_or(f64::INFINITY, |(_, at)| at)
    }
}

/// A sidecar log line about one message.
#[derive(Debug, Clone)]
struct Line {
    at: f64,
    doc: serde_json::Value,
}

impl Line {
    fn is(&self, message: &str) -> bool {
        self.doc["message"]
            .as_str()
            .is_some_and(|m| m.starts_with(message))
    }
}

/// Every log line with a `message_id`, per (instance, message id).
fn index_logs(fleet: &Fleet, clock: &Clock) -> HashMap<(String, String), Vec<Line>> {
    let mut index: HashMap<(String, String), Vec<Line>> = HashMap::new();
    for instance in &fleet.instances {
        for doc in instance.sidecar.json_lines() {
            let (Some(id), Some(at)) = (
                doc["message_id"].as_str().map(str::to_string),
                doc["timestamp"].as_str().and_then(|t| clock.log_time(t)),
            ) else {
                continue;
            };
            index
                .entry((instance.name.clone(), id))
                .or_default()
                .push(Line { at, doc });
        }
    }
    index
}

/// Everything the verdict is drawn from.
struct Evidence<'a> {
    posts: &'a BTreeMap<u64, Vec<Post>>,
    logs: HashMap<(String, String), Vec<Line>>,
    chaos: &'a [ChaosEvent],
    proxied: &'a [Proxied],
    clock: &'a Clock,
}

impl Evidence<'_> {
    fn lines(&self, instance: &str, id: &str) -> &[Line] {
        self.logs
            .get(&(instance.to_string(), id.to_string()))
            .map_or(&[], Vec::as_slice)
    }

    /// When `instance` was killed or stopped at once, after `after`.
    fn ended(&self, instance: &str, after: f64) -> Option<&ChaosEvent> {
        self.chaos.iter().find(|e| {
            e.instance.as_deref() == Some(instance)
                && e.at >= after
                && matches!(e.what, Chaos::Kill | Chaos::StopNow)
        })
    }

    /// Requests for message `id` of kind `op` whose answer was lost after Azurite may have
    /// applied them (reset by the proxy after forwarding, or broken upstream).
    fn lost_answers(&self, op: QueueOp, id: &str) -> Vec<&Proxied> {
        self.proxied
            .iter()
            .filter(|r| {
                r.op() == op
                    && r.message_id() == Some(id)
                    && matches!(r.action, "cut_after" | "upstream_failed")
            })
            .collect()
    }

    /// Why `holder`'s delivery of the message did not end in a delete, so that `again` came.
    fn explain_duplicate(&self, holder: &Post, again: &Post) -> Result<String, String> {
        let lines = self.lines(&holder.instance, &holder.id);
        let after: Vec<&Line> = lines.iter().filter(|l| l.at >= holder.at - 0.5).collect();
        let deleted = after.iter().find(|l| l.is("deleted"));
        let lost = after.iter().find(|l| l.is("lease lost"));
        let renewal_failed = after
            .iter()
            .find(|l| l.is("queue call failed") && l.doc["operation"].as_str() == Some("update"));
        let context = format!(
            "key {} ({}): delivered by {} at {:.1}s{}, again by {} at {:.1}s",
            holder.key,
            holder.id,
            holder.instance,
            holder.at,
            if holder.acked() {
                format!(" (2xx at {:.1}s)", holder.answered_at())
            } else {
                String::new()
            },
            again.instance,
            again.at,
        );
        if let Some(lost) = lost {
            if lost.doc["cause"] == "receipt_lost" {
                let cuts = self.lost_answers(QueueOp::Update, &holder.id);
                return match cuts.first() {
                    Some(cut) => Ok(format!(
                        "{context} — an Update's answer was lost ({} at {:.1}s) after Azurite applied it: the new pop receipt is unknowable, the delete failed",
                        cut.action,
                        self.clock.at(cut.at),
                    )),
                    None => Err(format!("{context} — receipt lost, but no lost Update answer on record")),
                };
            }
            return match renewal_failed {
                Some(failed) => Ok(format!(
                    "{context} — the lease ran out: renewing failed ({}) and another consumer took the message",
                    failed.doc["kind"].as_str().unwrap_or("?"),
                )),
                None => Err(format!("{context} — lease lost ({}) without a failed renewal on record", lost.doc["operation"])),
            };
        }
        if let Some(end) = self.ended(&holder.instance, holder.at) {
            let before_delete = deleted.is_none_or(|d| d.at > end.at);
            let released = after.iter().any(|l| l.is("released at shutdown"));
            if before_delete {
                return Ok(match (&end.what, released) {
                    (Chaos::StopNow, true) => format!(
                        "{context} — {} was stopped at once (second SIGTERM) at {:.1}s as the endpoint answered: the POST was cut off and the message released",
                        holder.instance, end.at
                    ),
                    (Chaos::StopNow, false) => format!(
                        "{context} — {} was stopped at once (second SIGTERM) at {:.1}s, between the POST and its delete",
                        holder.instance, end.at
                    ),
                    _ => format!(
                        "{context} — {} was SIGKILLed at {:.1}s, between the POST and its delete",
                        holder.instance, end.at
                    ),
                });
            }
        }
        if let (Some(deleted), Some(failed)) = (deleted, renewal_failed) {
            if deleted.doc["answer_lost"] == true {
                return Ok(format!(
                    "{context} — the lease ran out while the delete was retried ({}); another consumer delivered and deleted it, and the retried delete's 404 was taken for its own",
                    failed.doc["kind"].as_str().unwrap_or("?")
                ));
            }
        }
        Err(format!(
            "{context} — unexplained (holder's lines: {:?})",
            after
                .iter()
                .map(|l| l.doc["message"].clone())
                .collect::<Vec<_>>()
        ))
    }

    /// Possible sources of extra poison copies of a marked message.
    fn poison_copy_sources(&self, posts: &[Post]) -> Vec<String> {
        let mut sources = Vec::new();
        for post in posts {
            let lines = self.lines(&post.instance, &post.id);
            let after: Vec<&Line> = lines.iter().filter(|l| l.at >= post.at - 0.5).collect();
            if let Some(line) = after
                .iter()
                .find(|l| l.is("written to the poison queue but not deleted"))
            {
                sources.push(format!(
                    "{} wrote the copy at {:.1}s but could not delete the message",
                    post.instance, line.at
                ));
                continue;
            }
            let poisoned = after
                .iter()
                .find(|l| l.is("message moved to the poison queue"));
            let deleted = after.iter().find(|l| l.is("deleted"));
            if let Some(end) = self.ended(&post.instance, post.at) {
                if deleted.is_none_or(|d| d.at > end.at) {
                    sources.push(format!(
                        "{} was stopped at {:.1}s between its poison write and the delete",
                        post.instance, end.at
                    ));
                    continue;
                }
            }
            if let Some(poisoned) = poisoned {
                let window = (post.answered_at(), poisoned.at + 0.5);
                let cut = self.proxied.iter().find(|r| {
                    r.op() == QueueOp::Put
                        && r.queue() == POISON
                        && matches!(r.action, "cut_after" | "upstream_failed")
                        && (window.0..=window.1).contains(&self.clock.at(r.at))
                });
                if let Some(cut) = cut {
                    sources.push(format!(
                        "{}'s poison Put was answered by a reset after Azurite stored it ({:.1}s); the retry wrote a second copy",
                        post.instance,
                        self.clock.at(cut.at)
                    ));
                }
            }
        }
        sources
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_compound_faults() {
    let settings = Settings::from_env();
    let clock = Arc::new(Clock::new());
    eprintln!(
        "SOAK start: seed {} ({} s of production at {}/s)",
        settings.seed, settings.seconds, settings.rate
    );
    let dir: PathBuf = temp_dir("soak");
    let port = free_port();
    let mut azurite = Azurite::start_with(port, Some(&dir)).await;
    let queue = azurite.create_queue(QUEUE).await;
    let poison = azurite.create_queue(POISON).await;
    let azurite_up = Arc::new(RwLock::new(()));
    let faults = Arc::new(AtomicBool::new(true));
    let proxy = QueueProxy::start(port, proxy_rule(settings.seed, faults.clone())).await;

    let attempts: Arc<Mutex<HashMap<u64, u64>>> = Arc::default();
    let seen = attempts.clone();
    let seed = settings.seed;
    let endpoint = Endpoint::start(move |request, _| {
        let Some(key) = key_of(&request.body_text()) else {
            return Reply::status(400);
        };
        let attempt = {
            let mut seen = seen.lock().expect("attempts");
            let n = seen.entry(key).or_insert(0);
            *n += 1;
            *n
        };
        reply(seed, key, attempt)
    })
    .await;

    let mut fleet = Fleet::new(sidecar_env(&azurite, &proxy), endpoint.base_url());
    fleet.start(0);
    fleet.start(1);
    let producer = tokio::spawn(produce(
        queue.clone(),
        azurite_up.clone(),
        settings,
        clock.clone(),
    ));

    // Chaos while producing.
    let mut chaos: Vec<ChaosEvent> = Vec::new();
    for (at, what, slot) in chaos_plan(&settings) {
        let wait = at - clock.now();
        if wait > 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
        }
        match what {
            Chaos::AzuriteRestart { .. } => {
                let _down = azurite_up.write().await;
                let stopped = clock.now();
                let forced = !azurite.stop().await;
                azurite = Azurite::start_with(port, Some(&dir)).await;
                // Listening is not serving yet: produce again once it answers.
                let ready = Instant::now() + Duration::from_secs(30);
                while queue.approximate_message_count().await.is_err() && Instant::now() < ready {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                chaos.push(ChaosEvent {
                    at: stopped,
                    what: Chaos::AzuriteRestart {
                        down_for: clock.now() - stopped,
                        forced,
                    },
                    instance: None,
                });
            }
            how => {
                chaos.extend(fleet.stop(slot, &how, &clock).await);
                if how == Chaos::Kill {
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                }
                fleet.start(slot);
            }
        }
    }
    let produced = producer.await.expect("producer");
    let production_end = clock.now();

    // Settle: no more faults; wait for every message to be acknowledged or poisoned.
    faults.store(false, Ordering::SeqCst);
    for slot in 0..2 {
        if fleet.running(slot).is_none() {
            fleet.start(slot);
        }
    }
    let unmarked: HashSet<u64> = produced
        .iter()
        .filter(|p| !p.marked)
        .map(|p| p.key)
        .collect();
    let acked_keys = |endpoint: &Endpoint| -> HashSet<u64> {
        // Answers first: a request is recorded before its answer, so every answer read here
        // has its request in the later snapshot.
        let answers = endpoint.answers();
        let received = endpoint.received();
        answers
            .iter()
            .filter(|a| (200..300).contains(&a.status))
            .filter_map(|a| key_of(&received.get(a.index)?.body_text()))
            .collect()
    };
    let settle_deadline = Instant::now() + settings.settle;
    let mut settled = false;
    while Instant::now() < settle_deadline {
        let acked = acked_keys(&endpoint);
        if unmarked.is_subset(&acked) && queue.approximate_message_count().await.ok() == Some(0) {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let settle_time = clock.now() - production_end;
    for slot in 0..2 {
        chaos.extend(fleet.stop(slot, &Chaos::Term, &clock).await);
    }
    // The final graceful stops are not faults.
    chaos.retain(|e| e.at < production_end || e.what != Chaos::Term);

    // What is left where.
    let main_left = queue.approximate_message_count().await.expect("count");
    let poison_texts = drain_texts(&poison).await;
    let mut poison_copies: BTreeMap<u64, usize> = BTreeMap::new();
    for text in &poison_texts {
        let doc: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
        let original = doc["text"].as_str().unwrap_or(text);
        if let Some(key) = key_of(original) {
            *poison_copies.entry(key).or_default() += 1;
        }
    }

    // Every POST, with its answer (the sidecars are stopped: nothing changes any more).
    let answers = endpoint.answers();
    let received = endpoint.received();
    let mut answer_of: HashMap<usize, (u16, f64)> = HashMap::new();
    for answer in &answers {
        answer_of.insert(answer.index, (answer.status, clock.at(answer.at)));
    }
    let mut posts: BTreeMap<u64, Vec<Post>> = BTreeMap::new();
    for (index, request) in received.iter().enumerate() {
        let Some(key) = key_of(&request.body_text()) else {
            continue;
        };
        posts.entry(key).or_default().push(Post {
            key,
            id: request.event_id(),
            instance: request.path.trim_start_matches("/s/").to_string(),
            at: clock.at(request.at),
            answer: answer_of.get(&index).copied(),
        });
    }

    let proxied = proxy.requests();
    let evidence = Evidence {
        posts: &posts,
        logs: index_logs(&fleet, &clock),
        chaos: &chaos,
        proxied: &proxied,
        clock: &clock,
    };

    // The verdict.
    let mut lost = Vec::new();
    let mut wrongly_poisoned = Vec::new();
    let mut wrong_ids = Vec::new();
    let mut latencies = Vec::new();
    // Messages the endpoint accepted at the first try: the pump's own pace under the faults.
    let mut first_try_latencies = Vec::new();
    // The same, per quarter of the production time (enqueued in it): does the run slow down?
    let mut by_quarter: [Vec<f64>; 4] = Default::default();
    let mut duplicates = Vec::new();
    let mut unexplained = Vec::new();
    let mut extra_copies = Vec::new();
    for message in &produced {
        let mine = evidence
            .posts
            .get(&message.key)
            .map_or(&[][..], Vec::as_slice);
        if mine.iter().any(|p| p.id != message.id) {
            wrong_ids.push(message.key);
        }
        let copies = poison_copies.get(&message.key).copied().unwrap_or(0);
        if message.marked {
            if copies == 0 {
                lost.push(message.key);
            }
            if copies > 1 {
                let sources = evidence.poison_copy_sources(mine);
                for extra in 0..copies - 1 {
                    match sources.get(extra) {
                        Some(source) => extra_copies.push(format!("key {}: {source}", message.key)),
                        None => unexplained.push(format!(
                            "key {}: {copies} poison copies, sources on record: {sources:?}",
                            message.key
                        )),
                    }
                }
            }
            continue;
        }
        if copies > 0 {
            wrongly_poisoned.push(message.key);
        }
        let Some(first) = mine
            .iter()
            .filter(|p| p.acked())
            .min_by(|a, b| a.answered_at().total_cmp(&b.answered_at()))
        else {
            lost.push(message.key);
            continue;
        };
        latencies.push(first.answered_at() - message.at);
        if failures(settings.seed, message.key) == 0 {
            first_try_latencies.push(first.answered_at() - message.at);
            let quarter = ((message.at / production_end) * 4.0).clamp(0.0, 3.0) as usize;
            by_quarter[quarter].push(first.answered_at() - message.at);
        }
        for again in mine {
            if std::ptr::eq(again, first) || !(again.at > first.answered_at() || again.acked()) {
                continue;
            }
            // Whose delivery should have ended it: the last acknowledged one before this POST,
            // else the one in flight when it arrived.
            let holder = mine
                .iter()
                .filter(|p| p.acked() && p.answered_at() < again.at && !std::ptr::eq(*p, again))
                .max_by(|a, b| a.answered_at().total_cmp(&b.answered_at()))
                .or_else(|| {
                    mine.iter()
                        .filter(|p| p.at < again.at && !std::ptr::eq(*p, again))
                        .max_by(|a, b| a.at.total_cmp(&b.at))
                })
                .unwrap_or(first);
            match evidence.explain_duplicate(holder, again) {
                Ok(why) => duplicates.push(why),
                Err(why) => unexplained.push(why),
            }
        }
    }
    latencies.sort_by(f64::total_cmp);
    first_try_latencies.sort_by(f64::total_cmp);
    for quarter in &mut by_quarter {
        quarter.sort_by(f64::total_cmp);
    }
    let quarters: Vec<String> = by_quarter
        .iter()
        .map(|q| format!("{:.0}", percentile(q, 50.0) * 1000.0))
        .collect();

    // The report.
    let count = |what: fn(&Chaos) -> bool| chaos.iter().filter(|e| what(&e.what)).count();
    let kills = count(|c| *c == Chaos::Kill);
    let terms = count(|c| *c == Chaos::Term);
    let stop_nows = count(|c| *c == Chaos::StopNow);
    let restarts: Vec<String> = chaos
        .iter()
        .filter_map(|e| match e.what {
            Chaos::AzuriteRestart { down_for, forced } => Some(format!(
                "{:.1}s (down {:.1}s{})",
                e.at,
                down_for,
                if forced { ", forced" } else { "" }
            )),
            _ => None,
        })
        .collect();
    let by_action = |action: &str| proxied.iter().filter(|r| r.action == action).count();
    // Deliveries whose delete failed, caught when the message came back to the same sidecar.
    let avoided = evidence
        .logs
        .values()
        .flatten()
        .filter(|l| l.is("message came back after it was delivered"))
        .count();
    let marked_count = produced.iter().filter(|p| p.marked).count();
    let mut report = String::new();
    let _ = writeln!(
        report,
        "SOAK seed {} — {:.0} s of production, settled {:.1} s later{}",
        settings.seed,
        production_end,
        settle_time,
        if settled { "" } else { " (DID NOT SETTLE)" }
    );
    let _ = writeln!(
        report,
        "  messages: {} produced (100 B–40 KiB), {} marked for 400; {} POSTs, {} answered 2xx",
        produced.len(),
        marked_count,
        received.len(),
        answers
            .iter()
            .filter(|a| (200..300).contains(&a.status))
            .count()
    );
    let _ = writeln!(
        report,
        "  chaos: {kills} SIGKILL, {terms} SIGTERM, {stop_nows} second-SIGTERM stops, {} Azurite restarts [{}]",
        restarts.len(),
        restarts.join(", ")
    );
    let _ = writeln!(
        report,
        "  proxy: {} queue requests; reset before forwarding {}, reset after Azurite applied {}, 503 {}, Azurite down {}, broken upstream {}",
        proxied.len(),
        by_action("cut_before"),
        by_action("cut_after"),
        by_action("answer"),
        by_action("upstream_down"),
        by_action("upstream_failed"),
    );
    let _ = writeln!(report, "  lost: {}", lost.len());
    let _ = writeln!(
        report,
        "  duplicates after acknowledgement: {} (unexplained {})",
        duplicates.len(),
        unexplained.len()
    );
    for why in &duplicates {
        let _ = writeln!(report, "    - {why}");
    }
    let _ = writeln!(
        report,
        "  redeliveries avoided (came back to the sidecar that delivered them, deleted without a second POST): {avoided}"
    );
    let _ = writeln!(report, "  extra poison copies: {}", extra_copies.len());
    for why in &extra_copies {
        let _ = writeln!(report, "    - {why}");
    }
    for why in &unexplained {
        let _ = writeln!(report, "    ! {why}");
    }
    let _ = writeln!(
        report,
        "  enqueue-to-ack latency: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        percentile(&latencies, 50.0) * 1000.0,
        percentile(&latencies, 99.0) * 1000.0,
        latencies.last().copied().unwrap_or(0.0) * 1000.0
    );
    let _ = writeln!(
        report,
        "    (messages the endpoint took at the first try: p50 {:.0} ms, p99 {:.0} ms; p50 by quarter of the run {} ms)",
        percentile(&first_try_latencies, 50.0) * 1000.0,
        percentile(&first_try_latencies, 99.0) * 1000.0,
        quarters.join(" / "),
    );
    let _ = writeln!(
        report,
        "  main queue left: {main_left}; poison queue: {} copies of {} messages",
        poison_texts.len(),
        poison_copies.len()
    );
    let summary = serde_json::json!({
        "seed": settings.seed,
        "seconds": settings.seconds,
        "produced": produced.len(),
        "marked": marked_count,
        "posts": received.len(),
        "sigkill": kills, "sigterm": terms, "stop_now": stop_nows,
        "azurite_restarts": restarts.len(),
        "proxy_cut_before": by_action("cut_before"),
        "proxy_cut_after": by_action("cut_after"),
        "lost": lost.len(),
        "duplicates": duplicates.len(),
        "redeliveries_avoided": avoided,
        "unexplained": unexplained.len(),
        "extra_poison_copies": extra_copies.len(),
        "latency_ms": {
            "p50": (percentile(&latencies, 50.0) * 1000.0).round(),
            "p99": (percentile(&latencies, 99.0) * 1000.0).round(),
            "max": (latencies.last().copied().unwrap_or(0.0) * 1000.0).round(),
            "first_try_p50": (percentile(&first_try_latencies, 50.0) * 1000.0).round(),
        },
    });
    let _ = writeln!(report, "SOAK {summary}");
    eprint!("{report}");
    let _ = std::fs::create_dir_all(concat!(env!("CARGO_MANIFEST_DIR"), "/target/soak"));
    let _ = std::fs::write(
        concat!(env!("CARGO_MANIFEST_DIR"), "/target/soak/last.txt"),
        &report,
    );

    assert!(settled, "the run did not settle: {report}");
    assert!(lost.is_empty(), "lost {lost:?}: {report}");
    assert!(
        wrongly_poisoned.is_empty(),
        "poisoned but not marked: {wrongly_poisoned:?}"
    );
    assert!(
        wrong_ids.is_empty(),
        "a CloudEvent id other than the message id: {wrong_ids:?}"
    );
    assert_eq!(main_left, 0, "the main queue is not empty: {report}");
    assert!(unexplained.is_empty(), "unexplained duplicates: {report}");
    assert!(
        kills >= 1 && terms >= 1 && stop_nows >= 1 && restarts.len() >= 3,
        "the chaos plan ran: {report}"
    );
    drop(azurite);
    let _ = std::fs::remove_dir_all(dir);
}
