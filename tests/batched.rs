//! Batched content mode (`CE_MODE=batched`) end to end: the real binary, a real Azurite, a real
//! HTTP endpoint. What a batch looks like (the CloudEvents SDK reads every array), both size
//! limits, the all-or-nothing outcome of a POST, the bisection that finds the one message an
//! endpoint rejects, leases kept for every message of a batch in flight, and a hard stop.

mod support;

use azure_queue_sidecar::testing::{Queue, BATCHED};
use serde_json::value::RawValue;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use support::*;

const WAIT: Duration = Duration::from_secs(30);

/// The entries of a batched request, each as its raw JSON text. Panics unless the request is
/// a batch and the official SDK reads every entry as a CloudEvent.
fn entries(request: &Received) -> Vec<String> {
    assert_eq!(request.header("content-type"), Some(BATCHED));
    let raw: Vec<Box<RawValue>> = serde_json::from_slice(&request.body)
        .unwrap_or_else(|e| panic!("not a JSON array ({e}): {}", request.body_text()));
    let sdk: Result<Vec<cloudevents::Event>, _> = serde_json::from_slice(&request.body);
    assert!(
        sdk.is_ok(),
        "the CloudEvents SDK refuses the batch: {:?}: {}",
        sdk.err(),
        request.body_text()
    );
    raw.into_iter().map(|e| e.get().to_string()).collect()
}

/// A string member of an entry.
fn member(entry: &str, name: &str) -> String {
    let raw = json_member(entry.as_bytes(), name);
    serde_json::from_str::<serde_json::Value>(&raw)
        .map(|v| match v {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        })
        .expect("member JSON")
}

fn ids(request: &Received) -> Vec<String> {
    entries(request).iter().map(|e| member(e, "id")).collect()
}

async fn metrics(sidecar: &Sidecar) -> BTreeMap<String, f64> {
    let (_, text) = admin_get(sidecar.admin(), "/metrics")
        .await
        .expect("metrics answer");
    parse_metrics(&text)
}

fn metric(metrics: &BTreeMap<String, f64>, key: &str) -> f64 {
    metrics.get(key).copied().unwrap_or(0.0)
}

fn batched(azurite: &Azurite, queue: &str, endpoint: &str) -> Vec<(String, String)> {
    with(
        Sidecar::env(azurite, queue, endpoint),
        &[("CE_MODE", "batched"), ("CE_SOURCE", "/orders")],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_arrays_of_structured_events_within_both_limits() {
    let azurite = Azurite::start().await;
    let queue = azurite.create_queue("batches").await;
    let endpoint = Endpoint::ok().await;
    // JSON whose numbers a JSON model would rewrite, text, and one message too large for any
    // batch of 4 KiB.
    let json = r#"{"price": 12.50, "id": 123456789012345678901234567890}"#;
    let mut sent = BTreeMap::new();
    for n in 0..30 {
        let text = match n % 3 {
            0 => json.to_string(),
            1 => format!("order {n} {}", "x".repeat(200)),
            _ => format!("{{\"n\":{n}}}"),
        };
        let id = queue.send(&text, None, None).await.expect("send");
        sent.insert(id, text);
    }
    let big_text = "y".repeat(6000);
    let big = queue.send(&big_text, None, None).await.expect("send");
    sent.insert(big.clone(), big_text);

    let sidecar = Sidecar::spawn(&with(
        batched(&azurite, "batches", &endpoint.url),
        &[("CE_BATCH_SIZE", "8"), ("CE_BATCH_MAX_BYTES", "4096")],
    ));
    let all: BTreeSet<String> = sent.keys().cloned().collect();
    let delivered = wait_until(WAIT, || {
        endpoint
            .received()
            .iter()
            .flat_map(ids)
            .collect::<BTreeSet<_>>()
            == all
    })
    .await;
    assert!(delivered, "{}", sidecar.output.text());
    assert_queue_empties(&queue).await;

    let requests = endpoint.received();
    let mut seen = Vec::new();
    for request in &requests {
        let entries = entries(request);
        assert!(entries.len() <= 8, "{} entries", entries.len());
        if entries.len() > 1 {
            assert!(
                request.body.len() <= 4096,
                "a batch of {} entries has {} bytes",
                entries.len(),
                request.body.len()
            );
        }
        for entry in &entries {
            let id = member(entry, "id");
            if id == big {
                assert_eq!(entries.len(), 1, "the large message goes alone");
                assert!(request.body.len() > 4096);
            }
            // Exactly what structured mode writes: JSON data embedded as written.
            assert_eq!(member(entry, "specversion"), "1.0");
            assert_eq!(member(entry, "source"), "/orders");
            assert_eq!(member(entry, "dequeuecount"), "1");
            let text = &sent[&id];
            if text.starts_with('{') {
                assert_eq!(json_member(entry.as_bytes(), "data"), *text);
                assert_eq!(member(entry, "datacontenttype"), "application/json");
            } else {
                assert_eq!(member(entry, "data"), *text);
            }
            seen.push(id);
        }
    }
    assert_eq!(seen.len(), sent.len(), "each message once");
    assert!(
        requests.len() >= 5,
        "31 messages in batches of at most 8 need 5 POSTs at least"
    );

    let m = metrics(&sidecar).await;
    assert_eq!(
        metric(
            &m,
            r#"azure_queue_sidecar_deliveries_total{outcome="delivered",status_class="2xx"}"#
        ),
        31.0,
        "deliveries are counted per message"
    );
    assert_eq!(
        metric(&m, "azure_queue_sidecar_batch_size_count"),
        requests.len() as f64
    );
    assert_eq!(metric(&m, "azure_queue_sidecar_batch_size_sum"), 31.0);
    assert_eq!(
        metric(&m, "azure_queue_sidecar_messages_deleted_total"),
        31.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_defaults_one_receive_of_32_is_one_post() {
    let azurite = Azurite::start().await;
    let queue = azurite.create_queue("full").await;
    let endpoint = Endpoint::ok().await;
    let mut sent = BTreeSet::new();
    for n in 0..32 {
        sent.insert(
            queue
                .send(&format!("m{n}"), None, None)
                .await
                .expect("send"),
        );
    }
    let sidecar = Sidecar::spawn(&batched(&azurite, "full", &endpoint.url));
    let first = endpoint.wait_for(1, WAIT).await;
    assert_queue_empties(&queue).await;
    let first: BTreeSet<String> = ids(&first[0]).into_iter().collect();
    assert_eq!(first, sent, "{}", sidecar.output.text());
    assert_eq!(endpoint.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_500_retries_every_message_of_the_batch_with_the_same_ids() {
    let azurite = Azurite::start().await;
    let queue = azurite.create_queue("retried").await;
    let endpoint =
        Endpoint::start(|_, index| Reply::status(if index == 0 { 500 } else { 200 })).await;
    let mut sent = BTreeSet::new();
    for n in 0..5 {
        sent.insert(
            queue
                .send(&format!("m{n}"), None, None)
                .await
                .expect("send"),
        );
    }
    let sidecar = Sidecar::spawn(&batched(&azurite, "retried", &endpoint.url));
    let first = endpoint.wait_for(1, WAIT).await;
    let failed: BTreeSet<String> = ids(&first[0]).into_iter().collect();
    assert_eq!(failed, sent);
    // Every message was hidden for its retry: none is visible, none was deleted.
    assert_eq!(queue.approximate_message_count().await.expect("count"), 5);

    let redelivered = wait_until(WAIT, || {
        endpoint.received()[1..]
            .iter()
            .flat_map(ids)
            .collect::<BTreeSet<_>>()
            == sent
    })
    .await;
    assert!(redelivered, "{}", sidecar.output.text());
    assert_queue_empties(&queue).await;
    for request in &endpoint.received()[1..] {
        for entry in entries(request) {
            assert_eq!(member(&entry, "dequeuecount"), "2", "its own attempt count");
        }
    }
    let m = metrics(&sidecar).await;
    assert_eq!(
        metric(
            &m,
            r#"azure_queue_sidecar_retries_scheduled_total{failure="500"}"#
        ),
        5.0
    );
    assert_eq!(
        metric(
            &m,
            r#"azure_queue_sidecar_deliveries_total{outcome="retryable",status_class="5xx"}"#
        ),
        5.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_one_rejected_message_ends_with_only_that_one_poisoned() {
    let azurite = Azurite::start().await;
    let queue = azurite.create_queue("mixed").await;
    azurite.create_queue("mixed-poison").await;
    // The endpoint refuses any batch that contains the bad message, as a validating app
    // refuses a whole request for one bad entry.
    let endpoint = Endpoint::start(|request, _| {
        Reply::status(if request.body_text().contains("reject-me") {
            400
        } else {
            200
        })
    })
    .await;
    let mut good = BTreeSet::new();
    let mut bad = String::new();
    for n in 0..9 {
        let text = if n == 5 {
            "reject-me".to_string()
        } else {
            format!("fine {n}")
        };
        let id = queue.send(&text, None, None).await.expect("send");
        if n == 5 {
            bad = id;
        } else {
            good.insert(id);
        }
    }
    let sidecar = Sidecar::spawn(&batched(&azurite, "mixed", &endpoint.url));
    assert_queue_empties_within(&queue, &sidecar).await;

    let poison_queue = azurite.queue("mixed-poison");
    let poisoned: Vec<serde_json::Value> = drain_texts(&poison_queue)
        .await
        .iter()
        .map(|t| serde_json::from_str(t).expect("poison envelope"))
        .collect();
    assert_eq!(poisoned.len(), 1, "{poisoned:?}");
    assert_eq!(poisoned[0]["messageId"], bad.as_str());
    assert_eq!(poisoned[0]["reason"], "rejected");
    assert_eq!(poisoned[0]["lastStatus"], 400);

    let received = endpoint.received();
    let answers = endpoint.answers();
    let mut accepted = Vec::new();
    for answer in &answers {
        if answer.status == 200 {
            accepted.extend(ids(&received[answer.index]));
        }
    }
    let accepted_set: BTreeSet<String> = accepted.iter().cloned().collect();
    assert_eq!(accepted_set, good, "every good message delivered");
    assert_eq!(accepted.len(), good.len(), "and each only once");
    assert!(
        received.len() < 2 * 9,
        "{} POSTs for a batch of 9",
        received.len()
    );
    assert_eq!(ids(&received[0]).len(), 9, "first the whole batch");

    let m = metrics(&sidecar).await;
    assert!(metric(&m, "azure_queue_sidecar_batch_bisections_total") >= 1.0);
    assert_eq!(
        metric(
            &m,
            r#"azure_queue_sidecar_messages_poisoned_total{reason="rejected"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            r#"azure_queue_sidecar_deliveries_total{outcome="permanent",status_class="4xx"}"#
        ),
        1.0,
        "only the rejected message counts as rejected"
    );
}

async fn assert_queue_empties_within(queue: &Queue, sidecar: &Sidecar) {
    let count = queue_count_within(queue, 0, Duration::from_secs(30)).await;
    assert_eq!(
        count,
        0,
        "queue still holds {count} messages: {}",
        sidecar.output.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_lease_of_a_batch_in_flight_is_renewed() {
    let azurite = Azurite::start().await;
    let queue = azurite.create_queue("slow").await;
    // Answers after 3.5 s, well past the 2 s lease: without renewals the messages would come
    // back while the POST runs, and be received and POSTed again.
    let endpoint =
        Endpoint::start(|_, _| Reply::status(200).after(Duration::from_millis(3500))).await;
    let mut sent = BTreeSet::new();
    for n in 0..4 {
        sent.insert(
            queue
                .send(&format!("m{n}"), None, None)
                .await
                .expect("send"),
        );
    }
    let sidecar = Sidecar::spawn(&with(
        batched(&azurite, "slow", &endpoint.url),
        &[("VISIBILITY_TIMEOUT", "2s")],
    ));
    let first = endpoint.wait_for(1, WAIT).await;
    assert_eq!(ids(&first[0]).into_iter().collect::<BTreeSet<_>>(), sent);
    assert_queue_empties(&queue).await;
    assert_eq!(endpoint.count(), 1, "no message came back during the POST");
    let renewed: BTreeSet<String> = sidecar
        .json_lines()
        .iter()
        .filter(|l| l["message"] == "lease renewed")
        .filter_map(|l| l["message_id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(renewed, sent, "{}", sidecar.output.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_releases_every_message_of_a_batch_in_flight() {
    let azurite = Azurite::start().await;
    let queue = azurite.create_queue("cut").await;
    let endpoint = Endpoint::start(|_, _| Reply::status(200).after(Duration::from_secs(60))).await;
    for n in 0..3 {
        queue
            .send(&format!("m{n}"), None, None)
            .await
            .expect("send");
    }
    let mut sidecar = Sidecar::spawn(&with(
        batched(&azurite, "cut", &endpoint.url),
        &[("VISIBILITY_TIMEOUT", "60s")],
    ));
    endpoint.wait_for(1, WAIT).await;
    sidecar.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    sidecar.signal("TERM");
    assert_eq!(sidecar.wait_exit(Duration::from_secs(15)).await, Some(0));
    let summary = sidecar.summary();
    assert_eq!(summary["released"], 3, "{summary}");
    assert_eq!(summary["left"], 0, "{summary}");
    // Released: visible again at once, long before their 60 s lease would end.
    let back = drain_texts(&queue).await;
    assert_eq!(back.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retryable_failure_while_bisecting_retries_that_half_without_poisoning() {
    let azurite = Azurite::start().await;
    let queue = azurite.create_queue("halves").await;
    azurite.create_queue("halves-poison").await;
    // The whole batch is refused (400), its first half then fails retryably (503), and
    // everything after that is accepted.
    let endpoint = Endpoint::start(|_, index| {
        Reply::status(match index {
            0 => 400,
            1 => 503,
            _ => 200,
        })
    })
    .await;
    let mut sent = Vec::new();
    for n in 0..4 {
        sent.push(
            queue
                .send(&format!("m{n}"), None, None)
                .await
                .expect("send"),
        );
    }
    let sidecar = Sidecar::spawn(&batched(&azurite, "halves", &endpoint.url));
    assert_queue_empties_within(&queue, &sidecar).await;
    assert!(drain_texts(&azurite.queue("halves-poison"))
        .await
        .is_empty());

    let received = endpoint.received();
    assert_eq!(ids(&received[0]), sent, "the whole batch, in order");
    assert_eq!(ids(&received[1]), sent[..2], "the first half");
    assert_eq!(ids(&received[2]), sent[2..], "the second half, accepted");
    // The first half was not split further: retried as it was, each with its own count.
    let retried: Vec<String> = received[3..].iter().flat_map(entries).collect();
    let retried_ids: BTreeSet<String> = retried.iter().map(|e| member(e, "id")).collect();
    assert_eq!(retried_ids, sent[..2].iter().cloned().collect());
    for entry in &retried {
        assert_eq!(member(entry, "dequeuecount"), "2");
    }
    let m = metrics(&sidecar).await;
    assert_eq!(
        metric(&m, "azure_queue_sidecar_batch_bisections_total"),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            r#"azure_queue_sidecar_retries_scheduled_total{failure="503"}"#
        ),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_counts_messages_in_every_mode() {
    let azurite = Azurite::start().await;
    let endpoint = Endpoint::start(|_, _| Reply::status(200).after(Duration::from_secs(4))).await;
    for (mode, queue_name, messages) in [("binary", "single", 2), ("batched", "grouped", 3)] {
        let queue = azurite.create_queue(queue_name).await;
        for n in 0..messages {
            queue
                .send(&format!("m{n}"), None, None)
                .await
                .expect("send");
        }
        let sidecar = Sidecar::spawn(&with(
            Sidecar::env(&azurite, queue_name, &endpoint.url),
            &[("CE_MODE", mode)],
        ));
        let key = "azure_queue_sidecar_in_flight";
        let mut seen = 0.0;
        let counted = {
            let deadline = std::time::Instant::now() + WAIT;
            loop {
                if let Some((_, text)) = admin_get(sidecar.admin(), "/metrics").await {
                    seen = metric(&parse_metrics(&text), key);
                }
                if seen == messages as f64 || std::time::Instant::now() > deadline {
                    break seen == messages as f64;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        assert!(
            counted,
            "{mode}: in_flight {seen} while {messages} messages are being delivered"
        );
        assert_queue_empties(&queue).await;
        let m = metrics(&sidecar).await;
        assert_eq!(metric(&m, key), 0.0, "{mode}: nothing in flight after");
    }
}
