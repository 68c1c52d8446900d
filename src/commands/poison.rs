//! `poison peek` and `poison redrive`: the poison queue's operator tools, from inside the
//! container (a scratch image has no shell, az CLI or Storage Explorer).
//!
//! Both read the same variables as the sidecar, through the same bootstrap: `QUEUE_NAME`, the
//! credential and `POISON_QUEUE_NAME` say which two queues they work on.
//!
//! **peek** uses Peek Messages: nothing is leased, hidden, removed or counted as a dequeue.
//! Peek Messages returns at most 32 messages from the front of the queue and cannot page, so
//! `--max` above 32 shows 32 (and says so on stderr). Exit 0; 1 when the poison queue cannot be
//! read.
//!
//! **redrive** receives poison messages (leased for [`LEASE`]), sends each one's original text
//! to the main queue — unwrapped from the envelope, byte for byte; a message that is not an
//! envelope (the original stored alone because the envelope would have exceeded 64 KiB) as it
//! is — and deletes it from the poison queue only after the send succeeded. A crash or a
//! failed delete between the two leaves a copy in both queues (a duplicate, never a loss). A
//! message it does not move (poisoned from another queue, or poisoned again after this run
//! moved it: the sidecar is still failing it) is made visible again at the end, so a redrive
//! next to a running sidecar ends instead of going round in circles. A failed send
//! stops the redrive: that message is made visible again at once, the rest stays untouched.
//! Exit 0 when every message it took was moved; 1 otherwise. `--dry-run` peeks instead
//! (changing nothing) and prints what would move; like peek, it sees at most 32.

use super::bootstrap::{block_on, Settings, USAGE_ERROR};
use super::cli::PoisonCommand;
use crate::error_text;
use crate::pipeline::poison::{self, Opened, Record};
use crate::queue::{
    Budget, PeekedMessage, Queue, QueueError, ReceivedMessage, MAX_MESSAGES_PER_CALL, MAX_TRY,
};
use serde_json::json;
use std::collections::HashSet;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// How long a redrive leases the poison messages it took: room for a send and a delete,
/// each with retries.
const LEASE: Duration = Duration::from_secs(60);
/// How long one queue call of these commands may retry.
const CALL_WINDOW: Duration = Duration::from_secs(10);
/// How much of a message's text a line shows (characters).
const PREFIX_CHARS: usize = 80;

/// Runs a poison command; the exit status.
pub(crate) fn main(command: PoisonCommand) -> ExitCode {
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("azure-queue-sidecar: configuration error: {error}");
            return ExitCode::from(USAGE_ERROR);
        }
    };
    block_on(async move {
        let queues = match settings.clients() {
            Ok(clients) => settings.queues(&clients),
            Err(error) => return fail(format!("cannot build the HTTP client: {error}")),
        };
        let (main, poison) = match (
            queues.queue(settings.storage.queue_url.clone()),
            queues.queue(settings.storage.poison_queue_url.clone()),
        ) {
            (Ok(main), Ok(poison)) => (main, poison),
            (Err(error), _) | (_, Err(error)) => {
                return fail(format!("cannot build the queue client: {error}"))
            }
        };
        match command {
            PoisonCommand::Peek { max, json } => peek(&poison, max, json).await,
            PoisonCommand::Redrive { max, dry_run: true } => dry_run(&main, &poison, max).await,
            PoisonCommand::Redrive {
                max,
                dry_run: false,
            } => Redrive::new(&main, &poison, max).run().await,
        }
    })
    .unwrap_or_else(|code| code)
}

fn fail(why: String) -> ExitCode {
    eprintln!("azure-queue-sidecar: {why}");
    ExitCode::FAILURE
}

/// "cannot read the poison queue" with the reason and what to check.
fn unreadable(poison: &Queue, error: &QueueError) -> ExitCode {
    fail(format!(
        "cannot read the poison queue {}: {error}; {}",
        poison.name(),
        error.kind.hint()
    ))
}

/// At most 32: what one Peek Messages call returns; said on stderr when more was asked.
fn peek_count(max: u64) -> u32 {
    let count = max.min(u64::from(MAX_MESSAGES_PER_CALL)) as u32;
    if max > u64::from(count) {
        eprintln!(
            "note: Peek Messages returns at most {MAX_MESSAGES_PER_CALL} messages and cannot page: showing the first {count}"
        );
    }
    count
}

/// The front of the poison queue, at most `count` messages, untouched.
async fn peek_front(poison: &Queue, count: u32) -> Result<Vec<PeekedMessage>, QueueError> {
    poison
        .peek_within(count, Budget::retry_for(CALL_WINDOW, MAX_TRY))
        .await
}

async fn peek(poison: &Queue, max: u32, json: bool) -> ExitCode {
    let count = peek_count(u64::from(max));
    let messages = match peek_front(poison, count).await {
        Ok(messages) => messages,
        Err(error) => return unreadable(poison, &error),
    };
    for message in &messages {
        let line = Line::from_peeked(message);
        println!("{}", if json { line.json() } else { line.text() });
    }
    let more = if messages.len() as u32 == MAX_MESSAGES_PER_CALL {
        " (the queue may hold more: peek sees only the front)"
    } else {
        ""
    };
    eprintln!(
        "{} poison message(s) shown from {}{more}",
        messages.len(),
        poison.name()
    );
    ExitCode::SUCCESS
}

async fn dry_run(main: &Queue, poison: &Queue, max: Option<u64>) -> ExitCode {
    let count = peek_count(max.unwrap_or(u64::from(MAX_MESSAGES_PER_CALL)));
    let messages = match peek_front(poison, count).await {
        Ok(messages) => messages,
        Err(error) => return unreadable(poison, &error),
    };
    let mut movable = 0;
    for message in &messages {
        let opened = poison::open(&message.text);
        match foreign_queue(&opened, main.name()) {
            Some(other) => println!(
                "would skip {}: poisoned from queue {other}, not {}",
                message.id,
                main.name()
            ),
            None => {
                movable += 1;
                println!(
                    "would move {} to {}: {}",
                    message.id,
                    main.name(),
                    Line::from_peeked(message).text()
                );
            }
        }
    }
    println!(
        "dry run: {movable} of {} poison message(s) seen would move to {}; nothing changed",
        messages.len(),
        main.name()
    );
    ExitCode::SUCCESS
}

/// The queue an envelope says its message came from, when that is not `main`.
fn foreign_queue<'a>(opened: &'a Opened, main: &str) -> Option<&'a str> {
    match opened {
        Opened::Envelope {
            record: Record {
                queue: Some(queue), ..
            },
            ..
        } if queue != main => Some(queue),
        _ => None,
    }
}

/// The text to send back to the main queue: the original, exactly.
fn original_text<'a>(opened: &'a Opened, stored: &'a str) -> &'a str {
    match opened {
        Opened::Envelope { text, .. } => text,
        Opened::Raw => stored,
    }
}

/// One redrive run: what it moved, what it holds to give back, what failed.
struct Redrive<'a> {
    main: &'a Queue,
    poison: &'a Queue,
    max: Option<u64>,
    /// The main-queue ids of the messages this run sent: an envelope naming one of them is
    /// a message the sidecar failed again after this run moved it, not to move again.
    sent_ids: HashSet<String>,
    /// Hashes of the raw texts this run sent (a raw message names no id), for the same.
    sent_raw: HashSet<u64>,
    moved: u64,
    skipped: u64,
    failed: u64,
    /// Messages taken but not moved: made visible again at the end.
    held: Vec<ReceivedMessage>,
    /// Every message id taken, so a message seen again (its lease ran out) is not moved twice.
    seen: HashSet<String>,
}

impl<'a> Redrive<'a> {
    fn new(main: &'a Queue, poison: &'a Queue, max: Option<u64>) -> Self {
        Self {
            main,
            poison,
            max,
            sent_ids: HashSet::new(),
            sent_raw: HashSet::new(),
            moved: 0,
            skipped: 0,
            failed: 0,
            held: Vec::new(),
            seen: HashSet::new(),
        }
    }

    async fn run(mut self) -> ExitCode {
        let outcome = self.move_all().await;
        self.give_back().await;
        println!(
            "redrive: moved {} message(s) from {} to {}, skipped {}, failed {}",
            self.moved,
            self.poison.name(),
            self.main.name(),
            self.skipped,
            self.failed
        );
        match outcome {
            Err(code) => code,
            Ok(()) if self.failed > 0 => ExitCode::FAILURE,
            Ok(()) => ExitCode::SUCCESS,
        }
    }

    /// Takes batches until the queue has nothing movable left, `--max` is reached or a send
    /// fails.
    async fn move_all(&mut self) -> Result<(), ExitCode> {
        loop {
            let wanted = match self.max {
                Some(max) if self.moved >= max => return Ok(()),
                Some(max) => (max - self.moved).min(u64::from(MAX_MESSAGES_PER_CALL)) as u32,
                None => MAX_MESSAGES_PER_CALL,
            };
            let batch = self
                .poison
                .receive_within(wanted, LEASE, Budget::retry_for(CALL_WINDOW, MAX_TRY))
                .await
                .map_err(|error| unreadable(self.poison, &error))?;
            let leased_until = batch.leased_until;
            let mut progress = false;
            let mut messages = batch.messages.into_iter();
            while let Some(message) = messages.next() {
                if !self.seen.insert(message.id.clone()) {
                    // Taken earlier in this run and not moved: keep its newest receipt.
                    self.held.retain(|held| held.id != message.id);
                    self.held.push(message);
                    continue;
                }
                progress = true;
                if let Err(stop) = self.move_one(message, leased_until).await {
                    // Not sent: the rest of this batch goes back untouched.
                    self.held.extend(messages);
                    return Err(stop);
                }
            }
            if !progress {
                return Ok(());
            }
        }
    }

    /// Sends `message`'s original text to the main queue, then deletes it from the poison
    /// queue; holds it (to give back) when it is not to move. `Err` stops the redrive.
    async fn move_one(
        &mut self,
        message: ReceivedMessage,
        leased_until: Instant,
    ) -> Result<(), ExitCode> {
        let opened = poison::open(&message.text);
        if let Some(other) = foreign_queue(&opened, self.main.name()) {
            println!(
                "skipped {}: poisoned from queue {other}, not {}",
                message.id,
                self.main.name()
            );
            self.hold(message);
            return Ok(());
        }
        if self.sent_before(&opened, &message.text) {
            println!(
                "skipped {}: this redrive moved it already and it was poisoned again (the sidecar is still failing it)",
                message.id
            );
            self.hold(message);
            return Ok(());
        }
        let text = original_text(&opened, &message.text);
        let sent = self
            .main
            .send_within(
                text,
                Budget::until(leased_until.checked_sub(LEASE / 2).unwrap_or(leased_until)),
            )
            .await;
        let new_id = match sent {
            Ok(new_id) => new_id,
            Err(error) => {
                self.failed += 1;
                let copy = if error.maybe_applied() {
                    " (the send may have arrived: the main queue may hold a copy)"
                } else {
                    ""
                };
                eprintln!(
                    "cannot send {} to {}: {}; {}{copy}; stopping, the message stays in {}",
                    message.id,
                    self.main.name(),
                    error_text::one_line(&error),
                    error.kind.hint(),
                    self.poison.name()
                );
                // Failed, not skipped: given back like the untouched rest.
                self.held.push(message);
                return Err(ExitCode::FAILURE);
            }
        };
        self.sent_ids.insert(new_id.clone());
        if opened == Opened::Raw {
            self.sent_raw.insert(text_hash(&message.text));
        }
        let line = Line::from_received(&message, &opened);
        match self
            .poison
            .delete_within(
                &message.id,
                &message.pop_receipt,
                Budget::until(leased_until),
            )
            .await
        {
            Ok(_) => {
                self.moved += 1;
                println!(
                    "moved {} to {} as {new_id}: {}",
                    message.id,
                    self.main.name(),
                    line.text()
                );
            }
            Err(error) => {
                // Sent but still in the poison queue: a second copy, never a loss.
                self.failed += 1;
                eprintln!(
                    "sent {} to {} as {new_id} but could not delete it from {}: {}; it stays there too (a duplicate if redriven again)",
                    message.id,
                    self.main.name(),
                    self.poison.name(),
                    error_text::one_line(&error)
                );
            }
        }
        Ok(())
    }

    /// Whether `opened` is a message this run already sent to the main queue.
    fn sent_before(&self, opened: &Opened, stored: &str) -> bool {
        match opened {
            Opened::Envelope { record, .. } => record
                .message_id
                .as_ref()
                .is_some_and(|id| self.sent_ids.contains(id)),
            Opened::Raw => self.sent_raw.contains(&text_hash(stored)),
        }
    }

    fn hold(&mut self, message: ReceivedMessage) {
        self.skipped += 1;
        self.held.push(message);
    }

    /// Makes every message taken but not moved visible again (otherwise it would stay hidden
    /// until its lease ends).
    async fn give_back(&mut self) {
        for message in std::mem::take(&mut self.held) {
            let released = self
                .poison
                .update_within(
                    &message.id,
                    &message.pop_receipt,
                    Duration::ZERO,
                    Budget::retry_for(CALL_WINDOW, MAX_TRY),
                )
                .await;
            if let Err(error) = released {
                eprintln!(
                    "could not make {} visible again ({}); it reappears within {}s",
                    message.id,
                    error_text::one_line(&error),
                    LEASE.as_secs()
                );
            }
        }
    }
}

/// One poison message as a line of output.
struct Line {
    poison_id: String,
    inserted: Option<OffsetDateTime>,
    record: Option<Record>,
    /// The original text.
    text: String,
}

impl Line {
    fn from_peeked(message: &PeekedMessage) -> Self {
        Self::new(
            &message.id,
            message.insertion_time,
            &poison::open(&message.text),
            &message.text,
        )
    }

    fn from_received(message: &ReceivedMessage, opened: &Opened) -> Self {
        Self::new(&message.id, message.insertion_time, opened, &message.text)
    }

    fn new(id: &str, inserted: Option<OffsetDateTime>, opened: &Opened, stored: &str) -> Self {
        let record = match opened {
            Opened::Envelope { record, .. } => Some(record.clone()),
            Opened::Raw => None,
        };
        Self {
            poison_id: id.to_string(),
            inserted,
            record,
            text: original_text(opened, stored).to_string(),
        }
    }

    fn prefix(&self) -> (&str, bool) {
        match self.text.char_indices().nth(PREFIX_CHARS) {
            Some((end, _)) => (&self.text[..end], true),
            None => (&self.text, false),
        }
    }

    /// `key=value` pairs; the text prefix quoted and escaped (one line whatever it holds).
    fn text(&self) -> String {
        let (prefix, cut) = self.prefix();
        let text = format!(
            "text=\"{}\"{} ({} bytes)",
            escape(prefix),
            if cut { "…" } else { "" },
            self.text.len()
        );
        let Some(record) = &self.record else {
            return format!(
                "id={} poisoned_at={} envelope=none (the original text stored alone: the envelope would have exceeded 64 KiB; see the sidecar's log line for why) {text}",
                self.poison_id,
                format_time(self.inserted).unwrap_or_else(|| "?".into()),
            );
        };
        let or_unknown = |value: &Option<String>| value.clone().unwrap_or_else(|| "?".into());
        let last = match (&record.last_error, record.last_status) {
            (Some(error), _) => error.clone(),
            (None, Some(status)) => format!("HTTP {status}"),
            (None, None) => "?".into(),
        };
        format!(
            "id={} failed_at={} message_id={} queue={} reason={} attempts={} last=\"{}\" {text}",
            self.poison_id,
            or_unknown(&record.failed_at),
            or_unknown(&record.message_id),
            or_unknown(&record.queue),
            or_unknown(&record.reason),
            record
                .dequeue_count
                .map_or_else(|| "?".into(), |n| n.to_string()),
            escape(&last),
        )
    }

    /// One JSON object.
    fn json(&self) -> String {
        let (prefix, _) = self.prefix();
        let record = self.record.clone().unwrap_or_default();
        json!({
            "poisonMessageId": self.poison_id,
            "poisonedAt": format_time(self.inserted),
            "envelope": self.record.is_some(),
            "queue": record.queue,
            "messageId": record.message_id,
            "insertionTime": record.insertion_time,
            "dequeueCount": record.dequeue_count,
            "reason": record.reason,
            "lastStatus": record.last_status,
            "lastError": record.last_error,
            "failedAt": record.failed_at,
            "textBytes": self.text.len(),
            "textPrefix": prefix,
        })
        .to_string()
    }
}

/// `text` fit for a double-quoted field on one line: quotes, backslashes and control
/// characters escaped, everything else as it is.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.extend(c.escape_default()),
            c => out.push(c),
        }
    }
    out
}

fn text_hash(text: &str) -> u64 {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut hasher = DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}

fn format_time(time: Option<OffsetDateTime>) -> Option<String> {
    time.and_then(|t| t.format(&Rfc3339).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str) -> Line {
        Line::from_peeked(&PeekedMessage {
            id: "p-1".into(),
            text: text.into(),
            dequeue_count: 0,
            insertion_time: OffsetDateTime::from_unix_timestamp(1_700_000_000).ok(),
        })
    }

    #[test]
    fn an_envelope_line_says_what_happened_on_one_line() {
        let stored = serde_json::json!({
            "schema": poison::SCHEMA, "queue": "orders", "messageId": "m-1",
            "dequeueCount": 5, "reason": "attempts_exhausted", "lastStatus": 500,
            "lastError": "HTTP 500", "failedAt": "2023-11-14T22:15:00Z",
            "text": "line one\nline \"two\"",
        })
        .to_string();
        let text = line(&stored).text();
        assert_eq!(
            text,
            "id=p-1 failed_at=2023-11-14T22:15:00Z message_id=m-1 queue=orders reason=attempts_exhausted attempts=5 last=\"HTTP 500\" text=\"line one\\nline \\\"two\\\"\" (19 bytes)"
        );
        let json: serde_json::Value = serde_json::from_str(&line(&stored).json()).expect("json");
        assert_eq!(json["messageId"], "m-1");
        assert_eq!(json["envelope"], true);
        assert_eq!(json["textPrefix"], "line one\nline \"two\"");
        assert_eq!(json["poisonedAt"], "2023-11-14T22:13:20Z");
    }

    #[test]
    fn raw_text_is_shown_as_such_with_a_prefix() {
        let big = "é".repeat(200);
        let text = line(&big).text();
        assert!(text.starts_with("id=p-1 poisoned_at=2023-11-14T22:13:20Z envelope=none"));
        assert!(text.contains(&format!("text=\"{}\"… (400 bytes)", "é".repeat(80))));
        let json: serde_json::Value = serde_json::from_str(&line(&big).json()).expect("json");
        assert_eq!(json["envelope"], false);
        assert_eq!(json["textBytes"], 400);
        assert!(json["messageId"].is_null());
        assert_eq!(escape("a'b\"c\\d\te\u{1b}"), "a'b\\\"c\\\\d\\te\\u{1b}");
    }

    #[test]
    fn only_envelopes_from_another_queue_are_foreign() {
        let from = |queue: Option<&str>| Opened::Envelope {
            record: Record {
                queue: queue.map(String::from),
                ..Record::default()
            },
            text: String::new(),
        };
        assert_eq!(
            foreign_queue(&from(Some("billing")), "orders"),
            Some("billing")
        );
        assert_eq!(foreign_queue(&from(Some("orders")), "orders"), None);
        assert_eq!(foreign_queue(&from(None), "orders"), None);
        assert_eq!(foreign_queue(&Opened::Raw, "orders"), None);
        assert_eq!(original_text(&Opened::Raw, "as stored"), "as stored");
    }
}
