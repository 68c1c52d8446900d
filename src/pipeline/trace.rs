//! W3C Trace Context (level 1, version `00`) on every POST: one trace per message, one span
//! per attempt.
//!
//! - **The trace id** of an ordinary message is the queue message id: Azure's ids are UUIDs,
//!   and their 32 hex digits (dashes removed, lowercase) are the trace id, so every
//!   redelivery of a message lands in one trace and a trace is found from a message id. An id
//!   that is not a UUID (Azurite's, a future format) or is the nil UUID gets a deterministic
//!   stand-in: the 128-bit FNV-1a hash of the id's bytes, never all zero.
//! - **A passed-through CloudEvent** that carries the distributed tracing extension
//!   (`traceparent`, `tracestate`) continues that trace: the POST's `traceparent` has its
//!   trace id and trace flags, and its `tracestate` is forwarded unchanged (the extension
//!   itself stays in the event, as the producer wrote it). A `traceparent` that is not valid
//!   W3C Trace Context is not continued and not forwarded as a header (its `tracestate` is
//!   ignored too, as the specification asks): the message gets its own trace.
//! - **The span id** (the `parent-id` the endpoint sees) is random and new for every attempt,
//!   never all zero. The trace flags of a new trace are `01` (sampled): the sidecar records no
//!   spans itself, and a sampled flag lets the app record the trace that a message id finds.
//!
//! Propagation only: a few lines of text handling, no tracing SDK (see the README's
//! *Trace context* for why no OTLP export).

/// The trace of one message, the same on every attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Trace {
    trace_id: String,
    flags: String,
    tracestate: Option<String>,
}

/// One attempt's span in the message's trace: what a POST's headers say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Span {
    pub trace_id: String,
    pub span_id: String,
    flags: String,
    tracestate: Option<String>,
}

impl Trace {
    /// The trace of the message `message_id`, continuing `traceparent` (with `tracestate`) if
    /// the event carried a valid one.
    pub(crate) fn for_message(
        message_id: &str,
        traceparent: Option<&str>,
        tracestate: Option<&str>,
    ) -> Self {
        if let Some((trace_id, flags)) = traceparent.and_then(parse_traceparent) {
            return Self {
                trace_id,
                flags,
                tracestate: tracestate
                    .map(str::trim)
                    .filter(|s| !s.is_empty() && is_header_text(s))
                    .map(str::to_string),
            };
        }
        Self {
            trace_id: trace_id_of(message_id),
            flags: "01".to_string(),
            tracestate: None,
        }
    }

    /// A new span for the next attempt.
    pub(crate) fn new_span(&self) -> Span {
        Span {
            trace_id: self.trace_id.clone(),
            span_id: span_id(),
            flags: self.flags.clone(),
            tracestate: self.tracestate.clone(),
        }
    }
}

impl Span {
    /// The `traceparent` header value.
    pub(crate) fn traceparent(&self) -> String {
        format!("00-{}-{}-{}", self.trace_id, self.span_id, self.flags)
    }

    /// The `tracestate` header value, if there is one to forward.
    pub(crate) fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }
}

/// The trace context of one event in a batch, which a batch POST's headers cannot carry (they
/// are one request's, and a batch has many messages): the CloudEvents distributed-tracing
/// extension in the event itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EntrySpan {
    /// The span the event's extension names, for the delivery's log lines.
    pub(crate) span: Span,
    /// Whether the sidecar sets the extension: `false` when the event (a passed-through
    /// CloudEvent) already carries a valid `traceparent`, which is forwarded as the producer
    /// wrote it, like every other attribute of such an event.
    pub(crate) set_extension: bool,
}

impl Trace {
    /// The span a batch entry carries: the producer's own, if the event has a valid
    /// `traceparent`; otherwise a new span of this trace (a new one for every receive; the
    /// POSTs of a bisection resend the same entry).
    pub(crate) fn entry_span(&self, traceparent: Option<&str>) -> EntrySpan {
        match traceparent.and_then(producer_span) {
            Some(mut span) => {
                span.tracestate = self.tracestate.clone();
                EntrySpan {
                    span,
                    set_extension: false,
                }
            }
            None => EntrySpan {
                span: self.new_span(),
                set_extension: true,
            },
        }
    }
}

/// The span a valid `traceparent` names (its parent-id is the producer's span).
fn producer_span(value: &str) -> Option<Span> {
    let (trace_id, flags) = parse_traceparent(value)?;
    let span_id = value.trim().get(36..52)?.to_string();
    Some(Span {
        trace_id,
        span_id,
        flags,
        tracestate: None,
    })
}

/// The trace id of a message: its UUID's hex digits, or a hash of any other id.
pub(crate) fn trace_id_of(message_id: &str) -> String {
    let hex: String = message_id.chars().filter(|c| *c != '-').collect();
    let is_uuid = match message_id.len() {
        36 => message_id
            .char_indices()
            .all(|(i, c)| matches!(i, 8 | 13 | 18 | 23) == (c == '-')),
        32 => true,
        _ => false,
    } && hex.len() == 32
        && hex.bytes().all(|b| b.is_ascii_hexdigit());
    let hex = hex.to_ascii_lowercase();
    if is_uuid && !is_zero(&hex) {
        return hex;
    }
    format!("{:032x}", fnv1a_128(message_id.as_bytes()).max(1))
}

/// FNV-1a, 128 bits: deterministic, dependency-free, well spread over short ids.
fn fnv1a_128(bytes: &[u8]) -> u128 {
    const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
    bytes.iter().fold(OFFSET, |hash, byte| {
        (hash ^ u128::from(*byte)).wrapping_mul(PRIME)
    })
}

/// A random span id, never all zero.
fn span_id() -> String {
    format!("{:016x}", fastrand::u64(1..))
}

/// The trace id and flags of a valid `traceparent`: `00-<32 hex>-<16 hex>-<2 hex>` in
/// lowercase, ids not all zero; a later version (not `ff`) is read by its first four fields,
/// as the specification asks of a version it does not know.
pub(crate) fn parse_traceparent(value: &str) -> Option<(String, String)> {
    let value = value.trim();
    let version = value.get(0..2)?;
    if !is_lower_hex(version) || version == "ff" {
        return None;
    }
    let known = match version {
        "00" => value.len() == 55,
        _ => value.len() == 55 || (value.len() > 55 && value.as_bytes()[55] == b'-'),
    };
    if !known {
        return None;
    }
    let fields = value.get(..55)?;
    let bytes = fields.as_bytes();
    if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
        return None;
    }
    // Every byte checked above or below is ASCII, so these slices are on char boundaries.
    let (trace_id, parent_id, flags) =
        (fields.get(3..35)?, fields.get(36..52)?, fields.get(53..55)?);
    let valid = [trace_id, parent_id, flags].iter().all(|f| is_lower_hex(f))
        && !is_zero(trace_id)
        && !is_zero(parent_id);
    valid.then(|| (trace_id.to_string(), flags.to_string()))
}

fn is_lower_hex(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn is_zero(hex: &str) -> bool {
    hex.bytes().all(|b| b == b'0')
}

/// Text an HTTP header can carry as it is: visible ASCII and spaces.
fn is_header_text(text: &str) -> bool {
    text.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_entry_gets_a_new_span_unless_it_carries_a_valid_traceparent() {
        let id = "0b2f3c4d-5e6f-4a1b-8c9d-0e1f2a3b4c5d";
        let own = Trace::for_message(id, None, None).entry_span(None);
        assert!(own.set_extension);
        assert_eq!(own.span.trace_id, "0b2f3c4d5e6f4a1b8c9d0e1f2a3b4c5d");
        assert_eq!(own.span.traceparent().len(), 55);

        let producer = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let trace = Trace::for_message(id, Some(producer), Some("congo=t61rcWkgMzE"));
        let kept = trace.entry_span(Some(producer));
        assert!(!kept.set_extension);
        assert_eq!(kept.span.traceparent(), producer);
        assert_eq!(kept.span.tracestate(), Some("congo=t61rcWkgMzE"));

        let malformed =
            Trace::for_message(id, Some("00-zz-zz-01"), None).entry_span(Some("00-zz-zz-01"));
        assert!(malformed.set_extension);
        assert_eq!(malformed.span.trace_id, "0b2f3c4d5e6f4a1b8c9d0e1f2a3b4c5d");
    }

    #[test]
    fn the_trace_id_is_the_message_ids_uuid() {
        assert_eq!(
            trace_id_of("0B2F3C4D-5E6F-4A1B-8C9D-0E1F2A3B4C5D"),
            "0b2f3c4d5e6f4a1b8c9d0e1f2a3b4c5d"
        );
        assert_eq!(
            trace_id_of("0b2f3c4d5e6f4a1b8c9d0e1f2a3b4c5d"),
            "0b2f3c4d5e6f4a1b8c9d0e1f2a3b4c5d"
        );
    }

    #[test]
    fn other_ids_get_a_stable_hash_never_zero() {
        for id in [
            "",
            "42",
            "00000000-0000-0000-0000-000000000000",
            "0b2f3c4d-5e6f-4a1b-8c9d-0e1f2a3b4c5", // one digit short
            "0b2f3c4d5e6f-4a1b-8c9d-0e1f2a3b4c5dx",
            "zb2f3c4d-5e6f-4a1b-8c9d-0e1f2a3b4c5d",
        ] {
            let trace_id = trace_id_of(id);
            assert_eq!(trace_id.len(), 32, "{id:?}");
            assert!(is_lower_hex(&trace_id) && !is_zero(&trace_id), "{id:?}");
            assert_eq!(trace_id, trace_id_of(id), "deterministic");
        }
        assert_ne!(trace_id_of("a"), trace_id_of("b"));
    }

    #[test]
    fn every_span_is_new_and_well_formed() {
        let trace = Trace::for_message("0b2f3c4d-5e6f-4a1b-8c9d-0e1f2a3b4c5d", None, None);
        let (first, second) = (trace.new_span(), trace.new_span());
        assert_ne!(first.span_id, second.span_id);
        assert_eq!(first.trace_id, second.trace_id);
        let header = first.traceparent();
        assert_eq!(
            parse_traceparent(&header),
            Some(("0b2f3c4d5e6f4a1b8c9d0e1f2a3b4c5d".into(), "01".into()))
        );
        assert!(header.starts_with("00-0b2f3c4d5e6f4a1b8c9d0e1f2a3b4c5d-"));
        assert_eq!(first.tracestate(), None);
    }

    #[test]
    fn a_valid_traceparent_is_continued_with_its_tracestate() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let trace = Trace::for_message("id", Some(parent), Some("congo=t61rcWkgMzE"));
        let span = trace.new_span();
        assert_eq!(span.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(span.span_id, "00f067aa0ba902b7");
        assert!(span.traceparent().ends_with("-00"), "their flags");
        assert_eq!(span.tracestate(), Some("congo=t61rcWkgMzE"));
        // A later version is read by its known fields.
        let future = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes";
        assert!(parse_traceparent(future).is_some());
    }

    #[test]
    fn an_invalid_traceparent_is_not_continued_and_its_tracestate_is_dropped() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473é-00f067aa0ba902b7-0",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad:?}");
            let trace = Trace::for_message("42", Some(bad), Some("congo=t61rcWkgMzE"));
            let span = trace.new_span();
            assert_eq!(span.trace_id, trace_id_of("42"), "{bad:?}");
            assert_eq!(span.tracestate(), None, "{bad:?}");
        }
    }
}
