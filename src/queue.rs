//! The queue: a thin, typed layer over the official `azure_storage_queue` client.
//!
//! It does three things the raw client does not: it builds the client on our own `reqwest`
//! transport and authorization policies, it turns SDK models (all `Option`s) into a
//! [`ReceivedMessage`] the rest of the crate can trust, and it classifies failures into
//! [`QueueErrorKind`]s that the receive loop can act on (back off, report, or treat a lost lease
//! as someone else's message). Error text is passed through [`redact`] because transport errors
//! quote request URLs, and SAS tokens travel in URLs. Every call's latency is reported for the
//! queue-call histogram.

use crate::auth::secret::{error_chain, redact};
use crate::auth::Credential;
use crate::telemetry::events::{InternalEvent, QueueCallCompleted};
use azure_core::error::ErrorKind;
use azure_core::http::headers::HeaderName;
use azure_core::http::{ClientOptions, ExponentialRetryOptions, RetryOptions, Transport};
use azure_storage_queue::models::{
    QueueClientGetPropertiesResultHeaders, QueueClientReceiveMessagesOptions,
    QueueClientSendMessageOptions, QueueMessage,
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

/// The queue operation that failed, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    Receive,
    Delete,
    Update,
    Send,
    Properties,
    Create,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Receive => "receive",
            Operation::Delete => "delete",
            Operation::Update => "update",
            Operation::Send => "send",
            Operation::Properties => "properties",
            Operation::Create => "create",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What kind of failure a queue call met, which decides what the caller does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueueErrorKind {
    /// No answer: DNS, connection refused, TLS, timeout. Back off and retry.
    Unreachable,
    /// 401/403: wrong key, expired SAS, missing role. Retrying will not help until fixed,
    /// but the sidecar keeps trying so a rotated secret is picked up.
    Unauthorized,
    /// 404 QueueNotFound: the queue does not exist (the sidecar never creates it).
    QueueNotFound,
    /// 404 MessageNotFound / 400 PopReceiptMismatch: the lease was lost, another consumer owns
    /// the message now (or already deleted it).
    MessageGone,
    /// 500/503: throttling or a transient service fault. Back off and retry.
    Throttled,
    /// No Microsoft Entra ID token could be acquired (token endpoint down or refusing): the
    /// request never reached the queue service.
    TokenUnavailable,
    /// Anything else (bad request, unexpected response).
    Other,
}

impl QueueErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueErrorKind::Unreachable => "unreachable",
            QueueErrorKind::Unauthorized => "unauthorized",
            QueueErrorKind::QueueNotFound => "queue_not_found",
            QueueErrorKind::MessageGone => "message_gone",
            QueueErrorKind::Throttled => "throttled",
            QueueErrorKind::TokenUnavailable => "token_unavailable",
            QueueErrorKind::Other => "other",
        }
    }

    /// A sentence for operators: what this usually means and what to check.
    pub fn hint(self) -> &'static str {
        match self {
            QueueErrorKind::Unreachable => "the queue service cannot be reached; check the endpoint and the network",
            QueueErrorKind::Unauthorized => "the queue service refused the credentials; check the key, SAS (permissions, expiry), or the identity's role assignment and token audience",
            QueueErrorKind::QueueNotFound => "the queue does not exist; create it (the sidecar never creates queues)",
            QueueErrorKind::MessageGone => "the message's lease was lost; another consumer owns it now",
            QueueErrorKind::Throttled => "the queue service is busy or failing (5xx); backing off",
            QueueErrorKind::TokenUnavailable => "no Microsoft Entra ID access token; see the 'cannot get an access token' line",
            QueueErrorKind::Other => "the queue service rejected the request",
        }
    }
}

/// A failed queue call, classified, with secret-free detail.
#[derive(Debug, Clone, thiserror::Error)]
#[error("queue {operation} failed ({}): {detail}", kind.as_str())]
pub struct QueueError {
    pub operation: Operation,
    pub kind: QueueErrorKind,
    /// The HTTP status, when the service answered.
    pub status: Option<u16>,
    /// The service's `x-ms-error-code`, when it answered.
    pub code: Option<String>,
    detail: String,
}

impl QueueError {
    fn from_sdk(operation: Operation, error: azure_core::Error) -> Self {
        let (status, code) = match error.kind() {
            ErrorKind::HttpResponse {
                status, error_code, ..
            } => (Some(u16::from(*status)), error_code.clone()),
            _ => (None, None),
        };
        let kind = classify(status, code.as_deref(), error.kind());
        let mut detail = match (status, &code) {
            (Some(status), Some(code)) => format!("HTTP {status} {code}"),
            (Some(status), None) => format!("HTTP {status}"),
            // The credential's own (already scrubbed, one-line) message, without the retry
            // policy's "non-transport error occurred which will not be retried" wrapping.
            _ if kind == QueueErrorKind::TokenUnavailable => redact(&root_cause(&error)),
            _ => redact(&error_chain(&error)),
        };
        if let Some(reason) = crate::auth::refusal::authentication_detail(&error) {
            detail = format!("{detail}: {reason}");
        }
        Self {
            operation,
            kind,
            status,
            code,
            detail,
        }
    }

    fn invalid_response(operation: Operation, detail: impl Into<String>) -> Self {
        Self {
            operation,
            kind: QueueErrorKind::Other,
            status: None,
            code: None,
            detail: detail.into(),
        }
    }
}

/// The innermost error's message.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

fn classify(status: Option<u16>, code: Option<&str>, kind: &ErrorKind) -> QueueErrorKind {
    match (status, code) {
        (Some(404), Some("QueueNotFound")) => QueueErrorKind::QueueNotFound,
        (Some(404), Some("MessageNotFound")) | (Some(400), Some("PopReceiptMismatch")) => {
            QueueErrorKind::MessageGone
        }
        (Some(404), _) => QueueErrorKind::QueueNotFound,
        (Some(401 | 403), _) => QueueErrorKind::Unauthorized,
        (Some(408 | 429), _) => QueueErrorKind::Throttled,
        (Some(s), _) if s >= 500 => QueueErrorKind::Throttled,
        (Some(_), _) => QueueErrorKind::Other,
        (None, _) => match kind {
            ErrorKind::Connection | ErrorKind::Io => QueueErrorKind::Unreachable,
            ErrorKind::Credential => QueueErrorKind::TokenUnavailable,
            _ => QueueErrorKind::Other,
        },
    }
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
    pub fn new(credential: Credential, http: reqwest::Client) -> Self {
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
    pub fn with_receive_transport(mut self, http: reqwest::Client) -> Self {
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
            // The receive loop has its own backoff and reports state changes; the SDK only
            // smooths over a blip, briefly, so a dead service is noticed within seconds.
            retry: RetryOptions::exponential(ExponentialRetryOptions {
                initial_delay: azure_core::time::Duration::milliseconds(100),
                max_retries: 2,
                max_total_elapsed: azure_core::time::Duration::seconds(5),
                max_delay: azure_core::time::Duration::seconds(1),
            }),
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

/// The builder for the reqwest client used for queue calls: pooled, no redirects, a bound on
/// every request so a hung connection cannot stall the loop forever.
pub fn http_client(user_agent: &str) -> reqwest::Result<reqwest::Client> {
    http_client_builder(user_agent).build()
}

/// Like [`http_client`], for a transport that only ever talks plain `http://` (Azurite with a
/// key or SAS): no trust store is loaded. Loading the platform's roots reads and parses every
/// certificate file it finds, which took most of the sidecar's start-up time and a few hundred
/// KiB of heap for the process's life, for TLS that never happens. An `https://` request on
/// this client would fail certificate verification, not go anywhere unverified.
pub fn plain_http_client(user_agent: &str) -> reqwest::Result<reqwest::Client> {
    http_client_builder(user_agent)
        .tls_certs_only(std::iter::empty())
        .build()
}

fn http_client_builder(user_agent: &str) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .user_agent(user_agent)
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(60))
        .pool_idle_timeout(Duration::from_secs(50))
        .redirect(reqwest::redirect::Policy::none())
}

impl Queue {
    /// The queue's URL (no query, no secret).
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Get Messages: up to `max` messages (1..=32), each leased for `visibility`.
    pub async fn receive(
        &self,
        max: u32,
        visibility: Duration,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        let options = QueueClientReceiveMessagesOptions {
            number_of_messages: Some(max.clamp(1, 32) as i32),
            visibility_timeout: Some(whole_seconds(visibility)),
            ..Default::default()
        };
        let response = timed(
            Operation::Receive,
            self.receiver.receive_messages(Some(options)),
        )
        .await
        .map_err(|e| QueueError::from_sdk(Operation::Receive, e))?;
        let list = response
            .into_model()
            .map_err(|e| QueueError::from_sdk(Operation::Receive, e))?;
        list.items
            .unwrap_or_default()
            .into_iter()
            .map(|m| {
                let (Some(id), Some(pop_receipt)) = (m.message_id, m.pop_receipt) else {
                    return Err(QueueError::invalid_response(
                        Operation::Receive,
                        "a received message has no id or pop receipt",
                    ));
                };
                Ok(ReceivedMessage {
                    id,
                    pop_receipt,
                    text: m.message_text.unwrap_or_default(),
                    dequeue_count: m.dequeue_count.unwrap_or(1).clamp(0, u32::MAX as i64) as u32,
                    insertion_time: m.insertion_time,
                    expiration_time: m.expiration_time,
                })
            })
            .collect()
    }

    /// Delete Message with the message's latest pop receipt.
    pub async fn delete(&self, id: &str, pop_receipt: &str) -> Result<(), QueueError> {
        timed(
            Operation::Delete,
            self.client.delete_message(id, pop_receipt, None),
        )
        .await
        .map(drop)
        .map_err(|e| QueueError::from_sdk(Operation::Delete, e))
    }

    /// Update Message: make the message invisible for `visibility` from now (0 = visible at
    /// once). Returns the new pop receipt; the old one is void from here on.
    pub async fn set_visibility(
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

    /// Put Message. `visibility` delays the message; `ttl` of `None` keeps the service default.
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
        operation,
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
    fn service_answers_are_classified() {
        let http = ErrorKind::Other;
        assert_eq!(
            classify(Some(404), Some("QueueNotFound"), &http),
            QueueErrorKind::QueueNotFound
        );
        assert_eq!(
            classify(Some(404), Some("MessageNotFound"), &http),
            QueueErrorKind::MessageGone
        );
        assert_eq!(
            classify(Some(400), Some("PopReceiptMismatch"), &http),
            QueueErrorKind::MessageGone
        );
        assert_eq!(
            classify(Some(403), Some("AuthenticationFailed"), &http),
            QueueErrorKind::Unauthorized
        );
        assert_eq!(
            classify(Some(503), Some("ServerBusy"), &http),
            QueueErrorKind::Throttled
        );
        assert_eq!(
            classify(Some(500), Some("OperationTimedOut"), &http),
            QueueErrorKind::Throttled
        );
        assert_eq!(
            classify(Some(400), Some("InvalidQueryParameterValue"), &http),
            QueueErrorKind::Other
        );
        assert_eq!(
            classify(None, None, &ErrorKind::Io),
            QueueErrorKind::Unreachable
        );
        assert_eq!(
            classify(None, None, &ErrorKind::Connection),
            QueueErrorKind::Unreachable
        );
        assert_eq!(
            classify(None, None, &ErrorKind::Credential),
            QueueErrorKind::TokenUnavailable
        );
    }

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
