//! Microsoft Entra ID end to end: the real binary authenticates to a real Azurite over HTTPS
//! (`--oauth basic`) with bearer tokens from a token issuer served by the test, with no key
//! configured; a private CA made by the test is trusted only through `SSL_CERT_FILE` (queue,
//! token endpoint) or `K_CA_CERTS` (endpoint).

mod support;

use std::time::Duration;
use support::entra::*;
use support::*;

const WAIT: Duration = Duration::from_secs(30);

/// A JWT-shaped stand-in for a Kubernetes service account token (the client assertion).
fn service_account_token(n: usize) -> String {
    let token = access_token("api://AzureADTokenExchange", 3600, 1000 + n);
    assert!(token.starts_with("eyJ"));
    token
}

/// The sidecar's environment for `queue` on an HTTPS Azurite: no key, no SAS, the test CA as
/// the only trusted root, and every library's debug logging on (to prove none leaks a secret).
fn base_env(
    pki: &TestPki,
    azurite: &AzuriteTls,
    queue: &str,
    endpoint: &str,
) -> Vec<(String, String)> {
    [
        ("QUEUE_NAME", queue.to_string()),
        ("ENDPOINT_URL", endpoint.to_string()),
        ("AZURE_STORAGE_QUEUE_ENDPOINT", azurite.service_url()),
        (
            "SSL_CERT_FILE",
            pki.ca_file().to_string_lossy().into_owned(),
        ),
        ("POLL_MIN_INTERVAL", "20ms".to_string()),
        ("POLL_MAX_INTERVAL", "200ms".to_string()),
        (
            "LOG_LEVEL",
            "debug,azure_core=debug,azure_identity=debug,typespec_client_core=debug,reqwest=debug"
                .to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn workload_env(issuer: &Issuer, token_file: &std::path::Path) -> Vec<(String, String)> {
    vec![
        (
            "AZURE_FEDERATED_TOKEN_FILE".into(),
            token_file.to_string_lossy().into_owned(),
        ),
        ("AZURE_CLIENT_ID".into(), CLIENT_ID.into()),
        ("AZURE_TENANT_ID".into(), TENANT.into()),
        ("AZURE_AUTHORITY_HOST".into(), issuer.url.clone()),
    ]
}

async fn send_all(queue: &azure_queue_sidecar::testing::Queue, texts: &[&str]) {
    for text in texts {
        queue.send(text, None, None).await.expect("send");
    }
}

/// Log lines (JSON) whose `message` is `message`.
fn lines_with(sidecar: &Sidecar, message: &str) -> Vec<serde_json::Value> {
    sidecar
        .json_lines()
        .into_iter()
        .filter(|l| l["message"] == message)
        .collect()
}

/// One sample of the sidecar's metrics, e.g. `token_requests_total{...}`; 0 if absent.
async fn metric(sidecar: &Sidecar, key: &str) -> f64 {
    let (status, text) = admin_get(sidecar.admin(), "/metrics")
        .await
        .expect("metrics answer");
    assert_eq!(status, 200);
    parse_metrics(&text)
        .get(&format!("azure_queue_sidecar_{key}"))
        .copied()
        .unwrap_or(0.0)
}

/// Nothing secret in anything the sidecar printed.
fn assert_no_secrets(sidecar: &Sidecar, secrets: &[String]) {
    let text = sidecar.output.text();
    for secret in secrets {
        assert!(
            !text.contains(secret.as_str()),
            "a secret reached the output: {}...",
            &secret[..secret.len().min(12)]
        );
    }
    assert!(!text.contains(KEY), "no account key anywhere");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_identity_delivers_with_bearer_tokens_and_follows_token_rotation() {
    let pki = TestPki::create();
    let azurite = AzuriteTls::start(&pki).await;
    let queue = azurite.create_queue("wi-orders").await;
    let issuer = Issuer::start(Some(&pki)).await;
    // 302 s: five minutes of refresh margin leaves ~2 s, so tokens are re-requested often.
    issuer.set_expires_in(302);
    let endpoint = Endpoint::ok().await;
    let token_file = pki.path("sa-token");
    let first = service_account_token(1);
    write_token_file(&token_file, &first);
    send_all(&queue, &["one", "two", "three"]).await;

    let mut env = base_env(&pki, &azurite, "wi-orders", &endpoint.url);
    env.extend(workload_env(&issuer, &token_file));
    let sidecar = Sidecar::spawn(&env);
    endpoint.wait_for(3, WAIT).await;

    let start = &lines_with(&sidecar, "azure-queue-sidecar started")[0];
    assert_eq!(start["auth"], "workload-identity");
    let ready = wait_for_status(sidecar.admin(), "/readyz", 200, WAIT).await;
    assert_eq!(ready, Some((200, "ok: ready\n".into())));
    let acquired = r#"token_requests_total{identity="workload-identity",outcome="acquired"}"#;
    assert!(metric(&sidecar, acquired).await >= 1.0);
    let exchanges = issuer.requests();
    let exchange = &exchanges[0];
    assert_eq!(exchange.method, "POST");
    assert_eq!(exchange.path, format!("/{TENANT}/oauth2/v2.0/token"));
    assert_eq!(exchange.form["client_assertion"], first);
    assert_eq!(exchange.form["client_id"], CLIENT_ID);
    assert_eq!(exchange.form["scope"], "https://storage.azure.com/.default");
    assert_eq!(exchange.form["grant_type"], "client_credentials");
    assert!(!lines_with(&sidecar, "access token acquired").is_empty());
    assert!(
        wait_until(WAIT, || azurite
            .debug_log()
            .contains("Validation against token authentication successfully"))
        .await,
        "Azurite checked a bearer token"
    );

    // The kubelet rotates the projected token: the next token request carries the new one.
    let second = service_account_token(2);
    write_token_file(&token_file, &second);
    let rotated = wait_until(WAIT, || {
        issuer
            .requests()
            .iter()
            .any(|r| r.form.get("client_assertion") == Some(&second))
    })
    .await;
    assert!(rotated, "the rotated service account token was used");
    send_all(&queue, &["four", "five"]).await;
    endpoint.wait_for(5, WAIT).await;
    let after_rotation: Vec<_> = issuer
        .requests()
        .into_iter()
        .skip_while(|r| r.form.get("client_assertion") != Some(&second))
        .collect();
    assert!(after_rotation
        .iter()
        .all(|r| r.form.get("client_assertion") == Some(&second)));

    // `check` uses the same identity: the credentials line says which one was accepted.
    let (code, stdout, stderr) = command(&["check"], &env).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        check_line(&stdout, "credentials").contains("workload-identity accepted"),
        "{stdout}"
    );

    let mut secrets = issuer.issued();
    secrets.extend([first, second]);
    assert_no_secrets(&sidecar, &secrets);
    for secret in &secrets {
        assert!(!stdout.contains(secret.as_str()) && !stderr.contains(secret.as_str()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_identity_delivers_through_the_identity_endpoint() {
    let pki = TestPki::create();
    let azurite = AzuriteTls::start(&pki).await;
    let queue = azurite.create_queue("mi-orders").await;
    // App Service's identity endpoint is plain HTTP on localhost; so is this one.
    let issuer = Issuer::start(None).await;
    let endpoint = Endpoint::ok().await;
    send_all(&queue, &["a", "b"]).await;

    let mut env = base_env(&pki, &azurite, "mi-orders", &endpoint.url);
    env.extend([
        ("IDENTITY_ENDPOINT".to_string(), issuer.msi_endpoint()),
        (
            "IDENTITY_HEADER".to_string(),
            issuer.state.identity_header.clone(),
        ),
        ("AZURE_CLIENT_ID".to_string(), CLIENT_ID.to_string()),
    ]);
    let sidecar = Sidecar::spawn(&env);
    endpoint.wait_for(2, WAIT).await;

    let start = &lines_with(&sidecar, "azure-queue-sidecar started")[0];
    assert_eq!(start["auth"], "managed-identity");
    let exchanges = issuer.requests();
    assert!(!exchanges.is_empty());
    let exchange = &exchanges[0];
    assert_eq!(exchange.method, "GET");
    assert_eq!(exchange.path, "/msi/token");
    assert_eq!(exchange.query["resource"], STORAGE_AUDIENCE);
    assert_eq!(exchange.query["api-version"], "2019-08-01");
    assert_eq!(
        exchange.query["client_id"], CLIENT_ID,
        "AZURE_CLIENT_ID selects the user-assigned identity"
    );
    assert_eq!(
        exchange.headers.get("x-identity-header"),
        Some(&issuer.state.identity_header)
    );
    // One token serves every call while it is valid (an hour here).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(issuer.requests().len(), 1, "the token is cached");

    let mut secrets = issuer.issued();
    secrets.push(issuer.state.identity_header.clone());
    assert_no_secrets(&sidecar, &secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_managed_identity_is_reported_without_its_secret_header() {
    let pki = TestPki::create();
    let azurite = AzuriteTls::start(&pki).await;
    azurite.create_queue("mi-refused").await;
    let issuer = Issuer::start(None).await;
    let endpoint = Endpoint::ok().await;
    let wrong_header = format!("wrong-{}", fastrand::u64(..));

    let mut env = base_env(&pki, &azurite, "mi-refused", &endpoint.url);
    env.extend([
        ("IDENTITY_ENDPOINT".to_string(), issuer.msi_endpoint()),
        ("IDENTITY_HEADER".to_string(), wrong_header.clone()),
    ]);
    let sidecar = Sidecar::spawn(&env);
    let reported = wait_until(WAIT, || {
        !lines_with(&sidecar, "cannot get an access token").is_empty()
    })
    .await;
    assert!(reported, "{}", sidecar.output.text());
    let line = &lines_with(&sidecar, "cannot get an access token")[0];
    assert_eq!(line["identity"], "managed-identity");
    let error = line["error"].as_str().expect("error");
    assert!(error.contains("ManagedIdentityCredential"), "{error}");
    assert!(error.contains("wrong X-IDENTITY-HEADER"), "{error}");
    let attempt = &lines_with(&sidecar, "token endpoint call failed")[0];
    assert_eq!(attempt["status"], "401");
    assert!(
        issuer
            .requests()
            .iter()
            .all(|r| !r.query.contains_key("client_id")),
        "no AZURE_CLIENT_ID: the system-assigned identity"
    );
    assert_no_secrets(&sidecar, &[wrong_header]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_the_wrong_audience_is_refused_with_the_reason_then_recovers() {
    let pki = TestPki::create();
    let azurite = AzuriteTls::start(&pki).await;
    let queue = azurite.create_queue("wrong-aud").await;
    let issuer = Issuer::start(Some(&pki)).await;
    issuer.set_audience("https://vault.azure.net");
    issuer.set_expires_in(302);
    let endpoint = Endpoint::ok().await;
    let token_file = pki.path("sa-token");
    write_token_file(&token_file, &service_account_token(1));
    send_all(&queue, &["held back"]).await;

    let mut env = base_env(&pki, &azurite, "wrong-aud", &endpoint.url);
    env.extend(workload_env(&issuer, &token_file));
    let sidecar = Sidecar::spawn(&env);

    let refused = wait_until(WAIT, || {
        lines_with(&sidecar, "queue call failed")
            .iter()
            .any(|l| l["kind"] == "unauthorized")
    })
    .await;
    assert!(refused, "{}", sidecar.output.text());
    let report = lines_with(&sidecar, "queue call failed")
        .into_iter()
        .find(|l| l["kind"] == "unauthorized")
        .expect("report");
    assert_eq!(report["status"], 403);
    assert_eq!(report["code"], "AuthenticationFailed");
    let error = report["error"].as_str().expect("error text");
    assert!(
        error.contains("Invalid token audience"),
        "the service's reason is in the log line: {error}"
    );
    assert_eq!(
        endpoint.count(),
        0,
        "nothing delivered with a refused token"
    );
    let not_ready = wait_for_status(sidecar.admin(), "/readyz", 503, WAIT).await;
    assert_eq!(
        not_ready,
        Some((503, "queue receive failed: unauthorized\n".into()))
    );
    let (code, stdout, _) = command(&["check"], &env).await;
    assert_eq!(code, 1, "{stdout}");
    let line = check_line(&stdout, "credentials");
    assert!(
        line.starts_with("FAIL") && line.contains("Invalid token audience"),
        "{stdout}"
    );
    assert_eq!(
        lines_with(&sidecar, "queue call failed")
            .iter()
            .filter(|l| l["kind"] == "unauthorized")
            .count(),
        1,
        "reported once, not per attempt"
    );

    // Fixing the identity (here: the issuer) needs no restart: the next token is accepted.
    issuer.set_audience(STORAGE_AUDIENCE);
    endpoint.wait_for(1, WAIT).await;
    assert!(!lines_with(&sidecar, "queue reachable again").is_empty());
    let ready = wait_for_status(sidecar.admin(), "/readyz", 200, WAIT).await;
    assert_eq!(ready.map(|a| a.0), Some(200));
    assert_no_secrets(&sidecar, &issuer.issued());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_failures_are_retried_with_backoff_reported_once_and_recovered() {
    let pki = TestPki::create();
    let azurite = AzuriteTls::start(&pki).await;
    let queue = azurite.create_queue("outage").await;
    let issuer = Issuer::start(Some(&pki)).await;
    // Short-lived tokens, so an outage soon leaves the sidecar with no valid token.
    issuer.set_expires_in(4);
    issuer.fail_next(2);
    let endpoint = Endpoint::ok().await;
    let token_file = pki.path("sa-token");
    write_token_file(&token_file, &service_account_token(1));
    send_all(&queue, &["before"]).await;

    let mut env = base_env(&pki, &azurite, "outage", &endpoint.url);
    env.extend(workload_env(&issuer, &token_file));
    // No queue-length poll: its token fetch, on its own queue client, can hold the shared
    // credential for a full round of retries just as the outage begins, and under load the
    // lease-bound Delete of the first message then times out waiting for it (reported as
    // `unreachable`) before the receive path's own round fails. This test is about the
    // receive path; the poll's failures have their own event.
    env.push(("QUEUE_LENGTH_INTERVAL".into(), "0".into()));
    let sidecar = Sidecar::spawn(&env);

    // Two 503s are retried with backoff inside one token request; the message still flows.
    endpoint.wait_for(1, WAIT).await;
    let attempts = lines_with(&sidecar, "token endpoint call failed");
    assert_eq!(attempts.len(), 2, "{}", sidecar.output.text());
    assert_eq!(attempts[0]["status"], "503");
    assert_eq!(attempts[0]["attempt"], 1);
    assert_eq!(attempts[1]["attempt"], 2);
    assert_eq!(attempts[0]["level"], "WARN");
    assert!(lines_with(&sidecar, "cannot get an access token").is_empty());

    // A long outage: one error line, queue calls fail as token_unavailable, nothing delivered.
    issuer.fail_next(usize::MAX);
    let before = issuer.requests().len();
    // The receive path's round of token retries (~16 s) must fail first: allow two rounds.
    let reported = wait_until(2 * WAIT, || {
        !lines_with(&sidecar, "cannot get an access token").is_empty()
            && lines_with(&sidecar, "queue call failed")
                .iter()
                .any(|l| l["kind"] == "token_unavailable")
    })
    .await;
    assert!(reported, "{}", sidecar.output.text());
    // Sent once the cached token has run out (until then, a failed refresh is ridden out with
    // the token still valid): it waits for the outage to end.
    send_all(&queue, &["during"]).await;
    let report = lines_with(&sidecar, "queue call failed")
        .into_iter()
        .find(|l| l["kind"] == "token_unavailable")
        .expect("report");
    let error = report["error"].as_str().expect("error");
    assert!(
        error.contains("the test issuer is down"),
        "the token endpoint's reason reaches the queue error: {error}"
    );
    // Whichever queue call (receive, or the delete of a message in flight) meets the outage
    // first is the reason given.
    let not_ready = wait_for_status(sidecar.admin(), "/readyz", 503, WAIT).await;
    let (status, reason) = not_ready.expect("readiness answered");
    assert_eq!(status, 503);
    assert!(
        reason.starts_with("queue ") && reason.ends_with("failed: token_unavailable\n"),
        "{reason:?}"
    );
    let failed = r#"token_requests_total{identity="workload-identity",outcome="failed"}"#;
    assert!(metric(&sidecar, failed).await >= 1.0);
    let refused = r#"token_endpoint_errors_total{identity="workload-identity",status="503"}"#;
    assert!(
        metric(&sidecar, refused).await >= 7.0,
        "every retry is counted"
    );
    // Keep failing through at least one more full round of retries.
    let more = wait_until(WAIT, || issuer.requests().len() >= before + 8).await;
    assert!(more, "the sidecar keeps asking, with backoff");
    assert_eq!(
        lines_with(&sidecar, "cannot get an access token").len(),
        1,
        "an outage is one error line"
    );
    assert_eq!(endpoint.count(), 1, "nothing delivered without a token");
    // Backoff: the retries are spread out, not a hot loop.
    let failed_calls = issuer.requests().len() - before;
    assert!(
        failed_calls < 40,
        "{failed_calls} calls: the endpoint is not hammered"
    );

    issuer.fail_next(0);
    endpoint.wait_for(2, WAIT).await;
    let recovered = wait_until(WAIT, || {
        !lines_with(&sidecar, "access token acquired again").is_empty()
    })
    .await;
    assert!(recovered, "{}", sidecar.output.text());
    let ready = wait_for_status(sidecar.admin(), "/readyz", 200, WAIT).await;
    assert_eq!(ready.map(|a| a.0), Some(200));
    assert_no_secrets(&sidecar, &issuer.issued());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k_ca_certs_trusts_a_private_ca_for_the_endpoint() {
    let pki = TestPki::create();
    let azurite = Azurite::start().await;
    azurite
        .create_queue("trusted")
        .await
        .send("hello", None, None)
        .await
        .expect("send");
    azurite
        .create_queue("untrusted")
        .await
        .send("hello", None, None)
        .await
        .expect("send");
    let endpoint = TlsEndpoint::start(&pki).await;

    // Without K_CA_CERTS the private CA is unknown: the delivery fails on the certificate.
    let untrusted = Sidecar::spawn(&Sidecar::env(&azurite, "untrusted", &endpoint.url));
    let failed = wait_until(WAIT, || {
        !lines_with(&untrusted, "delivery failed").is_empty()
    })
    .await;
    assert!(failed, "{}", untrusted.output.text());
    let failure = &lines_with(&untrusted, "delivery failed")[0];
    let error = failure["error"].as_str().expect("error");
    assert!(
        error.to_lowercase().contains("certificate") || error.contains("UnknownIssuer"),
        "{error}"
    );
    assert_eq!(endpoint.count(), 0);
    drop(untrusted);

    let mut env = Sidecar::env(&azurite, "trusted", &endpoint.url);
    env.push(("K_CA_CERTS".into(), pki.ca_pem()));
    let _trusted = Sidecar::spawn(&env);
    assert!(
        wait_until(WAIT, || endpoint.count() >= 1).await,
        "delivered over TLS"
    );
}

#[test]
fn identity_configuration_mistakes_exit_2_naming_the_variable() {
    let base = [
        ("QUEUE_NAME", "orders"),
        ("ENDPOINT_URL", "http://127.0.0.1:9/"),
        ("AZURE_STORAGE_ACCOUNT", "acct"),
    ];
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("AZURE_STORAGE_AUTH", vec![("AZURE_STORAGE_AUTH", "aad")]),
        (
            "AZURE_FEDERATED_TOKEN_FILE",
            vec![("AZURE_STORAGE_AUTH", "workload-identity")],
        ),
        (
            "AZURE_FEDERATED_TOKEN_FILE",
            vec![
                ("AZURE_FEDERATED_TOKEN_FILE", "/nonexistent/token"),
                ("AZURE_CLIENT_ID", CLIENT_ID),
                ("AZURE_TENANT_ID", TENANT),
            ],
        ),
        (
            "AZURE_STORAGE_QUEUE_ENDPOINT",
            vec![
                ("AZURE_STORAGE_AUTH", "managed-identity"),
                (
                    "AZURE_STORAGE_QUEUE_ENDPOINT",
                    "http://127.0.0.1:10001/devstoreaccount1",
                ),
            ],
        ),
        (
            "IDENTITY_HEADER",
            vec![("IDENTITY_ENDPOINT", "http://127.0.0.1:8081/msi/token")],
        ),
        ("AZURE_STORAGE_KEY", vec![("AZURE_STORAGE_AUTH", "key")]),
        (
            "SSL_CERT_FILE",
            vec![("SSL_CERT_FILE", "/nonexistent/ca.pem")],
        ),
        ("K_CA_CERTS", vec![("K_CA_CERTS", "not a certificate")]),
    ];
    for (variable, overrides) in cases {
        let mut env: Vec<(&str, &str)> = base.to_vec();
        env.extend(overrides);
        let (code, stdout, stderr) = run_to_exit(&[], &env);
        assert_eq!(code, 2, "{variable}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(variable), "{stderr} names {variable}");
        assert!(stdout.is_empty());
    }
}
