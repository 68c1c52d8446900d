//! Shutdown plumbing, after mini-redis: one signal that every task can wait on.
//!
//! `main` turns the first SIGTERM/SIGINT into [`ShutdownTrigger::trigger`] (stop receiving,
//! let deliveries in progress finish) and a second one into [`ShutdownTrigger::stop_now`]
//! (cut deliveries off at once and release their messages). The receive loop and anything else
//! that must stop early hold a [`Shutdown`] and `select!` on [`Shutdown::wait`] or
//! [`Shutdown::wait_stop_now`]. A `watch` channel is used rather than a broadcast so that a
//! task that subscribes late still sees a shutdown that already happened.

use tokio::sync::watch;

/// How far the shutdown has gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Running,
    /// Stop receiving; finish what is in progress.
    Draining,
    /// Stop everything at once.
    StopNow,
}

/// The sending side: fires the shutdown, then possibly the stop-now. Clones fire the same
/// shutdown: the signal handler holds one, and the receive loop another for `EXIT_WHEN_IDLE`
/// (an idle sidecar stops exactly as on SIGTERM).
#[derive(Debug, Clone)]
pub(crate) struct ShutdownTrigger {
    sender: watch::Sender<Level>,
}

/// The listening side. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Shutdown {
    receiver: watch::Receiver<Level>,
}

/// A connected trigger and listener.
pub(crate) fn channel() -> (ShutdownTrigger, Shutdown) {
    let (sender, receiver) = watch::channel(Level::Running);
    (ShutdownTrigger { sender }, Shutdown { receiver })
}

impl ShutdownTrigger {
    /// Asks every listener to stop. Idempotent.
    pub(crate) fn trigger(&self) {
        self.raise(Level::Draining);
    }

    /// Asks every listener to stop at once, without waiting for work in progress. Implies
    /// [`ShutdownTrigger::trigger`].
    pub(crate) fn stop_now(&self) {
        self.raise(Level::StopNow);
    }

    fn raise(&self, level: Level) {
        self.sender.send_if_modified(|current| {
            let raised = level > *current;
            if raised {
                *current = level;
            }
            raised
        });
    }

    /// A new listener for this trigger.
    #[cfg(test)]
    pub(crate) fn subscribe(&self) -> Shutdown {
        Shutdown {
            receiver: self.sender.subscribe(),
        }
    }
}

impl Shutdown {
    /// Whether shutdown has been requested.
    pub(crate) fn is_requested(&self) -> bool {
        *self.receiver.borrow() >= Level::Draining
    }

    /// Whether an immediate stop has been requested.
    pub(crate) fn is_stop_now(&self) -> bool {
        *self.receiver.borrow() >= Level::StopNow
    }

    /// Completes once shutdown has been requested (at once if it already was). If the trigger
    /// is dropped without firing, this never completes: dropping is not a request to stop.
    pub(crate) async fn wait(&mut self) {
        self.wait_for(Level::Draining).await;
    }

    /// Completes once an immediate stop has been requested.
    pub(crate) async fn wait_stop_now(&mut self) {
        self.wait_for(Level::StopNow).await;
    }

    async fn wait_for(&mut self, level: Level) {
        if self.receiver.wait_for(|now| *now >= level).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// SIGTERM and SIGINT (Ctrl-C), as a stream: the first starts the drain, a second one means
/// "stop now".
pub(crate) struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers; from here on the signals no longer kill the process.
    pub(crate) fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// The name of the next signal received.
    pub(crate) async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn late_listeners_see_an_earlier_shutdown() {
        let (trigger, mut early) = channel();
        assert!(!early.is_requested());
        trigger.trigger();
        let mut late = trigger.subscribe();
        tokio::time::timeout(Duration::from_secs(1), early.wait())
            .await
            .expect("early listener woke");
        tokio::time::timeout(Duration::from_secs(1), late.wait())
            .await
            .expect("late listener woke");
        assert!(late.is_requested());
        assert!(!late.is_stop_now());
    }

    #[tokio::test]
    async fn stop_now_implies_shutdown_and_never_goes_back() {
        let (trigger, mut listener) = channel();
        trigger.stop_now();
        trigger.trigger();
        tokio::time::timeout(Duration::from_secs(1), listener.wait())
            .await
            .expect("shutdown seen");
        tokio::time::timeout(Duration::from_secs(1), listener.wait_stop_now())
            .await
            .expect("stop-now seen");
        assert!(listener.is_requested() && listener.is_stop_now());
    }

    #[tokio::test]
    async fn a_drain_is_not_a_stop_now() {
        let (trigger, mut listener) = channel();
        trigger.trigger();
        let waited =
            tokio::time::timeout(Duration::from_millis(50), listener.wait_stop_now()).await;
        assert!(waited.is_err());
    }
}
