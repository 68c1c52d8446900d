//! The endpoint: one POST of one event and what its answer means ([`Deliverer`]), the probe
//! of an endpoint that is down, and the gate that pauses receiving meanwhile
//! ([`EndpointGate`]). Anything a request to the endpoint carries besides the event (trace
//! context, an authorization header) is added here, in [`Deliverer::deliver`].
//!
//! The answer is classified with Knative's delivery rules, so the sidecar behaves like the
//! event sources the endpoint may already know: 2xx is delivered; 404, 408, 409, 425, 429, 5xx,
//! timeouts and broken connections are worth retrying; 400, 401, 403, 410, 413, 415, 422 and
//! other 4xx will fail the same way again; 1xx/3xx are unexpected (redirects are not followed
//! on POST) and retried.
//!
//! Without an answer, what matters is whether the request can have reached the endpoint:
//!
//! - [`Failure::Connection`]: no connection was made (refused, DNS, TLS handshake, connect
//!   timeout). The endpoint never saw the event; this is not an attempt, it never poisons, and
//!   it feeds the endpoint-down pause.
//! - [`Failure::Dropped`] and [`Failure::Timeout`]: the request was sent and the connection
//!   broke, or no answer came in time. The endpoint may have seen (and crashed on) the event:
//!   an attempt like any failed answer, so a message that kills the app's connection every
//!   time reaches the poison queue after `MAX_DEQUEUE_COUNT` attempts.
//! - [`Failure::Unsendable`]: the request could not even be built (e.g. a header value the
//!   HTTP stack refuses). Retrying cannot help: undeliverable.
//! - [`Failure::NoToken`]: the endpoint's bearer token could not be had; nothing was sent.
//!
//! Every request to the endpoint — a POST of one event ([`Deliverer::deliver`]), any other
//! body the pipeline sends, the probe — gets its extra headers in one place,
//! [`Deliverer::request`]: `Authorization: Bearer` from the [`EndpointAuth`] (a token file
//! re-read as it rotates, or an Entra ID token), and W3C `traceparent`/`tracestate` from the
//! attempt's [`Span`]. A 401 while the token can change is [`Failure::Unauthorized`]: the
//! token is read again at once and the message retried, never poisoned for it.

use crate::auth::endpoint::EndpointAuth;
use crate::config::EndpointConfig;
use crate::error_text;
use crate::pipeline::event::HttpPayload;
use crate::pipeline::trace::{Span, Trace};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use time::OffsetDateTime;
use url::Url;

/// Most of an error response body we read (and discard) to keep the connection reusable.
const MAX_DRAINED_BODY: usize = 64 * 1024;

/// Why a delivery did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The endpoint answered with this non-2xx status.
    Status(u16),
    /// No answer within `HTTP_TIMEOUT`.
    Timeout,
    /// No connection could be made (refused, DNS, TLS handshake): the request never reached
    /// the endpoint.
    Connection(String),
    /// The request was sent, then the connection closed or was reset without an answer.
    Dropped(String),
    /// The request could not be built from the event.
    Unsendable(String),
    /// 401 while the endpoint's token can change: the token is read again and the message
    /// retried, never poisoned for it (the token is at fault, not the message).
    Unauthorized,
    /// No bearer token could be had for the request, so none was sent.
    NoToken(String),
}

impl Failure {
    /// A short label for logs and metrics: the status code, `timeout`, `connection`,
    /// `dropped` or `unsendable`.
    pub(crate) fn label(&self) -> String {
        match self {
            Failure::Status(status) => status.to_string(),
            Failure::Timeout => "timeout".into(),
            Failure::Connection(_) => "connection".into(),
            Failure::Dropped(_) => "dropped".into(),
            Failure::Unsendable(_) => "unsendable".into(),
            Failure::Unauthorized => "401".into(),
            Failure::NoToken(_) => "token".into(),
        }
    }

    /// A one-line description.
    pub(crate) fn describe(&self) -> String {
        match self {
            Failure::Status(status) => format!("HTTP {status}"),
            Failure::Timeout => "timed out".into(),
            Failure::Connection(detail) => format!("connection failed: {detail}"),
            Failure::Dropped(detail) => format!("connection closed without an answer: {detail}"),
            Failure::Unsendable(detail) => format!("cannot be sent: {detail}"),
            Failure::Unauthorized => {
                "HTTP 401: the endpoint refused the token (read again; retried, never poisoned)"
                    .into()
            }
            Failure::NoToken(detail) => format!("no endpoint token: {detail}"),
        }
    }

    /// Whether the endpoint provably never saw the request (so it is not an attempt).
    pub(crate) fn never_reached(&self) -> bool {
        matches!(
            self,
            Failure::Connection(_) | Failure::Unsendable(_) | Failure::NoToken(_)
        )
    }

    /// Whether the message is not at fault, however often this happens: the endpoint never
    /// saw it, or refused the sidecar's token (which can change). Never poisons.
    pub(crate) fn spares_the_message(&self) -> bool {
        self.never_reached() || matches!(self, Failure::Unauthorized)
    }
}

/// The result of one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// 2xx: the endpoint has the event; the message may be deleted.
    Delivered { status: u16 },
    /// Worth trying again later; `retry_after` is the endpoint's own `Retry-After`, if any.
    Retryable {
        failure: Failure,
        retry_after: Option<Duration>,
    },
    /// Will fail the same way again: retrying only delays the inevitable.
    Permanent { failure: Failure },
}

impl Outcome {
    /// A label for logs and metrics: `delivered`, `retryable` or `permanent`.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Outcome::Delivered { .. } => "delivered",
            Outcome::Retryable { .. } => "retryable",
            Outcome::Permanent { .. } => "permanent",
        }
    }
}

impl Outcome {
    /// The failure, unless the event was delivered.
    pub(crate) fn failure(&self) -> Option<&Failure> {
        match self {
            Outcome::Delivered { .. } => None,
            Outcome::Retryable { failure, .. } | Outcome::Permanent { failure } => Some(failure),
        }
    }

    /// The `status` of the log line and the `status_class` of the metric: the code and its
    /// class (`503`, `5xx`), or the failure's label twice when there was no answer.
    pub(crate) fn status_labels(&self) -> (String, String) {
        let status = match self {
            Outcome::Delivered { status } => *status,
            Outcome::Retryable { failure, .. } | Outcome::Permanent { failure } => match failure {
                Failure::Status(status) => *status,
                Failure::Unauthorized => 401,
                other => return (other.label(), other.label()),
            },
        };
        (status.to_string(), format!("{}xx", status / 100))
    }
}

/// Classifies a status code with Knative's rules.
pub(crate) fn classify_status(status: u16, retry_after: Option<Duration>) -> Outcome {
    match status {
        200..=299 => Outcome::Delivered { status },
        404 | 408 | 409 | 425 | 429 => Outcome::Retryable {
            failure: Failure::Status(status),
            retry_after,
        },
        400..=499 => Outcome::Permanent {
            failure: Failure::Status(status),
        },
        _ => Outcome::Retryable {
            failure: Failure::Status(status),
            retry_after,
        },
    }
}

/// Parses a `Retry-After` value: delay-seconds or an HTTP-date, relative to `now`.
pub fn parse_retry_after(value: &str, now: OffsetDateTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = OffsetDateTime::parse(value, &time::format_description::well_known::Rfc2822).ok()?;
    let delta = date - now;
    Some(if delta.is_negative() {
        Duration::ZERO
    } else {
        delta.unsigned_abs()
    })
}

/// POSTs events to the endpoint over a pooled connection, each request authorized and
/// carrying its trace context.
#[derive(Debug, Clone)]
pub(crate) struct Deliverer {
    client: reqwest::Client,
    endpoint: Url,
    timeout: Duration,
    auth: EndpointAuth,
    trace_context: bool,
}

impl Deliverer {
    /// POSTs to `endpoint` over `client` (the transport's endpoint client); its timeout
    /// bounds each POST, from sending to the end of the answer's headers. Requests carry
    /// `auth`'s bearer token, and trace context unless `TRACE_CONTEXT=off`.
    pub(crate) fn new(
        client: reqwest::Client,
        endpoint: &EndpointConfig,
        auth: EndpointAuth,
    ) -> Self {
        Self {
            client,
            endpoint: endpoint.url.clone(),
            timeout: endpoint.timeout,
            auth,
            trace_context: endpoint.trace_context,
        }
    }

    /// The endpoint's token source (for `check`).
    pub(crate) fn auth(&self) -> &EndpointAuth {
        &self.auth
    }

    /// The trace of the message `message_id` whose event carried `traceparent` and
    /// `tracestate` (if a passed-through event did); `None` with `TRACE_CONTEXT=off`.
    pub(crate) fn trace(
        &self,
        message_id: &str,
        traceparent: Option<&str>,
        tracestate: Option<&str>,
    ) -> Option<Trace> {
        self.trace_context
            .then(|| Trace::for_message(message_id, traceparent, tracestate))
    }

    /// Sends one event (as `span` of its message's trace, if any) and classifies the answer.
    pub(crate) async fn deliver(&self, payload: HttpPayload, span: Option<&Span>) -> Outcome {
        let request = self
            .client
            .post(self.endpoint.clone())
            .timeout(self.timeout);
        let mut request = match self.request(request, span).await {
            Ok(request) => request,
            Err(failure) => {
                return Outcome::Retryable {
                    failure,
                    retry_after: None,
                }
            }
        };
        for (name, value) in &payload.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let response = match request.body(payload.body).send().await {
            Ok(response) => response,
            Err(error) => return transport_failure(&error),
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, OffsetDateTime::now_utc()));
        drain(response).await;
        if status == 401 && self.auth.renewable() {
            self.auth.unauthorized();
            return Outcome::Retryable {
                failure: Failure::Unauthorized,
                retry_after,
            };
        }
        classify_status(status, retry_after)
    }

    /// The one place a request to the endpoint gets what it carries besides its body and
    /// content headers: the bearer token and, for an attempt, its trace context. Every
    /// request goes through here (a POST of one event or of several, the probe).
    pub(crate) async fn request(
        &self,
        mut request: reqwest::RequestBuilder,
        span: Option<&Span>,
    ) -> Result<reqwest::RequestBuilder, Failure> {
        if let Some(span) = span {
            request = request.header("traceparent", span.traceparent());
            if let Some(state) = span.tracestate() {
                request = request.header("tracestate", state);
            }
        }
        match self.auth.header().await {
            Ok(Some(token)) => Ok(request.header(reqwest::header::AUTHORIZATION, token)),
            Ok(None) => Ok(request),
            Err(error) => Err(Failure::NoToken(error.0)),
        }
    }

    /// Whether the endpoint accepts TCP (and TLS) connections: used to probe a down endpoint
    /// without sending it an event. Any answer, or a connection the endpoint closed after
    /// accepting it, counts as up. The probe carries the token when there is one (an auth
    /// proxy in front of the app may refuse anonymous requests outright).
    pub(crate) async fn probe(&self) -> Result<(), Failure> {
        let request = self
            .client
            .head(self.endpoint.clone())
            .timeout(self.timeout.min(Duration::from_secs(5)));
        let request = match self.request(request, None).await {
            Ok(request) => request,
            // No token is no reason to think the endpoint is down.
            Err(_) => self
                .client
                .head(self.endpoint.clone())
                .timeout(self.timeout.min(Duration::from_secs(5))),
        };
        match request.send().await {
            Ok(response) => {
                drain(response).await;
                Ok(())
            }
            Err(error) => match transport_failure(&error) {
                Outcome::Retryable {
                    failure: Failure::Dropped(_),
                    ..
                } => Ok(()),
                Outcome::Retryable { failure, .. } | Outcome::Permanent { failure } => Err(failure),
                Outcome::Delivered { .. } => Ok(()),
            },
        }
    }
}

/// Consecutive connection failures after which the endpoint counts as down.
pub(crate) const ENDPOINT_DOWN_AFTER: u32 = 3;

/// Tracks consecutive connection failures so the pump can pause while the endpoint is down.
#[derive(Debug, Default)]
pub(crate) struct EndpointGate {
    consecutive_failures: AtomicU32,
    last_error: Mutex<String>,
}

impl EndpointGate {
    /// Notes the outcome of a delivery attempt.
    pub(crate) fn record(&self, outcome: &Outcome) {
        match outcome {
            Outcome::Retryable {
                failure: Failure::Connection(error),
                ..
            } => {
                self.consecutive_failures.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut last) = self.last_error.lock() {
                    last.clone_from(error);
                }
            }
            // A request that could not be built, or had no token, says nothing about the
            // endpoint.
            Outcome::Permanent {
                failure: Failure::Unsendable(_),
            }
            | Outcome::Retryable {
                failure: Failure::NoToken(_),
                ..
            } => {}
            // Anything else reached the endpoint (a dropped connection was accepted first).
            _ => self.reset(),
        }
    }

    /// Whether the endpoint refused enough connections in a row to stop receiving.
    pub(crate) fn is_down(&self) -> bool {
        self.consecutive_failures() >= ENDPOINT_DOWN_AFTER
    }

    pub(crate) fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    pub(crate) fn last_error(&self) -> String {
        self.last_error
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default()
    }

    /// The endpoint answered: count from zero again.
    pub(crate) fn reset(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
    }
}

/// Reads what is left of a response, up to a bound, so the connection can go back to the pool.
async fn drain(mut response: reqwest::Response) {
    let mut read = 0usize;
    while let Ok(Some(chunk)) = response.chunk().await {
        read += chunk.len();
        if read > MAX_DRAINED_BODY {
            break;
        }
    }
}

/// What a request that got no answer means (see the module docs). The connect check comes
/// first: a connect timeout is a connection that was never made, not an attempt.
fn transport_failure(error: &reqwest::Error) -> Outcome {
    let failure = if error.is_connect() {
        Failure::Connection(error_text::root_cause(error))
    } else if error.is_builder() {
        return Outcome::Permanent {
            failure: Failure::Unsendable(error_text::root_cause(error)),
        };
    } else if error.is_timeout() {
        Failure::Timeout
    } else {
        Failure::Dropped(error_text::root_cause(error))
    };
    Outcome::Retryable {
        failure,
        retry_after: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_knative_rules() {
        for status in [200, 201, 202, 204, 299] {
            assert_eq!(
                classify_status(status, None).label(),
                "delivered",
                "{status}"
            );
        }
        for status in [
            404, 408, 409, 425, 429, 500, 502, 503, 504, 100, 301, 302, 307,
        ] {
            assert_eq!(
                classify_status(status, None).label(),
                "retryable",
                "{status}"
            );
        }
        for status in [400, 401, 403, 405, 410, 413, 415, 422, 451] {
            assert_eq!(
                classify_status(status, None).label(),
                "permanent",
                "{status}"
            );
        }
    }

    fn deliverer(url: &str) -> Deliverer {
        let endpoint = EndpointConfig {
            url: Url::parse(url).expect("url"),
            timeout: Duration::from_secs(2),
            ca_certs: None,
            auth: crate::config::EndpointAuthConfig::None,
            trace_context: true,
        };
        let clients = crate::transport::Clients::new(&endpoint, false).expect("clients");
        Deliverer::new(clients.endpoint, &endpoint, EndpointAuth::none())
    }

    fn payload(headers: Vec<(String, String)>) -> HttpPayload {
        HttpPayload {
            headers,
            body: b"{}".to_vec(),
        }
    }

    #[tokio::test]
    async fn a_refused_connection_never_reached_the_endpoint() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("addr").port()
        };
        let outcome = deliverer(&format!("http://127.0.0.1:{port}/"))
            .deliver(payload(Vec::new()), None)
            .await;
        assert!(
            matches!(
                &outcome,
                Outcome::Retryable {
                    failure: Failure::Connection(_),
                    ..
                }
            ),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn a_connection_closed_after_the_request_is_an_attempt() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut buffer = vec![0u8; 4096];
            // Read the request, then hang up without a word.
            let _ = stream.read(&mut buffer).await;
        });
        let outcome = deliverer(&format!("http://127.0.0.1:{port}/"))
            .deliver(payload(Vec::new()), None)
            .await;
        server.await.expect("server");
        assert!(
            matches!(
                &outcome,
                Outcome::Retryable {
                    failure: Failure::Dropped(_),
                    ..
                }
            ),
            "{outcome:?}"
        );
        assert!(!outcome_failure(&outcome).never_reached());
    }

    #[tokio::test]
    async fn a_request_that_cannot_be_built_is_permanent() {
        let outcome = deliverer("http://127.0.0.1:9/")
            .deliver(payload(vec![("ce-bad".into(), "line\nbreak".into())]), None)
            .await;
        assert!(
            matches!(
                &outcome,
                Outcome::Permanent {
                    failure: Failure::Unsendable(_)
                }
            ),
            "{outcome:?}"
        );
    }

    fn outcome_failure(outcome: &Outcome) -> &Failure {
        match outcome {
            Outcome::Retryable { failure, .. } | Outcome::Permanent { failure } => failure,
            Outcome::Delivered { .. } => panic!("delivered"),
        }
    }

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        let now = OffsetDateTime::from_unix_timestamp(784_111_777).expect("time"); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    #[test]
    fn the_gate_closes_after_consecutive_connection_failures_only() {
        let gate = EndpointGate::default();
        let refused = Outcome::Retryable {
            failure: Failure::Connection("Connection refused".into()),
            retry_after: None,
        };
        gate.record(&refused);
        gate.record(&refused);
        assert!(!gate.is_down());
        gate.record(&Outcome::Delivered { status: 200 });
        gate.record(&refused);
        gate.record(&refused);
        assert!(!gate.is_down(), "an answer in between resets the count");
        gate.record(&refused);
        assert!(gate.is_down());
        assert_eq!(gate.last_error(), "Connection refused");
        gate.reset();
        assert!(!gate.is_down());
    }
}
