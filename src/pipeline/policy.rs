//! What to do with a message after a delivery attempt: delete, retry later, or poison.
//!
//! Pure decisions, kept apart from the I/O that carries them out so every rule is unit-tested.
//!
//! - 2xx: delete.
//! - A permanent failure (400, 401, 403, 410, 413, 415, 422, other 4xx) or a message that cannot
//!   become an event: poison at once — retrying cannot help.
//! - A retryable failure: retry after `RETRY_BASE_DELAY · 2^(attempt-1)` (±20 %, capped at
//!   `RETRY_MAX_DELAY`), or after the endpoint's `Retry-After` (capped too), until the message
//!   has been attempted `MAX_DEQUEUE_COUNT` times; then poison.
//! - A connection failure (refused, DNS, TLS handshake) never poisons: the endpoint was not
//!   reached, so the message is not at fault, and an outage must not push good messages into
//!   the poison queue. A connection that broke *after* the request was sent, or a timeout, is
//!   an attempt like a 5xx: the message may be what crashes the app.
//! - A request that cannot be built from the event is undeliverable: poisoned at once.
//! - A 401 while the endpoint's token can change (a token file, an Entra ID audience) is
//!   retried and never poisons: the token is at fault, not the message, and it is read again
//!   at once. Without a token source a 401 is permanent, like other 4xx. No token to send at
//!   all (an unreadable token file from the start) is not an attempt either.
//! - `MAX_DEQUEUE_COUNT=0` disables poisoning: what would be poisoned is retried at the longest
//!   delay instead.
//! - No retry comes sooner than [`MIN_RETRY_DELAY`], whatever the endpoint's `Retry-After`
//!   says: with poisoning off, a zero delay would be an endless tight loop. (Update Message
//!   takes whole seconds, so in practice the shortest retry delay is one second.)

use crate::backoff::jittered;
use crate::config::RetryConfig;
pub(crate) use crate::config::MIN_RETRY_DELAY;
use crate::pipeline::endpoint::{Failure, Outcome};
use std::time::Duration;

/// Why a message is moved to the poison queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PoisonReason {
    /// The endpoint refused it in a way that will not change (4xx).
    Rejected(Failure),
    /// It failed on every one of its `MAX_DEQUEUE_COUNT` attempts.
    AttemptsExhausted(Failure),
    /// It cannot be turned into an event (e.g. invalid base64).
    Undeliverable(String),
}

impl PoisonReason {
    /// A short machine-friendly label.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            PoisonReason::Rejected(_) => "rejected",
            PoisonReason::AttemptsExhausted(_) => "attempts_exhausted",
            PoisonReason::Undeliverable(_) => "undeliverable",
        }
    }

    /// The last failure, if the endpoint was involved.
    pub(crate) fn failure(&self) -> Option<&Failure> {
        match self {
            PoisonReason::Rejected(f) | PoisonReason::AttemptsExhausted(f) => Some(f),
            PoisonReason::Undeliverable(_) => None,
        }
    }

    /// A one-line description of the last error.
    pub(crate) fn describe(&self) -> String {
        match self {
            PoisonReason::Rejected(f) | PoisonReason::AttemptsExhausted(f) => f.describe(),
            PoisonReason::Undeliverable(why) => why.clone(),
        }
    }
}

/// The `retries_scheduled_total` label of a retry: the delivery failure's label, or
/// `undeliverable` when there was none (see [`Decision::Retry`]).
pub(crate) fn retry_label(failure: Option<&Failure>) -> String {
    failure.map_or_else(|| "undeliverable".to_string(), Failure::label)
}

/// The decision after one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    Delete,
    /// Hide the message for `delay`. `failure` is the delivery failure that made the retry
    /// necessary; `None` for a message that cannot become a request at all (retried only
    /// because poisoning is off or impossible).
    Retry {
        delay: Duration,
        failure: Option<Failure>,
    },
    Poison(PoisonReason),
}

/// The retry rules, from the configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RetryPolicy {
    pub base_delay: Duration,
    pub max_delay: Duration,
    pub max_dequeue_count: u32,
}

impl RetryPolicy {
    pub(crate) fn from_config(config: &RetryConfig) -> Self {
        Self {
            base_delay: config.base_delay,
            max_delay: config.max_delay,
            max_dequeue_count: config.max_dequeue_count,
        }
    }

    fn poisoning(&self) -> bool {
        self.max_dequeue_count > 0
    }

    /// The delay before attempt `dequeue_count + 1`.
    pub(crate) fn backoff(&self, dequeue_count: u32) -> Duration {
        let exponent = dequeue_count.saturating_sub(1).min(30);
        let step = self
            .base_delay
            .saturating_mul(1u32 << exponent)
            .min(self.max_delay);
        jittered(step).min(self.max_delay).max(MIN_RETRY_DELAY)
    }

    /// What to do after an attempt on a message received `dequeue_count` times.
    pub(crate) fn decide(&self, dequeue_count: u32, outcome: &Outcome) -> Decision {
        match outcome {
            Outcome::Delivered { .. } => Decision::Delete,
            Outcome::Permanent {
                failure: failure @ Failure::Unsendable(why),
            } => self.poison_or_wait(
                PoisonReason::Undeliverable(why.clone()),
                Some(failure.clone()),
            ),
            Outcome::Permanent { failure } => self.poison_or_wait(
                PoisonReason::Rejected(failure.clone()),
                Some(failure.clone()),
            ),
            Outcome::Retryable {
                failure,
                retry_after,
            } => {
                let exhausted = self.poisoning() && dequeue_count >= self.max_dequeue_count;
                if exhausted && !failure.spares_the_message() {
                    return Decision::Poison(PoisonReason::AttemptsExhausted(failure.clone()));
                }
                let delay = match retry_after {
                    Some(asked) => (*asked).min(self.max_delay).max(MIN_RETRY_DELAY),
                    None => self.backoff(dequeue_count),
                };
                Decision::Retry {
                    delay,
                    failure: Some(failure.clone()),
                }
            }
        }
    }

    /// For a message that cannot become an event at all (e.g. invalid base64): no delivery
    /// was attempted, so no delivery failure stands behind a retry.
    pub(crate) fn undeliverable(&self, why: String) -> Decision {
        self.poison_or_wait(PoisonReason::Undeliverable(why), None)
    }

    fn poison_or_wait(&self, reason: PoisonReason, failure: Option<Failure>) -> Decision {
        if self.poisoning() {
            Decision::Poison(reason)
        } else {
            Decision::Retry {
                delay: self.max_delay,
                failure,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_dequeue_count: u32) -> RetryPolicy {
        RetryPolicy {
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(300),
            max_dequeue_count,
        }
    }

    fn retryable(status: u16, retry_after: Option<Duration>) -> Outcome {
        Outcome::Retryable {
            failure: Failure::Status(status),
            retry_after,
        }
    }

    fn within(delay: Duration, base_secs: f64) -> bool {
        let d = delay.as_secs_f64();
        d >= base_secs * 0.8 - 1e-9 && d <= base_secs * 1.2 + 1e-9
    }

    #[test]
    fn delays_double_per_attempt_up_to_the_cap() {
        let p = policy(100);
        assert!(within(p.backoff(1), 1.0));
        assert!(within(p.backoff(2), 2.0));
        assert!(within(p.backoff(4), 8.0));
        assert!(p.backoff(20) <= Duration::from_secs(300));
        assert!(p.backoff(40) >= Duration::from_secs(240));
    }

    #[test]
    fn retry_after_wins_within_the_cap() {
        let p = policy(5);
        assert_eq!(
            p.decide(1, &retryable(429, Some(Duration::from_secs(7)))),
            Decision::Retry {
                delay: Duration::from_secs(7),
                failure: Some(Failure::Status(429))
            }
        );
        assert!(matches!(
            p.decide(1, &retryable(503, Some(Duration::from_secs(3600)))),
            Decision::Retry { delay, .. } if delay == Duration::from_secs(300)
        ));
    }

    #[test]
    fn exhausted_attempts_poison_except_after_connection_failures() {
        let p = policy(5);
        assert!(matches!(
            p.decide(4, &retryable(500, None)),
            Decision::Retry { .. }
        ));
        assert_eq!(
            p.decide(5, &retryable(500, None)),
            Decision::Poison(PoisonReason::AttemptsExhausted(Failure::Status(500)))
        );
        let refused = Outcome::Retryable {
            failure: Failure::Connection("refused".into()),
            retry_after: None,
        };
        assert!(matches!(p.decide(50, &refused), Decision::Retry { .. }));
        let timeout = Outcome::Retryable {
            failure: Failure::Timeout,
            retry_after: None,
        };
        assert!(matches!(p.decide(5, &timeout), Decision::Poison(_)));
    }

    #[test]
    fn a_refused_token_or_no_token_never_poisons() {
        let p = policy(1);
        for failure in [Failure::Unauthorized, Failure::NoToken("unreadable".into())] {
            let outcome = Outcome::Retryable {
                failure: failure.clone(),
                retry_after: None,
            };
            assert!(
                matches!(p.decide(99, &outcome), Decision::Retry { failure: Some(f), .. } if f == failure),
                "{failure:?}"
            );
        }
    }

    #[test]
    fn permanent_failures_poison_at_once_unless_poisoning_is_off() {
        let rejected = Outcome::Permanent {
            failure: Failure::Status(400),
        };
        assert_eq!(
            policy(5).decide(1, &rejected),
            Decision::Poison(PoisonReason::Rejected(Failure::Status(400)))
        );
        assert!(matches!(
            policy(0).decide(1, &rejected),
            Decision::Retry { delay, .. } if delay == Duration::from_secs(300)
        ));
        assert!(matches!(
            policy(0).decide(99, &retryable(500, None)),
            Decision::Retry { .. }
        ));
        assert!(matches!(
            policy(5).undeliverable("bad base64".into()),
            Decision::Poison(_)
        ));
    }

    #[test]
    fn no_retry_comes_sooner_than_100_ms() {
        let p = RetryPolicy {
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            max_dequeue_count: 0,
        };
        for _ in 0..100 {
            assert!(p.backoff(1) >= MIN_RETRY_DELAY);
        }
        assert!(matches!(
            p.decide(1, &retryable(503, Some(Duration::ZERO))),
            Decision::Retry { delay, .. } if delay == MIN_RETRY_DELAY
        ));
    }

    #[test]
    fn a_dropped_connection_counts_as_an_attempt() {
        let p = policy(3);
        let dropped = Outcome::Retryable {
            failure: Failure::Dropped("connection closed before message completed".into()),
            retry_after: None,
        };
        assert!(matches!(p.decide(2, &dropped), Decision::Retry { .. }));
        assert!(matches!(
            p.decide(3, &dropped),
            Decision::Poison(PoisonReason::AttemptsExhausted(Failure::Dropped(_)))
        ));
    }

    #[test]
    fn a_request_that_cannot_be_built_is_undeliverable() {
        let unsendable = Outcome::Permanent {
            failure: Failure::Unsendable("invalid header value".into()),
        };
        assert!(matches!(
            policy(5).decide(1, &unsendable),
            Decision::Poison(PoisonReason::Undeliverable(_))
        ));
    }

    #[test]
    fn a_retried_undecodable_message_has_no_delivery_failure_behind_it() {
        let retry = policy(0).undeliverable("bad base64".into());
        assert_eq!(
            retry,
            Decision::Retry {
                delay: Duration::from_secs(300),
                failure: None
            }
        );
        assert_eq!(retry_label(None), "undeliverable");
        assert_eq!(retry_label(Some(&Failure::Status(503))), "503");
    }

    #[test]
    fn success_deletes() {
        assert_eq!(
            policy(5).decide(9, &Outcome::Delivered { status: 204 }),
            Decision::Delete
        );
    }
}
