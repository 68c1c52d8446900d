//! Text the event layer reads and writes: JSON recognised without being converted, JSON and
//! header escaping, base64 in any alphabet, the sidecar's one time format.

use base64::Engine;
use serde_json::value::RawValue;
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

/// The content type of JSON data.
pub const JSON: &str = "application/json";
/// The content type of UTF-8 text that is not JSON.
pub(crate) const TEXT: &str = "text/plain; charset=utf-8";
/// The content type of anything else.
pub(crate) const OCTET_STREAM: &str = "application/octet-stream";
/// The structured-mode content type.
pub const STRUCTURED: &str = "application/cloudevents+json";
/// The batched-mode content type: a JSON array of structured-mode events.
pub const BATCHED: &str = "application/cloudevents-batch+json";

/// The deepest nesting of arrays and objects a message may have to count as JSON. Deeper text
/// is delivered as text: a structured-mode envelope around it would exceed what common JSON
/// parsers accept (serde_json stops at 128 levels).
pub(crate) const MAX_JSON_DEPTH: usize = 128;

/// Whether `text` is JSON (RFC 8259, any numbers; nested at most [`MAX_JSON_DEPTH`] deep).
/// Validated without building a document: no number is ever converted, so `1e400` and
/// 30-digit integers are JSON like any other.
pub fn is_json(text: &str) -> bool {
    json_depth(text).is_some_and(|depth| depth <= MAX_JSON_DEPTH)
        && serde_json::from_str::<&RawValue>(text).is_ok()
}

/// The deepest nesting of arrays and objects in `text`, strings skipped; `None` if brackets
/// are unbalanced. A cheap scan ahead of the validating parse: inside a string it jumps from
/// one `"` or `\\` to the next (`memchr2`), because a big message is mostly string content, and
/// a byte-at-a-time scan of a 64 KiB message was a fifth of the sidecar's CPU (perf,
/// `tests/bench`).
pub(super) fn json_depth(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let (mut depth, mut deepest, mut at) = (0usize, 0usize, 0usize);
    while let Some(&byte) = bytes.get(at) {
        at += 1;
        match byte {
            b'"' => loop {
                // An unterminated string runs to the end, as it does for the parser.
                let rest = bytes.get(at..).unwrap_or_default();
                let Some(found) = memchr::memchr2(b'"', b'\\', rest) else {
                    return Some(deepest);
                };
                at += found + 1;
                match bytes[at - 1] {
                    b'\\' => at += 1, // the escaped byte, whatever it is
                    _ => break,       // the closing quote
                }
            },
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
pub(super) fn trim_json_space(text: &str) -> &str {
    text.trim_matches(|c| matches!(c, ' ' | '\t' | '\n' | '\r'))
}

/// Whether a media type declares JSON (`application/json`, `text/json`, `*/*+json`).
pub(super) fn is_json_type(content_type: &str) -> bool {
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
pub(super) fn is_header_value(value: &str) -> bool {
    !value.is_empty()
        && value.trim() == value
        && value
            .bytes()
            .all(|b| b == b'\t' || (0x20..=0x7e).contains(&b))
}

/// Decodes base64 in any alphabet producers use: standard or URL-safe, padded or not (Azure
/// Functions and older SDKs pad, others do not; poisoning a message over a `=` helps nobody).
pub(super) fn decode_base64(text: &str) -> Option<Vec<u8>> {
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
pub(super) fn utc_rfc3339(time: OffsetDateTime) -> Option<String> {
    time.to_offset(UtcOffset::UTC).format(&Rfc3339).ok()
}

/// Whether `needle` occurs in `haystack`.
pub(super) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    // memchr's substring search: a 64 KiB message is scanned for two names, and comparing
    // every window (`windows(n).any(..)`) cost a seventh of the sidecar's CPU (perf).
    memchr::memmem::find(haystack, needle).is_some()
}

/// `value` as a JSON string (RFC 8259 escapes: `"`, `\` and control characters).
pub(super) fn json_string(value: &str) -> String {
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
#[cfg(test)]
pub(crate) fn percent_encode_header(value: &str) -> String {
    percent_encoded(value.to_string())
}

/// [`percent_encode_header`] on an owned value, which is returned as it is when nothing needs
/// escaping (the usual case: ids, types, URLs, timestamps), so each header costs no extra copy.
pub(super) fn percent_encoded(value: String) -> String {
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
