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
//! [`Event::encode`] lays the event out as the CloudEvents HTTP binding 1.0.2 asks; [`batch`]
//! puts several structured-mode events (each [`Event::batch_entry`], the very document
//! structured mode would send) into one batched-mode array. Structured
//! mode writes the JSON envelope here rather than through a JSON model: JSON data is embedded as
//! its raw text (never parsed into floats and re-serialized), passed-through members are copied
//! byte for byte. Binary mode percent-encodes every `ce-` header value
//! ([`percent_encode_header`]), so any attribute text makes a valid header.
//!
//! The pop receipt never enters an event: it is a bearer token for the message.

mod model;
mod recognise;
mod text;

pub(crate) use model::{batch, Event, Notice};
pub use model::{HttpPayload, Origin};
#[cfg(test)]
use text::percent_encode_header;
pub use text::{is_json, BATCHED, JSON, STRUCTURED};

use crate::config::{ContentMode, EventConfig};
use crate::queue::ReceivedMessage;
use crate::telemetry::tracker::Tracker;
use model::{Attribute, AttributeValue, Data};
use recognise::{classify, Found};
use std::borrow::Cow;
use text::{decode_base64, utc_rfc3339, OCTET_STREAM, TEXT};

/// Why a message could not become an event. Such a message will never succeed as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    #[error("the message text is not valid base64 (DECODE_BASE64=true)")]
    InvalidBase64,
}

/// Turns received messages into CloudEvents, per the event configuration.
#[derive(Debug)]
pub struct EventMapper {
    config: EventConfig,
    /// The `source` of wrapped events (`CE_SOURCE`, or the queue's URL).
    source: String,
    /// Whether the `DECODE_BASE64` hint was given already: it is about the configuration,
    /// so it is said once per process, not per message.
    base64_hint: Tracker,
}

impl EventMapper {
    pub fn new(config: EventConfig, source: String) -> Self {
        Self {
            config,
            source,
            base64_hint: Tracker::new(),
        }
    }

    /// The content mode events are sent in.
    pub(crate) fn mode(&self) -> ContentMode {
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
            || self.base64_hint.is_failing(&())
        {
            return None;
        }
        let decoded = decode_base64(text)?;
        let looks_like = match classify(&decoded, self.config.event_grid) {
            Found::Event(event) if event.origin == Origin::CloudEvent => "CloudEvent",
            Found::Event(_) => "Event Grid event",
            Found::Invalid { .. } | Found::Plain => return None,
        };
        self.base64_hint
            .failed((), ())
            .then_some(Notice::Base64Event { looks_like })
    }
}

#[cfg(test)]
mod tests;
