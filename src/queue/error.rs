//! What a failed queue call was, classified into what the caller can act on (back off,
//! report, or treat a lost lease as someone else's message), with secret-free detail.

use crate::error_text;
use crate::redact;
use crate::telemetry::events::QueueFailure;
use azure_core::error::ErrorKind;
use std::fmt;
use std::time::Duration;

/// The queue operation that failed, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Operation {
    Receive,
    Delete,
    Update,
    Send,
    Properties,
    Create,
    Peek,
}

impl Operation {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Operation::Receive => "receive",
            Operation::Delete => "delete",
            Operation::Update => "update",
            Operation::Send => "send",
            Operation::Properties => "properties",
            Operation::Create => "create",
            Operation::Peek => "peek",
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
pub(crate) enum QueueErrorKind {
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
    pub(crate) fn as_str(self) -> &'static str {
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
    pub(crate) fn hint(self) -> &'static str {
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
    pub(crate) operation: Operation,
    pub(crate) kind: QueueErrorKind,
    /// The HTTP status, when the service answered.
    pub(crate) status: Option<u16>,
    /// The service's `x-ms-error-code`, when it answered.
    pub(crate) code: Option<String>,
    /// This try may have been applied although it failed: its answer never arrived (reset,
    /// timeout) or the service said it timed out (500).
    pub(crate) outcome_unknown: bool,
    /// An earlier try of the same call had an unknown outcome (see above).
    pub(crate) earlier_try_unknown: bool,
    pub(super) detail: String,
}

impl QueueError {
    /// The failure as telemetry reports it: label values and this error's text.
    pub(crate) fn failure(&self) -> QueueFailure<'_> {
        QueueFailure {
            operation: self.operation.as_str(),
            kind: self.kind.as_str(),
            status: self.status,
            code: self.code.as_deref(),
            outcome_unknown: self.outcome_unknown,
            hint: self.kind.hint(),
            error: self,
        }
    }

    /// Whether the call may have taken effect (this try or an earlier one).
    pub fn maybe_applied(&self) -> bool {
        self.outcome_unknown || self.earlier_try_unknown
    }

    /// 404 `MessageNotFound`: no message with this id exists (any more).
    pub(crate) fn is_message_not_found(&self) -> bool {
        self.kind == QueueErrorKind::MessageGone && self.status == Some(404)
    }

    /// Worth another try: the service may answer differently in a moment.
    pub(crate) fn is_transient(&self) -> bool {
        matches!(
            self.kind,
            QueueErrorKind::Unreachable
                | QueueErrorKind::Throttled
                | QueueErrorKind::TokenUnavailable
        )
    }

    pub(super) fn timed_out(operation: Operation, after: Duration) -> Self {
        Self {
            operation,
            kind: QueueErrorKind::Unreachable,
            status: None,
            code: None,
            outcome_unknown: true,
            earlier_try_unknown: false,
            detail: format!("no answer within {} ms", after.as_millis()),
        }
    }

    pub(super) fn from_sdk(operation: Operation, error: azure_core::Error) -> Self {
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
            _ if kind == QueueErrorKind::TokenUnavailable => {
                redact::secrets(&error_text::root_cause(&error))
            }
            _ => redact::secrets(&error_text::chain(&error)),
        };
        if let Some(reason) = crate::auth::refusal::authentication_detail(&error) {
            detail = format!("{detail}: {reason}");
        }
        // `Connection` means no connection was made: the request never left. `Io` is anything
        // after that (reset, closed, body cut short): the service may have applied it.
        let outcome_unknown = match status {
            None => matches!(error.kind(), ErrorKind::Io),
            Some(status) => status == 500,
        };
        Self {
            operation,
            kind,
            status,
            code,
            outcome_unknown,
            earlier_try_unknown: false,
            detail,
        }
    }

    pub(super) fn invalid_response(operation: Operation, detail: impl Into<String>) -> Self {
        Self {
            operation,
            kind: QueueErrorKind::Other,
            status: None,
            code: None,
            outcome_unknown: false,
            earlier_try_unknown: false,
            detail: detail.into(),
        }
    }
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
}
