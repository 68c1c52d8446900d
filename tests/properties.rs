//! Property-based tests of every parser that reads outside input, through the library's public
//! API: connection strings, durations, `K_CE_OVERRIDES`, `Retry-After`, and message text to
//! event. (Shared Key canonicalization is tested the same way inside `src/auth/shared_key.rs`,
//! where its functions live.) Each property runs proptest's default 256 cases; a failure prints
//! the smallest input that breaks it.

use azure_queue_sidecar::testing::connection_string;
use azure_queue_sidecar::testing::parse_retry_after;
use azure_queue_sidecar::testing::ReceivedMessage;
use azure_queue_sidecar::testing::{
    format_duration, parse_duration, BatchConfig, ContentMode, EventConfig, EventGridSchema,
};
use azure_queue_sidecar::testing::{is_json, EventMapper, HttpPayload, Origin, JSON, STRUCTURED};
use base64::Engine;
use proptest::prelude::*;
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::time::Duration;
use time::OffsetDateTime;

// ---------------------------------------------------------------------------------------------
// JSON text generators

/// RFC 8259 number text, including what f64 cannot hold (30-digit integers, 1e400, -0).
fn json_number() -> impl Strategy<Value = String> {
    "-?(0|[1-9][0-9]{0,30})(\\.[0-9]{1,30})?([eE][+-]?[0-9]{1,4})?"
}

fn json_string_text() -> impl Strategy<Value = String> {
    any::<String>().prop_map(|s| serde_json::to_string(&s).expect("string"))
}

/// Whitespace JSON allows between tokens.
fn ws() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just(""), Just(" "), Just("\n\t "), Just("\r\n")]
}

/// Any JSON value as text, with odd spacing and numbers no float can hold.
fn json_text() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        json_number(),
        json_string_text(),
        Just("true".to_string()),
        Just("false".to_string()),
        Just("null".to_string()),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            (prop::collection::vec((inner.clone(), ws()), 0..6)).prop_map(|items| {
                let items: Vec<String> = items
                    .into_iter()
                    .map(|(v, w)| format!("{w}{v}{w}"))
                    .collect();
                format!("[{}]", items.join(","))
            }),
            prop::collection::vec((json_string_text(), inner, ws()), 0..6).prop_map(|members| {
                let members: Vec<String> = members
                    .into_iter()
                    .map(|(k, v, w)| format!("{w}{k}{w}:{w}{v}"))
                    .collect();
                format!("{{{}}}", members.join(","))
            }),
        ]
    })
}

/// Attribute names a producer might write: valid ones, context attributes, and broken ones.
fn attribute_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9]{1,12}",
        prop::sample::select(vec![
            "specversion",
            "id",
            "source",
            "type",
            "time",
            "subject",
            "dataschema",
            "datacontenttype",
            "data",
            "data_base64",
            "dequeuecount",
            "queuemessageid",
            "expirytime",
            "team",
        ])
        .prop_map(str::to_string),
        "[A-Za-z0-9 _\\-\r\n\u{0}é]{1,8}",
    ]
}

/// Attribute values: strings (with bytes no header can carry), times, integers, others.
fn attribute_value() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => json_string_text(),
        1 => Just("\"2026-03-04T05:06:07.1234567+02:00\"".to_string()),
        1 => Just("\"text/plain\\r\\nx: y\"".to_string()),
        1 => Just("\"/wCA\"".to_string()),
        1 => (-3_000_000_000i64..3_000_000_000).prop_map(|n| n.to_string()),
        1 => json_text(),
    ]
}

/// Objects that look like CloudEvents: valid, nearly valid and broken ones.
fn cloud_event_text() -> impl Strategy<Value = String> {
    (
        prop_oneof![3 => Just("\"1.0\"".to_string()), 1 => attribute_value()],
        prop_oneof![3 => "\"[a-z0-9-]{1,12}\"", 1 => attribute_value()],
        prop::collection::vec((attribute_name(), attribute_value()), 0..6),
        prop_oneof![
            Just(None),
            json_text().prop_map(|d| Some(("data", d))),
            attribute_value().prop_map(|d| Some(("data_base64", d))),
        ],
    )
        .prop_map(|(specversion, id, extras, data)| {
            let mut members = vec![
                format!("\"specversion\":{specversion}"),
                format!("\"id\":{id}"),
                "\"source\":\"/producer\"".to_string(),
                "\"type\":\"com.example.t\"".to_string(),
            ];
            for (name, value) in extras {
                members.push(format!(
                    "{}:{value}",
                    serde_json::to_string(&name).expect("name")
                ));
            }
            if let Some((name, value)) = data {
                members.push(format!("\"{name}\":{value}"));
            }
            format!("{{{}}}", members.join(","))
        })
}

/// Objects in the Event Grid schema, some of them broken.
fn event_grid_text() -> impl Strategy<Value = String> {
    (
        prop_oneof![3 => "\"[a-z0-9-]{1,12}\"", 1 => attribute_value()],
        prop_oneof![3 => Just("\"2017-06-26T18:41:00.9584103Z\"".to_string()), 1 => attribute_value()],
        prop_oneof![Just(None), json_text().prop_map(Some)],
        prop::option::of(attribute_value()),
    )
        .prop_map(|(id, time, data, version)| {
            let mut members = vec![
                format!("\"id\":{id}"),
                "\"topic\":\"/subscriptions/s\"".to_string(),
                "\"subject\":\"/a b\"".to_string(),
                "\"eventType\":\"Microsoft.Storage.BlobCreated\"".to_string(),
                format!("\"eventTime\":{time}"),
            ];
            if let Some(data) = data {
                members.push(format!("\"data\":{data}"));
            }
            if let Some(version) = version {
                members.push(format!("\"dataVersion\":{version}"));
            }
            format!("{{{}}}", members.join(","))
        })
}

/// Message text of every kind.
fn message_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        json_text(),
        cloud_event_text(),
        event_grid_text(),
        Just("%".repeat(4096)),
    ]
}

// ---------------------------------------------------------------------------------------------
// Message → event

/// The mapper for `config`, with the `source` it sets.
fn mapper_for(config: EventConfig) -> EventMapper {
    let source = config.source.clone().unwrap_or_default();
    EventMapper::new(config, source)
}

fn event_config(mode: ContentMode, passthrough: bool, decode_base64: bool) -> EventConfig {
    EventConfig {
        ce_type: "com.microsoft.azure.queuestorage".into(),
        source: Some("http://127.0.0.1:10001/devstoreaccount1/orders".into()),
        mode,
        batch: BatchConfig {
            max_events: 32,
            max_bytes: 1 << 20,
        },
        overrides: BTreeMap::from([("team".to_string(), "payments".to_string())]),
        decode_base64,
        passthrough,
        event_grid: EventGridSchema::Map,
    }
}

fn message(text: String) -> ReceivedMessage {
    ReceivedMessage {
        id: "6b4f7d5c-0000-4000-8000-000000000001".into(),
        pop_receipt: "RECEIPT".into(),
        text,
        dequeue_count: 2,
        insertion_time: Some(OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("t")),
        expiration_time: Some(OffsetDateTime::from_unix_timestamp(1_700_604_800).expect("t")),
    }
}

/// What reqwest checks when it builds the request: every header name and value is valid.
fn assert_valid_headers(payload: &HttpPayload) {
    for (name, value) in &payload.headers {
        assert!(
            reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_ok(),
            "header name {name:?}"
        );
        assert!(
            reqwest::header::HeaderValue::from_str(value).is_ok(),
            "value of {name}: {value:?}"
        );
    }
    for name in [
        "ce-id",
        "ce-source",
        "ce-type",
        "ce-specversion",
        "ce-dequeuecount",
    ] {
        let count = payload.headers.iter().filter(|(n, _)| n == name).count();
        assert_eq!(count, 1, "{name} once");
    }
    let message_ids = payload
        .headers
        .iter()
        .filter(|(n, _)| n == "ce-queuemessageid")
        .count();
    assert!(message_ids <= 1, "ce-queuemessageid at most once");
    let content_types = payload
        .headers
        .iter()
        .filter(|(n, _)| n == "content-type")
        .count();
    assert!(content_types <= 1);
    assert!(payload.header("ce-datacontenttype").is_none());
}

/// The members of a JSON object with their raw text; panics on invalid JSON or a non-object.
fn members(body: &[u8]) -> Vec<(String, String)> {
    let map: Vec<(String, Box<RawValue>)> = {
        struct Members(Vec<(String, Box<RawValue>)>);
        impl<'de> serde::Deserialize<'de> for Members {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> serde::de::Visitor<'de> for V {
                    type Value = Members;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str("object")
                    }
                    fn visit_map<A: serde::de::MapAccess<'de>>(
                        self,
                        mut map: A,
                    ) -> Result<Members, A::Error> {
                        let mut out = Vec::new();
                        while let Some(entry) = map.next_entry()? {
                            out.push(entry);
                        }
                        Ok(Members(out))
                    }
                }
                d.deserialize_map(V)
            }
        }
        serde_json::from_slice::<Members>(body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)))
            .0
    };
    map.into_iter()
        .map(|(k, v)| (k, v.get().to_string()))
        .collect()
}

fn member<'a>(members: &'a [(String, String)], name: &str) -> Option<&'a str> {
    members
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Checks one message in both modes; `bytes` is what the message carries after decoding.
fn check_message(text: String, bytes: &[u8], passthrough: bool, decode_base64: bool) {
    for mode in [ContentMode::Binary, ContentMode::Structured] {
        let mapper = mapper_for(event_config(mode, passthrough, decode_base64));
        let event = mapper.to_event(&message(text.clone())).expect("maps");
        let origin = event.origin();
        if !passthrough {
            assert_eq!(origin, Origin::Wrapped);
        }
        // A batched-mode entry is exactly the structured-mode document.
        let batched = event.clone().encode(ContentMode::Batched).body;
        let structured = event.clone().encode(ContentMode::Structured).body;
        assert_eq!(batched, [b"[", &structured[..], b"]"].concat());
        let payload = event.encode(mode);
        match mode {
            ContentMode::Batched => unreachable!("checked against structured mode above"),
            ContentMode::Binary => {
                assert_valid_headers(&payload);
                if origin == Origin::Wrapped {
                    assert_eq!(payload.body, bytes, "the body is the message");
                }
            }
            ContentMode::Structured => {
                assert_eq!(payload.header("content-type"), Some(STRUCTURED));
                let members = members(&payload.body);
                let mut names: Vec<&str> = members.iter().map(|(k, _)| k.as_str()).collect();
                names.sort_unstable();
                let all = names.len();
                names.dedup();
                assert_eq!(names.len(), all, "no duplicate member");
                if origin == Origin::Wrapped {
                    check_wrapped_data(&members, bytes);
                }
                // The CloudEvents SDK accepts the envelope. Its model cannot hold some data
                // (e.g. 1e400), so the data member is left out of this check, and it insists on
                // an absolute URL in `dataschema`, where the sidecar accepts any non-empty
                // URI reference: Event Grid itself writes `"dataschema":"#"`.
                let absolute = |v: &str| {
                    serde_json::from_str::<String>(v).is_ok_and(|s| url::Url::parse(&s).is_ok())
                };
                let attributes: serde_json::Map<String, serde_json::Value> = members
                    .iter()
                    .filter(|(k, _)| k != "data" && k != "data_base64")
                    .filter(|(k, v)| k != "dataschema" || absolute(v))
                    .map(|(k, v)| {
                        let value = serde_json::from_str(v).unwrap_or(serde_json::Value::Null);
                        (k.clone(), value)
                    })
                    .collect();
                let sdk: Result<cloudevents::Event, _> =
                    serde_json::from_value(serde_json::Value::Object(attributes));
                assert!(
                    sdk.is_ok(),
                    "{:?}: {}",
                    sdk.err(),
                    String::from_utf8_lossy(&payload.body)
                );
            }
        }
    }
}

/// A wrapped message's data: JSON embedded as its own text, text as a string, bytes as base64.
fn check_wrapped_data(members: &[(String, String)], bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) if is_json(text) => {
            let json_ws: &[char] = &[' ', '\t', '\n', '\r'];
            assert_eq!(member(members, "data"), Some(text.trim_matches(json_ws)));
            assert_eq!(
                member(members, "datacontenttype"),
                Some(&*serde_json::to_string(JSON).expect("s"))
            );
        }
        Ok(text) => {
            let data: String =
                serde_json::from_str(member(members, "data").expect("data")).expect("a string");
            assert_eq!(data, text);
        }
        Err(_) => {
            let encoded: String =
                serde_json::from_str(member(members, "data_base64").expect("data_base64"))
                    .expect("a string");
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .expect("base64");
            assert_eq!(decoded, bytes);
        }
    }
}

proptest! {
    #[test]
    fn any_message_text_maps_to_valid_requests(text in message_text(), passthrough in any::<bool>()) {
        let bytes = text.clone().into_bytes();
        check_message(text, &bytes, passthrough, false);
    }

    #[test]
    fn any_bytes_map_to_valid_requests(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let text = base64::engine::general_purpose::STANDARD.encode(&bytes);
        check_message(text, &bytes, true, true);
    }

    #[test]
    fn a_valid_cloud_event_keeps_every_member_as_written(text in cloud_event_text()) {
        let mapper = mapper_for(event_config(ContentMode::Structured, true, false));
        let event = mapper.to_event(&message(text.clone())).expect("maps");
        if event.origin() == Origin::CloudEvent {
            let out = members(&event.encode(ContentMode::Structured).body);
            let ours = ["team", "dequeuecount", "queuemessageid", "expirytime"];
            for (name, raw) in members(text.as_bytes()) {
                if !ours.contains(&name.as_str()) {
                    prop_assert_eq!(member(&out, &name), Some(raw.as_str()), "{}", name);
                }
            }
        }
    }

    #[test]
    fn json_detection_accepts_exactly_rfc_8259_json(text in json_text()) {
        prop_assert!(is_json(&text), "{}", text);
        let broken = format!("{},", text);
        prop_assert!(!is_json(&broken));
    }
}

// ---------------------------------------------------------------------------------------------
// Connection strings

const SECRET_KEY_BYTES: &[u8] = b"0123456789abcdef-secret-key-bytes";

proptest! {
    #[test]
    fn connection_string_errors_never_quote_a_secret(
        noise in prop::collection::vec("[A-Za-z]{0,8}=?[ -~]{0,12}", 0..5),
        position in 0usize..6,
        secret in "[A-Za-z0-9]{16,24}",
        as_sas in any::<bool>(),
    ) {
        let credential = if as_sas {
            format!("SharedAccessSignature=sv=2022-11-02&sp=r&sig={secret}")
        } else {
            format!("AccountKey={secret}")
        };
        let mut segments = noise;
        segments.insert(position.min(segments.len()), credential);
        let text = segments.join(";");
        match connection_string::parse(&text) {
            Ok(_) => {}
            Err(error) => {
                let message = error.to_string();
                prop_assert!(!message.contains(&secret), "{}", message);
                prop_assert!(!message.contains('\n'));
            }
        }
    }

    #[test]
    fn any_connection_string_text_is_parsed_or_refused_without_panic(text in any::<String>()) {
        let _ = connection_string::parse(&text);
    }

    #[test]
    fn valid_connection_strings_parse_in_any_order_case_and_spacing(
        account in "[a-z0-9]{3,24}",
        key_len in 16usize..64,
        https in any::<bool>(),
        suffix in prop::sample::select(vec!["core.windows.net", "core.chinacloudapi.cn", "core.usgovcloudapi.net"]),
        order in Just(vec![0usize, 1, 2, 3]).prop_shuffle(),
        upper in prop::collection::vec(any::<bool>(), 4),
        pad in prop::sample::select(vec!["", " ", "  "]),
        trailing in any::<bool>(),
    ) {
        let key = base64::engine::general_purpose::STANDARD.encode(&SECRET_KEY_BYTES.repeat(3)[..key_len]);
        let protocol = if https { "https" } else { "http" };
        let settings = [
            ("DefaultEndpointsProtocol", protocol.to_string()),
            ("AccountName", account.clone()),
            ("AccountKey", key.clone()),
            ("EndpointSuffix", suffix.to_string()),
        ];
        let segments: Vec<String> = order
            .iter()
            .map(|&i| {
                let (name, value) = &settings[i];
                let name = if upper[i] { name.to_uppercase() } else { name.to_string() };
                format!("{pad}{name}{pad}={pad}{value}{pad}")
            })
            .collect();
        let mut text = segments.join(";");
        if trailing {
            text.push(';');
        }
        let parsed = connection_string::parse(&text).expect("valid");
        prop_assert_eq!(parsed.account_name.as_deref(), Some(account.as_str()));
        prop_assert_eq!(parsed.account_key.as_ref().map(|k| k.secret().to_string()), Some(key));
        prop_assert_eq!(
            parsed.queue_endpoint.as_str(),
            format!("{protocol}://{account}.queue.{suffix}/")
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Durations

proptest! {
    #[test]
    fn any_duration_text_is_parsed_or_refused_without_panic(text in any::<String>()) {
        let _ = parse_duration(&text);
    }

    #[test]
    fn a_number_and_a_unit_is_that_many_units(
        number in 0u64..1_000_000_000_000,
        (unit, millis) in prop::sample::select(vec![("ms", 1u64), ("s", 1_000), ("m", 60_000), ("h", 3_600_000), ("d", 86_400_000)]),
        pad in prop::sample::select(vec!["", " ", "\t"]),
    ) {
        let expected = number.checked_mul(millis).map(Duration::from_millis);
        prop_assert_eq!(parse_duration(&format!("{pad}{number}{unit}{pad}")), expected);
        prop_assert_eq!(parse_duration(&number.to_string()), None, "no unit, no duration");
    }

    #[test]
    fn formatted_durations_parse_back(millis in 0u64..(8 * 86_400_000)) {
        let duration = Duration::from_millis(millis);
        prop_assert_eq!(parse_duration(&format_duration(duration)), Some(duration));
    }
}

// ---------------------------------------------------------------------------------------------
// K_CE_OVERRIDES

fn overrides_config(
    raw: String,
) -> Result<BTreeMap<String, String>, azure_queue_sidecar::testing::ConfigError> {
    azure_queue_sidecar::testing::event_overrides(raw)
}

proptest! {
    #[test]
    fn overrides_are_accepted_exactly_when_every_name_and_value_is_allowed(
        entries in prop::collection::btree_map(attribute_name(), prop_oneof![
            3 => json_string_text(),
            1 => json_text(),
        ], 0..5),
    ) {
        let members: Vec<String> = entries
            .iter()
            .map(|(k, v)| format!("{}:{v}", serde_json::to_string(k).expect("k")))
            .collect();
        let raw = format!("{{\"extensions\":{{{}}}}}", members.join(","));
        let reserved = [
            "specversion", "id", "source", "type", "datacontenttype", "dataschema", "subject",
            "time", "data", "data_base64", "dequeuecount", "queuemessageid", "expirytime",
            "dataversion", "metadataversion",
        ];
        let allowed = entries.iter().all(|(name, value)| {
            !reserved.contains(&name.as_str())
                && (1..=20).contains(&name.len())
                && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                && value.starts_with('"')
        });
        match overrides_config(raw.clone()) {
            Ok(overrides) => {
                prop_assert!(allowed, "accepted {}", raw);
                let expected: BTreeMap<String, String> = entries
                    .iter()
                    .map(|(k, v)| (k.clone(), serde_json::from_str(v).expect("string")))
                    .collect();
                prop_assert_eq!(overrides, expected);
            }
            Err(error) => {
                prop_assert!(!allowed, "refused {}: {}", raw, error);
                prop_assert_eq!(error.variable, "K_CE_OVERRIDES");
                prop_assert!(!error.to_string().contains('\n'));
            }
        }
    }

    #[test]
    fn any_overrides_text_is_accepted_or_refused_without_panic(raw in any::<String>()) {
        if let Err(error) = overrides_config(raw) {
            prop_assert!(["K_CE_OVERRIDES"].contains(&error.variable));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Retry-After

proptest! {
    #[test]
    fn any_retry_after_text_is_parsed_or_ignored_without_panic(text in any::<String>()) {
        let _ = parse_retry_after(&text, OffsetDateTime::now_utc());
    }

    #[test]
    fn delay_seconds_are_taken_as_they_are(seconds in any::<u64>(), pad in prop::sample::select(vec!["", " "])) {
        prop_assert_eq!(
            parse_retry_after(&format!("{pad}{seconds}{pad}"), OffsetDateTime::now_utc()),
            Some(Duration::from_secs(seconds))
        );
    }

    #[test]
    fn an_http_date_is_the_time_until_then_or_zero(
        now in 0i64..4_000_000_000,
        offset in -400_000_000i64..400_000_000,
    ) {
        let now = OffsetDateTime::from_unix_timestamp(now).expect("now");
        let then = OffsetDateTime::from_unix_timestamp(now.unix_timestamp() + offset);
        prop_assume!(then.is_ok());
        let then = then.expect("then");
        let format = time::format_description::parse_borrowed::<2>(
            "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT",
        )
        .expect("format");
        let text = then.format(&format).expect("format");
        prop_assert_eq!(
            parse_retry_after(&text, now),
            Some(Duration::from_secs(offset.max(0).unsigned_abs())),
            "{}", text
        );
    }
}

/// The generators reach every outcome often enough for the properties above to mean something:
/// valid CloudEvents, valid Event Grid events, and invalid ones of both kinds.
#[test]
fn generators_cover_every_origin() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut origins = BTreeMap::new();
    for strategy in [cloud_event_text().boxed(), event_grid_text().boxed()] {
        for _ in 0..256 {
            let text = strategy.new_tree(&mut runner).expect("tree").current();
            let mapper = mapper_for(event_config(ContentMode::Binary, true, false));
            let event = mapper.to_event(&message(text)).expect("maps");
            let key = format!("{:?}/{}", event.origin(), event.notice().is_some());
            *origins.entry(key).or_insert(0) += 1;
        }
    }
    for key in ["CloudEvent/false", "EventGrid/false", "Wrapped/true"] {
        assert!(
            origins.get(key).copied().unwrap_or(0) >= 20,
            "{key}: {origins:?}"
        );
    }
}
