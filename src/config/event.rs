//! How queue messages become CloudEvents: `CE_TYPE`, `CE_SOURCE`, `CE_MODE`,
//! `K_CE_OVERRIDES`, `CE_PASSTHROUGH`, `EVENTGRID_SCHEMA`, `DECODE_BASE64`.
//!
//! The CloudEvents names an override may not take (context attributes, the sidecar's own
//! extensions) are defined here, where `K_CE_OVERRIDES` is checked; the event model uses the
//! same definitions.

use super::values::{ConfigError, Env};
use std::collections::BTreeMap;
use url::Url;

/// The most events in one batched request: what one Get Messages can return.
const MAX_BATCH_EVENTS: usize = 32;
/// Bounds of `CE_BATCH_MAX_BYTES`: below 1 KiB most batches would be single events, above
/// 64 MiB a batch is a memory risk for a sidecar sized in MiB.
const MIN_BATCH_BYTES: usize = 1024;
const MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;

/// The CloudEvents 1.0 context attributes and the two data members of the JSON format.
pub(crate) const CONTEXT_ATTRIBUTES: [&str; 10] = [
    "specversion",
    "id",
    "source",
    "type",
    "datacontenttype",
    "dataschema",
    "subject",
    "time",
    "data",
    "data_base64",
];
/// The extensions the sidecar sets (`queuemessageid` only on events that came in the message,
/// whose `id` is the producer's). They win over a producer's attributes of the same name:
/// receivers can trust them to describe this queue and this delivery.
pub(crate) const QUEUE_EXTENSIONS: [&str; 3] = ["queuemessageid", "dequeuecount", "expirytime"];
/// The extensions an Event Grid schema event's version fields become.
pub(crate) const EVENT_GRID_EXTENSIONS: [&str; 2] = ["dataversion", "metadataversion"];

/// CloudEvents attribute names: lowercase ASCII letters and digits.
pub(crate) fn is_attribute_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// How a CloudEvent is laid out in the HTTP request (CloudEvents HTTP binding 1.0.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentMode {
    /// Attributes as `ce-*` headers, the data as the body.
    Binary,
    /// The whole event as one `application/cloudevents+json` document.
    Structured,
    /// Several events per request, as one `application/cloudevents-batch+json` array of
    /// structured-mode events (see [`BatchConfig`]).
    Batched,
}

/// How events are grouped in batched mode: `CE_BATCH_SIZE`, `CE_BATCH_MAX_BYTES`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// The most events in one request (1..=32: a Get Messages returns at most 32).
    pub max_events: usize,
    /// The most bytes of one request body; a single event larger than this goes alone.
    pub max_bytes: usize,
}

/// How queue messages become CloudEvents.
#[derive(Debug, Clone)]
pub struct EventConfig {
    /// The CloudEvent `type` of wrapped messages.
    pub ce_type: String,
    /// The CloudEvent `source` of wrapped messages (`CE_SOURCE`); `None`: the queue URL, known
    /// once the storage account is resolved (see [`EventConfig::source_or`]).
    pub source: Option<String>,
    /// Binary, structured or batched content mode.
    pub mode: ContentMode,
    /// How batched mode groups events (read whatever the mode, so a wrong value fails at
    /// start either way).
    pub batch: BatchConfig,
    /// Extensions added to every event (Knative's `K_CE_OVERRIDES`).
    pub overrides: BTreeMap<String, String>,
    /// Whether message text is base64 that must be decoded first.
    pub decode_base64: bool,
    /// Whether messages that are CloudEvents (or Event Grid events) are forwarded as those
    /// events (`CE_PASSTHROUGH`); when false every message is wrapped.
    pub passthrough: bool,
    /// What to do with Event Grid schema events (`EVENTGRID_SCHEMA`).
    pub event_grid: EventGridSchema,
}

/// What becomes of a message in the Event Grid event schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventGridSchema {
    /// Mapped to the CloudEvent Event Grid itself would deliver (`id`, `source` = `topic`,
    /// `type` = `eventType`, ...).
    Map,
    /// Wrapped as JSON data, like any other JSON message.
    Wrap,
}

impl EventConfig {
    /// The `source` of wrapped events: `CE_SOURCE`, or the queue's URL.
    pub(crate) fn source_or(&self, queue_url: &Url) -> String {
        self.source.clone().unwrap_or_else(|| queue_url.to_string())
    }
}

pub(super) fn event_config(env: &Env) -> Result<EventConfig, ConfigError> {
    let mode = match env.value("CE_MODE")?.trim() {
        m if m.eq_ignore_ascii_case("binary") => ContentMode::Binary,
        m if m.eq_ignore_ascii_case("structured") => ContentMode::Structured,
        m if m.eq_ignore_ascii_case("batched") => ContentMode::Batched,
        m => {
            return Err(ConfigError::new(
                "CE_MODE",
                format!("expected binary, structured or batched, got {m:?}"),
            ))
        }
    };
    let batch = BatchConfig {
        max_events: env.parse_range("CE_BATCH_SIZE", 1, MAX_BATCH_EVENTS)?,
        max_bytes: env.parse_range("CE_BATCH_MAX_BYTES", MIN_BATCH_BYTES, MAX_BATCH_BYTES)?,
    };
    let overrides = match env.get("K_CE_OVERRIDES") {
        None => BTreeMap::new(),
        Some(raw) => parse_overrides(&raw)?,
    };
    let event_grid = match env.value("EVENTGRID_SCHEMA")?.trim() {
        v if v.eq_ignore_ascii_case("map") => EventGridSchema::Map,
        v if v.eq_ignore_ascii_case("wrap") => EventGridSchema::Wrap,
        v => {
            return Err(ConfigError::new(
                "EVENTGRID_SCHEMA",
                format!("expected map or wrap, got {v:?}"),
            ))
        }
    };
    Ok(EventConfig {
        ce_type: env.value("CE_TYPE")?,
        source: env.get("CE_SOURCE"),
        mode,
        batch,
        overrides,
        decode_base64: env.flag("DECODE_BASE64")?,
        passthrough: env.flag("CE_PASSTHROUGH")?,
        event_grid,
    })
}

/// Knative's `K_CE_OVERRIDES`: `{"extensions": {"name": "value", ...}}`. Names must be valid
/// CloudEvents attribute names (lowercase letters and digits) or receivers reject the event,
/// and may not be context attributes or the sidecar's own extensions: an override `id` would
/// give every event the same id (and a second `"id"` member), one named `dequeuecount` would
/// lie about the delivery. Values must be strings, as in Knative.
fn parse_overrides(raw: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    const VAR: &str = "K_CE_OVERRIDES";
    let expected = || {
        ConfigError::new(
            VAR,
            "expected JSON like {\"extensions\":{\"name\":\"value\"}}",
        )
    };
    let value: serde_json::Value = serde_json::from_str(raw).map_err(|_| expected())?;
    let Some(object) = value.as_object() else {
        return Err(expected());
    };
    if let Some(unknown) = object.keys().find(|key| *key != "extensions") {
        return Err(ConfigError::new(
            VAR,
            format!(
                "unknown member {:?}; expected JSON like {{\"extensions\":{{\"name\":\"value\"}}}}",
                shorten(unknown)
            ),
        ));
    }
    let mut overrides = BTreeMap::new();
    let Some(extensions) = object.get("extensions") else {
        return Ok(overrides);
    };
    let extensions = extensions.as_object().ok_or_else(expected)?;
    for (name, value) in extensions {
        if CONTEXT_ATTRIBUTES.contains(&name.as_str()) {
            return Err(ConfigError::new(
                VAR,
                format!("{name:?} is a CloudEvents context attribute, not an extension; it cannot be overridden"),
            ));
        }
        if QUEUE_EXTENSIONS.contains(&name.as_str())
            || EVENT_GRID_EXTENSIONS.contains(&name.as_str())
        {
            return Err(ConfigError::new(
                VAR,
                format!("{name:?} is an extension the sidecar sets itself; choose another name"),
            ));
        }
        if !is_attribute_name(name) || name.len() > 20 {
            return Err(ConfigError::new(
                VAR,
                format!(
                    "extension name {:?} must be 1-20 lowercase letters or digits",
                    shorten(name)
                ),
            ));
        }
        let serde_json::Value::String(value) = value else {
            return Err(ConfigError::new(
                VAR,
                format!("extension {name:?} must have a string value, e.g. \"2\" rather than 2"),
            ));
        };
        overrides.insert(name.clone(), value.clone());
    }
    Ok(overrides)
}

/// At most 40 characters of `text`, for error messages about values a user typed.
fn shorten(text: &str) -> String {
    match text.char_indices().nth(40) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}
