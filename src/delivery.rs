//! Delivery: one POST of one event to the endpoint, and what its answer means.
//!
//! The answer is classified with Knative's delivery rules, so the sidecar behaves like the
//! event sources the endpoint may already know: 2xx is delivered; 404, 408, 409, 425, 429, 5xx,
//! timeouts and connection failures are worth retrying; 400, 401, 403, 410, 413, 415, 422 and
//! other 4xx will fail the same way again; 1xx/3xx are unexpected (redirects are not followed
//! on POST) and retried.

use crate::event::HttpPayload;
use std::time::Duration;
use time::OffsetDateTime;
use url::Url;

/// Most of an error response body we read (and discard) to keep the connection reusable.
const MAX_DRAINED_BODY: usize = 64 * 1024;

/// Why a delivery did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The endpoint answered with this non-2xx status.
    Status(u16),
    /// No answer within `HTTP_TIMEOUT`.
    Timeout,
    /// The connection could not be made or broke (refused, reset, DNS, TLS).
    Connection(String),
}

impl Failure {
    /// A short label for logs and metrics: the status code, `timeout` or `connection`.
    pub fn label(&self) -> String {
        match self {
            Failure::Status(status) => status.to_string(),
            Failure::Timeout => "timeout".into(),
            Failure::Connection(_) => "connection".into(),
        }
    }

    /// A one-line description.
    pub fn describe(&self) -> String {
        match self {
            Failure::Status(status) => format!("HTTP {status}"),
            Failure::Timeout => "timed out".into(),
            Failure::Connection(detail) => format!("connection failed: {detail}"),
        }
    }
}

/// The result of one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
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
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Delivered { .. } => "delivered",
            Outcome::Retryable { .. } => "retryable",
            Outcome::Permanent { .. } => "permanent",
        }
    }
}

/// Classifies a status code with Knative's rules.
pub fn classify_status(status: u16, retry_after: Option<Duration>) -> Outcome {
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

/// POSTs events to the endpoint over a pooled connection.
#[derive(Debug, Clone)]
pub struct Deliverer {
    client: reqwest::Client,
    endpoint: Url,
    timeout: Duration,
}

impl Deliverer {
    /// `timeout` bounds each POST, from sending to the end of the answer's headers. The
    /// endpoint is trusted with the system roots plus Knative's `K_CA_CERTS`, if set.
    pub fn new(endpoint: Url, timeout: Duration, user_agent: &str) -> reqwest::Result<Self> {
        let builder = match endpoint.scheme() {
            // Plain http (the usual app on localhost): no trust store to load, see
            // `queue::plain_http_client`. Redirects are not followed, so no https either.
            "http" => reqwest::Client::builder().tls_certs_only(std::iter::empty()),
            _ => reqwest::Client::builder().tls_certs_merge(crate::trust::endpoint_roots()?),
        };
        let client = builder
            .user_agent(user_agent)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()?;
        Ok(Self {
            client,
            endpoint,
            timeout,
        })
    }

    /// The endpoint events go to.
    pub fn endpoint(&self) -> &Url {
        &self.endpoint
    }

    /// Sends one event and classifies the answer.
    pub async fn deliver(&self, payload: HttpPayload) -> Outcome {
        let mut request = self
            .client
            .post(self.endpoint.clone())
            .timeout(self.timeout);
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
        classify_status(status, retry_after)
    }

    /// Whether the endpoint accepts TCP (and TLS) connections: used to probe a down endpoint
    /// without sending it an event.
    pub async fn probe(&self) -> Result<(), Failure> {
        let request = self
            .client
            .head(self.endpoint.clone())
            .timeout(self.timeout.min(Duration::from_secs(5)));
        match request.send().await {
            Ok(response) => {
                drain(response).await;
                Ok(())
            }
            Err(error) => match transport_failure(&error) {
                Outcome::Retryable { failure, .. } | Outcome::Permanent { failure } => Err(failure),
                Outcome::Delivered { .. } => Ok(()),
            },
        }
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

fn transport_failure(error: &reqwest::Error) -> Outcome {
    let failure = if error.is_timeout() {
        Failure::Timeout
    } else {
        Failure::Connection(root_cause(error))
    };
    Outcome::Retryable {
        failure,
        retry_after: None,
    }
}

/// The innermost error message ("Connection refused (os error 111)"), which says more than
/// reqwest's outer "error sending request for url (...)", and carries no URL.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause: &(dyn std::error::Error + 'static) = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
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
}
