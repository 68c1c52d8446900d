//! Recognising what a message is: a CloudEvent in the JSON format, an Event Grid schema event,
//! or neither — validated member by member, each kept with its exact JSON text.

use super::model::{Attribute, Data, Event, Origin};
use super::text::{
    contains, decode_base64, is_header_value, is_json_type, json_depth, json_string, JSON,
    MAX_JSON_DEPTH,
};
use crate::config::event::is_attribute_name;
use crate::config::EventGridSchema;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

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

/// What a message turned out to be.
pub(super) enum Found {
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
pub(super) fn classify(bytes: &[u8], event_grid: EventGridSchema) -> Found {
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
pub(super) struct Members<'a>(pub(super) Vec<(Cow<'a, str>, &'a RawValue)>);

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
