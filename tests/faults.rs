//! Fault injection: every scenario ends with each message delivered-and-deleted or in the
//! poison queue — none lost — and duplicates only where the scenario allows them, always with
//! the same CloudEvent id. Real Azurite, real endpoint, the real binary; short timings come
//! from the environment.

mod support;

use azure_queue_sidecar::testing::Queue;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::proxy::{Action, QueueOp, QueueProxy};
use support::*;

const WAIT: Duration = Duration::from_secs(30);

async fn wait_count(queue: &Queue, expected: u64, timeout: Duration) {
    let count = queue_count_within(queue, expected, timeout).await;
    assert!(
        count == expected,
        "queue holds {count} messages, expected {expected}"
    );
}

async fn send_all(queue: &Queue, texts: &[String]) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for text in texts {
        ids.insert(queue.send(text, None, None).await.expect("send"));
    }
    ids
}

fn texts(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{{\"{prefix}\":{i}}}")).collect()
}

fn poison_docs(texts: Vec<String>) -> Vec<serde_json::Value> {
    texts
        .iter()
        .map(|t| serde_json::from_str(t).expect("poison envelope is JSON"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_then_success_are_retried_with_the_asked_delays() {
    let azurite = Azurite::start().await;
    let queue = azurite.create_queue("flaky").await;
    let endpoint = Endpoint::start(|_, index| match index {
        0 => Reply::status(500),
        1 => Reply::status(429).header("retry-after", "3"),
        _ => Reply::status(200),
    })
    .await;
    let id = queue.send("eventually", None, None).await.expect("send");
    let _sidecar = Sidecar::spawn(&with(
        Sidecar::env(&azurite, "flaky", &endpoint.url),
        &[("RETRY_BASE_DELAY", "1s"), ("CREATE_POISON_QUEUE", "true")],
    ));
    let got = endpoint.wait_for(3, WAIT).await;
    wait_count(&queue, 0, WAIT).await;
    assert!(
        got.iter().all(|r| r.event_id() == id),
        "same CloudEvent id on every attempt"
    );
    let counts: Vec<_> = got
        .iter()
        .map(|r| r.header("ce-dequeuecount").unwrap_or(""))
        .collect();
    assert_eq!(counts, ["1", "2", "3"]);
    let first_gap = got[1].at - got[0].at;
    let second_gap = got[2].at - got[1].at;
    assert!(
        first_gap >= Duration::from_millis(750),
        "1 s retry delay respected: {first_gap:?}"
    );
    assert!(
        second_gap >= Duration::from_millis(2800),
        "Retry-After 3 respected: {second_gap:?}"
    );
    assert!(
        second_gap < Duration::from_secs(10),
        "Retry-After wins over the backoff: {second_gap:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(endpoint.count(), 3, "no duplicate after success");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_always_fails_is_poisoned_after_max_dequeue_count() {
    let azurite = Azurite::start().await;
    let queue = azurite.create_queue("doomed").await;
    let endpoint = Endpoint::start(|_, _| Reply::status(503)).await;
    let text = r#"{"order": "never"}"#;
    let id = queue.send(text, None, None).await.expect("send");
    let sidecar = Sidecar::spawn(&with(
        Sidecar::env(&azurite, "doomed", &endpoint.url),
        &[
            ("MAX_DEQUEUE_COUNT", "3"),
            ("RETRY_BASE_DELAY", "1s"),
            ("RETRY_MAX_DELAY", "1s"),
            ("CREATE_POISON_QUEUE", "true"),
        ],
    ));
    endpoint.wait_for(3, WAIT).await;
    wait_count(&queue, 0, WAIT).await;
    let poison = poison_docs(drain_texts(&azurite.queue("doomed-poison")).await);
    assert_eq!(poison.len(), 1, "{}", sidecar.output.text());
    let doc = &poison[0];
    assert_eq!(doc["schema"], "azure-queue-sidecar.poison.v1");
    assert_eq!(doc["text"], text, "the original text, unchanged");
    assert_eq!(doc["messageId"], id.as_str());
    assert_eq!(doc["queue"], "doomed");
    assert_eq!(doc["dequeueCount"], 3);
    assert_eq!(doc["reason"], "attempts_exhausted");
    assert_eq!(doc["lastStatus"], 503);
    assert!(doc["insertionTime"].is_string() && doc["failedAt"].is_string());
    assert_eq!(endpoint.count(), 3, "exactly MAX_DEQUEUE_COUNT attempts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_rejection_is_poisoned_on_the_first_attempt() {
    let azurite = Azurite::start().await;
    let queue = azurite.create_queue("rejected").await;
    azurite.create_queue("rejected-poison").await;
    let endpoint = Endpoint::start(|_, _| Reply::status(400)).await;
    queue
        .send("malformed for the app", None, None)
        .await
        .expect("send");
    let _sidecar = Sidecar::spawn(&Sidecar::env(&azurite, "rejected", &endpoint.url));
    endpoint.wait_for(1, WAIT).await;
    wait_count(&queue, 0, WAIT).await;
    let poison = poison_docs(drain_texts(&azurite.queue("rejected-poison")).await);
    assert_eq!(poison.len(), 1);
    assert_eq!(poison[0]["reason"], "rejected");
    assert_eq!(poison[0]["lastStatus"], 400);
    assert_eq!(poison[0]["dequeueCount"], 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(endpoint.count(), 1, "no retry of a permanent failure");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_base64_is_poisoned_without_bothering_the_endpoint() {
    let azurite = Azurite::start().await;
    let queue = azurite.create_queue("garbled").await;
    let endpoint = Endpoint::ok().await;
    queue
        .send("this is %%% not base64", None, None)
        .await
        .expect("send");
    let _sidecar = Sidecar::spawn(&with(
        Sidecar::env(&azurite, "garbled", &endpoint.url),
        &[("DECODE_BASE64", "true"), ("CREATE_POISON_QUEUE", "true")],
    ));
    wait_count(&queue, 0, WAIT).await;
    let poison = poison_docs(drain_texts(&azurite.queue("garbled-poison")).await);
    assert_eq!(poison.len(), 1);
    assert_eq!(poison[0]["reason"], "undeliverable");
    assert_eq!(poison[0]["text"], "this is %%% not base64");
    assert_eq!(endpoint.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_poison_queue_the_message_stays_in_the_main_queue() {
    let azurite = Azurite::start().await;
    let queue = azurite.create_queue("nowhere").await;
    let endpoint = Endpoint::start(|_, _| Reply::status(422)).await;
    queue
        .send("rejected but precious", None, None)
        .await
        .expect("send");
    let sidecar = Sidecar::spawn(&with(
        Sidecar::env(&azurite, "nowhere", &endpoint.url),
        &[("RETRY_BASE_DELAY", "1s"), ("RETRY_MAX_DELAY", "1s")],
    ));
    endpoint.wait_for(2, WAIT).await;
    assert_eq!(
        queue.approximate_message_count().await.expect("count"),
        1,
        "never dropped"
    );
    let reports = sidecar.output.count_matching("cannot poison");
    assert_eq!(reports, 1, "said once: {}", sidecar.output.text());
    assert!(
        sidecar.output.text().contains("CREATE_POISON_QUEUE"),
        "says how to fix it"
    );
    assert!(
        azurite
            .queue("nowhere-poison")
            .approximate_message_count()
            .await
            .is_err(),
        "the poison queue is not created without CREATE_POISON_QUEUE"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoint_keeps_its_lease_and_no_second_sidecar_gets_the_message() {
    let azurite = Azurite::start().await;
    let queue = azurite.create_queue("slow").await;
    let endpoint = Endpoint::start(|_, _| Reply::status(200).after(Duration::from_secs(5))).await;
    let id = queue
        .send("take your time", None, None)
        .await
        .expect("send");
    let env = with(
        Sidecar::env(&azurite, "slow", &endpoint.url),
        &[("VISIBILITY_TIMEOUT", "2s"), ("HTTP_TIMEOUT", "20s")],
    );
    let first = Sidecar::spawn(&env);
    endpoint.wait_for(1, WAIT).await;
    let second = Sidecar::spawn(&env);
    wait_count(&queue, 0, WAIT).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = endpoint.received();
    assert_eq!(got.len(), 1, "the message was handed out twice");
    assert_eq!(got[0].event_id(), id);
    assert!(
        first.output.count_matching("lease renewed") >= 2,
        "{}",
        first.output.text()
    );
    assert_eq!(first.output.count_matching("lease lost"), 0);
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_outage_pauses_receiving_and_poisons_nothing() {
    let azurite = Azurite::start().await;
    let queue = azurite.create_queue("outage").await;
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/events");
    let ids = send_all(&queue, &texts("outage", 5)).await;
    let sidecar = Sidecar::spawn(&with(
        Sidecar::env(&azurite, "outage", &url),
        &[
            ("MAX_DEQUEUE_COUNT", "2"),
            ("RETRY_BASE_DELAY", "1s"),
            ("RETRY_MAX_DELAY", "2s"),
            ("CREATE_POISON_QUEUE", "true"),
        ],
    ));
    assert!(
        wait_until(WAIT, || sidecar.output.count_matching("receiving paused")
            == 1)
        .await,
        "{}",
        sidecar.output.text()
    );
    let gets_before = azurite.output.count_matching("/outage/messages?");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let gets_during = azurite.output.count_matching("/outage/messages?") - gets_before;
    assert!(
        gets_during <= 1,
        "{gets_during} receives while the endpoint was down"
    );

    let endpoint = Endpoint::start_on(port, |_, _| Reply::status(200)).await;
    let got = endpoint.wait_for(5, WAIT).await;
    wait_count(&queue, 0, WAIT).await;
    assert_eq!(distinct_ids(&got), ids);
    assert!(sidecar.output.count_matching("receiving resumed") >= 1);
    assert_eq!(
        sidecar.output.count_matching("poison queue"),
        0,
        "{}",
        sidecar.output.text()
    );
    assert!(azurite
        .queue("outage-poison")
        .approximate_message_count()
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_recovers_by_itself_when_azurite_restarts() {
    let dir = temp_dir("restart");
    let port = free_port();
    let mut azurite = Azurite::start_with(port, Some(&dir)).await;
    let queue = azurite.create_queue("restart").await;
    let ids = send_all(&queue, &texts("restart", 20)).await;
    let endpoint =
        Endpoint::start(|_, _| Reply::status(200).after(Duration::from_millis(150))).await;
    let sidecar = Sidecar::spawn(&with(
        Sidecar::env(&azurite, "restart", &endpoint.url),
        &[
            ("MAX_IN_FLIGHT", "2"),
            ("BATCH_SIZE", "2"),
            ("VISIBILITY_TIMEOUT", "3s"),
        ],
    ));
    endpoint.wait_for(4, WAIT).await;
    azurite.stop().await;
    // Longer than a receive's 2 s retry window, so the outage is reported.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let azurite = Azurite::start_with(port, Some(&dir)).await;
    assert!(
        wait_until(Duration::from_secs(60), || distinct_ids(
            &endpoint.received()
        ) == ids)
        .await,
        "delivered {} of 20: {}",
        distinct_ids(&endpoint.received()).len(),
        sidecar.output.text()
    );
    wait_count(&azurite.queue("restart"), 0, WAIT).await;
    let text = sidecar.output.text();
    assert!(
        text.contains("\"unreachable\""),
        "the outage was noticed: {text}"
    );
    assert!(
        text.contains("queue reachable again"),
        "and the recovery: {text}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_in_a_busy_run_releases_what_it_cannot_finish() {
    let azurite = Azurite::start().await;
    let queue = azurite.create_queue("busy").await;
    let endpoint = Endpoint::start(|_, _| Reply::status(200).after(Duration::from_secs(30))).await;
    send_all(&queue, &texts("busy", 6)).await;
    let mut sidecar = Sidecar::spawn(&with(
        Sidecar::env(&azurite, "busy", &endpoint.url),
        &[
            ("MAX_IN_FLIGHT", "2"),
            ("BATCH_SIZE", "2"),
            ("VISIBILITY_TIMEOUT", "60s"),
            ("SHUTDOWN_TIMEOUT", "1s"),
            ("HTTP_TIMEOUT", "60s"),
        ],
    ));
    endpoint.wait_for(2, WAIT).await;
    sidecar.signal("TERM");
    let code = sidecar.wait_exit(Duration::from_secs(8)).await;
    assert_eq!(code, Some(0), "{}", sidecar.output.text());
    // Every message can be received again at once: the two cut off were released, the
    // others never left the queue.
    let again = queue
        .receive(32, Duration::from_secs(30))
        .await
        .expect("receive");
    assert_eq!(again.len(), 6);
    let summary = sidecar.summary();
    assert_eq!(summary["released"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigkill_a_restarted_sidecar_delivers_everything() {
    let azurite = Azurite::start().await;
    let queue = azurite.create_queue("crash").await;
    let ids = send_all(&queue, &texts("crash", 10)).await;
    let endpoint =
        Endpoint::start(|_, _| Reply::status(200).after(Duration::from_millis(400))).await;
    let env = with(
        Sidecar::env(&azurite, "crash", &endpoint.url),
        &[
            ("MAX_IN_FLIGHT", "2"),
            ("BATCH_SIZE", "2"),
            ("VISIBILITY_TIMEOUT", "2s"),
        ],
    );
    let crashed = Sidecar::spawn(&env);
    endpoint.wait_for(3, WAIT).await;
    crashed.signal("KILL");
    let _restarted = Sidecar::spawn(&env);
    assert!(
        wait_until(WAIT, || distinct_ids(&endpoint.received()) == ids).await,
        "delivered {} of 10",
        distinct_ids(&endpoint.received()).len()
    );
    wait_count(&queue, 0, WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sidecars_share_2000_messages_and_each_is_delivered_once() {
    let azurite = Azurite::start().await;
    let queue = azurite.create_queue("shared").await;
    let mut senders = Vec::new();
    for chunk in 0..8 {
        let queue = queue.clone();
        senders.push(tokio::spawn(async move {
            let mut ids = BTreeSet::new();
            for i in 0..250 {
                let text = format!("{{\"chunk\":{chunk},\"i\":{i}}}");
                ids.insert(queue.send(&text, None, None).await.expect("send"));
            }
            ids
        }));
    }
    let mut ids = BTreeSet::new();
    for sender in senders {
        ids.extend(sender.await.expect("sender"));
    }
    assert_eq!(ids.len(), 2000);
    let endpoint = Endpoint::ok().await;
    let env = Sidecar::env(&azurite, "shared", &endpoint.url);
    let (a, b) = (Sidecar::spawn(&env), Sidecar::spawn(&env));
    assert!(
        wait_until(Duration::from_secs(180), || endpoint.count() >= 2000).await,
        "delivered {}",
        endpoint.count()
    );
    wait_count(&queue, 0, Duration::from_secs(60)).await;
    let got = endpoint.received();
    assert_eq!(distinct_ids(&got), ids);
    assert_eq!(got.len(), 2000, "no duplicates");
    let deleted = |s: &Sidecar| s.output.count_matching("\"deleted\"");
    // The sidecars run on: their last log lines may still be on the way through the pipes.
    wait_until(Duration::from_secs(20), || {
        deleted(&a) + deleted(&b) >= 2000
    })
    .await;
    assert_eq!(deleted(&a) + deleted(&b), 2000, "each message deleted once");
    assert!(
        deleted(&a) > 0 && deleted(&b) > 0,
        "both sidecars took a share"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_only_process_rights_the_sidecar_degrades_and_keeps_delivering() {
    let azurite = Azurite::start().await;
    let queue = azurite.create_queue("least").await;
    azurite.create_queue("least-poison").await;
    let endpoint = Endpoint::start(|r, _| {
        Reply::status(if r.body_text().contains("bad") {
            500
        } else {
            200
        })
    })
    .await;
    queue.send("bad", None, None).await.expect("send");
    let good = send_all(&queue, &texts("good", 3)).await;
    // 'r' (metadata) + 'p' (get and delete): no 'u' (update) and no 'a' (add), and the SAS
    // is for the main queue only, so the poison queue refuses it too.
    let sas = azurite.queue_sas("least", "rp");
    let env: Vec<(String, String)> = Sidecar::env(&azurite, "least", &endpoint.url)
        .into_iter()
        .filter(|(k, _)| k != "AZURE_STORAGE_CONNECTION_STRING")
        .chain([
            ("AZURE_STORAGE_SAS_TOKEN".to_string(), sas),
            (
                "AZURE_STORAGE_QUEUE_ENDPOINT".to_string(),
                azurite.service_url(),
            ),
            ("MAX_DEQUEUE_COUNT".to_string(), "1".to_string()),
            ("VISIBILITY_TIMEOUT".to_string(), "2s".to_string()),
        ])
        .collect();
    let mut sidecar = Sidecar::spawn(&env);
    let bad_attempts = || {
        endpoint
            .received()
            .iter()
            .filter(|r| r.body_text() == "bad")
            .count()
    };
    assert!(
        wait_until(WAIT, || bad_attempts() >= 2).await,
        "{}",
        sidecar.output.text()
    );
    let delivered: BTreeSet<String> = endpoint
        .received()
        .iter()
        .filter(|r| r.body_text() != "bad")
        .map(Received::event_id)
        .collect();
    assert_eq!(delivered, good);
    wait_count(&queue, 1, WAIT).await;
    assert_eq!(
        sidecar.wait_exit(Duration::ZERO).await,
        None,
        "still running"
    );
    assert_eq!(
        sidecar.output.count_matching("degraded"),
        1,
        "{}",
        sidecar.output.text()
    );
    assert_eq!(sidecar.output.count_matching("cannot poison"), 1);
    assert!(!sidecar.output.text().contains("sig="));
    assert_eq!(
        azurite
            .queue("least-poison")
            .approximate_message_count()
            .await
            .expect("count"),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_is_logged_counted_and_survived() {
    let azurite = Azurite::start().await;
    let queue = azurite.create_queue("stolen").await;
    let endpoint = Endpoint::start(|_, _| Reply::status(200).after(Duration::from_secs(1))).await;
    queue.send("first", None, None).await.expect("send");
    let mut sidecar = Sidecar::spawn(&Sidecar::env(&azurite, "stolen", &endpoint.url));
    endpoint.wait_for(1, WAIT).await;
    // While the delivery runs, the message disappears (another consumer finished it first).
    queue.clear().await.expect("clear");
    assert!(
        wait_until(WAIT, || sidecar.output.count_matching("lease lost") == 1).await,
        "{}",
        sidecar.output.text()
    );
    queue.send("second", None, None).await.expect("send");
    endpoint.wait_for(2, WAIT).await;
    wait_count(&queue, 0, WAIT).await;
    sidecar.signal("TERM");
    assert_eq!(sidecar.wait_exit(Duration::from_secs(10)).await, Some(0));
    let summary = sidecar.summary();
    assert_eq!(summary["delivered_not_deleted"], 1);
    assert_eq!(summary["delivered"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_backed_off_without_a_hot_loop_and_recovered_from() {
    let azurite = Azurite::start().await;
    let queue = azurite.create_queue("throttled").await;
    let proxy = ThrottlingProxy::start(azurite.port).await;
    let endpoint = Endpoint::ok().await;
    proxy.throttle(true);
    let sidecar = Sidecar::spawn(&with(
        Sidecar::env(&azurite, "throttled", &endpoint.url),
        &[("AZURE_STORAGE_QUEUE_ENDPOINT", &proxy.service_url())],
    ));
    tokio::time::sleep(Duration::from_secs(6)).await;
    let refused = proxy.throttled_count();
    // Each receive is retried for 2 s (0.2 s, 0.4 s, 0.8 s...), then the loop backs off 0.5 s,
    // 1 s, 2 s...: a dozen or two requests in 6 s. A hot loop would make thousands.
    assert!(
        (3..=30).contains(&refused),
        "{refused} requests while throttled"
    );
    // Retried tries are debug lines; the failure itself is reported once.
    let reports = sidecar
        .json_lines()
        .into_iter()
        .filter(|l| l["kind"] == "throttled" && l["message"] == "queue call failed")
        .count();
    assert_eq!(reports, 1, "{}", sidecar.output.text());

    let ids = send_all(&queue, &texts("throttled", 3)).await;
    proxy.throttle(false);
    let got = endpoint.wait_for(3, Duration::from_secs(40)).await;
    assert_eq!(distinct_ids(&got), ids);
    wait_count(&queue, 0, WAIT).await;
    assert!(sidecar.output.count_matching("queue reachable again") == 1);
}

// ---------------------------------------------------------------------------------------------
// Compound faults (issue 10): each test below failed before its fix.
// ---------------------------------------------------------------------------------------------

/// A sidecar environment that reaches Azurite through `proxy`, authorized with a SAS.
fn through_proxy_with_sas(
    azurite: &Azurite,
    proxy: &QueueProxy,
    queue: &str,
    endpoint: &str,
) -> Vec<(String, String)> {
    Sidecar::env(azurite, queue, endpoint)
        .into_iter()
        .filter(|(k, _)| k != "AZURE_STORAGE_CONNECTION_STRING")
        .chain([
            (
                "AZURE_STORAGE_SAS_TOKEN".to_string(),
                azurite.queue_sas(queue, "raup"),
            ),
            (
                "AZURE_STORAGE_QUEUE_ENDPOINT".to_string(),
                proxy.service_url(),
            ),
        ])
        .collect()
}

/// A sidecar environment that reaches Azurite through `proxy` with the account key.
fn through_proxy(
    azurite: &Azurite,
    proxy: &QueueProxy,
    queue: &str,
    endpoint: &str,
) -> Vec<(String, String)> {
    with(
        Sidecar::env(azurite, queue, endpoint),
        &[("AZURE_STORAGE_QUEUE_ENDPOINT", &proxy.service_url())],
    )
}

fn once_flag() -> Arc<AtomicBool> {
    Arc::new(AtomicBool::new(false))
}

/// Stops the sidecar with SIGTERM and returns its summary line.
async fn stop(sidecar: &mut Sidecar) -> serde_json::Value {
    sidecar.signal("TERM");
    let code = sidecar.wait_exit(Duration::from_secs(40)).await;
    assert_eq!(code, Some(0), "{}", sidecar.output.text());
    sidecar.summary()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_delete_carries_one_sas_signature_and_is_not_refused() {
    let azurite = Azurite::start().await;
    let queue = azurite.create_queue("sas-retry").await;
    let refused = once_flag();
    let flag = refused.clone();
    let proxy = QueueProxy::start(azurite.port, move |r| {
        if r.op() == QueueOp::Delete && !flag.swap(true, Ordering::SeqCst) {
            Action::Answer {
                status: 503,
                code: "ServerBusy",
            }
        } else {
            Action::Forward
        }
    })
    .await;
    let endpoint = Endpoint::ok().await;
    let id = queue.send("signed once", None, None).await.expect("send");
    let mut sidecar = Sidecar::spawn(&through_proxy_with_sas(
        &azurite,
        &proxy,
        "sas-retry",
        &endpoint.url,
    ));
    wait_count(&queue, 0, WAIT).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let summary = stop(&mut sidecar).await;
    let requests = proxy.requests();
    for request in &requests {
        assert_eq!(
            request.signatures(),
            1,
            "{} {} carried {} signatures",
            request.method,
            request.path,
            request.signatures()
        );
    }
    let deletes = proxy.of(QueueOp::Delete);
    assert!(deletes.len() >= 2, "the refused delete was retried");
    assert_eq!(endpoint.count(), 1, "delivered once");
    assert_eq!(endpoint.received()[0].event_id(), id);
    let text = sidecar.output.text();
    assert!(!text.contains("\"kind\":\"unauthorized\""), "{text}");
    assert_eq!(summary["delivered"], 1, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_makes_the_endpoint_drop_the_connection_is_poisoned() {
    let azurite = Azurite::start().await;
    let queue = azurite.create_queue("crasher").await;
    let endpoint = Endpoint::start(|r, _| {
        if r.body_text().contains("boom") {
            Reply::close()
        } else {
            Reply::status(200)
        }
    })
    .await;
    let good = send_all(&queue, &texts("fine", 3)).await;
    let pill = queue.send("boom", None, None).await.expect("send");
    let sidecar = Sidecar::spawn(&with(
        Sidecar::env(&azurite, "crasher", &endpoint.url),
        &[
            ("MAX_DEQUEUE_COUNT", "3"),
            ("RETRY_BASE_DELAY", "1s"),
            ("RETRY_MAX_DELAY", "1s"),
            ("CREATE_POISON_QUEUE", "true"),
        ],
    ));
    wait_count(&queue, 0, Duration::from_secs(40)).await;
    let poison = poison_docs(drain_texts(&azurite.queue("crasher-poison")).await);
    assert_eq!(poison.len(), 1, "{}", sidecar.output.text());
    assert_eq!(poison[0]["messageId"], pill.as_str());
    assert_eq!(poison[0]["text"], "boom");
    assert_eq!(poison[0]["reason"], "attempts_exhausted");
    assert_eq!(poison[0]["dequeueCount"], 3);
    assert!(poison[0]["lastStatus"].is_null());
    let pill_attempts = endpoint
        .received()
        .iter()
        .filter(|r| r.body_text() == "boom")
        .count();
    assert_eq!(pill_attempts, 3, "exactly MAX_DEQUEUE_COUNT attempts");
    let delivered: BTreeSet<String> = endpoint
        .received()
        .iter()
        .filter(|r| r.body_text() != "boom")
        .map(Received::event_id)
        .collect();
    assert_eq!(delivered, good);
    assert_eq!(
        sidecar.output.count_matching("receiving paused"),
        0,
        "a dropped connection is not an endpoint outage"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_in_flight_when_the_post_finishes_decides_the_receipt() {
    let azurite = Azurite::start().await;
    let queue = azurite.create_queue("renewing").await;
    // Azurite applies every Update at once; its answer (the new receipt) arrives 1.5 s later.
    let proxy = QueueProxy::start(azurite.port, |r| match r.op() {
        QueueOp::Update => Action::DelayAnswer(Duration::from_millis(1500)),
        _ => Action::Forward,
    })
    .await;
    // The renewal goes out at 4 s (half the lease) and is answered at 5.5 s; the POST ends at
    // 4.7 s, while it is in flight.
    let endpoint =
        Endpoint::start(|_, _| Reply::status(200).after(Duration::from_millis(4700))).await;
    let id = queue.send("renew me", None, None).await.expect("send");
    let mut sidecar = Sidecar::spawn(&with(
        through_proxy(&azurite, &proxy, "renewing", &endpoint.url),
        &[("VISIBILITY_TIMEOUT", "8s"), ("HTTP_TIMEOUT", "20s")],
    ));
    wait_count(&queue, 0, WAIT).await;
    // Long enough for a wrongly kept message to come back (lease 8 s after the renewal).
    tokio::time::sleep(Duration::from_secs(8)).await;
    let summary = stop(&mut sidecar).await;
    let got = endpoint.received();
    assert_eq!(got.len(), 1, "delivered once: {}", sidecar.output.text());
    assert_eq!(got[0].event_id(), id);
    assert!(!proxy.of(QueueOp::Update).is_empty(), "a renewal was sent");
    assert_eq!(sidecar.output.count_matching("lease lost"), 0);
    assert_eq!(summary["delivered"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_refused_for_8_seconds_are_retried_and_nothing_is_redelivered() {
    let azurite = Azurite::start().await;
    let queue = azurite.create_queue("undeletable").await;
    let since: Arc<Mutex<Option<Instant>>> = Arc::default();
    let first = since.clone();
    let proxy = QueueProxy::start(azurite.port, move |r| {
        if r.op() != QueueOp::Delete {
            return Action::Forward;
        }
        let start = *first.lock().unwrap().get_or_insert(r.at);
        if r.at.duration_since(start) < Duration::from_secs(8) {
            Action::Answer {
                status: 503,
                code: "ServerBusy",
            }
        } else {
            Action::Forward
        }
    })
    .await;
    let endpoint = Endpoint::ok().await;
    let ids = send_all(&queue, &texts("sticky", 5)).await;
    // The lease (4 s) is shorter than the outage: deleting must keep the lease alive.
    let mut sidecar = Sidecar::spawn(&with(
        through_proxy(&azurite, &proxy, "undeletable", &endpoint.url),
        &[("VISIBILITY_TIMEOUT", "4s")],
    ));
    wait_count(&queue, 0, Duration::from_secs(40)).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let summary = stop(&mut sidecar).await;
    let got = endpoint.received();
    assert_eq!(distinct_ids(&got), ids);
    assert_eq!(got.len(), 5, "none redelivered: {}", sidecar.output.text());
    assert!(
        proxy
            .of(QueueOp::Delete)
            .iter()
            .filter(|r| r.action == "answer")
            .count()
            >= 5,
        "the deletes were refused for a while"
    );
    assert_eq!(summary["delivered"], 5);
    assert_eq!(sidecar.output.count_matching("lease lost"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_delete_that_finds_the_message_gone_after_a_lost_answer_counts_as_deleted() {
    let azurite = Azurite::start().await;
    let queue = azurite.create_queue("lost-answer").await;
    let cut = once_flag();
    let flag = cut.clone();
    let proxy = QueueProxy::start(azurite.port, move |r| {
        if r.op() == QueueOp::Delete && !flag.swap(true, Ordering::SeqCst) {
            Action::CutAfter
        } else {
            Action::Forward
        }
    })
    .await;
    let endpoint = Endpoint::ok().await;
    queue
        .send("deleted, unheard", None, None)
        .await
        .expect("send");
    let mut sidecar = Sidecar::spawn(&through_proxy(
        &azurite,
        &proxy,
        "lost-answer",
        &endpoint.url,
    ));
    wait_count(&queue, 0, WAIT).await;
    assert!(
        wait_until(WAIT, || proxy.of(QueueOp::Delete).len() >= 2).await,
        "the delete was retried"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let summary = stop(&mut sidecar).await;
    let deletes = proxy.of(QueueOp::Delete);
    assert_eq!(
        deletes[0].upstream_status,
        Some(204),
        "the first delete was applied"
    );
    assert_eq!(
        deletes[1].upstream_status,
        Some(404),
        "the retry found it gone"
    );
    assert_eq!(summary["delivered"], 1, "{}", sidecar.output.text());
    assert_eq!(summary["delivered_not_deleted"], 0);
    assert_eq!(sidecar.output.count_matching("lease lost"), 0);
    assert_eq!(endpoint.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_that_hangs_or_fails_is_retried_before_the_lease_expires() {
    let azurite = Azurite::start().await;
    let queue = azurite.create_queue("hard-renewal").await;
    let updates = Arc::new(AtomicUsize::new(0));
    let seen = updates.clone();
    // The first renewal hangs in front of the service (longer than the lease), the second is
    // refused; later ones pass.
    let proxy = QueueProxy::start(azurite.port, move |r| {
        if r.op() != QueueOp::Update {
            return Action::Forward;
        }
        match seen.fetch_add(1, Ordering::SeqCst) {
            0 => Action::DelayForward(Duration::from_secs(30)),
            1 => Action::Answer {
                status: 503,
                code: "ServerBusy",
            },
            _ => Action::Forward,
        }
    })
    .await;
    let endpoint = Endpoint::start(|_, _| Reply::status(200).after(Duration::from_secs(10))).await;
    let id = queue.send("keep it", None, None).await.expect("send");
    let mut sidecar = Sidecar::spawn(&with(
        through_proxy(&azurite, &proxy, "hard-renewal", &endpoint.url),
        &[("VISIBILITY_TIMEOUT", "8s"), ("HTTP_TIMEOUT", "30s")],
    ));
    wait_count(&queue, 0, Duration::from_secs(40)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let summary = stop(&mut sidecar).await;
    let got = endpoint.received();
    assert_eq!(
        got.len(),
        1,
        "never handed out twice: {}",
        sidecar.output.text()
    );
    assert_eq!(got[0].event_id(), id);
    assert!(updates.load(Ordering::SeqCst) >= 3);
    assert_eq!(summary["delivered"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_whose_lease_is_gone_is_not_copied_to_the_poison_queue() {
    let azurite = Azurite::start().await;
    let queue = azurite.create_queue("taken").await;
    let poison = azurite.create_queue("taken-poison").await;
    let endpoint = Endpoint::start(|_, _| Reply::status(400).after(Duration::from_secs(2))).await;
    queue
        .send("someone else's now", None, None)
        .await
        .expect("send");
    let sidecar = Sidecar::spawn(&Sidecar::env(&azurite, "taken", &endpoint.url));
    endpoint.wait_for(1, WAIT).await;
    // While the POST runs, the message is gone (another consumer finished it).
    queue.clear().await.expect("clear");
    assert!(
        wait_until(WAIT, || sidecar.output.count_matching("lease lost") >= 1).await,
        "{}",
        sidecar.output.text()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        poison.approximate_message_count().await.expect("count"),
        0,
        "{}",
        sidecar.output.text()
    );
    assert_eq!(
        sidecar.output.count_matching("moved to the poison queue"),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_copy_whose_delete_failed_is_counted_as_such() {
    let azurite = Azurite::start().await;
    let queue = azurite.create_queue("twice").await;
    let poison = azurite.create_queue("twice-poison").await;
    let refused = once_flag();
    let flag = refused.clone();
    let proxy = QueueProxy::start(azurite.port, move |r| {
        if r.op() == QueueOp::Delete && r.queue() == "twice" && !flag.swap(true, Ordering::SeqCst) {
            Action::Answer {
                status: 400,
                code: "PopReceiptMismatch",
            }
        } else {
            Action::Forward
        }
    })
    .await;
    let endpoint = Endpoint::start(|_, _| Reply::status(422)).await;
    queue.send("rejected", None, None).await.expect("send");
    let mut sidecar = Sidecar::spawn(&with(
        through_proxy(&azurite, &proxy, "twice", &endpoint.url),
        &[("VISIBILITY_TIMEOUT", "2s")],
    ));
    wait_count(&queue, 0, WAIT).await;
    let summary = stop(&mut sidecar).await;
    assert_eq!(
        poison.approximate_message_count().await.expect("count"),
        2,
        "the copy whose delete failed, and the second one"
    );
    assert_eq!(
        summary["poisoned_not_deleted"],
        1,
        "{}",
        sidecar.output.text()
    );
    assert_eq!(summary["poisoned"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_zero_does_not_make_a_hot_loop() {
    let azurite = Azurite::start().await;
    let queue = azurite.create_queue("impatient").await;
    let endpoint = Endpoint::start(|_, _| Reply::status(503).header("retry-after", "0")).await;
    queue
        .send("again and again", None, None)
        .await
        .expect("send");
    let sidecar = Sidecar::spawn(&with(
        Sidecar::env(&azurite, "impatient", &endpoint.url),
        &[("MAX_DEQUEUE_COUNT", "0"), ("RETRY_BASE_DELAY", "100ms")],
    ));
    endpoint.wait_for(1, WAIT).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let attempts = endpoint.count();
    // Update Message takes whole seconds: at most one attempt a second.
    assert!(
        (2..=6).contains(&attempts),
        "{attempts} attempts in about 4 s: {}",
        sidecar.output.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_stops_at_once_and_releases_what_is_in_flight() {
    let azurite = Azurite::start().await;
    let queue = azurite.create_queue("impatient-user").await;
    let endpoint = Endpoint::start(|_, _| Reply::status(200).after(Duration::from_secs(60))).await;
    send_all(&queue, &texts("stuck", 2)).await;
    let mut sidecar = Sidecar::spawn(&with(
        Sidecar::env(&azurite, "impatient-user", &endpoint.url),
        &[
            ("VISIBILITY_TIMEOUT", "60s"),
            ("SHUTDOWN_TIMEOUT", "40s"),
            ("HTTP_TIMEOUT", "90s"),
        ],
    ));
    endpoint.wait_for(2, WAIT).await;
    sidecar.signal("TERM");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let second = Instant::now();
    sidecar.signal("TERM");
    let code = sidecar.wait_exit(Duration::from_secs(8)).await;
    assert_eq!(code, Some(0), "{}", sidecar.output.text());
    assert!(second.elapsed() < Duration::from_secs(8));
    let again = queue
        .receive(32, Duration::from_secs(30))
        .await
        .expect("receive");
    assert_eq!(again.len(), 2, "both released, visible at once");
    assert_eq!(sidecar.summary()["released"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_a_last_receive_brings_in_after_sigterm_are_delivered_not_released() {
    let azurite = Azurite::start().await;
    let queue = azurite.create_queue("late-batch").await;
    let ids = send_all(&queue, &texts("late", 3)).await;
    let proxy = QueueProxy::start(azurite.port, |r| match r.op() {
        QueueOp::Receive => Action::DelayAnswer(Duration::from_secs(2)),
        _ => Action::Forward,
    })
    .await;
    let endpoint = Endpoint::ok().await;
    let mut sidecar = Sidecar::spawn(&through_proxy(
        &azurite,
        &proxy,
        "late-batch",
        &endpoint.url,
    ));
    assert!(wait_until(WAIT, || !proxy.of(QueueOp::Receive).is_empty()).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let summary = stop(&mut sidecar).await;
    assert_eq!(distinct_ids(&endpoint.received()), ids);
    assert_eq!(summary["delivered"], 3, "{}", sidecar.output.text());
    assert_eq!(summary["released"], 0);
    wait_count(&queue, 0, WAIT).await;
}

/// A renewal whose answer is lost after Azurite applied it leaves a pop receipt nobody knows:
/// the delete after the 2xx fails and the message comes back when that lease ends. Azure
/// cannot help with that, but the sidecar that delivered it remembers: when the message comes
/// back to it, it is deleted with the new receipt instead of being POSTed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivered_message_that_comes_back_after_a_lost_renewal_answer_is_not_posted_again() {
    let azurite = Azurite::start().await;
    let queue = azurite.create_queue("receipt-lost").await;
    let cut = once_flag();
    let proxy = QueueProxy::start(azurite.port, move |r| match r.op() {
        QueueOp::Update if !cut.swap(true, Ordering::SeqCst) => Action::CutAfter,
        _ => Action::Forward,
    })
    .await;
    // The renewal goes out at 2 s (half the 4 s lease); its answer is cut; the POST ends at 3 s.
    let endpoint = Endpoint::start(|_, _| Reply::status(200).after(Duration::from_secs(3))).await;
    let id = queue
        .send("deliver me once", None, None)
        .await
        .expect("send");
    let mut sidecar = Sidecar::spawn(&with(
        through_proxy(&azurite, &proxy, "receipt-lost", &endpoint.url),
        &[
            ("VISIBILITY_TIMEOUT", "4s"),
            ("HTTP_TIMEOUT", "20s"),
            ("POLL_MAX_INTERVAL", "1s"),
        ],
    ));
    wait_count(&queue, 0, Duration::from_secs(40)).await;
    let summary = stop(&mut sidecar).await;
    let got = endpoint.received();
    assert_eq!(got.len(), 1, "POSTed once: {}", sidecar.output.text());
    assert_eq!(got[0].event_id(), id);
    assert!(
        proxy.requests().iter().any(|r| r.action == "cut_after"),
        "the renewal's answer was cut"
    );
    assert_eq!(
        sidecar
            .output
            .count_matching("came back after it was delivered"),
        1,
        "{}",
        sidecar.output.text()
    );
    assert_eq!(summary["delivered_not_deleted"], 1);
    assert_eq!(summary["redeliveries_avoided"], 1);
}
