//! The CloudEvent as the sidecar holds it — attributes with their exact JSON text, data in the
//! form it came in — and its layout in either content mode of the HTTP binding 1.0.2.

use super::text::{json_string, percent_encoded, trim_json_space, BATCHED, JSON, STRUCTURED};
use crate::config::ContentMode;
use base64::Engine;
use serde_json::value::RawValue;
use std::borrow::Cow;

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

/// One batched-mode request: the `entries` (each a structured-mode event, see
/// [`Event::batch_entry`]) as one JSON array, in order.
pub(crate) fn batch(entries: &[impl AsRef<[u8]>]) -> HttpPayload {
    let mut body = Vec::with_capacity(batch_len(entries.iter().map(|e| e.as_ref().len())));
    body.push(b'[');
    for (n, entry) in entries.iter().enumerate() {
        if n > 0 {
            body.push(b',');
        }
        body.extend_from_slice(entry.as_ref());
    }
    body.push(b']');
    HttpPayload {
        headers: vec![("content-type".into(), BATCHED.into())],
        body,
    }
}

/// The body length of a batch of entries of these lengths: the brackets and a comma between
/// entries.
fn batch_len(entry_lens: impl Iterator<Item = usize>) -> usize {
    let (count, bytes) = entry_lens.fold((0usize, 0usize), |(n, sum), len| (n + 1, sum + len));
    2 + bytes + count.saturating_sub(1)
}

/// One context attribute or extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Attribute {
    pub(super) name: Cow<'static, str>,
    pub(super) value: AttributeValue,
}

/// An attribute's value, kept in the form that costs least for the common case (binary mode,
/// the sidecar's own attributes): JSON escaping happens only when structured mode writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum AttributeValue {
    /// A string the sidecar sets.
    String(String),
    /// A number the sidecar sets, as text.
    Number(String),
    /// A member as the producer wrote it: its JSON text exactly, and its text for a `ce-`
    /// header (`None` for a JSON `null`, which the JSON format defines as unset).
    Raw { json: String, text: Option<String> },
}

impl Attribute {
    pub(super) fn string(name: &'static str, value: &str) -> Self {
        Self {
            name: Cow::Borrowed(name),
            value: AttributeValue::String(value.to_string()),
        }
    }

    pub(super) fn integer(name: &'static str, value: i64) -> Self {
        Self {
            name: Cow::Borrowed(name),
            value: AttributeValue::Number(value.to_string()),
        }
    }

    pub(super) fn raw(name: Cow<'static, str>, raw: &RawValue, text: Option<String>) -> Self {
        Self {
            name,
            value: AttributeValue::Raw {
                json: raw.get().to_string(),
                text,
            },
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
pub(super) enum Data {
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
    pub(super) origin: Origin,
    /// In output order; every name at most once.
    pub(super) attributes: Vec<Attribute>,
    pub(super) data: Option<Data>,
    pub(super) notice: Option<Notice>,
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

    /// The distributed tracing extension (`traceparent`, `tracestate`) of a passed-through
    /// CloudEvent, as the producer wrote it; `None` for events the sidecar made.
    pub(crate) fn trace_extension(&self) -> (Option<&str>, Option<&str>) {
        if self.origin != Origin::CloudEvent {
            return (None, None);
        }
        let text = |name: &str| {
            self.attributes
                .iter()
                .find(|a| a.name == name)
                .and_then(|a| match &a.value {
                    AttributeValue::String(text) => Some(text.as_str()),
                    AttributeValue::Raw { text, .. } => text.as_deref(),
                    AttributeValue::Number(_) => None,
                })
        };
        (text("traceparent"), text("tracestate"))
    }

    /// Sets an attribute, replacing one of the same name wherever it was.
    pub(super) fn set(&mut self, attribute: Attribute) {
        self.attributes.retain(|a| a.name != attribute.name);
        self.attributes.push(attribute);
    }

    /// The HTTP request parts for this event in `mode`.
    pub fn encode(self, mode: ContentMode) -> HttpPayload {
        match mode {
            ContentMode::Structured => self.structured(),
            ContentMode::Binary => self.binary(),
            ContentMode::Batched => batch(&[self.batch_entry()]),
        }
    }

    /// Sets the distributed-tracing extension (`traceparent`, and `tracestate` when there is
    /// one; an invalid `tracestate` the producer wrote goes, as it belongs to no trace now).
    pub(crate) fn set_trace_extension(&mut self, traceparent: String, tracestate: Option<&str>) {
        self.set(Attribute {
            name: Cow::Borrowed("traceparent"),
            value: AttributeValue::String(traceparent),
        });
        match tracestate {
            Some(state) => self.set(Attribute::string("tracestate", state)),
            None => self.attributes.retain(|a| a.name != "tracestate"),
        }
    }

    /// This event as an entry of a batch: exactly the document structured mode sends.
    pub(crate) fn batch_entry(self) -> Vec<u8> {
        self.structured().body
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
