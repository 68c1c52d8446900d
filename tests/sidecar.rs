//! End-to-end behaviour of the core sidecar: the real binary, a real Azurite, a real HTTP
//! endpoint. Timings are shortened through the environment, never through code paths.

mod support;

use azure_queue_sidecar::testing::VARIABLES;
use std::collections::HashMap;
use std::time::Duration;
use support::*;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_every_kind_of_message_in_binary_mode_and_deletes_it() {
    let azurite = Azurite::start().await;
    let queue = azurite.create_queue("binary").await;
    let endpoint = Endpoint::ok().await;

    let json = r#"{"order": 42, "total": 9.50, "tags": ["a", "b"]}"#;
    let text = "hello, plain text with spaces and ünïcode";
    let big = "x".repeat(64 * 1024);
    let cloud_event = r#"{"specversion":"1.0","id":"grid-event-1","source":"/subscriptions/s/resourceGroups/g/providers/Microsoft.Storage/storageAccounts/a","type":"Microsoft.Storage.BlobCreated","time":"2024-05-01T10:00:00Z","datacontenttype":"application/json","data":{"url":"https://a.blob.core.windows.net/c/b.txt"}}"#;
    let mut ids = HashMap::new();
    for body in [json, text, big.as_str(), cloud_event] {
        let id = queue.send(body, None, None).await.expect("send");
        ids.insert(id, body.to_string());
    }

    let sidecar = Sidecar::spawn(&with(
        Sidecar::env(&azurite, "binary", &endpoint.url),
        &[("K_CE_OVERRIDES", r#"{"extensions":{"cluster":"test-1"}}"#)],
    ));
    let received = endpoint.wait_for(4, WAIT).await;
    assert_queue_empties(&queue).await;

    let by_body: HashMap<String, &Received> = received.iter().map(|r| (r.body_text(), r)).collect();

    let r = by_body[json];
    assert_eq!(r.body, json.as_bytes(), "JSON is forwarded byte for byte");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("ce-specversion"), Some("1.0"));
    assert_eq!(
        r.header("ce-type"),
        Some("com.microsoft.azure.queuestorage")
    );
    assert_eq!(
        r.header("ce-source").map(str::to_string),
        Some(format!("{}/binary", azurite.service_url()))
    );
    assert_eq!(
        ids.get(r.header("ce-id").expect("id")).map(String::as_str),
        Some(json)
    );
    assert_eq!(r.header("ce-dequeuecount"), Some("1"));
    assert_eq!(r.header("ce-cluster"), Some("test-1"));
    assert!(r.header("ce-time").is_some(), "time = insertion time");
    assert!(r.header("ce-expirytime").is_some());
    assert!(r.header("ce-datacontenttype").is_none());
    assert!(r.headers.keys().all(|k| !k.contains("popreceipt")));

    let r = by_body[text];
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));

    let r = by_body[big.as_str()];
    assert_eq!(r.body.len(), 64 * 1024);

    let grid = received
        .iter()
        .find(|r| r.header("ce-id") == Some("grid-event-1"))
        .expect("the Event Grid event keeps its id");
    assert_eq!(
        grid.header("ce-type"),
        Some("Microsoft.Storage.BlobCreated")
    );
    assert_eq!(
        grid.header("ce-dequeuecount"),
        Some("1"),
        "queue extensions are added"
    );
    let data: serde_json::Value = serde_json::from_slice(&grid.body).expect("json data");
    assert_eq!(data["url"], "https://a.blob.core.windows.net/c/b.txt");

    drop(sidecar);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decodes_base64_including_bytes_that_are_not_utf8() {
    let azurite = Azurite::start().await;
    let queue = azurite.create_queue("base64").await;
    let endpoint = Endpoint::ok().await;
    let raw = [0xffu8, 0xfe, 0x00, 0x80, 0x41];
    queue
        .send(&b64(br#"{"from":"functions"}"#), None, None)
        .await
        .expect("send");
    queue.send(&b64(&raw), None, None).await.expect("send");

    let _sidecar = Sidecar::spawn(&with(
        Sidecar::env(&azurite, "base64", &endpoint.url),
        &[("DECODE_BASE64", "true")],
    ));
    let received = endpoint.wait_for(2, WAIT).await;
    assert_queue_empties(&queue).await;

    let json = received
        .iter()
        .find(|r| r.header("content-type") == Some("application/json"))
        .expect("decoded JSON");
    assert_eq!(json.body, br#"{"from":"functions"}"#);
    let bytes = received
        .iter()
        .find(|r| r.header("content-type") == Some("application/octet-stream"))
        .expect("decoded bytes");
    assert_eq!(bytes.body, raw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_mode_sends_one_json_document_per_event() {
    let azurite = Azurite::start().await;
    let queue = azurite.create_queue("structured").await;
    let endpoint = Endpoint::ok().await;
    let json_id = queue.send(r#"{"n":1}"#, None, None).await.expect("send");
    let text_id = queue.send("just text", None, None).await.expect("send");

    let _sidecar = Sidecar::spawn(&with(
        Sidecar::env(&azurite, "structured", &endpoint.url),
        &[
            ("CE_MODE", "structured"),
            ("CE_TYPE", "com.example.order"),
            ("CE_SOURCE", "/orders"),
        ],
    ));
    let received = endpoint.wait_for(2, WAIT).await;
    assert_queue_empties(&queue).await;

    let docs: HashMap<String, serde_json::Value> = received
        .iter()
        .map(|r| {
            assert_eq!(
                r.header("content-type"),
                Some("application/cloudevents+json")
            );
            let doc: serde_json::Value = serde_json::from_slice(&r.body).expect("structured JSON");
            (doc["id"].as_str().expect("id").to_string(), doc)
        })
        .collect();
    let doc = &docs[&json_id];
    assert_eq!(doc["data"], serde_json::json!({"n": 1}));
    assert_eq!(doc["type"], "com.example.order");
    assert_eq!(doc["source"], "/orders");
    assert_eq!(doc["specversion"], "1.0");
    assert_eq!(doc["dequeuecount"], 1);
    let doc = &docs[&text_id];
    assert_eq!(doc["data"], "just text");
    assert_eq!(doc["datacontenttype"], "text/plain; charset=utf-8");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_credential_style_reaches_azurite() {
    let azurite = Azurite::start().await;
    let endpoint = Endpoint::ok().await;
    let service = azurite.service_url();
    let styles: Vec<(&str, Vec<(String, String)>)> = vec![
        (
            "connection-string",
            vec![(
                "AZURE_STORAGE_CONNECTION_STRING".into(),
                azurite.connection_string(),
            )],
        ),
        (
            "account-and-key",
            vec![
                ("AZURE_STORAGE_ACCOUNT".into(), ACCOUNT.into()),
                ("AZURE_STORAGE_KEY".into(), KEY.into()),
                ("AZURE_STORAGE_QUEUE_ENDPOINT".into(), service.clone()),
            ],
        ),
        (
            "sas-token",
            vec![
                (
                    "AZURE_STORAGE_SAS_TOKEN".into(),
                    format!("?{}", azurite.queue_sas("sas-token", "raup")),
                ),
                ("AZURE_STORAGE_QUEUE_ENDPOINT".into(), service.clone()),
            ],
        ),
        (
            "sas-connection-string",
            vec![(
                "AZURE_STORAGE_CONNECTION_STRING".into(),
                format!(
                    "QueueEndpoint={service};SharedAccessSignature={}",
                    azurite.queue_sas("sas-connection-string", "raup")
                ),
            )],
        ),
        (
            "development-storage",
            vec![
                (
                    "AZURE_STORAGE_CONNECTION_STRING".into(),
                    "UseDevelopmentStorage=true".into(),
                ),
                // Azurite runs on a free port here, not the well-known 10001.
                ("AZURE_STORAGE_QUEUE_ENDPOINT".into(), service.clone()),
            ],
        ),
    ];

    let mut sidecars = Vec::new();
    for (name, credentials) in &styles {
        let queue = azurite.create_queue(name).await;
        queue.send(name, None, None).await.expect("send");
        let mut env: Vec<(String, String)> = Sidecar::env(&azurite, name, &endpoint.url)
            .into_iter()
            .filter(|(k, _)| k != "AZURE_STORAGE_CONNECTION_STRING")
            .collect();
        env.extend(credentials.iter().cloned());
        sidecars.push(Sidecar::spawn(&env));
    }
    let received = endpoint.wait_for(styles.len(), WAIT).await;
    let mut bodies: Vec<String> = received.iter().map(Received::body_text).collect();
    bodies.sort();
    let mut expected: Vec<String> = styles.iter().map(|(n, _)| n.to_string()).collect();
    expected.sort();
    assert_eq!(bodies, expected);
    for (name, _) in &styles {
        assert_queue_empties(&azurite.queue(name)).await;
    }
    for sidecar in &sidecars {
        let text = sidecar.output.text();
        assert!(!text.contains(KEY), "the account key leaked into the logs");
        assert!(
            !text.contains("sig="),
            "a SAS signature leaked into the logs"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_delivery_stays_in_the_queue_and_comes_back_with_the_same_id() {
    let azurite = Azurite::start().await;
    let queue = azurite.create_queue("retry").await;
    let endpoint =
        Endpoint::start(|_, index| Reply::status(if index == 0 { 500 } else { 200 })).await;
    let id = queue.send("retry me", None, None).await.expect("send");

    let _sidecar = Sidecar::spawn(&with(
        Sidecar::env(&azurite, "retry", &endpoint.url),
        &[("RETRY_BASE_DELAY", "2s")],
    ));
    let first = endpoint.wait_for(1, WAIT).await;
    // Right after the failure the message is still in the queue, hidden until its retry.
    assert_eq!(queue.approximate_message_count().await.expect("count"), 1);
    let both = endpoint.wait_for(2, WAIT).await;
    assert_queue_empties(&queue).await;

    assert_eq!(first[0].event_id(), id);
    assert_eq!(
        both[1].event_id(),
        id,
        "the redelivery keeps the CloudEvent id"
    );
    assert_eq!(both[0].header("ce-dequeuecount"), Some("1"));
    assert_eq!(both[1].header("ce-dequeuecount"), Some("2"));
    let gap = both[1].at - both[0].at;
    assert!(
        gap >= Duration::from_millis(1500),
        "redelivered after {gap:?}, before the 2 s retry delay (±20 %, whole seconds) ran out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_deliveries_in_progress_finish_then_exits_0() {
    let azurite = Azurite::start().await;
    let queue = azurite.create_queue("drain").await;
    let endpoint =
        Endpoint::start(|_, _| Reply::status(200).after(Duration::from_millis(1500))).await;
    for i in 0..3 {
        queue
            .send(&format!("slow {i}"), None, None)
            .await
            .expect("send");
    }
    let mut sidecar = Sidecar::spawn(&Sidecar::env(&azurite, "drain", &endpoint.url));
    endpoint.wait_for(3, WAIT).await;
    sidecar.signal("TERM");
    let code = sidecar.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(code, Some(0), "output: {}", sidecar.output.text());
    assert_queue_empties(&queue).await;
    let stopped = sidecar.summary();
    assert_eq!(stopped["delivered"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_queue_is_reported_once_and_picked_up_when_created() {
    let azurite = Azurite::start().await;
    let endpoint = Endpoint::ok().await;
    let sidecar = Sidecar::spawn(&Sidecar::env(&azurite, "later", &endpoint.url));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let reports = sidecar
        .json_lines()
        .into_iter()
        .filter(|l| l["kind"] == "queue_not_found")
        .count();
    assert_eq!(
        reports,
        1,
        "one line per state change: {}",
        sidecar.output.text()
    );
    assert!(
        azurite
            .queue("later")
            .approximate_message_count()
            .await
            .is_err(),
        "the sidecar must never create the queue"
    );

    let queue = azurite.create_queue("later").await;
    queue.send("finally", None, None).await.expect("send");
    endpoint.wait_for(1, Duration::from_secs(45)).await;
    assert!(
        wait_until(WAIT, || sidecar
            .output
            .count_matching("queue reachable again")
            == 1)
        .await,
        "recovery is logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_is_reported_without_leaking_and_the_sidecar_keeps_running() {
    let azurite = Azurite::start().await;
    azurite.create_queue("locked").await;
    let endpoint = Endpoint::ok().await;
    let wrong_key = b64(&[7u8; 64]);
    let mut sidecar = Sidecar::spawn(&with(
        Sidecar::env(&azurite, "locked", &endpoint.url),
        &[(
            "AZURE_STORAGE_CONNECTION_STRING",
            &format!(
                "AccountName={ACCOUNT};AccountKey={wrong_key};QueueEndpoint={}",
                azurite.service_url()
            ),
        )],
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        sidecar.wait_exit(Duration::ZERO).await,
        None,
        "still running"
    );
    let lines = sidecar.json_lines();
    let reports: Vec<_> = lines
        .iter()
        .filter(|l| l["kind"] == "unauthorized")
        .collect();
    assert_eq!(reports.len(), 1, "{}", sidecar.output.text());
    assert_eq!(reports[0]["status"], 403);
    assert!(!sidecar.output.text().contains(&wrong_key));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_queue_service_is_retried_until_it_comes_up() {
    let port = free_port();
    let endpoint = Endpoint::ok().await;
    let env = vec![
        (
            "AZURE_STORAGE_CONNECTION_STRING".to_string(),
            "UseDevelopmentStorage=true".to_string(),
        ),
        (
            "AZURE_STORAGE_QUEUE_ENDPOINT".into(),
            format!("http://127.0.0.1:{port}/{ACCOUNT}"),
        ),
        ("QUEUE_NAME".into(), "late".into()),
        ("ENDPOINT_URL".into(), endpoint.url.clone()),
        ("POLL_MAX_INTERVAL".into(), "200ms".into()),
    ];
    let sidecar = Sidecar::spawn(&env);
    assert!(
        wait_until(WAIT, || sidecar.output.count_matching("\"unreachable\"")
            >= 1)
        .await,
        "{}",
        sidecar.output.text()
    );
    let azurite = Azurite::start_with(port, None).await;
    let queue = azurite.create_queue("late").await;
    queue.send("hello", None, None).await.expect("send");
    endpoint.wait_for(1, Duration::from_secs(60)).await;
    assert_eq!(
        sidecar.output.count_matching("\"unreachable\""),
        1,
        "{}",
        sidecar.output.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_queue_is_polled_with_doubling_backoff() {
    let azurite = Azurite::start().await;
    azurite.create_queue("idle").await;
    let endpoint = Endpoint::ok().await;
    let gets = || azurite.output.count_matching("/idle/messages");
    let _sidecar = Sidecar::spawn(&with(
        Sidecar::env(&azurite, "idle", &endpoint.url),
        &[
            ("POLL_MIN_INTERVAL", "50ms"),
            ("POLL_MAX_INTERVAL", "500ms"),
        ],
    ));
    assert!(
        wait_until(WAIT, || gets() >= 1).await,
        "no Get Messages seen"
    );
    let before = gets();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let polls = gets() - before;
    // 50+100+200+400 ms, then ~500 ms steps (±20 %): about 11 Gets in 4 s. A hot loop would
    // make hundreds; no backoff at 50 ms would make 80.
    assert!(
        (5..=16).contains(&polls),
        "{polls} Get Messages calls in 4 s"
    );
}

#[test]
fn configuration_errors_exit_2_with_one_line_naming_the_variable() {
    let base = [
        ("QUEUE_NAME", "orders"),
        ("ENDPOINT_URL", "http://127.0.0.1:9/"),
        (
            "AZURE_STORAGE_CONNECTION_STRING",
            "UseDevelopmentStorage=true",
        ),
    ];
    let secret_key = b64(&[9u8; 64]);
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("QUEUE_NAME", vec![("QUEUE_NAME", "")]),
        (
            "AZURE_STORAGE_CONNECTION_STRING",
            vec![("AZURE_STORAGE_CONNECTION_STRING", "")],
        ),
        (
            "AZURE_STORAGE_CONNECTION_STRING",
            vec![
                ("AZURE_STORAGE_ACCOUNT", "other"),
                ("AZURE_STORAGE_KEY", &secret_key),
            ],
        ),
        (
            "AZURE_STORAGE_CONNECTION_STRING",
            vec![("AZURE_STORAGE_CONNECTION_STRING", "AccountName=a;garbage")],
        ),
        ("ENDPOINT_URL", vec![("ENDPOINT_URL", "localhost:8080")]),
        // Host names must be ASCII (Punycode for an international one): the binary carries
        // no Unicode tables for IDNA (idna_adapter 1.0, issue 17).
        (
            "ENDPOINT_URL",
            vec![("ENDPOINT_URL", "http://bücher.example/events")],
        ),
        ("BATCH_SIZE", vec![("BATCH_SIZE", "0")]),
        ("BATCH_SIZE", vec![("BATCH_SIZE", "40")]),
        ("VISIBILITY_TIMEOUT", vec![("VISIBILITY_TIMEOUT", "thirty")]),
        ("HTTP_TIMEOUT", vec![("HTTP_TIMEOUT", "10")]),
        ("CE_MODE", vec![("CE_MODE", "batch")]),
        ("CE_BATCH_SIZE", vec![("CE_BATCH_SIZE", "64")]),
        ("CE_BATCH_MAX_BYTES", vec![("CE_BATCH_MAX_BYTES", "1MiB")]),
        // Overrides may not name context attributes or the sidecar's own extensions, and
        // their values must be strings.
        (
            "K_CE_OVERRIDES",
            vec![("K_CE_OVERRIDES", r#"{"extensions":{"id":"x"}}"#)],
        ),
        (
            "K_CE_OVERRIDES",
            vec![("K_CE_OVERRIDES", r#"{"extensions":{"dequeuecount":"1"}}"#)],
        ),
        (
            "K_CE_OVERRIDES",
            vec![("K_CE_OVERRIDES", r#"{"extensions":{"tier":2}}"#)],
        ),
        ("CE_PASSTHROUGH", vec![("CE_PASSTHROUGH", "sometimes")]),
        ("EVENTGRID_SCHEMA", vec![("EVENTGRID_SCHEMA", "guess")]),
        // A key or SAS over plain http to a host that is not loopback.
        (
            "AZURE_STORAGE_QUEUE_ENDPOINT",
            vec![
                ("AZURE_STORAGE_CONNECTION_STRING", ""),
                ("AZURE_STORAGE_SAS_TOKEN", "sv=2022-11-02&sp=rp&sig=SECRETSIG"),
                (
                    "AZURE_STORAGE_QUEUE_ENDPOINT",
                    "http://storage.example.net/devstoreaccount1",
                ),
            ],
        ),
        (
            "AZURE_STORAGE_CONNECTION_STRING",
            vec![(
                "AZURE_STORAGE_CONNECTION_STRING",
                "DefaultEndpointsProtocol=http;AccountName=acct;AccountKey=c2VjcmV0;EndpointSuffix=core.windows.net",
            )],
        ),
    ];
    for (variable, overrides) in cases {
        let mut env: Vec<(&str, &str)> = base.to_vec();
        for (k, v) in &overrides {
            env.retain(|(name, _)| name != k);
            env.push((k, v));
        }
        let (code, stdout, stderr) = run_to_exit(&[], &env);
        assert_eq!(code, 2, "{variable}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(variable), "{stderr} names {variable}");
        assert!(stdout.is_empty());
        assert!(!stderr.contains(&secret_key));
        assert!(!stderr.contains("SECRETSIG"));
    }
}

#[test]
fn configuration_errors_never_echo_url_credentials_or_queries() {
    let base = [
        ("QUEUE_NAME", "orders"),
        (
            "AZURE_STORAGE_CONNECTION_STRING",
            "UseDevelopmentStorage=true",
        ),
    ];
    for (variable, url) in [
        (
            "ENDPOINT_URL",
            "ftp://user:hunter2@app.example/api?code=SECRETCODE",
        ),
        (
            "ENDPOINT_URL",
            "http://user:hunter2@bad host/api?code=SECRETCODE",
        ),
        ("K_SINK", "gopher://hunter2@broker/?code=SECRETCODE"),
        (
            "AZURE_STORAGE_QUEUE_ENDPOINT",
            "http://user:hunter2@bad host/?sig=SECRETCODE",
        ),
    ] {
        let mut env = base.to_vec();
        env.push((variable, url));
        if variable != "ENDPOINT_URL" {
            env.push(("ENDPOINT_URL", "http://127.0.0.1:9/"));
        }
        if variable == "K_SINK" {
            env.retain(|(k, _)| *k != "ENDPOINT_URL");
        }
        let (code, _, stderr) = run_to_exit(&[], &env);
        assert_eq!(code, 2, "{variable}: {stderr}");
        assert!(stderr.contains(variable), "{stderr}");
        assert!(!stderr.contains("hunter2"), "{stderr}");
        assert!(!stderr.contains("SECRETCODE"), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_a_remote_host_is_allowed_only_when_asked_for() {
    // Nothing listens there: the point is that the configuration is accepted and the
    // sidecar runs (and keeps retrying) instead of exiting 2.
    let endpoint = Endpoint::ok().await;
    let env = vec![
        ("QUEUE_NAME".to_string(), "orders".to_string()),
        ("ENDPOINT_URL".into(), endpoint.url.clone()),
        ("AZURE_STORAGE_ACCOUNT".into(), ACCOUNT.into()),
        ("AZURE_STORAGE_KEY".into(), KEY.into()),
        (
            "AZURE_STORAGE_QUEUE_ENDPOINT".into(),
            "http://storage.invalid:10001/devstoreaccount1".into(),
        ),
    ];
    let mut refused = Sidecar::spawn(&env);
    assert_eq!(
        refused.wait_exit(WAIT).await,
        Some(2),
        "{}",
        refused.output.text()
    );
    assert!(
        wait_until(WAIT, || refused
            .output
            .text()
            .contains("AZURE_STORAGE_ALLOW_HTTP"))
        .await,
        "{}",
        refused.output.text()
    );
    let mut sidecar = Sidecar::spawn(&with(env, &[("AZURE_STORAGE_ALLOW_HTTP", "true")]));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        sidecar.wait_exit(Duration::ZERO).await,
        None,
        "{}",
        sidecar.output.text()
    );
}

#[test]
fn help_lists_every_variable_and_version_prints_the_version() {
    let (code, stdout, _) = run_to_exit(&["--help"], &[("AZURE_STORAGE_KEY", KEY)]);
    assert_eq!(code, 0);
    for variable in VARIABLES {
        assert!(
            stdout.contains(variable.name),
            "--help lists {}",
            variable.name
        );
    }
    assert!(!stdout.contains(KEY));
    let (code, stdout, _) = run_to_exit(&["--version"], &[]);
    assert_eq!(code, 0);
    assert!(stdout.starts_with("azure-queue-sidecar "));
    let (code, _, stderr) = run_to_exit(&["--frobnicate"], &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--help"));
}
