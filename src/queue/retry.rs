//! The one retry layer of every queue call: tries with backoff for as long as the call's
//! [`Budget`] allows (see the module docs of `queue`).

use super::error::{Operation, QueueError};
use crate::backoff::Backoff;
use crate::telemetry::events::{InternalEvent, QueueCallRetried};
use std::future::Future;
use std::time::{Duration, Instant};

/// The longest a single try may take: the queue client's own request timeout.
pub(crate) const MAX_TRY: Duration = crate::transport::QUEUE_REQUEST_TIMEOUT;
/// A try on a leased message never gets less than this.
const MIN_TRY: Duration = Duration::from_secs(1);
/// Of the time left on a lease, a try leaves a third (at most this much) for a retry.
const RETRY_RESERVE: Duration = Duration::from_secs(2);
/// Backoff between tries of one call.
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// How long a queue call, retries included, may go on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    /// No try starts after this.
    until: Instant,
    per_try: TryBound,
}

#[derive(Debug, Clone, Copy)]
enum TryBound {
    Fixed(Duration),
    /// The time left before `until` less a reserve for one more try (a third of it, at most
    /// [`RETRY_RESERVE`]); at least [`MIN_TRY`], at most [`MAX_TRY`].
    ///
    /// Why not less: cutting a slow try short is not free. An Update that the service applied
    /// but whose answer we stopped waiting for leaves a new pop receipt nobody will ever see.
    /// Why not more: a try that hangs before reaching the service should leave room for one
    /// that gets through before the lease ends.
    LeaseBound,
}

impl Budget {
    /// Tries may start during `window`; each may take up to `per_try`.
    pub(crate) fn retry_for(window: Duration, per_try: Duration) -> Self {
        Self {
            until: Instant::now() + window,
            per_try: TryBound::Fixed(per_try),
        }
    }

    /// Tries until `deadline` (e.g. shortly before a lease ends). Each try gets the time left
    /// less a reserve for one more, and at least a second. The first try runs even if the
    /// deadline has passed: a pop receipt stays valid after its lease until someone else
    /// receives the message.
    pub(crate) fn until(deadline: Instant) -> Self {
        Self {
            until: deadline,
            per_try: TryBound::LeaseBound,
        }
    }

    /// One try of at most `per_try`.
    #[cfg(test)]
    pub(crate) fn once(per_try: Duration) -> Self {
        Self {
            until: Instant::now(),
            per_try: TryBound::Fixed(per_try),
        }
    }

    pub(super) fn remaining(&self, now: Instant) -> Duration {
        self.until.saturating_duration_since(now)
    }

    pub(super) fn try_timeout(&self, now: Instant) -> Duration {
        match self.per_try {
            TryBound::Fixed(bound) => bound,
            TryBound::LeaseBound => {
                let left = self.remaining(now);
                left.saturating_sub((left / 3).min(RETRY_RESERVE))
                    .clamp(MIN_TRY, MAX_TRY)
            }
        }
    }
}

/// The retry layer: runs `call` until it succeeds, fails in a way retrying cannot fix, or
/// `budget` has no room for another try. Failed tries that are retried are reported (metric,
/// debug line); the final error is the caller's to report, since only it knows what it means.
pub(super) async fn retrying<T, F, Fut>(
    operation: Operation,
    budget: Budget,
    mut call: F,
) -> Result<T, QueueError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, QueueError>>,
{
    let mut backoff = Backoff::new(RETRY_MIN, RETRY_MAX);
    let mut earlier_try_unknown = false;
    let mut attempt = 1u32;
    loop {
        let limit = budget.try_timeout(Instant::now());
        let mut error = match tokio::time::timeout(limit, call()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(error)) => error,
            Err(_elapsed) => QueueError::timed_out(operation, limit),
        };
        error.earlier_try_unknown = earlier_try_unknown;
        earlier_try_unknown |= error.outcome_unknown;
        let delay = backoff.next_delay();
        if !error.is_transient() || budget.remaining(Instant::now()) < delay {
            return Err(error);
        }
        QueueCallRetried {
            failure: error.failure(),
            attempt,
            retry_in: delay,
        }
        .emit();
        tokio::time::sleep(delay).await;
        attempt += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::error::QueueErrorKind;

    fn error(kind: QueueErrorKind, status: Option<u16>, outcome_unknown: bool) -> QueueError {
        QueueError {
            operation: Operation::Delete,
            kind,
            status,
            code: None,
            outcome_unknown,
            earlier_try_unknown: false,
            detail: String::new(),
        }
    }

    #[tokio::test]
    async fn a_call_is_retried_within_its_budget_and_remembers_a_lost_answer() {
        let tries = std::sync::atomic::AtomicU32::new(0);
        let result: Result<(), QueueError> = retrying(
            Operation::Delete,
            Budget::retry_for(Duration::from_secs(5), Duration::from_secs(1)),
            || async {
                match tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
                    0 => Err(error(QueueErrorKind::Unreachable, None, true)),
                    1 => Err(error(QueueErrorKind::Throttled, Some(503), false)),
                    _ => Err(error(QueueErrorKind::MessageGone, Some(404), false)),
                }
            },
        )
        .await;
        let failed = result.expect_err("404 is final");
        assert_eq!(tries.load(std::sync::atomic::Ordering::SeqCst), 3);
        assert!(failed.is_message_not_found());
        assert!(
            failed.earlier_try_unknown,
            "the first try's answer was lost"
        );
        assert!(!failed.outcome_unknown);
    }

    #[tokio::test]
    async fn a_try_that_hangs_is_cut_off_and_retried_before_the_deadline() {
        let tries = std::sync::atomic::AtomicU32::new(0);
        let started = Instant::now();
        let result = retrying(
            Operation::Update,
            Budget::until(Instant::now() + Duration::from_secs(4)),
            || async {
                if tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                    std::future::pending::<()>().await;
                }
                Ok::<_, QueueError>("receipt")
            },
        )
        .await;
        assert_eq!(result.expect("second try"), "receipt");
        assert!(started.elapsed() < Duration::from_secs(4));
    }

    #[tokio::test]
    async fn no_try_starts_after_the_budget_and_permanent_errors_are_not_retried() {
        let tries = std::sync::atomic::AtomicU32::new(0);
        let result: Result<(), QueueError> = retrying(
            Operation::Delete,
            Budget::once(Duration::from_secs(1)),
            || async {
                tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Err(error(QueueErrorKind::Throttled, Some(503), false))
            },
        )
        .await;
        assert!(result.is_err());
        assert_eq!(tries.swap(0, std::sync::atomic::Ordering::SeqCst), 1);
        let result: Result<(), QueueError> = retrying(
            Operation::Delete,
            Budget::retry_for(Duration::from_secs(5), Duration::from_secs(1)),
            || async {
                tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Err(error(QueueErrorKind::Unauthorized, Some(403), false))
            },
        )
        .await;
        assert!(result.is_err());
        assert_eq!(tries.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn a_lease_bound_try_leaves_room_for_one_more() {
        let now = Instant::now();
        let budget = Budget::until(now + Duration::from_secs(15));
        assert_eq!(budget.try_timeout(now), Duration::from_secs(13));
        let budget = Budget::until(now + Duration::from_secs(3));
        assert_eq!(budget.try_timeout(now), Duration::from_secs(2));
        assert_eq!(
            Budget::until(now + Duration::from_millis(500)).try_timeout(now),
            MIN_TRY
        );
        assert_eq!(
            Budget::until(now + Duration::from_secs(600)).try_timeout(now),
            MAX_TRY
        );
    }
}
