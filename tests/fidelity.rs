//! Event fidelity and hostile input, end to end: the real binary, a real Azurite, a real HTTP
//! endpoint. The endpoint must get exactly what the producer wrote (numbers, times, attributes),
//! and no message can corrupt, spoof or stall delivery.

mod support;

use azure_queue_sidecar::testing::Queue;
use std::collections::HashMap;
use std::time::Duration;
use support::*;

const WAIT: Duration = Duration::from_secs(30);

/// Sends every text and returns the queue message id of each, by text.
async fn send_all(queue: &Queue, texts: &[&str]) -> HashMap<String, String> {
    let mut ids = HashMap::new();
    for text in texts {
        let id = queue.send(text, None, None).await.expect("send");
        ids.insert(text.to_string(), id);
    }
    ids
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z`: the one time format of the sidecar's own attributes.
fn is_utc_rfc3339(value: &str) -> bool {
    let bytes = value.as_bytes();
    let shape = bytes.len() >= 20
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes[10] == b'T'
        && bytes[13] == b':'
        && bytes[16] == b':'
        && value.ends_with('Z');
    shape
        && time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339)
            .is_ok()
}

const CLOUD_EVENT: &str = r#"{"specversion":"1.0","id":"evt-7","source":"/producer/orders","type":"com.example.order.created","time":"2026-03-04T05:06:07.1234567+02:00","subject":"orders/7","comexampleext":"a b","datacontenttype":"application/json","data":{"n":12345678901234567890123,"x":1.50}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_mode_keeps_json_numbers_verbatim_and_uses_one_time_format() {
    let azurite = Azurite::start().await;
    let endpoint = Endpoint::ok().await;
    let texts = [
        r#"{"n":12345678901234567890123}"#,
        r#"{"big":1e400}"#,
        r#"{"z":-0,"d":0.1000000000000000055511151231257827,"e":1E-7}"#,
        "  [1, 2.50, \"\\u00e9\"]\n",
    ];
    let structured = azurite.create_queue("verbatim-structured").await;
    let binary = azurite.create_queue("verbatim-binary").await;
    let structured_ids = send_all(&structured, &texts).await;
    send_all(&binary, &texts).await;

    let _structured = Sidecar::spawn(&with(
        Sidecar::env(&azurite, "verbatim-structured", &endpoint.url),
        &[("CE_MODE", "structured")],
    ));
    let _binary = Sidecar::spawn(&Sidecar::env(&azurite, "verbatim-binary", &endpoint.url));
    let received = endpoint.wait_for(2 * texts.len(), WAIT).await;
    assert_queue_empties(&structured).await;
    assert_queue_empties(&binary).await;

    let (documents, binaries): (Vec<&Received>, Vec<&Received>) = received
        .iter()
        .partition(|r| r.header("content-type") == Some("application/cloudevents+json"));
    assert_eq!(documents.len(), texts.len());
    for text in texts {
        let doc = documents
            .iter()
            .find(|r| json_member(&r.body, "id") == format!("{:?}", structured_ids[text]))
            .unwrap_or_else(|| panic!("no event for {text}"));
        assert_eq!(
            json_member(&doc.body, "data"),
            text.trim(),
            "the JSON value is embedded byte for byte: {}",
            doc.body_text()
        );
        assert_eq!(
            json_member(&doc.body, "datacontenttype"),
            "\"application/json\""
        );
        for attribute in ["time", "expirytime"] {
            let value: String =
                serde_json::from_str(&json_member(&doc.body, attribute)).expect("a string");
            assert!(is_utc_rfc3339(&value), "{attribute} = {value}");
        }
        let members = json_members(&doc.body);
        let mut names: Vec<&str> = members.iter().map(|(k, _)| k.as_str()).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(
            names.len(),
            before,
            "no duplicate member: {}",
            doc.body_text()
        );
    }
    for text in texts {
        let event = binaries
            .iter()
            .find(|r| r.body == text.as_bytes())
            .unwrap_or_else(|| panic!("binary mode forwards {text:?} byte for byte"));
        assert_eq!(event.header("content-type"), Some("application/json"));
        for header in ["ce-time", "ce-expirytime"] {
            let value = event.header(header).expect(header);
            assert!(is_utc_rfc3339(value), "{header} = {value}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passed_through_cloud_event_keeps_every_attribute_as_written() {
    let azurite = Azurite::start().await;
    let endpoint = Endpoint::ok().await;
    let binary = azurite.create_queue("as-written-binary").await;
    let structured = azurite.create_queue("as-written-structured").await;
    let binary_id = binary.send(CLOUD_EVENT, None, None).await.expect("send");
    let structured_id = structured
        .send(CLOUD_EVENT, None, None)
        .await
        .expect("send");
    let _binary = Sidecar::spawn(&Sidecar::env(&azurite, "as-written-binary", &endpoint.url));
    let _structured = Sidecar::spawn(&with(
        Sidecar::env(&azurite, "as-written-structured", &endpoint.url),
        &[("CE_MODE", "structured")],
    ));
    let received = endpoint.wait_for(2, WAIT).await;
    assert_queue_empties(&binary).await;
    assert_queue_empties(&structured).await;

    let event = received
        .iter()
        .find(|r| r.header("ce-id").is_some())
        .expect("the binary-mode event");
    assert_eq!(event.header("ce-id"), Some("evt-7"));
    assert_eq!(event.header("ce-source"), Some("/producer/orders"));
    assert_eq!(event.header("ce-type"), Some("com.example.order.created"));
    assert_eq!(
        event.header("ce-time"),
        Some("2026-03-04T05:06:07.1234567+02:00"),
        "the producer's time, not rewritten"
    );
    assert_eq!(event.header("ce-subject"), Some("orders/7"));
    assert_eq!(event.header("ce-comexampleext"), Some("a%20b"));
    assert_eq!(event.header("ce-queuemessageid"), Some(binary_id.as_str()));
    assert_eq!(event.header("ce-dequeuecount"), Some("1"));
    assert!(event.header("ce-expirytime").is_some_and(is_utc_rfc3339));
    assert_eq!(event.header("content-type"), Some("application/json"));
    assert_eq!(
        event.body_text(),
        r#"{"n":12345678901234567890123,"x":1.50}"#
    );

    let doc = received
        .iter()
        .find(|r| r.header("content-type") == Some("application/cloudevents+json"))
        .expect("the structured-mode event");
    for (name, raw) in [
        ("id", r#""evt-7""#),
        ("source", r#""/producer/orders""#),
        ("time", r#""2026-03-04T05:06:07.1234567+02:00""#),
        ("subject", r#""orders/7""#),
        ("comexampleext", r#""a b""#),
        ("data", r#"{"n":12345678901234567890123,"x":1.50}"#),
        ("dequeuecount", "1"),
    ] {
        assert_eq!(json_member(&doc.body, name), raw, "{}", doc.body_text());
    }
    assert_eq!(
        json_member(&doc.body, "queuemessageid"),
        format!("{structured_id:?}")
    );
}

/// An Event Grid schema event as Event Grid writes it into a storage queue: base64-encoded.
const EVENT_GRID: &str = r#"{"topic":"/subscriptions/s/resourceGroups/g/providers/Microsoft.Storage/storageAccounts/acct","subject":"/blobServices/default/containers/c/blobs/b.txt","eventType":"Microsoft.Storage.BlobCreated","eventTime":"2017-06-26T18:41:00.9584103Z","id":"831e1650-001e-001b-66ab-eeb76e069631","data":{"api":"PutBlockList","contentLength":524288},"dataVersion":"","metadataVersion":"1"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_grid_schema_events_are_mapped_by_default_and_wrapped_on_request() {
    let azurite = Azurite::start().await;
    let endpoint = Endpoint::ok().await;
    let mapped = azurite.create_queue("grid-mapped").await;
    let wrapped = azurite.create_queue("grid-wrapped").await;
    let mapped_id = mapped
        .send(&b64(EVENT_GRID.as_bytes()), None, None)
        .await
        .expect("send");
    let wrapped_id = wrapped
        .send(&b64(EVENT_GRID.as_bytes()), None, None)
        .await
        .expect("send");
    let decode = [("DECODE_BASE64", "true")];
    let _mapped = Sidecar::spawn(&with(
        Sidecar::env(&azurite, "grid-mapped", &endpoint.url),
        &decode,
    ));
    let _wrapped = Sidecar::spawn(&with(
        Sidecar::env(&azurite, "grid-wrapped", &endpoint.url),
        &[("DECODE_BASE64", "true"), ("EVENTGRID_SCHEMA", "wrap")],
    ));
    let received = endpoint.wait_for(2, WAIT).await;
    assert_queue_empties(&mapped).await;
    assert_queue_empties(&wrapped).await;

    let event = received
        .iter()
        .find(|r| r.header("ce-queuemessageid") == Some(mapped_id.as_str()))
        .expect("the mapped event");
    assert_eq!(
        event.header("ce-id"),
        Some("831e1650-001e-001b-66ab-eeb76e069631")
    );
    assert_eq!(
        event.header("ce-source"),
        Some("/subscriptions/s/resourceGroups/g/providers/Microsoft.Storage/storageAccounts/acct")
    );
    assert_eq!(
        event.header("ce-type"),
        Some("Microsoft.Storage.BlobCreated")
    );
    assert_eq!(
        event.header("ce-subject"),
        Some("/blobServices/default/containers/c/blobs/b.txt")
    );
    assert_eq!(
        event.header("ce-time"),
        Some("2017-06-26T18:41:00.9584103Z")
    );
    assert_eq!(event.header("ce-dataversion"), Some(""));
    assert_eq!(event.header("ce-metadataversion"), Some("1"));
    assert_eq!(event.header("content-type"), Some("application/json"));
    assert_eq!(
        event.body_text(),
        r#"{"api":"PutBlockList","contentLength":524288}"#
    );

    let event = received
        .iter()
        .find(|r| r.header("ce-id") == Some(wrapped_id.as_str()))
        .expect("EVENTGRID_SCHEMA=wrap: the queue message is the event");
    assert_eq!(
        event.header("ce-type"),
        Some("com.microsoft.azure.queuestorage")
    );
    assert_eq!(
        event.body_text(),
        EVENT_GRID,
        "the whole Event Grid event is the data"
    );
    assert!(event.header("ce-dataversion").is_none());
}

/// A CloudEvent any parser can hold (no huge numbers in its data).
const PLAIN_CLOUD_EVENT: &str = r#"{"specversion":"1.0","id":"evt-8","source":"/producer","type":"com.example.t","data":{"ok":true}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ce_passthrough_false_wraps_even_a_valid_cloud_event() {
    let azurite = Azurite::start().await;
    let endpoint = Endpoint::ok().await;
    let queue = azurite.create_queue("no-passthrough").await;
    let id = queue
        .send(PLAIN_CLOUD_EVENT, None, None)
        .await
        .expect("send");
    let _sidecar = Sidecar::spawn(&with(
        Sidecar::env(&azurite, "no-passthrough", &endpoint.url),
        &[("CE_PASSTHROUGH", "false")],
    ));
    let received = endpoint.wait_for(1, WAIT).await;
    assert_queue_empties(&queue).await;
    let event = &received[0];
    assert_eq!(event.header("ce-id"), Some(id.as_str()));
    assert_eq!(
        event.header("ce-type"),
        Some("com.microsoft.azure.queuestorage")
    );
    assert_eq!(event.body, PLAIN_CLOUD_EVENT.as_bytes());
    assert_eq!(event.header("content-type"), Some("application/json"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_cloud_event_is_delivered_wrapped_as_data_with_a_warning() {
    let azurite = Azurite::start().await;
    let endpoint = Endpoint::ok().await;
    let queue = azurite.create_queue("invalid-events").await;
    let texts = [
        // An extension name no header can carry.
        r#"{"specversion":"1.0","id":"bad-1","source":"/p","type":"t","bad name":"x"}"#,
        // A content type with CR/LF: Content-Type is not percent-encoded, so it cannot be sent.
        "{\"specversion\":\"1.0\",\"id\":\"bad-2\",\"source\":\"/p\",\"type\":\"t\",\"datacontenttype\":\"text/plain\\r\\nx-injected: 1\",\"data\":\"hi\"}",
        // A required attribute of the wrong type.
        r#"{"specversion":"1.0","id":7,"source":"/p","type":"t"}"#,
        // A time that is not RFC 3339.
        r#"{"specversion":"1.0","id":"bad-4","source":"/p","type":"t","time":"yesterday"}"#,
        // Two ids: which one would a receiver dedupe on?
        r#"{"specversion":"1.0","id":"bad-5","id":"other","source":"/p","type":"t"}"#,
    ];
    let ids = send_all(&queue, &texts).await;
    let sidecar = Sidecar::spawn(&Sidecar::env(&azurite, "invalid-events", &endpoint.url));
    let received = endpoint.wait_for(texts.len(), WAIT).await;
    assert_queue_empties(&queue).await;
    for text in texts {
        let event = received
            .iter()
            .find(|r| r.body == text.as_bytes())
            .unwrap_or_else(|| panic!("{text} delivered as data: {}", sidecar.output.text()));
        assert_eq!(event.header("ce-id"), Some(ids[text].as_str()));
        assert_eq!(event.header("content-type"), Some("application/json"));
    }
    assert!(
        wait_until(WAIT, || sidecar.output.count_matching("\"invalid_event\"")
            == texts.len())
        .await,
        "one warning per wrapped invalid event: {}",
        sidecar.output.text()
    );
    assert_eq!(sidecar.output.count_matching("receiving paused"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bytes_never_stop_other_messages() {
    let azurite = Azurite::start().await;
    let endpoint = Endpoint::ok().await;
    let queue = azurite.create_queue("bad-bytes").await;
    let header_sized = format!(
        r#"{{"specversion":"1.0","id":"big-subject","source":"/p","type":"t","subject":"{}"}}"#,
        "é\\r\\n\\u0000".repeat(3000)
    );
    let payloads: Vec<Vec<u8>> = vec![
        b"before".to_vec(),
        b"nul \0 inside".to_vec(),
        vec![b'%'; 48 * 1024 - 3],
        vec![0xff, 0xfe, 0x00, 0xc3, 0x28, 0x80],
        header_sized.into_bytes(),
        "{\"specversion\":\"1.0\",\"id\":\"crlf\",\"source\":\"/p\",\"type\":\"t\",\"datacontenttype\":\"a\\r\\nb\"}".into(),
        br#"{"specversion":"1.0","id":"ext","source":"/p","type":"t","UPPER":"x","data_base64":"!!"}"#.to_vec(),
        b"after".to_vec(),
    ];
    for payload in &payloads {
        queue.send(&b64(payload), None, None).await.expect("send");
    }
    let sidecar = Sidecar::spawn(&with(
        Sidecar::env(&azurite, "bad-bytes", &endpoint.url),
        &[("DECODE_BASE64", "true"), ("MAX_IN_FLIGHT", "2")],
    ));
    let received = endpoint.wait_for(payloads.len(), WAIT).await;
    assert_queue_empties(&queue).await;
    for payload in &payloads {
        let delivered = received.iter().any(|r| {
            r.body == *payload || r.header("ce-id") == Some("big-subject") && r.body.is_empty()
        });
        assert!(
            delivered,
            "{:?} was delivered: {}",
            String::from_utf8_lossy(&payload[..payload.len().min(80)]),
            sidecar.output.text()
        );
    }
    let big = received
        .iter()
        .find(|r| r.header("ce-id") == Some("big-subject"))
        .expect("the header-sized attribute is passed through");
    assert!(big
        .header("ce-subject")
        .is_some_and(|s| s.starts_with("%C3%A9%0D%0A%00")));
    assert_eq!(sidecar.output.count_matching("receiving paused"), 0);
    assert_eq!(sidecar.output.count_matching("\"connection\""), 0);
}
