//! The `check` command: diagnose a deployment in seconds, from inside the container.
//!
//! A scratch image has no shell, curl or az CLI, so `kubectl exec <pod> -c sidecar --
//! azure-queue-sidecar check` (or the same command as a Job) is how an operator finds out
//! which part of a broken deployment is broken. It validates the configuration exactly as the
//! sidecar does, then makes one Get Queue Properties call (the same client, credential and
//! URL as the sidecar), one on the poison queue, and opens one connection to the endpoint (a
//! `HEAD` request: the endpoint sees no event). It prints one line per check and exits 0 when
//! nothing failed, 1 when something did, 2 when the configuration is invalid. Problems that
//! do not stop deliveries (a poison queue that is missing, a permission only this check
//! needs) are `WARN` lines and keep the exit status 0.
//!
//! One properties call answers three questions, in order: does the queue service answer, does
//! it accept the credentials, does the queue exist. A failure makes the later questions
//! unanswerable; they are printed as `skip` so the output always has the same shape.
//!
//! Nothing secret is printed: queue errors are redacted at the source, and URLs go through
//! [`redact::url`].

use super::bootstrap::{block_on, Settings, USAGE_ERROR};
use crate::pipeline::endpoint::{Deliverer, Failure};
use crate::queue::{Queue, QueueConnector, QueueError, QueueErrorKind};
use crate::redact;
use crate::transport::Clients;
use std::fmt;
use std::process::ExitCode;
use std::time::Duration;

/// Bounds the queue check: the queue client's own timeouts are generous (they serve a
/// long-running loop); someone waiting at a terminal wants an answer sooner.
const QUEUE_CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// Azure's error codes for a credential that was authenticated but lacks a permission.
const PERMISSION_CODES: &[&str] = &[
    "AuthorizationPermissionMismatch",
    "AuthorizationFailure",
    "AuthorizationResourceTypeMismatch",
    "AuthorizationServiceMismatch",
];

/// How one check went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Ok,
    /// Not a failure, but worth knowing (exit status stays 0).
    Warn,
    Fail,
    /// Not checked because an earlier check failed.
    Skip,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
            Status::Skip => "skip",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Check {
    pub status: Status,
    pub name: &'static str,
    pub detail: String,
}

impl Check {
    fn new(status: Status, name: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            name,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<4} {}: {}",
            self.status.label(),
            self.name,
            self.detail
        )
    }
}

/// Runs every check for `settings`; the configuration line comes first.
pub(crate) async fn run_checks(settings: &Settings) -> Vec<Check> {
    let mut checks = vec![Check::new(
        Status::Ok,
        "configuration",
        format!(
            "queue {}, auth {}, endpoint {}, endpoint auth {}, trace context {}",
            redact::url(&settings.storage.queue_url),
            settings.storage.credential.kind(),
            redact::url(&settings.config.endpoint.url),
            settings.config.endpoint.auth.kind(),
            if settings.config.endpoint.trace_context {
                "on"
            } else {
                "off"
            }
        ),
    )];
    let clients = match settings.clients() {
        Ok(clients) => clients,
        Err(error) => {
            let cannot = format!("cannot build the client: {error}");
            checks.push(Check::new(Status::Fail, "queue service", cannot.clone()));
            checks.push(poison_skipped(settings).unwrap_or_else(|| {
                Check::new(Status::Warn, "poison queue", "cannot build the client")
            }));
            checks.push(Check::new(Status::Fail, "endpoint", cannot));
            return checks;
        }
    };
    let queues = settings.queues(&clients);
    let (queue, poison, endpoint) = tokio::join!(
        check_queue(settings, &queues),
        check_poison_queue(settings, &queues),
        check_endpoint(settings, &clients)
    );
    checks.extend(queue);
    checks.push(poison);
    checks.extend(endpoint);
    checks
}

/// The exit status for a report: 1 if anything failed.
pub(crate) fn exit_status(checks: &[Check]) -> ExitCode {
    if checks.iter().any(|c| c.status == Status::Fail) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The `check` command: reads the environment, prints the report, returns the exit status.
pub(crate) fn main() -> ExitCode {
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(error) => {
            println!(
                "{}",
                Check::new(Status::Fail, "configuration", error.to_string())
            );
            return ExitCode::from(USAGE_ERROR);
        }
    };
    match block_on(run_checks(&settings)) {
        Ok(checks) => {
            for check in &checks {
                println!("{check}");
            }
            exit_status(&checks)
        }
        Err(code) => code,
    }
}

async fn check_queue(settings: &Settings, queues: &QueueConnector) -> Vec<Check> {
    let queue = match queues.queue(settings.storage.queue_url.clone()) {
        Ok(queue) => queue,
        Err(error) => {
            return vec![Check::new(
                Status::Fail,
                "queue service",
                format!("cannot build the client: {error}"),
            )]
        }
    };
    let result = properties(&queue).await;
    queue_report(&queue, settings.storage.credential.kind(), result)
}

/// The properties call, bounded; `Err(None)` means it timed out.
async fn properties(queue: &Queue) -> Result<u64, Option<QueueError>> {
    tokio::time::timeout(QUEUE_CHECK_TIMEOUT, queue.approximate_message_count())
        .await
        .map_err(|_| None)
        .and_then(|result| result.map_err(Some))
}

/// Whether the poison queue is there when a message needs it. Never a failure: deliveries work
/// without it, but a message that exhausts its attempts then stays in the main queue.
async fn check_poison_queue(settings: &Settings, queues: &QueueConnector) -> Check {
    const NAME: &str = "poison queue";
    let retry = &settings.config.retry;
    if let Some(skipped) = poison_skipped(settings) {
        return skipped;
    }
    let queue = match queues.queue(settings.storage.poison_queue_url.clone()) {
        Ok(queue) => queue,
        Err(_) => return Check::new(Status::Warn, NAME, "cannot build the client"),
    };
    let name = &retry.poison_queue_name;
    match properties(&queue).await {
        Ok(count) => Check::new(
            Status::Ok,
            NAME,
            format!("{name} exists, about {count} messages"),
        ),
        Err(Some(error)) if error.kind == QueueErrorKind::QueueNotFound => {
            if retry.create_poison_queue {
                Check::new(
                    Status::Ok,
                    NAME,
                    format!("{name} does not exist yet; it is created when first needed (CREATE_POISON_QUEUE=true)"),
                )
            } else {
                Check::new(
                    Status::Warn,
                    NAME,
                    format!("{name} does not exist and CREATE_POISON_QUEUE=false: a message that fails MAX_DEQUEUE_COUNT times stays in the main queue; create it, or set CREATE_POISON_QUEUE=true"),
                )
            }
        }
        Err(Some(error)) if is_permission_error(&error) => Check::new(
            Status::Warn,
            NAME,
            format!("cannot read the properties of {name} ({error}); poisoning needs the right to add messages to it"),
        ),
        Err(Some(error))
            if matches!(
                error.kind,
                QueueErrorKind::Unauthorized
                    | QueueErrorKind::TokenUnavailable
                    | QueueErrorKind::Unreachable
                    | QueueErrorKind::Throttled
            ) =>
        {
            Check::new(Status::Skip, NAME, "see the queue checks above")
        }
        Err(Some(error)) => Check::new(Status::Warn, NAME, format!("{name}: {error}")),
        Err(None) => Check::new(Status::Skip, NAME, "the queue service did not answer"),
    }
}

/// The poison queue line when there is nothing to check: messages are never poisoned.
fn poison_skipped(settings: &Settings) -> Option<Check> {
    (settings.config.retry.max_dequeue_count == 0).then(|| {
        Check::new(
            Status::Skip,
            "poison queue",
            "MAX_DEQUEUE_COUNT=0: messages are never poisoned",
        )
    })
}

/// Three lines (service, credentials, queue) from the one properties call's result; `None` as
/// the error means it timed out.
fn queue_report(queue: &Queue, auth: &str, result: Result<u64, Option<QueueError>>) -> Vec<Check> {
    let url = service_url(queue);
    let service = |status, detail: String| Check::new(status, "queue service", detail);
    let credentials = |status, detail: String| Check::new(status, "credentials", detail);
    let queue_line = |status, detail: String| Check::new(status, "queue", detail);
    let answered = service(Status::Ok, format!("{url} answers"));
    let skip_credentials = || credentials(Status::Skip, "the queue service did not answer".into());
    let skip_queue = |why: &str| queue_line(Status::Skip, why.into());

    let error = match result {
        Ok(count) => {
            return vec![
                answered,
                credentials(Status::Ok, format!("{auth} accepted")),
                queue_line(
                    Status::Ok,
                    format!("{} exists, about {count} messages", queue.name()),
                ),
            ]
        }
        Err(None) => {
            return vec![
                service(
                    Status::Fail,
                    format!("{url}: no answer within {}s", QUEUE_CHECK_TIMEOUT.as_secs()),
                ),
                skip_credentials(),
                skip_queue("the queue service did not answer"),
            ]
        }
        Err(Some(error)) => error,
    };
    let described = format!("{error}; {}", error.kind.hint());
    match error.kind {
        QueueErrorKind::Unauthorized if is_permission_error(&error) => vec![
            answered,
            credentials(Status::Ok, format!("{auth} authenticated")),
            queue_line(
                Status::Warn,
                format!(
                    "cannot read the properties of {} ({}): receiving and deleting need only the 'p' permission, but this check and QUEUE_LENGTH_INTERVAL need 'r' (or a role that reads queue metadata)",
                    queue.name(),
                    error
                ),
            ),
        ],
        QueueErrorKind::Unauthorized => vec![
            answered,
            credentials(Status::Fail, described),
            skip_queue("the credentials were refused"),
        ],
        QueueErrorKind::QueueNotFound => vec![
            answered,
            credentials(Status::Ok, format!("{auth} accepted")),
            queue_line(Status::Fail, described),
        ],
        QueueErrorKind::Unreachable | QueueErrorKind::Throttled => vec![
            service(Status::Fail, format!("{url}: {described}")),
            skip_credentials(),
            skip_queue("the queue service did not answer"),
        ],
        // No request reached the queue service: the identity could not get a token.
        QueueErrorKind::TokenUnavailable => vec![
            service(Status::Skip, format!("{url}: not called without an access token")),
            credentials(Status::Fail, described),
            skip_queue("no access token"),
        ],
        QueueErrorKind::MessageGone | QueueErrorKind::Other => vec![
            answered,
            credentials(Status::Skip, "not known: the call was refused".into()),
            queue_line(Status::Fail, described),
        ],
    }
}

/// The queue service's URL: the queue URL without the queue name.
fn service_url(queue: &Queue) -> String {
    let url = redact::url(queue.url());
    match url.strip_suffix(queue.name()) {
        Some(service) => service.trim_end_matches('/').to_string(),
        None => url,
    }
}

fn is_permission_error(error: &QueueError) -> bool {
    error.status == Some(403)
        && error
            .code
            .as_deref()
            .is_some_and(|code| PERMISSION_CODES.contains(&code))
}

/// The endpoint's token line: which source, and whether a token could be had (never the
/// token). `None` without endpoint authentication.
async fn check_endpoint_auth(deliverer: &Deliverer) -> Option<Check> {
    const NAME: &str = "endpoint auth";
    let auth = deliverer.auth();
    if !auth.renewable() {
        return None;
    }
    Some(match auth.header().await {
        Ok(_) => Check::new(
            Status::Ok,
            NAME,
            format!("{}: a token could be obtained", auth.kind()),
        ),
        Err(error) => Check::new(Status::Fail, NAME, format!("{}: {error}", auth.kind())),
    })
}

async fn check_endpoint(settings: &Settings, clients: &Clients) -> Vec<Check> {
    let endpoint = &settings.config.endpoint;
    let url = redact::url(&endpoint.url);
    let deliverer = match settings.deliverer(clients) {
        Ok(deliverer) => deliverer,
        Err(error) => {
            return vec![
                Check::new(Status::Fail, "endpoint auth", error.to_string()),
                Check::new(Status::Skip, "endpoint", "no endpoint token"),
            ]
        }
    };
    let mut checks: Vec<Check> = check_endpoint_auth(&deliverer).await.into_iter().collect();
    checks.push(probe_endpoint(&deliverer, &url).await);
    checks
}

async fn probe_endpoint(deliverer: &Deliverer, url: &str) -> Check {
    match deliverer.probe().await {
        Ok(()) => Check::new(Status::Ok, "endpoint", format!("{url} accepts connections")),
        Err(failure) => {
            let why = match &failure {
                Failure::Timeout => "no answer in time".to_string(),
                other => other.describe(),
            };
            Check::new(Status::Fail, "endpoint", format!("{url}: {why}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_have_a_fixed_shape() {
        assert_eq!(
            Check::new(Status::Ok, "queue", "orders exists").to_string(),
            "ok   queue: orders exists"
        );
        assert_eq!(
            Check::new(Status::Fail, "endpoint", "refused").to_string(),
            "FAIL endpoint: refused"
        );
    }

    #[test]
    fn only_failures_fail_the_command() {
        let ok = Check::new(Status::Ok, "a", "");
        let warn = Check::new(Status::Warn, "b", "");
        let fail = Check::new(Status::Fail, "c", "");
        assert_eq!(exit_status(&[ok.clone(), warn]), ExitCode::SUCCESS);
        assert_eq!(exit_status(&[ok, fail]), ExitCode::FAILURE);
    }
}
