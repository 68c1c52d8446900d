//! A message received under a lease ([`ReceivedMessage`]), and how a Get Messages answer's XML
//! becomes one.
//!
//! Why not the SDK's model (`ReceivedMessages` through serde and quick-xml's
//! deserializer): that path cost ~38 k instructions per received message, 11 % of everything
//! the sidecar did per 200-byte message (callgrind, `tests/bench`), and built every field twice
//! (an `Option<String>` model, then ours). This is a pull parser over the same quick-xml
//! reader that keeps only the six fields we use.
//!
//! The text rules are the SDK's, so a message's text is what it was before this module
//! existed, byte for byte (a test holds the two decoders equal on generated answers): element
//! text is XML 1.0 content (a raw CR LF or lone CR becomes LF, as the XML spec says; the
//! service writes a CR that belongs to the message as `&#xD;`, which stays a CR), character
//! and predefined entity references are resolved, CDATA is taken as is, and nothing is trimmed.
//! Where the SDK would fail the whole answer (malformed XML, an unknown entity, a dequeue count
//! that is not a number) this fails too; a date it cannot read is left out instead, because
//! insertion and expiry times only feed the age metric and the `expirytime` extension, and a
//! message is not worth leaving stuck in the queue over them.

use quick_xml::escape::resolve_predefined_entity;
use quick_xml::events::{BytesRef, Event};
use quick_xml::Reader;
use std::fmt;
use std::mem;
use time::OffsetDateTime;

/// A message received under a lease (its visibility timeout).
#[derive(Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// The service-assigned id: stable across redeliveries.
    pub id: String,
    /// Proof of the current lease; needed to delete or update the message. Replaced by every
    /// Update Message. Never logged or forwarded.
    pub pop_receipt: String,
    /// The message text exactly as stored.
    pub text: String,
    /// How many times the message has been received, this time included.
    pub dequeue_count: u32,
    /// When the message was enqueued.
    pub insertion_time: Option<OffsetDateTime>,
    /// When the message expires from the queue.
    pub expiration_time: Option<OffsetDateTime>,
}

impl fmt::Debug for ReceivedMessage {
    /// The pop receipt is a bearer token for the message: keep it out of debug output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReceivedMessage")
            .field("id", &self.id)
            .field("dequeue_count", &self.dequeue_count)
            .field("insertion_time", &self.insertion_time)
            .field("expiration_time", &self.expiration_time)
            .field("text_len", &self.text.len())
            .finish_non_exhaustive()
    }
}

/// The members of `<QueueMessage>` we read; anything else is skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    MessageId,
    PopReceipt,
    MessageText,
    DequeueCount,
    InsertionTime,
    ExpirationTime,
}

impl Field {
    fn named(name: &[u8]) -> Option<Self> {
        Some(match name {
            b"MessageId" => Field::MessageId,
            b"PopReceipt" => Field::PopReceipt,
            b"MessageText" => Field::MessageText,
            b"DequeueCount" => Field::DequeueCount,
            b"InsertionTime" => Field::InsertionTime,
            b"ExpirationTime" => Field::ExpirationTime,
            _ => return None,
        })
    }
}

/// One `<QueueMessage>` as read so far.
#[derive(Debug, Default)]
struct Partial {
    id: Option<String>,
    pop_receipt: Option<String>,
    text: Option<String>,
    dequeue_count: Option<String>,
    insertion_time: Option<String>,
    expiration_time: Option<String>,
}

impl Partial {
    fn set(&mut self, field: Field, value: String) {
        let slot = match field {
            Field::MessageId => &mut self.id,
            Field::PopReceipt => &mut self.pop_receipt,
            Field::MessageText => &mut self.text,
            Field::DequeueCount => &mut self.dequeue_count,
            Field::InsertionTime => &mut self.insertion_time,
            Field::ExpirationTime => &mut self.expiration_time,
        };
        *slot = Some(value);
    }

    fn finish(self) -> Result<ReceivedMessage, String> {
        let (Some(id), Some(pop_receipt)) = (self.id, self.pop_receipt) else {
            return Err("a received message has no id or pop receipt".into());
        };
        let dequeue_count = match self.dequeue_count {
            Some(text) => text
                .trim()
                .parse::<i64>()
                .map_err(|_| format!("DequeueCount {text:?} is not a number"))?,
            None => 1,
        };
        Ok(ReceivedMessage {
            id,
            pop_receipt,
            text: self.text.unwrap_or_default(),
            dequeue_count: dequeue_count.clamp(0, i64::from(u32::MAX)) as u32,
            insertion_time: self.insertion_time.as_deref().and_then(http_date),
            expiration_time: self.expiration_time.as_deref().and_then(http_date),
        })
    }
}

/// The messages of a Get Messages answer body, in the order the service listed them.
pub(super) fn decode(body: &[u8]) -> Result<Vec<ReceivedMessage>, String> {
    let xml = std::str::from_utf8(body).map_err(|_| "the answer is not UTF-8".to_string())?;
    let mut reader = Reader::from_str(xml);
    let mut messages = Vec::new();
    let mut message: Option<Partial> = None;
    // The member being read, and its text so far.
    let mut field: Option<Field> = None;
    let mut value = String::new();
    loop {
        let event = reader
            .read_event()
            .map_err(|e| format!("malformed answer: {e}"))?;
        match event {
            Event::Start(start) => match (start.name().as_ref(), &message) {
                (b"QueueMessage", None) => message = Some(Partial::default()),
                (name, Some(_)) => {
                    field = Field::named(name);
                    value.clear();
                }
                _ => {}
            },
            Event::Empty(empty) => match (empty.name().as_ref(), &mut message) {
                (b"QueueMessage", None) => messages.push(Partial::default().finish()?),
                (name, Some(partial)) => {
                    if let Some(empty_field) = Field::named(name) {
                        partial.set(empty_field, String::new());
                    }
                }
                _ => {}
            },
            Event::Text(text) if field.is_some() => {
                value.push_str(&text.xml10_content().map_err(not_utf8)?)
            }
            Event::CData(data) if field.is_some() => {
                value.push_str(&data.xml10_content().map_err(not_utf8)?)
            }
            Event::GeneralRef(reference) if field.is_some() => resolve(&reference, &mut value)?,
            Event::End(end) => match (end.name().as_ref(), field.take()) {
                (b"QueueMessage", _) => {
                    if let Some(partial) = message.take() {
                        messages.push(partial.finish()?);
                    }
                }
                (_, Some(done)) => {
                    if let Some(partial) = message.as_mut() {
                        partial.set(done, mem::take(&mut value));
                    }
                }
                _ => {}
            },
            Event::Eof if message.is_some() => {
                return Err("the answer ends inside a message".into())
            }
            Event::Eof => break,
            _ => {}
        }
    }
    Ok(messages)
}

/// Appends what a `&...;` reference stands for: a character reference or one of XML's five
/// predefined entities (the answer has no DTD to define others).
fn resolve(reference: &BytesRef<'_>, value: &mut String) -> Result<(), String> {
    let bad = || format!("unknown reference &{};", String::from_utf8_lossy(reference));
    if let Some(char) = reference.resolve_char_ref().map_err(|_| bad())? {
        value.push(char);
        return Ok(());
    }
    let name = reference.decode().map_err(not_utf8)?;
    value.push_str(resolve_predefined_entity(&name).ok_or_else(bad)?);
    Ok(())
}

fn not_utf8(error: quick_xml::encoding::EncodingError) -> String {
    format!("malformed answer: {error}")
}

/// An RFC 7231 date (`Tue, 01 Dec 2026 17:12:25 GMT`), as the service writes times.
fn http_date(text: &str) -> Option<OffsetDateTime> {
    azure_core::time::parse_rfc7231(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use azure_storage_queue::models::ReceivedMessages;

    /// What the SDK's own model makes of `xml`, in our terms.
    fn sdk_decode(xml: &str) -> Vec<ReceivedMessage> {
        let list: ReceivedMessages =
            azure_core::xml::from_xml(xml.as_bytes()).expect("the SDK reads it");
        list.items
            .unwrap_or_default()
            .into_iter()
            .map(|m| ReceivedMessage {
                id: m.message_id.expect("id"),
                pop_receipt: m.pop_receipt.expect("receipt"),
                text: m.message_text.unwrap_or_default(),
                dequeue_count: m.dequeue_count.unwrap_or(1).clamp(0, u32::MAX as i64) as u32,
                insertion_time: m.insertion_time,
                expiration_time: m.expiration_time,
            })
            .collect()
    }

    fn answer(texts: &[&str]) -> String {
        let mut xml = String::from(
            r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?><QueueMessagesList>"#,
        );
        for (i, text) in texts.iter().enumerate() {
            xml.push_str(&format!(
                "<QueueMessage><MessageId>id-{i}</MessageId>\
                 <InsertionTime>Tue, 01 Dec 2026 17:12:25 GMT</InsertionTime>\
                 <ExpirationTime>Tue, 08 Dec 2026 17:12:25 GMT</ExpirationTime>\
                 <PopReceipt>AgAAAAMAAAAAAAAA+/{i}==</PopReceipt>\
                 <TimeNextVisible>Tue, 01 Dec 2026 17:12:55 GMT</TimeNextVisible>\
                 <DequeueCount>{}</DequeueCount><MessageText>{text}</MessageText></QueueMessage>",
                i + 1
            ));
        }
        xml.push_str("</QueueMessagesList>");
        xml
    }

    #[test]
    fn decodes_what_the_sdk_decodes() {
        let texts = [
            "plain",
            "  lead and trail  ",
            " \n ",
            "",
            "a&#xD;\nb",
            "raw\r\ncrlf and lone\rcr",
            "&amp;&lt;&gt;&quot;&apos; &#233; &#x1F600;",
            "é 😀 \u{7f}",
            "<![CDATA[<not> &amp; markup]]>",
            "{\"n\":12345678901234567890123,\"s\":\"&lt;x&gt;\"}",
        ];
        let xml = answer(&texts);
        let ours = decode(xml.as_bytes()).expect("decodes");
        assert_eq!(ours, sdk_decode(&xml));
        assert_eq!(ours.len(), texts.len());
        assert_eq!(ours[4].text, "a\r\nb");
        assert_eq!(ours[5].text, "raw\ncrlf and lone\ncr");
        assert_eq!(ours[9].text, r#"{"n":12345678901234567890123,"s":"<x>"}"#);
        assert_eq!(ours[2].dequeue_count, 3);
        assert_eq!(
            ours[0].insertion_time.map(|t| t.unix_timestamp()),
            Some(1_796_145_145)
        );
    }

    /// Azure Storage starts its XML answers with a UTF-8 byte order mark (Azurite does not);
    /// the SDK strips it, and so must we.
    #[test]
    fn an_answer_with_a_byte_order_mark_decodes_the_same() {
        let xml = answer(&["with a BOM", "&lt;"]);
        let with_bom = [&[0xEF, 0xBB, 0xBF][..], xml.as_bytes()].concat();
        let expected = sdk_decode(&xml);
        assert_eq!(decode(&with_bom).expect("decodes"), expected);
        let sdk_with_bom: ReceivedMessages =
            azure_core::xml::from_xml(&with_bom).expect("the SDK reads it");
        assert_eq!(sdk_with_bom.items.map(|items| items.len()), Some(2));
    }

    #[test]
    fn an_empty_answer_and_empty_members() {
        let empty = r#"<?xml version="1.0" encoding="UTF-8"?><QueueMessagesList />"#;
        assert_eq!(decode(empty.as_bytes()), Ok(vec![]));
        assert_eq!(
            decode(b"<QueueMessagesList></QueueMessagesList>"),
            Ok(vec![])
        );
        let xml = "<QueueMessagesList><QueueMessage><MessageId>m</MessageId>\
                   <PopReceipt>p</PopReceipt><MessageText/></QueueMessage></QueueMessagesList>";
        let ours = decode(xml.as_bytes()).expect("decodes");
        assert_eq!(ours, sdk_decode(xml));
        assert_eq!((ours[0].text.as_str(), ours[0].dequeue_count), ("", 1));
    }

    #[test]
    fn what_the_sdk_refuses_is_refused() {
        for xml in [
            "<QueueMessagesList><QueueMessage><MessageId>m</MessageId><PopReceipt>p</PopReceipt>\
             <MessageText>&bogus;</MessageText></QueueMessage></QueueMessagesList>",
            "<QueueMessagesList><QueueMessage><MessageId>m</MessageId><PopReceipt>p</PopReceipt>\
             <DequeueCount>two</DequeueCount></QueueMessage></QueueMessagesList>",
            "<QueueMessagesList><QueueMessage><MessageId>m</MessageId></QueueMessage></QueueMessagesList>",
            "<QueueMessagesList><QueueMessage><MessageId>m</Message",
        ] {
            assert!(decode(xml.as_bytes()).is_err(), "{xml}");
        }
        assert!(decode(&[0x3c, 0xff, 0x3e]).is_err());
    }

    /// Message text as the service may write it: each character plain, as a character
    /// reference or a predefined entity where one exists, sometimes inside CDATA.
    fn written(text: &str, style: &[u8]) -> String {
        let mut xml = String::new();
        for (i, c) in text.chars().enumerate() {
            let style = style.get(i % style.len().max(1)).copied().unwrap_or(0) % 4;
            match (c, style) {
                ('&', 0 | 1) => xml.push_str("&amp;"),
                ('<', 0 | 1) => xml.push_str("&lt;"),
                ('&' | '<', _) => xml.push_str(&format!("&#{};", c as u32)),
                ('>', 1) => xml.push_str("&gt;"),
                ('"', 1) => xml.push_str("&quot;"),
                ('\'', 1) => xml.push_str("&apos;"),
                ('\r', 0) => xml.push_str("&#xD;"),
                (c, 2) if c != '\0' => xml.push_str(&format!("&#x{:X};", c as u32)),
                (c, 3) if c != ']' && c != '\0' => xml.push_str(&format!("<![CDATA[{c}]]>")),
                (c, _) if c != '\0' => xml.push(c),
                _ => {}
            }
        }
        xml
    }

    proptest::proptest! {
        #[test]
        fn any_text_decodes_as_the_sdk_decodes_it(
            texts in proptest::collection::vec(proptest::prelude::any::<String>(), 0..4),
            style in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..8),
        ) {
            let written: Vec<String> = texts.iter().map(|t| written(t, &style)).collect();
            let refs: Vec<&str> = written.iter().map(String::as_str).collect();
            let xml = answer(&refs);
            proptest::prop_assert_eq!(decode(xml.as_bytes()).expect("decodes"), sdk_decode(&xml));
        }
    }

    #[test]
    fn an_unreadable_date_is_left_out_not_fatal() {
        let xml =
            "<QueueMessagesList><QueueMessage><MessageId>m</MessageId><PopReceipt>p</PopReceipt>\
                   <InsertionTime>yesterday</InsertionTime><MessageText>t</MessageText>\
                   </QueueMessage></QueueMessagesList>";
        let ours = decode(xml.as_bytes()).expect("decodes");
        assert_eq!((ours[0].insertion_time, ours[0].text.as_str()), (None, "t"));
    }
}
