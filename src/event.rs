//! From queue message to CloudEvent to HTTP request parts.
//!
//! [`EventMapper::to_event`] decides what a message *is*: a CloudEvent already (Event Grid and
//! other producers write structured events into queues; those are forwarded, not wrapped
//! twice), JSON, text or raw bytes. It uses `cloudevents-sdk`'s event model, so the result is a
//! spec-valid CloudEvent 1.0.
//!
//! [`encode`] lays the event out as the CloudEvents HTTP binding 1.0.2 asks. The SDK's own
//! HTTP binding puts attribute values into headers verbatim, which fails on non-ASCII text; the
//! binding requires percent-encoding, so binary mode is serialized here with the SDK's
//! `BinarySerializer` visitor and [`percent_encode_header`].
//!
//! The pop receipt never enters an event: it is a bearer token for the message.

use crate::config::{ContentMode, EventConfig};
use crate::queue::ReceivedMessage;
use base64::Engine;
use cloudevents::event::{Data, ExtensionValue, SpecVersion};
use cloudevents::message::{
    BinaryDeserializer, BinarySerializer, MessageAttributeValue, Result as MessageResult,
};
use cloudevents::{AttributesReader, Event, EventBuilder, EventBuilderV10};
use time::OffsetDateTime;

/// The content type of JSON data.
pub const JSON: &str = "application/json";
/// The content type of UTF-8 text that is not JSON.
pub const TEXT: &str = "text/plain; charset=utf-8";
/// The content type of anything else.
pub const OCTET_STREAM: &str = "application/octet-stream";
/// The structured-mode content type.
pub const STRUCTURED: &str = "application/cloudevents+json";

/// Why a message could not become an event. Such a message will never succeed as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    #[error("the message text is not valid base64 (DECODE_BASE64=true)")]
    InvalidBase64,
    #[error("the CloudEvent could not be built: {0}")]
    Invalid(String),
}

/// The HTTP request parts of one event: headers and body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpPayload {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpPayload {
    /// The value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Turns received messages into CloudEvents, per the event configuration.
#[derive(Debug, Clone)]
pub struct EventMapper {
    config: EventConfig,
}

impl EventMapper {
    pub fn new(config: EventConfig) -> Self {
        Self { config }
    }

    /// The content mode events are sent in.
    pub fn mode(&self) -> ContentMode {
        self.config.mode
    }

    /// The CloudEvent for a message.
    pub fn to_event(&self, message: &ReceivedMessage) -> Result<Event, MappingError> {
        let bytes = self.payload(message)?;
        let mut event = match existing_cloud_event(&bytes) {
            Some(event) => event,
            None => self.wrap(message, bytes)?,
        };
        event.set_extension(
            "dequeuecount",
            ExtensionValue::Integer(i64::from(message.dequeue_count)),
        );
        if let Some(expiry) = message.expiration_time.and_then(rfc3339) {
            event.set_extension("expirytime", ExtensionValue::String(expiry));
        }
        for (name, value) in &self.config.overrides {
            event.set_extension(name, ExtensionValue::String(value.clone()));
        }
        Ok(event)
    }

    /// The message's bytes, base64-decoded when configured.
    fn payload(&self, message: &ReceivedMessage) -> Result<Vec<u8>, MappingError> {
        if !self.config.decode_base64 {
            return Ok(message.text.as_bytes().to_vec());
        }
        // Producers differ on padding and on the URL-safe alphabet; accept them all rather
        // than poison a message over a '='.
        let text = message.text.trim();
        let engines = [
            base64::engine::general_purpose::STANDARD,
            base64::engine::general_purpose::STANDARD_NO_PAD,
            base64::engine::general_purpose::URL_SAFE,
            base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ];
        engines
            .iter()
            .find_map(|engine| engine.decode(text).ok())
            .ok_or(MappingError::InvalidBase64)
    }

    /// A new event around the payload. The data representation depends on the mode: binary
    /// mode forwards the exact bytes (a JSON body reaches the endpoint byte for byte, so body
    /// signatures and number formatting survive), structured mode embeds JSON as a JSON value.
    fn wrap(&self, message: &ReceivedMessage, bytes: Vec<u8>) -> Result<Event, MappingError> {
        let mut builder = EventBuilderV10::new()
            .id(message.id.clone())
            .source(self.config.source.clone())
            .ty(self.config.ce_type.clone());
        if let Some(inserted) = message.insertion_time.and_then(to_chrono) {
            builder = builder.time(inserted);
        }
        let builder = match (String::from_utf8(bytes), self.config.mode) {
            // Binary mode only needs to know whether the text is JSON: check it without
            // building a document (a `Value` allocates every string, key and map of it).
            (Ok(text), ContentMode::Binary) => {
                match serde_json::from_str::<serde::de::IgnoredAny>(&text) {
                    Ok(_) => builder.data(JSON, Data::Binary(text.into_bytes())),
                    Err(_) => builder.data(TEXT, Data::String(text)),
                }
            }
            (Ok(text), ContentMode::Structured) => {
                match serde_json::from_str::<serde_json::Value>(&text) {
                    Ok(json) => builder.data(JSON, Data::Json(json)),
                    Err(_) => builder.data(TEXT, Data::String(text)),
                }
            }
            (Err(not_utf8), _) => builder.data(OCTET_STREAM, Data::Binary(not_utf8.into_bytes())),
        };
        builder
            .build()
            .map_err(|e| MappingError::Invalid(e.to_string()))
    }
}

/// A structured CloudEvent 1.0 (JSON with `specversion`, `id`, `source` and `type`), if the
/// payload is one.
fn existing_cloud_event(bytes: &[u8]) -> Option<Event> {
    // Cheap pre-check: most payloads are not CloudEvents, and a full parse of every large
    // JSON message twice would be waste.
    let head = &bytes[..bytes.len().min(64 * 1024)];
    if !head.windows(13).any(|w| w == b"\"specversion\"") {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let object = value.as_object()?;
    let is_event = object.get("specversion")?.as_str()? == "1.0"
        && ["id", "source", "type"].iter().all(|key| {
            object
                .get(*key)
                .and_then(|v| v.as_str())
                .is_some_and(|s| !s.is_empty())
        });
    if !is_event {
        return None;
    }
    serde_json::from_value::<Event>(value).ok()
}

fn to_chrono(time: OffsetDateTime) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp(time.unix_timestamp(), time.nanosecond())
}

fn rfc3339(time: OffsetDateTime) -> Option<String> {
    time.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// The HTTP request parts for `event` in `mode`.
pub fn encode(event: Event, mode: ContentMode) -> Result<HttpPayload, MappingError> {
    match mode {
        ContentMode::Structured => {
            let body =
                serde_json::to_vec(&event).map_err(|e| MappingError::Invalid(e.to_string()))?;
            Ok(HttpPayload {
                headers: vec![("content-type".into(), STRUCTURED.into())],
                body,
            })
        }
        ContentMode::Binary => {
            let implied_json =
                event.datacontenttype().is_none() && matches!(event.data(), Some(Data::Json(_)));
            let mut payload = event
                .deserialize_binary(BinaryHeaders::default())
                .map_err(|e| MappingError::Invalid(e.to_string()))?;
            if implied_json {
                payload.headers.push(("content-type".into(), JSON.into()));
            }
            Ok(payload)
        }
    }
}

/// The CloudEvents SDK's binary-mode visitor, collecting percent-encoded headers.
#[derive(Default)]
struct BinaryHeaders(HttpPayload);

impl BinaryHeaders {
    fn push(mut self, name: &str, value: &MessageAttributeValue) -> Self {
        let value = value.to_string();
        let entry = if name == "datacontenttype" {
            // Binding rule: the data content type is the Content-Type, not a ce- header.
            ("content-type".to_string(), value)
        } else {
            let mut header = String::with_capacity(3 + name.len());
            header.push_str("ce-");
            header.push_str(name);
            (header, percent_encoded(value))
        };
        self.0.headers.push(entry);
        self
    }
}

impl BinarySerializer<HttpPayload> for BinaryHeaders {
    fn set_spec_version(mut self, spec_version: SpecVersion) -> MessageResult<Self> {
        self.0
            .headers
            .push(("ce-specversion".into(), spec_version.to_string()));
        Ok(self)
    }

    fn set_attribute(self, name: &str, value: MessageAttributeValue) -> MessageResult<Self> {
        Ok(self.push(name, &value))
    }

    fn set_extension(self, name: &str, value: MessageAttributeValue) -> MessageResult<Self> {
        Ok(self.push(name, &value))
    }

    fn end_with_data(mut self, bytes: Vec<u8>) -> MessageResult<HttpPayload> {
        self.0.body = bytes;
        Ok(self.0)
    }

    fn end(self) -> MessageResult<HttpPayload> {
        Ok(self.0)
    }
}

/// Percent-encodes a `ce-` header value as the HTTP binding (3.1.3.2) requires: space, `"`,
/// `%` and everything outside printable ASCII, byte by byte in UTF-8.
pub fn percent_encode_header(value: &str) -> String {
    percent_encoded(value.to_string())
}

/// [`percent_encode_header`] on an owned value, which is returned as it is when nothing needs
/// escaping (the usual case: ids, types, URLs, timestamps), so each header costs no extra copy.
fn percent_encoded(value: String) -> String {
    fn safe(byte: u8) -> bool {
        (0x21..=0x7e).contains(&byte) && byte != b'"' && byte != b'%'
    }
    if value.bytes().all(safe) {
        return value;
    }
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(value.len() + 16);
    for byte in value.bytes() {
        if safe(byte) {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn mapper(mode: ContentMode, decode_base64: bool) -> EventMapper {
        EventMapper::new(EventConfig {
            ce_type: "com.microsoft.azure.queuestorage".into(),
            source: "http://127.0.0.1:10001/devstoreaccount1/orders".into(),
            mode,
            overrides: BTreeMap::from([("team".to_string(), "payments".to_string())]),
            decode_base64,
        })
    }

    fn message(text: &str) -> ReceivedMessage {
        ReceivedMessage {
            id: "6b4f7d5c-0000-4000-8000-000000000001".into(),
            pop_receipt: "RECEIPT".into(),
            text: text.into(),
            dequeue_count: 3,
            insertion_time: Some(OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("time")),
            expiration_time: Some(
                OffsetDateTime::from_unix_timestamp(1_700_604_800).expect("time"),
            ),
        }
    }

    fn binary(text: &str) -> HttpPayload {
        let m = mapper(ContentMode::Binary, false);
        encode(
            m.to_event(&message(text)).expect("event"),
            ContentMode::Binary,
        )
        .expect("encode")
    }

    #[test]
    fn json_is_forwarded_byte_for_byte_in_binary_mode() {
        let text = r#"{"b": 1.50, "a": [1,2]}"#;
        let payload = binary(text);
        assert_eq!(payload.body, text.as_bytes());
        assert_eq!(payload.header("content-type"), Some(JSON));
        assert_eq!(payload.header("ce-specversion"), Some("1.0"));
        assert_eq!(
            payload.header("ce-id"),
            Some("6b4f7d5c-0000-4000-8000-000000000001")
        );
        assert_eq!(
            payload.header("ce-type"),
            Some("com.microsoft.azure.queuestorage")
        );
        assert_eq!(payload.header("ce-dequeuecount"), Some("3"));
        assert_eq!(payload.header("ce-team"), Some("payments"));
        assert!(payload
            .header("ce-time")
            .is_some_and(|t| t.starts_with("2023-11-14T22:13:20")));
        assert!(payload
            .header("ce-expirytime")
            .is_some_and(|t| t.starts_with("2023-11-21")));
        assert!(payload.header("ce-datacontenttype").is_none());
        assert!(payload.headers.iter().all(|(_, v)| !v.contains("RECEIPT")));
    }

    #[test]
    fn text_and_bytes_get_their_content_types() {
        assert_eq!(binary("hello world").header("content-type"), Some(TEXT));
        let m = mapper(ContentMode::Binary, true);
        let raw = [0xffu8, 0x00, 0x80];
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
        let payload = encode(
            m.to_event(&message(&b64)).expect("event"),
            ContentMode::Binary,
        )
        .expect("encode");
        assert_eq!(payload.header("content-type"), Some(OCTET_STREAM));
        assert_eq!(payload.body, raw);
    }

    #[test]
    fn base64_is_decoded_in_any_common_alphabet_and_garbage_is_refused() {
        let m = mapper(ContentMode::Binary, true);
        for text in ["aGk/Pz8+", "aGk_Pz8-", "aGk", "aGk="] {
            let event = m.to_event(&message(text)).expect("decodes");
            assert!(
                matches!(event.data(), Some(Data::String(s)) if s.starts_with("hi")),
                "{text}"
            );
        }
        assert_eq!(
            m.to_event(&message("not base64!!")).err(),
            Some(MappingError::InvalidBase64)
        );
    }

    #[test]
    fn structured_mode_embeds_json_and_base64s_bytes() {
        let m = mapper(ContentMode::Structured, false);
        let payload = encode(
            m.to_event(&message(r#"{"n":1}"#)).expect("event"),
            ContentMode::Structured,
        )
        .expect("encode");
        assert_eq!(payload.header("content-type"), Some(STRUCTURED));
        let doc: serde_json::Value = serde_json::from_slice(&payload.body).expect("json");
        assert_eq!(doc["data"], serde_json::json!({"n": 1}));
        assert_eq!(doc["datacontenttype"], JSON);
        assert_eq!(doc["dequeuecount"], 3);
        assert_eq!(doc["id"], "6b4f7d5c-0000-4000-8000-000000000001");

        let m = mapper(ContentMode::Structured, true);
        let payload = encode(
            m.to_event(&message("/wCA")).expect("event"),
            ContentMode::Structured,
        )
        .expect("encode");
        let doc: serde_json::Value = serde_json::from_slice(&payload.body).expect("json");
        assert_eq!(doc["data_base64"], "/wCA");
        assert_eq!(doc["datacontenttype"], OCTET_STREAM);
    }

    #[test]
    fn an_existing_cloud_event_is_forwarded_not_wrapped() {
        let text = r#"{"specversion":"1.0","id":"evt-1","source":"/subscriptions/x/storage","type":"Microsoft.Storage.BlobCreated","time":"2024-01-01T00:00:00Z","datacontenttype":"application/json","data":{"url":"https://x/y"}}"#;
        let payload = binary(text);
        assert_eq!(payload.header("ce-id"), Some("evt-1"));
        assert_eq!(
            payload.header("ce-type"),
            Some("Microsoft.Storage.BlobCreated")
        );
        assert_eq!(
            payload.header("ce-source"),
            Some("/subscriptions/x/storage")
        );
        assert_eq!(payload.header("ce-dequeuecount"), Some("3"));
        assert_eq!(payload.header("content-type"), Some(JSON));
        let data: serde_json::Value = serde_json::from_slice(&payload.body).expect("json");
        assert_eq!(data, serde_json::json!({"url": "https://x/y"}));

        // A JSON object that only looks similar is wrapped.
        let payload = binary(r#"{"specversion":"1.0","id":"x"}"#);
        assert_eq!(
            payload.header("ce-id"),
            Some("6b4f7d5c-0000-4000-8000-000000000001")
        );
    }

    #[test]
    fn header_values_are_percent_encoded() {
        assert_eq!(percent_encode_header("plain-value_1.0"), "plain-value_1.0");
        assert_eq!(percent_encode_header("a b"), "a%20b");
        assert_eq!(percent_encode_header("\"100%\""), "%22100%25%22");
        assert_eq!(percent_encode_header("€"), "%E2%82%AC");
        let m = EventMapper::new(EventConfig {
            source: "/queues/café orders".into(),
            ..mapper(ContentMode::Binary, false).config
        });
        let payload = encode(
            m.to_event(&message("x")).expect("event"),
            ContentMode::Binary,
        )
        .expect("encode");
        assert_eq!(
            payload.header("ce-source"),
            Some("/queues/caf%C3%A9%20orders")
        );
    }
}
