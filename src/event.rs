//! From queue message to CloudEvent to HTTP request parts.
//!
//! [`EventMapper::to_event`] decides what a message *is*, and the endpoint gets exactly what the
//! producer wrote:
//!
//! - **a CloudEvent 1.0** in the JSON format (a JSON object with `specversion`): validated and
//!   passed through with every member as written — times, numbers, extensions and `data` keep
//!   their exact text; only the queue extensions (and `K_CE_OVERRIDES`) are added;
//! - **an Event Grid schema event** (`id`, `topic`, `subject`, `eventType`, `eventTime`, `data`,
//!   `dataVersion`, `metadataVersion`): mapped to a CloudEvent the way Event Grid itself does
//!   (`EVENTGRID_SCHEMA=map`, the default);
//! - **anything else** is wrapped: JSON (any RFC 8259 text, however big its numbers), text or
//!   bytes become the data of a new event whose `id` is the queue message id.
//!
//! A message that looks like a CloudEvent or an Event Grid event but is not a valid one (a bad
//! extension name, a required attribute of the wrong type, a content type no header can carry,
//! duplicate members) is wrapped as data too, with a [`Notice`] saying why: one deterministic
//! outcome, and nothing invalid ever reaches the HTTP request.
//!
//! [`Event::encode`] lays the event out as the CloudEvents HTTP binding 1.0.2 asks. Structured
//! mode writes the JSON envelope here rather than through a JSON model: JSON data is embedded as
//! its raw text (never parsed into floats and re-serialized), passed-through members are copied
//! byte for byte. Binary mode percent-encodes every `ce-` header value
//! ([`percent_encode_header`]), so any attribute text makes a valid header.
//!
//! The pop receipt never enters an event: it is a bearer token for the message.

use crate::config::event::is_attribute_name;
use crate::config::{ContentMode, EventConfig, EventGridSchema};
use crate::queue::ReceivedMessage;
use base64::Engine;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

/// The content type of JSON data.
pub const JSON: &str = "application/json";
/// The content type of UTF-8 text that is not JSON.
pub const TEXT: &str = "text/plain; charset=utf-8";
/// The content type of anything else.
pub const OCTET_STREAM: &str = "application/octet-stream";
/// The structured-mode content type.
pub const STRUCTURED: &str = "application/cloudevents+json";

/// The deepest nesting of arrays and objects a message may have to count as JSON. Deeper text
/// is delivered as text: a structured-mode envelope around it would exceed what common JSON
/// parsers accept (serde_json stops at 128 levels).
pub const MAX_JSON_DEPTH: usize = 128;

/// The members of an Event Grid schema event.
const EVENT_GRID_MEMBERS: [&str; 8] = [
    "id",
    "topic",
    "subject",
    "eventType",
    "eventTime",
    "data",
    "dataVersion",
    "metadataVersion",
];

/// Why a message could not become an event. Such a message will never succeed as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    #[error("the message text is not valid base64 (DECODE_BASE64=true)")]
    InvalidBase64,
}

/// Something about a message an operator should hear about; the event is delivered anyway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// The message looked like a CloudEvent or an Event Grid event but is not a valid one, so
    /// it was wrapped as data.
    InvalidEvent {
        looks_like: &'static str,
        reason: String,
    },
    /// The message text is base64 of a CloudEvent or Event Grid event, and `DECODE_BASE64` is
    /// off (Event Grid base64-encodes what it writes into a queue). Said once per process.
    Base64Event { looks_like: &'static str },
}

/// How a message became an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A new event around the message (JSON, text or bytes as its data).
    Wrapped,
    /// The message was a CloudEvent, passed through.
    CloudEvent,
    /// The message was an Event Grid schema event, mapped to a CloudEvent.
    EventGrid,
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

/// One context attribute or extension.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Attribute {
    name: Cow<'static, str>,
    value: AttributeValue,
}

/// An attribute's value, kept in the form that costs least for the common case (binary mode,
/// the sidecar's own attributes): JSON escaping happens only when structured mode writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum AttributeValue {
    /// A string the sidecar sets.
    String(String),
    /// A number the sidecar sets, as text.
    Number(String),
    /// A member as the producer wrote it: its JSON text exactly, and its text for a `ce-`
    /// header (`None` for a JSON `null`, which the JSON format defines as unset).
    Raw { json: String, text: Option<String> },
}

impl Attribute {
    fn string(name: &'static str, value: &str) -> Self {
        Self {
            name: Cow::Borrowed(name),
            value: AttributeValue::String(value.to_string()),
        }
    }

    fn integer(name: &'static str, value: i64) -> Self {
        Self {
            name: Cow::Borrowed(name),
            value: AttributeValue::Number(value.to_string()),
        }
    }

    fn raw(name: Cow<'static, str>, raw: &RawValue, text: Option<String>) -> Self {
        Self {
            name,
            value: AttributeValue::Raw {
                json: raw.get().to_string(),
                text,
            },
        }
    }

    /// The value as text (before percent-encoding), `None` if null.
    fn text(&self) -> Option<&str> {
        match &self.value {
            AttributeValue::String(text) | AttributeValue::Number(text) => Some(text),
            AttributeValue::Raw { text, .. } => text.as_deref(),
        }
    }

    /// The value as structured mode writes it.
    fn json(&self) -> Cow<'_, str> {
        match &self.value {
            AttributeValue::String(text) => Cow::Owned(json_string(text)),
            AttributeValue::Number(text) => Cow::Borrowed(text),
            AttributeValue::Raw { json, .. } => Cow::Borrowed(json),
        }
    }

    /// The value as text, taken out for a header.
    fn into_text(self) -> Option<String> {
        match self.value {
            AttributeValue::String(text) | AttributeValue::Number(text) => Some(text),
            AttributeValue::Raw { text, .. } => text,
        }
    }
}

/// An event's data, in the form it came in.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Data {
    /// Valid JSON text, possibly with whitespace around the value: structured mode embeds the
    /// value as written, binary mode sends the whole text.
    Json(String),
    /// UTF-8 text that is not JSON.
    Text(String),
    /// Bytes that are not UTF-8 (from base64).
    Bytes(Vec<u8>),
    /// A passed-through event's own `data` or `data_base64` member: written back as it was;
    /// `body` is its content for binary mode.
    Member {
        name: &'static str,
        json: String,
        body: Vec<u8>,
    },
}

/// One CloudEvent, ready to be laid out in either content mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    origin: Origin,
    /// In output order; every name at most once.
    attributes: Vec<Attribute>,
    data: Option<Data>,
    notice: Option<Notice>,
}

impl Event {
    /// How the message became this event.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// Something to report about the message, if anything.
    pub fn notice(&self) -> Option<&Notice> {
        self.notice.as_ref()
    }

    /// An attribute's value as text (`None` if absent or null).
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|a| a.name == name)
            .and_then(Attribute::text)
    }

    /// Sets an attribute, replacing one of the same name wherever it was.
    fn set(&mut self, attribute: Attribute) {
        self.attributes.retain(|a| a.name != attribute.name);
        self.attributes.push(attribute);
    }

    /// The HTTP request parts for this event in `mode`.
    pub fn encode(self, mode: ContentMode) -> HttpPayload {
        match mode {
            ContentMode::Structured => self.structured(),
            ContentMode::Binary => self.binary(),
        }
    }

    /// One `application/cloudevents+json` document: every attribute's JSON text, then the data.
    fn structured(self) -> HttpPayload {
        let data_len = match &self.data {
            Some(Data::Json(text) | Data::Text(text)) => text.len() + 16,
            Some(Data::Bytes(bytes)) => bytes.len() * 4 / 3 + 20,
            Some(Data::Member { json, .. }) => json.len() + 16,
            None => 0,
        };
        let mut body = Vec::with_capacity(256 + data_len);
        body.push(b'{');
        let mut first = true;
        let mut member = |body: &mut Vec<u8>, name: &str, json: &[u8]| {
            if !first {
                body.push(b',');
            }
            first = false;
            body.push(b'"');
            body.extend_from_slice(name.as_bytes());
            body.extend_from_slice(b"\":");
            body.extend_from_slice(json);
        };
        for attribute in &self.attributes {
            member(&mut body, &attribute.name, attribute.json().as_bytes());
        }
        match self.data {
            Some(Data::Json(text)) => member(&mut body, "data", trim_json_space(&text).as_bytes()),
            Some(Data::Text(text)) => member(&mut body, "data", json_string(&text).as_bytes()),
            Some(Data::Bytes(bytes)) => {
                let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
                member(&mut body, "data_base64", json_string(&encoded).as_bytes());
            }
            Some(Data::Member { name, json, .. }) => member(&mut body, name, json.as_bytes()),
            None => {}
        }
        body.push(b'}');
        HttpPayload {
            headers: vec![("content-type".into(), STRUCTURED.into())],
            body,
        }
    }

    /// `ce-` headers, the data content type as `Content-Type` (never as a `ce-` header), the
    /// data as the body.
    fn binary(self) -> HttpPayload {
        let mut headers = Vec::with_capacity(self.attributes.len() + 1);
        let mut content_type = false;
        for attribute in self.attributes {
            let name = attribute.name.clone();
            let Some(text) = attribute.into_text() else {
                continue;
            };
            if name == "datacontenttype" {
                // Checked to be a valid header value when the event was read or built.
                headers.push(("content-type".to_string(), text));
                content_type = true;
            } else {
                let mut header = String::with_capacity(3 + name.len());
                header.push_str("ce-");
                header.push_str(&name);
                headers.push((header, percent_encoded(text)));
            }
        }
        let (body, implies_json) = match self.data {
            Some(Data::Json(text)) => (text.into_bytes(), true),
            Some(Data::Text(text)) => (text.into_bytes(), false),
            Some(Data::Bytes(bytes)) => (bytes, false),
            Some(Data::Member { name, json, body }) => (body, name == "data" && json != "null"),
            None => (Vec::new(), false),
        };
        // JSON format 3.1: without a datacontenttype, `data` is JSON.
        if implies_json && !content_type {
            headers.push(("content-type".into(), JSON.into()));
        }
        HttpPayload { headers, body }
    }
}

/// Turns received messages into CloudEvents, per the event configuration.
#[derive(Debug)]
pub struct EventMapper {
    config: EventConfig,
    /// The `source` of wrapped events (`CE_SOURCE`, or the queue's URL).
    source: String,
    /// Whether the `DECODE_BASE64` hint was given already.
    hinted_base64: AtomicBool,
}

impl EventMapper {
    pub fn new(config: EventConfig, source: String) -> Self {
        Self {
            config,
            source,
            hinted_base64: AtomicBool::new(false),
        }
    }

    /// The content mode events are sent in.
    pub fn mode(&self) -> ContentMode {
        self.config.mode
    }

    /// The CloudEvent for a message.
    pub fn to_event(&self, message: &ReceivedMessage) -> Result<Event, MappingError> {
        let bytes = self.payload(message)?;
        let found = match self.config.passthrough {
            true => classify(&bytes, self.config.event_grid),
            false => Found::Plain,
        };
        let mut event = match found {
            Found::Event(event) => event,
            Found::Invalid { looks_like, reason } => {
                let mut event = self.wrap(message, bytes.into_owned());
                event.notice = Some(Notice::InvalidEvent { looks_like, reason });
                event
            }
            Found::Plain => {
                let mut event = self.wrap(message, bytes.into_owned());
                event.notice = self.base64_hint(&event);
                event
            }
        };
        for (name, value) in &self.config.overrides {
            event.set(Attribute {
                name: Cow::Owned(name.clone()),
                value: AttributeValue::String(value.clone()),
            });
        }
        // A wrapped event's id is the queue message id already; an event that came in the
        // message has its own id, so the message's is added to trace it back.
        if event.origin != Origin::Wrapped {
            event.set(Attribute::string("queuemessageid", &message.id));
        }
        event.set(Attribute::integer(
            "dequeuecount",
            i64::from(message.dequeue_count),
        ));
        match message.expiration_time.and_then(utc_rfc3339) {
            Some(expiry) => event.set(Attribute::string("expirytime", &expiry)),
            // Never leave a producer's value under our name.
            None => event.attributes.retain(|a| a.name != "expirytime"),
        }
        Ok(event)
    }

    /// The message's bytes, base64-decoded when configured.
    fn payload<'m>(&self, message: &'m ReceivedMessage) -> Result<Cow<'m, [u8]>, MappingError> {
        if !self.config.decode_base64 {
            return Ok(Cow::Borrowed(message.text.as_bytes()));
        }
        decode_base64(&message.text)
            .map(Cow::Owned)
            .ok_or(MappingError::InvalidBase64)
    }

    /// A new event around the payload, whose `id` is the queue message id.
    fn wrap(&self, message: &ReceivedMessage, bytes: Vec<u8>) -> Event {
        let (content_type, data) = match String::from_utf8(bytes) {
            Ok(text) if is_json(&text) => (JSON, Data::Json(text)),
            Ok(text) => (TEXT, Data::Text(text)),
            Err(not_utf8) => (OCTET_STREAM, Data::Bytes(not_utf8.into_bytes())),
        };
        let mut attributes = Vec::with_capacity(10 + self.config.overrides.len());
        attributes.push(Attribute::string("specversion", "1.0"));
        attributes.push(Attribute::string("id", &message.id));
        attributes.push(Attribute::string("source", &self.source));
        attributes.push(Attribute::string("type", &self.config.ce_type));
        if let Some(inserted) = message.insertion_time.and_then(utc_rfc3339) {
            attributes.push(Attribute::string("time", &inserted));
        }
        attributes.push(Attribute::string("datacontenttype", content_type));
        Event {
            origin: Origin::Wrapped,
            attributes,
            data: Some(data),
            notice: None,
        }
    }

    /// Text that is base64 of a CloudEvent or an Event Grid event, while `DECODE_BASE64` is off:
    /// worth one hint. Base64 of `{"` starts with `eyJ`, so other text costs one comparison.
    fn base64_hint(&self, event: &Event) -> Option<Notice> {
        let Some(Data::Text(text)) = &event.data else {
            return None;
        };
        if self.config.decode_base64
            || !text.trim_start().starts_with("eyJ")
            || self.hinted_base64.load(Ordering::Relaxed)
        {
            return None;
        }
        let decoded = decode_base64(text)?;
        let looks_like = match classify(&decoded, self.config.event_grid) {
            Found::Event(event) if event.origin == Origin::CloudEvent => "CloudEvent",
            Found::Event(_) => "Event Grid event",
            Found::Invalid { .. } | Found::Plain => return None,
        };
        (!self.hinted_base64.swap(true, Ordering::Relaxed))
            .then_some(Notice::Base64Event { looks_like })
    }
}

/// What a message turned out to be.
enum Found {
    /// A valid CloudEvent or Event Grid event.
    Event(Event),
    /// Looked like one, but is not valid.
    Invalid {
        looks_like: &'static str,
        reason: String,
    },
    /// Neither: to be wrapped.
    Plain,
}

/// Recognises a CloudEvent or an Event Grid schema event. Cheap for everything else: a message
/// is parsed only if it contains `"specversion"` or `"eventType"` (a key written with escapes
/// is not recognised, and the message is wrapped as the JSON it is).
fn classify(bytes: &[u8], event_grid: EventGridSchema) -> Found {
    let cloud_event = contains(bytes, b"\"specversion\"");
    let grid = event_grid == EventGridSchema::Map && contains(bytes, b"\"eventType\"");
    if !cloud_event && !grid {
        return Found::Plain;
    }
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Found::Plain;
    };
    if json_depth(text).is_none_or(|depth| depth > MAX_JSON_DEPTH) {
        return Found::Plain;
    }
    let members = match serde_json::from_str::<Members<'_>>(text) {
        Ok(Members(members)) => members,
        Err(_) => return Found::Plain, // not a JSON object
    };
    let has = |name: &str| members.iter().any(|(key, _)| key == name);
    if has("specversion") {
        return match cloud_event_from(&members) {
            Ok(event) => Found::Event(event),
            Err(reason) => Found::Invalid {
                looks_like: "CloudEvent",
                reason,
            },
        };
    }
    let grid_shaped = grid
        && has("eventType")
        && has("eventTime")
        && members
            .iter()
            .all(|(key, _)| EVENT_GRID_MEMBERS.contains(&key.as_ref()));
    if !grid_shaped {
        return Found::Plain;
    }
    match event_grid_from(&members) {
        Ok(event) => Found::Event(event),
        Err(reason) => Found::Invalid {
            looks_like: "Event Grid event",
            reason,
        },
    }
}

/// A JSON object's members in document order, duplicates kept, each value as its raw text.
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> Visitor<'de> for Visit {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
                let mut members = Vec::new();
                while let Some(entry) = map.next_entry::<Cow<'de, str>, &'de RawValue>()? {
                    members.push(entry);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(Visit)
    }
}

/// A JSON value as seen by the validation: its raw text and what it is.
enum Value {
    Null,
    String(String),
    Bool(bool),
    /// A whole number (CloudEvents Integer: 32-bit signed).
    Integer(i32),
    /// Anything else (other numbers, arrays, objects).
    Other,
    /// Raw text that does not decode (e.g. a string with a lone surrogate escape).
    Undecodable,
}

fn value(raw: &RawValue) -> Value {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'n') => Value::Null,
        Some(b't') => Value::Bool(true),
        Some(b'f') => Value::Bool(false),
        Some(b'"') => match serde_json::from_str::<String>(text) {
            Ok(s) => Value::String(s),
            Err(_) => Value::Undecodable,
        },
        Some(b'-' | b'0'..=b'9')
            if text.bytes().skip(1).all(|b| b.is_ascii_digit())
                && (text.as_bytes()[0] != b'-' || text.len() > 1) =>
        {
            text.parse::<i32>().map_or(Value::Other, Value::Integer)
        }
        _ => Value::Other,
    }
}

/// A JSON value's kind, for error messages.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::String(_) => "a string",
        Value::Bool(_) => "a boolean",
        Value::Integer(_) => "an integer",
        Value::Other => "not a string, boolean or 32-bit integer",
        Value::Undecodable => "a string that does not decode",
    }
}

/// A passed-through CloudEvent: every member validated against CloudEvents 1.0 and its JSON
/// format, and kept with its exact JSON text.
fn cloud_event_from(members: &[(Cow<'_, str>, &RawValue)]) -> Result<Event, String> {
    let mut attributes: Vec<Attribute> = Vec::with_capacity(members.len() + 4);
    let mut data = None;
    let mut content_type = None;
    for (name, raw) in members {
        let name = name.as_ref();
        if attributes.iter().any(|a| a.name == name)
            || data.as_ref().is_some_and(|(n, _)| *n == name)
        {
            return Err(format!("member {name:?} appears more than once"));
        }
        let parsed = value(raw);
        let text = match (name, parsed) {
            ("data", _) => {
                data = Some(("data", *raw));
                continue;
            }
            ("data_base64", Value::String(_) | Value::Null) => {
                data = Some(("data_base64", *raw));
                continue;
            }
            ("specversion", Value::String(v)) if v == "1.0" => Some(v),
            ("specversion", v) => {
                return Err(format!(
                    "specversion must be \"1.0\", got {}",
                    describe(raw, &v)
                ))
            }
            ("id" | "source" | "type", Value::String(v)) if !v.is_empty() => Some(v),
            ("id" | "source" | "type", v) => {
                return Err(format!("{name} must be a non-empty string, got {}", kind(&v)))
            }
            // `dataschema` is a URI in the spec, but any non-empty reference is accepted:
            // Event Grid itself writes `"dataschema":"#"` when it converts its own schema.
            ("subject" | "dataschema", Value::String(v)) if !v.is_empty() => Some(v),
            ("time", Value::String(v)) if OffsetDateTime::parse(&v, &Rfc3339).is_ok() => Some(v),
            ("datacontenttype", Value::String(v)) if is_header_value(&v) => {
                content_type = Some(v.clone());
                Some(v)
            }
            ("subject" | "dataschema" | "time" | "datacontenttype", Value::Null) => None,
            ("subject" | "dataschema", v) => {
                return Err(format!("{name} must be a non-empty string, got {}", kind(&v)))
            }
            ("time", v) => {
                return Err(format!(
                    "time must be an RFC 3339 timestamp, got {}",
                    describe(raw, &v)
                ))
            }
            ("datacontenttype", _) => {
                return Err(
                    "datacontenttype must be a media type in printable ASCII (it becomes the Content-Type header)"
                        .into(),
                )
            }
            ("data_base64", v) => {
                return Err(format!("data_base64 must be a string, got {}", kind(&v)))
            }
            (extension, _) if !is_attribute_name(extension) => {
                return Err(format!(
                    "extension name {:?} must be lowercase letters and digits",
                    shorten(extension)
                ))
            }
            (_, Value::String(v)) => Some(v),
            (_, Value::Bool(b)) => Some(b.to_string()),
            (_, Value::Integer(i)) => Some(i.to_string()),
            (_, Value::Null) => None,
            (extension, v) => {
                return Err(format!(
                    "extension {extension:?} must be a string, boolean or 32-bit integer, got {}",
                    kind(&v)
                ))
            }
        };
        attributes.push(Attribute::raw(Cow::Owned(name.to_string()), raw, text));
    }
    for required in ["id", "source", "type"] {
        if !attributes.iter().any(|a| a.name == required) {
            return Err(format!("the required attribute {required} is missing"));
        }
    }
    let data = match data {
        None => None,
        Some((name, raw)) => Some(passed_data(name, raw, content_type.as_deref())?),
    };
    if data.is_some()
        && members
            .iter()
            .filter(|(n, _)| n == "data" || n == "data_base64")
            .count()
            > 1
    {
        return Err("data and data_base64 are mutually exclusive".into());
    }
    Ok(Event {
        origin: Origin::CloudEvent,
        attributes,
        data,
        notice: None,
    })
}

/// A passed-through data member and its binary-mode body (JSON format 3.1): `data_base64`
/// decoded; `data` as its JSON text, or as the string's content when the content type is not
/// JSON and the value is a string.
fn passed_data(
    name: &'static str,
    raw: &RawValue,
    content_type: Option<&str>,
) -> Result<Data, String> {
    let json = raw.get();
    let body = match (name, value(raw)) {
        (_, Value::Null) => Vec::new(),
        ("data_base64", Value::String(encoded)) => {
            decode_base64(&encoded).ok_or_else(|| "data_base64 is not valid base64".to_string())?
        }
        ("data", Value::String(s)) if content_type.is_some_and(|ct| !is_json_type(ct)) => {
            s.into_bytes()
        }
        ("data", Value::Undecodable) if content_type.is_some_and(|ct| !is_json_type(ct)) => {
            return Err("data is a string that does not decode".into())
        }
        _ => json.as_bytes().to_vec(),
    };
    Ok(Data::Member {
        name,
        json: json.to_string(),
        body,
    })
}

/// An Event Grid schema event as a CloudEvent, the way Event Grid maps its own schema: `id`,
/// `source` = `topic`, `type` = `eventType`, `subject`, `time` = `eventTime`, `data` (JSON); the
/// version fields, which CloudEvents has no attribute for, as the `dataversion` and
/// `metadataversion` extensions. Values keep their exact JSON text.
fn event_grid_from(members: &[(Cow<'_, str>, &RawValue)]) -> Result<Event, String> {
    let mut seen: Vec<&str> = Vec::with_capacity(members.len());
    for (name, _) in members {
        if seen.contains(&name.as_ref()) {
            return Err(format!("member {name:?} appears more than once"));
        }
        seen.push(name);
    }
    let get = |name: &str| {
        members
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, raw)| *raw)
    };
    let string =
        |name: &'static str, required: bool| -> Result<Option<(String, &RawValue)>, String> {
            match get(name).map(|raw| (value(raw), raw)) {
                Some((Value::String(s), raw)) if !(required && s.is_empty()) => Ok(Some((s, raw))),
                None | Some((Value::Null, _)) if !required => Ok(None),
                Some((v, _)) => Err(format!(
                    "{name} must be a {}string, got {}",
                    if required { "non-empty " } else { "" },
                    kind(&v)
                )),
                None => Err(format!("the required member {name} is missing")),
            }
        };
    let id = string("id", true)?;
    let topic = string("topic", true)?;
    let event_type = string("eventType", true)?;
    let subject = string("subject", false)?;
    let event_time = string("eventTime", true)?;
    if let Some((time, _)) = &event_time {
        if OffsetDateTime::parse(time, &Rfc3339).is_err() {
            return Err(format!(
                "eventTime must be an RFC 3339 timestamp, got {}",
                json_string(&shorten(time))
            ));
        }
    }
    let data_version = string("dataVersion", false)?;
    let metadata_version = string("metadataVersion", false)?;

    fn push(
        attributes: &mut Vec<Attribute>,
        name: &'static str,
        field: Option<(String, &RawValue)>,
    ) {
        if let Some((text, raw)) = field {
            attributes.push(Attribute::raw(Cow::Borrowed(name), raw, Some(text)));
        }
    }
    let mut attributes = vec![Attribute::string("specversion", "1.0")];
    push(&mut attributes, "id", id);
    push(&mut attributes, "source", topic);
    push(&mut attributes, "type", event_type);
    // CloudEvents' subject must not be empty; Event Grid's may be.
    push(
        &mut attributes,
        "subject",
        subject.filter(|(s, _)| !s.is_empty()),
    );
    push(&mut attributes, "time", event_time);
    let data = get("data").filter(|raw| raw.get() != "null");
    if data.is_some() {
        attributes.push(Attribute::string("datacontenttype", JSON));
    }
    push(&mut attributes, "dataversion", data_version);
    push(&mut attributes, "metadataversion", metadata_version);
    Ok(Event {
        origin: Origin::EventGrid,
        attributes,
        data: data.map(|raw| Data::Member {
            name: "data",
            json: raw.get().to_string(),
            body: raw.get().as_bytes().to_vec(),
        }),
        notice: None,
    })
}

/// Whether `text` is JSON (RFC 8259, any numbers; nested at most [`MAX_JSON_DEPTH`] deep).
/// Validated without building a document: no number is ever converted, so `1e400` and
/// 30-digit integers are JSON like any other.
pub fn is_json(text: &str) -> bool {
    json_depth(text).is_some_and(|depth| depth <= MAX_JSON_DEPTH)
        && serde_json::from_str::<&RawValue>(text).is_ok()
}

/// The deepest nesting of arrays and objects in `text`, strings skipped; `None` if brackets
/// are unbalanced. A cheap scan ahead of the validating parse.
fn json_depth(text: &str) -> Option<usize> {
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

/// `text` without JSON's insignificant whitespace around the value.
fn trim_json_space(text: &str) -> &str {
    text.trim_matches(|c| matches!(c, ' ' | '\t' | '\n' | '\r'))
}

/// Whether a media type declares JSON (`application/json`, `text/json`, `*/*+json`).
fn is_json_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence == "text/json" || essence.ends_with("+json")
}

/// A value that can be sent as a header as it is (the `Content-Type` is not percent-encoded):
/// printable ASCII, spaces and tabs inside only.
fn is_header_value(value: &str) -> bool {
    !value.is_empty()
        && value.trim() == value
        && value
            .bytes()
            .all(|b| b == b'\t' || (0x20..=0x7e).contains(&b))
}

/// Decodes base64 in any alphabet producers use: standard or URL-safe, padded or not (Azure
/// Functions and older SDKs pad, others do not; poisoning a message over a `=` helps nobody).
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    [
        base64::engine::general_purpose::STANDARD,
        base64::engine::general_purpose::STANDARD_NO_PAD,
        base64::engine::general_purpose::URL_SAFE,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ]
    .iter()
    .find_map(|engine| engine.decode(text).ok())
}

/// The sidecar's one time format: RFC 3339 in UTC with `Z` (fractional seconds only when
/// there are any), in both content modes.
fn utc_rfc3339(time: OffsetDateTime) -> Option<String> {
    time.to_offset(UtcOffset::UTC).format(&Rfc3339).ok()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// A value for an error message: short, and never more than 40 characters of it.
fn describe(raw: &RawValue, value: &Value) -> String {
    match value {
        Value::String(s) => json_string(&shorten(s)),
        _ => shorten(raw.get()).into_owned(),
    }
}

fn shorten(text: &str) -> Cow<'_, str> {
    match text.char_indices().nth(40) {
        Some((end, _)) => Cow::Owned(format!("{}…", &text[..end])),
        None => Cow::Borrowed(text),
    }
}

/// `value` as a JSON string (RFC 8259 escapes: `"`, `\` and control characters).
fn json_string(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                let code = c as usize;
                out.push_str("\\u00");
                out.push(char::from(HEX[code >> 4]));
                out.push(char::from(HEX[code & 0x0f]));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Percent-encodes a `ce-` header value as the HTTP binding (3.1.3.2) requires: space, `"`,
/// `%` and everything outside printable ASCII, byte by byte in UTF-8. The result is always a
/// valid header value, whatever the input.
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

    const ID: &str = "6b4f7d5c-0000-4000-8000-000000000001";

    fn config(mode: ContentMode) -> EventConfig {
        EventConfig {
            ce_type: "com.microsoft.azure.queuestorage".into(),
            source: Some("http://127.0.0.1:10001/devstoreaccount1/orders".into()),
            mode,
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
            expiration_time: Some(
                OffsetDateTime::from_unix_timestamp(1_700_604_800).expect("time"),
            ),
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
        let payload =
            binary(r#"{"specversion":"1.0","id":"x","source":"/s","type":"t","data":"s"}"#);
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
}
