//! Operability end to end: probes, metrics, the `check` and `healthcheck` commands, and that no
//! secret reaches any output. The real binary, a real Azurite, a real HTTP endpoint.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::*;

const WAIT: Duration = Duration::from_secs(30);
/// Generous: after a few failures the pump backs off for several seconds between attempts.
const RECOVERY: Duration = Duration::from_secs(60);
const PREFIX: &str = "azure_queue_sidecar_";

/// `env` pointing at the admin server `addr`, for the `healthcheck` command.
fn at(env: &[(String, String)], addr: &str) -> Vec<(String, String)> {
    with(env.to_vec(), &[("ADMIN_ADDR", addr)])
}

async fn metrics(addr: &str) -> BTreeMap<String, f64> {
    let (status, text) = admin_get(addr, "/metrics").await.expect("metrics answer");
    assert_eq!(status, 200);
    parse_metrics(&text)
}

fn sample(metrics: &BTreeMap<String, f64>, key: &str) -> f64 {
    *metrics
        .get(&format!("{PREFIX}{key}"))
        .unwrap_or_else(|| panic!("no sample {key} in {metrics:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_follow_the_queue_going_away_and_coming_back() {
    let port = free_port();
    let mut azurite = Azurite::start_with(port, None).await;
    azurite.create_queue("probes").await;
    let endpoint = Endpoint::ok().await;
    let sidecar = Sidecar::spawn(&Sidecar::env(&azurite, "probes", &endpoint.url));
    let addr = sidecar.admin().to_string();
    let env = at(&Sidecar::env(&azurite, "probes", &endpoint.url), &addr);

    let ready = wait_for_status(&addr, "/readyz", 200, WAIT).await;
    assert_eq!(
        ready,
        Some((200, "ok: ready\n".into())),
        "{}",
        sidecar.output.text()
    );
    assert_eq!(
        admin_get(&addr, "/healthz").await,
        Some((200, "ok: alive\n".into()))
    );
    let (code, stdout, _) = command(&["healthcheck"], &env).await;
    assert_eq!((code, stdout.as_str()), (0, "200 ok: alive\n"));
    let (code, _, _) = command(&["healthcheck", "/readyz"], &env).await;
    assert_eq!(code, 0);

    // The queue service goes away: not ready, with the reason; still alive.
    azurite.kill();
    let (status, reason) = wait_for_status(&addr, "/readyz", 503, WAIT)
        .await
        .expect("an answer");
    assert_eq!(status, 503, "{}", sidecar.output.text());
    assert_eq!(reason, "queue receive failed: unreachable\n");
    assert_eq!(admin_get(&addr, "/healthz").await.map(|a| a.0), Some(200));
    let (code, stdout, _) = command(&["healthcheck", "/readyz"], &env).await;
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.starts_with("503 "), "{stdout}");

    // It comes back empty (in memory): the queue is missing now, a different reason.
    let azurite = Azurite::start_with(port, None).await;
    let missing = "queue receive failed: queue_not_found\n";
    let mut last = None;
    for _ in 0..(RECOVERY.as_millis() / 100) {
        last = admin_get(&addr, "/readyz").await;
        if last.as_ref().is_some_and(|(_, body)| body == missing) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        last,
        Some((503, missing.into())),
        "{}",
        sidecar.output.text()
    );

    // The queue is created: ready again, and the outage is in the metrics.
    azurite.create_queue("probes").await;
    let ready = wait_for_status(&addr, "/readyz", 200, RECOVERY).await;
    assert_eq!(ready.map(|a| a.0), Some(200), "{}", sidecar.output.text());
    assert_eq!(admin_get(&addr, "/healthz").await.map(|a| a.0), Some(200));
    let m = metrics(&addr).await;
    assert!(
        sample(
            &m,
            r#"queue_errors_total{operation="receive",kind="unreachable"}"#
        ) >= 1.0
    );
    assert!(
        sample(
            &m,
            r#"queue_errors_total{operation="receive",kind="queue_not_found"}"#
        ) >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_the_run_did() {
    let azurite = Azurite::start().await;
    let queue = azurite.create_queue("counted").await;
    let failed_once = Arc::new(AtomicBool::new(false));
    let flag = failed_once.clone();
    let endpoint = Endpoint::start(move |request, _| {
        if request.body_text() == "flaky" && !flag.swap(true, Ordering::SeqCst) {
            Reply::status(503)
        } else {
            Reply::status(200)
        }
    })
    .await;
    for text in ["one", "two", "three", "flaky"] {
        queue.send(text, None, None).await.expect("send");
    }
    // Two messages that stay invisible for the whole test: only the gauge sees them.
    for _ in 0..2 {
        queue
            .send("later", Some(Duration::from_secs(3600)), None)
            .await
            .expect("send");
    }

    let env = with(
        Sidecar::env(&azurite, "counted", &endpoint.url),
        &[("RETRY_BASE_DELAY", "1s"), ("QUEUE_LENGTH_INTERVAL", "1s")],
    );
    let sidecar = Sidecar::spawn(&env);
    let addr = sidecar.admin().to_string();
    endpoint.wait_for(5, WAIT).await;

    // Counters settle once the last delete is done and the gauge has seen the empty queue.
    let key = |k: &str| format!("{PREFIX}{k}");
    let mut m = BTreeMap::new();
    let settled = |m: &BTreeMap<String, f64>| {
        m.get(&key("messages_deleted_total")) == Some(&4.0)
            && m.get(&key("in_flight")) == Some(&0.0)
            && m.get(&key("queue_approximate_messages")) == Some(&2.0)
    };
    for _ in 0..100 {
        m = metrics(&addr).await;
        if settled(&m) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(settled(&m), "{m:#?}\n{}", sidecar.output.text());

    assert_eq!(sample(&m, "messages_received_total"), 5.0);
    assert_eq!(
        sample(
            &m,
            r#"deliveries_total{outcome="delivered",status_class="2xx"}"#
        ),
        4.0
    );
    assert_eq!(
        sample(
            &m,
            r#"deliveries_total{outcome="retryable",status_class="5xx"}"#
        ),
        1.0
    );
    assert_eq!(sample(&m, "delivery_duration_seconds_count"), 5.0);
    assert_eq!(sample(&m, "message_age_seconds_count"), 4.0);
    assert_eq!(
        sample(
            &m,
            r#"queue_call_duration_seconds_count{operation="delete"}"#
        ),
        4.0
    );
    assert!(
        sample(
            &m,
            r#"queue_call_duration_seconds_count{operation="receive"}"#
        ) >= 2.0
    );
    assert!(
        sample(
            &m,
            r#"queue_call_duration_seconds_count{operation="properties"}"#
        ) >= 1.0
    );
    assert_eq!(
        sample(
            &m,
            &format!(r#"build_info{{version="{}"}}"#, env!("CARGO_PKG_VERSION"))
        ),
        1.0
    );
    assert_eq!(sample(&m, r#"retries_scheduled_total{failure="503"}"#), 1.0);
    assert_eq!(sample(&m, "messages_released_total"), 0.0);
    assert_eq!(sample(&m, "lease_renewals_total"), 0.0);
    assert!(
        !m.keys()
            .any(|k| k.starts_with(&key("messages_poisoned_total"))),
        "nothing poisoned: {m:#?}"
    );
    assert!(
        !m.keys().any(|k| k.starts_with(&key("queue_errors_total"))),
        "no queue call failed: {m:#?}"
    );

    // The endpoint's failure was one warning; its recovery one line.
    let lines = sidecar.json_lines();
    let warned = lines
        .iter()
        .filter(|l| l["level"] == "WARN" && l["message"] == "delivery failed")
        .count();
    assert_eq!(warned, 1, "{}", sidecar.output.text());
    assert_eq!(
        sidecar
            .output
            .count_matching("the endpoint accepts deliveries again"),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_is_one_warning_not_one_per_attempt() {
    let azurite = Azurite::start().await;
    let queue = azurite.create_queue("storm").await;
    const FAILURES: usize = 30;
    let endpoint =
        Endpoint::start(|_, index| Reply::status(if index < FAILURES { 503 } else { 200 })).await;
    for i in 0..10 {
        queue
            .send(&format!("m{i}"), None, None)
            .await
            .expect("send");
    }
    let sidecar = Sidecar::spawn(&with(
        Sidecar::env(&azurite, "storm", &endpoint.url),
        &[
            ("RETRY_BASE_DELAY", "1s"),
            ("RETRY_MAX_DELAY", "1s"),
            ("MAX_DEQUEUE_COUNT", "20"),
        ],
    ));
    endpoint.wait_for(FAILURES + 10, RECOVERY).await;
    assert!(
        wait_until(WAIT, || sidecar
            .output
            .count_matching("the endpoint accepts deliveries again")
            == 1)
        .await,
        "{}",
        sidecar.output.text()
    );
    let failed = |level: Option<&str>| {
        sidecar
            .json_lines()
            .iter()
            .filter(|l| l["message"] == "delivery failed")
            .filter(|l| level.is_none_or(|level| l["level"] == level))
            .count()
    };
    assert_eq!(failed(None), FAILURES, "every failure is logged...");
    assert_eq!(
        failed(Some("WARN")),
        1,
        "...but only the first as a warning"
    );

    let m = metrics(sidecar.admin()).await;
    assert_eq!(
        sample(
            &m,
            r#"deliveries_total{outcome="retryable",status_class="5xx"}"#
        ),
        FAILURES as f64
    );
    assert_eq!(
        sample(&m, r#"retries_scheduled_total{failure="503"}"#),
        FAILURES as f64
    );
}

/// Polls `/metrics` until `key` has a sample of at least `min`.
async fn wait_for_sample(addr: &str, key: &str, min: f64) -> BTreeMap<String, f64> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let m = metrics(addr).await;
        let done = m.get(&format!("{PREFIX}{key}")).is_some_and(|v| *v >= min);
        if done || std::time::Instant::now() > deadline {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Issue 12: a message that cannot become a request at all (bad base64) and is retried
/// because poisoning is off is counted as `undeliverable`, not as a delivery failure it never
/// had (it was counted as `connection`, later as `unsendable`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_undecodable_message_counts_as_undeliverable() {
    let azurite = Azurite::start().await;
    let queue = azurite.create_queue("undecodable").await;
    let endpoint = Endpoint::ok().await;
    queue
        .send("this is %%% not base64", None, None)
        .await
        .expect("send");
    let sidecar = Sidecar::spawn(&with(
        Sidecar::env(&azurite, "undecodable", &endpoint.url),
        &[("DECODE_BASE64", "true"), ("MAX_DEQUEUE_COUNT", "0")],
    ));
    let key = r#"retries_scheduled_total{failure="undeliverable"}"#;
    let m = wait_for_sample(sidecar.admin(), key, 1.0).await;
    assert_eq!(sample(&m, key), 1.0, "{}", sidecar.output.text());
    assert!(
        !m.keys().any(
            |k| k.contains("retries_scheduled_total{failure=\"unsendable\"}")
                || k.contains("retries_scheduled_total{failure=\"connection\"}")
        ),
        "{m:#?}"
    );
    assert_eq!(endpoint.count(), 0);
}

/// Issue 12: a message held back because the poison queue is missing shows in /metrics (it
/// was only a log line, said once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_stuck_behind_a_missing_poison_queue_is_counted() {
    let azurite = Azurite::start().await;
    let queue = azurite.create_queue("stuck").await;
    let endpoint = Endpoint::start(|_, _| Reply::status(422)).await;
    queue.send("rejected", None, None).await.expect("send");
    let sidecar = Sidecar::spawn(&with(
        Sidecar::env(&azurite, "stuck", &endpoint.url),
        &[("RETRY_BASE_DELAY", "1s"), ("RETRY_MAX_DELAY", "1s")],
    ));
    let key = r#"poison_blocked_total{cause="missing"}"#;
    let m = wait_for_sample(sidecar.admin(), key, 2.0).await;
    assert!(sample(&m, key) >= 2.0, "every blocked attempt: {m:#?}");
    assert_eq!(
        sidecar.output.count_matching("cannot poison"),
        1,
        "said once"
    );
    assert_eq!(
        queue.approximate_message_count().await.expect("count"),
        1,
        "never dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_and_fails_on_the_right_causes() {
    let azurite = Azurite::start().await;
    let queue = azurite.create_queue("present").await;
    queue.send("waiting", None, None).await.expect("send");
    azurite.create_queue("present-poison").await;
    let endpoint = Endpoint::ok().await;
    let good = Sidecar::env(&azurite, "present", &endpoint.url);

    let (code, stdout, stderr) = command(&["check"], &good).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    let names = [
        "configuration",
        "queue service",
        "credentials",
        "queue",
        "poison queue",
        "endpoint",
    ];
    assert_eq!(stdout.lines().count(), names.len(), "{stdout}");
    for name in names {
        assert!(check_line(&stdout, name).starts_with("ok   "), "{stdout}");
    }
    assert!(
        check_line(&stdout, "queue").contains("present exists, about 1 messages"),
        "{stdout}"
    );
    assert_eq!(endpoint.count(), 0, "check sends no event");

    // A missing poison queue is worth a warning, not a failure.
    let (code, stdout, _) = command(
        &["check"],
        &with(good.clone(), &[("POISON_QUEUE_NAME", "nowhere-poison")]),
    )
    .await;
    assert_eq!(code, 0, "{stdout}");
    let line = check_line(&stdout, "poison queue");
    assert!(
        line.starts_with("WARN ") && line.contains("CREATE_POISON_QUEUE"),
        "{stdout}"
    );

    // The queue does not exist.
    let (code, stdout, _) =
        command(&["check"], &with(good.clone(), &[("QUEUE_NAME", "absent")])).await;
    assert_eq!(code, 1, "{stdout}");
    assert!(
        check_line(&stdout, "credentials").starts_with("ok   "),
        "{stdout}"
    );
    let line = check_line(&stdout, "queue");
    assert!(
        line.starts_with("FAIL ") && line.contains("queue_not_found"),
        "{stdout}"
    );
    assert!(
        check_line(&stdout, "endpoint").starts_with("ok   "),
        "{stdout}"
    );

    // The key is wrong.
    let wrong_key = b64(&[7u8; 64]);
    let wrong = format!(
        "AccountName={ACCOUNT};AccountKey={wrong_key};QueueEndpoint={}",
        azurite.service_url()
    );
    let (code, stdout, stderr) = command(
        &["check"],
        &with(good.clone(), &[("AZURE_STORAGE_CONNECTION_STRING", &wrong)]),
    )
    .await;
    assert_eq!(code, 1, "{stdout}");
    assert!(
        check_line(&stdout, "queue service").starts_with("ok   "),
        "{stdout}"
    );
    let line = check_line(&stdout, "credentials");
    assert!(
        line.starts_with("FAIL ") && line.contains("403"),
        "{stdout}"
    );
    assert!(
        check_line(&stdout, "queue").starts_with("skip "),
        "{stdout}"
    );
    assert!(!stdout.contains(&wrong_key) && !stderr.contains(&wrong_key));

    // The endpoint is down.
    let down = format!("http://127.0.0.1:{}/events", free_port());
    let (code, stdout, _) =
        command(&["check"], &with(good.clone(), &[("ENDPOINT_URL", &down)])).await;
    assert_eq!(code, 1, "{stdout}");
    assert!(
        check_line(&stdout, "queue").starts_with("ok   "),
        "{stdout}"
    );
    let line = check_line(&stdout, "endpoint");
    assert!(
        line.starts_with("FAIL ") && line.contains("connection failed"),
        "{stdout}"
    );

    // The queue service is down.
    let nowhere = format!(
        "AccountName={ACCOUNT};AccountKey={KEY};QueueEndpoint=http://127.0.0.1:{}/{ACCOUNT}",
        free_port()
    );
    let (code, stdout, _) = command(
        &["check"],
        &with(
            good.clone(),
            &[("AZURE_STORAGE_CONNECTION_STRING", &nowhere)],
        ),
    )
    .await;
    assert_eq!(code, 1, "{stdout}");
    let line = check_line(&stdout, "queue service");
    assert!(
        line.starts_with("FAIL ") && line.contains("unreachable"),
        "{stdout}"
    );
    assert!(
        check_line(&stdout, "credentials").starts_with("skip "),
        "{stdout}"
    );

    // The configuration is invalid: exit 2, one line naming the variable.
    let (code, stdout, _) = command(&["check"], &with(good.clone(), &[("BATCH_SIZE", "0")])).await;
    assert_eq!(code, 2, "{stdout}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stdout.starts_with("FAIL configuration: BATCH_SIZE: "),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_with_a_process_only_sas_warns_instead_of_failing() {
    let azurite = Azurite::start().await;
    azurite.create_queue("limited").await;
    let endpoint = Endpoint::ok().await;
    let env: Vec<(String, String)> = with(
        Sidecar::env(&azurite, "limited", &endpoint.url)
            .into_iter()
            .filter(|(k, _)| k != "AZURE_STORAGE_CONNECTION_STRING")
            .collect(),
        &[
            (
                "AZURE_STORAGE_SAS_TOKEN",
                &azurite.queue_sas("limited", "p"),
            ),
            ("AZURE_STORAGE_QUEUE_ENDPOINT", &azurite.service_url()),
        ],
    );
    let (code, stdout, _) = command(&["check"], &env).await;
    assert_eq!(code, 0, "{stdout}");
    assert!(
        check_line(&stdout, "credentials").starts_with("ok   "),
        "{stdout}"
    );
    let line = check_line(&stdout, "queue");
    assert!(
        line.starts_with("WARN ") && line.contains("'r'"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_appears_in_logs_help_check_probes_or_metrics() {
    let azurite = Azurite::start().await;
    // The bearer token is refused once (401), so the re-read path is logged too.
    let refused = std::sync::atomic::AtomicBool::new(false);
    let endpoint = Endpoint::start(move |received, _| {
        let token_path = received.path == "/token";
        match token_path && !refused.swap(true, std::sync::atomic::Ordering::SeqCst) {
            true => Reply::status(401),
            false => Reply::status(200),
        }
    })
    .await;
    // An endpoint URL with basic-auth credentials and an Azure Functions style key.
    let endpoint_url = format!(
        "http://user:HUNTER2PASSWORD@127.0.0.1:{}/events?code=FUNCTIONKEY123",
        endpoint.port()
    );
    let sas = azurite.queue_sas("by-sas", "raup");
    let signature_encoded = sas
        .split('&')
        .find_map(|pair| pair.strip_prefix("sig="))
        .expect("a signature")
        .to_string();
    let signature: String =
        url::form_urlencoded::parse(format!("s={signature_encoded}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .expect("decoded signature");
    // The endpoint's bearer token, from a file (JWT-shaped, as Kubernetes and Knative
    // tokens are, and a plain one that no JWT pattern would catch).
    let token_dir = temp_dir("secret-scan-token");
    let token_file = token_dir.join("token");
    let endpoint_token = "ENDPOINTBEARER0123456789abcdef".to_string();
    std::fs::write(&token_file, format!("{endpoint_token}\n")).expect("token file");
    let secrets = [
        KEY.to_string(),
        signature.clone(),
        signature_encoded.clone(),
        "HUNTER2PASSWORD".into(),
        "FUNCTIONKEY123".into(),
        endpoint_token.clone(),
    ];

    let by_key = Sidecar::env(&azurite, "by-key", &endpoint_url);
    let by_sas: Vec<(String, String)> = with(
        Sidecar::env(&azurite, "by-sas", &endpoint_url)
            .into_iter()
            .filter(|(k, _)| k != "AZURE_STORAGE_CONNECTION_STRING")
            .collect(),
        &[
            ("AZURE_STORAGE_SAS_TOKEN", &format!("?{sas}")),
            ("AZURE_STORAGE_QUEUE_ENDPOINT", &azurite.service_url()),
        ],
    );
    // A sidecar whose SAS does not cover its queue, so error paths are logged too.
    let by_sas_missing = with(by_sas.clone(), &[("QUEUE_NAME", "missing")]);
    // A sidecar with an endpoint token, whose endpoint refuses it once (a 401 is logged).
    let by_token = with(
        Sidecar::env(
            &azurite,
            "by-token",
            &format!("{}/token", endpoint.base_url()),
        ),
        &[
            ("ENDPOINT_TOKEN_FILE", token_file.to_str().expect("utf-8")),
            ("RETRY_BASE_DELAY", "100ms"),
        ],
    );
    for name in ["by-key", "by-sas", "by-token"] {
        let queue = azurite.create_queue(name).await;
        queue.send(name, None, None).await.expect("send");
    }

    let sidecars: Vec<(Sidecar, String)> = [&by_key, &by_sas, &by_sas_missing, &by_token]
        .into_iter()
        .map(|env| {
            let sidecar = Sidecar::spawn(env);
            let addr = sidecar.admin().to_string();
            (sidecar, addr)
        })
        .collect();
    let received = endpoint.wait_for(3, WAIT).await;
    assert!(
        received.iter().all(|r| r.header("authorization").is_some()),
        "the endpoint's basic auth and bearer token are used, just not shown"
    );
    assert!(
        received
            .iter()
            .any(|r| r.header("authorization") == Some(&format!("Bearer {endpoint_token}"))),
        "the bearer token reached the endpoint"
    );

    let mut outputs = Vec::new();
    for (_, addr) in &sidecars {
        assert_eq!(
            wait_for_status(addr, "/healthz", 200, WAIT)
                .await
                .map(|a| a.0),
            Some(200)
        );
        for path in ["/healthz", "/readyz", "/metrics", "/"] {
            let (_, body) = admin_get(addr, path).await.expect("answer");
            outputs.push((format!("{addr}{path}"), body));
        }
    }
    assert!(
        wait_until(WAIT, || sidecars[2]
            .0
            .output
            .count_matching("queue call failed")
            >= 1)
        .await,
        "the refused queue is reported"
    );
    for (sidecar, _) in &sidecars {
        outputs.push(("logs".into(), sidecar.output.text()));
    }
    for env in [&by_key, &by_sas, &by_sas_missing, &by_token] {
        for args in [
            &["check"][..],
            &["--help"][..],
            &["poison", "peek"][..],
            &["poison", "peek", "--json"][..],
            &["poison", "redrive"][..],
        ] {
            let (_, stdout, stderr) = command(args, env).await;
            outputs.push((format!("{args:?}"), format!("{stdout}{stderr}")));
        }
    }

    for (source, text) in &outputs {
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "{source} shows a secret:\n{text}"
            );
        }
    }
    // The start-up line still says what the sidecar is configured to do.
    let started = sidecars[0]
        .0
        .json_lines()
        .into_iter()
        .find(|l| l["message"] == "azure-queue-sidecar started")
        .expect("a start-up line");
    assert_eq!(
        started["endpoint"],
        format!(
            "http://REDACTED:REDACTED@127.0.0.1:{}/events?code=REDACTED",
            endpoint.port()
        )
    );
    assert_eq!(started["auth"], "shared-key");
    assert_eq!(started["admin_addr"], sidecars[0].1);
    assert_eq!(started["queue_length_interval"], "30s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_turns_readiness_off_while_deliveries_finish() {
    let azurite = Azurite::start().await;
    let queue = azurite.create_queue("draining").await;
    let endpoint = Endpoint::start(|_, _| Reply::status(200).after(Duration::from_secs(2))).await;
    queue.send("slow", None, None).await.expect("send");
    let mut sidecar = Sidecar::spawn(&Sidecar::env(&azurite, "draining", &endpoint.url));
    let addr = sidecar.admin().to_string();
    endpoint.wait_for(1, WAIT).await;
    sidecar.signal("TERM");
    let answer = wait_for_status(&addr, "/readyz", 503, Duration::from_secs(2)).await;
    assert_eq!(answer, Some((503, "shutting down\n".into())));
    assert_eq!(
        admin_get(&addr, "/healthz").await,
        Some((200, "ok: shutting down\n".into()))
    );
    assert_eq!(sidecar.wait_exit(Duration::from_secs(10)).await, Some(0));
    assert_eq!(
        admin_get(&addr, "/healthz").await,
        None,
        "the server stopped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_server_can_be_turned_off_and_a_taken_port_stops_the_start() {
    let azurite = Azurite::start().await;
    azurite.create_queue("quiet").await;
    let endpoint = Endpoint::ok().await;
    let base = Sidecar::env(&azurite, "quiet", &endpoint.url);

    let off = with(base.clone(), &[("ADMIN_ADDR", "off")]);
    let mut sidecar = Sidecar::spawn(&off);
    assert!(
        wait_until(WAIT, || sidecar
            .output
            .count_matching("azure-queue-sidecar started")
            == 1)
        .await
    );
    assert_eq!(
        sidecar.output.count_matching("/healthz"),
        0,
        "{}",
        sidecar.output.text()
    );
    assert_eq!(sidecar.wait_exit(Duration::ZERO).await, None, "running");
    let (code, _, stderr) = command(&["healthcheck"], &off).await;
    assert_eq!(code, 1);
    assert!(stderr.contains("ADMIN_ADDR=off"), "{stderr}");

    // Nothing listens where healthcheck looks: 1, not a hang.
    let nobody = format!("127.0.0.1:{}", free_port());
    let (code, stdout, _) = command(&["healthcheck"], &at(&base, &nobody)).await;
    assert_eq!(code, 1, "{stdout}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().expect("addr").to_string();
    let mut sidecar = Sidecar::spawn(&with(base.clone(), &[("ADMIN_ADDR", &taken_addr)]));
    assert_eq!(
        sidecar.wait_exit(WAIT).await,
        Some(1),
        "{}",
        sidecar.output.text()
    );
    let text = sidecar.output.text();
    assert!(
        text.contains(&format!("ADMIN_ADDR {taken_addr}: cannot listen")),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_half_sent_connections_cannot_starve_the_probes() {
    use tokio::io::AsyncWriteExt;
    let azurite = Azurite::start().await;
    azurite.create_queue("starve").await;
    let endpoint = Endpoint::ok().await;
    let sidecar = Sidecar::spawn(&Sidecar::env(&azurite, "starve", &endpoint.url));
    let addr = sidecar.admin().to_string();
    assert_eq!(
        wait_for_status(&addr, "/healthz", 200, WAIT)
            .await
            .map(|a| a.0),
        Some(200),
        "{}",
        sidecar.output.text()
    );

    // A neighbour opens 96 connections and keeps them: half send nothing, half stop in the
    // middle of a request's headers.
    let mut hogs = Vec::new();
    for i in 0..96 {
        let mut stream = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        if i % 2 == 1 {
            stream
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: neighbour\r\nX-Slow: ")
                .await
                .expect("half a request");
        }
        hogs.push(stream);
    }
    // The kubelet's probes still get their answer, at once and again and again.
    for attempt in 0..5 {
        let started = std::time::Instant::now();
        let answer = admin_get(&addr, "/healthz").await;
        assert_eq!(
            answer.as_ref().map(|a| a.0),
            Some(200),
            "probe {attempt} with 96 idle connections open: {answer:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "probe {attempt} took {:?}",
            started.elapsed()
        );
    }
    // And none of the neighbour's connections is kept for long: each is closed, to make room
    // or for being idle (10 s), whether it sent nothing or half a request.
    use tokio::io::AsyncReadExt;
    for (i, mut hog) in hogs.into_iter().enumerate() {
        let mut buf = [0u8; 1024];
        let read = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match hog.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue, // e.g. a 408 for the half-sent request
                }
            }
        })
        .await;
        assert!(read.is_ok(), "connection {i} is still open after 30 s");
    }
}
