//! The poison queue: where messages go that cannot be delivered.
//!
//! Azure Queue Storage has no dead-letter queue; `<queue>-poison` is the Azure Functions
//! convention, and we follow it. Unlike Functions, whose copy keeps only the body, the poison
//! message here is a JSON envelope with what an operator needs to understand and replay it:
//!
//! ```json
//! {"schema":"azure-queue-sidecar.poison.v1","queue":"orders","messageId":"…",
//!  "insertionTime":"…","dequeueCount":5,"reason":"attempts_exhausted","lastStatus":500,
//!  "lastError":"HTTP 500","failedAt":"…","text":"<the original message text, unchanged>"}
//! ```
//!
//! A queue message is at most 64 KiB. If the envelope would exceed that (the original was
//! already near the limit), the original text is written alone, unchanged, and the metadata goes
//! to the log line of the poisoning instead: the message itself is never truncated or lost.
//!
//! [`open`] reads a poison message back (for `poison peek` and `poison redrive`): an envelope
//! gives the original text and what happened; anything else is taken as the original text
//! stored alone.
//!
//! The poison queue is created only when `CREATE_POISON_QUEUE=true`; otherwise a missing queue,
//! like a missing permission, keeps the message in the main queue.

use crate::pipeline::policy::PoisonReason;
use crate::queue::{Budget, Queue, QueueError, QueueErrorKind, ReceivedMessage};
use serde_json::json;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// The largest message the queue service accepts.
pub(crate) const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// The identifier of the envelope format.
pub(crate) const SCHEMA: &str = "azure-queue-sidecar.poison.v1";

/// Why a message could not be written to the poison queue.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum PoisonError {
    #[error("the poison queue does not exist (set CREATE_POISON_QUEUE=true or create it)")]
    Missing,
    #[error("the identity may not add messages to the poison queue (403)")]
    Denied,
    #[error(transparent)]
    Queue(QueueError),
}

impl PoisonError {
    /// The `poison_blocked_total` label: `missing`, `denied` or `failed`.
    pub(crate) fn cause(&self) -> &'static str {
        match self {
            PoisonError::Missing => "missing",
            PoisonError::Denied => "denied",
            PoisonError::Queue(_) => "failed",
        }
    }
}

/// The text written to the poison queue for `message`.
pub(crate) fn envelope(
    queue_name: &str,
    message: &ReceivedMessage,
    reason: &PoisonReason,
    failed_at: OffsetDateTime,
) -> String {
    let format = |t: OffsetDateTime| t.format(&Rfc3339).ok();
    let status = match reason.failure() {
        Some(crate::pipeline::endpoint::Failure::Status(status)) => Some(*status),
        _ => None,
    };
    let document = json!({
        "schema": SCHEMA,
        "queue": queue_name,
        "messageId": message.id,
        "insertionTime": message.insertion_time.and_then(format),
        "dequeueCount": message.dequeue_count,
        "reason": reason.label(),
        "lastStatus": status,
        "lastError": reason.describe(),
        "failedAt": format(failed_at),
        "text": message.text,
    });
    let text = document.to_string();
    if text.len() <= MAX_MESSAGE_BYTES {
        text
    } else {
        message.text.clone()
    }
}

/// What happened to a poisoned message, as its envelope says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Record {
    /// The queue the message was poisoned from.
    pub queue: Option<String>,
    /// The message's id in that queue.
    pub message_id: Option<String>,
    pub insertion_time: Option<String>,
    pub dequeue_count: Option<u64>,
    pub reason: Option<String>,
    pub last_status: Option<u64>,
    pub last_error: Option<String>,
    pub failed_at: Option<String>,
}

/// A poison message, read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Opened {
    /// An envelope: the record, and the original text (exactly as the main queue held it).
    Envelope { record: Record, text: String },
    /// Not an envelope: the original text stored alone (the envelope would have exceeded
    /// 64 KiB), or a message someone else wrote. Its text is the whole message.
    Raw,
}

/// Reads a poison message's text. An envelope is a JSON object whose `schema` is [`SCHEMA`]
/// and whose `text` is a string; anything else is [`Opened::Raw`].
pub(crate) fn open(text: &str) -> Opened {
    let Ok(serde_json::Value::Object(document)) = serde_json::from_str(text) else {
        return Opened::Raw;
    };
    if document.get("schema").and_then(|v| v.as_str()) != Some(SCHEMA) {
        return Opened::Raw;
    }
    let Some(original) = document.get("text").and_then(|v| v.as_str()) else {
        return Opened::Raw;
    };
    let string = |name: &str| {
        document
            .get(name)
            .and_then(|v| v.as_str())
            .map(String::from)
    };
    let number = |name: &str| document.get(name).and_then(|v| v.as_u64());
    Opened::Envelope {
        record: Record {
            queue: string("queue"),
            message_id: string("messageId"),
            insertion_time: string("insertionTime"),
            dequeue_count: number("dequeueCount"),
            reason: string("reason"),
            last_status: number("lastStatus"),
            last_error: string("lastError"),
            failed_at: string("failedAt"),
        },
        text: original.to_string(),
    }
}

/// The poison queue, possibly created on first use.
#[derive(Debug, Clone)]
pub(crate) struct PoisonQueue {
    queue: Queue,
    create: bool,
}

impl PoisonQueue {
    pub(crate) fn new(queue: Queue, create: bool) -> Self {
        Self { queue, create }
    }

    pub(crate) fn name(&self) -> &str {
        self.queue.name()
    }

    /// Writes `text` to the poison queue, retrying within `budget` (the message's lease),
    /// creating the queue first if allowed and needed.
    ///
    /// Put Message is not idempotent: a retry after a try whose answer was lost can leave two
    /// copies. An error whose [`QueueError::maybe_applied`] is true means a copy may exist.
    pub(crate) async fn put(&self, text: &str, budget: Budget) -> Result<(), PoisonError> {
        match self.queue.send_within(text, budget).await {
            Ok(_) => Ok(()),
            Err(error) if error.kind == QueueErrorKind::QueueNotFound && self.create => {
                self.queue.create().await.map_err(classify)?;
                self.queue
                    .send_within(text, budget)
                    .await
                    .map(drop)
                    .map_err(classify)
            }
            Err(error) => Err(classify(error)),
        }
    }
}

fn classify(error: QueueError) -> PoisonError {
    match error.kind {
        QueueErrorKind::QueueNotFound => PoisonError::Missing,
        QueueErrorKind::Unauthorized => PoisonError::Denied,
        _ => PoisonError::Queue(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::endpoint::Failure;

    fn message(text: &str) -> ReceivedMessage {
        ReceivedMessage {
            id: "m-1".into(),
            pop_receipt: "secret-receipt".into(),
            text: text.into(),
            dequeue_count: 5,
            insertion_time: Some(OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("t")),
            expiration_time: None,
        }
    }

    #[test]
    fn the_envelope_keeps_the_text_and_says_what_happened() {
        let reason = PoisonReason::AttemptsExhausted(Failure::Status(500));
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_100).expect("t");
        let text = envelope("orders", &message("{\"a\": 1}  <&>"), &reason, now);
        let doc: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(doc["schema"], SCHEMA);
        assert_eq!(doc["text"], "{\"a\": 1}  <&>");
        assert_eq!(doc["messageId"], "m-1");
        assert_eq!(doc["queue"], "orders");
        assert_eq!(doc["dequeueCount"], 5);
        assert_eq!(doc["reason"], "attempts_exhausted");
        assert_eq!(doc["lastStatus"], 500);
        assert_eq!(doc["lastError"], "HTTP 500");
        assert_eq!(doc["insertionTime"], "2023-11-14T22:13:20Z");
        assert_eq!(doc["failedAt"], "2023-11-14T22:15:00Z");
        assert!(!text.contains("secret-receipt"));
    }

    #[test]
    fn an_envelope_opens_to_the_original_text_and_its_record() {
        let reason = PoisonReason::AttemptsExhausted(Failure::Status(503));
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_100).expect("t");
        let original = "{\"a\": 1}\t<&> \u{e9}\u{1f600} \\ \"q\"";
        let Opened::Envelope { record, text } =
            open(&envelope("orders", &message(original), &reason, now))
        else {
            panic!("an envelope");
        };
        assert_eq!(text, original);
        assert_eq!(record.queue.as_deref(), Some("orders"));
        assert_eq!(record.message_id.as_deref(), Some("m-1"));
        assert_eq!(record.dequeue_count, Some(5));
        assert_eq!(record.reason.as_deref(), Some("attempts_exhausted"));
        assert_eq!(record.last_status, Some(503));
        assert_eq!(record.failed_at.as_deref(), Some("2023-11-14T22:15:00Z"));
    }

    #[test]
    fn anything_but_an_envelope_is_raw_text() {
        for text in [
            "",
            "plain",
            "{\"a\":1}",
            "[1,2]",
            "{\"schema\":\"azure-queue-sidecar.poison.v1\"}",
            "{\"schema\":\"other\",\"text\":\"x\"}",
            "{\"schema\":\"azure-queue-sidecar.poison.v1\",\"text\":7}",
        ] {
            assert_eq!(open(text), Opened::Raw, "{text}");
        }
        let big = "y".repeat(MAX_MESSAGE_BYTES - 10);
        let reason = PoisonReason::Rejected(Failure::Status(413));
        let stored = envelope("orders", &message(&big), &reason, OffsetDateTime::now_utc());
        assert_eq!(open(&stored), Opened::Raw);
    }

    #[test]
    fn an_envelope_over_64_kib_falls_back_to_the_unchanged_text() {
        let big = "y".repeat(MAX_MESSAGE_BYTES - 10);
        let reason = PoisonReason::Rejected(Failure::Status(413));
        let text = envelope("orders", &message(&big), &reason, OffsetDateTime::now_utc());
        assert_eq!(text, big);
    }
}
