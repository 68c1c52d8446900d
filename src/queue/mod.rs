//! The queue: a thin, typed layer over the official `azure_storage_queue` client.
//!
//! It does four things the raw client does not: it builds the client on our own `reqwest`
//! transport and authorization policies, it turns SDK models (all `Option`s) into a
//! [`ReceivedMessage`] the rest of the crate can trust, it classifies failures into
//! [`QueueErrorKind`]s that the receive loop can act on (back off, report, or treat a lost lease
//! as someone else's message), and it is the **one retry layer** of every queue call.
//!
//! ## Retries
//!
//! The SDK's own retry policy is off: a call is retried here, and only here, with backoff, for
//! as long as its [`Budget`] allows — for a call on a leased message, until shortly before the
//! lease ends, each try bounded so that a hung try leaves room for another. Stacked retry
//! layers (the SDK's under ours) multiplied tries, hid the time spent, and replayed one
//! `Request` through per-try policies that were not written for it.
//!
//! A try whose answer never arrived (reset, timeout) may still have been applied by the
//! service. The error says so ([`QueueError::outcome_unknown`]), and a retried Delete that then
//! finds the message gone reports [`Deleted::ByEarlierTry`] instead of a lost lease.
//!
//! Error text is passed through [`redact::secrets`] because transport errors quote request URLs, and
//! SAS tokens travel in URLs. Every try's latency is reported for the queue-call histogram.

mod error;
mod received;
mod retry;

pub use received::ReceivedMessage;

pub use error::QueueError;
pub(crate) use error::{Operation, QueueErrorKind};
pub(crate) use retry::{Budget, MAX_TRY};

use crate::auth::Credential;
use crate::telemetry::events::{InternalEvent, QueueCallCompleted};
use azure_core::http::headers::HeaderName;
use azure_core::http::{ClientOptions, RetryOptions, Transport};
use azure_storage_queue::models::{
    QueueClientGetPropertiesResultHeaders, QueueClientPeekMessagesOptions,
    QueueClientReceiveMessagesOptions, QueueClientSendMessageOptions, QueueMessage,
};
use azure_storage_queue::{QueueClient, QueueClientOptions};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use url::Url;

/// The header carrying the new pop receipt after Update Message.
const POP_RECEIPT: HeaderName = HeaderName::from_static("x-ms-popreceipt");

/// How a Delete ended well.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Deleted {
    /// The service confirmed it.
    Now,
    /// A retry found the message gone after a try whose answer was lost: that try deleted it.
    ByEarlierTry,
}

/// A lease after Update Message: the new pop receipt and until when (at least) the message
/// stays invisible, counted from when the successful try was sent.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Leased {
    pub pop_receipt: String,
    pub until: Instant,
}

impl fmt::Debug for Leased {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leased")
            .field("until", &self.until)
            .finish_non_exhaustive()
    }
}

/// Messages from one Get Messages call, leased until (at least) `leased_until`: the instant the
/// successful try was sent plus the visibility timeout.
#[derive(Debug, Clone)]
pub(crate) struct Batch {
    pub messages: Vec<ReceivedMessage>,
    pub leased_until: Instant,
}

/// The most messages one Get Messages or Peek Messages call returns (the service's limit).
pub(crate) const MAX_MESSAGES_PER_CALL: u32 = 32;

/// A message seen by Peek Messages: visible, not leased, untouched (no pop receipt, the
/// dequeue count not bumped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeekedMessage {
    pub id: String,
    /// The message text exactly as stored.
    pub text: String,
    /// How many times the message has been received so far.
    pub dequeue_count: u32,
    /// When the message was enqueued (whole seconds: the service's resolution).
    pub insertion_time: Option<OffsetDateTime>,
}

/// One queue, with an authorized client.
#[derive(Clone)]
pub struct Queue {
    client: Arc<QueueClient>,
    /// The client Get Messages goes through: the same as `client` unless the connector has a
    /// separate receive transport (see [`QueueConnector::with_receive_transport`]).
    receiver: Arc<QueueClient>,
    url: Url,
    name: String,
}

impl fmt::Debug for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("url", &self.url.as_str())
            .finish()
    }
}

/// Settings shared by every queue client the sidecar builds.
#[derive(Clone)]
pub struct QueueConnector {
    credential: Credential,
    http: reqwest::Client,
    receive_http: Option<reqwest::Client>,
}

impl QueueConnector {
    /// `http` is the reqwest client used as transport for every queue call.
    pub(crate) fn new(credential: Credential, http: reqwest::Client) -> Self {
        Self {
            credential,
            http,
            receive_http: None,
        }
    }

    /// Sends Get Messages over `http`, a client with its own connection pool.
    ///
    /// Why: hyper grows a connection's read buffer to fit large responses (up to ~400 KiB) and
    /// keeps it for the connection's life. A Get of 32 large messages is such a response,
    /// while deletes and updates answer with a few hundred bytes. On one shared pool every
    /// connection sooner or later carries a Get, and with `MAX_IN_FLIGHT` deletes in parallel
    /// there are that many connections: with 64 KiB messages, about 40 × 400 KiB of read
    /// buffers (most of the peak RSS, measured with massif in `tests/bench`). A pool of its
    /// own keeps the big buffer on the one connection that receives.
    pub(crate) fn with_receive_transport(mut self, http: reqwest::Client) -> Self {
        self.receive_http = Some(http);
        self
    }

    /// A client for the queue at `url` (a queue URL without a query).
    pub fn queue(&self, url: Url) -> Result<Queue, QueueError> {
        let client = Arc::new(self.client(&url, &self.http)?);
        let receiver = match &self.receive_http {
            Some(http) => Arc::new(self.client(&url, http)?),
            None => client.clone(),
        };
        let name = url
            .path_segments()
            .and_then(|mut segments| segments.next_back().map(str::to_string))
            .unwrap_or_default();
        Ok(Queue {
            client,
            receiver,
            url,
            name,
        })
    }

    fn client(&self, url: &Url, http: &reqwest::Client) -> Result<QueueClient, QueueError> {
        let client_options = ClientOptions {
            transport: Some(Transport::new(Arc::new(http.clone()))),
            per_try_policies: self.credential.per_try_policies(),
            // One retry layer, with explicit time budgets: ours (see the module docs).
            retry: RetryOptions::none(),
            ..Default::default()
        };
        let options = QueueClientOptions {
            client_options,
            ..Default::default()
        };
        let token = self
            .credential
            .token_credential(&self.http)
            .map_err(|e| QueueError::from_sdk(Operation::Properties, e))?;
        QueueClient::new(url.clone(), token, Some(options))
            .map_err(|e| QueueError::from_sdk(Operation::Properties, e))
    }
}

impl Queue {
    /// The queue's URL (no query, no secret).
    pub(crate) fn url(&self) -> &Url {
        &self.url
    }

    /// The queue's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Get Messages with retries within `budget`; the batch says until when it is leased.
    pub(crate) async fn receive_within(
        &self,
        max: u32,
        visibility: Duration,
        budget: Budget,
    ) -> Result<Batch, QueueError> {
        retry::retrying(Operation::Receive, budget, || async move {
            let sent = Instant::now();
            let messages = self.receive(max, visibility).await?;
            Ok(Batch {
                messages,
                leased_until: sent + Duration::from_secs(whole_seconds(visibility) as u64),
            })
        })
        .await
    }

    /// Delete Message with retries within `budget`.
    pub(crate) async fn delete_within(
        &self,
        id: &str,
        pop_receipt: &str,
        budget: Budget,
    ) -> Result<Deleted, QueueError> {
        match retry::retrying(Operation::Delete, budget, || self.delete(id, pop_receipt)).await {
            Ok(()) => Ok(Deleted::Now),
            // The message does not exist any more, and an earlier try of this very delete may
            // have been applied: that try deleted it.
            Err(error) if error.is_message_not_found() && error.earlier_try_unknown => {
                Ok(Deleted::ByEarlierTry)
            }
            Err(error) => Err(error),
        }
    }

    /// Update Message (see [`Queue::set_visibility`]) with retries within `budget`.
    ///
    /// If a try's answer was lost, the service may have applied it and issued a new receipt
    /// that nobody will ever see; a retry with the old receipt then fails with
    /// `PopReceiptMismatch`, and the error says `earlier_try_unknown`.
    pub(crate) async fn update_within(
        &self,
        id: &str,
        pop_receipt: &str,
        visibility: Duration,
        budget: Budget,
    ) -> Result<Leased, QueueError> {
        retry::retrying(Operation::Update, budget, || async move {
            let sent = Instant::now();
            let pop_receipt = self.set_visibility(id, pop_receipt, visibility).await?;
            Ok(Leased {
                pop_receipt,
                until: sent + Duration::from_secs(whole_seconds(visibility) as u64),
            })
        })
        .await
    }

    /// Put Message with retries within `budget`. A retry after a lost answer may add the text
    /// twice: Put Message is not idempotent.
    pub(crate) async fn send_within(
        &self,
        text: &str,
        budget: Budget,
    ) -> Result<String, QueueError> {
        retry::retrying(Operation::Send, budget, || self.send(text, None, None)).await
    }

    /// Peek Messages with retries within `budget`: up to `max` (1..=32) visible messages from
    /// the front of the queue, without leasing them or bumping their dequeue count.
    pub(crate) async fn peek_within(
        &self,
        max: u32,
        budget: Budget,
    ) -> Result<Vec<PeekedMessage>, QueueError> {
        retry::retrying(Operation::Peek, budget, || self.peek(max)).await
    }

    /// Peek Messages, one try (see [`Queue::peek_within`]).
    pub async fn peek(&self, max: u32) -> Result<Vec<PeekedMessage>, QueueError> {
        let options = QueueClientPeekMessagesOptions {
            number_of_messages: Some(max.clamp(1, MAX_MESSAGES_PER_CALL) as i32),
            ..Default::default()
        };
        let response = timed(Operation::Peek, self.client.peek_messages(Some(options)))
            .await
            .map_err(|e| QueueError::from_sdk(Operation::Peek, e))?;
        let list = response
            .into_model()
            .map_err(|e| QueueError::from_sdk(Operation::Peek, e))?;
        list.items
            .unwrap_or_default()
            .into_iter()
            .map(|m| {
                let Some(id) = m.message_id else {
                    return Err(QueueError::invalid_response(
                        Operation::Peek,
                        "a peeked message has no id",
                    ));
                };
                Ok(PeekedMessage {
                    id,
                    text: m.message_text.unwrap_or_default(),
                    dequeue_count: m.dequeue_count.unwrap_or(0).clamp(0, u32::MAX as i64) as u32,
                    insertion_time: m.insertion_time,
                })
            })
            .collect()
    }

    /// Get Messages, one try: up to `max` messages (1..=32), each leased for `visibility`.
    pub async fn receive(
        &self,
        max: u32,
        visibility: Duration,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        let options = QueueClientReceiveMessagesOptions {
            number_of_messages: Some(max.clamp(1, MAX_MESSAGES_PER_CALL) as i32),
            visibility_timeout: Some(whole_seconds(visibility)),
            ..Default::default()
        };
        let response = timed(
            Operation::Receive,
            self.receiver.receive_messages(Some(options)),
        )
        .await
        .map_err(|e| QueueError::from_sdk(Operation::Receive, e))?;
        // Decoded here rather than with the SDK's model: see `received` for why.
        received::decode(&response.into_body())
            .map_err(|detail| QueueError::invalid_response(Operation::Receive, detail))
    }

    /// Delete Message with the message's latest pop receipt, one try.
    pub async fn delete(&self, id: &str, pop_receipt: &str) -> Result<(), QueueError> {
        timed(
            Operation::Delete,
            self.client.delete_message(id, pop_receipt, None),
        )
        .await
        .map(drop)
        .map_err(|e| QueueError::from_sdk(Operation::Delete, e))
    }

    /// Update Message, one try: make the message invisible for `visibility` from now (0 =
    /// visible at once). Returns the new pop receipt; the old one is void from here on.
    pub(crate) async fn set_visibility(
        &self,
        id: &str,
        pop_receipt: &str,
        visibility: Duration,
    ) -> Result<String, QueueError> {
        let response = timed(
            Operation::Update,
            self.client
                .update_message(id, pop_receipt, whole_seconds(visibility), None),
        )
        .await
        .map_err(|e| QueueError::from_sdk(Operation::Update, e))?;
        response
            .headers()
            .get_optional_string(&POP_RECEIPT)
            .ok_or_else(|| {
                QueueError::invalid_response(Operation::Update, "no x-ms-popreceipt in the answer")
            })
    }

    /// Put Message, one try. `visibility` delays the message; `ttl` of `None` keeps the service
    /// default.
    pub async fn send(
        &self,
        text: &str,
        visibility: Option<Duration>,
        ttl: Option<Duration>,
    ) -> Result<String, QueueError> {
        let message = QueueMessage {
            message_text: Some(text.to_string()),
        };
        let options = QueueClientSendMessageOptions {
            visibility_timeout: visibility.map(whole_seconds),
            message_time_to_live: ttl.map(whole_seconds),
            ..Default::default()
        };
        let content = message
            .try_into()
            .map_err(|e| QueueError::from_sdk(Operation::Send, e))?;
        let response = timed(
            Operation::Send,
            self.client.send_message(content, Some(options)),
        )
        .await
        .map_err(|e| QueueError::from_sdk(Operation::Send, e))?;
        let sent = response
            .into_model()
            .and_then(|list| list.into_message())
            .map_err(|e| QueueError::from_sdk(Operation::Send, e))?;
        Ok(sent.message_id.unwrap_or_default())
    }

    /// Get Queue Metadata: proves the queue exists and the credential works; returns the
    /// approximate number of messages (visible and invisible).
    pub async fn approximate_message_count(&self) -> Result<u64, QueueError> {
        let response = timed(Operation::Properties, self.client.get_properties(None))
            .await
            .map_err(|e| QueueError::from_sdk(Operation::Properties, e))?;
        let count = response
            .approximate_messages_count()
            .map_err(|e| QueueError::from_sdk(Operation::Properties, e))?;
        Ok(count.unwrap_or(0).max(0) as u64)
    }

    /// Clear Messages: deletes every message. Only tests and tooling call this.
    pub async fn clear(&self) -> Result<(), QueueError> {
        self.client
            .clear(None)
            .await
            .map(drop)
            .map_err(|e| QueueError::from_sdk(Operation::Delete, e))
    }

    /// Create Queue (succeeds if it already exists). The sidecar itself never calls this for
    /// the queue it consumes; tests and local tooling do.
    pub async fn create(&self) -> Result<(), QueueError> {
        match self.client.create(None).await {
            Ok(_) => Ok(()),
            Err(e) if e.http_status().map(u16::from) == Some(409) => Ok(()),
            Err(e) => Err(QueueError::from_sdk(Operation::Create, e)),
        }
    }
}

/// Awaits one SDK call and reports its latency (successful or not) for the queue-call
/// histogram.
async fn timed<F: Future>(operation: Operation, call: F) -> F::Output {
    let started = Instant::now();
    let output = call.await;
    QueueCallCompleted {
        operation: operation.as_str(),
        latency: started.elapsed(),
    }
    .emit();
    output
}

/// The REST API takes whole seconds; round up so a lease is never shorter than asked.
fn whole_seconds(duration: Duration) -> i32 {
    let secs = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    secs.min(i32::MAX as u64) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_round_up_to_whole_seconds() {
        assert_eq!(whole_seconds(Duration::from_millis(0)), 0);
        assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(whole_seconds(Duration::from_secs(30)), 30);
    }

    #[test]
    fn debug_output_hides_the_pop_receipt() {
        let message = ReceivedMessage {
            id: "id-1".into(),
            pop_receipt: "RECEIPT-SECRET".into(),
            text: "hello".into(),
            dequeue_count: 1,
            insertion_time: None,
            expiration_time: None,
        };
        assert!(!format!("{message:?}").contains("RECEIPT-SECRET"));
    }
}
