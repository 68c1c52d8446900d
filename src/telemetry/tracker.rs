//! "Report once per change of state": the one flood control of the sidecar's logs.
//!
//! A queue that is down, an endpoint that refuses connections, an identity that gets no token,
//! a missing permission: each fails the same way many times a minute, and a log line per
//! failure would bury everything else. The events that report such failures ask a
//! [`Tracker`] whether this failure is news — the first of its kind since the subject last
//! worked — and log it at their own level if so (at debug level, or not at all, otherwise);
//! their metrics count every failure regardless. When the subject works again, the tracker
//! says how many failures there were since, so the event can write one recovery line.
//!
//! A tracker follows any number of subjects (`K`: a permission, an identity; `()` when there
//! is one) and, for each, the state it is failing in (`S`: an error kind, a status; `()` when
//! only "failing" matters). Every "said once" in the sidecar goes through this type.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// What one subject is doing wrong, and whether that was said.
#[derive(Debug)]
struct Failing<K, S> {
    subject: K,
    state: S,
    /// Failures since the subject last worked, across changes of state.
    failures: u64,
    /// Whether the current state was reported.
    reported: bool,
}

/// Failing subjects and their states (see the module docs).
#[derive(Debug)]
pub(crate) struct Tracker<K = (), S = ()> {
    failing: Mutex<Vec<Failing<K, S>>>,
}

impl<K, S> Default for Tracker<K, S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K, S> Tracker<K, S> {
    /// Nothing failing yet.
    pub(crate) const fn new() -> Self {
        Self {
            failing: Mutex::new(Vec::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Failing<K, S>>> {
        // Each update is complete before the lock is released; a panic elsewhere leaves
        // consistent state behind, and flood control must keep working.
        self.failing.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<K: PartialEq, S: PartialEq> Tracker<K, S> {
    /// `subject` failed in `state`. True when that is worth a line: the first failure in this
    /// state (a new state after another one counts as news).
    pub(crate) fn failed(&self, subject: K, state: S) -> bool {
        self.record(subject, state, true)
    }

    /// `subject` failed in `state`, but this failure is not to be reported (someone else
    /// reports it). Counted like any other; a later reportable failure in the same state is
    /// still news.
    pub(crate) fn failed_unreported(&self, subject: K, state: S) {
        self.record(subject, state, false);
    }

    fn record(&self, subject: K, state: S, reportable: bool) -> bool {
        let mut failing = self.lock();
        let entry = match failing.iter().position(|f| f.subject == subject) {
            Some(index) => {
                let entry = &mut failing[index];
                if entry.state != state {
                    entry.state = state;
                    entry.reported = false;
                }
                entry
            }
            None => {
                failing.push(Failing {
                    subject,
                    state,
                    failures: 0,
                    reported: false,
                });
                let last = failing.len() - 1;
                &mut failing[last]
            }
        };
        entry.failures += 1;
        let news = reportable && !entry.reported;
        entry.reported |= news;
        news
    }

    /// `subject` works. The failures since it last worked, if any of them was reported (a
    /// recovery is worth a line only after a failure was).
    pub(crate) fn recovered(&self, subject: &K) -> Option<u64> {
        let mut failing = self.lock();
        let index = failing.iter().position(|f| f.subject == *subject)?;
        let entry = failing.swap_remove(index);
        entry.reported.then_some(entry.failures)
    }

    /// Whether `subject` is failing (its last outcome was a failure).
    pub(crate) fn is_failing(&self, subject: &K) -> bool {
        self.lock().iter().any(|f| f.subject == *subject)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_is_news_once_until_it_changes_or_recovers() {
        let tracker: Tracker<(), &str> = Tracker::new();
        assert!(tracker.failed((), "connection"));
        assert!(!tracker.failed((), "connection"));
        assert!(tracker.failed((), "503"), "another state is news");
        assert!(tracker.is_failing(&()));
        assert_eq!(tracker.recovered(&()), Some(3));
        assert_eq!(tracker.recovered(&()), None, "already working");
        assert!(tracker.failed((), "503"), "news again after a recovery");
    }

    #[test]
    fn subjects_are_followed_apart() {
        let tracker: Tracker<&str> = Tracker::new();
        assert!(tracker.failed("update_message", ()));
        assert!(tracker.failed("poison_queue", ()));
        assert!(!tracker.failed("update_message", ()));
        assert_eq!(tracker.recovered(&"poison_queue"), Some(1));
        assert!(tracker.is_failing(&"update_message"));
    }

    #[test]
    fn unreported_failures_count_but_leave_the_news_to_a_later_one() {
        let tracker: Tracker<(), u16> = Tracker::new();
        tracker.failed_unreported((), 403);
        assert_eq!(
            tracker.recovered(&()),
            None,
            "nothing was said, so no recovery line"
        );
        tracker.failed_unreported((), 403);
        assert!(tracker.failed((), 403), "the first reportable one is news");
        assert!(!tracker.failed((), 403));
        assert_eq!(tracker.recovered(&()), Some(3));
    }
}
