//! Operator tools end to end: `poison peek`, `poison redrive`, `EXIT_WHEN_IDLE` and the
//! oldest-message-age gauge. The real binary, a real Azurite, a real HTTP endpoint.

mod support;

use azure_queue_sidecar::testing::{PeekedMessage, Queue};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use support::*;

const WAIT: Duration = Duration::from_secs(60);
const GAUGE: &str = "azure_queue_sidecar_queue_oldest_message_age_seconds";

/// What a peek shows of a queue: ids, dequeue counts and texts, in order.
fn snapshot(messages: &[PeekedMessage]) -> Vec<(String, u32, String)> {
    messages
        .iter()
        .map(|m| (m.id.clone(), m.dequeue_count, m.text.clone()))
        .collect()
}

/// Waits until a peek of `queue` shows `n` messages; returns them.
async fn wait_visible(queue: &Queue, n: usize, timeout: Duration) -> Vec<PeekedMessage> {
    let deadline = Instant::now() + timeout;
    loop {
        // The poison queue may not exist yet (the sidecar creates it on first use).
        let peeked = queue.peek(32).await.unwrap_or_default();
        if peeked.len() == n || Instant::now() >= deadline {
            assert_eq!(peeked.len(), n, "visible messages in {}", queue_name(queue));
            return peeked;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn queue_name(queue: &Queue) -> String {
    format!("{queue:?}")
}

/// A poison envelope as the sidecar writes it (`src/pipeline/poison.rs`).
fn envelope(queue: &str, id: &str, text: &str) -> String {
    serde_json::json!({
        "schema": "azure-queue-sidecar.poison.v1", "queue": queue, "messageId": id,
        "insertionTime": "2026-01-01T00:00:00Z", "dequeueCount": 5,
        "reason": "attempts_exhausted", "lastStatus": 503, "lastError": "HTTP 503",
        "failedAt": "2026-01-01T00:05:00Z", "text": text,
    })
    .to_string()
}

/// Texts that must come back byte for byte: JSON with XML and JSON specials, base64 of bytes
/// that are not UTF-8, plain text with control characters, and one whose envelope would exceed
/// 64 KiB (every `"` doubles when escaped), which the poison queue holds as raw text.
fn originals() -> Vec<String> {
    vec![
        r#"{"order":1,"note":"<&> 'q' \"quoted\" \u00e9 é 😀 \\"}"#.to_string(),
        b64(&[0xff, 0xfe, 0x00, 0x80, 0xc3, 0x28, 0x0a, 0x0d]),
        "line one\nline\ttwo <b>&amp;</b>".to_string(),
        "\"".repeat(40_000),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peek_changes_nothing_and_redrive_restores_the_original_text_for_the_sidecar() {
    let azurite = Azurite::start().await;
    let main = azurite.create_queue("redrive").await;
    let poison = azurite.queue("redrive-poison");
    let texts = originals();
    for text in &texts {
        main.send(text, None, None).await.expect("send");
    }

    // A sidecar whose endpoint rejects everything poisons every message at once.
    let rejecting = Endpoint::start(|_, _| Reply::status(400)).await;
    let env = with(
        Sidecar::env(&azurite, "redrive", &rejecting.url),
        &[("CREATE_POISON_QUEUE", "true")],
    );
    let mut sidecar = Sidecar::spawn(&env);
    let before = wait_visible(&poison, texts.len(), WAIT).await;
    sidecar.signal("TERM");
    assert_eq!(sidecar.wait_exit(WAIT).await, Some(0));
    let count_before = poison.approximate_message_count().await.expect("count");
    assert_eq!(count_before, texts.len() as u64);
    let raw: Vec<_> = before
        .iter()
        .filter(|m| m.text.starts_with("\"\""))
        .collect();
    assert_eq!(
        raw.len(),
        1,
        "the 40,000-quote message is stored as raw text"
    );
    assert_eq!(raw[0].text, texts[3]);

    // peek: one line per message, nothing hidden, removed or dequeued.
    let (code, stdout, stderr) = command(&["poison", "peek"], &env).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), texts.len(), "{stdout}");
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("reason=rejected"))
            .count(),
        3,
        "{stdout}"
    );
    assert!(lines
        .iter()
        .any(|l| l.contains("envelope=none") && l.contains("(40000 bytes)")));
    assert!(stdout.contains("last=\"HTTP 400\""), "{stdout}");
    let (code, stdout, stderr) = command(&["poison", "peek", "--json", "--max", "50"], &env).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stderr.contains("at most 32"), "{stderr}");
    let objects: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(objects.len(), texts.len());
    for object in objects.iter().filter(|o| o["envelope"] == true) {
        assert_eq!(object["reason"], "rejected");
        assert_eq!(object["lastStatus"], 400);
        assert_eq!(object["queue"], "redrive");
        assert_eq!(object["dequeueCount"], 1);
        assert!(object["messageId"]
            .as_str()
            .is_some_and(|id| !id.is_empty()));
    }
    let (code, stdout, _) = command(&["poison", "redrive", "--dry-run"], &env).await;
    assert_eq!(code, 0);
    let would = stdout
        .lines()
        .filter(|l| l.starts_with("would move "))
        .count();
    assert_eq!(would, texts.len(), "{stdout}");
    let after = wait_visible(&poison, texts.len(), WAIT).await;
    assert_eq!(
        snapshot(&after),
        snapshot(&before),
        "peek and dry run change nothing"
    );
    assert_eq!(
        poison.approximate_message_count().await.expect("count"),
        count_before
    );
    assert_eq!(main.peek(32).await.expect("peek").len(), 0, "nothing moved");

    // redrive: every original text back in the main queue, byte for byte.
    let (code, stdout, stderr) = command(&["poison", "redrive"], &env).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    let moved = stdout.lines().filter(|l| l.starts_with("moved ")).count();
    assert_eq!(moved, texts.len(), "{stdout}");
    assert!(stdout.contains(&format!("redrive: moved {} message(s)", texts.len())));
    assert_eq!(poison.approximate_message_count().await.expect("count"), 0);
    let restored: BTreeSet<String> = main
        .peek(32)
        .await
        .expect("peek")
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(restored, texts.iter().cloned().collect::<BTreeSet<_>>());

    // ... and a sidecar delivers them as the producer wrote them.
    let endpoint = Endpoint::ok().await;
    let _sidecar = Sidecar::spawn(&with(
        Sidecar::env(&azurite, "redrive", &endpoint.url),
        &[("CREATE_POISON_QUEUE", "true")],
    ));
    let received = endpoint.wait_for(texts.len(), WAIT).await;
    let bodies: BTreeSet<Vec<u8>> = received.into_iter().map(|r| r.body).collect();
    let expected: BTreeSet<Vec<u8>> = texts.iter().map(|t| t.as_bytes().to_vec()).collect();
    assert_eq!(bodies, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redrive_whose_send_fails_keeps_every_message_visible_in_the_poison_queue() {
    let azurite = Azurite::start().await;
    // The main queue does not exist: every send fails.
    let poison = azurite.create_queue("gone-poison").await;
    for n in 0..3 {
        let text = envelope("gone", &format!("m-{n}"), &format!("payload {n}"));
        poison.send(&text, None, None).await.expect("send");
    }
    let before = wait_visible(&poison, 3, WAIT).await;
    let env = Sidecar::env(&azurite, "gone", "http://127.0.0.1:9/");
    let (code, stdout, stderr) = command(&["poison", "redrive"], &env).await;
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stderr.contains("cannot send"), "{stderr}");
    assert!(stderr.contains("stays in gone-poison"), "{stderr}");
    assert!(stdout.contains("moved 0 message(s)"), "{stdout}");
    assert!(stdout.contains("skipped 0, failed 1"), "{stdout}");
    // Nothing lost, nothing hidden for the length of the lease: all three are visible again
    // at once (a peek within a few seconds, while the lease would have been 60 s).
    let after = wait_visible(&poison, 3, Duration::from_secs(10)).await;
    let ids = |m: &[PeekedMessage]| m.iter().map(|m| m.id.clone()).collect::<BTreeSet<_>>();
    assert_eq!(ids(&after), ids(&before));
    let texts = |m: &[PeekedMessage]| m.iter().map(|m| m.text.clone()).collect::<BTreeSet<_>>();
    assert_eq!(texts(&after), texts(&before));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_moves_at_most_max_and_leaves_another_queues_messages() {
    let azurite = Azurite::start().await;
    let main = azurite.create_queue("orders").await;
    let poison = azurite.create_queue("orders-poison").await;
    for n in 0..3 {
        let text = envelope("orders", &format!("m-{n}"), &format!("order {n}"));
        poison.send(&text, None, None).await.expect("send");
    }
    let foreign = envelope("billing", "b-1", "invoice 1");
    poison.send(&foreign, None, None).await.expect("send");
    wait_visible(&poison, 4, WAIT).await;
    let env = Sidecar::env(&azurite, "orders", "http://127.0.0.1:9/");

    let (code, stdout, stderr) = command(&["poison", "redrive", "--max", "2"], &env).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("redrive: moved 2 message(s)"), "{stdout}");
    assert_eq!(main.peek(32).await.expect("peek").len(), 2);
    // What it did not move is visible again at once (not after the 60 s lease).
    wait_visible(&poison, 2, Duration::from_secs(10)).await;

    let (code, stdout, stderr) = command(&["poison", "redrive"], &env).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("redrive: moved 1 message(s)"), "{stdout}");
    assert!(stdout.contains("poisoned from queue billing"), "{stdout}");
    let left = wait_visible(&poison, 1, Duration::from_secs(10)).await;
    assert_eq!(left[0].text, foreign);
    let moved: BTreeSet<String> = drain_texts(&main).await.into_iter().collect();
    assert_eq!(
        moved,
        ["order 0", "order 1", "order 2"]
            .into_iter()
            .map(String::from)
            .collect()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_peek_fails_with_the_reason_when_the_poison_queue_cannot_be_read() {
    let azurite = Azurite::start().await;
    azurite.create_queue("lonely").await;
    let env = Sidecar::env(&azurite, "lonely", "http://127.0.0.1:9/");
    let (code, stdout, stderr) = command(&["poison", "peek"], &env).await;
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stderr.contains("cannot read the poison queue lonely-poison"),
        "{stderr}"
    );
    assert!(stderr.contains("404"), "{stderr}");
    let (code, _, stderr) = command(&["poison", "redrive"], &env).await;
    assert_eq!(code, 1, "{stderr}");
    let (code, _, stderr) = command(&["poison", "peek", "--max", "none"], &env).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--max"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_when_idle_exits_0_once_everything_is_delivered() {
    let azurite = Azurite::start().await;
    let queue = azurite.create_queue("job").await;
    for n in 0..3 {
        queue
            .send(&format!("job {n}"), None, None)
            .await
            .expect("send");
    }
    let endpoint = Endpoint::ok().await;
    let mut sidecar = Sidecar::spawn(&with(
        Sidecar::env(&azurite, "job", &endpoint.url),
        &[("EXIT_WHEN_IDLE", "2s")],
    ));
    assert_eq!(
        sidecar.wait_exit(WAIT).await,
        Some(0),
        "{}",
        sidecar.output.text()
    );
    assert_eq!(endpoint.count(), 3);
    assert_eq!(queue.approximate_message_count().await.expect("count"), 0);
    let summary = sidecar.summary();
    assert_eq!(summary["delivered"], 3, "{summary}");
    assert_eq!(summary["left"], 0);
    assert!(sidecar
        .output
        .text()
        .contains("no message received for EXIT_WHEN_IDLE"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_when_idle_waits_for_a_slow_delivery_in_flight() {
    let azurite = Azurite::start().await;
    let queue = azurite.create_queue("slow-job").await;
    queue.send("slow", None, None).await.expect("send");
    let endpoint = Endpoint::start(|_, _| Reply::status(200).after(Duration::from_secs(6))).await;
    let mut sidecar = Sidecar::spawn(&with(
        Sidecar::env(&azurite, "slow-job", &endpoint.url),
        &[("EXIT_WHEN_IDLE", "1s")],
    ));
    endpoint.wait_for(1, WAIT).await;
    // Idle for far longer than 1 s, but a delivery is in flight: no exit.
    assert_eq!(
        sidecar.wait_exit(Duration::from_secs(4)).await,
        None,
        "exited with a delivery in flight: {}",
        sidecar.output.text()
    );
    assert_eq!(sidecar.wait_exit(WAIT).await, Some(0));
    let answered = endpoint.answers();
    assert_eq!(answered.len(), 1, "the delivery was answered, not cut off");
    assert_eq!(sidecar.summary()["delivered"], 1);
    assert_eq!(queue.approximate_message_count().await.expect("count"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_before_the_idle_time_resets_it() {
    let azurite = Azurite::start().await;
    let queue = azurite.create_queue("late-job").await;
    let endpoint = Endpoint::ok().await;
    let mut sidecar = Sidecar::spawn(&with(
        Sidecar::env(&azurite, "late-job", &endpoint.url),
        &[("EXIT_WHEN_IDLE", "8s")],
    ));
    let ready = wait_for_status(sidecar.admin(), "/readyz", 200, WAIT).await;
    assert!(ready.is_some(), "{}", sidecar.output.text());
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(sidecar.wait_exit(Duration::ZERO).await, None);
    queue.send("late", None, None).await.expect("send");
    endpoint.wait_for(1, WAIT).await;
    // Without the reset the run would end about 8 s after it started, i.e. about 4 s from
    // here; with it, no sooner than 8 s after the message was received.
    assert_eq!(
        sidecar.wait_exit(Duration::from_secs(6)).await,
        None,
        "exited before EXIT_WHEN_IDLE passed since the last message: {}",
        sidecar.output.text()
    );
    assert_eq!(sidecar.wait_exit(WAIT).await, Some(0));
    assert_eq!(sidecar.summary()["delivered"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oldest_message_age_grows_while_a_message_waits_and_is_0_once_delivered() {
    let azurite = Azurite::start().await;
    let queue = azurite.create_queue("aging").await;
    // One delivery at a time, the first one slow: the second message waits, visible.
    let endpoint = Endpoint::start(|_, index| {
        let reply = Reply::status(200);
        if index == 0 {
            reply.after(Duration::from_secs(15))
        } else {
            reply
        }
    })
    .await;
    queue.send("first", None, None).await.expect("send");
    queue.send("second", None, None).await.expect("send");
    let sidecar = Sidecar::spawn(&with(
        Sidecar::env(&azurite, "aging", &endpoint.url),
        &[
            ("MAX_IN_FLIGHT", "1"),
            ("BATCH_SIZE", "1"),
            ("QUEUE_LENGTH_INTERVAL", "1s"),
        ],
    ));
    let addr = sidecar.admin().to_string();
    endpoint.wait_for(1, WAIT).await;
    let gauge = || async {
        admin_get(&addr, "/metrics")
            .await
            .and_then(|(_, text)| parse_metrics(&text).get(GAUGE).copied())
    };
    let deadline = Instant::now() + WAIT;
    let first = loop {
        match gauge().await {
            Some(age) if age >= 1.0 => break age,
            _ if Instant::now() > deadline => panic!("no age >= 1: {}", sidecar.output.text()),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let later = gauge().await.expect("gauge");
    assert!(later > first, "the age grows: {first} then {later}");
    endpoint.wait_for(2, WAIT).await;
    let deadline = Instant::now() + WAIT;
    while gauge().await != Some(0.0) {
        assert!(Instant::now() < deadline, "the age never went back to 0");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
