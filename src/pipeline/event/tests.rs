//! Unit tests of the event layer.

use super::recognise::Members;
use super::text::{json_string, MAX_JSON_DEPTH};
use super::*;
use crate::config::{BatchConfig, EventGridSchema};
use base64::Engine;
use std::collections::BTreeMap;
use time::OffsetDateTime;

const ID: &str = "6b4f7d5c-0000-4000-8000-000000000001";

fn config(mode: ContentMode) -> EventConfig {
    EventConfig {
        ce_type: "com.microsoft.azure.queuestorage".into(),
        source: Some("http://127.0.0.1:10001/devstoreaccount1/orders".into()),
        mode,
        batch: BatchConfig {
            max_events: 32,
            max_bytes: 1 << 20,
        },
        overrides: BTreeMap::from([("team".to_string(), "payments".to_string())]),
        decode_base64: false,
        passthrough: true,
        event_grid: EventGridSchema::Map,
    }
}

/// A mapper for `config`, whose `source` the tests always set.
fn mapper_for(config: EventConfig) -> EventMapper {
    let source = config.source.clone().unwrap_or_default();
    EventMapper::new(config, source)
}

fn message(text: &str) -> ReceivedMessage {
    ReceivedMessage {
        id: ID.into(),
        pop_receipt: "RECEIPT".into(),
        text: text.into(),
        dequeue_count: 3,
        insertion_time: Some(OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("time")),
        expiration_time: Some(OffsetDateTime::from_unix_timestamp(1_700_604_800).expect("time")),
    }
}

fn event_with(config: EventConfig, text: &str) -> Event {
    mapper_for(config).to_event(&message(text)).expect("event")
}

fn binary(text: &str) -> HttpPayload {
    event_with(config(ContentMode::Binary), text).encode(ContentMode::Binary)
}

fn structured(text: &str) -> HttpPayload {
    event_with(config(ContentMode::Structured), text).encode(ContentMode::Structured)
}

/// The raw JSON text of each member of a structured body, in order, duplicates kept.
fn members(body: &[u8]) -> Vec<(String, String)> {
    let text = std::str::from_utf8(body).expect("utf-8");
    serde_json::from_str::<Members<'_>>(text)
        .expect("a JSON object")
        .0
        .into_iter()
        .map(|(k, v)| (k.into_owned(), v.get().to_string()))
        .collect()
}

fn member(body: &[u8], name: &str) -> Option<String> {
    let found: Vec<String> = members(body)
        .into_iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v)
        .collect();
    assert!(found.len() <= 1, "{name} appears {} times", found.len());
    found.into_iter().next()
}

#[test]
fn json_is_forwarded_byte_for_byte_in_binary_mode() {
    let text = r#"{"b": 1.50, "a": [1,2], "n": 12345678901234567890123}"#;
    let payload = binary(text);
    assert_eq!(payload.body, text.as_bytes());
    assert_eq!(payload.header("content-type"), Some(JSON));
    assert_eq!(payload.header("ce-specversion"), Some("1.0"));
    assert_eq!(payload.header("ce-id"), Some(ID));
    assert_eq!(
        payload.header("ce-queuemessageid"),
        None,
        "the id is the message id"
    );
    assert_eq!(
        payload.header("ce-type"),
        Some("com.microsoft.azure.queuestorage")
    );
    assert_eq!(payload.header("ce-dequeuecount"), Some("3"));
    assert_eq!(payload.header("ce-team"), Some("payments"));
    assert_eq!(payload.header("ce-time"), Some("2023-11-14T22:13:20Z"));
    assert_eq!(
        payload.header("ce-expirytime"),
        Some("2023-11-21T22:13:20Z")
    );
    assert!(payload.header("ce-datacontenttype").is_none());
    assert!(payload.headers.iter().all(|(_, v)| !v.contains("RECEIPT")));
}

#[test]
fn text_and_bytes_get_their_content_types() {
    assert_eq!(binary("hello world").header("content-type"), Some(TEXT));
    let mapper = mapper_for(EventConfig {
        decode_base64: true,
        ..config(ContentMode::Binary)
    });
    let raw = [0xffu8, 0x00, 0x80];
    let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
    let payload = mapper
        .to_event(&message(&b64))
        .expect("event")
        .encode(ContentMode::Binary);
    assert_eq!(payload.header("content-type"), Some(OCTET_STREAM));
    assert_eq!(payload.body, raw);
}

#[test]
fn base64_is_decoded_in_any_common_alphabet_and_garbage_is_refused() {
    let mapper = mapper_for(EventConfig {
        decode_base64: true,
        ..config(ContentMode::Binary)
    });
    for text in ["aGk/Pz8+", "aGk_Pz8-", "aGk", "aGk="] {
        let payload = mapper
            .to_event(&message(text))
            .expect("decodes")
            .encode(ContentMode::Binary);
        assert!(payload.body.starts_with(b"hi"), "{text}");
    }
    assert_eq!(
        mapper.to_event(&message("not base64!!")).err(),
        Some(MappingError::InvalidBase64)
    );
}

#[test]
fn any_rfc_8259_json_is_embedded_verbatim_in_structured_mode() {
    for text in [
        r#"{"n":12345678901234567890123}"#,
        r#"{"big":1e400}"#,
        "-0",
        "0.1000000000000000055511151231257827",
        r#""a string""#,
        "  [1, 2.50, \"\\u00e9\", null, true]\n",
        "null",
    ] {
        let payload = structured(text);
        assert_eq!(payload.header("content-type"), Some(STRUCTURED));
        assert_eq!(member(&payload.body, "data").as_deref(), Some(text.trim()));
        assert_eq!(
            member(&payload.body, "datacontenttype").as_deref(),
            Some("\"application/json\"")
        );
        assert_eq!(member(&payload.body, "dequeuecount").as_deref(), Some("3"));
        assert_eq!(
            member(&payload.body, "time").as_deref(),
            Some("\"2023-11-14T22:13:20Z\"")
        );
    }
    let payload = structured("just \"text\"\n");
    assert_eq!(
        member(&payload.body, "data").as_deref(),
        Some(r#""just \"text\"\n""#)
    );
    assert_eq!(
        member(&payload.body, "datacontenttype").as_deref(),
        Some(&*json_string(TEXT))
    );
}

#[test]
fn bytes_go_to_data_base64_in_structured_mode() {
    let mapper = mapper_for(EventConfig {
        decode_base64: true,
        ..config(ContentMode::Structured)
    });
    let payload = mapper
        .to_event(&message("/wCA"))
        .expect("event")
        .encode(ContentMode::Structured);
    assert_eq!(
        member(&payload.body, "data_base64").as_deref(),
        Some("\"/wCA\"")
    );
    assert_eq!(member(&payload.body, "data"), None);
}

#[test]
fn json_nested_deeper_than_the_limit_is_text() {
    let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    assert!(is_json(&deep(MAX_JSON_DEPTH)));
    assert!(!is_json(&deep(MAX_JSON_DEPTH + 1)));
    assert_eq!(
        binary(&deep(MAX_JSON_DEPTH + 1)).header("content-type"),
        Some(TEXT)
    );
    assert!(!is_json(&deep(100_000)), "no stack overflow either");
    assert!(
        is_json(r#"["[[[[", "\"]]]"]"#),
        "brackets in strings do not count"
    );
}

const CLOUD_EVENT: &str = r#"{"specversion":"1.0","id":"evt-1","source":"/producer","type":"com.example.t","time":"2026-03-04T05:06:07.1234567+02:00","subject":"a b","count":5,"flag":true,"gone":null,"datacontenttype":"application/json","data":{"n":1e400}}"#;

#[test]
fn a_cloud_event_is_passed_through_with_every_member_as_written() {
    let payload = binary(CLOUD_EVENT);
    assert_eq!(payload.header("ce-id"), Some("evt-1"));
    assert_eq!(payload.header("ce-source"), Some("/producer"));
    assert_eq!(
        payload.header("ce-time"),
        Some("2026-03-04T05:06:07.1234567+02:00")
    );
    assert_eq!(payload.header("ce-subject"), Some("a%20b"));
    assert_eq!(payload.header("ce-count"), Some("5"));
    assert_eq!(payload.header("ce-flag"), Some("true"));
    assert_eq!(payload.header("ce-gone"), None, "null is unset");
    assert_eq!(payload.header("ce-queuemessageid"), Some(ID));
    assert_eq!(payload.header("ce-dequeuecount"), Some("3"));
    assert_eq!(payload.header("ce-team"), Some("payments"));
    assert_eq!(payload.header("content-type"), Some(JSON));
    assert_eq!(payload.body, br#"{"n":1e400}"#);

    let payload = structured(CLOUD_EVENT);
    let expected = [
        ("specversion", r#""1.0""#),
        ("id", r#""evt-1""#),
        ("source", r#""/producer""#),
        ("type", r#""com.example.t""#),
        ("time", r#""2026-03-04T05:06:07.1234567+02:00""#),
        ("subject", r#""a b""#),
        ("count", "5"),
        ("flag", "true"),
        ("gone", "null"),
        ("datacontenttype", r#""application/json""#),
        ("team", r#""payments""#),
        ("queuemessageid", &*json_string(ID)),
        ("dequeuecount", "3"),
        ("expirytime", r#""2023-11-21T22:13:20Z""#),
        ("data", r#"{"n":1e400}"#),
    ];
    let got = members(&payload.body);
    let got: Vec<(&str, &str)> = got.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(got, expected);
}

#[test]
fn passed_through_data_follows_the_json_format_rules() {
    let text = r#"{"specversion":"1.0","id":"x","source":"/s","type":"t","datacontenttype":"text/xml","data":"<much wow=\"xml\"/>"}"#;
    let payload = binary(text);
    assert_eq!(payload.header("content-type"), Some("text/xml"));
    assert_eq!(payload.body, br#"<much wow="xml"/>"#);
    let text = r#"{"specversion":"1.0","id":"x","source":"/s","type":"t","datacontenttype":"application/vnd.thrift","data_base64":"/wCA"}"#;
    let payload = binary(text);
    assert_eq!(
        payload.header("content-type"),
        Some("application/vnd.thrift")
    );
    assert_eq!(payload.body, [0xff, 0x00, 0x80]);
    assert_eq!(
        member(&structured(text).body, "data_base64").as_deref(),
        Some("\"/wCA\"")
    );
    // No datacontenttype: `data` is JSON; no data at all: no body, no content type.
    let payload = binary(r#"{"specversion":"1.0","id":"x","source":"/s","type":"t","data":"s"}"#);
    assert_eq!(payload.header("content-type"), Some(JSON));
    assert_eq!(payload.body, br#""s""#);
    let payload = binary(r#"{"specversion":"1.0","id":"x","source":"/s","type":"t"}"#);
    assert_eq!(payload.header("content-type"), None);
    assert!(payload.body.is_empty());
}

#[test]
fn the_queue_extensions_win_and_overrides_replace_a_producers_extension() {
    let text = r#"{"specversion":"1.0","id":"x","source":"/s","type":"t","dequeuecount":1,"queuemessageid":"forged","expirytime":"2099-01-01T00:00:00Z","team":"theirs"}"#;
    let payload = binary(text);
    assert_eq!(payload.header("ce-dequeuecount"), Some("3"));
    assert_eq!(payload.header("ce-queuemessageid"), Some(ID));
    assert_eq!(
        payload.header("ce-expirytime"),
        Some("2023-11-21T22:13:20Z")
    );
    assert_eq!(payload.header("ce-team"), Some("payments"));
    for name in ["ce-dequeuecount", "ce-queuemessageid", "ce-team", "ce-id"] {
        let count = payload.headers.iter().filter(|(n, _)| n == name).count();
        assert_eq!(count, 1, "{name}");
    }
    let body = structured(text).body;
    for name in ["dequeuecount", "queuemessageid", "expirytime", "team", "id"] {
        assert!(member(&body, name).is_some(), "{name} once");
    }
}

#[test]
fn an_invalid_cloud_event_is_wrapped_with_the_reason() {
    for (text, reason) in [
        (r#"{"specversion":"1.0","id":"x","source":"/s","type":"t","bad name":"x"}"#, "extension name"),
        (r#"{"specversion":"1.0","id":"x","source":"/s","type":"t","UPPER":"x"}"#, "extension name"),
        ("{\"specversion\":\"1.0\",\"id\":\"x\",\"source\":\"/s\",\"type\":\"t\",\"datacontenttype\":\"a\\r\\nb\"}", "datacontenttype"),
        (r#"{"specversion":"1.0","id":7,"source":"/s","type":"t"}"#, "id must be"),
        (r#"{"specversion":"1.0","id":"","source":"/s","type":"t"}"#, "id must be"),
        (r#"{"specversion":"1.0","source":"/s","type":"t"}"#, "id is missing"),
        (r#"{"specversion":"0.3","id":"x","source":"/s","type":"t"}"#, "specversion"),
        (r#"{"specversion":"1.0","id":"x","source":"/s","type":"t","time":"yesterday"}"#, "RFC 3339"),
        (r#"{"specversion":"1.0","id":"x","id":"y","source":"/s","type":"t"}"#, "more than once"),
        (r#"{"specversion":"1.0","id":"x","source":"/s","type":"t","data":1,"data_base64":"AA=="}"#, "mutually exclusive"),
        (r#"{"specversion":"1.0","id":"x","source":"/s","type":"t","data_base64":"!!"}"#, "base64"),
        (r#"{"specversion":"1.0","id":"x","source":"/s","type":"t","ext":1.5}"#, "32-bit integer"),
        (r#"{"specversion":"1.0","id":"x","source":"/s","type":"t","ext":4294967296}"#, "32-bit integer"),
        (r#"{"specversion":"1.0","id":"x","source":"/s","type":"t","ext":{"a":1}}"#, "32-bit integer"),
        (r#"{"specversion":"1.0","id":"x","source":"/s","type":"t","subject":"\ud800"}"#, "does not decode"),
    ] {
        let event = event_with(config(ContentMode::Binary), text);
        assert_eq!(event.origin(), Origin::Wrapped, "{text}");
        match event.notice() {
            Some(Notice::InvalidEvent { looks_like: "CloudEvent", reason: why }) => {
                assert!(why.contains(reason), "{text}: {why}")
            }
            other => panic!("{text}: {other:?}"),
        }
        let payload = event.encode(ContentMode::Binary);
        assert_eq!(payload.body, text.as_bytes());
        assert_eq!(payload.header("ce-id"), Some(ID));
    }
    // Plain JSON that merely mentions the name is just JSON.
    let event = event_with(config(ContentMode::Binary), r#"{"note":"\"specversion\""}"#);
    assert_eq!((event.origin(), event.notice()), (Origin::Wrapped, None));
}

const EVENT_GRID: &str = r#"{"topic":"/subscriptions/s/providers/Microsoft.Storage/storageAccounts/a","subject":"/blobServices/default/containers/c/blobs/b","eventType":"Microsoft.Storage.BlobCreated","eventTime":"2017-06-26T18:41:00.9584103Z","id":"831e1650","data":{"contentLength":524288},"dataVersion":"","metadataVersion":"1"}"#;

#[test]
fn an_event_grid_event_is_mapped_the_way_event_grid_does() {
    let payload = binary(EVENT_GRID);
    assert_eq!(payload.header("ce-id"), Some("831e1650"));
    assert_eq!(
        payload.header("ce-source"),
        Some("/subscriptions/s/providers/Microsoft.Storage/storageAccounts/a")
    );
    assert_eq!(
        payload.header("ce-type"),
        Some("Microsoft.Storage.BlobCreated")
    );
    assert_eq!(
        payload.header("ce-subject"),
        Some("/blobServices/default/containers/c/blobs/b")
    );
    assert_eq!(
        payload.header("ce-time"),
        Some("2017-06-26T18:41:00.9584103Z")
    );
    assert_eq!(payload.header("ce-dataversion"), Some(""));
    assert_eq!(payload.header("ce-metadataversion"), Some("1"));
    assert_eq!(payload.header("ce-queuemessageid"), Some(ID));
    assert_eq!(payload.header("content-type"), Some(JSON));
    assert_eq!(payload.body, br#"{"contentLength":524288}"#);
    let body = structured(EVENT_GRID).body;
    assert_eq!(
        member(&body, "data").as_deref(),
        Some(r#"{"contentLength":524288}"#)
    );
    assert_eq!(member(&body, "eventType"), None);

    let wrap = EventConfig {
        event_grid: EventGridSchema::Wrap,
        ..config(ContentMode::Binary)
    };
    let payload = event_with(wrap, EVENT_GRID).encode(ContentMode::Binary);
    assert_eq!(payload.header("ce-id"), Some(ID));
    assert_eq!(payload.body, EVENT_GRID.as_bytes());

    // An unknown member: not the Event Grid schema, just JSON.
    let other = EVENT_GRID.replacen("\"topic\"", "\"extra\":1,\"topic\"", 1);
    let event = event_with(config(ContentMode::Binary), &other);
    assert_eq!((event.origin(), event.notice()), (Origin::Wrapped, None));
    // Event Grid's shape with a bad time: wrapped, with the reason.
    let bad = EVENT_GRID.replace("2017-06-26T18:41:00.9584103Z", "Monday");
    let event = event_with(config(ContentMode::Binary), &bad);
    assert!(matches!(
        event.notice(),
        Some(Notice::InvalidEvent {
            looks_like: "Event Grid event",
            ..
        })
    ));
}

#[test]
fn passthrough_off_wraps_everything() {
    let off = EventConfig {
        passthrough: false,
        ..config(ContentMode::Binary)
    };
    for text in [CLOUD_EVENT, EVENT_GRID] {
        let event = event_with(off.clone(), text);
        assert_eq!((event.origin(), event.notice()), (Origin::Wrapped, None));
        assert_eq!(event.encode(ContentMode::Binary).body, text.as_bytes());
    }
}

#[test]
fn base64_of_an_event_without_decode_base64_gets_one_hint() {
    let mapper = mapper_for(config(ContentMode::Binary));
    let encoded = base64::engine::general_purpose::STANDARD.encode(EVENT_GRID);
    let first = mapper.to_event(&message(&encoded)).expect("event");
    assert_eq!(
        first.notice(),
        Some(&Notice::Base64Event {
            looks_like: "Event Grid event"
        })
    );
    assert_eq!(first.encode(ContentMode::Binary).body, encoded.as_bytes());
    let second = mapper.to_event(&message(&encoded)).expect("event");
    assert_eq!(second.notice(), None, "said once");
    let plain = base64::engine::general_purpose::STANDARD.encode(r#"{"a":1}"#);
    let mapper = mapper_for(config(ContentMode::Binary));
    assert_eq!(
        mapper.to_event(&message(&plain)).expect("event").notice(),
        None
    );
}

#[test]
fn structured_output_is_a_valid_cloud_event_for_the_sdk() {
    for text in [
        r#"{"n":1}"#,
        "text",
        CLOUD_EVENT.replace("1e400", "1").as_str(),
        EVENT_GRID,
    ] {
        let body = structured(text).body;
        let event: cloudevents::Event =
            serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{text}: {e}"));
        use cloudevents::AttributesReader;
        assert!(!event.id().is_empty());
    }
}

#[test]
fn header_values_are_percent_encoded() {
    assert_eq!(percent_encode_header("plain-value_1.0"), "plain-value_1.0");
    assert_eq!(percent_encode_header("a b"), "a%20b");
    assert_eq!(percent_encode_header("\"100%\""), "%22100%25%22");
    assert_eq!(percent_encode_header("€"), "%E2%82%AC");
    assert_eq!(percent_encode_header("a\r\nb\0"), "a%0D%0Ab%00");
    let mapper = mapper_for(EventConfig {
        source: Some("/queues/café orders".into()),
        ..config(ContentMode::Binary)
    });
    let payload = mapper
        .to_event(&message("x"))
        .expect("event")
        .encode(ContentMode::Binary);
    assert_eq!(
        payload.header("ce-source"),
        Some("/queues/caf%C3%A9%20orders")
    );
}

/// The byte-at-a-time depth scan `text::json_depth` replaced: the oracle it must agree with.
fn json_depth_byte_by_byte(text: &str) -> Option<usize> {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for byte in text.bytes() {
        if in_string {
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.checked_sub(1)?,
            _ => {}
        }
    }
    Some(deepest)
}

#[test]
fn the_depth_scan_handles_escapes_at_the_very_end() {
    use super::text::json_depth;
    for text in [
        "\"\\",
        "\"\\\"",
        "[\"\\\\\"]",
        "{\"a\":\"\\\"]\"}",
        "[[\"",
        "\"]",
        "]",
    ] {
        assert_eq!(json_depth(text), json_depth_byte_by_byte(text), "{text:?}");
    }
}

proptest::proptest! {
    #[test]
    fn the_depth_scan_agrees_with_a_byte_by_byte_scan(
        text in "[\\[\\]{}\"\\\\ax:,é]{0,64}",
    ) {
        proptest::prop_assert_eq!(super::text::json_depth(&text), json_depth_byte_by_byte(&text));
    }

    #[test]
    fn the_substring_search_agrees_with_comparing_every_window(
        haystack in proptest::collection::vec(proptest::sample::select(b"\"specvrion".to_vec()), 0..48),
        needle in proptest::sample::select(vec![&b"\"specversion\""[..], b"\"eventType\"", b"s", b"\"s"]),
    ) {
        let slow = haystack.windows(needle.len()).any(|window| window == needle);
        proptest::prop_assert_eq!(super::text::contains(&haystack, needle), slow);
    }
}
