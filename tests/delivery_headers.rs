//! What every request to the endpoint carries besides the event: the bearer token
//! (`ENDPOINT_TOKEN_FILE`, rotated as Kubernetes rotates it; `ENDPOINT_AUDIENCE`, an Entra ID
//! token from the queue's identity) and W3C trace context. The real binary, a real Azurite, a
//! real endpoint; the Entra ID token issuer is the loopback one of `tests/entra.rs`.

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

const WAIT: Duration = Duration::from_secs(30);

/// A token directory laid out as the kubelet lays out a projected volume or a Secret:
/// `token -> ..data/token`, `..data -> ..<timestamp>`; a rotation writes a new timestamped
/// directory and swaps `..data` atomically (symlink, then rename over the old link).
struct ProjectedVolume {
    dir: PathBuf,
    generation: usize,
}

impl ProjectedVolume {
    fn new(label: &str, token: &str) -> Self {
        let mut volume = Self {
            dir: temp_dir(label),
            generation: 0,
        };
        volume.rotate(token);
        std::os::unix::fs::symlink("..data/token", volume.dir.join("token")).expect("token link");
        volume
    }

    fn token_file(&self) -> PathBuf {
        self.dir.join("token")
    }

    fn rotate(&mut self, token: &str) {
        self.generation += 1;
        let data = format!(
            "..2026_12_01_00_00_0{}.{}",
            self.generation,
            fastrand::u32(..)
        );
        std::fs::create_dir(self.dir.join(&data)).expect("data dir");
        std::fs::write(self.dir.join(&data).join("token"), token).expect("token");
        let staging = self.dir.join("..data_tmp");
        let _ = std::fs::remove_file(&staging);
        std::os::unix::fs::symlink(&data, &staging).expect("staging link");
        std::fs::rename(&staging, self.dir.join("..data")).expect("swap ..data");
    }
}

/// An endpoint that accepts `Bearer <token>` for the tokens in `accepted` and answers 401
/// otherwise.
async fn token_endpoint(accepted: Arc<Mutex<BTreeSet<String>>>) -> Endpoint {
    Endpoint::start(move |received, _| {
        let ok = received
            .header("authorization")
            .and_then(|h| h.strip_prefix("Bearer "))
            .is_some_and(|token| accepted.lock().expect("lock").contains(token));
        Reply::status(if ok { 200 } else { 401 })
    })
    .await
}

fn bearer(received: &Received) -> String {
    received
        .header("authorization")
        .and_then(|h| h.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_string()
}

fn poison_texts_count(texts: &[String]) -> usize {
    texts.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_token_is_read_again_at_once_after_a_401_and_nothing_is_poisoned() {
    let azurite = Azurite::start().await;
    let queue = azurite.create_queue("authed").await;
    azurite.create_queue("authed-poison").await;
    let mut volume = ProjectedVolume::new("projected", "token-one\n");
    let accepted = Arc::new(Mutex::new(BTreeSet::from(["token-one".to_string()])));
    let endpoint = token_endpoint(accepted.clone()).await;
    let sidecar = Sidecar::spawn(&with(
        Sidecar::env(&azurite, "authed", &endpoint.url),
        &[
            (
                "ENDPOINT_TOKEN_FILE",
                volume.token_file().to_str().expect("utf-8"),
            ),
            // One attempt would poison any other failure: a 401 must not.
            ("MAX_DEQUEUE_COUNT", "1"),
            ("RETRY_BASE_DELAY", "1s"),
        ],
    ));
    queue.send("first", None, None).await.expect("send");
    let first = endpoint.wait_for(1, WAIT).await;
    assert_eq!(bearer(&first[0]), "token-one");

    // The endpoint now wants the next token, and the kubelet swaps it in.
    *accepted.lock().expect("lock") = BTreeSet::from(["token-two".to_string()]);
    volume.rotate("token-two");
    queue.send("second", None, None).await.expect("send");
    let ok = wait_until(WAIT, || {
        endpoint
            .received()
            .iter()
            .any(|r| r.body_text() == "second" && bearer(r) == "token-two")
    })
    .await;
    assert!(ok, "{}", sidecar.output.text());
    let answers = endpoint.answers();
    let refused = answers.iter().filter(|a| a.status == 401).count();
    assert!(
        refused <= 1,
        "the token is read at once after a 401, not after the interval: {answers:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(queue.approximate_message_count().await.expect("count"), 0);
    let poisoned = drain_texts(&azurite.queue("authed-poison")).await;
    assert_eq!(
        poison_texts_count(&poisoned),
        0,
        "a 401 never poisons: {poisoned:?}"
    );
    if refused == 1 {
        assert_eq!(
            sidecar.output.count_matching("endpoint token changed"),
            1,
            "{}",
            sidecar.output.text()
        );
    }
    let text = sidecar.output.text();
    assert!(
        !text.contains("token-one") && !text.contains("token-two"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_file_replaced_by_rename_is_used_within_fifteen_seconds() {
    let azurite = Azurite::start().await;
    let queue = azurite.create_queue("renamed").await;
    let dir = temp_dir("renamed-token");
    let path = dir.join("token");
    std::fs::write(&path, "old-token").expect("token");
    let endpoint = Endpoint::ok().await;
    let sidecar = Sidecar::spawn(&with(
        Sidecar::env(&azurite, "renamed", &endpoint.url),
        &[("ENDPOINT_TOKEN_FILE", path.to_str().expect("utf-8"))],
    ));
    queue.send("before", None, None).await.expect("send");
    let first = endpoint.wait_for(1, WAIT).await;
    assert_eq!(bearer(&first[0]), "old-token");

    // A Secret update by rename: write aside, rename over.
    std::fs::write(dir.join("token.new"), "  new-token \n").expect("staging");
    std::fs::rename(dir.join("token.new"), &path).expect("rename");
    let rotated = Instant::now();
    let mut sent = 0;
    let seen_new = loop {
        queue
            .send(&format!("after-{sent}"), None, None)
            .await
            .expect("send");
        sent += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
        if endpoint.received().iter().any(|r| bearer(r) == "new-token") {
            break Some(rotated.elapsed());
        }
        if rotated.elapsed() > Duration::from_secs(25) {
            break None;
        }
    };
    let seen_new = seen_new.unwrap_or_else(|| panic!("never sent: {}", sidecar.output.text()));
    // 10 s re-read interval plus the poll and a loaded machine: well inside 15 s.
    assert!(
        seen_new < Duration::from_secs(15),
        "new token after {seen_new:?}"
    );
    assert!(
        endpoint
            .received()
            .iter()
            .all(|r| matches!(bearer(r).as_str(), "old-token" | "new-token")),
        "whitespace trimmed, never a torn read"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_auth_mistakes_stop_the_start_with_exit_2() {
    let dir = temp_dir("auth-config");
    let token = dir.join("token");
    std::fs::write(&token, "a-token").expect("token");
    let token = token.to_str().expect("utf-8");
    let base = [
        ("QUEUE_NAME", "orders"),
        (
            "AZURE_STORAGE_CONNECTION_STRING",
            "UseDevelopmentStorage=true",
        ),
        ("ENDPOINT_URL", "http://127.0.0.1:9/events"),
    ];
    let run = |extra: &[(&str, &str)]| {
        let mut env = base.to_vec();
        env.extend_from_slice(extra);
        run_to_exit(&[], &env)
    };

    let (code, _, stderr) = run(&[("ENDPOINT_TOKEN_FILE", "/nonexistent/token")]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("ENDPOINT_TOKEN_FILE") && stderr.contains("/nonexistent/token"),
        "{stderr}"
    );
    let unreadable = dir.join("a-directory");
    std::fs::create_dir(&unreadable).expect("dir");
    let (code, _, stderr) = run(&[("ENDPOINT_TOKEN_FILE", unreadable.to_str().expect("utf-8"))]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("ENDPOINT_TOKEN_FILE"), "{stderr}");

    let (code, _, stderr) = run(&[
        ("ENDPOINT_TOKEN_FILE", token),
        ("ENDPOINT_AUDIENCE", "api://orders"),
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("ENDPOINT_AUDIENCE"), "{stderr}");

    // An audience needs the queue's identity; a connection string has none.
    let (code, _, stderr) = run(&[("ENDPOINT_AUDIENCE", "api://orders")]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("ENDPOINT_AUDIENCE") && stderr.contains("shared-key"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(!stderr.contains("a-token"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_says_which_endpoint_auth_is_used_and_never_the_token() {
    let azurite = Azurite::start().await;
    azurite.create_queue("checked").await;
    let endpoint = Endpoint::ok().await;
    let dir = temp_dir("check-token");
    let path = dir.join("token");
    std::fs::write(&path, "check-secret-token").expect("token");
    let env = with(
        Sidecar::env(&azurite, "checked", &endpoint.url),
        &[("ENDPOINT_TOKEN_FILE", path.to_str().expect("utf-8"))],
    );
    let (code, stdout, stderr) = command(&["check"], &env).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    let line = check_line(&stdout, "endpoint auth");
    assert!(
        line.starts_with("ok ") && line.contains("token-file"),
        "{stdout}"
    );
    assert!(check_line(&stdout, "configuration").contains("endpoint auth token-file"));
    assert!(!stdout.contains("check-secret-token") && !stderr.contains("check-secret-token"));

    // Unreadable after start (deleted): the check fails and says why, not what.
    std::fs::remove_file(&path).expect("remove");
    let (code, stdout, _) = command(&["check"], &env).await;
    assert_eq!(
        code, 2,
        "the start-up check refuses a missing file: {stdout}"
    );
    assert!(stdout.contains("ENDPOINT_TOKEN_FILE"), "{stdout}");
}

mod entra_audience {
    use super::*;
    use support::entra::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_audience_token_from_the_queues_identity_reaches_the_endpoint() {
        let pki = TestPki::create();
        let azurite = AzuriteTls::start(&pki).await;
        let queue = azurite.create_queue("aud-orders").await;
        let issuer = Issuer::start(Some(&pki)).await;
        let endpoint = Endpoint::ok().await;
        let token_file = pki.path("sa-token");
        write_token_file(
            &token_file,
            &access_token("api://AzureADTokenExchange", 3600, 7),
        );
        for text in ["one", "two", "three"] {
            queue.send(text, None, None).await.expect("send");
        }
        let env: Vec<(String, String)> = [
            ("QUEUE_NAME", "aud-orders".to_string()),
            ("ENDPOINT_URL", endpoint.url.clone()),
            ("AZURE_STORAGE_QUEUE_ENDPOINT", azurite.service_url()),
            (
                "SSL_CERT_FILE",
                pki.ca_file().to_string_lossy().into_owned(),
            ),
            (
                "AZURE_FEDERATED_TOKEN_FILE",
                token_file.to_string_lossy().into_owned(),
            ),
            ("AZURE_CLIENT_ID", CLIENT_ID.to_string()),
            ("AZURE_TENANT_ID", TENANT.to_string()),
            ("AZURE_AUTHORITY_HOST", issuer.url.clone()),
            ("ENDPOINT_AUDIENCE", "api://orders-app".to_string()),
            ("POLL_MIN_INTERVAL", "20ms".to_string()),
            ("POLL_MAX_INTERVAL", "200ms".to_string()),
            (
                "LOG_LEVEL",
                "debug,azure_core=debug,azure_identity=debug,reqwest=debug".to_string(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let sidecar = Sidecar::spawn(&env);
        let received = endpoint.wait_for(3, WAIT).await;

        let endpoint_scope: Vec<_> = issuer
            .requests()
            .into_iter()
            .filter(|r| {
                r.form.get("scope").map(String::as_str) == Some("api://orders-app/.default")
            })
            .collect();
        assert_eq!(
            endpoint_scope.len(),
            1,
            "one token for three POSTs (cached)"
        );
        let issued = issuer.issued();
        for request in &received {
            let token = bearer(request);
            assert!(issued.contains(&token), "an issued token");
            let claims = token.split('.').nth(1).expect("claims");
            let claims: serde_json::Value = serde_json::from_slice(
                &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, claims)
                    .expect("base64"),
            )
            .expect("json");
            assert_eq!(claims["aud"], "api://orders-app");
        }
        let (code, stdout, _) = command(&["check"], &env).await;
        assert_eq!(code, 0, "{stdout}");
        assert!(
            check_line(&stdout, "endpoint auth").contains("entra-id: a token could be obtained")
        );
        let text = format!("{}{stdout}", sidecar.output.text());
        for token in issuer.issued() {
            assert!(!text.contains(&token), "a token reached the output");
        }
    }
}

mod trace_context {
    use super::*;

    /// `00-<32 hex>-<16 hex>-<2 hex>`, lowercase, ids not all zero: (trace id, span id, flags).
    fn parse(traceparent: &str) -> (String, String, String) {
        let parts: Vec<&str> = traceparent.split('-').collect();
        assert_eq!(parts.len(), 4, "{traceparent}");
        assert_eq!(parts[0], "00");
        let hex = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                && s.bytes().any(|b| b != b'0')
        };
        assert!(hex(parts[1], 32) && hex(parts[2], 16), "{traceparent}");
        assert_eq!(parts[3].len(), 2);
        (parts[1].into(), parts[2].into(), parts[3].into())
    }

    /// The producer's span and trace state in the passed-through events below.
    const PRODUCER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const TRACESTATE: &str = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";

    /// A CloudEvent, as a producer puts it in the queue, carrying `traceparent` and TRACESTATE.
    fn traced_event(id: &str, traceparent: &str) -> String {
        serde_json::json!({
            "specversion": "1.0", "id": id, "source": "/orders", "type": "order.created",
            "traceparent": traceparent, "tracestate": TRACESTATE,
            "data": {"n": 1}
        })
        .to_string()
    }

    fn trace_id_of_uuid(id: &str) -> String {
        id.replace('-', "").to_ascii_lowercase()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_trace_per_message_from_its_id_with_a_new_span_per_attempt() {
        let azurite = Azurite::start().await;
        let queue = azurite.create_queue("traced").await;
        // Two failures, then success: three attempts of one message.
        let endpoint =
            Endpoint::start(|_, index| Reply::status(if index < 2 { 503 } else { 200 })).await;
        let id = queue
            .send("traced message", None, None)
            .await
            .expect("send");
        let sidecar = Sidecar::spawn(&with(
            Sidecar::env(&azurite, "traced", &endpoint.url),
            &[("RETRY_BASE_DELAY", "100ms"), ("RETRY_MAX_DELAY", "1s")],
        ));
        let received = endpoint.wait_for(3, WAIT).await;
        let spans: Vec<_> = received
            .iter()
            .map(|r| parse(r.header("traceparent").expect("traceparent")))
            .collect();
        let trace_id = trace_id_of_uuid(&id);
        assert_eq!(trace_id.len(), 32, "Azurite's ids are UUIDs: {id}");
        for (request, (trace, _, flags)) in received.iter().zip(&spans) {
            assert_eq!(trace, &trace_id, "trace id = message id");
            assert_eq!(flags, "01");
            assert_eq!(request.event_id(), id);
            assert!(request.header("tracestate").is_none());
        }
        let span_ids: BTreeSet<_> = spans.iter().map(|s| s.1.clone()).collect();
        assert_eq!(span_ids.len(), 3, "a new span per attempt: {spans:?}");

        // The delivery log lines carry the ids.
        assert!(
            wait_until(WAIT, || sidecar
                .json_lines()
                .iter()
                .any(|l| l["message"] == "delivered"))
            .await
        );
        let lines = sidecar.json_lines();
        let logged: BTreeSet<String> = lines
            .iter()
            .filter(|l| l["message"] == "delivered" || l["message"] == "delivery failed")
            .map(|l| {
                assert_eq!(l["trace_id"], trace_id.as_str(), "{l}");
                l["span_id"].as_str().expect("span_id").to_string()
            })
            .collect();
        assert_eq!(logged, span_ids, "each attempt's log line names its span");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_passed_through_events_trace_is_continued_and_a_malformed_one_is_not() {
        let azurite = Azurite::start().await;
        let queue = azurite.create_queue("continued").await;
        let endpoint = Endpoint::ok().await;
        let (parent, event) = (PRODUCER, traced_event);
        queue
            .send(&event("valid", parent), None, None)
            .await
            .expect("send");
        let malformed_id = queue
            .send(&event("malformed", "00-4BF92F35-not-valid"), None, None)
            .await
            .expect("send");
        let _sidecar = Sidecar::spawn(&Sidecar::env(&azurite, "continued", &endpoint.url));
        let received = endpoint.wait_for(2, WAIT).await;
        let by_id = |id: &str| {
            received
                .iter()
                .find(|r| r.event_id() == id)
                .unwrap_or_else(|| panic!("{id}"))
                .clone()
        };

        let valid = by_id("valid");
        let (trace, span, flags) = parse(valid.header("traceparent").expect("traceparent"));
        assert_eq!(
            trace, "4bf92f3577b34da6a3ce929d0e0e4736",
            "the producer's trace"
        );
        assert_ne!(span, "00f067aa0ba902b7", "a span of our own");
        assert_eq!(flags, "01");
        assert_eq!(
            valid.header("tracestate"),
            Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
        );
        assert_eq!(
            valid.header("ce-traceparent"),
            Some(parent),
            "the extension, unchanged"
        );

        let malformed = by_id("malformed");
        let (trace, _, _) = parse(malformed.header("traceparent").expect("traceparent"));
        assert_eq!(
            trace,
            trace_id_of_uuid(&malformed_id),
            "a new trace from the message id"
        );
        assert_eq!(malformed.header("tracestate"), None, "not forwarded");
        assert_eq!(
            malformed.header("ce-traceparent"),
            Some("00-4BF92F35-not-valid"),
            "the event itself is the producer's"
        );
    }

    /// Batched mode: one POST carries many messages, so each event carries its own trace
    /// context as the CloudEvents distributed-tracing extension, and the POST itself none.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn in_batched_mode_each_event_carries_its_own_trace_context() {
        let azurite = Azurite::start().await;
        let queue = azurite.create_queue("traced-batches").await;
        let endpoint = Endpoint::ok().await;
        let (producer, event) = (PRODUCER, traced_event);
        let mut plain_ids = Vec::new();
        for text in ["first", "second"] {
            plain_ids.push(queue.send(text, None, None).await.expect("send"));
        }
        queue
            .send(&event("valid", producer), None, None)
            .await
            .expect("send");
        let malformed_id = queue
            .send(&event("malformed", "00-4BF92F35-not-valid"), None, None)
            .await
            .expect("send");
        let sidecar = Sidecar::spawn(&with(
            Sidecar::env(&azurite, "traced-batches", &endpoint.url),
            &[("CE_MODE", "batched")],
        ));
        let entries = |endpoint: &Endpoint| -> Vec<serde_json::Value> {
            endpoint
                .received()
                .iter()
                .flat_map(|r| {
                    assert_eq!(
                        r.header("traceparent"),
                        None,
                        "a batch POST carries no one trace"
                    );
                    let array: Vec<serde_json::Value> =
                        serde_json::from_str(&r.body_text()).expect("a JSON array");
                    array
                })
                .collect()
        };
        assert!(wait_until(WAIT, || entries(&endpoint).len() >= 4).await);
        let entries = entries(&endpoint);
        let by_id = |id: &str| {
            entries
                .iter()
                .find(|e| e["id"] == id)
                .unwrap_or_else(|| panic!("no entry {id}: {entries:?}"))
                .clone()
        };
        let mut span_ids = BTreeSet::new();
        for id in &plain_ids {
            let entry = by_id(id);
            let (trace, span, flags) = parse(entry["traceparent"].as_str().expect("traceparent"));
            assert_eq!(trace, trace_id_of_uuid(id), "trace id = message id");
            assert_eq!(flags, "01");
            assert!(entry.get("tracestate").is_none(), "{entry}");
            span_ids.insert(span);
        }
        assert_eq!(span_ids.len(), 2, "a span per message");

        let valid = by_id("valid");
        assert_eq!(valid["traceparent"], producer, "the producer's, unchanged");
        assert_eq!(valid["tracestate"], TRACESTATE);

        let malformed = by_id("malformed");
        let (trace, _, _) = parse(malformed["traceparent"].as_str().expect("traceparent"));
        assert_eq!(
            trace,
            trace_id_of_uuid(&malformed_id),
            "a new trace from the message id"
        );
        assert!(
            malformed.get("tracestate").is_none(),
            "not continued: {malformed}"
        );

        // The delivery log lines name the span each entry carried.
        assert!(
            wait_until(WAIT, || sidecar
                .json_lines()
                .iter()
                .filter(|l| l["message"] == "delivered")
                .count()
                >= 4)
            .await
        );
        let logged: BTreeSet<String> = sidecar
            .json_lines()
            .iter()
            .filter(|l| l["message"] == "delivered")
            .filter_map(|l| l["span_id"].as_str().map(str::to_string))
            .collect();
        assert!(span_ids.is_subset(&logged), "{span_ids:?} in {logged:?}");
        assert!(
            logged.contains("00f067aa0ba902b7"),
            "the producer's span: {logged:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn trace_context_off_sends_none() {
        let azurite = Azurite::start().await;
        let queue = azurite.create_queue("untraced").await;
        let endpoint = Endpoint::ok().await;
        queue.send("plain", None, None).await.expect("send");
        let sidecar = Sidecar::spawn(&with(
            Sidecar::env(&azurite, "untraced", &endpoint.url),
            &[("TRACE_CONTEXT", "off")],
        ));
        let received = endpoint.wait_for(1, WAIT).await;
        assert_eq!(received[0].header("traceparent"), None);
        assert_eq!(received[0].header("tracestate"), None);
        assert!(
            wait_until(WAIT, || sidecar
                .json_lines()
                .iter()
                .any(|l| l["message"] == "delivered"))
            .await
        );
        let line = sidecar
            .json_lines()
            .into_iter()
            .find(|l| l["message"] == "delivered")
            .expect("delivered line");
        assert!(line.get("trace_id").is_none(), "{line}");
    }
}
